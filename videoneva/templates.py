"""Conversation templates as data (NeMo's conversation.py conventions); the logic is in prompts.py."""
from __future__ import annotations

from dataclasses import dataclass, field

NV_SYSTEM = ("A chat between a curious user and an artificial intelligence assistant. The assistant gives "
             "helpful, detailed, and polite answers to the user's questions.")
LLAMA_SYSTEM = ("You are a helpful language and vision assistant. You are able to understand the visual content "
                "that the user provides, and assist the user with a variety of tasks using natural language.")
STEERLM_LABEL = ("quality:4,toxicity:0,humor:0,creativity:0,helpfulness:4,correctness:4,coherence:4,"
                 "complexity:4,verbosity:4")
NV_SPECIALS = [f"<extra_id_{i}>" for i in range(8)]
LLAMA3_SPECIALS = ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>",
                   "<|reserved_special_token_3|>", "<|reserved_special_token_4|>", "<|reserved_special_token_5|>"]


@dataclass(frozen=True)
class Template:
    """How one template renders a conversation.

    style: "nv" (NeMo nvgpt family), "vicuna" (v1), "llama_2", "mistral", "llama_3", "plain".
    The text of a turn is `user_prefix + msg + user_suffix` / `assistant_prefix + msg + assistant_suffix`;
    the loss covers the assistant message and its suffix (the end separator), as in NeMo.
    """

    name: str
    style: str
    system: str
    head: str                    # text before the first turn (the system block); "{system}" is filled in
    user_prefix: str
    user_suffix: str
    assistant_prefix: str        # what the prompt ends with at inference, before the answer
    assistant_suffix: str        # end separator after an answer (carries loss)
    label: str = ""              # SteerLM attribute line content (nv_steerlm)
    first_user_prefix: str = ""  # llama_2 puts the system block inside the first [INST]
    answer_lead: str = ""        # text between the assistant prefix and the answer (" " for v1, llama_2)
    stop: tuple = ()
    specials: tuple = field(default_factory=tuple)


_NV_HEAD = "<extra_id_0>System\n{system}<extra_id_1>"
_NV = dict(style="nv", head=_NV_HEAD, user_prefix="User\n", user_suffix="\n<extra_id_1>",
           assistant_prefix="Assistant\n", assistant_suffix="\n<extra_id_1>",
           stop=("<extra_id_1>", "<extra_id_7>"), specials=tuple(NV_SPECIALS))

TEMPLATES: dict[str, Template] = {
    "nvgpt": Template(name="nvgpt", system=NV_SYSTEM + "\n\n", **_NV),
    "nv_steerlm": Template(name="nv_steerlm", system=NV_SYSTEM + "\n\n", label=STEERLM_LABEL, **_NV),
    "nv_dpo": Template(name="nv_dpo", system="\n", **_NV),
    "v1": Template(name="v1", style="vicuna", system=NV_SYSTEM, head="{system} ", user_prefix="USER: ",
                   user_suffix=" ", assistant_prefix="ASSISTANT:", assistant_suffix="<extra_id_7>", answer_lead=" ",
                   stop=("<extra_id_7>",), specials=tuple(NV_SPECIALS)),
    "llama_2": Template(name="llama_2", style="llama_2", system=LLAMA_SYSTEM, head="",
                        first_user_prefix="<extra_id_6>[INST] <<SYS>>\n{system}\n<</SYS>>\n\n",
                        user_prefix="<extra_id_6>[INST] ", user_suffix=" [/INST]", assistant_prefix="",
                        assistant_suffix=" <extra_id_7>", answer_lead=" ", stop=("<extra_id_7>",), specials=tuple(NV_SPECIALS)),
    "mistral": Template(name="mistral", style="mistral", system="", head="<extra_id_6>", user_prefix="[INST] ",
                        user_suffix=" [/INST]", assistant_prefix="", assistant_suffix="<extra_id_7>",
                        stop=("<extra_id_7>",), specials=tuple(NV_SPECIALS)),
    "llama_3": Template(name="llama_3", style="llama_3", system=LLAMA_SYSTEM,
                        head="<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n{system}<|eot_id|>",
                        user_prefix="<|start_header_id|>user<|end_header_id|>\n\n", user_suffix="<|eot_id|>",
                        assistant_prefix="<|start_header_id|>assistant<|end_header_id|>\n\n",
                        assistant_suffix="<|eot_id|>", stop=("<|eot_id|>",), specials=tuple(LLAMA3_SPECIALS)),
    "plain": Template(name="plain", style="plain", system="", head="", user_prefix="", user_suffix="\n",
                      assistant_prefix="", assistant_suffix="\n", stop=("\n",), specials=()),
}
