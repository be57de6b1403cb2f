"""Prompt rendering for every template against hand-written strings (NeMo's), the seed's example verbatim,
clean responses, training spans and media-token tokenization."""
from __future__ import annotations

from pathlib import Path

import pytest

from videoneva import prompts
from videoneva.errors import PromptError
from videoneva.templates import TEMPLATES

SYS = ("A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, "
       "detailed, and polite answers to the user's questions.")
LSYS = ("You are a helpful language and vision assistant. You are able to understand the visual content that the "
        "user provides, and assist the user with a variety of tasks using natural language.")
LABEL = "quality:4,toxicity:0,humor:0,creativity:0,helpfulness:4,correctness:4,coherence:4,complexity:4,verbosity:4"
SEED = Path(__file__).resolve().parents[2] / "shared" / "seed"

# The inference prompt of each template around the user message {q}, as NeMo's neva_process_prompts renders it.
PROMPT = {
    "nvgpt": f"<extra_id_0>System\n{SYS}\n\n<extra_id_1>User\n{{q}}\n<extra_id_1>Assistant\n<extra_id_2>{LABEL}\n",
    "nv_steerlm": f"<extra_id_0>System\n{SYS}\n\n<extra_id_1>User\n{{q}}\n<extra_id_1>Assistant\n<extra_id_2>{LABEL}\n",
    "nv_dpo": "<extra_id_0>System\n\n<extra_id_1>User\n{q}\n<extra_id_1>Assistant\n",
    "v1": f"{SYS} USER: {{q}} ASSISTANT:",
    "llama_2": f" [INST] <<SYS>>\n{LSYS}\n<</SYS>>\n\n{{q}} [/INST]",
    "mistral": "<extra_id_6> [INST] {q} [/INST]",
    "llama_3": f"<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n{LSYS}<|eot_id|>"
               "<|start_header_id|>user<|end_header_id|>\n\n{q}<|eot_id|>"
               "<|start_header_id|>assistant<|end_header_id|>\n\n",
}
# The user message per media type and insert_media_token (NeMo: "<image>" always gets "\n", "<video>" never).
MESSAGE = {
    ("image", "left"): "<image>\nWhat is it?",
    ("image", "right"): "What is it?<image>\n",
    ("video", "left"): "<video>What is it?",
    ("video", "right"): "What is it?<video>",
    (None, None): "What is it?",
}


@pytest.mark.parametrize("media_type, insert", list(MESSAGE))
@pytest.mark.parametrize("name", sorted(PROMPT))
def test_every_template_renders_as_written(name, media_type, insert):
    expected = PROMPT[name].replace("{q}", MESSAGE[(media_type, insert)])
    assert prompts.render_prompt(name, "What is it?", media_type, insert) == expected


def test_every_template_has_a_written_prompt():
    assert set(PROMPT) | {"plain"} == set(TEMPLATES)


def test_plain_prompt_is_the_media_token_alone():
    # plain is NeMo's captioning template: training text is "<media>" + caption + "\n".
    assert prompts.render_prompt("plain", "What is it?", "video", "right") == "<video>"
    assert prompts.render_prompt("plain", "What is it?", "image", None) == "<image>"
    with pytest.raises(PromptError, match="needs media"):
        prompts.render_prompt("plain", "What is it?", None)


# The seed's example output (NeMo's Video NeVA page), verbatim.
SEED_EXAMPLE = (
    "<extra_id_0>System\nA chat between a curious user and an artificial intelligence assistant. The assistant "
    "gives helpful, detailed, and polite answers to the user's questions.\n\n<extra_id_1>User\nCan you describe "
    "the scene?<video>\n<extra_id_1>Assistant\n<extra_id_2>quality:4,toxicity:0,humor:0,creativity:0,"
    "helpfulness:4,correctness:4,coherence:4,complexity:4,verbosity:4\nCLEAN RESPONSE: Hand with a robot arm"
)


@pytest.mark.parametrize("name", ["nv_steerlm", "nvgpt"])
def test_matches_the_seed_example_character_for_character(name):
    prompt = prompts.render_prompt(name, "Can you describe the scene?", "video", "right")
    generated = "Hand with a robot arm\n<extra_id_1>"
    clean = prompts.clean_response(name, generated)
    assert prompts.format_seed_output(prompt, clean) == SEED_EXAMPLE
    assert prompts.clean_response(name, prompt + generated) == clean  # the full text cleans the same
    seed_files = sorted(SEED.glob("*.txt")) if SEED.is_dir() else []
    if seed_files:  # the seed page itself, where the shared folder is beside the checkout
        assert SEED_EXAMPLE in seed_files[0].read_text()


