"""`videoneva demo-data out=DIR n=N seed=S`: write the synthetic video QA set (media, LLaVA json, prompt file, refs).

Layout under out=DIR (every path in the files is relative to DIR, which is the media_base_path):
  media/scene_NNNNN.{mp4,webm,png}  H.264 / VP9 videos and PNG still images
  train.json, heldout.json          LLaVA conversation json; human turn "<video>\\nQUESTION"
  heldout_prompts.jsonl             the seed's prompt_file format, one question per line
  heldout_refs.jsonl                {"question_id", "answer", "type"} beside it
  heldout_context.jsonl             the judge's context: {"video"|"image": media, "caption": description}
  judge_rules.json                  the judge's instructions for the demo's question categories
  scenes.jsonl                      every scene's full spec (shapes, paths, sizes) and its split
  manifest.json                     generator version, seed, config, counts
The same seed and config give byte-identical json files and identical frames (the encoded video
bytes depend on the encoder build). The split is by scene: no video is in both parts.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np

import videoneva.media  # noqa: F401  (loads PyAV before decord: see videoneva/media/__init__.py)
from videoneva.config import config_help, load_config
from videoneva.demo import vocab as V
from videoneva.demo.questions import QA, describe, pick_questions
from videoneva.demo.scenes import SceneOptions, SceneSpec, render_frames, sample_scene
from videoneva.errors import ConfigError

log = logging.getLogger(__name__)

MEDIA_DIR = "media"
MEDIA_TOKEN = {"video": "<video>", "image": "<image>"}
_OUR_MEDIA = re.compile(r"scene_\d+\.(mp4|webm|png)")


def _help(text: str, default: Any) -> Any:
    return field(default=default, metadata={"help": text})


@dataclass
class SynthConfig:
    out: str = _help("output folder (new, empty, or an earlier demo-data output)", "")
    n: int = _help("number of scenes (videos + images)", 100)
    seed: int = _help("data seed: same seed + config -> same data", 0)
    heldout_fraction: float = _help("fraction of scenes held out (0..1; 1 = all)", 0.2)
    questions_per_scene: int = _help("questions per scene, spread over the question types", 5)
    extra_types: str = _help("comma list of question types (e.g. motion,shape) that get a scene's questions "
                             "beyond one per type first (empty: spread over every type)", "")
    vp9_fraction: float = _help("fraction of videos encoded VP9 (.webm) instead of H.264 (.mp4)", 0.2)
    image_fraction: float = _help("fraction of scenes that are a still PNG image", 0.15)
    two_shape_fraction: float = _help("fraction of scenes with two shapes", 0.4)
    odd_size_fraction: float = _help("fraction of scenes with a non-square frame (e.g. 256x192)", 0.2)
    noise_fraction: float = _help("fraction of scenes on a noisy background", 0.5)
    frames: str = _help("frames per video: N or MIN-MAX", "16-32")
    size: int = _help("side of a square frame in px (even, >= 64)", 224)
    fps: int = _help("frame rate written in the videos", 8)
    multi_turn: bool = _help("train.json: one record per scene with all its questions as turns "
                             "(default: one record per question, like the held-out prompts)", False)
    media_token: str = _help("where the media token goes in the human turn: left ('<video>\\nQ', LLaVA "
                             "style) | right ('Q<video>', the seed's insert_media_token=right)", "left")

    def __post_init__(self) -> None:
        if not str(self.out).strip():
            raise ConfigError("out is required: out=DIR (the folder to write the data set to)")
        for key in ("n", "questions_per_scene", "fps"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{key} must be a positive integer, got {value!r}")
        for key in ("heldout_fraction", "vp9_fraction", "image_fraction", "two_shape_fraction",
                    "odd_size_fraction", "noise_fraction"):
            if not 0.0 <= float(getattr(self, key)) <= 1.0:
                raise ConfigError(f"{key} must be between 0 and 1, got {getattr(self, key)!r}")
        if self.size < 64 or self.size > 2048 or self.size % 2:
            raise ConfigError(f"size must be an even number of px in [64, 2048], got {self.size}")
        if self.media_token not in ("left", "right"):
            raise ConfigError(f"media_token={self.media_token!r} is not valid; choose one of ['left', 'right']")
        self.frame_range()
        self.extra_type_list()

    def frame_range(self) -> tuple[int, int]:
        m = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", str(self.frames))
        lo, hi = (int(m.group(1)), int(m.group(2) or m.group(1))) if m else (0, 0)
        if not m or lo < 2 or hi < lo or hi > 1000:
            raise ConfigError(f"frames must be N or MIN-MAX with 2 <= MIN <= MAX <= 1000, got {self.frames!r}")
        return lo, hi

    def extra_type_list(self) -> tuple[str, ...]:
        types = tuple(t.strip() for t in str(self.extra_types or "").split(",") if t.strip())
        bad = [t for t in types if t not in V.QUESTION_TYPES]
        if bad:
            raise ConfigError(f"extra_types: {bad} not question types; choose from {list(V.QUESTION_TYPES)}")
        return types

    def scene_options(self) -> SceneOptions:
        return SceneOptions(size=self.size, frames=self.frame_range(), image_fraction=self.image_fraction,
                            vp9_fraction=self.vp9_fraction, two_shape_fraction=self.two_shape_fraction,
                            odd_size_fraction=self.odd_size_fraction, noise_fraction=self.noise_fraction)


@dataclass(frozen=True)
class Scene:
    """A sampled scene, where its media goes, its questions and its split."""

    spec: SceneSpec
    media_path: str       # relative to out
    questions: tuple[QA, ...]
    heldout: bool


def plan(cfg: SynthConfig) -> list[Scene]:
    """Sample every scene and its questions (no files). Scene i uses its own generator seeded
    with (seed, i), so it does not depend on n; the split is a seeded permutation of the scenes.

    Args:
        cfg: the validated config.
    """
    n_heldout = int(np.floor(cfg.n * cfg.heldout_fraction + 0.5))
    heldout = set(np.random.default_rng(cfg.seed).permutation(cfg.n)[:n_heldout].tolist())
    width = max(5, len(str(cfg.n - 1)))
    opts = cfg.scene_options()
    scenes = []
    for i in range(cfg.n):
        rng = np.random.default_rng([cfg.seed, i])
        spec = sample_scene(rng, f"scene_{i:0{width}d}", opts)
        qas = pick_questions(spec, cfg.questions_per_scene, rng, cfg.extra_type_list())
        scenes.append(Scene(spec, f"{MEDIA_DIR}/{spec.filename}", tuple(qas), i in heldout))
    return scenes


def _human(kind: str, question: str, media_token: str = "left") -> dict:
    if media_token == "right":
        return {"from": "human", "value": f"{question}{MEDIA_TOKEN[kind]}"}
    return {"from": "human", "value": f"{MEDIA_TOKEN[kind]}\n{question}"}


def conversation_records(scenes: Iterable[Scene], multi_turn: bool, media_token: str = "left") -> list[dict]:
    """LLaVA conversation records: one per question, or one per scene (all questions as turns,
    the media token in the first human turn only).

    Args:
        scenes: the scenes of one split.
        multi_turn: one record per scene instead of per question.
        media_token: "left" or "right" placement of the media token (match inference.insert_media_token).
    """
    records = []
    for sc in scenes:
        kind = sc.spec.kind
        if multi_turn:
            turns: list[dict] = []
            for j, qa in enumerate(sc.questions):
                turns.append(_human(kind, qa.question, media_token) if j == 0 else {"from": "human", "value": qa.question})
                turns.append({"from": "gpt", "value": qa.answer})
            records.append({"id": sc.spec.scene_id, kind: sc.media_path, "conversations": turns})
            continue
        for j, qa in enumerate(sc.questions):
            records.append({"id": f"{sc.spec.scene_id}_q{j}", kind: sc.media_path,
                            "conversations": [_human(kind, qa.question, media_token), {"from": "gpt", "value": qa.answer}]})
    return records


def prompt_lines(scenes: Iterable[Scene]) -> tuple[list[dict], list[dict]]:
    """The held-out prompt_file lines (seed format) and their reference lines, question_id 0, 1, …"""
    prompts, refs = [], []
    for sc in scenes:
        for qa in sc.questions:
            qid = len(prompts)
            prompts.append({sc.spec.kind: sc.media_path, "text": qa.question, "category": qa.type, "question_id": qid})
            refs.append({"question_id": qid, "answer": qa.answer, "type": qa.type})
    return prompts, refs


def judge_files(scenes: Iterable[Scene]) -> tuple[list[dict], dict]:
    """`videoneva judge` inputs for the held-out prompts: each medium's description as its context,
    and the packaged rules under the demo's categories (describe: the detailed-description rule)."""
    from videoneva.eval.judge_io import CATEGORY_PREFIX, DEFAULT_RULE_FILE

    def caption(spec: SceneSpec) -> str:  # a still image has shapes and colours, no motion
        if spec.kind == "video":
            return describe(spec)
        return " and ".join(f"a {s.color} {s.shape}" for s in spec.shapes) + "."

    context = [{sc.spec.kind: sc.media_path, "caption": caption(sc.spec)} for sc in scenes]
    packaged = json.loads(DEFAULT_RULE_FILE.read_text())
    rules = {CATEGORY_PREFIX + t: packaged[CATEGORY_PREFIX + ("detail" if t == "describe" else "conv")]
             for t in V.QUESTION_TYPES}
    return context, rules


