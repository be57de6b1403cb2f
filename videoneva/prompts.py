"""Prompt rendering, training spans and CLEAN RESPONSE extraction (templates.py's logic); tokenization is
prompt_ids.py's, re-exported here."""
# The training dataloader, the in-process pipeline and the Triton models all call these functions,
# so they agree on prompts, on which characters carry loss and on where the media positions are.
from __future__ import annotations

import re
from typing import Optional

from videoneva.errors import PromptError
from videoneva.prompt_ids import IGNORE_INDEX, MEDIA_RE as _MEDIA_RE, MEDIA_TOKENS, TokenizedPrompt, tokenize_with_media
from videoneva.templates import TEMPLATES, Template

__all__ = ["IGNORE_INDEX", "MEDIA_TOKENS", "TokenizedPrompt", "tokenize_with_media", "render_prompt",
           "render_conversation", "clean_response", "stop_strings", "special_tokens", "num_media_tokens"]
INSERT_CHOICES = ("left", "right", None)
_USER_ROLES = ("human", "user")
_ASSISTANT_ROLES = ("gpt", "assistant")


def get_template(name: str) -> Template:
    """The template called `name`; PromptError naming the valid ones otherwise.

    Args:
        name: a key of TEMPLATES.
    """
    if name not in TEMPLATES:
        raise PromptError(f"unknown conversation template {name!r}; expected one of {sorted(TEMPLATES)}")
    return TEMPLATES[name]


def _media_token(media_type: Optional[str]) -> Optional[str]:
    if media_type is None:
        return None
    if media_type not in MEDIA_TOKENS:
        raise PromptError(f"media_type must be one of {sorted(MEDIA_TOKENS)} or null, got {media_type!r}")
    return MEDIA_TOKENS[media_type]


def place_media(text: str, media_type: Optional[str], insert_media_token: Optional[str],
                add_media_sep: bool = False) -> str:
    """Put the media token into the user text the way NeMo's neva_evaluation.py does.

    left: token + text; right: text + token (the seed: "Can you describe the scene?<video>"); with
    add_media_sep, " \\n" follows the token. NeMo adds no separator of its own here, so a left video
    reads "<video>What …". None: the text is used as given. A text that already holds the token gets
    no second one (NeMo would add it and then fail on two media items).

    Args:
        text: the user's question.
        media_type: "image" | "video" | None (no media: text returned as is).
        insert_media_token: "left" | "right" | None.
        add_media_sep: put " \\n" after the inserted token.
    """
    if insert_media_token not in INSERT_CHOICES:
        raise PromptError(f"insert_media_token must be one of {list(INSERT_CHOICES)}, got {insert_media_token!r}")
    token = _media_token(media_type)
    if token is None or insert_media_token is None or token in text:
        return text
    token += " \n" if add_media_sep else ""
    return token + text if insert_media_token == "left" else text + token


def _image_newline(msg: str) -> str:
    # NeMo's neva_process_prompts rewrites every "<image>" to "<image>\n" at inference (not "<video>":
    # the seed shows "…scene?<video>\n<extra_id_1>", that "\n" being the turn's end). NeMo doubles the
    # newline of a text that already has "<image>\n" (LLaVA-style prompts); we add it only where missing.
    return re.sub(r"<image>(?!\n)", "<image>\n", msg)


def _system_text(t: Template, system: Optional[str]) -> str:
    text = t.system if system is None else system
    if t.skip_empty_system and not text:
        return ""
    return t.system_block.replace("{system}", text)


def _head(t: Template, system: Optional[str]) -> str:
    return t.prefix + ("" if t.system_in_first_user else _system_text(t, system))


def _user_turn(t: Template, msg: str, first: bool, system: Optional[str]) -> str:
    prefix = t.first_user_prefix if first and t.first_user_prefix is not None else t.user_prefix
    if first and t.system_in_first_user:
        prefix += _system_text(t, system)
    return prefix + msg + t.user_suffix


def _assistant_head(t: Template, label: Optional[str]) -> str:
    label = t.default_label if label is None else label
    # NeMo's inference path rstrips "\n<extra_id_1>" as a character set, which also eats a label's
    # trailing "1"/"a"/"d"… (e.g. "verbosity:1"); the label is kept whole here.
    line = t.label_line.replace("{label}", label) if t.label_line and label else ""
    return t.assistant_prefix + line


