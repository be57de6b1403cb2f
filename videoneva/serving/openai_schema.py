"""OpenAI chat-completion requests and responses, and their mapping onto the `videoneva` model's inputs.

A request is validated by pydantic (unknown fields are refused by name) and turned into the
keyword arguments of videoneva.serving.Client.answer: the last user turn becomes `text_input`,
the turns before it `messages` (JSON), and the one image or video content part a `media_type`
with its source. Each content part keeps its place: a text part becomes its text, a media part
the model's media token ("<video>" / "<image>"), so the template renders the media where the user
put it. Sampling fields map onto SamplingSettings (docs/openai.md has the table).
"""
from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field

from videoneva.prompts import MEDIA_TOKENS
from videoneva.schema import Answer, RequestError

_STRICT = ConfigDict(extra="forbid")


class _Url(BaseModel):
    model_config = _STRICT
    url: str
    detail: Optional[str] = None  # OpenAI's image detail hint; frames are always preprocessed the model's way


class TextPart(BaseModel):
    model_config = _STRICT
    type: Literal["text"]
    text: str


class ImagePart(BaseModel):
    model_config = _STRICT
    type: Literal["image_url"]
    image_url: _Url


class VideoPart(BaseModel):
    model_config = _STRICT
    type: Literal["video_url"]
    video_url: _Url


Part = Annotated[Union[TextPart, ImagePart, VideoPart], Field(discriminator="type")]


class Message(BaseModel):
    model_config = _STRICT
    role: Literal["system", "developer", "user", "assistant"]
    content: Union[str, list[Part]]
    name: Optional[str] = None


class StreamOptions(BaseModel):
    model_config = _STRICT
    include_usage: bool = False


class ChatRequest(BaseModel):
    """POST /v1/chat/completions. Fields past OpenAI's own (top_k, min_tokens, repetition_penalty,
    num_frames, splice_single_frame) come in the request's extra body, as vLLM takes them."""

    model_config = _STRICT
    model: str
    messages: list[Message] = Field(min_length=1)
    max_tokens: Optional[int] = Field(None, ge=1)
    max_completion_tokens: Optional[int] = Field(None, ge=1)
    min_tokens: Optional[int] = Field(None, ge=0)
    temperature: Optional[float] = Field(None, ge=0, le=2)
    top_p: Optional[float] = Field(None, gt=0, le=1)
    top_k: Optional[int] = Field(None, ge=0)
    seed: Optional[int] = None
    stop: Optional[Union[str, list[str]]] = None
    frequency_penalty: Optional[float] = Field(None, ge=-2, le=2)
    presence_penalty: Optional[float] = Field(None, ge=-2, le=2)
    repetition_penalty: Optional[float] = Field(None, gt=0)
    stream: bool = False
    stream_options: Optional[StreamOptions] = None
    logprobs: Optional[bool] = None
    top_logprobs: Optional[int] = Field(None, ge=0, le=20)
    n: Optional[int] = None
    num_frames: Optional[int] = Field(None, ge=1)
    splice_single_frame: Optional[Literal["first", "middle", "last", "none"]] = None
    user: Optional[str] = None
    metadata: Optional[dict[str, str]] = None


@dataclass
class MediaRef:
    """The one media content part of a request: its kind and URL, and where it was."""

    media_type: str          # "video" | "image"
    url: str
    where: str               # e.g. "messages[1].content[0]"


@dataclass
class WireCall:
    """What Client.answer is called with: the question, the earlier turns, the media and settings."""

    text: str
    messages: list[dict]
    media: Optional[MediaRef]
    settings: dict[str, Any] = field(default_factory=dict)


def _content(msg: Message, i: int, found: list[MediaRef]) -> str:
    """A message's text with each media part as its token; media parts are collected into found."""
    if isinstance(msg.content, str):
        return msg.content
    pieces: list[tuple[str, str]] = []  # (kind, text)
    for k, part in enumerate(msg.content):
        where = f"messages[{i}].content[{k}]"
        if isinstance(part, TextPart):
            pieces.append(("text", part.text))
            continue
        if msg.role != "user":
            raise RequestError(f"{where}: {part.type} parts go in user messages only, not {msg.role!r}")
        kind = "video" if isinstance(part, VideoPart) else "image"
        found.append(MediaRef(kind, (part.video_url if kind == "video" else part.image_url).url, where))
        pieces.append(("media", MEDIA_TOKENS[kind]))
    out = ""
    for j, (kind, text) in enumerate(pieces):
        # text parts are separate lines; a media token sits against its text as NeMo places it
        out += ("\n" if j and kind == "text" == pieces[j - 1][0] else "") + text
    return out


