"""Conversation templates as data (NeMo's neva conversation.py / neva_dataset.py); the logic is in prompts.py."""
# Every string below was read from NVIDIA/NeMo at commit 379b87679d (the last one holding the NeMo-1
# multimodal code). A rendered conversation is
#
#     prefix + [system block] + per round: user turn + assistant prefix + label line + answer lead
#                                          + answer + assistant suffix (+ round_sep between rounds)
#
# and the inference prompt stops after the label line. Where NeMo's output has a quirk that a
# NeMo-trained model has learnt (a leading space, a missing space), it is kept and said so below.
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

NV_SYSTEM = ("A chat between a curious user and an artificial intelligence assistant. The assistant gives "
             "helpful, detailed, and polite answers to the user's questions.")
LLAVA_SYSTEM = ("You are a helpful language and vision assistant. You are able to understand the visual content "
                "that the user provides, and assist the user with a variety of tasks using natural language.")
STEERLM_LABEL = ("quality:4,toxicity:0,humor:0,creativity:0,helpfulness:4,correctness:4,coherence:4,"
                 "complexity:4,verbosity:4")

# NeMo's token names (conversation.py DEFAULT_*): SYSTEM, SEPARATOR, LABELS, then the image patch /
# start / end tokens of its media expansion, BOS and EOS.
NV_SYSTEM_TOKEN, NV_SEP, NV_LABELS = "<extra_id_0>", "<extra_id_1>", "<extra_id_2>"
NV_BOS, NV_EOS = "<extra_id_6>", "<extra_id_7>"
NV_SPECIALS = tuple(f"<extra_id_{i}>" for i in range(8))
LLAMA3_SPECIALS = ("<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>",
                   "<|reserved_special_token_3|>", "<|reserved_special_token_4|>", "<|reserved_special_token_5|>")


@dataclass(frozen=True)
class Template:
    """How one template renders a conversation (all fields are literal text unless said otherwise).

    The loss covers each answer and its assistant_suffix (the end separator), as NeMo's masking does;
    the system block, user turns, assistant prefixes and label lines carry none.
    """

    name: str
    roles: tuple                 # (user, assistant) as NeMo names them; turns may also say human/gpt
    system: str                  # default system text (NeMo's, trailing newlines included)
    system_block: str            # "{system}" is replaced by the system text
    user_prefix: str
    user_suffix: str
    assistant_prefix: str        # the inference prompt ends with this (and the label line, if any)
    assistant_suffix: str        # end separator after an answer; carries loss
    stop: tuple                  # strings that end an answer; generation stops at them
    specials: tuple              # tokens a tokenizer must hold unsplit (media tokens are added by prompts.py)
    prefix: str = ""             # text before everything (mistral: NeMo's BOS)
    system_in_first_user: bool = False   # llama_2 / mistral: the system block opens the first [INST]
    skip_empty_system: bool = False      # mistral: an empty system renders nothing (not "\n")
    first_user_prefix: Optional[str] = None  # prefix of the first user turn when it differs (llama_2)
    answer_lead: str = ""        # between the assistant prefix and the answer in training text
    round_sep: str = ""          # after an assistant turn that another round follows (v1)
    label_line: str = ""         # SteerLM attribute line, "{label}" replaced; "" = template has none
    default_label: str = ""      # label used when neither the caller nor the turn gives one
    image_newline: bool = True   # inference: "<image>" is followed by "\n" (NeMo neva_process_prompts)
    media_only_user: bool = False  # plain: the first user turn is the media token alone
    answer_markers: tuple = ()   # clean_response: the answer starts after the last of these


_NV = dict(
    roles=("User", "Assistant"),
    system_block=f"{NV_SYSTEM_TOKEN}System\n{{system}}{NV_SEP}",
    user_prefix="User\n", user_suffix=f"\n{NV_SEP}",
    assistant_prefix="Assistant\n", assistant_suffix=f"\n{NV_SEP}",
    label_line=f"{NV_LABELS}{{label}}\n",
    stop=(NV_SEP, NV_EOS), specials=NV_SPECIALS,
    answer_markers=(f"{NV_SEP}Assistant\n",),
)

