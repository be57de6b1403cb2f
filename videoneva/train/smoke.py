"""A few training steps on CUDA in bf16-mixed through `videoneva train`'s own path (the GPU check calls it)."""
from __future__ import annotations

import json
import math
import tempfile
import time
from pathlib import Path
from typing import Optional

import torch


def gpu_smoke(out_dir: Optional[str] = None, steps: int = 4) -> dict:
    """train_smoke() on one CUDA device; RuntimeError without CUDA."""
    if not torch.cuda.is_available():
        raise RuntimeError("gpu_smoke needs a CUDA device")
    return train_smoke("gpu", out_dir, steps)


def train_smoke(accelerator: str, out_dir: Optional[str] = None, steps: int = 4) -> dict:
    """Train a small new model for `steps` steps on one device, trainer.precision=bf16-mixed, activation
    checkpointing on, on a tiny `videoneva demo-data` set of still images (PIL decode only).

    Returns a dict: device name, the device training ran on, precision, losses, whether they are
    finite and went down, the peak CUDA memory (0 on CPU), seconds, and the dtype of the exported weights.

    Args:
        accelerator: trainer.accelerator (gpu, or cpu to run the same steps slowly on the CPU).
        out_dir: where the data and the run go (a temporary folder when None).
        steps: optimizer steps.
    """
    cuda = accelerator != "cpu"
    from videoneva.checkpoint.native import load_checkpoint
    from videoneva.config import load_config
    from videoneva.demo.synth import main as demo_data
    from videoneva.train.config import TrainConfig
    from videoneva.train.loop import train

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(out_dir or tmp)
        data = root / "data"
        if demo_data([f"out={data}", "n=16", "seed=11", "heldout_fraction=0", "image_fraction=1.0",
                      "multi_turn=true", "media_token=left"]) != 0:
            raise RuntimeError("videoneva demo-data failed")
        cfg = load_config(TrainConfig, [
            f"data.data_path={data / 'train.json'}", f"data.image_folder={data}", f"output_dir={root / 'run'}",
            "data.conv_template=nv_dpo", "model.image_size=64", "model.patch_size=8", "model.vision_hidden=128",
            "model.vision_intermediate=256", "model.text_hidden=256", "model.text_intermediate=512",
            "model.vocab_size=512", "train.micro_batch_size=4", "train.warmup_steps=1", "train.lr=2e-3",
            f"train.max_steps={steps}", "train.activation_checkpointing=true", "save_every=0", "log_every=1",
            f"trainer.accelerator={accelerator}", "trainer.devices=1", "trainer.precision=bf16-mixed"])
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        summary = train(cfg)
        seconds = time.perf_counter() - t0
        losses = json.loads((root / "run" / "train_summary.json").read_text())["losses"]
        weights = {str(p.dtype) for p in load_checkpoint(summary["final"]).model.parameters()}
    return {"device": torch.cuda.get_device_name() if cuda else "cpu", "train_device": summary["device"],
            "precision": "bf16-mixed", "steps": summary["steps"], "losses": losses,
            "finite": all(math.isfinite(x) for x in losses), "loss_went_down": losses[-1] < losses[0],
            "peak_cuda_memory_bytes": torch.cuda.max_memory_allocated() if cuda else 0,
            "seconds": seconds, "exported_weight_dtypes": sorted(weights)}
