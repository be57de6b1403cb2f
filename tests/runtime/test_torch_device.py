"""`infer`'s in-process torch path runs on the GPU when there is one, in trainer.precision."""
from __future__ import annotations

import pytest
import torch

from videoneva.config import InferConfig, load_config
from videoneva.generation import SamplingSettings
from videoneva.runtime.loader import build_pipeline
from videoneva.runtime.pipeline import Request


def _pipeline(ckpt, media_dir, *extra):
    return build_pipeline(load_config(InferConfig, [f"neva_model_file={ckpt}", f"inference.media_base_path={media_dir}",
                                                    "inference.insert_media_token=right", *extra]))


@pytest.mark.gpu
@pytest.mark.parametrize("precision, dtype", [("32", torch.float32), ("bf16", torch.bfloat16)])
def test_auto_device_puts_the_checkpoint_on_the_gpu(tiny_checkpoint, media_dir, precision, dtype):
    gpu = _pipeline(tiny_checkpoint, media_dir, "device=auto", f"trainer.precision={precision}")
    assert (gpu.vision.device.type, gpu.vision.dtype) == ("cuda", dtype)
    assert (gpu.llm.device.type, gpu.llm.dtype) == ("cuda", dtype)
    cpu = _pipeline(tiny_checkpoint, media_dir, "device=cpu")
    req = Request("What color is the shape?", "video", "clip.mp4")
    s = SamplingSettings(max_tokens=4, greedy=True, repetition_penalty=1.0, end_strings=[])
    a, b = gpu.answer(req, s), cpu.answer(req, s)
    assert a.prompt == b.prompt and len(a.token_ids) > 0
    if precision == "32":  # float32 on both devices: the greedy tokens agree
        assert a.token_ids == b.token_ids
