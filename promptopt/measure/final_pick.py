"""How the final report chooses among the finalists (`final.*` in RunConfig; issue #31).

- `pick=dev` (as always): the finalist with the best score on the whole dev split.
- `pick=kfold`: repeated k-fold over a pool of dev and train examples, each finalist refit on every fold's
  training part and scored on the held-out fold; the pick is the best mean held-out score. Refit means the
  demos come from the training folds only: a fixed demo that lies in the held-out fold is replaced by a
  train example of the same label drawn from the training part (the label-balanced draw that `fewshot`
  and `--demos` use; the other demos keep their places), and a retrieval policy's index leaves the held-out
  fold's train examples out. A finalist with nothing held out (no demos, or none in that fold) is scored
  as it is. The refit prompts are candidates of their own (origin `kfold.refit`), logged and cached like
  any other, so a resume replays them. The fold means give each finalist's spread (`sd`).
- `keep_seed_alpha`: the seed prompt stays unless the pick beats it on the pick's examples with a paired
  p < alpha (promptopt.measure.significance: McNemar for 0/1 scores, else a paired bootstrap); with
  pick=kfold, on the first repeat's held-out scores (one per pool example).

The loop scores; this module plans (what it costs, what the budget keeps back for it) and decides.
What the final report scores beyond the dev split's finalists (the pool's train examples and the refit
prompts on the held-out folds, at most every pool example once per repeat) and, with a selector, the
finalists' dev scoring (the selector learns from it) is paid from the example budget: the search gets the
budget less that amount. The test split is never in the pool."""
from __future__ import annotations

import math
import random
from dataclasses import replace
from typing import Any, Literal, Mapping, Sequence

from pydantic import BaseModel, ConfigDict, Field

from promptopt.errors import ConfigError
from promptopt.measure.significance import compare_paired
from promptopt.types import Candidate, Example


class FinalConfig(BaseModel):
    """How the final report chooses among the finalists (`final.*` in RunConfig; this module and selector.py)."""

    model_config = ConfigDict(extra="forbid")

    pick: Literal["dev", "kfold"] = "dev"  # kfold: repeated k-fold over dev plus train examples
    folds: int = Field(5, ge=2, strict=True)
    repeats: int = Field(3, ge=1, strict=True)
    # Train examples the k-fold pool adds to dev; None: as many as dev has.
    train_examples: int | None = Field(None, ge=1, strict=True)
    # Keep the seed prompt unless the pick beats it on the pick's examples with a paired p < alpha.
    keep_seed_alpha: float | None = Field(None, gt=0, lt=1)
    selector: Literal["none", "centroid", "logistic"] = "none"  # per-input choice among the finalists
    # The selector routes only if, learned on all but one of `folds` folds of its examples, it beats the
    # pick on the held-out one (selector.held_out_check); off: it always routes.
    selector_check: bool = True

    @property
    def default(self) -> bool:
        return self == FinalConfig()


def shortlist(scored: Mapping[str, tuple[float, Sequence[float]]], k: int) -> list[str]:
    """The `k` candidates to score on the whole dev split as finalists, from each one's dev score and example
    scores so far: best first by the score less one standard error, sqrt(v / n), with v the variance of
    example scores within candidates (pooled; where that is 0, over all example scores; with no candidate on
    two examples or more, the raw order). A raw mean ranks a candidate right on the 1 dev example that
    successive halving gave it above one right on 27 of 32, even when every candidate got that first example
    right. Equal n keeps the raw order, equal bounds the order given; a candidate without a finite score is
    left out. For a corpus metric (macro F1, ...) the score is the metric and v comes from the example
    scores: an approximation."""
    ids = [c for c in scored if scored[c][1] and math.isfinite(scored[c][0])]
    examples = [scored[c][1] for c in ids]
    pairs = sum(len(xs) - 1 for xs in examples)
    if not pairs:
        return sorted(ids, key=lambda c: -scored[c][0])[:k]
    v = sum(_squares(xs) for xs in examples) / pairs
    if v <= 0:  # every candidate scored alike on all its examples: the spread over all example scores instead
        v = _squares([x for xs in examples for x in xs]) / sum(len(xs) for xs in examples)
    return sorted(ids, key=lambda c: -(scored[c][0] - math.sqrt(max(v, 0.0) / len(scored[c][1]))))[:k]


def _squares(xs: Sequence[float]) -> float:
    """Sum of squared deviations from the mean."""
    return sum(x * x for x in xs) - sum(xs) ** 2 / len(xs)


def pool_train_size(rule: FinalConfig, dev: int, train: int) -> int:
    """Train examples the k-fold pool adds to dev, at most (0 unless pick=kfold)."""
    if rule.pick != "kfold":
        return 0
    return min(train, rule.train_examples if rule.train_examples is not None else dev)


def counted_examples(rule: FinalConfig, finalists: int, dev: int, train: int) -> int:
    """Scored examples of the final report, at most, that the example budget pays for: with pick=kfold each
    finalist on the pool's train examples, and its refit prompts on every held-out fold of every repeat."""
    n_train = pool_train_size(rule, dev, train)
    refits = rule.repeats * (dev + n_train) if rule.pick == "kfold" else 0
    return finalists * (n_train + refits + (dev if rule.selector != "none" else 0))


def scored_examples(rule: FinalConfig, finalists: int, dev: int, train: int) -> int:
    """Scored examples of the final pick before the test split, at most: the finalists on the whole dev split,
    and with pick=kfold on the pool's train examples and the refit prompts on every held-out fold."""
    n_train = pool_train_size(rule, dev, train)
    return finalists * (dev + n_train + (rule.repeats * (dev + n_train) if rule.pick == "kfold" else 0))


