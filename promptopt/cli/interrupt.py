"""Ctrl-C during `promptopt optimize`: the first ends the search at the end of the step and says what runs
next; the second skips the final report and writes a partial summary (`show` marks it). Either way the
run exits with 130 and stays resumable (`--resume` goes on with the search)."""
from __future__ import annotations

import signal
import sys
import threading
from typing import Any

from promptopt.callbacks import Callback, StopSearch
from promptopt.errors import SkipReport

REASON = "Ctrl-C"  # the stop reason: "stop: Ctrl-C"


class CtrlC(Callback):
    """A SIGINT handler and the callback that acts on it at the step's end."""

    def __init__(self) -> None:
        self.presses = 0
        self.reporting = False  # the final report has begun: a first Ctrl-C there skips it
        self._previous: Any = None

    def __enter__(self) -> "CtrlC":
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)

    def _handle(self, signum: int, frame: object) -> None:
        self.presses += 1
        if self.presses == 1 and not self.reporting:
            print("\npromptopt: Ctrl-C: the search ends when this step does; then the final report (the "
                  "finalists on all of dev, the best and the seed on test). Ctrl-C again skips the report and "
                  "writes a partial summary", file=sys.stderr)
            return
        print("\npromptopt: Ctrl-C: writing a partial summary (dev scores so far, no test)", file=sys.stderr)
        raise SkipReport

    def on_step_end(self, run: Any) -> None:
        if self.presses and not run.replaying:
            raise StopSearch(REASON)

    def on_phase(self, run: Any, phase: str, examples: int) -> None:
        self.reporting = True


def interrupted(stop_reason: str) -> bool:
    return stop_reason in ("interrupted", f"stop: {REASON}")
