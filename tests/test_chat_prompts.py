"""Conversations (system, earlier rounds, media in any user turn) rendered with the model's template."""
from __future__ import annotations

import pytest

from videoneva import prompts
from videoneva.errors import PromptError
from videoneva.templates import TEMPLATES

CHAT_TEMPLATES = sorted(n for n in TEMPLATES if not TEMPLATES[n].media_only_user)


@pytest.mark.parametrize("name", sorted(TEMPLATES))
@pytest.mark.parametrize("media_type,insert", [("video", "right"), ("image", "left"), (None, None)])
def test_one_question_renders_as_render_prompt(name, media_type, insert):
    if TEMPLATES[name].media_only_user and media_type is None:
        pytest.skip("plain needs media")
    assert prompts.render_chat(name, [], "What is it?", media_type, insert) == \
        prompts.render_prompt(name, "What is it?", media_type, insert)


@pytest.mark.parametrize("name", CHAT_TEMPLATES)
def test_earlier_rounds_render_as_training_text_does(name):
    """The prompt of round two is the training text of round one, then round two's user turn and
    assistant head: the layout the model was finetuned on."""
    turns = [{"from": "human", "value": "<video>\nWhat moves?"}, {"from": "gpt", "value": "A red circle."},
             {"from": "human", "value": "Where to?"}, {"from": "gpt", "value": "left"}]
    train, spans = prompts.render_conversation(name, turns, "video")
    chat = prompts.render_chat(name, [{"role": "user", "content": "<video>\nWhat moves?"},
                                      {"role": "assistant", "content": "A red circle."}], "Where to?", "video")
    t = TEMPLATES[name]
    # the training text up to round two's answer; inference prompts add "\n" after "<image>" only
    assert train[: spans[1][0] - len(t.answer_lead)] == chat
    assert chat.count("<video>") == 1


def test_the_media_token_stays_where_the_user_put_it():
    """Media in an earlier turn is not inserted again into the question; without a token anywhere it
    goes into the last turn."""
    history = [{"role": "user", "content": "Look: <video> ok?"}, {"role": "assistant", "content": "ok"}]
    p = prompts.render_chat("nv_steerlm", history, "What color?", "video", "right")
    assert p.count("<video>") == 1 and "Look: <video> ok?" in p and "What color?\n<extra_id_1>" in p
    p = prompts.render_chat("nv_steerlm", [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}],
                            "What color?", "video", "right")
    assert "What color?<video>" in p and p.count("<video>") == 1


def test_a_system_message_gets_the_templates_trailing_newlines():
    p = prompts.render_chat("nv_steerlm", [{"role": "system", "content": "Answer briefly."}], "Hi")
    assert p.startswith("<extra_id_0>System\nAnswer briefly.\n\n<extra_id_1>User\nHi\n<extra_id_1>Assistant\n")
    p = prompts.render_chat("llama_3", [{"role": "system", "content": "Be brief."}], "Hi")
    assert "system<|end_header_id|>\n\nBe brief.<|eot_id|>" in p


@pytest.mark.parametrize("messages,match", [
    ([{"role": "assistant", "content": "x"}], "expected role 'user'"),
    ([{"role": "user", "content": "x"}], "end with an assistant turn"),
    ([{"role": "user", "content": "a"}, {"role": "system", "content": "b"}], "expected role 'assistant'"),
    ([{"role": "user", "content": 3}], "expected {'role': str, 'content': str}"),
    ([{"role": "user", "content": "a", "name": "x"}], "expected {'role'"),
    ({"role": "user"}, "must be a list"),
])
def test_a_broken_conversation_is_named(messages, match):
    with pytest.raises(PromptError, match=match):
        prompts.render_chat("nv_steerlm", messages, "q")


def test_plain_takes_one_turn():
    with pytest.raises(PromptError, match="one user turn"):
        prompts.render_chat("plain", [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}], "q",
                            "video")
