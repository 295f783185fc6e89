"""Best-arm selection under a budget of scored examples, for any strategy that ranks candidates.

A selector is a small state machine that a strategy drives from ask/tell:

    selector = SelectionConfig(method="ucb").make()
    selector.start(ctx, candidates, budget=2048, keep=4)
    # ask:   reqs = selector.requests()       -> [] once it has decided (selector.done)
    # tell:  selector.update(evals)
    best_first = selector.ranking()

Pulling an arm means asking the loop to score that candidate on `n` more *unseen* examples of the
split, so a (prompt, example) pair is never paid twice and what an arm was scored on before (an
earlier round, the cache) counts for it. Counts and means are read from the run's History; the
selector's own state is a deterministic function of those results and uses no randomness, so
replaying a run's log (resume) rebuilds it exactly.

Methods (those ProTeGi compares; Pryzant et al. 2023, §2.2):
  bf     brute force: every arm on the same share of the budget
  ucb    UCB1 on per-example rewards: each arm pulled once, then rounds of the
         `prompts_per_round` arms with the largest mean + c·sqrt(ln T / n)
  ucb-e  the same with UCB-E's index mean + sqrt(c / n) (Audibert et al. 2010)
  sr     successive rejects (Audibert et al. 2010): phases that top every survivor up to n_k
         examples and reject the single worst, until `keep` remain
  sh     successive halving (Karnin et al. 2013): rounds that top survivors up and keep the
         better half, until `keep` remain
"""
from __future__ import annotations

import math
from typing import ClassVar, Iterator, Literal, Sequence

from pydantic import BaseModel, ConfigDict, Field

from promptopt.strategy import Context, History, ScoreRequest
from promptopt.types import Candidate, Evaluation

Method = Literal["ucb", "ucb-e", "sr", "sh", "bf"]


class SelectionConfig(BaseModel):
    """Settings of one selection step; strategies embed it (e.g. `--set apo.selection.method=sr`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    method: Method = Field("ucb", description="bf, ucb, ucb-e, sr (successive rejects), sh (successive halving)")
    split: Literal["dev", "train"] = Field("dev", description="split the arms are scored on")
    budget: int = Field(2048, ge=1, description="scored examples per selection step (ProTeGi: 32 x 8 x 8)")
    samples_per_eval: int = Field(32, ge=1, description="examples per pull (ucb, ucb-e)")
    prompts_per_round: int = Field(8, ge=1, description="arms pulled per round (ucb, ucb-e)")
    c: float = Field(1.0, gt=0, description="exploration constant of ucb and ucb-e")

    def make(self) -> "Selector":
        cls = SELECTORS[self.method]
        return cls(split=self.split, samples_per_eval=self.samples_per_eval,
                   prompts_per_round=self.prompts_per_round, c=self.c)


class Selector:
    """Base class: arm bookkeeping and budget-capped pulls. Subclasses write `_plan`, a generator
    that yields batches of requests; between two batches the loop has scored the previous one."""

    method: ClassVar[str] = ""

    def __init__(self, *, split: str = "dev", samples_per_eval: int = 32, prompts_per_round: int = 8,
                 c: float = 1.0):
        self.split = split
        self.samples_per_eval = samples_per_eval
        self.prompts_per_round = prompts_per_round
        self.c = c
        self.done = True  # until start()
        self.budget = 0
        self.keep = 1
        self.spent = 0  # examples requested so far in this selection step
        self._history = History()
        self._size = 0  # examples in the split
        self._arms: list[Candidate] = []
        self._failed: set[str] = set()
        self._eliminated: list[Candidate] = []  # worst first
        self._steps: Iterator[list[ScoreRequest]] = iter(())

    def start(self, ctx: Context, candidates: Sequence[Candidate], budget: int, keep: int = 1) -> None:
        """Begin selecting among `candidates` (duplicates by id dropped) with at most `budget` examples;
        `keep` is how many the caller will take from the ranking (sr/sh stop at that many)."""
        self._history = ctx.history
        self._size = len(ctx.task.split(self.split))
        arms: dict[str, Candidate] = {}
        for cand in candidates:
            arms.setdefault(cand.id, cand)  # a repeated prompt is one arm; its first listing wins
        self._arms = list(arms.values())
        self.budget = budget
        self.keep = max(1, keep)
        self.spent = 0
        self._failed = set()
        self._eliminated = []
        self._steps = self._plan_all()
        self.done = False

    def requests(self) -> list[ScoreRequest]:
        """The next batch to score; [] when the selection is over."""
        if self.done:
            return []
        for batch in self._steps:
            if batch:
                return batch
        self.done = True
        return []

    def update(self, evals: Sequence[Evaluation]) -> None:
        """Take note of the last batch's results (the means themselves are read from the history)."""
        for ev in evals:
            if ev.state == "failed":
                self._failed.add(ev.candidate_id)  # a broken arm is not pulled again

    def ranking(self) -> list[Candidate]:
        """All arms, best first: survivors by mean, then eliminated arms, last eliminated first."""
        return self._sorted(self._survivors()) + self._eliminated[::-1]

    # -- arm statistics, read from the run's history --
    def n(self, arm: Candidate) -> int:
        return self._history.n_scored(arm.id, self.split)

    def mean(self, arm: Candidate) -> float:
        return self._history.score(arm.id, self.split)

    def _room(self, arm: Candidate) -> int:
        """Unseen examples left for this arm; a failed arm gets none."""
        return 0 if arm.id in self._failed else self._size - self.n(arm)

    def _survivors(self) -> list[Candidate]:
        gone = {c.id for c in self._eliminated}
        return [a for a in self._arms if a.id not in gone]

    def _sorted(self, arms: Sequence[Candidate]) -> list[Candidate]:
        """Best mean first; never-scored arms last; ties go to the arm with more evidence, then to
        the earlier arm (callers list incumbents first)."""
        def key(a: Candidate) -> tuple[float, int]:
            m = self.mean(a)
            return (-math.inf if math.isnan(m) else m, self.n(a))
        return sorted(arms, key=key, reverse=True)  # stable: equal keys keep their order

    # -- building requests within the budget --
    def _pull(self, wants: Sequence[tuple[Candidate, int]]) -> list[ScoreRequest]:
        """Requests for `n` more examples of each arm, cut to the arm's unseen examples and the budget."""
        reqs = []
        for arm, want in wants:
            n = min(want, self._room(arm), self.budget - self.spent)
            if n > 0:
                reqs.append(ScoreRequest(arm, self.split, n=n))
                self.spent += n
        return reqs

    def _top_up(self, arms: Sequence[Candidate], target: int) -> list[ScoreRequest]:
        """Bring every arm to `target` examples in all."""
        return self._pull([(a, target - self.n(a)) for a in arms])

    def _plan_all(self) -> Iterator[list[ScoreRequest]]:
        if len(self._arms) <= self.keep:
            # Every arm survives anyway: one pull each, enough to rank them and no more.
            yield self._top_up(self._arms, self.samples_per_eval)
            return
        yield from self._plan()

    def _plan(self) -> Iterator[list[ScoreRequest]]:
        raise NotImplementedError