def sampling_of(req: ChatRequest) -> dict[str, Any]:
    """The request's sampling fields as the model's inputs (absent ones: the server's defaults)."""
    if req.n not in (None, 1):
        raise RequestError(f"n={req.n}: this server returns one choice per request (n=1)")
    if req.top_logprobs:
        raise RequestError(f"top_logprobs={req.top_logprobs}: the model returns the chosen token's log-probability "
                           "only; use logprobs=true with top_logprobs 0 or absent")
    for name in ("frequency_penalty", "presence_penalty"):
        if getattr(req, name):
            raise RequestError(f"{name}={getattr(req, name)}: OpenAI's additive penalties are not applied by this "
                               "server's LLM backends; send repetition_penalty (multiplicative, 1.0 = off) instead")
    out: dict[str, Any] = {}
    tokens = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
    if tokens is not None:
        out["max_tokens"] = tokens
    if req.temperature is not None:  # 0: the most likely token each step (greedy)
        out["greedy"] = req.temperature == 0
        if req.temperature > 0:
            out["temperature"] = req.temperature
    for name in ("min_tokens", "top_p", "top_k", "seed", "repetition_penalty", "num_frames", "splice_single_frame"):
        if getattr(req, name) is not None:
            out[name] = getattr(req, name)
    if req.stop:
        out["end_strings"] = [req.stop] if isinstance(req.stop, str) else list(req.stop)
    if req.logprobs:
        out["return_log_probs"] = True
    return out


def wire_call(req: ChatRequest) -> WireCall:
    """The request as the model's inputs.

    Raises:
        RequestError naming the message or field that the model cannot take.
    """
    found: list[MediaRef] = []
    turns = [{"role": "system" if m.role == "developer" else m.role, "content": _content(m, i, found)}
             for i, m in enumerate(req.messages)]
    if len(found) > 1:
        raise RequestError(f"{len(found)} media parts ({', '.join(m.where for m in found)}): the model takes one "
                           "image or video per conversation")
    if turns[-1]["role"] != "user":
        raise RequestError(f"messages[{len(turns) - 1}]: the last message must be the user's, got "
                           f"{turns[-1]['role']!r}")
    text = turns[-1]["content"]
    if not text.strip():
        raise RequestError(f"messages[{len(turns) - 1}]: the user message is empty")
    settings = sampling_of(req)
    settings["insert_media_token"] = "none"  # the media token stands where its content part was
    return WireCall(text, turns[:-1], found[0] if found else None, settings)


def completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex}"


def usage_of(answer: Answer) -> dict:
    p, c = answer.usage.get("prompt_tokens", 0), answer.usage.get("completion_tokens", 0)
    return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}


def extension_of(answer: Answer) -> dict:
    """The server's own report (the `videoneva` field): media read, cache use, media rows, timings."""
    return {"media": answer.media, "media_tokens": answer.usage.get("media_tokens", 0), "timings": answer.timings}


def logprobs_of(answer: Answer) -> Optional[dict]:
    if answer.logprobs is None:
        return None
    tokens = answer.tokens or [""] * len(answer.logprobs)
    return {"content": [{"token": t, "logprob": lp, "bytes": list(t.encode("utf-8")), "top_logprobs": []}
                        for t, lp in zip(tokens, answer.logprobs)]}


def completion(answer: Answer, cid: str, model: str) -> dict:
    """The chat.completion object of an answer (its clean response)."""
    return {"id": cid, "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": answer.clean_response},
                         "logprobs": logprobs_of(answer), "finish_reason": answer.finish_reason}],
            "usage": usage_of(answer), "videoneva": extension_of(answer)}


def chunk(cid: str, model: str, created: int, delta: Optional[dict], finish_reason: Optional[str] = None,
          with_usage: bool = False, **extra) -> dict:
    """One chat.completion.chunk; delta None gives the usage chunk (no choices)."""
    out = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
           "choices": [] if delta is None else [{"index": 0, "delta": delta, "logprobs": extra.pop("logprobs", None),
                                                 "finish_reason": finish_reason}]}
    if with_usage:
        out["usage"] = extra.pop("usage", None)
    out.update(extra)
    return out


def error_body(message: str, status: int, code: Optional[str] = None, param: Optional[str] = None) -> dict:
    """OpenAI's error object."""
    kind = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
            413: "invalid_request_error", 503: "service_unavailable"}.get(status, "server_error")
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}
