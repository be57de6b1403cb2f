"""The `videoneva` Triton model's tensors (what clients send and get) and request validation.

Names follow tensorrtllm_backend's ensemble where one exists (text_input, max_tokens, top_k,
top_p, temperature, repetition_penalty, min_tokens, seed, stream, return_log_probs, text_output);
the sampling inputs are the fields of videoneva.schema.SamplingSettings, name for name. Media
travel as encoded bytes (`media_bytes_input`), as a path under the server's media root
(`media_path`), or as the `media_digest` (sha256 hex) of a file the server has answered about:
the server answers from its feature cache or refuses with MEDIA_NOT_CACHED, and the client sends
the bytes. `num_frames` and `splice_single_frame` change the frame sampling of one request (within
the server's `max_num_frames`). `messages` (JSON) is the conversation before text_input, rendered
with the model's template (prompts.render_chat). All inputs but text_input are optional.

Text is TYPE_STRING (BYTES, UTF-8); end_strings is a list of them; result_json is the whole
videoneva.schema.Answer as JSON. This module imports no deep-learning stack (clients use it).
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any, Mapping, Optional

import numpy as np

from videoneva.errors import PromptError
from videoneva.prompts import chat_turns
from videoneva.schema import (INSERT_CHOICES, MEDIA_NOT_CACHED, MEDIA_TYPES, SAMPLING_FIELDS, Request,  # noqa: F401
                              RequestError, SamplingSettings)
from videoneva.serving.tensors import scalar_of, strings_of, text_of

MODEL_NAME = "videoneva"

# name -> (Triton dtype, dims); max_batch_size 0, so dims are the full shape
INPUTS: dict[str, tuple[str, list[int]]] = {
    "text_input": ("TYPE_STRING", [1]),
    "messages": ("TYPE_STRING", [1]),
    "media_type": ("TYPE_STRING", [1]),
    "media_bytes_input": ("TYPE_UINT8", [-1]),
    "media_path": ("TYPE_STRING", [1]),
    "media_digest": ("TYPE_STRING", [1]),
    "num_frames": ("TYPE_INT32", [1]),
    "splice_single_frame": ("TYPE_STRING", [1]),
    "insert_media_token": ("TYPE_STRING", [1]),
    "max_tokens": ("TYPE_INT32", [1]),
    "min_tokens": ("TYPE_INT32", [1]),
    "greedy": ("TYPE_BOOL", [1]),
    "temperature": ("TYPE_FP32", [1]),
    "top_k": ("TYPE_INT32", [1]),
    "top_p": ("TYPE_FP32", [1]),
    "repetition_penalty": ("TYPE_FP32", [1]),
    "seed": ("TYPE_INT64", [1]),
    "end_strings": ("TYPE_STRING", [-1]),
    "return_log_probs": ("TYPE_BOOL", [1]),
    "stream": ("TYPE_BOOL", [1]),
}
REQUIRED_INPUTS = ("text_input",)
# text_output: streamed pieces (stream=true), then the clean response in the final response.
# output_ids: the ids of this response. result_json (final response only): the whole Answer.
OUTPUTS: dict[str, tuple[str, list[int]]] = {
    "text_output": ("TYPE_STRING", [1]),
    "output_ids": ("TYPE_INT32", [-1]),
    "result_json": ("TYPE_STRING", [1]),
}
_DIGEST = re.compile(r"[0-9a-f]{64}")


def digest_of(data: bytes) -> str:
    """The media_digest of a file: sha256 hex of its bytes (= videoneva.media.media_digest)."""
    return hashlib.sha256(data).hexdigest()


@dataclass
class ServerLimits:
    """Per-request limits the server enforces before doing any work.

    Attributes:
        max_tokens_limit: the largest max_tokens a request may ask for (not a default).
        max_media_bytes: the largest media_bytes_input.
        max_text_chars, max_end_strings: sizes of text_input and end_strings.
    """

    max_tokens_limit: int = 1024
    max_media_bytes: int = 64 * 2**20
    max_text_chars: int = 32768
    max_end_strings: int = 16


@dataclass
class WireRequest:
    """A validated request: the question, the sampling values it sets, and whether to stream."""

    request: Request
    sampling: dict[str, Any]
    stream: bool


def _messages(raw: Optional[str], text: str) -> Optional[list]:
    """The conversation before text_input, parsed and checked (None when absent or empty)."""
    if raw is None:
        return None
    try:
        messages = json.loads(raw)
    except ValueError as exc:
        raise RequestError(f"input 'messages' is not valid JSON: {exc}") from None
    try:
        chat_turns(messages, text)
    except PromptError as exc:
        raise RequestError(f"input 'messages': {exc}") from None
    return messages or None


def parse_request(inputs: Mapping[str, Optional[np.ndarray]], limits: ServerLimits) -> WireRequest:
    """Validate one request's tensors (name -> array or None).

    Raises:
        RequestError naming the input, the limit and the value.
    """
    unknown = sorted(set(inputs) - set(INPUTS))
    if unknown:
        raise RequestError(f"unknown input(s) {unknown}; this model takes {sorted(INPUTS)}")
    text = text_of(inputs.get("text_input"), "text_input")
    if not isinstance(text, str) or not text.strip():
        raise RequestError("input 'text_input' is required and must be a non-empty string")
    messages = _messages(text_of(inputs.get("messages"), "messages"), text)
    size = len(text) + sum(len(m["content"]) for m in messages or [])
    if size > limits.max_text_chars:
        raise RequestError(f"input 'text_input' (with messages) is {size} characters; the limit is "
                           f"{limits.max_text_chars}")
    media_type = text_of(inputs.get("media_type"), "media_type") or None
    path = text_of(inputs.get("media_path"), "media_path") or None
    raw = inputs.get("media_bytes_input")
    data = None
    if raw is not None:
        arr = np.asarray(raw)
        if arr.dtype != np.uint8:
            raise RequestError(f"input 'media_bytes_input' must be UINT8, got {arr.dtype}")
        if arr.size > limits.max_media_bytes:
            raise RequestError(f"input 'media_bytes_input' is {arr.size} bytes; the limit is {limits.max_media_bytes}")
        data = arr.tobytes()
    digest = text_of(inputs.get("media_digest"), "media_digest") or None
    if data is not None and path:
        raise RequestError("give media_bytes_input or media_path, not both")
    if digest is not None:
        if not _DIGEST.fullmatch(digest):
            raise RequestError(f"input 'media_digest' must be the sha256 of the media file as 64 lowercase hex "
                               f"digits, got {digest[:80]!r}")
        if path:
            raise RequestError("media_digest goes with media_bytes_input or alone, not with media_path")
    if (data is not None or path or digest) and media_type is None:
        raise RequestError(f"input 'media_type' ({' | '.join(MEDIA_TYPES)}) is required with media")
    if media_type is not None and media_type not in MEDIA_TYPES:
        raise RequestError(f"input 'media_type'={media_type!r} is not valid; choose one of {list(MEDIA_TYPES)}")
    if media_type is not None and data is None and not path and digest is None:
        raise RequestError(f"media_type={media_type!r} but none of media_bytes_input, media_path, media_digest was given")
    sampling: dict[str, Any] = {}
    for name in SAMPLING_FIELDS:
        if name == "end_strings":
            continue
        v = scalar_of(inputs.get(name), name)
        if v is not None:
            sampling[name] = v
    ends = [e for e in strings_of(inputs.get("end_strings"), "end_strings") or [] if e]
    if len(ends) > limits.max_end_strings:
        raise RequestError(f"input 'end_strings' has {len(ends)} items; the limit is {limits.max_end_strings}")
    if ends:
        sampling["end_strings"] = ends
    # the values alone, against the server's cap (the server's defaults fill the rest later)
    SamplingSettings(**{"max_tokens": limits.max_tokens_limit, **sampling}).check(limits.max_tokens_limit)
    insert = text_of(inputs.get("insert_media_token"), "insert_media_token")
    if insert is not None and insert not in INSERT_CHOICES:
        raise RequestError(f"input 'insert_media_token'={insert!r} is not valid; choose one of {list(INSERT_CHOICES)}")
    req = Request(text, media_type, path, data, insert, digest, scalar_of(inputs.get("num_frames"), "num_frames"),
                  text_of(inputs.get("splice_single_frame"), "splice_single_frame"), messages)
    return WireRequest(req, sampling, bool(scalar_of(inputs.get("stream"), "stream") or False))