def test_media_token_placement_options():
    nv = PROMPT["nv_dpo"]
    q = "Describe <video> now"
    assert prompts.render_prompt("nv_dpo", q, "video", "left") == nv.replace("{q}", q)
    assert prompts.render_prompt("nv_dpo", "plain text", "video", None) == nv.replace("{q}", "plain text")
    # LLaVA-style text that already has "<image>\n" keeps one newline (NeMo would double it).
    assert prompts.render_prompt("nv_dpo", "<image>\nWhat?", "image", None) == nv.replace("{q}", "<image>\nWhat?")
    assert prompts.render_prompt("nv_dpo", "<image>What?", "image", None) == nv.replace("{q}", "<image>\nWhat?")
    # NeMo's add_media_sep: " \n" after the inserted token.
    assert prompts.render_prompt("nv_dpo", "Q", "video", "left", add_media_sep=True) == nv.replace("{q}", "<video> \nQ")
    right = prompts.render_prompt("nv_dpo", "Q", "video", "right", add_media_sep=True)
    assert right == nv.replace("{q}", "Q<video> \n")


def test_system_and_label_overrides():
    assert prompts.render_prompt("nvgpt", "Q", None, system="Be brief.\n\n", label="quality:9") == (
        "<extra_id_0>System\nBe brief.\n\n<extra_id_1>User\nQ\n<extra_id_1>Assistant\n<extra_id_2>quality:9\n")
    assert prompts.render_prompt("nv_steerlm", "Q", None, label="").endswith("<extra_id_1>Assistant\n")
    assert prompts.render_prompt("nv_dpo", "Q", None, label="verbosity:1").endswith(
        "Assistant\n<extra_id_2>verbosity:1\n")  # kept whole (NeMo's character-set rstrip would eat the "1")
    assert prompts.render_prompt("llama_2", "Q", None, system="S") == " [INST] <<SYS>>\nS\n<</SYS>>\n\nQ [/INST]"
    assert prompts.render_prompt("mistral", "Q", None, system="S") == "<extra_id_6> [INST] S\nQ [/INST]"
    assert prompts.render_prompt("v1", "Q", None, system="S") == "S USER: Q ASSISTANT:"
    assert prompts.render_prompt("llama_3", "Q", None, system="S").startswith(
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nS<|eot_id|>")


def test_bad_arguments_are_prompt_errors():
    with pytest.raises(PromptError, match="unknown conversation template 'chatml'"):
        prompts.render_prompt("chatml", "q")
    with pytest.raises(PromptError, match="insert_media_token must be one of"):
        prompts.render_prompt("nvgpt", "q", "video", "top")
    with pytest.raises(PromptError, match="media_type must be one of"):
        prompts.render_prompt("nvgpt", "q", "audio", "left")


@pytest.mark.parametrize("name, generated, clean", [
    ("nv_steerlm", "Hand with a robot arm\n<extra_id_1>", "Hand with a robot arm"),
    ("nv_steerlm", "red\n<extra_id_1>", "red"),  # NeMo's strip("<extra_id_1>") would leave ""
    ("nv_steerlm", f"<extra_id_2>{LABEL}\nA red circle.\n<extra_id_1>User\nmore", "A red circle."),
    ("nvgpt", " The circle moves left.\n<extra_id_7>", "The circle moves left."),
    ("nv_dpo", "square<extra_id_1>", "square"),
    ("nv_dpo", "<extra_id_2>helpfulness:4\nTwo shapes.\n<extra_id_1>", "Two shapes."),
    ("v1", " It is a dog.<extra_id_7>", "It is a dog."),
    ("v1", " It is a dog.</s>", "It is a dog."),
    ("llama_2", " A cat sits on a mat. <extra_id_7>", "A cat sits on a mat."),
    ("mistral", "left<extra_id_7> [INST] junk", "left"),
    ("llama_3", "Two shapes.<|eot_id|>", "Two shapes."),
    ("llama_3", "Two shapes.", "Two shapes."),  # cut by max tokens: no stop string
    ("plain", "a red circle on a white background\nmore", "a red circle on a white background"),
])
def test_clean_response_of_generated_text(name, generated, clean):
    assert prompts.clean_response(name, generated) == clean


@pytest.mark.parametrize("name", sorted(TEMPLATES))
def test_clean_response_of_full_text(name):
    prompt = prompts.render_prompt(name, "What color?", "video", "right")
    lead = " " if name in ("v1", "llama_2") else ""
    answer = lead + "It is red." + TEMPLATES[name].stop[0]
    assert prompts.clean_response(name, prompt + answer) == "It is red."


TURNS = [{"from": "human", "value": "<video>\nWhat color?"}, {"from": "gpt", "value": "red"},
         {"from": "human", "value": "How many?"}, {"from": "gpt", "value": "2"}]
# Two rounds as NeMo's conversation.py renders them (LLaVA data: "<video>\n" before the first question).
CONVERSATION = {
    "nvgpt": f"<extra_id_0>System\n{SYS}\n\n<extra_id_1>User\n<video>\nWhat color?\n<extra_id_1>Assistant\n"
             f"<extra_id_2>{LABEL}\nred\n<extra_id_1>User\nHow many?\n<extra_id_1>Assistant\n<extra_id_2>{LABEL}\n"
             "2\n<extra_id_1>",
    "nv_dpo": "<extra_id_0>System\n\n<extra_id_1>User\n<video>\nWhat color?\n<extra_id_1>Assistant\nred\n<extra_id_1>"
              "User\nHow many?\n<extra_id_1>Assistant\n2\n<extra_id_1>",
    "v1": f"{SYS} USER: <video>\nWhat color? ASSISTANT: red<extra_id_7> USER: How many? ASSISTANT: 2<extra_id_7>",
    "llama_2": f" [INST] <<SYS>>\n{LSYS}\n<</SYS>>\n\n<video>\nWhat color? [/INST] red <extra_id_7>"
               "<extra_id_6> [INST] How many? [/INST] 2 <extra_id_7>",
    "mistral": "<extra_id_6> [INST] <video>\nWhat color? [/INST]red<extra_id_7> [INST] How many? [/INST]2<extra_id_7>",
    "llama_3": f"<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n{LSYS}<|eot_id|>"
               "<|start_header_id|>user<|end_header_id|>\n\n<video>\nWhat color?<|eot_id|>"
               "<|start_header_id|>assistant<|end_header_id|>\n\nred<|eot_id|>"
               "<|start_header_id|>user<|end_header_id|>\n\nHow many?<|eot_id|>"
               "<|start_header_id|>assistant<|end_header_id|>\n\n2<|eot_id|>",
}
CONVERSATION["nv_steerlm"] = CONVERSATION["nvgpt"]
END = {"nvgpt": "\n<extra_id_1>", "nv_steerlm": "\n<extra_id_1>", "nv_dpo": "\n<extra_id_1>", "v1": "<extra_id_7>",
       "llama_2": " <extra_id_7>", "mistral": "<extra_id_7>", "llama_3": "<|eot_id|>"}


@pytest.mark.parametrize("name", sorted(CONVERSATION))
def test_conversation_text_and_spans(name):
    text, spans = prompts.render_conversation(name, TURNS, "video")
    assert text == CONVERSATION[name]
    assert [text[a:b] for a, b in spans] == ["red" + END[name], "2" + END[name]]
    assert spans[-1][1] == len(text)


def test_plain_conversation():
    text, spans = prompts.render_conversation("plain", TURNS[:2], "video")
    assert (text, spans) == ("<video>red\n", [(7, 11)])  # the human text is dropped, as in NeMo
    with pytest.raises(PromptError, match="takes one human/gpt pair; got 4"):
        prompts.render_conversation("plain", TURNS, "video")


@pytest.mark.parametrize("name", sorted(PROMPT))
def test_inference_prompt_is_a_prefix_of_the_training_text(name):
    turns = [{"from": "human", "value": "What color?<video>"}, {"from": "gpt", "value": "red"}]
    text, _ = prompts.render_conversation(name, turns, "video")
    assert text.startswith(prompts.render_prompt(name, "What color?", "video", "right"))


def test_turn_labels_roles_and_media_checks():
    turns = [{"from": "User", "value": "<image>\nQ"}, {"from": "Assistant", "value": "A", "label": "quality:9"}]
    text, spans = prompts.render_conversation("nv_dpo", turns, "image")
    assert text.endswith("Assistant\n<extra_id_2>quality:9\nA\n<extra_id_1>")
    assert text[slice(*spans[0])] == "A\n<extra_id_1>"  # the label line carries no loss
    with pytest.raises(PromptError, match="turn 1: expected a assistant turn"):
        prompts.render_conversation("nvgpt", [TURNS[0], TURNS[0]], "video")
    with pytest.raises(PromptError, match="human/gpt pairs; got 3"):
        prompts.render_conversation("nvgpt", TURNS[:3], "video")
    with pytest.raises(PromptError, match="must hold one <video> token, found none"):
        prompts.render_conversation("nvgpt", [{"from": "human", "value": "Q"}, TURNS[1]], "video")
    with pytest.raises(PromptError, match=r"found \['<image>'\]"):
        prompts.render_conversation("nvgpt", [{"from": "human", "value": "<image>\nQ"}, TURNS[1]], "video")
    text, _ = prompts.render_conversation("nvgpt", [{"from": "human", "value": "Q"}, TURNS[1]], None)
    assert "User\nQ\n" in text
    text, _ = prompts.render_conversation("plain", TURNS[:2], None)  # text used as given (tokenizer training)
    assert text == "<video>\nWhat color?red\n"


@pytest.mark.parametrize("name", sorted(TEMPLATES))
def test_tokenize_with_media_places_ids_and_labels(tiny_tokenizer, name):
    turns = TURNS[:2] if name == "plain" else TURNS
    text, spans = prompts.render_conversation(name, turns, "video")
    media_id = len(tiny_tokenizer) + 7  # out of vocabulary, like the fake ids the engines use
    tp = prompts.tokenize_with_media(tiny_tokenizer, text, 12, media_id, add_bos=False, spans=spans)
    first = tp.media_positions[0]
    assert tp.media_positions == list(range(first, first + 12))
    assert [i for i, t in enumerate(tp.input_ids) if t == media_id] == tp.media_positions
    assert tiny_tokenizer.decode(tp.input_ids[:first]) == text[: text.index("<video>")]
    assert tiny_tokenizer.decode(tp.input_ids[first + 12:]) == text[text.index("<video>") + 7:]
    # Loss exactly on the spans: each run of labelled tokens decodes to one span, give or take the
    # leading space a byte-level token carries (" red" for an answer "red" after "ASSISTANT:").
    assert all(lab in (t, prompts.IGNORE_INDEX) for t, lab in zip(tp.input_ids, tp.labels))
    runs, run = [], []
    for t, lab in zip(tp.input_ids + [0], tp.labels + [prompts.IGNORE_INDEX]):
        if lab != prompts.IGNORE_INDEX:
            run.append(t)
        elif run:
            runs, run = runs + [tiny_tokenizer.decode(run)], []
    assert [r.removeprefix(" ") for r in runs] == [text[a:b] for a, b in spans]


def test_tokenize_bos_text_only_and_edges(tiny_tokenizer):
    tp = prompts.tokenize_with_media(tiny_tokenizer, "<video>", 5, 3, add_bos=True)
    assert tp.input_ids == [tiny_tokenizer.bos_token_id] + [3] * 5 and tp.media_positions == [1, 2, 3, 4, 5]
    assert tp.labels is None
    tp = prompts.tokenize_with_media(tiny_tokenizer, "just text", 0, 3, add_bos=False)
    assert tp.media_positions == [] and tiny_tokenizer.decode(tp.input_ids) == "just text"
    mistral = prompts.render_prompt("mistral", "Q", "video", "right")  # carries its own BOS: not doubled
    ids = prompts.tokenize_with_media(tiny_tokenizer, mistral, 2, 3, add_bos=True).input_ids
    assert ids[0] == tiny_tokenizer.bos_token_id and ids[1] != tiny_tokenizer.bos_token_id


def test_tokenize_errors(tiny_tokenizer):
    with pytest.raises(PromptError, match="more media tokens than media items: the prompt holds 2"):
        prompts.tokenize_with_media(tiny_tokenizer, "<video> and <image>", 4, 3, False)
    with pytest.raises(PromptError, match="no <video>/<image> token for its media"):
        prompts.tokenize_with_media(tiny_tokenizer, "no media here", 4, 3, False)
    with pytest.raises(PromptError, match="its line has no media"):
        prompts.tokenize_with_media(tiny_tokenizer, "<video> here", 0, 3, False)


def test_num_media_tokens():
    assert prompts.num_media_tokens(8, 256) == 2048 and prompts.num_media_tokens(1, 576) == 576
    with pytest.raises(PromptError, match="got 0 and 256"):
        prompts.num_media_tokens(0, 256)


def test_stop_strings_and_special_tokens():
    assert prompts.stop_strings("nv_steerlm") == ["<extra_id_1>", "<extra_id_7>"]  # NeMo's end_strings default
    assert prompts.stop_strings("llama_3")[0] == "<|eot_id|>"
    for name in TEMPLATES:
        specials = prompts.special_tokens(name)
        assert {"<image>", "<video>"} <= set(specials)
        prompt, _ = prompts.render_conversation(name, TURNS[:2], "video")
        for marker in ("<extra_id_", "<|"):  # every marker the template writes is a special token
            at = prompt.find(marker)
            while at != -1:
                end = prompt.index(">", at) + 1
                assert prompt[at:end] in specials, (name, prompt[at:end])
                at = prompt.find(marker, end)
