"""Callbacks: what a harness, a tracker (MLflow) or a stop condition hears from a run.

Subclass `Callback` and override any of its no-op methods; pass instances as `optimize(..., callbacks=[...])`
or `Run(..., callbacks=[...])`. Every method gets the `Run` first (read `run.step`, `run.history`,
`run.tracker`, `run.replaying`; never change it). Events fire while a resumed run replays its log too,
so a callback that counts steps sees the same sequence in a resumed run as in an uninterrupted one.

    on_candidate(run, candidate, accepted, reason)  a new candidate was logged (accepted=True), or a
                                                    strategy rejected a proposal before scoring it
                                                    (accepted=False, candidate=None, `reason` and the
                                                    note's fields in `data`)
    on_evaluation(run, evaluation, phase)           an evaluation was recorded ("search", "final", "test")
    on_new_best(run, candidate, score)              the best dev score so far went up
    on_step_end(run)                                an ask -> score -> tell step ended
    on_phase(run, phase, examples)                  the final report begins a phase: "final" (finalists on
                                                    the whole dev split) or "test", scoring `examples` pairs
    on_run_end(run, report)                         the run ended: `report` is the Report, or None when it
                                                    stopped resumably (no summary)

Stopping: raise `StopSearch("why")` from any method to end the search at the end of the current step;
the final report still runs (as for a spent budget) and `stop_reason` is "stop: why"; `--resume` (or
`optimize(resume=...)`) later goes on with the search from that step (runlog.replay_stream). Any other
exception from a callback stops the run at once, resumably (no summary; `--resume` continues it), with
one line naming the callback.
"""
from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence

from promptopt.errors import ConfigError, PromptOptError, RunStopped

if TYPE_CHECKING:
    from promptopt.loop import Report, Run
    from promptopt.types import Candidate, Evaluation

log = logging.getLogger("promptopt")

EVENTS = ("on_candidate", "on_evaluation", "on_new_best", "on_step_end", "on_run_end", "on_phase")


class StopSearch(Exception):
    """Raised by a callback to end the search cleanly at the end of the step (the final report runs)."""


class Callback:
    """Base class with a no-op method per event; override the ones you need."""

    def on_candidate(self, run: "Run", candidate: "Candidate | None", accepted: bool = True, reason: str = "",
                     data: Mapping[str, Any] | None = None) -> None:
        pass

    def on_evaluation(self, run: "Run", evaluation: "Evaluation", phase: str = "search") -> None:
        pass

    def on_new_best(self, run: "Run", candidate: "Candidate", score: float) -> None:
        pass

    def on_step_end(self, run: "Run") -> None:
        pass

    def on_run_end(self, run: "Run", report: "Report | None") -> None:
        pass

    def on_phase(self, run: "Run", phase: str, examples: int) -> None:
        pass


class CallbackError(RunStopped):
    """A callback raised: the run stops resumably."""


class Dispatcher:
    """Calls each callback in order. A StopSearch is remembered (`stop_reason`) and takes effect at the end
    of the step; any other exception becomes a CallbackError naming the callback and the event."""

    def __init__(self, callbacks: Iterable[Any] = ()):
        self.callbacks: list[Any] = list(callbacks or ())
        for cb in self.callbacks:
            if not any(callable(getattr(cb, e, None)) for e in EVENTS):
                raise ConfigError(f"callback {cb!r} has none of the methods {', '.join(EVENTS)}; "
                                  "subclass promptopt.callbacks.Callback")
        self.stop_reason: str | None = None

    def __bool__(self) -> bool:
        return bool(self.callbacks)

    def emit(self, event: str, *args: Any, **kwargs: Any) -> None:
        for cb in self.callbacks:
            method = getattr(cb, event, None)
            if not callable(method):
                continue
            try:
                method(*args, **kwargs)
            except StopSearch as e:
                if self.stop_reason is None:
                    self.stop_reason = str(e) or type(cb).__name__
            except (KeyboardInterrupt, RunStopped):
                raise
            except Exception as e:  # noqa: BLE001 - a user's callback: any failure stops the run resumably
                raise CallbackError(f"callback {type(cb).__name__}.{event} raised "
                                    f"{type(e).__name__}: {e}") from e


# -- stop conditions (the CLI's --stop) --

class NoImprovement(Callback):
    """Stop after `steps` search steps in a row without a new best dev score."""

    def __init__(self, steps: int):
        self.steps, self._since = steps, 0

    def on_new_best(self, run: "Run", candidate: "Candidate", score: float) -> None:
        self._since = -1  # this step improved; on_step_end brings it to 0

    def on_step_end(self, run: "Run") -> None:
        self._since += 1
        if self._since >= self.steps:
            raise StopSearch(f"no_improvement={self.steps} (no new best for {self.steps} steps)")


class ScoreReached(Callback):
    """Stop once the best dev score reaches `score`."""

    def __init__(self, score: float):
        self.score = score

    def on_new_best(self, run: "Run", candidate: "Candidate", score: float) -> None:
        if score >= self.score:
            raise StopSearch(f"score={self.score:g} (best dev {score:.4f})")


class WallTime(Callback):
    """Stop at the end of the first step after `seconds` of wall time in this session."""

    def __init__(self, seconds: float):
        self.seconds, self._start = seconds, time.monotonic()

    def on_step_end(self, run: "Run") -> None:
        if time.monotonic() - self._start >= self.seconds:
            raise StopSearch(f"seconds={self.seconds:g}")


class StopFile(Callback):
    """Stop at the end of the step in which `path` exists (touch it from another shell)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def on_step_end(self, run: "Run") -> None:
        if self.path.exists():
            raise StopSearch(f"file={self.path} exists")


def _number(key: str, text: str, kind: type) -> Any:
    try:
        value = kind(float(text)) if kind is int and float(text).is_integer() else kind(text)
    except ValueError:
        raise ConfigError(f"--stop {key}={text!r}: expected a {'whole ' if kind is int else ''}number") from None
    if not math.isfinite(value) or value <= 0 and key != "score":
        raise ConfigError(f"--stop {key}={text!r}: expected a positive number")
    return value


def parse_stop(text: str) -> Callback:
    """One `--stop` condition: no_improvement=N, score=X, seconds=S or file=PATH."""
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or not value.strip():
        raise ConfigError(f"--stop expects KEY=VALUE (no_improvement=5, score=0.9, seconds=600, file=PATH), "
                          f"got {text!r}")
    if key == "no_improvement":
        return NoImprovement(_number(key, value, int))
    if key == "score":
        return ScoreReached(_number(key, value, float))
    if key == "seconds":
        return WallTime(_number(key, value, float))
    if key == "file":
        return StopFile(value)
    raise ConfigError(f"--stop: unknown condition {key!r} (use no_improvement, score, seconds or file)")


def parse_stops(texts: Sequence[str]) -> list[Callback]:
    return [parse_stop(t) for t in texts]


__all__ = ["Callback", "CallbackError", "Dispatcher", "NoImprovement", "ScoreReached", "StopFile", "StopSearch",
           "WallTime", "parse_stop", "parse_stops", "PromptOptError"]
