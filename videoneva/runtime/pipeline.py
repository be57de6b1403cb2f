"""The in-process front door: a Flow over LocalStages (what `videoneva infer` runs).

The Triton entry model runs the same Flow over TritonStages, so both answer alike.
"""
from __future__ import annotations

from typing import Callable, Optional

from videoneva.media.sources import MediaRoot
from videoneva.runtime.base import LanguageModel, VisionEncoder
from videoneva.runtime.cache import FeatureCache
from videoneva.runtime.flow import Flow, LocalStages
from videoneva.runtime.front import Front, PipelineSettings, resolve_image_token_len
from videoneva.schema import Answer, Delta, Request, SamplingSettings

__all__ = ["Pipeline", "PipelineSettings", "Request", "Answer", "resolve_image_token_len"]


class Pipeline:
    """Answer requests with a VisionEncoder and a LanguageModel backend in this process.

    Args:
        vision, llm: the backends.
        tokenizer: the model's tokenizer.
        settings: template, media settings and limits.
        media_root: where media_path requests are read from.
        cache: the feature cache (None: no cache).
    """

    def __init__(self, vision: VisionEncoder, llm: LanguageModel, tokenizer, settings: PipelineSettings,
                 media_root: MediaRoot, cache: Optional[FeatureCache] = None):
        self.vision, self.llm, self.tokenizer, self.settings = vision, llm, tokenizer, settings
        self.media_root = media_root
        self.front = Front(settings, tokenizer, media_root, llm.vocab_size, llm.image_token_id, llm.max_context)
        self.cache = cache
        self.flow = Flow(self.front, LocalStages(vision, llm, cache))
        self.stop_strings = self.front.template_end_strings

    def answer(self, req: Request, sampling: Optional[SamplingSettings] = None,
               on_delta: Optional[Callable[[Delta], None]] = None) -> Answer:
        """Answer one request (sampling: SamplingSettings() when None). Raises VideoNevaError for bad input."""
        return self.flow.answer(req, sampling or SamplingSettings(), on_delta)
