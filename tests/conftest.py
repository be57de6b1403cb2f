"""Shared fixtures: a tiny tokenizer and Video NeVA checkpoint built at run time, and real encoded videos."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import videoneva.media  # noqa: F401  (PyAV before decord: see videoneva/media/__init__.py)

torch.set_num_threads(int(os.environ.get("VIDEONEVA_TEST_THREADS", "2")))

try:
    torch.cuda.is_available()
    HAS_CUDA = torch.cuda.is_available()
except RuntimeError:
    HAS_CUDA = False

TINY_IMAGE_SIZE = 112  # 112 px / 14 px patches → 8×8 = 64 tokens per frame
TINY_FRAMES = 4

CORPUS = [
    "What color is the shape? red green blue yellow circle square triangle moving left right up down.",
    "Can you describe the scene? A hand with a robot arm. The video shows two shapes.",
    "How many shapes are there? one two three. The answer is 2.",
    "A chat between a curious user and an artificial intelligence assistant.",
    "quality:4,toxicity:0,humor:0,creativity:0,helpfulness:4,correctness:4,coherence:4,complexity:4,verbosity:4",
] * 20


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "gpu" in item.keywords and not HAS_CUDA:
            item.add_marker(pytest.mark.skip(reason="needs CUDA (no GPU on this machine)"))


@pytest.fixture(scope="session")
def tiny_tokenizer():
    from videoneva import prompts
    from videoneva.templates import TEMPLATES
    from videoneva.tokenizer import train_tokenizer

    specials = sorted({t for name in TEMPLATES for t in prompts.special_tokens(name)})
    return train_tokenizer(CORPUS, vocab_size=400, special_tokens=specials)


def make_tiny_llava(tokenizer, seed: int = 0):
    from videoneva.model.factory import TINY, new_llava
    from dataclasses import replace

    sizes = replace(TINY, vocab_size=len(tokenizer), image_size=TINY_IMAGE_SIZE)
    image_id = tokenizer.convert_tokens_to_ids("<image>")
    return new_llava(sizes, image_token_id=image_id, pad_token_id=tokenizer.pad_token_id,
                     bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, seed=seed)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory, tiny_tokenizer) -> Path:
    """A native checkpoint dir (nv_steerlm template, 4 frames) with random weights."""
    from videoneva.checkpoint.native import CheckpointSettings, save_checkpoint

    out = tmp_path_factory.mktemp("ckpt") / "tiny-videoneva"
    settings = CheckpointSettings(conv_template="nv_steerlm", num_frames=TINY_FRAMES, model_id="tiny-videoneva")
    save_checkpoint(make_tiny_llava(tiny_tokenizer), tiny_tokenizer, settings, out)
    return out


@pytest.fixture(scope="session")
def media_dir(tmp_path_factory) -> Path:
    """Real media: H.264 mp4, VP9 webm, MJPEG avi, a PNG, and broken files."""
    from PIL import Image

    from videoneva.media.encode import encode_video, gradient_frames

    d = tmp_path_factory.mktemp("media")
    encode_video(gradient_frames(24, 120, 160, seed=1), d / "clip.mp4", "h264")
    encode_video(gradient_frames(16, 96, 128, seed=2), d / "clip.webm", "vp9")
    encode_video(gradient_frames(12, 64, 96, seed=3), d / "clip.avi", "mjpeg")
    Image.fromarray(gradient_frames(1, 90, 120, seed=4)[0]).save(d / "still.png")
    (d / "empty.mp4").write_bytes(b"")
    good = (d / "clip.mp4").read_bytes()
    (d / "truncated.mp4").write_bytes(good[: len(good) // 3])
    (d / "random.mp4").write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    (d / "notes.txt").write_text("this is not a video\n")
    return d


@pytest.fixture()
def prompt_file(tmp_path):
    """Write a jsonl prompt file from a list of records (or raw strings for broken lines)."""

    def write(lines, name="prompts.jsonl") -> Path:
        p = tmp_path / name
        p.write_text("".join((ln if isinstance(ln, str) else json.dumps(ln)) + "\n" for ln in lines))
        return p

    return write


@pytest.fixture()
def copy_checkpoint(tmp_path, tiny_checkpoint):
    def copy(name="ckpt") -> Path:
        dst = tmp_path / name
        shutil.copytree(tiny_checkpoint, dst)
        return dst

    return copy
