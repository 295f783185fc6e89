"""Population bookkeeping shared by the evolutionary and local-search strategies.

`Member` is a scored candidate; `roulette`, `tournament` and `top` are the selection rules of
EvoPrompt and Plum; `IterativeSearch` is the ask/tell skeleton they all share: each iteration
proposes candidates, asks the loop to score only those not scored before, turns the results into
members (fitness from `promptopt.strategies.blocks.plum_score.Objective`) and hands them to the strategy's `update`.
With `racing` on (see `promptopt.strategies.blocks.selection`), the new candidates are scored block by
block against the best member so far, and those dropped from the race are marked `dropped`.
Everything is a function of ctx.rng and the results, so replay-based resume rebuilds the state.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass, replace
from typing import Sequence

from pydantic import Field

from promptopt.strategies.blocks.plum_score import PLUM_ENTROPY_WEIGHT, Objective, ObjectiveName
from promptopt.strategies.blocks.selection import Racing, RacingConfig, check_racing
from promptopt.strategy import Context, ScoreRequest, StrategyConfig
from promptopt.types import Candidate, Evaluation


@dataclass(frozen=True)
class Member:
    """A candidate with its fitness (NaN until scored) and, for phrase edits, the phrases deleted
    along its lineage (Plum's "add back" pool)."""

    candidate: Candidate
    fitness: float = math.nan
    deleted: tuple[str, ...] = ()
    dropped: bool = False  # dropped from a race: scored on fewer examples, never selected

    @property
    def id(self) -> str:
        return self.candidate.id

    @property
    def text(self) -> str:
        return self.candidate.text

    @property
    def rank_key(self) -> float:
        """Sort key: a failed (NaN) or raced-out member ranks below everything."""
        return -math.inf if math.isnan(self.fitness) or self.dropped else self.fitness


def best(members: Sequence[Member]) -> Member:
    """The fittest member; ties go to the first."""
    return max(members, key=lambda m: m.rank_key)


def top(members: Sequence[Member], n: int) -> list[Member]:
    """The n fittest distinct members (first occurrence of a text wins; ties keep order)."""
    seen: dict[str, Member] = {}
    for m in members:
        seen.setdefault(m.id, m)
    return sorted(seen.values(), key=lambda m: -m.rank_key)[:n]


def roulette(rng: random.Random, members: Sequence[Member], k: int) -> list[Member]:
    """k draws with replacement, probability proportional to fitness (EvoPrompt's wheel).
    Negative or NaN fitness (or a raced-out member) weighs nothing; if nothing weighs, draws are uniform."""
    weights = [max(m.rank_key, 0.0) for m in members]  # NaN or raced out: -inf, so 0
    if sum(weights) <= 0:
        weights = [1.0] * len(members)
    return rng.choices(list(members), weights=weights, k=k)


def tournament(rng: random.Random, members: Sequence[Member], k: int) -> Member:
    """The best of k uniform draws with replacement (Plum's GA parent selection)."""
    return best([rng.choice(members) for _ in range(k)])


class SearchConfig(StrategyConfig):
    """Settings every population or local search shares."""

    eval_examples: int | None = Field(100, ge=1, description="dev examples each candidate is scored on "
                                      "(the same ones for every candidate; null: the whole dev split)")
    objective: ObjectiveName = Field("plum", description="plum: balanced accuracy + weighted label entropy "
                                     "(classification); likelihood: mean gold-option log-probability; "
                                     "task: the task metric")
    entropy_weight: float = Field(PLUM_ENTROPY_WEIGHT, ge=0.0, description="weight of the label entropy (plum)")
    racing: RacingConfig = Field(default_factory=RacingConfig, description="score new candidates in blocks and "
                                 "drop the clearly worse early (blocks.selection)")


class IterativeSearch:
    """The ask/tell skeleton. Subclasses implement `initial`, `start`, `propose`, `update` and
    `finished`; they never build ScoreRequests or read scores themselves."""

    config: SearchConfig

    def __init__(self, config: SearchConfig):
        self.config = config
        self.best: Member | None = None  # best ever, by fitness
        self.iteration = 0  # proposals made so far (the seed round is not one)
        self.stale = 0  # iterations in a row that did not beat the best (Plum's patience counter)
        self._started = False
        self._pending: list[Member] | None = None
        self._objective: Objective | None = None
        self._race: Racing | None = None

    # -- hooks --
    def initial(self, ctx: Context) -> list[Member]:
        """What to score first: the task's seed prompts."""
        return [Member(c) for c in ctx.seed_candidates()]

    def start(self, ctx: Context, scored: list[Member]) -> None:
        raise NotImplementedError

    def propose(self, ctx: Context) -> list[Member]:
        """The next iteration's proposals (may include texts scored before: they cost nothing)."""
        raise NotImplementedError

    def update(self, ctx: Context, scored: list[Member]) -> None:
        raise NotImplementedError

    def finished(self, ctx: Context) -> bool:
        raise NotImplementedError

    # -- the protocol --
    def check_task(self, task) -> None:
        check_racing(self.config.racing, len(task.split("dev")))

    def ask(self, ctx: Context) -> list[ScoreRequest]:
        if self._race is not None:
            reqs = self._race.requests()
            if reqs:
                return reqs
            race, self._race = self._race, None
            proposals, self._pending = self._pending or [], None
            dropped = race.dropped - {race.incumbent}  # the incumbent keeps its full score
            self._absorb(ctx, [replace(m, dropped=True) if m.id in dropped else m for m in proposals])
        while True:
            if not self._started:
                proposals = self.initial(ctx)
            elif self.finished(ctx):
                return []
            else:
                self.iteration += 1
                proposals = self.propose(ctx)
            fresh = {m.id: m.candidate for m in proposals if m.id not in ctx.history}
            room = self._room(ctx)
            if 0 < room < len(fresh):
                # Fewer candidates, each on its full evaluation, rather than the last one on part of it.
                fresh = dict(list(fresh.items())[:room])
                proposals = [m for m in proposals if m.id in fresh or m.id in ctx.history]
            if fresh:
                self._pending = proposals
                if self.config.racing.enabled:
                    return self._start_race(ctx, list(fresh.values()))
                return [ScoreRequest(c, "dev", n=self.config.eval_examples) for c in fresh.values()]
            self._absorb(ctx, proposals)  # nothing new to score: this iteration is already decided

    def tell(self, ctx: Context, evals: Sequence[Evaluation]) -> None:
        if self._race is not None:
            self._race.update(evals)  # the race decides in the next ask, from the history
            return
        if self._pending is not None:
            proposals, self._pending = self._pending, None
            self._absorb(ctx, proposals)

    def _start_race(self, ctx: Context, fresh: list[Candidate]) -> list[ScoreRequest]:
        """Race the new candidates against the best member so far (which costs nothing more)."""
        racing = self.config.racing
        dev = len(ctx.task.split("dev"))
        self._race = racing.make(target=racing.target(self.config.eval_examples, dev))
        self._race.stop_at_keep = False  # every survivor gets its full evaluation
        incumbent = [self.best.candidate] if self.best is not None and self.best.id not in {c.id for c in fresh} else []
        self._race.incumbent = incumbent[0].id if incumbent else ""
        self._race.start(ctx, incumbent + fresh, budget=1 << 60, keep=1)
        return self._race.requests()

    def _room(self, ctx: Context) -> int:
        """How many new candidates the example budget still pays for (a large number if unlimited)."""
        dev = len(ctx.task.split("dev"))
        return ctx.budget.room(min(self.config.eval_examples or dev, dev))

    def fitness(self, ctx: Context, candidate_id: str) -> float:
        if self._objective is None:
            self._objective = Objective(ctx.task, self.config.objective, self.config.entropy_weight)
        value = self._objective(ctx.history.results(candidate_id, "dev"))
        if ctx.objectives is not None:  # objective_weights set: rank by the run's scalarization (objectives.py)
            value = ctx.objectives.scalarize(value, ctx.history.candidate(candidate_id), ctx.history)
        return value

    def _absorb(self, ctx: Context, proposals: list[Member]) -> None:
        scored = [replace(m, fitness=self.fitness(ctx, m.id)) for m in proposals]
        step_best = best(scored) if scored else None
        improved = step_best is not None and not math.isnan(step_best.fitness) and not step_best.dropped and (
            self.best is None or step_best.fitness > self.best.fitness)
        if improved:
            self.best = step_best
        self.stale = 0 if improved else self.stale + 1
        if self._started:
            self.update(ctx, scored)
        else:
            self._started = True
            self.start(ctx, scored)