class BruteForce(Selector):
    """Every arm scored on the same number of examples: budget / arms."""

    method = "bf"

    def _plan(self) -> Iterator[list[ScoreRequest]]:
        yield self._top_up(self._arms, max(1, self.budget // len(self._arms)))


class UCB(Selector):
    """UCB1 over per-example 0/1 rewards (n and T count examples). ProTeGi's code uses the round
    index for T instead; counting examples is the textbook form and needs no extra constant."""

    method = "ucb"

    def _plan(self) -> Iterator[list[ScoreRequest]]:
        first = min(self.samples_per_eval, max(1, self.budget // len(self._arms)))
        yield self._top_up(self._arms, first)
        while True:
            live = [a for a in self._arms if self._room(a) > 0]
            if not live or self.spent >= self.budget:
                return
            total = sum(self.n(a) for a in self._arms)
            chosen = sorted(live, key=lambda a: self._index(a, total), reverse=True)[: self.prompts_per_round]
            yield self._pull([(a, self.samples_per_eval) for a in chosen])

    def _index(self, arm: Candidate, total: int) -> float:
        n = self.n(arm)
        if n == 0:
            return math.inf
        return self.mean(arm) + self.c * math.sqrt(math.log(max(total, 1)) / n)


class UCBE(UCB):
    """UCB-E: the exploration bonus sqrt(a / n) does not grow with time, suited to a fixed budget."""

    method = "ucb-e"

    def _index(self, arm: Candidate, total: int) -> float:
        n = self.n(arm)
        return math.inf if n == 0 else self.mean(arm) + math.sqrt(self.c / n)


class SuccessiveRejects(Selector):
    """Phase k tops every survivor up to n_k = (B - K) / (logbar(K) (K + 1 - k)) examples and
    rejects the worst, where logbar(K) = 1/2 + sum_{i=2..K} 1/i."""

    method = "sr"

    def _plan(self) -> Iterator[list[ScoreRequest]]:
        k_arms = len(self._arms)
        logbar = 0.5 + sum(1 / i for i in range(2, k_arms + 1))
        target = 1
        for phase in range(1, k_arms - self.keep + 1):
            # The target never shrinks, and the first phase scores every arm at least once.
            target = max(target, math.floor((self.budget - k_arms) / (logbar * (k_arms + 1 - phase))))
            yield self._top_up(self._survivors(), target)
            self._eliminated.append(self._sorted(self._survivors())[-1])


class SuccessiveHalving(Selector):
    """Each of ceil(log2(K / keep)) rounds adds budget / (survivors x rounds) examples to every
    survivor, then keeps the better half (never fewer than `keep`). ProTeGi's code keeps the arms
    at or above the mean instead; the paper describes halving, as here."""

    method = "sh"

    def _plan(self) -> Iterator[list[ScoreRequest]]:
        rounds = max(1, math.ceil(math.log2(len(self._arms) / self.keep)))
        target = 0
        for _ in range(rounds):
            alive = self._survivors()
            if len(alive) <= self.keep:
                return
            target += max(1, self.budget // (len(alive) * rounds))
            yield self._top_up(alive, target)
            ranked = self._sorted(alive)
            for arm in reversed(ranked[max(self.keep, math.ceil(len(alive) / 2)):]):
                self._eliminated.append(arm)


SELECTORS: dict[str, type[Selector]] = {
    cls.method: cls for cls in (BruteForce, UCB, UCBE, SuccessiveRejects, SuccessiveHalving)
}
