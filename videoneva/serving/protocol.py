"""The `videoneva` Triton model's tensors, and request parsing/validation shared by server and client.

Names follow tensorrtllm_backend's ensemble where one exists (text_input, max_tokens, top_k,
top_p, temperature, repetition_penalty, min_tokens, seed, stream, return_log_probs, text_output).
Media travel as encoded bytes (`media_bytes_input`), or as a path under the server's media root
(`media_path`, confined like media_base_path). A client that sent a file before may send only its
`media_digest` (sha256 hex of the file): the server answers from its feature cache, or refuses with
MEDIA_NOT_CACHED, and the client sends the bytes. All inputs but text_input are optional.

Text is TYPE_STRING (BYTES, UTF-8), one element; end_strings is a list of them; result_json is
the whole answer as JSON. (The python backend stub corrupts every tensor when its interpreter
imports a numpy 2.x; server.py starts it inside this venv, whose numpy is 1.x.)
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Any, Mapping, Optional

import numpy as np

from videoneva.errors import VideoNevaError

MODEL_NAME = "videoneva"

# name -> (Triton dtype, numpy dtype, dims) ; max_batch_size 0, so dims are the full shape
INPUTS: dict[str, tuple[str, Any, list[int]]] = {
    "text_input": ("TYPE_STRING", np.object_, [1]),
    "media_type": ("TYPE_STRING", np.object_, [1]),
    "media_bytes_input": ("TYPE_UINT8", np.uint8, [-1]),
    "media_path": ("TYPE_STRING", np.object_, [1]),
    "media_digest": ("TYPE_STRING", np.object_, [1]),
    "max_tokens": ("TYPE_INT32", np.int32, [1]),
    "min_tokens": ("TYPE_INT32", np.int32, [1]),
    "greedy": ("TYPE_BOOL", np.bool_, [1]),
    "temperature": ("TYPE_FP32", np.float32, [1]),
    "top_k": ("TYPE_INT32", np.int32, [1]),
    "top_p": ("TYPE_FP32", np.float32, [1]),
    "repetition_penalty": ("TYPE_FP32", np.float32, [1]),
    "seed": ("TYPE_INT64", np.int64, [1]),
    "end_strings": ("TYPE_STRING", np.object_, [-1]),
    "return_log_probs": ("TYPE_BOOL", np.bool_, [1]),
    "stream": ("TYPE_BOOL", np.bool_, [1]),
    "insert_media_token": ("TYPE_STRING", np.object_, [1]),
}
REQUIRED_INPUTS = ("text_input",)
# text_output: streamed deltas (stream=true), then the clean response in the final response.
# output_ids: the ids of this response. result_json (final response only): the whole Answer.
OUTPUTS: dict[str, tuple[str, Any, list[int]]] = {
    "text_output": ("TYPE_STRING", np.object_, [1]),
    "output_ids": ("TYPE_INT32", np.int32, [-1]),
    "result_json": ("TYPE_STRING", np.object_, [1]),
}
MEDIA_TYPES = ("video", "image")
# The start of the error for a media_digest whose features the server does not hold (evicted, a
# restarted server, a server without a cache): send the media bytes instead.
MEDIA_NOT_CACHED = "MEDIA_NOT_CACHED"
INSERT_CHOICES = ("left", "right", "none")
_DIGEST = re.compile(r"[0-9a-f]{64}")


def digest_of(data: bytes) -> str:
    """The media_digest of a file: sha256 hex of its bytes (= videoneva.media.media_digest, which
    the feature-cache key is built from; this module stays free of the media stack for clients)."""
    return hashlib.sha256(data).hexdigest()


class RequestError(VideoNevaError):
    """A request the server refuses (bad value, over a limit); answered as an INVALID_ARG error."""


@dataclass
class ServerLimits:
    """Per-request limits the server enforces before doing any work."""

    max_tokens: int = 1024           # tokens_to_generate above this is refused
    max_media_bytes: int = 64 * 2**20
    max_text_chars: int = 32768
    max_end_strings: int = 16


@dataclass
class ParsedRequest:
    text: str
    media_type: Optional[str]
    media_path: Optional[str]
    media_bytes: Optional[bytes]
    sampling: dict                   # SamplingSettings fields given by the request
    stream: bool
    end_strings: list[str]
    insert_media_token: Optional[str] = None   # left | right | none; None: the server's setting
    media_digest: Optional[str] = None         # sha256 hex of the media file (media_digest input)


def _scalar(arr: Optional[np.ndarray], name: str) -> Any:
    if arr is None:
        return None
    flat = np.asarray(arr).reshape(-1)
    if flat.size != 1:
        raise RequestError(f"input {name!r}: expected one value, got shape {list(np.asarray(arr).shape)}")
    v = flat[0]
    if isinstance(v, (bytes, np.bytes_)):
        try:
            return bytes(v).decode("utf-8")
        except UnicodeDecodeError:
            raise RequestError(f"input {name!r}: not valid UTF-8") from None
    return v.item() if hasattr(v, "item") else v


TEXT_INPUTS = ("text_input", "media_type", "media_path", "media_digest", "end_strings")


def encode_text(text: str) -> np.ndarray:
    """A string as a UINT8 tensor of its UTF-8 bytes (the tensors between our own models)."""
    return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).copy()


def string_tensor(*texts: str) -> np.ndarray:
    """Strings as a TYPE_STRING (BYTES) tensor."""
    return np.array([t.encode("utf-8") for t in texts], dtype=np.object_)


def _strings(arr: Optional[np.ndarray], name: str) -> Optional[list[str]]:
    if arr is None:
        return None
    out = []
    for v in np.asarray(arr, dtype=np.object_).reshape(-1):
        if isinstance(v, str):
            out.append(v)
            continue
        try:
            out.append(bytes(v).decode("utf-8"))
        except (TypeError, ValueError):
            raise RequestError(f"input {name!r}: expected UTF-8 text (BYTES), got {type(v).__name__}") from None
    return out


def _text(arr: Optional[np.ndarray], name: str) -> Optional[str]:
    values = _strings(arr, name)
    if values is None:
        return None
    if len(values) != 1:
        raise RequestError(f"input {name!r}: expected one string, got {len(values)}")
    return values[0]


def parse_request(inputs: Mapping[str, Optional[np.ndarray]], limits: ServerLimits) -> ParsedRequest:
    """Validate one request's tensors (name -> array or None) into a ParsedRequest.

    Raises:
        RequestError naming the input, the limit and the value.
    """
    unknown = sorted(set(inputs) - set(INPUTS))
    if unknown:
        raise RequestError(f"unknown input(s) {unknown}; this model takes {sorted(INPUTS)}")
    text = _text(inputs.get("text_input"), "text_input")
    if not isinstance(text, str) or not text.strip():
        raise RequestError("input 'text_input' is required and must be a non-empty string")
    if len(text) > limits.max_text_chars:
        raise RequestError(f"input 'text_input' is {len(text)} characters; the limit is {limits.max_text_chars}")
    media_type = _text(inputs.get("media_type"), "media_type") or None
    path = _text(inputs.get("media_path"), "media_path") or None
    raw = inputs.get("media_bytes_input")
    data = None
    if raw is not None:
        arr = np.asarray(raw)
        if arr.dtype != np.uint8:
            raise RequestError(f"input 'media_bytes_input' must be UINT8, got {arr.dtype}")
        if arr.size > limits.max_media_bytes:
            raise RequestError(f"input 'media_bytes_input' is {arr.size} bytes; the limit is {limits.max_media_bytes}")
        data = arr.tobytes()
    digest = _text(inputs.get("media_digest"), "media_digest") or None
    if data is not None and path:
        raise RequestError("give media_bytes_input or media_path, not both")
    if digest is not None:
        if not _DIGEST.fullmatch(digest):
            raise RequestError(f"input 'media_digest' must be the sha256 of the media file as 64 lowercase hex "
                               f"digits, got {digest[:80]!r}")
        if path:
            raise RequestError("media_digest goes with media_bytes_input or alone, not with media_path")
        if data is not None and digest_of(data) != digest:
            raise RequestError("input 'media_digest' is not the sha256 of media_bytes_input")
    if (data is not None or path or digest) and media_type is None:
        raise RequestError(f"input 'media_type' ({' | '.join(MEDIA_TYPES)}) is required with media")
    if media_type is not None and media_type not in MEDIA_TYPES:
        raise RequestError(f"input 'media_type'={media_type!r} is not valid; choose one of {list(MEDIA_TYPES)}")
    if media_type is not None and data is None and not path and digest is None:
        raise RequestError(f"media_type={media_type!r} but none of media_bytes_input, media_path, media_digest was given")
    s: dict[str, Any] = {}
    for name, field in (("max_tokens", "tokens_to_generate"), ("min_tokens", "min_tokens_to_generate"),
                        ("greedy", "greedy"), ("temperature", "temperature"), ("top_k", "top_k"), ("top_p", "top_p"),
                        ("repetition_penalty", "repetition_penalty"), ("seed", "seed"),
                        ("return_log_probs", "all_probs")):
        v = _scalar(inputs.get(name), name)
        if v is not None:
            s[field] = v
    n = s.get("tokens_to_generate")
    if n is not None and not 1 <= n <= limits.max_tokens:
        raise RequestError(f"input 'max_tokens'={n} is out of range: this server allows 1..{limits.max_tokens}")
    if not 0 <= s.get("min_tokens_to_generate", 0) <= s.get("tokens_to_generate", limits.max_tokens):
        raise RequestError(f"input 'min_tokens'={s['min_tokens_to_generate']} must be in [0, max_tokens]")
    if "temperature" in s and s["temperature"] <= 0 and not s.get("greedy", False):
        raise RequestError(f"input 'temperature'={s['temperature']} must be > 0 unless greedy")
    if "top_p" in s and not 0 < s["top_p"] <= 1:
        raise RequestError(f"input 'top_p'={s['top_p']} must be in (0, 1]")
    if s.get("top_k", 0) < 0 or s.get("repetition_penalty", 1.0) <= 0:
        raise RequestError("input 'top_k' must be >= 0 and 'repetition_penalty' > 0")
    ends = _strings(inputs.get("end_strings"), "end_strings") or []
    if ends:
        if len(ends) > limits.max_end_strings:
            raise RequestError(f"input 'end_strings' has {len(ends)} items; the limit is {limits.max_end_strings}")
    stream = bool(_scalar(inputs.get("stream"), "stream") or False)
    insert = _text(inputs.get("insert_media_token"), "insert_media_token")
    if insert is not None and insert not in INSERT_CHOICES:
        raise RequestError(f"input 'insert_media_token'={insert!r} is not valid; choose one of {list(INSERT_CHOICES)}")
    return ParsedRequest(text, media_type, path, data, s, stream, [e for e in ends if e], insert, digest)
