"""PromptQuine (Wang et al., ICML 2025, "Evolving Prompts In-Context"): LLM-free evolutionary pruning
of an in-context prompt's tokens, with its TAPruning baseline.

The prompt is the seed instruction followed by `k` train demos rendered in the task's query format.
Pruning removes tokens anywhere in that text, so the result is a single free-text prefix (often
"gibberish" that scores better); it is logged as the candidate's instruction, with the demo ids it
came from in `meta`.
- `mode="ssga"` (the paper's steady-state GA): a population starts from the full prompt and random
  single-token prunings of it; each step breeds `offspring` children, each a tournament-picked
  parent with 1..`max_prune` random tokens removed, scores them on dev, and a child replaces the worst
  member when it beats it. Duplicates are never re-scored (the code keeps a tabu list).
- `mode="ta"`: TAPruning, a single pass over the tokens in a fixed
  seeded order that removes a token whenever the pruned prompt keeps at least `threshold` of the
  current score.
Code defaults: population 30, reproduction 50, min prompt length 15 tokens, TAPruning threshold 0.96,
fixed pruning order, 1-shot ICL prompts for classification. Scaled for CPU: population 8, 8 offspring
a step, 4 demos, and tokens are whitespace-separated words (the code prunes model tokens).
"""
from __future__ import annotations

import math
from typing import Literal, Sequence

from pydantic import Field

from promptopt.task.demos import sample_demo_ids
from promptopt.errors import ConfigError
from promptopt.registry import register_strategy
from promptopt.strategy import Context, ScoreRequest, StrategyConfig
from promptopt.task import Task
from promptopt.types import Candidate, Evaluation


class PromptQuineConfig(StrategyConfig):
    mode: Literal["ssga", "ta"] = Field("ssga", description="ssga: steady-state GA (PromptQuine); ta: TAPruning")
    k: int = Field(4, ge=0, description="demos in the prompt that is pruned (ignored when --demos seeds them)")
    population: int = Field(8, ge=2, description="population size (code default: 30)")
    offspring: int = Field(8, ge=1, description="children bred per step (code's reproduction size: 50)")
    max_prune: int = Field(3, ge=1, description="tokens one mutation removes at most")
    min_tokens: int = Field(15, ge=1, description="never prune below this many tokens (code default: 15)")
    threshold: float = Field(0.96, gt=0, le=1.0, description="TAPruning keeps a removal at >= this share of the score")
    steps: int = Field(1000, ge=1, description="search steps at most (the budget usually ends it first)")


def _words(text: str) -> list[str]:
    """Tokens with their separators, so joining them restores the text (newlines survive pruning)."""
    out, cur = [], ""
    for ch in text:
        if ch.isspace() and cur and not cur[-1].isspace():
            out.append(cur)
            cur = ""
        cur += ch
    if cur:
        out.append(cur)
    return out


