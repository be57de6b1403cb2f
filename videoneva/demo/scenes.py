"""Synthetic scenes for the demo data set: spec dataclasses, seeded sampling, frame rendering."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional

import numpy as np
from PIL import Image, ImageDraw

from videoneva.demo import vocab as V

MAX_TRIES = 500  # placements tried for a two-shape scene before its motions are drawn again


@dataclass(frozen=True)
class ShapeSpec:
    """One shape and how it changes over the clip (t = 0 first frame … 1 last frame).

    Positions are bounding-box centres in px of the full frame; `size` is the side of the
    bounding box (circle diameter, square side, triangle base and height).
    """

    shape: str                      # one of vocab.SHAPES
    color: str                      # colour at t = 0 (vocab.COLORS)
    motion: str                     # one of vocab.MOTIONS, or vocab.STILL for images
    start: tuple[float, float]      # centre (x, y) at t = 0
    end: tuple[float, float]        # centre (x, y) at t = 1
    size: tuple[float, float]       # side at t = 0 and t = 1
    color1: str                     # colour after the switch (== color unless changing color)
    switch: float = 1.0             # t at which the colour becomes color1 (never for 1.0 + unchanged)

    def state(self, t: float) -> tuple[float, float, float, str]:
        """(cx, cy, side, colour name) at clip fraction t in [0, 1]."""
        cx = self.start[0] + (self.end[0] - self.start[0]) * t
        cy = self.start[1] + (self.end[1] - self.start[1]) * t
        side = self.size[0] + (self.size[1] - self.size[0]) * t
        return cx, cy, side, (self.color1 if t >= self.switch else self.color)

    @property
    def constant_color(self) -> bool:
        return self.color == self.color1


@dataclass(frozen=True)
class SceneSpec:
    """One video (or still image): size, length, codec, background and its shapes (vocab.SHAPES order)."""

    scene_id: str
    kind: str                       # "video" | "image"
    width: int
    height: int
    num_frames: int                 # 1 for images
    codec: str                      # "h264" | "vp9" | "png"
    background: str                 # vocab.BACKGROUNDS key
    noisy: bool
    noise_seed: int
    shapes: tuple[ShapeSpec, ...]

    @property
    def filename(self) -> str:
        suffix = {"h264": ".mp4", "vp9": ".webm", "png": ".png"}[self.codec]
        return f"{self.scene_id}{suffix}"

    def times(self) -> np.ndarray:
        """Clip fraction t of every frame: float64 [num_frames], 0 … 1."""
        return np.linspace(0.0, 1.0, self.num_frames) if self.num_frames > 1 else np.zeros(1)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, rec: dict) -> "SceneSpec":
        """The spec from to_dict()'s output (a scenes.jsonl line; keys beyond the spec's are ignored)."""
        shapes = tuple(ShapeSpec(**{**s, "start": tuple(s["start"]), "end": tuple(s["end"]), "size": tuple(s["size"])})
                       for s in rec["shapes"])
        keys = [f.name for f in dataclasses.fields(cls) if f.name != "shapes"]
        return cls(**{k: rec[k] for k in keys}, shapes=shapes)


@dataclass(frozen=True)
class SceneOptions:
    """How scenes are drawn (fractions are probabilities per scene).

    Args:
        size: side of a square frame in px (even); "odd" frames are about size*8/7 x size*6/7.
        frames: (min, max) frames of a video, drawn uniformly.
        image_fraction: scenes that are a still PNG image instead of a video.
        vp9_fraction: videos encoded VP9 (.webm) instead of H.264 (.mp4).
        two_shape_fraction: scenes with two shapes instead of one.
        odd_size_fraction: scenes with a non-square frame (landscape or portrait).
        noise_fraction: scenes on a noisy instead of a plain background.
    """

    size: int = 224
    frames: tuple[int, int] = (16, 32)
    image_fraction: float = 0.15
    vp9_fraction: float = 0.2
    two_shape_fraction: float = 0.4
    odd_size_fraction: float = 0.2
    noise_fraction: float = 0.5


def _even(x: float) -> int:
    return int(round(x / 2.0)) * 2


def _r(x: float) -> float:
    """Round sampled geometry to 0.1 px so the written spec reproduces the frames exactly."""
    return round(float(x), 1)


def safe_box(width: int, height: int) -> tuple[float, float, float, float, float]:
    """(x_lo, y_lo, x_hi, y_hi, scale): where shapes may go, and px per reference px.

    The box is the frame's central min(W, H) square (what a CLIP resize + centre crop keeps),
    less vocab.MARGIN on every side.
    """
    m = min(width, height)
    k = m / V.REF_SIDE
    x0, y0 = (width - m) / 2.0, (height - m) / 2.0
    pad = V.MARGIN * k
    return x0 + pad, y0 + pad, x0 + m - pad, y0 + m - pad, k


def sample_shape(rng: np.random.Generator, shape: str, color: str, motion: str, width: int, height: int,
                 two: bool, color1: Optional[str] = None) -> ShapeSpec:
    """Draw the size and path of one shape so that it stays inside safe_box in every frame.

    Args:
        rng: the scene's generator.
        shape, color, motion: what to draw (motion vocab.STILL for images).
        width, height: frame size in px.
        two: True in a two-shape scene (smaller shapes).
        color1: the colour after the switch, for motion "changing color".
    """
    xl, yl, xh, yh, k = safe_box(width, height)
    lo, hi = V.SIZE_TWO if two else V.SIZE_ONE
    if motion in ("growing", "shrinking"):
        small, large = rng.uniform(*V.GROW_SMALL) * k, rng.uniform(*V.GROW_LARGE) * k
        sizes = (small, large) if motion == "growing" else (large, small)
    else:
        side = rng.uniform(lo, hi) * k
        sizes = (side, side)
    half = max(sizes) / 2.0
    cx = rng.uniform(xl + half, xh - half)
    cy = rng.uniform(yl + half, yh - half)
    start = end = (cx, cy)
    if motion in V.TRANSLATIONS:
        dx, dy = V.TRANSLATIONS[motion]
        dist = rng.uniform(*V.TRAVEL) * min(width, height)
        a_lo, a_hi = (xl + half, xh - half) if dx else (yl + half, yh - half)
        a0 = rng.uniform(a_lo, a_hi - dist) if (dx + dy) > 0 else rng.uniform(a_lo + dist, a_hi)
        a1 = a0 + (dx + dy) * dist
        start, end = ((a0, cy), (a1, cy)) if dx else ((cx, a0), (cx, a1))
    switch = 1.0
    if motion == "changing color":
        assert color1 is not None and color1 != color, "changing color needs a different color1"
        switch = rng.uniform(*V.COLOR_SWITCH)
    return ShapeSpec(shape=shape, color=color, motion=motion, start=(_r(start[0]), _r(start[1])),
                     end=(_r(end[0]), _r(end[1])), size=(_r(sizes[0]), _r(sizes[1])),
                     color1=color1 if motion == "changing color" else color, switch=round(float(switch), 3))


def apart(a: ShapeSpec, b: ShapeSpec, times: np.ndarray, gap: float) -> bool:
    """True when the bounding boxes of a and b are at least `gap` px apart in every frame."""
    for t in times:
        ax, ay, asz, _ = a.state(float(t))
        bx, by, bsz, _ = b.state(float(t))
        reach = (asz + bsz) / 2.0 + gap
        if abs(ax - bx) < reach and abs(ay - by) < reach:
            return False
    return True


def _pick(rng: np.random.Generator, options: list[str]) -> str:
    return options[int(rng.integers(len(options)))]


def sample_scene(rng: np.random.Generator, scene_id: str, opts: SceneOptions) -> SceneSpec:
    """Draw one scene (kind, size, codec, background, one or two shapes with distinct shape and colour).

    Args:
        rng: a generator used only for this scene (the caller seeds it from the data seed and
            the scene index, so scene i does not depend on how many scenes are drawn).
        scene_id: the file stem, e.g. "scene_00042".
        opts: probabilities and sizes.
    """
    is_image = rng.random() < opts.image_fraction
    vp9 = rng.random() < opts.vp9_fraction
    n_shapes = 2 if rng.random() < opts.two_shape_fraction else 1
    width = height = opts.size
    if rng.random() < opts.odd_size_fraction:
        long_side, short_side = _even(opts.size * 8 / 7), _even(opts.size * 6 / 7)
        width, height = (long_side, short_side) if rng.random() < 0.5 else (short_side, long_side)
    num_frames = 1 if is_image else int(rng.integers(opts.frames[0], opts.frames[1] + 1))
    background = _pick(rng, list(V.BACKGROUNDS))
    noisy = bool(rng.random() < opts.noise_fraction)
    noise_seed = int(rng.integers(2**31))
    kinds = [str(s) for s in rng.permutation(list(V.SHAPES))[:n_shapes]]
    colors = [str(c) for c in rng.permutation(list(V.COLORS))]
    times = np.linspace(0.0, 1.0, num_frames) if num_frames > 1 else np.zeros(1)
    gap = V.GAP * min(width, height) / V.REF_SIDE
    shapes: Optional[list[ShapeSpec]] = None
    while shapes is None:
        motions = [V.STILL] * n_shapes if is_image else [_pick(rng, list(V.MOTIONS))]
        if not is_image and n_shapes == 2:  # at most one colour change per scene
            motions.append(_pick(rng, [m for m in V.MOTIONS if m != "changing color" or motions[0] != m]))
        for _ in range(MAX_TRIES):
            # the colour after a change is the first colour no shape of the scene starts with
            shapes = [sample_shape(rng, kinds[i], colors[i], motions[i], width, height, n_shapes == 2,
                                   colors[n_shapes] if motions[i] == "changing color" else None)
                      for i in range(n_shapes)]
            if n_shapes == 1 or apart(shapes[0], shapes[1], times, gap):
                break
            shapes = None
    shapes.sort(key=lambda s: V.SHAPES.index(s.shape))
    return SceneSpec(scene_id=scene_id, kind="image" if is_image else "video", width=width, height=height,
                     num_frames=num_frames, codec="png" if is_image else ("vp9" if vp9 else "h264"),
                     background=background, noisy=noisy, noise_seed=noise_seed, shapes=tuple(shapes))


def render_background(scene: SceneSpec) -> np.ndarray:
    """The scene's background: uint8 [H, W, 3]; static grey noise when noisy (same in every frame)."""
    base = np.array(V.BACKGROUNDS[scene.background], dtype=np.float32)
    bg = np.broadcast_to(base, (scene.height, scene.width, 3)).astype(np.float32)
    if scene.noisy:
        noise = np.random.default_rng(scene.noise_seed).normal(0.0, V.NOISE_STD, (scene.height, scene.width, 1))
        bg = bg + noise.astype(np.float32)  # grey noise: it never looks like a coloured shape
    return np.clip(np.rint(bg), 0, 255).astype(np.uint8)


