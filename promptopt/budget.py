"""Budgets: scored examples, optimizer-LLM calls, tokens, wall time and USD. Any one spent stops the run."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

from pydantic import BaseModel, ConfigDict, Field

from promptopt.errors import BudgetExhausted
from promptopt.types import Evaluation, Usage

# What BudgetView.room says when examples are unlimited: more than any strategy asks for.
UNLIMITED = 1 << 60


class Budget(BaseModel):
    """Limits for the search phase (the final dev/test report is not counted). None = no limit."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)  # --max-usd inf is no limit

    max_examples: int | None = Field(2000, gt=0, description="scored (prompt, example) pairs")
    max_optimizer_calls: int | None = Field(None, gt=0)
    max_tokens: int | None = Field(None, gt=0, description="target + optimizer tokens")
    max_seconds: float | None = Field(None, gt=0)
    max_usd: float | None = Field(None, gt=0)


@dataclass
class BudgetTracker:
    """Counts what the search has used. Examples count cache hits too, so a run's path does not
    depend on what happens to be cached."""

    budget: Budget
    examples: int = 0
    optimizer_calls: int = 0
    target: Usage = field(default_factory=Usage)
    optimizer: Usage = field(default_factory=Usage)
    started: float = field(default_factory=time.monotonic)
    elapsed_before: float = 0.0  # wall time of earlier sessions of a resumed run (set from the run log)
    replaying: Callable[[], bool] = lambda: False  # while True, the time limit is not checked (see loop.Run)

    @property
    def seconds(self) -> float:
        return self.elapsed_before + time.monotonic() - self.started

    @property
    def tokens(self) -> int:
        return self.target.tokens + self.optimizer.tokens

    @property
    def usd(self) -> float:
        return self.target.usd + self.optimizer.usd

    def examples_left(self) -> int | None:
        b = self.budget.max_examples
        return None if b is None else b - self.examples

    def exhausted(self) -> str | None:
        """The name of the first spent limit, or None."""
        b = self.budget
        checks = [
            ("examples", b.max_examples, self.examples),
            ("optimizer_calls", b.max_optimizer_calls, self.optimizer_calls),
            ("tokens", b.max_tokens, self.tokens),
            ("seconds", None if self.replaying() else b.max_seconds, self.seconds),
            ("usd", b.max_usd, self.usd),
        ]
        for name, limit, used in checks:
            if limit is not None and used >= limit:
                return name
        return None

    def fit(self, sizes: Sequence[int]) -> list[int]:
        """How many examples of each request (sizes in order) the example budget pays for: requests are
        filled in order, so at most one is cut short and the ones after it get none."""
        left = self.examples_left()
        if left is None:
            return list(sizes)
        out = []
        for n in sizes:
            take = max(0, min(n, left))
            out.append(take)
            left -= take
        return out

    def record_evaluation(self, ev: Evaluation) -> None:
        """Count a search evaluation: its examples when complete (a failed one scored nothing), its usage."""
        self.examples += len(ev.results) if ev.state == "complete" else 0
        self.target = self.target + ev.usage

    def record_optimizer_call(self, n: int, usage: Usage) -> None:
        """Count `n` optimizer requests and their usage."""
        self.optimizer_calls += n
        self.optimizer = self.optimizer + usage

    def check_optimizer_call(self, n: int) -> None:
        """Raise BudgetExhausted before an optimizer call that would go over a limit."""
        b = self.budget
        if b.max_optimizer_calls is not None and self.optimizer_calls + n > b.max_optimizer_calls:
            raise BudgetExhausted("optimizer_calls")
        spent = self.exhausted()
        if spent:
            raise BudgetExhausted(spent)

    def view(self) -> "BudgetView":
        return BudgetView(self)


class BudgetView:
    """Read-only budget facts for strategies. The loop scores as much of a step as the budget pays for
    (the rest comes back unscored), so a strategy sizes its requests only where it must choose what to
    spend on (e.g. fewer children, each scored properly, rather than all on an example each): `room`."""

    def __init__(self, tracker: BudgetTracker):
        self._t = tracker

    @property
    def examples_used(self) -> int:
        return self._t.examples

    def room(self, per: int = 1, reserve: int = 0) -> int:
        """How many requests of `per` examples the example budget still pays for after keeping `reserve`
        examples back (0 when none; UNLIMITED without an example limit)."""
        left = self._t.examples_left()
        if left is None:
            return UNLIMITED
        return max(0, left - reserve) // max(1, per)

    @property
    def optimizer_calls_used(self) -> int:
        return self._t.optimizer_calls
