"""Run objectives: what the final report (and, with weights, a strategy) ranks prompts by.

Not to be confused with `ScoreRequest.objective` ("task" / "loss"), which says how one evaluation is
scored. Run objectives are measured per candidate from what the loop already records:

  task           mean task metric on the split (dev)                      higher is better
  prompt_tokens  tokens of the prompt (system prompt, instruction, demos:  lower is better
                 what stands where the template has {prompt})
  target_tokens  tokens the target reads and writes per example: the      lower is better
                 template rendered with the prompt and each scored
                 example, plus the output the target gave
  usd            USD per example from the evaluations' Usage, over the    lower is better
                 examples that reached the model (cache hits cost
                 nothing and are left out); unknown (NaN) when every
                 result came from the cache

Tokens are counted with the target backend's `count_tokens` when it has one ("tokenizer"), else as
whitespace-separated words ("whitespace"); summary.json says which. target_tokens is counted rather
than read from Usage because a cache hit reports no tokens, so a rerun with a warm cache would differ.

Choosing among the finalists (all scored on the whole dev split), `RunConfig.objectives` and
`RunConfig.objective_weights` decide:

  objectives = ["task"] (the default)   the best task score, as always
  several, no weights                   the Pareto front of the finalists; the chosen prompt is the
                                        front member with the best task score (so it never has a lower
                                        dev score than the default rule picks: the best task score is
                                        always on the front)
  several, with weights                 the largest scalarization
                                            w_task * task - sum(w_i * value_i)  over the other objectives
                                        (w_task defaults to 1, any other missing weight to 0), in raw
                                        units: prompt_tokens=0.001 trades 1000 prompt tokens for 1.0
                                        of task score. Unknown (NaN) values rank last.

With weights, population strategies (`blocks.population`) and the selection module
(`blocks.selection`) rank by the same scalarization (their own fitness standing in for `task`), through
`Context.objectives`; without weights they rank by their fitness as before.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Mapping, Sequence

from promptopt.types import Candidate, Evaluation, Example

# name -> +1 (higher is better) or -1 (lower is better)
DIRECTIONS: dict[str, int] = {"task": 1, "prompt_tokens": -1, "target_tokens": -1, "usd": -1}
NAMES: tuple[str, ...] = tuple(DIRECTIONS)


def check_objectives(names: Sequence[str]) -> list[str]:
    """The objective names, validated: known, no repeats, "task" among them. ValueError otherwise."""
    names = [str(n).strip() for n in names]
    unknown = [n for n in names if n not in DIRECTIONS]
    if unknown:
        raise ValueError(f"unknown objective {unknown[0]!r}; choose from {', '.join(NAMES)}")
    if len(set(names)) != len(names):
        raise ValueError(f"an objective is named twice in {','.join(names)}")
    if "task" not in names:
        raise ValueError("the objectives must include task (the task metric), e.g. task,prompt_tokens")
    return names


def check_weights(weights: Mapping[str, float], names: Sequence[str]) -> None:
    """Weights name chosen objectives only and are not negative. ValueError otherwise."""
    for key, w in weights.items():
        if key not in names:
            raise ValueError(f"objective_weights.{key}: {key!r} is not among the objectives "
                             f"({','.join(names)}); add it with --objectives")
        if not isinstance(w, (int, float)) or isinstance(w, bool) or not math.isfinite(w) or w < 0:
            raise ValueError(f"objective_weights.{key} must be a finite number >= 0, not {w!r}")


def _key(v: float, sign: int) -> float:
    """A value to maximize; NaN (unknown) is the worst."""
    return -math.inf if math.isnan(v) else sign * v


def dominates(a: Sequence[float], b: Sequence[float], signs: Sequence[int]) -> bool:
    """a is at least as good as b on every objective and better on one."""
    ka = [_key(x, s) for x, s in zip(a, signs)]
    kb = [_key(x, s) for x, s in zip(b, signs)]
    return all(x >= y for x, y in zip(ka, kb)) and any(x > y for x, y in zip(ka, kb))


def non_dominated_sort(points: Sequence[Sequence[float]], signs: Sequence[int]) -> list[list[int]]:
    """Indices of `points` in fronts (NSGA-II, Deb et al. 2002): front 0 is dominated by none, front 1
    by front 0 only, and so on. Each front keeps the input order; equal points share a front."""
    n = len(points)
    beaten_by = [[j for j in range(n) if j != i and dominates(points[j], points[i], signs)] for i in range(n)]
    left, fronts = set(range(n)), []
    while left:
        front = [i for i in sorted(left) if not any(j in left for j in beaten_by[i])]
        fronts.append(front)
        left -= set(front)
    return fronts


def pareto_front(points: Sequence[Sequence[float]], signs: Sequence[int]) -> list[int]:
    return non_dominated_sort(points, signs)[0] if points else []


class Measurer:
    """Measures candidates on the run's objectives and applies the choice rule; built by the loop.

    `prompt_text(candidate)` is what stands where the template has {prompt}; `render(prompt, example)`
    the full template; `example(id)` a train/dev example; `count` the target's token counter or None."""

    def __init__(self, names: Sequence[str], weights: Mapping[str, float] | None, *,
                 prompt_text: Callable[[Candidate], str], render: Callable[[str, Example], str],
                 example: Callable[[str], Example], count: Callable[[str], int] | None = None):
        self.names = check_objectives(names)
        self.weights = dict(weights or {})
        check_weights(self.weights, self.names)
        self.signs = [DIRECTIONS[n] for n in self.names]
        self._prompt_text, self._render, self._example = prompt_text, render, example
        self._count = count
        self.counter = "tokenizer" if count is not None else "whitespace"
        self._usd: dict[str, list[float]] = {}  # candidate id -> [usd, live examples]
        self._memo: dict[tuple[str, str, int], dict[str, float]] = {}

    @property
    def weighted(self) -> bool:
        """True when a scalarization was stated: strategies then rank by it."""
        return bool(self.weights)

    def tokens(self, text: str) -> int:
        return self._count(text) if self._count is not None else len(text.split())

    def record(self, ev: Evaluation) -> None:
        """Take note of one evaluation's spend (the loop calls this for every evaluation)."""
        if ev.state != "complete" or not ev.results or ev.split == "test" or ev.objective != "task":
            return
        u = ev.usage
        requests = u.calls + u.cache_hits
        if u.calls <= 0 or requests <= 0:
            return
        acc = self._usd.setdefault(ev.candidate_id, [0.0, 0.0])
        acc[0] += u.usd
        acc[1] += len(ev.results) * u.calls / requests  # the share of examples that reached the model

    def measure(self, cand: Candidate, history: Any, split: str = "dev") -> dict[str, float]:
        """The candidate's value on each objective (NaN when unknown)."""
        results = history.results(cand.id, split)
        key = (cand.id, split, len(results))
        if key in self._memo:
            return dict(self._memo[key])
        prompt = self._prompt_text(cand)
        out: dict[str, float] = {}
        for name in self.names:
            if name == "task":
                out[name] = history.score(cand.id, split)
            elif name == "prompt_tokens":
                out[name] = float(self.tokens(prompt))
            elif name == "target_tokens":
                counts = [self.tokens(self._render(prompt, self._example(i))) + self.tokens(r.output)
                          for i, r in results.items()]
                out[name] = sum(counts) / len(counts) if counts else math.nan
            elif name == "usd":
                usd, n = self._usd.get(cand.id, (0.0, 0.0))
                out[name] = usd / n if n > 0 else math.nan
        self._memo[key] = out
        return dict(out)

    def scalar(self, values: Mapping[str, float]) -> float:
        """w_task * task - sum(w_i * value_i); NaN anywhere it uses makes it -inf."""
        total = self.weights.get("task", 1.0) * values["task"]
        for name in self.names:
            if name != "task" and self.weights.get(name, 0.0):
                total -= self.weights[name] * values[name]
        return -math.inf if math.isnan(total) else total

    def scalarize(self, fitness: float, cand: Candidate, history: Any, split: str = "dev") -> float:
        """A strategy's own fitness standing in for `task` in the scalarization (NaN stays NaN)."""
        if math.isnan(fitness) or not self.weighted:
            return fitness
        values = {**self.measure(cand, history, split), "task": fitness}
        out = self.scalar(values)
        return math.nan if out == -math.inf else out

    def choose(self, finalists: Sequence[Candidate], history: Any,
               default: Candidate) -> tuple[Candidate, dict[str, Any]]:
        """The chosen finalist by the stated rule, and the front for summary.json."""
        values = [self.measure(c, history) for c in finalists]
        points = [[v[n] for n in self.names] for v in values]
        fronts = non_dominated_sort(points, self.signs)
        rank = {i: r for r, f in enumerate(fronts) for i in f}
        if self.weighted:
            rule = "scalarization: " + " - ".join(
                [f"{self.weights.get('task', 1.0):g}*task"]
                + [f"{self.weights[n]:g}*{n}" for n in self.names if n != "task" and self.weights.get(n)])
            pick = max(range(len(finalists)), key=lambda i: self.scalar(values[i]))
        else:
            rule = "pareto front of the finalists on full dev; the front member with the best task score"
            front = fronts[0] if fronts else []
            pick = max(front, key=lambda i: _key(values[i]["task"], 1)) if front else None
        chosen = finalists[pick] if pick is not None else default

        def num(x: float) -> float | None:
            return None if math.isnan(x) else round(x, 6)
        rows = []
        for i, c in enumerate(finalists):
            row: dict[str, Any] = {"id": c.id, "text": c.text, "rank": rank.get(i, 0), "front": rank.get(i) == 0,
                                   **{n: num(values[i][n]) for n in self.names}}
            if self.weighted:
                row["scalar"] = num(self.scalar(values[i])) if self.scalar(values[i]) != -math.inf else None
            rows.append(row)
        info = {"names": list(self.names),
                "directions": {n: "max" if DIRECTIONS[n] > 0 else "min" for n in self.names},
                "weights": dict(self.weights), "rule": rule, "token_counter": self.counter,
                "split": "dev", "chosen": chosen.id, "points": rows,
                "front": [rows[i]["id"] for i in (fronts[0] if fronts else [])]}
        return chosen, info
