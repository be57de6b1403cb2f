"""The weight-free steps of a request: media settings and source, prompt and ids, sampling fit, text.

One Front serves the in-process pipeline and the Triton entry model alike (runtime/flow.py), so a
request is prepared and finished the same way everywhere.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

from videoneva import prompts
from videoneva.errors import ConfigError, PromptError
from videoneva.generation import trim_at_end_strings
from videoneva.media import media_source
from videoneva.media.settings import MediaSettings
from videoneva.media.sources import MediaRoot
from videoneva.model.vision import tokens_per_frame
from videoneva.runtime.base import fake_media_ids
from videoneva.schema import Request, RequestError, SamplingSettings


@dataclass
class PipelineSettings:
    """Everything that shapes a prompt besides the request itself.

    Attributes:
        template: conversation template name (videoneva.templates).
        media: the model's media settings (a request may change num_frames / splice_single_frame).
        image_token_len: prompt positions per frame (after pooling).
        insert_media_token: left | right | None: where the media token goes when the text has none.
        add_bos: prepend the tokenizer's BOS id.
        model_id: reported in every answer.
        max_num_frames: the most frames a request may ask for (None: only the context limits it).
    """

    template: str
    media: MediaSettings
    image_token_len: int
    insert_media_token: Optional[str] = None
    add_bos: bool = False
    model_id: str = "videoneva"
    max_num_frames: Optional[int] = None


def resolve_image_token_len(image_size: int, patch_size: int, pool: int, explicit: Optional[int]) -> int:
    """Derive tokens per frame; an explicit data.image_token_len must agree with it."""
    derived = tokens_per_frame(image_size, patch_size, pool)
    if explicit is not None and explicit != derived:
        raise ConfigError(
            f"data.image_token_len={explicit} conflicts with the model: ({image_size} // {patch_size} "
            f"// pool {pool})^2 = {derived}; drop the key or set it to {derived}")
    return derived


@dataclass
class Front:
    """Media settings and source, prompt ids, sampling fit and detokenizing for one model.

    Args:
        settings: template, media settings and limits.
        tokenizer: the model's tokenizer.
        media_root: where media_path requests are read from (confined); None refuses them.
        vocab_size: the fake-id base: media positions get ids vocab_size + k.
        image_token_id: an in-vocabulary id standing in for media rows while tokenizing.
        max_context: the LLM's context in positions.
    """

    settings: PipelineSettings
    tokenizer: Any
    media_root: Optional[MediaRoot]
    vocab_size: int
    image_token_id: int
    max_context: int

    def __post_init__(self) -> None:
        self.template_end_strings = prompts.stop_strings(self.settings.template)

    def media_settings(self, req: Request) -> MediaSettings:
        """The model's media settings with the request's media type, frame count and splicing."""
        changes: dict[str, Any] = {"media_type": req.media_type or self.settings.media.media_type}
        if req.num_frames is not None:
            cap = self.settings.max_num_frames
            if isinstance(req.num_frames, bool) or not isinstance(req.num_frames, int) or req.num_frames < 1 or \
                    (cap is not None and req.num_frames > cap):
                limit = f"1..{cap}" if cap is not None else "a positive number"
                raise RequestError(f"input 'num_frames'={req.num_frames!r} is out of range: this server allows {limit}")
            changes["num_frames"] = req.num_frames
        if req.splice_single_frame is not None:
            if req.splice_single_frame not in ("first", "middle", "last", "none"):
                raise RequestError(f"input 'splice_single_frame'={req.splice_single_frame!r} is not valid; choose "
                                   "first, middle, last or none")
            changes["splice_single_frame"] = None if req.splice_single_frame == "none" else req.splice_single_frame
        return dataclasses.replace(self.settings.media, **changes)

    def media_source(self, req: Request, ms: MediaSettings) -> Union[bytes, Path]:
        """The request's encoded media: its bytes, or its file under the media root (MediaError when outside)."""
        if req.media_bytes is not None:
            return req.media_bytes
        if self.media_root is None:
            raise RequestError("media_path given but this server has no media root (start it with media_root=DIR); "
                               "send the media as media_bytes_input instead")
        return media_source(self.media_root, req.media_path, ms.max_bytes)

    def render(self, req: Request) -> str:
        where = self.settings.insert_media_token if req.insert_media_token is None else req.insert_media_token
        where = None if where == "none" else where
        if req.messages:
            return prompts.render_chat(self.settings.template, req.messages, req.text, req.media_type, where)
        return prompts.render_prompt(self.settings.template, req.text, media_type=req.media_type,
                                     insert_media_token=where)

    def tokenize(self, prompt: str, num_media_rows: int) -> list[int]:
        """Prompt ids with media positions as fake ids vocab_size + k (TensorRT-LLM convention)."""
        # The model's own image token stands in for the media rows here (a NeMo tokenizer may have
        # no "<image>" token at all); they become fake ids below.
        tp = prompts.tokenize_with_media(self.tokenizer, prompt, num_media_rows, self.image_token_id,
                                         add_bos=self.settings.add_bos)
        return fake_media_ids(tp.input_ids, tp.media_positions, self.vocab_size)

    def prompt_ids(self, req: Request, num_media_rows: int) -> tuple[str, list[int]]:
        """(prompt, ids) for the request; PromptError when the prompt leaves no room to answer."""
        prompt = self.render(req)
        ids = self.tokenize(prompt, num_media_rows)
        if self.max_context - len(ids) < 1:
            raise PromptError(
                f"prompt is {len(ids)} tokens ({num_media_rows} of them media positions) but the model's context "
                f"is {self.max_context}; shorten the text or use fewer frames (num_frames) or data.frame_token_pool")
        return prompt, ids

    def sampling(self, sampling: SamplingSettings, num_prompt_ids: int) -> SamplingSettings:
        """The request's sampling with the template's end strings added and max_tokens cut to the room left."""
        room = self.max_context - num_prompt_ids
        out = sampling.merged({}, self.template_end_strings)
        if room < out.max_tokens:
            out = dataclasses.replace(out, max_tokens=room, min_tokens=min(out.min_tokens, room))
        return out

    def detokenize(self, token_ids: list[int], end_strings: list[str]) -> tuple[str, str]:
        """(raw response cut at the first end string, clean response)."""
        raw, _ = trim_at_end_strings(self.tokenizer.decode(token_ids, skip_special_tokens=False), end_strings)
        return raw, prompts.clean_response(self.settings.template, raw)

    def token_texts(self, token_ids: list[int]) -> list[str]:
        return [self.tokenizer.decode([t], skip_special_tokens=False) for t in token_ids]
