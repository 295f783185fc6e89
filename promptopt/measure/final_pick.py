"""How the final report chooses among the finalists (`final.*` in RunConfig; issue #31).

- `pick=dev` (as always): the finalist with the best score on the whole dev split.
- `pick=kfold`: the finalists are also scored on train examples, and the pick is the best mean held-out
  score over repeated k-fold splits of that pool (dev + train). Demos must come from the training folds
  only, so the pool leaves out every finalist's demos: no fold ever holds out a demo, whichever candidate
  is scored. The finalists are not refit per fold, so each repeat's mean is the pool's mean; the folds
  give the spread (`sd` of the fold means) that the report shows next to each finalist.
- `keep_seed_alpha`: the seed prompt stays unless the pick beats it on the pick's examples with a paired
  p < alpha (promptopt.measure.significance: McNemar for 0/1 scores, else a paired bootstrap).

The loop scores; this module plans (what it costs, what the budget keeps back for it) and decides.
What the final report scores beyond the dev split's finalists (the train part of the pool) and, with a
selector, the finalists' dev scoring (the selector learns from it) is paid from the example budget: the
search gets the budget less that amount."""
from __future__ import annotations

import math
import random
from typing import Any, Literal, Mapping, Sequence

from pydantic import BaseModel, ConfigDict, Field

from promptopt.errors import ConfigError
from promptopt.measure.significance import compare_paired
from promptopt.types import Candidate


class FinalConfig(BaseModel):
    """How the final report chooses among the finalists (`final.*` in RunConfig; this module and selector.py)."""

    model_config = ConfigDict(extra="forbid")

    pick: Literal["dev", "kfold"] = "dev"  # kfold: repeated k-fold over dev plus train examples
    folds: int = Field(5, ge=2, strict=True)
    repeats: int = Field(3, ge=1, strict=True)
    # Train examples the k-fold pool adds to dev (never a finalist's demo); None: as many as dev has.
    train_examples: int | None = Field(None, ge=1, strict=True)
    # Keep the seed prompt unless the pick beats it on the pick's examples with a paired p < alpha.
    keep_seed_alpha: float | None = Field(None, gt=0, lt=1)
    selector: Literal["none", "centroid", "logistic"] = "none"  # per-input choice among the finalists

    @property
    def default(self) -> bool:
        return self == FinalConfig()


def pool_train_size(rule: FinalConfig, dev: int, train: int) -> int:
    """Train examples the k-fold pool adds to dev, at most (0 unless pick=kfold)."""
    if rule.pick != "kfold":
        return 0
    return min(train, rule.train_examples if rule.train_examples is not None else dev)


def counted_examples(rule: FinalConfig, finalists: int, dev: int, train: int) -> int:
    """Scored examples of the final report, at most, that the example budget pays for."""
    return finalists * (pool_train_size(rule, dev, train) + (dev if rule.selector != "none" else 0))


def describe(rule: FinalConfig, finalists: int, dev: int, train: int) -> str:
    """The rule in words, for --dry-run."""
    n_train = pool_train_size(rule, dev, train)
    if rule.pick == "kfold":
        text = (f"pick by {rule.repeats}x repeated {rule.folds}-fold over dev {dev} + train {n_train} "
                "(no finalist's demo held out)")
    else:
        text = f"pick by dev {dev}"
    if rule.keep_seed_alpha is not None:
        text += f"; keep the seed unless beaten with p < {rule.keep_seed_alpha:g}"
    if rule.selector != "none":
        text += f"; per-input {rule.selector} selector learned on the finalists' scores, reported on test"
    counted = counted_examples(rule, finalists, dev, train)
    if counted:
        text += f"; {counted} of its scored examples, at most, come out of the example budget"
    return text


def search_examples(max_examples: int | None, counted: int) -> int | None:
    """The search's example limit when the final report's `counted` examples are kept back from `max_examples`."""
    if not counted or max_examples is None:
        return max_examples
    if counted >= max_examples:
        raise ConfigError(f"the final pick needs up to {counted} scored examples from the budget of "
                          f"{max_examples}, which leaves none for the search; raise budget.examples or "
                          "lower final.train_examples / final_top_k")
    return max_examples - counted


def train_pool(order: Sequence[str], finalists: Sequence[Candidate], n: int) -> tuple[str, ...]:
    """The first `n` train ids in the run's order that are no finalist's demo."""
    demos = {d for c in finalists for d in c.demos}
    return tuple([i for i in order if i not in demos][:n])


def folds(ids: Sequence[str], k: int, repeats: int, seed: int) -> list[list[tuple[str, ...]]]:
    """`repeats` partitions of `ids` into `k` held-out folds (fewer when there are fewer ids), each from
    its own shuffle of the sorted ids, so the folds depend on the run seed and the ids, never their order."""
    out = []
    for r in range(repeats):
        shuffled = sorted(ids)
        random.Random(f"{seed}:kfold:{r}").shuffle(shuffled)
        out.append([tuple(shuffled[f::k]) for f in range(min(k, len(shuffled)))])
    return out


def choose(rule: FinalConfig, finalists: Sequence[Candidate], seed: Candidate, dev_best: Candidate,
           scores: Mapping[str, Mapping[str, float]], pool: Sequence[str], run_seed: int
           ) -> tuple[Candidate, dict[str, Any]]:
    """The pick among `finalists` (all scored on every id of `pool`; the seed among them) and what the
    report says about it. `dev_best` is the dev rule's pick, made by the loop."""
    best = dev_best
    info: dict[str, Any] = {"rule": rule.pick, "examples": len(pool)}
    if rule.pick == "kfold":
        splits = folds(pool, rule.folds, rule.repeats, run_seed)
        stats = {c.id: _fold_stats(scores[c.id], splits) for c in finalists}
        # Ties go to the seed, then to the better dev rank (the finalists' order).
        best = max(finalists, key=lambda c: (round(stats[c.id][0], 12), c.id == seed.id))
        info.update(folds=rule.folds, repeats=rule.repeats,
                    finalists={cid: {"mean": round(m, 6), "sd": round(sd, 6)} for cid, (m, sd) in stats.items()})
    if rule.keep_seed_alpha is not None and best.id == seed.id:
        info["keep_seed"] = {"alpha": rule.keep_seed_alpha, "candidate": seed.id, "kept": True}
    elif rule.keep_seed_alpha is not None:
        ids = list(pool)
        sig = compare_paired([scores[seed.id][i] for i in ids], [scores[best.id][i] for i in ids])
        kept = not (sig["diff"] > 0 and sig["p"] < rule.keep_seed_alpha)
        info["keep_seed"] = {"alpha": rule.keep_seed_alpha, "candidate": best.id, "diff": round(sig["diff"], 6),
                             "p": sig["p"], "test": sig["test"], "kept": kept}
        if kept:
            best = seed
    return best, info


def _fold_stats(scores: Mapping[str, float], splits: list[list[tuple[str, ...]]]) -> tuple[float, float]:
    """Mean and standard deviation of the held-out fold means over every fold of every repeat."""
    means = [sum(scores[i] for i in fold) / len(fold) for repeat in splits for fold in repeat if fold]
    if not means:
        return math.nan, math.nan
    mean = sum(means) / len(means)
    sd = math.sqrt(sum((m - mean) ** 2 for m in means) / (len(means) - 1)) if len(means) > 1 else 0.0
    return mean, sd