def describe(rule: FinalConfig, finalists: int, dev: int, train: int) -> str:
    """The rule in words, for --dry-run."""
    n_train = pool_train_size(rule, dev, train)
    if rule.pick == "kfold":
        text = (f"pick by {rule.repeats}x repeated {rule.folds}-fold over dev {dev} + train {n_train}, "
                "each finalist's demos refit on the training folds")
    else:
        text = f"pick by dev {dev}"
    if rule.keep_seed_alpha is not None:
        text += f"; keep the seed unless beaten with p < {rule.keep_seed_alpha:g}"
    if rule.selector != "none":
        text += f"; per-input {rule.selector} selector learned on the finalists' scores, reported on test"
        if rule.selector_check:
            text += f" (it routes only if it beats the pick held out, over {rule.folds} folds)"
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
                          "lower final.train_examples, final.repeats or final_top_k")
    return max_examples - counted


def train_pool(order: Sequence[str], n: int) -> tuple[str, ...]:
    """The first `n` train ids in the run's order (demos included: a fold that holds one out refits it)."""
    return tuple(order[:n])


def refit(cand: Candidate, held_out: Sequence[str], train: Sequence[Example], key: str) -> Candidate:
    """`cand` refit on a fold's training part: the train split less the held-out ids. Itself when none of
    its demos is held out (and always for a prompt without demos). `key` seeds the redraw."""
    held = set(held_out)
    rng = random.Random(key)
    if cand.retrieval is not None:
        policy = cand.retrieval
        gone = tuple(sorted(held.intersection(ex.id for ex in train) | set(policy.exclude)))
        if gone == policy.exclude:
            return cand
        shared = tuple(d for _, d, _ in _redraw(policy.shared, set(gone), train, rng))
        return Candidate(cand.text, (cand.id,), "kfold.refit", {"refit_of": cand.id}, system=cand.system,
                         retrieval=replace(policy, shared=shared, exclude=gone))
    if not held.intersection(cand.demos):
        return cand
    kept = _redraw(cand.demos, held, train, rng)
    demos = tuple(d for _, d, _ in kept)
    if cand.components:  # a program's candidate keeps its components
        return Candidate.of_components(cand.components, origin="kfold.refit", parents=(cand.id,),
                                       meta={"refit_of": cand.id}, demos=demos)
    answers = tuple(cand.demo_answers[n] if new is None else new for n, _, new in kept) if cand.demo_answers else ()
    return Candidate(cand.text, (cand.id,), "kfold.refit", {"refit_of": cand.id}, demos, cand.system, answers)


def _redraw(demos: Sequence[str], held: set[str], train: Sequence[Example],
            rng: random.Random) -> list[tuple[int, str, str | None]]:
    """`demos` with each held-out one replaced by a train example of its label from the training part
    (the others keep their places), as (position in `demos`, id, the new example's target or None when
    kept); a demo that the training part is too small to replace is dropped."""
    taken = set(demos)
    label = {ex.id: ex.label for ex in train}
    out: list[tuple[int, str, str | None]] = []
    for n, d in enumerate(demos):
        if d not in held:
            out.append((n, d, None))
            continue
        pool = [ex for ex in train if ex.id not in held and ex.id not in taken]
        same = [ex for ex in pool if ex.label == label.get(d)] or pool
        if same:
            pick = rng.choice(same)
            taken.add(pick.id)
            out.append((n, pick.id, pick.target))
    return out


def refits(finalists: Sequence[Candidate], splits: list[list[tuple[str, ...]]], train: Sequence[Example],
           run_seed: int) -> dict[tuple[str, int, int], Candidate]:
    """Each finalist's prompt for each (repeat, fold): the finalist refit on that fold's training part."""
    return {(c.id, r, f): refit(c, fold, train, f"{run_seed}:refit:{c.id}:{r}:{f}")
            for c in finalists for r, repeat in enumerate(splits) for f, fold in enumerate(repeat)}


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
           scores: Mapping[str, Mapping[str, float]], pool: Sequence[str], run_seed: int,
           held_out: Mapping[str, Sequence[Mapping[str, float]]] | None = None) -> tuple[Candidate, dict[str, Any]]:
    """The pick among `finalists` (the seed among them) and what the report says about it. `scores`: each
    finalist's score on every id of `pool` (the keep-seed test pairs them); with pick=kfold, `held_out`
    gives, per repeat, each pool id's score under the finalist refit on the fold that held it out (None: no
    finalist needed a refit, so `scores` serve every repeat).
    `dev_best` is the dev rule's pick, made by the loop."""
    best = dev_best
    info: dict[str, Any] = {"rule": rule.pick, "examples": len(pool)}
    if rule.pick == "kfold":
        splits = folds(pool, rule.folds, rule.repeats, run_seed)
        if held_out is None:  # nothing refit: a finalist's scores are its held-out scores in every repeat
            held_out = {c.id: [scores[c.id]] * len(splits) for c in finalists}
        stats = {c.id: _fold_stats(held_out[c.id], splits) for c in finalists}
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


def _fold_stats(held_out: Sequence[Mapping[str, float]], splits: list[list[tuple[str, ...]]]
                ) -> tuple[float, float]:
    """Mean and standard deviation of the held-out fold means over every fold of every repeat."""
    means = [sum(held_out[r][i] for i in fold) / len(fold) for r, repeat in enumerate(splits) for fold in repeat
             if fold]
    if not means:
        return math.nan, math.nan
    mean = sum(means) / len(means)
    sd = math.sqrt(sum((m - mean) ** 2 for m in means) / (len(means) - 1)) if len(means) > 1 else 0.0
    return mean, sd
