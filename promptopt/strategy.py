"""The Strategy protocol and the Context a strategy sees (no test split, no files, no global RNG)."""
from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Mapping, Protocol, Sequence, get_args, runtime_checkable

from pydantic import BaseModel, ConfigDict, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError

from promptopt.backends.base import GenRequest, GenResult
from promptopt.budget import BudgetView
from promptopt.task import Task
from promptopt.types import OBJECTIVES, Candidate, Evaluation, ExampleResult, Objective

if TYPE_CHECKING:  # objectives.py is the loop's; a strategy only calls `scalarize` on it
    from promptopt.measure.objectives import Measurer

__all__ = ["OBJECTIVES", "Context", "History", "Needs", "Objective", "OptimizerLM", "ScoreRequest", "Strategy",
           "StrategyConfig", "StrictSettings", "check_task", "needs"]


MAX_SETTING = 10**6  # no count a strategy takes (rounds, population, steps) is meant to be larger


class StrictSettings(BaseModel):
    """Settings a user types (a strategy's, and the blocks they embed, such as racing and selection): unknown
    keys are an error, and numbers are strict: true/false is not a number, a count is a whole number up to
    MAX_SETTING (not 1e20), and inf or nan is no float setting."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _strict_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        field = cls.model_fields.get(info.field_name or "")
        kinds = set(get_args(field.annotation)) | {field.annotation} if field is not None else set()
        reason = None
        if isinstance(value, bool) and bool not in kinds and (int in kinds or float in kinds):
            reason = f"a number, not {str(value).lower()}"
        elif int in kinds and float not in kinds and isinstance(value, float):
            reason = f"a whole number, not {value!r}"
        elif int in kinds and isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_SETTING:
            reason = f"at most {MAX_SETTING:,}, not {value:,}"
        if reason:  # the reason alone, without pydantic's "Value error," prefix
            raise PydanticCustomError("strict_number", "{reason}", {"reason": reason})
        return value


class StrategyConfig(StrictSettings):
    """Base of every strategy's settings (see StrictSettings)."""


@dataclass(frozen=True)
class ScoreRequest:
    """Ask the loop to score `candidate` on `n` more unseen examples of `split` (all if None),
    or exactly on `example_ids` when given. Asking again for a scored candidate means "more".

    objective "task" scores with the task metric; "loss" scores each example by the gold answer's
    log-likelihood (higher is better; see promptopt.scoring.scorer) for loss-driven strategies such as PMPO."""

    candidate: Candidate
    split: str = "dev"
    n: int | None = None
    example_ids: tuple[str, ...] | None = None
    objective: Objective = "task"


class History:
    """Read-only record of every candidate and result so far, merged per candidate and split."""

    def __init__(self) -> None:
        self._candidates: dict[str, Candidate] = {}
        self._results: dict[tuple[str, str, str], dict[str, ExampleResult]] = {}
        self._failures: dict[str, int] = {}
        self._metrics: dict[tuple[str, str, str], str] = {}

    # -- written by the loop only --
    def _add_candidate(self, cand: Candidate) -> bool:
        if cand.id in self._candidates:
            return False
        self._candidates[cand.id] = cand
        return True

    def _add_evaluation(self, ev: Evaluation) -> None:
        if ev.state == "unscored":  # the budget left it out: nothing was learnt
            return
        if ev.state == "failed":
            self._failures[ev.candidate_id] = self._failures.get(ev.candidate_id, 0) + 1
            return
        bucket = self._results.setdefault((ev.candidate_id, ev.split, ev.objective), {})
        if ev.metric is not None:  # a corpus metric (promptopt.measure.metrics): score() computes it over the results
            self._metrics[(ev.candidate_id, ev.split, ev.objective)] = ev.metric
        for r in ev.results:
            bucket[r.example_id] = r

    # -- read by anyone --
    def __contains__(self, candidate_id: str) -> bool:
        return candidate_id in self._candidates

    def __len__(self) -> int:
        return len(self._candidates)

    def candidate(self, candidate_id: str) -> Candidate:
        return self._candidates[candidate_id]

    def candidates(self) -> list[Candidate]:
        return list(self._candidates.values())

    def results(self, candidate_id: str, split: str = "dev", objective: str = "task") -> Mapping[str, ExampleResult]:
        return dict(self._results.get((candidate_id, split, objective), {}))

    def n_scored(self, candidate_id: str, split: str = "dev", objective: str = "task") -> int:
        return len(self._results.get((candidate_id, split, objective), {}))

    def failures(self, candidate_id: str) -> int:
        return self._failures.get(candidate_id, 0)

    def score(self, candidate_id: str, split: str = "dev", objective: str = "task") -> float:
        res = self._results.get((candidate_id, split, objective))
        if not res:
            return math.nan
        metric = self._metrics.get((candidate_id, split, objective))
        if metric is not None:
            from promptopt.measure.metrics import corpus_score
            return corpus_score(metric, res.values())
        return sum(r.score for r in res.values()) / len(res)

    def ranked(self, split: str = "dev", min_examples: int = 1, objective: str = "task") -> list[tuple[Candidate, float]]:
        """Candidates with at least `min_examples` scored, best first (ties: first seen wins)."""
        scored = [(c, self.score(c.id, split, objective)) for c in self._candidates.values()
                  if self.n_scored(c.id, split, objective) >= min_examples]
        return sorted(scored, key=lambda cs: -cs[1])


