"""Vision encoder ONNX export: dynamic frames axis, onnx.checker, onnxruntime within 1e-4 of torch (fp32)."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import onnx
import pytest
import torch

from engine_build.vision import (TensorRTUnavailable, VisionEncoderModule, build_vision_plan, export_vision_onnx,
                                 tensorrt_unavailable_reason)
from videoneva.errors import ConfigError
from videoneva.model.factory import TINY, new_llava
from videoneva.model.vision import VisionFeatures

SIZE = 112  # 8×8 patches of 14 px


@pytest.fixture(scope="module")
def llava():
    return new_llava(replace(TINY, image_size=SIZE), image_token_id=3)


@pytest.fixture(scope="module")
def exported(llava, tmp_path_factory):
    """pool → (onnx path, info), exported once per pool factor."""
    out = {}
    for pool in (1, 2):
        path = tmp_path_factory.mktemp(f"pool{pool}") / "vision.onnx"
        out[pool] = (path, export_vision_onnx(llava, path, SIZE, frame_token_pool=pool))
    return out


@pytest.mark.parametrize("pool,tokens", [(1, 64), (2, 16)])
@pytest.mark.parametrize("frames", [1, 3])
def test_onnxruntime_matches_torch(llava, exported, pool, tokens, frames):
    import onnxruntime as ort

    path, info = exported[pool]
    assert info["tokens_per_frame"] == tokens and info["max_abs_diff"] < 1e-4
    x = torch.randn(frames, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(frames))  # (F, 3, H, W)
    with torch.no_grad():
        ref = VisionFeatures(llava, pool).eval()(x).numpy()  # the torch runtime's own module
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (out,) = sess.run(["features"], {"pixel_values": x.numpy()})
    assert out.shape == (frames, tokens, llava.config.text_config.hidden_size)
    assert np.abs(out - ref).max() < 1e-4


def test_graph_declares_dynamic_frames(exported):
    path, info = exported[1]
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    (inp,), (out,) = model.graph.input, model.graph.output
    dims = lambda v: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]  # noqa: E731
    assert (inp.name, dims(inp)) == ("pixel_values", ["frames", 3, SIZE, SIZE])
    assert out.name == "features" and dims(out)[0] == "frames"
    assert info["opset"] == 17 and any(o.domain == "" and o.version == 17 for o in model.opset_import)
    assert info["input"] == "pixel_values" and info["output"] == "features" and info["dynamic_axis"] == "frames"


def test_pooling_averages_the_patch_grid_before_the_projector(llava):
    x = torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    enc = VisionEncoderModule(llava, 2).eval()
    with torch.no_grad():
        h = llava.model.vision_tower(x, output_hidden_states=True).hidden_states[-2][:, 1:]  # (F, 64, Dv)
        grid = h.reshape(2, 8, 8, -1)  # (F, gy, gx, Dv), row-major patches
        pooled = grid.reshape(2, 4, 2, 4, 2, -1).mean(dim=(2, 4)).reshape(2, 16, -1)  # (F, 16, Dv)
        torch.testing.assert_close(enc(x), llava.model.multi_modal_projector(pooled), atol=1e-5, rtol=1e-5)


def test_bad_settings_fail_before_export(llava, tmp_path):
    with pytest.raises(ConfigError, match="frame_token_pool=3"):
        export_vision_onnx(llava, tmp_path / "a.onnx", SIZE, frame_token_pool=3)
    with pytest.raises(ConfigError, match="image_size=224 does not match the vision tower"):
        export_vision_onnx(llava, tmp_path / "b.onnx", 224)
    small = new_llava(replace(TINY, image_size=28), image_token_id=3)  # 2×2 grid: pool 4 cannot divide it
    with pytest.raises(ConfigError, match="frame_token_pool=4 must divide"):
        export_vision_onnx(small, tmp_path / "c.onnx", 28, frame_token_pool=4)
    half = new_llava(replace(TINY, image_size=SIZE), image_token_id=3).to(torch.bfloat16)
    with pytest.raises(ConfigError, match="fp32 model"):
        export_vision_onnx(half, tmp_path / "d.onnx", SIZE)
    assert not list(tmp_path.iterdir())


@pytest.mark.skipif(tensorrt_unavailable_reason() is None, reason="TensorRT and CUDA are present")
def test_vision_plan_says_why_not(exported, tmp_path):
    with pytest.raises(TensorRTUnavailable, match="tensorrt is not installed|no CUDA"):
        build_vision_plan(exported[1][0], tmp_path / "vision.plan", 4, 2, "16")
    assert not (tmp_path / "vision.plan").exists()
