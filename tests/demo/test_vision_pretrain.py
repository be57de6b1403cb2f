"""The demo's dense vision-tower pretraining: exact patch labels, the frames it labels, and its place in `videoneva train`."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from videoneva.cli import main as cli
from videoneva.config import load_config
from videoneva.demo import vocab as V
from videoneva.demo.scenes import SceneSpec, ShapeSpec
from videoneva.demo.scene_labels import build_targets, frame_times, patch_cover, read_scenes
from videoneva.errors import ConfigError
from videoneva.media.settings import MediaSettings
from videoneva.train.loop import TrainConfig, train


def _scene(*shapes: ShapeSpec, width=256, height=192, kind="video", frames=20) -> SceneSpec:
    return SceneSpec("s", kind, width, height, frames, "h264", "black", False, 0, shapes)


def test_patch_cover_is_exact_on_the_centre_crop():
    # 256x192: the model sees x in [32, 224), all of y; 8x8 patches of 24 px. A 48 px square whose
    # box starts at x=80, y=24 fills patches (rows 1-2, columns 2-3) exactly.
    sq = ShapeSpec("square", "blue", "left", (104.0, 48.0), (56.0, 48.0), (48.0, 48.0), "blue")
    cover, attrs = patch_cover(_scene(sq), 0.0, 8)
    want = np.zeros((8, 8), np.float32)
    want[1:3, 2:4] = 1.0
    np.testing.assert_allclose(cover[0], want, atol=1e-6)
    np.testing.assert_allclose(attrs[0], [V.SHAPES.index("square"), list(V.COLORS).index("blue"),
                                          72 / 192, 48 / 192, 48 / 192], atol=1e-6)
    # at t = 1 it moved 48 px left: two patch columns
    cover1, attrs1 = patch_cover(_scene(sq), 1.0, 8)
    np.testing.assert_allclose(cover1[0], np.roll(want, -2, axis=1), atol=1e-6)
    assert attrs1[0, 2] == pytest.approx(24 / 192)


def test_targets_label_owner_and_leave_slivers_out():
    circle = ShapeSpec("circle", "red", "changing color", (60.0, 60.0), (60.0, 60.0), (40.0, 40.0), "green", 0.5)
    tri = ShapeSpec("triangle", "white", "up", (170.0, 150.0), (170.0, 120.0), (50.0, 50.0), "white")
    scene = _scene(circle, tri, width=224, height=224)
    c0, a0 = patch_cover(scene, 0.0, 8)
    c1, a1 = patch_cover(scene, 1.0, 8)
    t = build_targets([c0, c1], [a0, a1], min_cover=0.15)
    best = np.maximum(c0[0], c0[1])
    assert ((t.objectness[0] == 1).numpy() == (best >= 0.15)).all()
    assert ((t.objectness[0] == 0).numpy() == (best <= 0.02)).all()
    assert bool((t.objectness[0] == -1).any()), "partly covered patches are neither shape nor background"
    own = t.owner[0]
    assert set(t.shape[0][own == 0].tolist()) == {V.SHAPES.index("circle")}
    assert set(t.shape[0][own == 1].tolist()) == {V.SHAPES.index("triangle")}
    # the circle's colour follows the clip fraction: red at t = 0, green after the switch
    assert set(t.color[0][own == 0].tolist()) == {list(V.COLORS).index("red")}
    assert set(t.color[1][t.owner[1] == 0].tolist()) == {list(V.COLORS).index("green")}
    assert (t.shape[0][own < 0] == -100).all() and (t.attrs[0, :, 0] >= 0).all()


def test_frame_times_follow_the_model_sampling():
    media = MediaSettings(media_type="video", num_frames=3)
    assert frame_times(_scene(frames=20), media) == [0.0, 9 / 19, 1.0]  # linspace(0, 19, 3) truncated
    assert frame_times(_scene(frames=20), MediaSettings(media_type="video", num_frames=2)) == [0.0, 1.0]
    assert frame_times(_scene(kind="image", frames=1), media) == [0.0]


@pytest.fixture(scope="module")
def demo_data(tmp_path_factory):
    out = tmp_path_factory.mktemp("vp") / "data"
    assert cli(["demo-data", f"out={out}", "n=16", "seed=5", "heldout_fraction=0.25", "media_token=right",
                "multi_turn=true"]) == 0
    return out


def _cfg(data, out, *extra):
    return load_config(TrainConfig, [
        f"data.data_path={data / 'train.json'}", f"data.video_folder={data}", f"output_dir={out}",
        "data.num_frames=2", "data.conv_template=nv_dpo", "model.image_size=32", "model.patch_size=8",
        "model.vision_hidden=32", "model.vision_intermediate=64", "model.text_hidden=64", "model.text_intermediate=128",
        "model.vocab_size=300", "train.micro_batch_size=2", "train.warmup_steps=1", "train.max_steps=2",
        "save_every=0", "log_every=0", f"vision_pretrain.scenes={data / 'scenes.jsonl'}",
        "vision_pretrain.batch_size=16", "vision_pretrain.warmup_steps=2", *extra])


def test_train_pretrains_the_tower_first_and_records_it(demo_data, tmp_path):
    from videoneva.checkpoint.native import load_checkpoint

    s = train(_cfg(demo_data, tmp_path / "run", "vision_pretrain.steps=40"))
    report = json.loads((tmp_path / "run" / "vision_pretrain.json").read_text())
    losses = report["losses"]
    assert len(losses) == 40 and np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5]), losses
    assert report["train_frames"] > 12 and report["heldout"]["objects"] > 0
    assert s["vision_pretrain"]["heldout"] == report["heldout"]
    ck = load_checkpoint(s["final"])
    assert ck.settings.source["vision_pretrain"]["steps"] == 40
    # the finetune that follows trains as configured: the tower too (freeze_vision=false), from the pretrained weights
    plain = train(_cfg(demo_data, tmp_path / "plain", "vision_pretrain.scenes=null"))
    other = load_checkpoint(plain["final"])
    tower = dict(ck.model.model.vision_tower.named_parameters())
    base = dict(other.model.model.vision_tower.named_parameters())
    assert any(not torch.equal(tower[k], base[k]) for k in tower), "the tower was not pretrained"
    assert plain["vision_pretrain"] is None and "vision_pretrain" not in other.settings.source


def test_pretraining_leaves_frozen_parts_frozen(demo_data, tmp_path):
    from videoneva.checkpoint.native import load_checkpoint

    a = train(_cfg(demo_data, tmp_path / "a", "vision_pretrain.steps=3", "train.freeze_vision=true"))
    b = train(_cfg(demo_data, tmp_path / "b", "vision_pretrain.steps=3", "train.freeze_vision=true", "train.max_steps=4"))
    ta = load_checkpoint(a["final"]).model.model.vision_tower.state_dict()
    tb = load_checkpoint(b["final"]).model.model.vision_tower.state_dict()
    assert all(torch.equal(ta[k], tb[k]) for k in ta), "freeze_vision=true: the finetune must not move the tower"


def test_bad_vision_pretrain_settings(demo_data, tmp_path, tiny_checkpoint):
    with pytest.raises(ConfigError, match="init= already brings one"):
        _cfg(demo_data, tmp_path / "x", f"init={tiny_checkpoint}")
    with pytest.raises(ConfigError, match="vision_pretrain.scenes not found: .*nope.jsonl"):
        train(_cfg(demo_data, tmp_path / "x", f"vision_pretrain.scenes={tmp_path / 'nope.jsonl'}"))
    with pytest.raises(ConfigError, match="image_aspect_ratio=square"):
        train(_cfg(demo_data, tmp_path / "x", "data.image_aspect_ratio=pad"))
    bad = tmp_path / "bad.jsonl"
    lines = (demo_data / "scenes.jsonl").read_text().splitlines()
    bad.write_text("\n".join([lines[0], json.dumps({"split": "train", "media": "m.mp4"})]) + "\n")
    with pytest.raises(ConfigError, match=r"bad.jsonl:2: not a demo-data scene spec"):
        read_scenes(bad)