def _px(v: float) -> int:
    return int(np.floor(v + 0.5))


def draw_shape(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, side: float,
               rgb: tuple[int, int, int]) -> None:
    """Draw one filled shape with its bounding box centred at (cx, cy).

    Args:
        draw: a PIL drawing context.
        shape: "circle" | "square" | "triangle" (pointing up, base at the bottom of the box).
        cx, cy: centre of the bounding box, px.
        side: side of the bounding box, px.
        rgb: fill colour.
    """
    x0, y0 = _px(cx - side / 2), _px(cy - side / 2)
    x1, y1 = _px(cx + side / 2) - 1, _px(cy + side / 2) - 1
    if shape == "circle":
        draw.ellipse([x0, y0, x1, y1], fill=rgb)
    elif shape == "square":
        draw.rectangle([x0, y0, x1, y1], fill=rgb)
    elif shape == "triangle":
        draw.polygon([(_px(cx), y0), (x0, y1), (x1, y1)], fill=rgb)
    else:
        raise ValueError(f"unknown shape {shape!r}; choose one of {list(V.SHAPES)}")


def render_frame(scene: SceneSpec, t: float, background: Optional[np.ndarray] = None) -> np.ndarray:
    """The frame at clip fraction t: uint8 [H, W, 3] RGB.

    Args:
        scene: what to draw.
        t: 0 (first frame) … 1 (last frame).
        background: render_background(scene), passed in to draw many frames cheaply.
    """
    bg = render_background(scene) if background is None else background
    img = Image.fromarray(bg.copy())
    draw = ImageDraw.Draw(img)
    for spec in scene.shapes:
        cx, cy, side, color = spec.state(t)
        draw_shape(draw, spec.shape, cx, cy, side, V.COLORS[color])
    return np.asarray(img)


def render_frames(scene: SceneSpec) -> np.ndarray:
    """Every frame of the scene: uint8 [F, H, W, 3] RGB (F = 1 for an image)."""
    bg = render_background(scene)
    return np.stack([render_frame(scene, float(t), bg) for t in scene.times()])
