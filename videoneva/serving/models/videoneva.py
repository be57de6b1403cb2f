"""Triton model `videoneva`, the entry point (decoupled): one request's Flow over the other models.

It holds the tokenizer, so prompts are rendered and tokenized, and streamed ids detokenized, here;
feature_cache, preprocess, vision_encoder and llm are called through BLS (TritonStages). The
tensors it takes and answers with are in videoneva/serving/protocol.py.
"""
from __future__ import annotations

import dataclasses
import json

import numpy as np

from videoneva.config import InferConfig, load_config_dict
from videoneva.media.sources import MediaRoot
from videoneva.runtime.engine import engine_front, media_root_of
from videoneva.runtime.engine_dir import EngineDir
from videoneva.runtime.flow import Flow
from videoneva.runtime.front import Front
from videoneva.schema import Delta, SamplingSettings
from videoneva.serving.protocol import INPUTS, OUTPUTS, ServerLimits, parse_request  # noqa: F401
from videoneva.serving.tensors import Tensors, string_tensor
from videoneva.serving.triton_stages import TritonStages

DECOUPLED = True


class EntryModel:
    """Parse, check against the limits, fill in the server's sampling defaults, run the Flow.

    Args:
        front: the model's weight-free steps.
        limits: the per-request limits.
        defaults: the server's sampling settings (a request's own values replace them one by one).
        has_cache: whether to use the feature_cache model.
        bls: BLS calls to the other models.
    """

    def __init__(self, front: Front, limits: ServerLimits, defaults: SamplingSettings, has_cache: bool, bls):
        self.front, self.limits, self.defaults, self.has_cache, self.bls = front, limits, defaults, has_cache, bls

    def __call__(self, inputs: Tensors, call) -> Tensors:
        wire = parse_request(inputs, self.limits)
        sampling = self.defaults.merged(wire.sampling).check(self.limits.max_tokens_limit)
        on_delta = None
        if wire.stream:
            def on_delta(d: Delta) -> None:
                call.send({"text_output": string_tensor(d.text), "output_ids": np.asarray(d.token_ids, np.int32)})
        stages = TritonStages(self.bls, self.has_cache, cancelled=call.cancelled)
        answer = Flow(self.front, stages).answer(wire.request, sampling, on_delta)
        return {"text_output": string_tensor(answer.clean_response),
                "output_ids": np.asarray(answer.token_ids, np.int32),
                "result_json": string_tensor(json.dumps(dataclasses.asdict(answer), ensure_ascii=False))}


def make(params: dict[str, str], bls) -> EntryModel:
    cfg: InferConfig = load_config_dict(InferConfig, json.loads(params["infer_config"]))
    eng = EngineDir.read(cfg.engine_dir)
    root = media_root_of(cfg)
    front = engine_front(eng, cfg, MediaRoot(root) if root else None, int(params["max_num_frames"]))
    limits = ServerLimits(max_tokens_limit=int(params["max_tokens_limit"]), max_media_bytes=int(params["max_media_bytes"]))
    defaults = SamplingSettings.from_inference(cfg.inference)
    return EntryModel(front, limits, defaults, int(params["cache_bytes"]) > 0, bls)