@register_strategy("promptquine")
class PromptQuine:
    Config = PromptQuineConfig
    needs_optimizer = False

    def __init__(self, config: PromptQuineConfig):
        self.config = config
        self.tokens: list[str] = []
        self.population: list[tuple[frozenset[int], Candidate]] = []  # (removed token positions, candidate)
        self.pending: list[tuple[frozenset[int], Candidate]] = []
        self.tried: set[frozenset[int]] = set()
        self.base: Candidate | None = None
        self.order: list[int] = []  # TAPruning's fixed order
        self.cursor = 0
        self.current: tuple[frozenset[int], Candidate] | None = None
        self.step = 0

    def check_task(self, task: Task) -> None:
        if self.config.k and not task.split("train"):
            raise ConfigError(f"promptquine: task {task.name} has no train split to draw demos from")
        if self.config.k > len(task.split("train")):
            raise ConfigError(f"promptquine: k={self.config.k} is larger than the train pool "
                              f"({len(task.split('train'))} examples)")

    def _start(self, ctx: Context) -> Candidate:
        seed = ctx.seed_candidates()[0]
        demos = seed.demos or (sample_demo_ids(ctx.task.split("train"), self.config.k, ctx.rng) if self.config.k else ())
        by_id = {ex.id: ex for ex in ctx.task.split("train")}
        text = ctx.task.prompt_text(seed.text, [by_id[d] for d in demos])
        self.tokens = _words(text)
        self.base = Candidate(text, origin="promptquine.icl", meta={"demo_ids": list(demos), "from": seed.text})
        self.order = list(range(len(self.tokens)))
        ctx.rng.shuffle(self.order)
        return self.base

    def _prune(self, removed: frozenset[int], parent: Candidate, origin: str) -> Candidate | None:
        if removed in self.tried or len(self.tokens) - len(removed) < self.config.min_tokens:
            return None
        self.tried.add(removed)
        text = "".join(t for i, t in enumerate(self.tokens) if i not in removed).strip()
        if not text:
            return None
        assert self.base is not None
        return Candidate(text, parents=(parent.id,), origin=origin,
                         meta={"pruned": len(removed), "demo_ids": self.base.meta["demo_ids"]})

    def _mutate(self, ctx: Context, removed: frozenset[int], parent: Candidate) -> tuple[frozenset[int], Candidate] | None:
        for _ in range(20):  # a few draws to find an untried pruning
            alive = [i for i in range(len(self.tokens)) if i not in removed]
            n = ctx.rng.randint(1, self.config.max_prune)
            if len(alive) - n < self.config.min_tokens:
                return None
            child = removed | frozenset(ctx.rng.sample(alive, n))
            cand = self._prune(child, parent, "promptquine.prune")
            if cand is not None:
                return child, cand
        return None

    def ask(self, ctx: Context) -> Sequence[Candidate | ScoreRequest]:
        self.step += 1
        if self.step > self.config.steps:
            return []
        if self.base is None:
            base = self._start(ctx)
            self.tried.add(frozenset())
            self.pending = [(frozenset(), base)]
            if self.config.mode == "ssga":
                for _ in range(self.config.population - 1):
                    child = self._mutate(ctx, frozenset(), base)
                    if child:
                        self.pending.append(child)
            return self._requests(ctx)
        self.pending = []
        if self.config.mode == "ta" and self.current is None:  # the full prompt's evaluation failed: again
            self.pending = [(frozenset(), self.base)]
        elif self.config.mode == "ta":
            while self.cursor < len(self.order) and not self.pending:
                i = self.order[self.cursor]
                self.cursor += 1
                child = self.current[0] | {i}
                cand = self._prune(frozenset(child), self.current[1], "promptquine.ta")
                if cand is not None:
                    self.pending = [(frozenset(child), cand)]
        elif self.population:
            for _ in range(self.config.offspring):
                parent = self._tournament(ctx)
                child = self._mutate(ctx, *parent)
                if child:
                    self.pending.append(child)
        return self._requests(ctx)

    def _requests(self, ctx: Context) -> list[ScoreRequest]:
        # Only the prompts the budget scores on all of dev: a fitness over part of it is not comparable.
        self.pending = self.pending[: ctx.budget.room(len(ctx.task.split("dev")))]
        return [ScoreRequest(c, "dev") for _, c in self.pending]

    def _tournament(self, ctx: Context) -> tuple[frozenset[int], Candidate]:
        a, b = ctx.rng.sample(self.population, 2) if len(self.population) > 1 else (self.population[0],) * 2
        return a if self._fitness(ctx, a[1]) >= self._fitness(ctx, b[1]) else b

    @staticmethod
    def _fitness(ctx: Context, cand: Candidate) -> float:
        s = ctx.history.score(cand.id, "dev")
        return -math.inf if math.isnan(s) else s

    def tell(self, ctx: Context, evals: Sequence[Evaluation]) -> None:
        scored = [(m, ev) for m, ev in zip(self.pending, evals) if ev.state == "complete"]
        if self.config.mode == "ta":
            for member, ev in scored:
                if self.current is None or ev.score >= self.config.threshold * self._fitness(ctx, self.current[1]):
                    self.current = member
            return
        for member, _ in scored:
            if len(self.population) < self.config.population:
                self.population.append(member)
                continue
            worst = min(range(len(self.population)), key=lambda i: self._fitness(ctx, self.population[i][1]))
            if self._fitness(ctx, member[1]) > self._fitness(ctx, self.population[worst][1]):
                self.population[worst] = member