def render_prompt(template: str, text: str, media_type: Optional[str] = "video",
                  insert_media_token: Optional[str] = None, system: Optional[str] = None,
                  label: Optional[str] = None, add_media_sep: bool = False) -> str:
    """The inference prompt: system block, one user turn, and the assistant prefix to continue from.

    nv_steerlm and nvgpt end with "<extra_id_1>Assistant\\n<extra_id_2>quality:4,…,verbosity:4\\n".

    Args:
        template: a name in TEMPLATES.
        text: the user's question.
        media_type: "image" | "video" | None (no media: the text is used as given).
        insert_media_token: "left" | "right" | None, see place_media.
        system: replaces the template's system text (used verbatim, NeMo's trailing newlines included).
        label: SteerLM attribute line for nv templates; "" leaves it out, None takes the default.
        add_media_sep: NeMo's add_media_sep: " \\n" after an inserted media token.
    """
    t = get_template(template)
    token = _media_token(media_type)
    if t.media_only_user:
        if token is None:
            raise PromptError(f"template {template!r} needs media (its user turn is the media token); "
                              "media_type is null")
        msg = token
    else:
        msg = place_media(text, media_type, insert_media_token, add_media_sep)
        if t.image_newline:
            msg = _image_newline(msg)
    return _head(t, system) + _user_turn(t, msg, True, system) + _assistant_head(t, label)


def _role(t: Template, turn: dict, i: int) -> str:
    if not isinstance(turn, dict) or not isinstance(turn.get("value"), str):
        raise PromptError(f"turn {i}: expected {{'from': …, 'value': str}}, got {turn!r:.120}")
    who = str(turn.get("from", "")).lower()
    want = "user" if i % 2 == 0 else "assistant"
    own = t.roles[i % 2].lower()
    names = (_USER_ROLES if want == "user" else _ASSISTANT_ROLES) + ((own,) if own else ())
    if who not in names:
        raise PromptError(f"turn {i}: expected a {want} turn (from: {'|'.join(dict.fromkeys(names))}), "
                          f"got from={turn.get('from')!r}; turns alternate human, gpt, starting with human")
    return want


def render_conversation(template: str, turns: list[dict], media_type: Optional[str] = None,
                        system: Optional[str] = None) -> tuple[str, list[tuple[int, int]]]:
    """Training text for LLaVA-style turns, and the character spans that carry loss.

    Each span is one answer plus its end separator (e.g. "red\\n<extra_id_1>"), as NeMo's label
    masking keeps them; the system block, user turns, assistant prefixes and SteerLM label lines
    are masked. The media token must already be in the turns (LLaVA data holds "<video>\\n…");
    unlike at inference, "<image>" gets no extra newline (NeMo does not add one in training).

    Args:
        template: a name in TEMPLATES.
        turns: [{"from": "human"|"gpt", "value": str, "label"?: str}, …] alternating, human first;
            a gpt turn's "label" sets its SteerLM line (nv templates).
        media_type: "image" | "video" for an item with media (its token must then appear exactly
            once); None: the text is used as given (tokenize_with_media rejects a media token there).
        system: replaces the template's system text.

    Returns:
        (text, spans) with spans [(start, end), …] into text, one per assistant turn.
    """
    t = get_template(template)
    token = _media_token(media_type)
    if not turns or len(turns) % 2:
        raise PromptError(f"a conversation needs human/gpt pairs; got {len(turns)} turns")
    if t.media_only_user and len(turns) != 2:
        raise PromptError(f"template {template!r} takes one human/gpt pair; got {len(turns)} turns")
    text, spans = _head(t, system), []
    for i, turn in enumerate(turns):
        if _role(t, turn, i) == "user":
            msg = token if t.media_only_user and token else turn["value"]
            text += _user_turn(t, msg, i == 0, system)
            continue
        text += _assistant_head(t, turn.get("label")) + t.answer_lead
        start = len(text)
        text += turn["value"] + t.assistant_suffix
        spans.append((start, len(text)))
        if i < len(turns) - 1:
            text += t.round_sep
    found = _MEDIA_RE.findall(text)
    if token is not None and found != [token]:
        raise PromptError(f"a conversation with {media_type} media must hold one {token} token, found "
                          f"{found or 'none'}")
    return text, spans


CHAT_ROLES = ("system", "user", "assistant")


def chat_turns(messages: list, text: str) -> tuple[Optional[str], list[str]]:
    """(system text or None, the turns' texts) of a chat ending with the user's `text`.

    Args:
        messages: the conversation before `text`: [{"role": "system"|"user"|"assistant", "content":
            str}, …]: an optional system message first, then user and assistant turns alternating,
            starting with user and ending with assistant (`text` is the next user turn).
        text: the last user turn.

    Raises:
        PromptError naming the message that breaks this order.
    """
    if not isinstance(messages, list):
        raise PromptError(f"messages must be a list of {{'role', 'content'}} objects, got {type(messages).__name__}")
    system, turns = None, []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or set(m) != {"role", "content"} or not isinstance(m["content"], str):
            raise PromptError(f"messages[{i}]: expected {{'role': str, 'content': str}}, got {m!r:.120}")
        role = m["role"]
        want = "user" if len(turns) % 2 == 0 else "assistant"
        if role == "system" and i == 0:
            system = m["content"]
        elif role != want:
            raise PromptError(f"messages[{i}]: expected role {want!r}, got {role!r}; a conversation is an "
                              f"optional system message, then user and assistant turns alternating (roles: "
                              f"{', '.join(CHAT_ROLES)}), ending with the question's user turn")
        else:
            turns.append(m["content"])
    if len(turns) % 2:
        raise PromptError(f"messages must end with an assistant turn (the question is the next user turn); got "
                          f"{len(turns)} turns")
    return system, [*turns, text]


