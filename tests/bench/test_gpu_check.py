"""benchmarks/gpu_check.py runs here: GPU sections skipped with their reason, and (--device cpu) every section's
own code run on the CPU, so the script is ready for a GPU machine."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks" / "gpu_check.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_gpu_check_runs_every_section_it_can(tmp_path):
    import torch

    gc = _gpu_check()
    assert gc.main(["--n", "2", "--device", "cpu", "--skip-tests", "--out", str(tmp_path)]) == 0
    checks = json.loads((tmp_path / "gpu_check.json").read_text())["checks"]
    for name in ("data", "reference_cpu_fp32", "checkpoint_cuda_fp32", "checkpoint_cuda_bf16", "numerics_cuda",
                 "engine_cuda", "train_step_cuda", "train_smoke_cuda"):
        assert checks[name]["status"] == "ok", (name, checks[name])
    assert checks["checkpoint_cuda_fp32"]["agreement"] == 1.0  # the same device and dtype: identical answers
    assert checks["gpu_tests"]["status"] == "skipped" and "gpu_check.md" in {p.name for p in tmp_path.iterdir()}
    if not torch.cuda.is_available():
        assert gc.main(["--n", "1", "--skip-tests", "--out", str(tmp_path / "real")]) == 0
        real = json.loads((tmp_path / "real" / "gpu_check.json").read_text())["checks"]
        assert real["reference_cpu_fp32"]["status"] == "ok"
        assert real["engine_cuda"] == {"status": "skipped", "seconds": 0.0,
                                       "reason": "no CUDA device (torch.cuda.is_available() is False)"}
