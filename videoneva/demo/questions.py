"""Questions and canonical answers for a synthetic scene (templates in vocab.py).

Every question has exactly one right, short answer:
  color     the shape's colour ("red"). Only asked about shapes whose colour does not change.
  shape     "circle" | "square" | "triangle".
  motion    "left" | "right" | "up" | "down" | "growing" | "shrinking" | "changing color".
  count     number of shapes, as digits ("1" or "2").
  describe  one clause per shape in vocab.SHAPES order, e.g. "a red circle moving left and a blue
            square turning green." (videos only).
Two-shape scenes have two different shapes of two different colours, so "the circle" or "the red
shape" always names one shape; questions without a referent ("What color is the shape?") are only
asked in one-shape scenes. A shape that changes colour is referred to by its shape only. Still
images get color, shape and count questions.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from videoneva.demo import vocab as V
from videoneva.demo.scenes import SceneSpec, ShapeSpec


@dataclass(frozen=True)
class QA:
    """One question (without the media token) and its reference answer."""

    type: str
    question: str
    answer: str


def motion_answer(shape: ShapeSpec) -> str:
    return V.MOTIONS[shape.motion]


def describe(scene: SceneSpec) -> str:
    """The canonical description: "a red circle moving left and a blue square growing."."""
    clauses = [f"a {s.color} {s.shape} {V.DESCRIBE_MOTION[s.motion].format(color1=s.color1)}"
               for s in sorted(scene.shapes, key=lambda s: V.SHAPES.index(s.shape))]
    return " and ".join(clauses) + "."


def _fill(templates: tuple[str, ...], media: str, shape: ShapeSpec) -> list[str]:
    return [t.format(media=media, shape=shape.shape, color=shape.color) for t in templates]


def candidates(scene: SceneSpec) -> dict[str, list[QA]]:
    """Every valid question of the scene, per question type (types with none are left out)."""
    media, one = scene.kind, len(scene.shapes) == 1
    types = V.QUESTION_TYPES if scene.kind == "video" else V.IMAGE_QUESTION_TYPES
    out: dict[str, list[QA]] = {t: [] for t in types}
    answers = {"color": lambda s: s.color, "shape": lambda s: s.shape, "motion": motion_answer}
    for s in scene.shapes:
        for qtype, get in answers.items():
            if qtype not in out:
                continue
            forms = V.TEMPLATES[qtype]
            texts: list[str] = []
            if one:
                texts += _fill(forms.get("single", ()), media, s)
            texts += _fill(forms.get("by_shape", ()), media, s)
            if s.constant_color:
                texts += _fill(forms.get("by_color", ()), media, s)
            if qtype == "color" and not s.constant_color:
                texts = []  # its colour has no single answer
            out[qtype] += [QA(qtype, q, get(s)) for q in texts]
    out["count"] = [QA("count", q, V.COUNT_WORDS[len(scene.shapes)])
                    for q in _fill(V.TEMPLATES["count"]["any"], media, scene.shapes[0])]
    if "describe" in out:
        out["describe"] = [QA("describe", q, describe(scene))
                           for q in _fill(V.TEMPLATES["describe"]["any"], media, scene.shapes[0])]
    return {t: qs for t, qs in out.items() if qs}


def pick_questions(scene: SceneSpec, k: int, rng: np.random.Generator, extra_types: tuple[str, ...] = ()) -> list[QA]:
    """Up to k questions, spread over the question types: one of each type (random order) first,
    then further ones round-robin over extra_types (in their order) while those have unused
    candidates, then round-robin over all the scene's types.

    Args:
        scene: the scene to ask about.
        k: questions wanted (fewer come back when the scene has fewer candidates).
        rng: the scene's generator.
        extra_types: question types the questions beyond one per type go to first (e.g. the
            ones a model finds hardest); () spreads them over every type.
    """
    pool = candidates(scene)
    order = [list(pool)[i] for i in rng.permutation(len(pool))]
    remaining = {t: [pool[t][i] for i in rng.permutation(len(pool[t]))] for t in order}
    picked = [remaining[t].pop() for t in order][:k]
    for types in ([t for t in extra_types if t in remaining], order):
        while len(picked) < k and any(remaining[t] for t in types):
            for t in types:
                if remaining[t] and len(picked) < k:
                    picked.append(remaining[t].pop())
    return picked
