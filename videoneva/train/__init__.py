"""videoneva.train: `videoneva train` on Lightning Fabric (loop.py), and gpu_smoke() for the GPU check."""


def gpu_smoke(out_dir=None, steps: int = 4) -> dict:
    """A few bf16-mixed training steps on CUDA through `videoneva train`'s path (videoneva/train/smoke.py)."""
    from videoneva.train.smoke import gpu_smoke as run

    return run(out_dir, steps)
