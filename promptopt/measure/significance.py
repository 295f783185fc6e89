"""Is the best prompt better than the seed on the same test examples? Paired tests for the final report.

- McNemar's exact test for 0/1 scores (accuracy): only the discordant examples count; two-sided
  binomial p-value with p = 1/2.
- A paired bootstrap of the mean difference for any score: a 95% percentile interval and a
  two-sided p-value (twice the share of resampled differences on the far side of zero).
The resampling RNG is fixed, so a report is reproducible.
"""
from __future__ import annotations

import math
import random
from typing import Any, Sequence

BOOTSTRAP_RESAMPLES = 2000


def mcnemar_exact(a: Sequence[float], b: Sequence[float]) -> tuple[int, int, float]:
    """(examples only `a` got right, examples only `b` got right, two-sided p-value)."""
    only_a = sum(1 for x, y in zip(a, b) if x > y)
    only_b = sum(1 for x, y in zip(a, b) if y > x)
    n = only_a + only_b
    if n == 0:
        return 0, 0, 1.0
    k = min(only_a, only_b)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n
    return only_a, only_b, min(1.0, 2 * tail)


def paired_bootstrap(a: Sequence[float], b: Sequence[float], *, resamples: int = BOOTSTRAP_RESAMPLES,
                     seed: int = 0) -> tuple[float, float, float, float]:
    """(mean of b - a, 95% CI low, high, two-sided p-value) by resampling examples with replacement."""
    diffs = [y - x for x, y in zip(a, b)]
    n = len(diffs)
    if n == 0:
        return math.nan, math.nan, math.nan, math.nan
    mean = sum(diffs) / n
    rng = random.Random(seed)
    means = sorted(sum(diffs[rng.randrange(n)] for _ in range(n)) / n for _ in range(resamples))
    low, high = means[int(0.025 * resamples)], means[min(resamples - 1, int(0.975 * resamples))]
    below = sum(1 for m in means if m <= 0) / resamples
    above = sum(1 for m in means if m >= 0) / resamples
    return mean, low, high, min(1.0, 2 * min(below, above))


def compare_paired(seed_scores: Sequence[float], best_scores: Sequence[float]) -> dict[str, Any]:
    """Seed vs best on the same examples (same order): difference, CI, p-values, and which test applies."""
    if len(seed_scores) != len(best_scores):
        raise ValueError("paired scores need the same examples")
    diff, low, high, p_boot = paired_bootstrap(seed_scores, best_scores)
    out: dict[str, Any] = {"n": len(seed_scores), "diff": diff, "ci95": [low, high], "p_bootstrap": p_boot}
    if all(s in (0.0, 1.0) for s in (*seed_scores, *best_scores)):
        only_seed, only_best, p = mcnemar_exact(seed_scores, best_scores)
        out.update({"only_seed_right": only_seed, "only_best_right": only_best, "p_mcnemar": p, "p": p,
                    "test": "mcnemar"})
    else:
        out.update({"p": p_boot, "test": "paired bootstrap"})
    return out