def write_media(spec: SceneSpec, path: Path, fps: int) -> None:
    """Render the scene and write it: PNG for an image, H.264 .mp4 or VP9 .webm for a video."""
    from PIL import Image

    from videoneva.media.encode import encode_video

    frames = render_frames(spec)
    if spec.kind == "image":
        Image.fromarray(frames[0]).save(path, format="PNG")
    else:
        encode_video(frames, path, codec=spec.codec, fps=fps)


def _check_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise ConfigError(f"out={out} is a file; give a folder")
    if out.is_dir() and any(out.iterdir()) and not (out / "manifest.json").is_file():
        raise ConfigError(f"out={out} is not empty and holds no demo-data manifest.json; "
                          "choose a new or empty folder (or an earlier demo-data output to overwrite)")


def _dump(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=1, ensure_ascii=False) + "\n")


def _dump_lines(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def _counts(values: Iterable[str], keys: Iterable[str]) -> dict[str, int]:
    values = list(values)
    return {k: values.count(k) for k in keys}


def manifest(cfg: SynthConfig, scenes: list[Scene]) -> dict:
    """What was generated: version, seed, config (without out), counts per split / type / codec."""
    import av

    parts = {"train": [s for s in scenes if not s.heldout], "heldout": [s for s in scenes if s.heldout]}
    config = {k: v for k, v in dataclasses.asdict(cfg).items() if k != "out"}
    return {
        "generator": V.GENERATOR_VERSION,
        "seed": cfg.seed,
        "config": config,
        "scenes": {k: len(v) for k, v in parts.items()},
        "questions": {k: _counts((q.type for s in v for q in s.questions), V.QUESTION_TYPES) for k, v in parts.items()},
        "media": {k: _counts((s.spec.codec for s in v), ("h264", "vp9", "png")) for k, v in parts.items()},
        "two_shape_scenes": {k: sum(len(s.spec.shapes) == 2 for s in v) for k, v in parts.items()},
        "answers": sorted({q.answer for s in scenes for q in s.questions if q.type != "describe"}),
        "encoder": {"pyav": av.__version__},
        "files": {"train": "train.json", "heldout": "heldout.json", "prompt_file": "heldout_prompts.jsonl",
                  "refs": "heldout_refs.jsonl", "judge_context": "heldout_context.jsonl",
                  "judge_rules": "judge_rules.json", "scenes": "scenes.jsonl", "media": MEDIA_DIR + "/"},
    }


def generate(cfg: SynthConfig, progress: bool = True) -> dict:
    """Write the whole data set under cfg.out; returns the manifest.

    Args:
        cfg: the validated config.
        progress: show a tqdm bar on stderr.
    """
    from tqdm import tqdm

    out = Path(cfg.out).expanduser()
    _check_out(out)
    media = out / MEDIA_DIR
    media.mkdir(parents=True, exist_ok=True)
    scenes = plan(cfg)
    t0 = time.perf_counter()
    for sc in tqdm(scenes, desc="demo-data", unit="scene", file=sys.stderr, disable=not progress):
        write_media(sc.spec, out / sc.media_path, cfg.fps)
    written = {Path(sc.media_path).name for sc in scenes}
    stale = [p for p in media.iterdir() if _OUR_MEDIA.fullmatch(p.name) and p.name not in written]
    for p in stale:  # left by an earlier, larger run into the same folder
        p.unlink()
    train = [s for s in scenes if not s.heldout]
    held = [s for s in scenes if s.heldout]
    _dump(out / "train.json", conversation_records(train, cfg.multi_turn, cfg.media_token))
    _dump(out / "heldout.json", conversation_records(held, False, cfg.media_token))
    prompts, refs = prompt_lines(held)
    _dump_lines(out / "heldout_prompts.jsonl", prompts)
    _dump_lines(out / "heldout_refs.jsonl", refs)
    context, rules = judge_files(held)
    _dump_lines(out / "heldout_context.jsonl", context)
    _dump(out / "judge_rules.json", rules)
    _dump_lines(out / "scenes.jsonl", [{"split": "heldout" if s.heldout else "train", "media": s.media_path,
                                        **s.spec.to_dict()} for s in scenes])
    info = manifest(cfg, scenes)
    _dump(out / "manifest.json", info)
    log.info("wrote %d scenes (%d train, %d held out) to %s in %.1f s%s", len(scenes), len(train), len(held), out,
             time.perf_counter() - t0, f"; removed {len(stale)} stale media files" if stale else "")
    return info


def main(argv: list[str]) -> int:
    """`videoneva demo-data key=value …`."""
    if any(a in ("-h", "--help") for a in argv):
        print(config_help(SynthConfig, "videoneva demo-data: " + (__doc__ or "").splitlines()[0].split(": ", 1)[-1]))
        return 0
    cfg = load_config(SynthConfig, argv)
    info = generate(cfg)
    out = Path(cfg.out)
    print(f"demo-data: {info['scenes']['train']} train + {info['scenes']['heldout']} held-out scenes in {out}")
    for split in ("train", "heldout"):
        print(f"  {split:<8} questions " + ", ".join(f"{k}={v}" for k, v in info["questions"][split].items())
              + "  media " + ", ".join(f"{k}={v}" for k, v in info["media"][split].items()))
    print(f"  prompt_file={out / 'heldout_prompts.jsonl'} refs={out / 'heldout_refs.jsonl'} "
          f"inference.media_base_path={out}")
    return 0
