"""The GPU check's training step (videoneva.train.gpu_smoke): on CUDA when there is one, its CPU twin here."""
from __future__ import annotations

import pytest

from videoneva.train.smoke import train_smoke


def _check(result: dict, device_prefix: str) -> None:
    assert result["train_device"].startswith(device_prefix)
    assert result["finite"] and result["loss_went_down"], result["losses"]
    assert result["exported_weight_dtypes"] == ["torch.float32"]  # bf16-mixed keeps float32 weights


def test_the_smoke_steps_train_on_cpu(tmp_path):
    _check(train_smoke("cpu", str(tmp_path), steps=3), "cpu")


@pytest.mark.gpu
def test_gpu_smoke_trains_in_bf16_mixed_on_cuda(tmp_path):
    from videoneva.train import gpu_smoke

    result = gpu_smoke(str(tmp_path))
    _check(result, "cuda")
    assert result["peak_cuda_memory_bytes"] > 0
