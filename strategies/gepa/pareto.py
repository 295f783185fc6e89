"""Instance-level Pareto selection (GEPA, Agrawal et al. 2025): a candidate is on the frontier when it
is best, ties included, on at least one example, and parents are drawn by how often they are.

`scores` maps candidate id -> {example id: score}, every candidate scored on the same examples.
"""
from __future__ import annotations

import random
from typing import Mapping, Sequence

Scores = Mapping[str, Mapping[str, float]]


def instance_fronts(scores: Scores) -> dict[str, set[str]]:
    """For each example, the candidates with the highest score on it."""
    examples = set().union(*(s.keys() for s in scores.values())) if scores else set()
    fronts: dict[str, set[str]] = {}
    for ex in sorted(examples):
        have = {c: s[ex] for c, s in scores.items() if ex in s}
        top = max(have.values())
        fronts[ex] = {c for c, v in have.items() if v == top}
    return fronts


def frontier(scores: Scores, order: Sequence[str] | None = None) -> dict[str, int]:
    """The frontier after dropping redundant candidates, each with the number of examples it is best on.

    Weakest (lowest mean) first, a candidate is dropped when every example it is best on has another
    remaining candidate that is best there too. One pass suffices: dropping a candidate never makes
    another redundant. This is GEPA's pruning of dominated programs; among exact ties the stronger,
    then the later (in `order`) candidate stays. `order` (default: the mapping's) breaks mean ties."""
    order = list(order or scores)
    fronts = instance_fronts(scores)
    mean = {c: sum(scores[c].values()) / max(1, len(scores[c])) for c in order}
    kept = {c for f in fronts.values() for c in f}
    for c in sorted(kept, key=lambda c: (mean[c], order.index(c))):
        if all(len(f & kept) > 1 for f in fronts.values() if c in f):
            kept.discard(c)
    return {c: sum(1 for f in fronts.values() if c in f) for c in order if c in kept}


def sample_parent(rng: random.Random, scores: Scores, order: Sequence[str] | None = None) -> str:
    """One frontier candidate, drawn with probability proportional to its number of best examples."""
    front = frontier(scores, order)
    ids = list(front)
    return rng.choices(ids, weights=[front[c] for c in ids], k=1)[0]


def merge_subsample(rng: random.Random, a: Mapping[str, float], b: Mapping[str, float], k: int) -> list[str]:
    """`k` examples to judge a merge of a and b on, balanced between those where a is better, where b
    is better and ties (GEPA: ceil(k/3) from each, then filled from what is left)."""
    common = sorted(set(a) & set(b))
    buckets = [[e for e in common if a[e] > b[e]], [e for e in common if b[e] > a[e]],
               [e for e in common if a[e] == b[e]]]
    each = -(-k // 3)
    picked: list[str] = []
    for bucket in buckets:
        picked += rng.sample(bucket, min(each, len(bucket)))
    rest = [e for e in common if e not in picked]
    picked += rng.sample(rest, max(0, min(k - len(picked), len(rest))))
    return picked[:k]
