"""Prompt rendering for every template against hand-written strings; the seed's example verbatim."""
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

EXPECTED_LEFT_IMAGE = {
    "nvgpt": f"<extra_id_0>System\n{SYS}\n\n<extra_id_1>User\n<image>\nWhat is it?\n<extra_id_1>Assistant\n",
    "nv_steerlm": f"<extra_id_0>System\n{SYS}\n\n<extra_id_1>User\n<image>\nWhat is it?\n<extra_id_1>Assistant\n"
                  f"<extra_id_2>{LABEL}\n",
    "nv_dpo": "<extra_id_0>System\n\n<extra_id_1>User\n<image>\nWhat is it?\n<extra_id_1>Assistant\n",
    "v1": f"{SYS} USER: <image>\nWhat is it? ASSISTANT:",
    "llama_2": f"<extra_id_6>[INST] <<SYS>>\n{LSYS}\n<</SYS>>\n\n<image>\nWhat is it? [/INST]",
    "mistral": "<extra_id_6>[INST] <image>\nWhat is it? [/INST]",
    "llama_3": f"<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n{LSYS}<|eot_id|>"
               "<|start_header_id|>user<|end_header_id|>\n\n<image>\nWhat is it?<|eot_id|>"
               "<|start_header_id|>assistant<|end_header_id|>\n\n",
    "plain": "<image>\nWhat is it?\n",
}


@pytest.mark.parametrize("name", sorted(TEMPLATES))
def test_every_template_renders_as_written(name):
    assert prompts.render_prompt(name, "What is it?", "image", "left") == EXPECTED_LEFT_IMAGE[name]
    right = prompts.render_prompt(name, "What is it?", "video", "right")
    assert right == EXPECTED_LEFT_IMAGE[name].replace("<image>\nWhat is it?", "What is it?<video>")


# The seed's example output (NeMo's Video NeVA page), verbatim.
SEED_EXAMPLE = (
    "<extra_id_0>System\nA chat between a curious user and an artificial intelligence assistant. The assistant "
    "gives helpful, detailed, and polite answers to the user's questions.\n\n<extra_id_1>User\nCan you describe "
    "the scene?<video>\n<extra_id_1>Assistant\n<extra_id_2>quality:4,toxicity:0,humor:0,creativity:0,"
    "helpfulness:4,correctness:4,coherence:4,complexity:4,verbosity:4\nCLEAN RESPONSE: Hand with a robot arm"
)


def test_nv_steerlm_matches_the_seed_example_character_for_character():
    prompt = prompts.render_prompt("nv_steerlm", "Can you describe the scene?", "video", "right")
    assert prompts.format_seed_output(prompt, "Hand with a robot arm") == SEED_EXAMPLE
    seed_files = sorted(SEED.glob("*.txt")) if SEED.is_dir() else []
    if seed_files:  # the seed page itself, where the shared folder is beside the checkout (CI)
        assert SEED_EXAMPLE in seed_files[0].read_text()


def test_media_token_already_in_text_or_no_insert():
    assert "Describe <video> now" in prompts.render_prompt("nvgpt", "Describe <video> now", "video", "left")
    assert "User\nplain text\n" in prompts.render_prompt("nvgpt", "plain text", "video", None)


@pytest.mark.parametrize("name, generated, clean", [
    ("nv_steerlm", "Hand with a robot arm\n<extra_id_1>", "Hand with a robot arm"),
    ("nv_steerlm", f"<extra_id_2>{LABEL}\nA red circle.\n<extra_id_1>User", "A red circle."),
    ("nvgpt", " blue \n<extra_id_1>", "blue"),
    ("nv_dpo", "square<extra_id_7>", "square"),
    ("v1", " It is a dog.<extra_id_7>", "It is a dog."),
    ("llama_2", " A cat. <extra_id_7>", "A cat."),
    ("mistral", "left<extra_id_7>junk", "left"),
    ("llama_3", "Two shapes.<|eot_id|>", "Two shapes."),
    ("plain", "red circle\nmore", "red circle"),
])
def test_clean_response(name, generated, clean):
    assert prompts.clean_response(name, generated) == clean


@pytest.mark.parametrize("name", sorted(TEMPLATES))
def test_conversation_spans_cover_exactly_the_answers(name):
    turns = [{"from": "human", "value": "<video>\nWhat color?"}, {"from": "gpt", "value": "red"},
             {"from": "human", "value": "How many?"}, {"from": "gpt", "value": "2"}]
    text, spans = prompts.render_conversation(name, turns, "video")
    suffix = TEMPLATES[name].assistant_suffix
    assert [text[a:b] for a, b in spans] == ["red" + suffix, "2" + suffix]
    # The inference prompt is a prefix of the training text: the model continues where it learnt to.
    assert text.startswith(prompts.render_prompt(name, "What color?", "video", "left"))


def test_tokenize_with_media_places_ids_and_labels(tiny_tokenizer):
    text, spans = prompts.render_conversation(
        "nv_steerlm", [{"from": "human", "value": "<video>\nWhat color?"}, {"from": "gpt", "value": "red"}], "video")
    tp = prompts.tokenize_with_media(tiny_tokenizer, text, 12, 3, add_bos=True, spans=spans)
    assert tp.input_ids[0] == tiny_tokenizer.bos_token_id
    assert tp.input_ids[tp.media_positions[0]: tp.media_positions[-1] + 1] == [3] * 12
    assert tp.media_positions == list(range(tp.media_positions[0], tp.media_positions[0] + 12))
    kept = [t for t, lab in zip(tp.input_ids, tp.labels) if lab != prompts.IGNORE_INDEX]
    assert tiny_tokenizer.decode(kept) == "red\n<extra_id_1>"
    before = tiny_tokenizer.decode(tp.input_ids[1: tp.media_positions[0]])
    assert before.endswith("<extra_id_1>User\n")


def test_tokenize_errors(tiny_tokenizer):
    with pytest.raises(PromptError, match="2 media tokens"):
        prompts.tokenize_with_media(tiny_tokenizer, "<video> and <image>", 4, 3, False)
    with pytest.raises(PromptError, match="no <video>/<image> token"):
        prompts.tokenize_with_media(tiny_tokenizer, "no media here", 4, 3, False)
    with pytest.raises(PromptError, match="no media"):
        prompts.tokenize_with_media(tiny_tokenizer, "<video> here", 0, 3, False)
    with pytest.raises(PromptError, match="unknown conversation template"):
        prompts.render_prompt("chatml", "q")


def test_num_media_tokens():
    assert prompts.num_media_tokens(8, 256) == 2048
