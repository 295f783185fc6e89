"""Progress over scored examples (the unit the budget counts), as a run callback.

The search bar's total is what the strategy plans to score when it says so (an optional
`planned_examples(ctx)` method), else it is indeterminate: the count, the measured rate and the share of
the example budget used are shown, never an ETA to a budget the run may not reach. The final report
(finalists on the whole dev split, then the best and the seed on test) gets its own line with its size.
Each bar is closed, not cleared, so a captured log (not a terminal) ends with its final count. The CLI
shows it unless --quiet; `optimize()` shows it when stderr is a terminal (its `progress=` argument).
"""
from __future__ import annotations

from typing import IO, TYPE_CHECKING, Any

from tqdm import tqdm

from promptopt.callbacks import Callback

if TYPE_CHECKING:
    from promptopt.loop import Run
    from promptopt.types import Evaluation

PHASES = {"final": "final: finalists on dev", "test": "final: best and seed on test"}


class ProgressBar(Callback):
    def __init__(self, budget_examples: int | None = None, file: IO[str] | None = None):
        self.budget = budget_examples
        self._file = file  # None: stderr
        # Made at the first progress, so a run refused before its first step prints only its error line.
        self._open: tqdm | None = None
        self._planned = False

    @property
    def _bar(self) -> tqdm:
        if self._open is None:
            self._open = self._new(None, "optimizing")
        return self._open

    def _new(self, total: int | None, desc: str) -> tqdm:
        return tqdm(total=total, unit="ex", desc=desc, dynamic_ncols=True, leave=True, file=self._file)

    def _plan(self, run: "Run") -> None:
        self._planned = True
        planned = getattr(run.strategy, "planned_examples", None)
        total = planned(run._ctx) if callable(planned) else None
        if isinstance(total, int) and total > 0:
            self._bar.total = min(total, self.budget) if self.budget else total

    def update(self, run: "Run") -> None:
        if not self._planned:
            self._plan(run)
        self._bar.n = run.tracker.examples
        best = run.leaders(1)  # as the final report would rank it: a score on 1 example is not the best yet
        post: dict[str, Any] = {"step": run.step, "cands": len(run.history),
                                "best": f"{run.history.score(best[0].id, 'dev'):.3f}" if best else "-"}
        if self.budget and self._bar.total is None:
            post["budget"] = f"{run.tracker.examples}/{self.budget}"
        self._bar.set_postfix(**post, refresh=False)
        self._bar.refresh()

    def on_step_end(self, run: "Run") -> None:
        self.update(run)

    def on_phase(self, run: "Run", phase: str, examples: int) -> None:
        self.close()
        self._open = self._new(examples, PHASES.get(phase, phase))

    def on_evaluation(self, run: "Run", evaluation: "Evaluation", phase: str = "search") -> None:
        if phase in PHASES:
            self._bar.update(len(evaluation.results))

    def close(self) -> None:
        if self._open is not None:
            self._open.close()
