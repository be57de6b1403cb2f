"""The tiny `videoneva train` configuration the training tests share (real media from the media_dir fixture)."""
from __future__ import annotations

from videoneva.config import load_config
from videoneva.train.config import TrainConfig


def tiny_config(data, media_dir, out, *extra) -> TrainConfig:
    """A new model of a few thousand parameters on data (LLaVA json over media_dir), output to out."""
    return load_config(TrainConfig, [
        f"data.data_path={data}", f"data.video_folder={media_dir}", f"output_dir={out}", "data.num_frames=2",
        "data.frame_token_pool=4", "model.image_size=56", "model.vision_hidden=32", "model.vision_intermediate=64",
        "model.text_hidden=64", "model.text_intermediate=128", "model.vocab_size=300", "train.micro_batch_size=2",
        "train.warmup_steps=2", "train.lr=3e-3", "save_every=0", "log_every=0", *extra])
