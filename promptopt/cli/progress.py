"""A progress bar over scored examples (the unit the budget counts)."""
from __future__ import annotations

from typing import TYPE_CHECKING

from tqdm import tqdm

if TYPE_CHECKING:
    from promptopt.loop import Run


class ProgressBar:
    def __init__(self, total: int | None):
        self._bar = tqdm(total=total, unit="ex", desc="optimizing", dynamic_ncols=True, leave=False)

    def update(self, run: "Run") -> None:
        self._bar.n = run.tracker.examples
        best = run.history.ranked("dev")
        self._bar.set_postfix(step=run.step, cands=len(run.history),
                              best=f"{best[0][1]:.3f}" if best else "-", refresh=False)
        self._bar.refresh()

    def close(self) -> None:
        self._bar.close()
