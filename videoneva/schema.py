"""The request and answer schema shared by every front door (in-process, gRPC, the client).

Field names are the wire names of the `videoneva` Triton model (tensorrtllm_backend's where one
exists), so a setting keeps one name from the request to the backend. NeMo's `inference.*` keys
map onto them in one place, SamplingSettings.from_inference. This module imports no torch or
transformers, so clients can use it.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Optional

from videoneva.errors import VideoNevaError


# The start of the error for a media_digest whose features the server does not hold (evicted, a
# restarted server, a server without a cache): send the media bytes instead.
MEDIA_NOT_CACHED = "MEDIA_NOT_CACHED"


class RequestError(VideoNevaError):
    """A request the server refuses (bad value, over a limit); answered as an INVALID_ARG error."""


@dataclass
class SamplingSettings:
    """One request's decoding settings.

    Attributes:
        max_tokens: most new tokens (NeMo: inference.tokens_to_generate).
        min_tokens: new tokens before an end may stop generation (NeMo: min_tokens_to_generate).
        greedy: argmax decoding; temperature, top_k and top_p are then ignored.
        temperature, top_k (0: off), top_p (1.0: off), repetition_penalty (1.0: off): sampling.
        end_strings: strings that end generation (the template's own are added by the server).
        return_log_probs: log p of each generated token (NeMo: all_probs / compute_logprob).
        seed: random seed of a sampled answer (None: unseeded).
    """

    max_tokens: int = 256
    min_tokens: int = 0
    greedy: bool = False
    temperature: float = 0.2
    top_k: int = 0
    top_p: float = 0.9
    repetition_penalty: float = 1.2
    end_strings: list[str] = field(default_factory=list)
    return_log_probs: bool = False
    seed: Optional[int] = None

    @classmethod
    def from_inference(cls, inf, end_strings: list[str] = ()) -> "SamplingSettings":
        """From NeMo's inference.* keys (an InferenceConfig) plus the template's own end strings."""
        return cls(max_tokens=inf.tokens_to_generate, min_tokens=inf.min_tokens_to_generate, greedy=inf.greedy,
                   temperature=inf.temperature, top_k=inf.top_k, top_p=inf.top_p,
                   repetition_penalty=inf.repetition_penalty, end_strings=list(dict.fromkeys([*inf.end_strings, *end_strings])),
                   return_log_probs=inf.all_probs or inf.compute_logprob, seed=inf.seed)

    def merged(self, overrides: dict[str, Any], extra_end_strings: list[str] = ()) -> "SamplingSettings":
        """These settings with a request's own values in place (end strings are added, never dropped)."""
        out = dataclasses.replace(self, **{k: v for k, v in overrides.items() if k != "end_strings"})
        out.end_strings = list(dict.fromkeys([*overrides.get("end_strings", []), *self.end_strings, *extra_end_strings]))
        return out

    def check(self, max_tokens_limit: Optional[int] = None) -> "SamplingSettings":
        """RequestError naming the setting when a value is out of range."""
        limit = max_tokens_limit or self.max_tokens
        if isinstance(self.max_tokens, bool) or not isinstance(self.max_tokens, int) or \
                not 1 <= self.max_tokens <= max(limit, 1):
            raise RequestError(f"input 'max_tokens'={self.max_tokens} is out of range: this server allows 1..{limit}")
        if not 0 <= self.min_tokens <= self.max_tokens:
            raise RequestError(f"input 'min_tokens'={self.min_tokens} must be in [0, max_tokens={self.max_tokens}]")
        if self.temperature <= 0 and not self.greedy:
            raise RequestError(f"input 'temperature'={self.temperature} must be > 0 unless greedy")
        if not 0 < self.top_p <= 1:
            raise RequestError(f"input 'top_p'={self.top_p} must be in (0, 1]")
        if self.top_k < 0:
            raise RequestError(f"input 'top_k'={self.top_k} must be >= 0")
        if self.repetition_penalty <= 0:
            raise RequestError(f"input 'repetition_penalty'={self.repetition_penalty} must be > 0")
        return self


SAMPLING_FIELDS = tuple(f.name for f in dataclasses.fields(SamplingSettings))
MEDIA_TYPES = ("video", "image")
INSERT_CHOICES = ("left", "right", "none")
SPLICE_CHOICES = ("first", "middle", "last", "none")


@dataclass
class Request:
    """One question, with at most one media item.

    The media is given by exactly one of media_bytes (the encoded file), media_path (under the
    media root) or media_digest (the sha256 hex of a file whose features the server holds).
    insert_media_token, num_frames and splice_single_frame are None to take the model's settings
    ("none" turns insertion or single-frame splicing off). messages is the conversation before
    `text` (system, then user and assistant turns; see prompts.chat_turns), None for one question.
    """

    text: str
    media_type: Optional[str] = None
    media_path: Optional[str] = None
    media_bytes: Optional[bytes] = None
    insert_media_token: Optional[str] = None
    media_digest: Optional[str] = None
    num_frames: Optional[int] = None
    splice_single_frame: Optional[str] = None
    messages: Optional[list] = None


@dataclass
class Delta:
    """A streamed piece of the answer: new text and the token ids produced since the last piece."""

    text: str
    token_ids: list[int]


@dataclass
class Answer:
    """The answer to one Request, the same from every front door.

    Attributes:
        prompt: the rendered prompt (media shown as its token).
        raw_response: the generated text, cut at the first end string.
        clean_response: raw_response with the template's decorations removed (NeMo's CLEAN RESPONSE).
        token_ids: generated ids (a final end-of-sequence id excluded).
        finish_reason: "stop" (an end id or string) | "length".
        logprobs, tokens: per generated token, with return_log_probs.
        media: what was read: num_frames, frame_indices, num_total_frames, decoder, codec,
            content_hash (the feature-cache key), cache ("hit" | "miss" | "off").
        usage: prompt_tokens (media rows included), media_tokens, completion_tokens.
        timings: seconds: decode_s and encode_s (null on a cache hit), media_s (everything before
            the LLM), first_token_s, generate_s, total_s.
        model_id: the model that answered.
    """

    prompt: str
    raw_response: str
    clean_response: str
    token_ids: list[int]
    finish_reason: str
    logprobs: Optional[list[float]] = None
    tokens: Optional[list[str]] = None
    media: dict = field(default_factory=dict)
    usage: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)
    model_id: Optional[str] = None

    @classmethod
    def from_dict(cls, data: dict) -> "Answer":
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})
