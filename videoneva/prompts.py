"""Prompt rendering, media-token tokenization and clean-response extraction (one place for all three).

Inference prompts, training conversations (with the character spans that carry loss) and the
"CLEAN RESPONSE" of NeMo's SteerLM templates all come from the template table in templates.py.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from videoneva.errors import PromptError
from videoneva.templates import TEMPLATES, Template

MEDIA_TOKENS = {"image": "<image>", "video": "<video>"}
IGNORE_INDEX = -100


def get_template(name: str) -> Template:
    if name not in TEMPLATES:
        raise PromptError(f"unknown conversation template {name!r}; choose one of {sorted(TEMPLATES)}")
    return TEMPLATES[name]


def place_media(text: str, media_type: Optional[str], insert_media_token: Optional[str]) -> str:
    """Put the media token into the user text.

    right: text + token, as the seed's example ("Can you describe the scene?<video>").
    left: token + "\\n" + text, as LLaVA-style training data ("<video>\\nWhat is …").
    None: the text is used as given (it may already hold the token, or the item has no media).
    """
    if media_type is None or insert_media_token is None:
        return text
    if media_type not in MEDIA_TOKENS:
        raise PromptError(f"media_type must be one of {sorted(MEDIA_TOKENS)}, got {media_type!r}")
    token = MEDIA_TOKENS[media_type]
    if token in text:
        return text
    if insert_media_token == "right":
        return text + token
    if insert_media_token == "left":
        return token + "\n" + text
    raise PromptError(f"insert_media_token must be left, right or null, got {insert_media_token!r}")


def _system_block(t: Template, system: Optional[str]) -> str:
    return t.head.format(system=t.system if system is None else system)


def _user(t: Template, msg: str, first: bool, system: Optional[str]) -> str:
    if first and t.first_user_prefix:
        return t.first_user_prefix.format(system=t.system if system is None else system) + msg + t.user_suffix
    return t.user_prefix + msg + t.user_suffix


def _assistant_head(t: Template, label: Optional[str]) -> str:
    lab = t.label if label is None else label
    return t.assistant_prefix + (f"<extra_id_2>{lab}\n" if t.style == "nv" and lab else "")


def render_prompt(template: str, text: str, media_type: Optional[str] = "video",
                  insert_media_token: Optional[str] = None, system: Optional[str] = None,
                  label: Optional[str] = None) -> str:
    """The inference prompt: system block, one user turn, and the assistant prefix to continue from.

    For nv_steerlm this ends with "<extra_id_1>Assistant\\n<extra_id_2>quality:4,…,verbosity:4\\n".
    """
    t = get_template(template)
    msg = place_media(text, media_type, insert_media_token)
    return _system_block(t, system) + _user(t, msg, True, system) + _assistant_head(t, label)


def render_conversation(template: str, turns: list[dict], media_type: Optional[str] = None,
                        system: Optional[str] = None) -> tuple[str, list[tuple[int, int]]]:
    """Training text for LLaVA-style turns [{"from": "human"|"gpt", "value": …}, …].

    Returns (text, spans): the character spans that carry loss, i.e. each assistant answer and
    its end separator (NeMo masks the instruction parts of every round).
    """
    t = get_template(template)
    text, spans = _system_block(t, system), []
    for i, turn in enumerate(turns):
        role, value = turn.get("from"), turn.get("value")
        if not isinstance(value, str):
            raise PromptError(f"turn {i}: 'value' must be a string, got {type(value).__name__}")
        if role in ("human", "user"):
            text += _user(t, value, i == 0, system)
        elif role in ("gpt", "assistant"):
            text += _assistant_head(t, None) + t.answer_lead
            start = len(text)
            text += value + t.assistant_suffix
            spans.append((start, len(text)))
        else:
            raise PromptError(f"turn {i}: 'from' must be human or gpt, got {role!r}")
    if media_type is not None and MEDIA_TOKENS[media_type] not in text:
        raise PromptError(f"conversation has {media_type} media but no {MEDIA_TOKENS[media_type]} token")
    return text, spans


def stop_strings(template: str) -> list[str]:
    """Strings that end an answer for this template."""
    return list(get_template(template).stop)


def special_tokens(template: str) -> list[str]:
    """Tokens a tokenizer must hold unsplit for this template (media tokens included)."""
    return [*get_template(template).specials, *MEDIA_TOKENS.values()]


def clean_response(template: str, generated: str) -> str:
    """NeMo's CLEAN RESPONSE, applied to the generated text (not the prompt).

    The answer after the last SteerLM label line (if the model wrote one), before the first stop
    string, without the template's own markers, stripped.
    """
    t = get_template(template)
    text = generated
    if t.style == "nv" and "<extra_id_2>" in text:
        text = text.rsplit("<extra_id_2>", 1)[1]
        text = text.split("\n", 1)[1] if "\n" in text else ""
    if t.style == "llama_2" and "[/INST]" in text:
        text = text.rsplit("[/INST]", 1)[1]
    if t.style == "llama_3" and "assistant<|end_header_id|>\n\n" in text:
        text = text.rsplit("assistant<|end_header_id|>\n\n", 1)[1]
    if t.style == "vicuna" and "ASSISTANT:" in text:
        text = text.rsplit("ASSISTANT:", 1)[1]
    cut = min([i for i in (text.find(s) for s in t.stop if s) if i != -1] or [len(text)])
    return text[:cut].strip()


def format_seed_output(full_prompt: str, clean: str) -> str:
    """The printed form of one answer, as in the seed: the prompt, then 'CLEAN RESPONSE: …'."""
    return f"{full_prompt}CLEAN RESPONSE: {clean}"


def num_media_tokens(num_frames: int, image_token_len: int) -> int:
    """Media positions of one item: frames × tokens per frame (the only place this is computed)."""
    return num_frames * image_token_len


@dataclass
class TokenizedPrompt:
    input_ids: list[int]
    media_positions: list[int] = field(default_factory=list)
    labels: Optional[list[int]] = None


def tokenize_with_media(tokenizer, prompt: str, num_media_tokens: int, media_token_id: int, add_bos: bool,
                        spans: Optional[list[tuple[int, int]]] = None) -> TokenizedPrompt:
    """Tokenize text around its media token and put num_media_tokens media ids where it stood.

    Args:
        tokenizer: a fast tokenizer holding the template's special tokens.
        prompt: text with at most one <image>/<video> token.
        num_media_tokens: media positions to insert (0 for text-only prompts).
        media_token_id: id written at media positions (callers may replace them by fake ids).
        add_bos: prepend the tokenizer's BOS id.
        spans: character spans that carry loss; when given, labels are returned (-100 elsewhere).
    """
    pieces, pos = [], 0  # (start_char, text) pieces between media tokens
    media_at = sorted((prompt.find(tok), tok) for tok in MEDIA_TOKENS.values() if tok in prompt)
    count = sum(prompt.count(tok) for tok in MEDIA_TOKENS.values())
    if count > 1:
        raise PromptError(f"the prompt holds {count} media tokens; one media item per prompt is supported")
    if num_media_tokens and not media_at:
        raise PromptError("the prompt has no <video>/<image> token for its media; put one in the text or set "
                          "inference.insert_media_token=left|right")
    if media_at and not num_media_tokens:
        raise PromptError(f"the prompt holds {media_at[0][1]} but the line has no media")
    for at, tok in media_at:
        pieces.append((pos, prompt[pos:at]))
        pos = at + len(tok)
    pieces.append((pos, prompt[pos:]))
    ids, labels, media_positions = [], [], []
    if add_bos:
        if tokenizer.bos_token_id is None:
            raise PromptError("inference.add_BOS=true but the tokenizer has no BOS token")
        ids.append(tokenizer.bos_token_id)
        labels.append(IGNORE_INDEX)
    for k, (start, piece) in enumerate(pieces):
        if k > 0:
            media_positions.extend(range(len(ids), len(ids) + num_media_tokens))
            ids.extend([media_token_id] * num_media_tokens)
            labels.extend([IGNORE_INDEX] * num_media_tokens)
        if not piece:
            continue
        enc = tokenizer(piece, add_special_tokens=False, return_offsets_mapping=spans is not None)
        ids.extend(enc["input_ids"])
        if spans is not None:
            for tid, (a, b) in zip(enc["input_ids"], enc["offset_mapping"]):
                a, b = a + start, b + start
                inside = any(a < e and b > s for s, e in spans)  # token overlaps a loss span
                labels.append(tid if inside else IGNORE_INDEX)
    return TokenizedPrompt(ids, media_positions, labels if spans is not None else None)