class OptimizerLM(Protocol):
    """What a strategy calls to use the optimizer LLM; the loop logs, budgets and caches each call."""

    def generate(self, reqs: Sequence[GenRequest], *, purpose: str = "") -> list[GenResult]: ...


@dataclass
class Context:
    """Everything a strategy may use. `task` has no test split; `rng` is the run's seeded RNG."""

    task: Task
    optimizer: OptimizerLM | None
    history: History
    rng: random.Random
    step: int
    budget: BudgetView
    notes: Callable[..., None]  # notes(kind, **data): log a strategy event (e.g. a failed proposal)
    seed_demos: tuple[str, ...] = ()  # train demo ids every seed candidate carries (`--demos K`)
    # With `objective_weights` set: the run's objectives.Measurer, whose `scalarize` shared ranking helpers
    # use; None otherwise (rank by the strategy's own fitness).
    objectives: Measurer | None = None
    # A program run (promptopt.harness.program): its seed candidate and each component's one-line role.
    seed_program: Candidate | None = None
    component_roles: Mapping[str, str] = field(default_factory=dict)

    def seed_candidates(self) -> list[Candidate]:
        """The task's seed prompts as candidates, with the run's seed demos (a program: its seed components)."""
        if self.seed_program is not None:
            return [self.seed_program]
        return [Candidate(p, origin="seed", demos=self.seed_demos) for p in self.task.seed_prompts]

    def note(self, kind: str, **data: Any) -> None:
        self.notes(kind, **data)

    def require_optimizer(self) -> OptimizerLM:
        if self.optimizer is None:
            from promptopt.errors import CapabilityError
            raise CapabilityError("this strategy needs an optimizer model (--optimizer-model)")
        return self.optimizer


@runtime_checkable
class Strategy(Protocol):
    """A search algorithm. `ask` returns what to score next (empty = done); `tell` gets one Evaluation
    per request, in order. A step larger than the example budget left is scored as far as it goes: the
    requests it could not pay for come back with state "unscored" (no results: treat as no information),
    and one request may come back with fewer results than it asked for. Strategies never write files or
    see the test split.

    Optional: a strategy that ends the search itself (returns [] before the budget is spent) may first set
    an attribute `done_reason`, a short phrase such as "no new best for 2 steps (patience=2)"; the run's
    stop reason is then "strategy finished: <done_reason>", so a user sees why the budget was not spent."""

    Config: ClassVar[type[StrategyConfig]]
    # Optional capability flags (a strategy sets the ones that are True; read them through `needs()`):
    needs_optimizer: ClassVar[bool]  # refuses to run without an optimizer LLM
    uses_optimizer: ClassVar[bool]  # runs without one, but uses it when configured (e.g. Plum's paraphrase)
    needs_loglikelihood: ClassVar[bool]  # scores with objective "loss": the target must give log-likelihoods
    needs_local_target: ClassVar[bool]  # computes on a local copy of the target's weights (gradients): no API target

    def ask(self, ctx: Context) -> Sequence[Candidate | ScoreRequest]: ...

    def tell(self, ctx: Context, evals: Sequence[Evaluation]) -> None: ...

    # Optional (read through `check_task()`): refuse, with a ConfigError, a task it cannot search (e.g. a
    # dev split too small for its racing), when the run is built and before any model call.
    def check_task(self, task: Task) -> None: ...


@dataclass(frozen=True)
class Needs:
    """A strategy's capability flags, each False unless the strategy declares it."""

    optimizer: bool = False
    uses_optimizer: bool = False
    loglikelihood: bool = False
    local_target: bool = False


def check_task(strategy: Any, task: Task) -> None:
    """The one caller of a strategy's optional `check_task`."""
    check = getattr(strategy, "check_task", None)
    if callable(check):
        check(task)


def needs(strategy: Any) -> Needs:
    """The one reader of the optional flags declared on `Strategy`, for a strategy class or instance."""
    return Needs(optimizer=bool(getattr(strategy, "needs_optimizer", False)),
                 uses_optimizer=bool(getattr(strategy, "uses_optimizer", False)),
                 loglikelihood=bool(getattr(strategy, "needs_loglikelihood", False)),
                 local_target=bool(getattr(strategy, "needs_local_target", False)))
