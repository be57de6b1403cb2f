"""Synthetic demo data: determinism, real decodable media, frames that match their spec, questions, split."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

import videoneva.media  # noqa: F401  (PyAV before decord)
from videoneva.demo import vocab as V
from videoneva.demo.questions import candidates, describe, pick_questions
from videoneva.demo.scenes import SceneOptions, SceneSpec, ShapeSpec, render_frame, safe_box, sample_scene
from videoneva.demo.synth import SynthConfig, generate, main
from videoneva.errors import ConfigError

ARGS = dict(n=14, seed=3, frames="12-16", vp9_fraction=0.3, image_fraction=0.2, heldout_fraction=0.3)
JSON_FILES = ("train.json", "heldout.json", "heldout_prompts.jsonl", "heldout_refs.jsonl", "scenes.jsonl",
              "manifest.json")


def _gen(out: Path, **kw) -> dict:
    return generate(SynthConfig(out=str(out), **{**ARGS, **kw}), progress=False)


def _jsonl(p: Path) -> list[dict]:
    return [json.loads(x) for x in p.read_text().splitlines()]


def _scene(rec: dict) -> SceneSpec:
    return SceneSpec.from_dict(rec)


def _decode_all(path: Path) -> np.ndarray:
    import decord

    vr = decord.VideoReader(str(path), num_threads=1)  # one thread: decord's VP9 EAGAIN bug (see decoders.py)
    return vr.get_batch(list(range(len(vr)))).asnumpy()


def _mask(frame: np.ndarray, color: str, tol: int = 60) -> np.ndarray:
    return (np.abs(frame.astype(int) - np.array(V.COLORS[color])).max(-1) < tol)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("demo") / "data"
    _gen(out)
    return out


@pytest.fixture(scope="module")
def scenes(data) -> list[dict]:
    return _jsonl(data / "scenes.jsonl")


def test_deterministic_for_a_seed(data, tmp_path):
    _gen(tmp_path / "again")
    for name in JSON_FILES:
        assert (tmp_path / "again" / name).read_bytes() == (data / name).read_bytes(), name
    for rec in _jsonl(data / "scenes.jsonl")[:4]:
        if rec["kind"] == "video":
            again = _decode_all(tmp_path / "again" / rec["media"])
            np.testing.assert_array_equal(_decode_all(data / rec["media"]), again)
    _gen(tmp_path / "other", seed=4)
    assert (tmp_path / "other" / "train.json").read_bytes() != (data / "train.json").read_bytes()


def test_media_decode_with_expected_codecs_and_frame_counts(data, scenes):
    import av
    from PIL import Image

    codecs = set()
    for rec in scenes:
        path = data / rec["media"]
        if rec["kind"] == "image":
            assert path.suffix == ".png" and Image.open(path).size == (rec["width"], rec["height"])
            continue
        with av.open(str(path)) as c:
            codecs.add(c.streams.video[0].codec_context.name)
        frames = _decode_all(path)
        assert frames.shape == (rec["num_frames"], rec["height"], rec["width"], 3)
        assert 12 <= rec["num_frames"] <= 16
    assert codecs == {"h264", "vp9"}
    assert {r["codec"] for r in scenes} == {"h264", "vp9", "png"}
    assert {(r["width"], r["height"]) for r in scenes} > {(224, 224)}  # some non-square frames too


def test_rendered_frame_has_stated_colour_at_stated_position():
    rng = np.random.default_rng(0)
    for i in range(40):
        spec = sample_scene(rng, f"s{i}", SceneOptions(frames=(8, 8), noise_fraction=1.0))
        for t in (0.0, 1.0):
            frame = render_frame(spec, t)
            assert frame.shape == (spec.height, spec.width, 3) and frame.dtype == np.uint8
            for s in spec.shapes:
                cx, cy, side, color = s.state(t)
                assert tuple(frame[int(cy), int(cx)]) == V.COLORS[color]
                assert color == (s.color1 if t == 1.0 and s.motion == "changing color" else s.color)


def test_decoded_video_matches_spec_positions_and_motion(data, scenes):
    checked = set()
    for rec in scenes:
        if rec["kind"] != "video":
            continue
        spec = _scene(rec)
        frames = _decode_all(data / rec["media"])
        for s in spec.shapes:
            first, last = frames[0], frames[-1]
            cx, cy, _, color = s.state(0.0)
            assert _mask(first[int(cy) - 2:int(cy) + 3, int(cx) - 2:int(cx) + 3], color).all()
            if s.motion == "changing color":
                x1, y1, _, c1 = s.state(1.0)
                assert c1 != color and _mask(last[int(y1) - 2:int(y1) + 3, int(x1) - 2:int(x1) + 3], c1).all()
                checked.add(s.motion)
                continue
            m0, m1 = _mask(first, color), _mask(last, color)
            ys0, xs0 = np.nonzero(m0)
            ys1, xs1 = np.nonzero(m1)
            dx, dy = xs1.mean() - xs0.mean(), ys1.mean() - ys0.mean()
            if s.motion in V.TRANSLATIONS:
                ux, uy = V.TRANSLATIONS[s.motion]
                assert (dx * ux + dy * uy) > 0.3 * min(spec.width, spec.height), (rec["scene_id"], s.motion, dx, dy)
                assert abs(dx * uy) + abs(dy * ux) < 4  # no drift across the motion
            elif s.motion == "growing":
                assert m1.sum() > 3 * m0.sum()
            elif s.motion == "shrinking":
                assert m0.sum() > 3 * m1.sum()
            checked.add(s.motion)
    assert len(checked) >= 4


def test_shapes_stay_in_centre_crop_and_apart():
    rng = np.random.default_rng(1)
    opts = SceneOptions(two_shape_fraction=0.7, odd_size_fraction=0.5, frames=(16, 32))
    for i in range(300):
        spec = sample_scene(rng, f"s{i}", opts)
        xl, yl, xh, yh, _ = safe_box(spec.width, spec.height)
        for t in spec.times():
            boxes = []
            for s in spec.shapes:
                cx, cy, side, _ = s.state(float(t))
                assert xl - 0.1 <= cx - side / 2 and cx + side / 2 <= xh + 0.1
                assert yl - 0.1 <= cy - side / 2 and cy + side / 2 <= yh + 0.1
                boxes.append((cx, cy, side))
            if len(boxes) == 2:
                (ax, ay, asz), (bx, by, bsz) = boxes
                reach = (asz + bsz) / 2
                assert abs(ax - bx) >= reach or abs(ay - by) >= reach
        names = [s.shape for s in spec.shapes]
        cols = [c for s in spec.shapes for c in {s.color, s.color1}]
        assert names == sorted(names, key=V.SHAPES.index) and len(set(names)) == len(names)
        assert len(set(cols)) == len(cols)  # every colour in a scene names one shape
        assert sum(s.motion == "changing color" for s in spec.shapes) <= 1


def test_questions_are_unambiguous_and_answers_canonical():
    rng = np.random.default_rng(2)
    seen_types = set()
    for i in range(200):
        spec = sample_scene(rng, f"s{i}", SceneOptions())
        pool = candidates(spec)
        seen_types |= set(pool)
        if spec.kind == "image":
            assert set(pool) <= set(V.IMAGE_QUESTION_TYPES)
        for qtype, qas in pool.items():
            texts = [q.question for q in qas]
            assert len(texts) == len(set(texts))
            for qa in qas:
                if len(spec.shapes) == 2:  # a referent is always named
                    assert qa.type in ("count", "describe") or any(
                        s.shape in qa.question or s.color in qa.question for s in spec.shapes), qa
        for qa in pool.get("color", []):
            assert qa.answer in V.COLORS
        for qa in pool.get("motion", []):
            assert qa.answer in V.MOTIONS.values()
        assert {qa.answer for qa in pool["count"]} == {str(len(spec.shapes))}
        picked = pick_questions(spec, 5, rng)
        assert len(picked) == 5 and {q.type for q in picked} == set(pool)  # every available type asked
    assert seen_types == set(V.QUESTION_TYPES)


def test_extra_questions_go_to_the_named_types_first():
    rng_scene = np.random.default_rng(5)
    opts = SceneOptions(image_fraction=0.0, two_shape_fraction=1.0)
    for i in range(20):
        spec = sample_scene(rng_scene, f"s{i}", opts)
        plain = pick_questions(spec, 8, np.random.default_rng(i))
        extra = pick_questions(spec, 8, np.random.default_rng(i), ("motion", "shape"))
        assert plain[:5] == extra[:5]  # one of each type first, the same draw
        types = [q.type for q in extra[5:]]
        assert types == ["motion", "shape", "motion"], types  # round-robin over the named types
        assert len({q.question for q in extra}) == 8
    with pytest.raises(ConfigError, match="extra_types"):
        SynthConfig(out="x", extra_types="motion,colour")
    assert SynthConfig(out="x", extra_types=" motion, shape ").extra_type_list() == ("motion", "shape")


def test_describe_sentence():
    a = ShapeSpec("square", "blue", "changing color", (50, 50), (50, 50), (40, 40), "green", 0.5)
    b = ShapeSpec("circle", "red", "left", (150, 50), (80, 50), (40, 40), "red")
    spec = SceneSpec("s", "video", 224, 224, 16, "h264", "black", False, 0, (a, b))
    assert describe(spec) == "a red circle moving left and a blue square turning green."
    assert re.fullmatch(r"a \w+ \w+ [a-z ]+\.", describe(SceneSpec("s", "video", 224, 224, 16, "h264", "black",
                                                                    False, 0, (b,))))


def test_files_formats_types_and_split(data, scenes):
    train, held = json.loads((data / "train.json").read_text()), json.loads((data / "heldout.json").read_text())
    prompts, refs = _jsonl(data / "heldout_prompts.jsonl"), _jsonl(data / "heldout_refs.jsonl")
    for rec in train + held:
        kind = "video" if "video" in rec else "image"
        human, gpt = rec["conversations"]
        assert human["from"] == "human" and human["value"].startswith(f"<{kind}>\n") and gpt["from"] == "gpt"
        assert (data / rec[kind]).is_file()
    media = lambda recs: {r.get("video") or r.get("image") for r in recs}  # noqa: E731
    assert media(train).isdisjoint(media(held))
    assert media(prompts) == media(held)
    by_split = {s["media"]: s["split"] for s in scenes}
    assert {by_split[m] for m in media(held)} == {"heldout"} and {by_split[m] for m in media(train)} == {"train"}
    assert [p["question_id"] for p in prompts] == [r["question_id"] for r in refs] == list(range(len(refs)))
    assert [p["category"] for p in prompts] == [r["type"] for r in refs]
    assert [p["text"] for p in prompts] == [h["conversations"][0]["value"].split("\n", 1)[1] for h in held]
    assert all("<video>" not in p["text"] and "<image>" not in p["text"] for p in prompts)
    manifest = json.loads((data / "manifest.json").read_text())
    assert manifest["generator"] == V.GENERATOR_VERSION and manifest["seed"] == ARGS["seed"]
    assert all(manifest["questions"]["train"][t] > 0 for t in V.QUESTION_TYPES)
    assert manifest["scenes"] == {"train": 10, "heldout": 4}


def test_cli_errors_and_overwrite(tmp_path, capsys):
    with pytest.raises(ConfigError, match="unknown config key"):
        main([f"out={tmp_path / 'x'}", "colour=1"])
    with pytest.raises(ConfigError, match="out is required"):
        main(["n=3"])
    with pytest.raises(ConfigError, match="frames"):
        main([f"out={tmp_path / 'x'}", "frames=9-3"])
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="not empty"):
        main([f"out={foreign}", "n=2"])
    out = tmp_path / "all_heldout"
    assert main([f"out={out}", "n=4", "heldout_fraction=1.0", "frames=8", "size=112"]) == 0
    assert json.loads((out / "train.json").read_text()) == []
    assert main([f"out={out}", "n=2", "frames=8", "size=112", "multi_turn=true", "heldout_fraction=0"]) == 0
    names = sorted(p.name for p in (out / "media").iterdir())  # the 2 stale files of the first run are gone
    assert names == sorted(Path(r["media"]).name for r in _jsonl(out / "scenes.jsonl")) and len(names) == 2
    multi = json.loads((out / "train.json").read_text())
    assert len(multi) == 2 and all(len(r["conversations"]) == 10 for r in multi)
    assert all(("<video>" in r["conversations"][0]["value"]) + ("<image>" in r["conversations"][0]["value"]) == 1
               and not any("<" in t["value"] for t in r["conversations"][1:]) for r in multi)
    assert "demo-data:" in capsys.readouterr().out


def test_media_token_placement(tmp_path):
    import json

    from videoneva.cli import main as cli

    assert cli(["demo-data", f"out={tmp_path / 'r'}", "n=3", "seed=5", "media_token=right", "heldout_fraction=0"]) == 0
    assert cli(["demo-data", f"out={tmp_path / 'l'}", "n=3", "seed=5", "heldout_fraction=0"]) == 0
    right = json.loads((tmp_path / "r" / "train.json").read_text())
    left = json.loads((tmp_path / "l" / "train.json").read_text())
    for r, l in zip(right, left):
        q = r["conversations"][0]["value"]
        assert q.endswith(("<video>", "<image>")) and l["conversations"][0]["value"].startswith(("<video>\n", "<image>\n"))
    assert cli(["demo-data", f"out={tmp_path / 'x'}", "media_token=top"]) == 2