def render_chat(template: str, messages: list, text: str, media_type: Optional[str] = None,
                insert_media_token: Optional[str] = None, label: Optional[str] = None) -> str:
    """The inference prompt of a conversation: earlier rounds rendered as in training, then the question.

    With no messages this is render_prompt. The media token may stand in any user turn; when none
    holds it, it is placed in the last one by insert_media_token (see place_media). A system
    message replaces the template's system text and gets that text's trailing newlines (nv
    templates: "\n\n"), the layout the model was trained on. Earlier assistant turns carry the
    template's default label line (nv_steerlm).

    Args:
        template: a name in TEMPLATES.
        messages, text: see chat_turns.
        media_type: "image" | "video" | None.
        insert_media_token: "left" | "right" | None.
        label: SteerLM attribute line of the answer to generate (None: the default).
    """
    t = get_template(template)
    system, turns = chat_turns(messages, text)
    if system is not None and not system.endswith("\n"):
        system += t.system[len(t.system.rstrip("\n")):]
    if t.media_only_user:
        if len(turns) != 1:
            raise PromptError(f"template {template!r} takes one user turn; got {len(turns)}")
        return render_prompt(template, text, media_type, insert_media_token, system, label)
    token = _media_token(media_type)
    placed = token is not None and any(token in u for u in turns[::2])
    out = _head(t, system)
    for i, msg in enumerate(turns):
        if i % 2:
            out += _assistant_head(t, None) + t.answer_lead + msg + t.assistant_suffix + t.round_sep
            continue
        if i == len(turns) - 1 and not placed:
            msg = place_media(msg, media_type, insert_media_token)
        out += _user_turn(t, _image_newline(msg) if t.image_newline else msg, i == 0, system)
    return out + _assistant_head(t, label)


def stop_strings(template: str) -> list[str]:
    """Strings that end an answer for this template (generation stops at them).

    Args:
        template: a name in TEMPLATES.
    """
    return list(get_template(template).stop)


def special_tokens(template: str) -> list[str]:
    """Tokens a tokenizer must hold unsplit for this template, the media tokens included.

    Args:
        template: a name in TEMPLATES.
    """
    return list(dict.fromkeys([*get_template(template).specials, *MEDIA_TOKENS.values()]))


_LABEL_LINE = re.compile(r"\A\s*<extra_id_2>[^\n]*\n")


def clean_response(template: str, generated: str) -> str:
    """NeMo's "CLEAN RESPONSE": the answer alone, from the generated text or the whole text.

    Works on either the generated continuation or prompt + continuation: the answer starts after
    the last of the template's answer markers (nv: "<extra_id_1>Assistant\\n" and then a SteerLM
    label line; llama_2/mistral: "[/INST]"; llama_3: the assistant header; v1: "ASSISTANT:"), ends
    at the first stop string, and is stripped of surrounding whitespace. NeMo strips "<extra_id_1>"
    with str.strip, i.e. as a set of characters, which also eats answers' own end letters ("red"
    → ""); the token is removed as a string here. NeMo matches only labels starting "quality:";
    any label line is removed here.

    Args:
        template: a name in TEMPLATES.
        generated: the decoded continuation (special tokens kept), or the prompt followed by it.
    """
    t = get_template(template)
    ends = [at + len(m) for m in t.answer_markers for at in (generated.rfind(m),) if at != -1]
    text = generated[max(ends):] if ends else generated
    if t.label_line:
        text = _LABEL_LINE.sub("", text, count=1)
    cuts = [i for i in (text.find(s) for s in t.stop) if i != -1]
    return text[: min(cuts)].strip() if cuts else text.strip()


def format_seed_output(full_prompt: str, clean: str) -> str:
    """The printed form of one answer as in the seed: the prompt, then "CLEAN RESPONSE: <answer>".

    Args:
        full_prompt: the rendered prompt (it ends with a newline for the nv templates).
        clean: clean_response() of the answer.
    """
    return f"{full_prompt}CLEAN RESPONSE: {clean}"


def num_media_tokens(num_frames: int, image_token_len: int) -> int:
    """Positions one media item takes in the prompt: frames × tokens per frame (computed only here).

    Args:
        num_frames: frames of a video (1 for an image).
        image_token_len: tokens per frame after the projector, e.g. (224 // 14) ** 2 = 256.
    """
    if num_frames < 1 or image_token_len < 1:
        raise PromptError(f"num_frames and image_token_len must be >= 1, got {num_frames} and {image_token_len}")
    return num_frames * image_token_len
