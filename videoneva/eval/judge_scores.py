"""The judge's two scores parsed from its reply, and the per-category summary of the reviews."""
from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass
from typing import Iterable, Optional

import numpy as np

MAX_SCORE = 10.0   # the rules ask for scores on a 1-10 scale
UNPARSEABLE = [-1, -1]   # NeMo's and LLaVA's `tuple` for a reply they could not parse

# "Assistant 1" / "Assistant 2" labels carry digits that are not scores; "Assistants 1 and 2" too.
_LABELS = re.compile(r"\b(?:assistants?|models?|answers?|responses?)\s*#?\s*[12]"
                     r"(?:\s*(?:and|&|,)\s*[12])?\b", re.IGNORECASE)
# A denominator ("8/10", "8 out of 10") is not a score either.
_OUT_OF = re.compile(r"\s*(?:/|out\s+of)\s*10(?:\.0+)?\b", re.IGNORECASE)
_NUMBER = re.compile(r"\d+(?:\.\d+)?")


def parse_scores(reply: Optional[str]) -> Optional[tuple[float, float]]:
    """The two scores on the reply's first non-blank line, or None when it has no clear pair.

    Accepts what LLaVA's parse_score accepts ("8 9", "8, 9") and common variants: "Score: 8/10 and
    9/10", "Assistant 1: 8, Assistant 2: 9", "**8** **9**", "(8, 9)". Exactly two numbers, each in
    0..10, must remain once labels and denominators are removed; anything else is unparseable.

    Args:
        reply: the judge's reply text.
    """
    if not reply:
        return None
    first = next((ln for ln in reply.splitlines() if ln.strip()), "")
    first = _OUT_OF.sub("", _LABELS.sub(" ", first))
    nums = [float(n) for n in _NUMBER.findall(first)]
    if len(nums) != 2 or not all(0.0 <= n <= MAX_SCORE for n in nums):
        return None
    return nums[0], nums[1]


@dataclass(frozen=True)
class SummaryRow:
    """One summary line: mean scores x10 of model 1 and model 2 over `count` parsed reviews."""

    name: str
    score1: Optional[float]   # None when the category has no parsed review
    score2: Optional[float]
    count: int


@dataclass(frozen=True)
class Summary:
    rows: list[SummaryRow]   # "all" first, then the categories sorted
    unparseable: int         # reviews whose reply had no score pair (excluded from the means)
    missing: int             # reviews that could not be requested this run


def _scaled_means(tuples: list[list[float]]) -> tuple[float, float]:
    # The arithmetic of LLaVA's llava/eval/summarize_gpt_review.py in the version NeMo's
    # mixtral_eval.py carries (the absolute scores, not LLaVA's later relative score
    # stats[1]/stats[0]*100): numpy mean over reviews, round to 3 places, then x10 rounded to 1.
    stats = [round(x, 3) for x in np.asarray(tuples, dtype=float).mean(0).tolist()]
    return round(stats[0] * 10, 1), round(stats[1] * 10, 1)


def summarize(reviews: Iterable[dict], missing: int = 0, categories: Iterable[str] = ()) -> Summary:
    """Per-category and overall means of the parsed reviews.

    Unparseable reviews (`parsed` false, or NeMo's [-1, -1] tuple) are counted, not averaged:
    NeMo averages the -1s into the means, which drags a model's score down for the judge's
    formatting slips; that is a bug we do not reproduce.

    Args:
        reviews: review records with "category" and "tuple".
        missing: reviews that could not be requested, reported alongside.
        categories: categories to list even without a review (shown as n/a).
    """
    by_cat: dict[str, list[list[float]]] = defaultdict(list)
    categories = set(categories)
    unparseable = 0
    for rev in reviews:
        cat = rev.get("category", "all")
        categories.add(cat)
        tup = rev.get("tuple")
        if rev.get("parsed") is False or not isinstance(tup, list) or len(tup) != 2 or list(tup) == UNPARSEABLE:
            unparseable += 1
            continue
        by_cat[cat].append(tup)
        by_cat["all"].append(tup)
    rows = []
    for name in ["all"] + sorted(categories - {"all"}):
        tuples = by_cat.get(name, [])
        s1, s2 = _scaled_means(tuples) if tuples else (None, None)
        rows.append(SummaryRow(name, s1, s2, len(tuples)))
    return Summary(rows, unparseable, missing)


def format_summary(summary: Summary) -> str:
    """The seed's shape: `all 84.8 72.4`, then one `<category> <score1> <score2>` line per category.

    Counts of unparseable and missing reviews follow, only when there are any.
    """
    total = sum(r.count for r in summary.rows if r.name == "all") + summary.unparseable + summary.missing
    lines = [f"{r.name} {'n/a' if r.score1 is None else r.score1} {'n/a' if r.score2 is None else r.score2}"
             for r in summary.rows]
    if summary.unparseable:
        lines.append(f"unparseable {summary.unparseable} of {total} reviews (no score pair on the judge's "
                     "first line; excluded from the means, requested again on the next run)")
    if summary.missing:
        lines.append(f"missing {summary.missing} of {total} reviews (requests failed; rerun the same command)")
    return "\n".join(lines)