TEMPLATES: dict[str, Template] = {
    # NeMo maps both names to conv_nvgpt, and preprocess_nvgpt gives every assistant turn the
    # SteerLM label line (the default label when a turn has none): nvgpt renders as nv_steerlm does.
    "nvgpt": Template(name="nvgpt", system=NV_SYSTEM + "\n\n", default_label=STEERLM_LABEL, **_NV),
    "nv_steerlm": Template(name="nv_steerlm", system=NV_SYSTEM + "\n\n", default_label=STEERLM_LABEL, **_NV),
    # nv_dpo: system "\n"; a label line only where a turn (or the caller) gives a label.
    "nv_dpo": Template(name="nv_dpo", system="\n", **_NV),
    # v1 (conv_vicuna_v1, SeparatorStyle.TWO): "SYS USER: q ASSISTANT: a<extra_id_7> USER: …".
    "v1": Template(
        name="v1", roles=("USER", "ASSISTANT"), system=NV_SYSTEM, system_block="{system} ",
        user_prefix="USER: ", user_suffix=" ", assistant_prefix="ASSISTANT:", answer_lead=" ",
        assistant_suffix=NV_EOS, round_sep=" ", stop=(NV_EOS, "</s>"), specials=NV_SPECIALS,
        answer_markers=("ASSISTANT:",)),
    # llama_2 (conv_llava_llama_2, SeparatorStyle.LLAMA_2). NeMo joins "<extra_id_6>" + " " + "[INST] …"
    # and then lstrips the first BOS, so the text starts with " [INST]": kept, a NeMo model learnt it.
    # NeMo maps <extra_id_6>/<extra_id_7> to ids 1/2 (<s>/</s>) for llama-family tokenizers: "</s>" stops too.
    "llama_2": Template(
        name="llama_2", roles=("USER", "ASSISTANT"), system=LLAVA_SYSTEM,
        system_block="<<SYS>>\n{system}\n<</SYS>>\n\n", system_in_first_user=True,
        first_user_prefix=" [INST] ", user_prefix=f"{NV_BOS} [INST] ", user_suffix=" [/INST]",
        assistant_prefix="", answer_lead=" ", assistant_suffix=f" {NV_EOS}",
        stop=(NV_EOS, "</s>"), specials=NV_SPECIALS, answer_markers=("[/INST]",)),
    # mistral (conv_mistral, SeparatorStyle.MISTRAL): "<extra_id_6> [INST] q [/INST]a<extra_id_7> [INST] …"
    # — NeMo puts a space before every [INST] and none before the answer; kept as NeMo renders it.
    "mistral": Template(
        name="mistral", roles=("USER", "ASSISTANT"), system="", prefix=NV_BOS,
        system_block="{system}\n", system_in_first_user=True, skip_empty_system=True,
        user_prefix=" [INST] ", user_suffix=" [/INST]", assistant_prefix="", assistant_suffix=NV_EOS,
        stop=(NV_EOS, "</s>"), specials=NV_SPECIALS, answer_markers=("[/INST]",)),
    # llama_3 (conv_llava_llama_3): Meta's header format with NeMo's LLaVA system text.
    "llama_3": Template(
        name="llama_3", roles=("user", "assistant"), system=LLAVA_SYSTEM,
        system_block="<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n{system}<|eot_id|>",
        user_prefix="<|start_header_id|>user<|end_header_id|>\n\n", user_suffix="<|eot_id|>",
        assistant_prefix="<|start_header_id|>assistant<|end_header_id|>\n\n", assistant_suffix="<|eot_id|>",
        stop=("<|eot_id|>", "<|end_of_text|>"), specials=LLAMA3_SPECIALS,
        answer_markers=("<|start_header_id|>assistant<|end_header_id|>\n\n",)),
    # plain (preprocess_plain, pretraining/captioning): "<media>" + caption + "\n"; the human text is
    # dropped and only one round is allowed. NeMo has no plain inference; ours is the media token alone,
    # which is what the model was trained to continue.
    "plain": Template(
        name="plain", roles=("", ""), system="", system_block="{system}", user_prefix="", user_suffix="",
        assistant_prefix="", assistant_suffix="\n", stop=("\n",), specials=NV_SPECIALS[3:6],
        image_newline=False, media_only_user=True, answer_markers=("<image>", "<video>")),
}
