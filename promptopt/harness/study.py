"""The public ask/tell study: optimize a program from your own loop, in the style of optuna's.

    study = promptopt.Study(program, strategy="paraphrase")
    while (trial := study.ask()) is not None:
        study.tell(trial, [my_scores(item.components, item.examples) for item in trial.items])
    report = study.report

Underneath it is `optimize(program=...)` with the user's loop as the evaluator: the run drives itself on a
worker thread and, whenever it needs results it has neither logged nor cached, hands a Trial to `ask()` and
waits for `tell()`. So the run log, budget, callbacks (called on that thread), resume (replayed trials are
never asked again) and the final report (its dev and test trials are asked like any other) are optimize's.
"""
from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from promptopt.errors import PromptOptError, RunStopped
from promptopt.loop import Report
from promptopt.harness.program import Program, ProgramScorer, Result
from promptopt.types import Candidate, ExampleResult


@dataclass(frozen=True)
class TrialItem:
    """One candidate to score on some examples: its components and your example objects."""

    candidate_id: str
    components: Mapping[str, str]
    split: str  # "train", "dev" or "test" (the final report's)
    examples: list[Any]
    example_ids: tuple[str, ...]


@dataclass
class Trial:
    """What one ask() wants scored; tell() it one list of Results per item, in order."""

    number: int
    phase: str  # "search", "final" (the finalists on the full dev split) or "test"
    items: list[TrialItem]
    _batches: list[tuple[int, Candidate, str, list[str]]] = field(default_factory=list, repr=False)

    @property
    def n_examples(self) -> int:
        return sum(len(i.examples) for i in self.items)


@dataclass
class _Done:
    report: Report | None
    error: BaseException | None


class _HandoffScorer(ProgramScorer):
    """Scores by handing a Trial to the user's thread and waiting for its results."""

    def __init__(self, program: Program, cache: Any, study: "Study"):
        super().__init__(program, cache)
        self.study = study

    def _run(self, batches: list[tuple[int, Candidate, str, list[str]]]) -> list[tuple[int, Candidate, dict[str, ExampleResult]]]:
        merged: dict[int, tuple[int, Candidate, str, list[str]]] = {}
        for j, cand, split, ids in batches:  # one item per candidate: the user batches as they like
            merged.setdefault(j, (j, cand, split, []))[3].extend(ids)
        if not merged:
            return []
        jobs = list(merged.values())
        items = [TrialItem(cand.id, dict(cand.components), split,
                           [self.program.user_example(split, i) for i in ids], tuple(ids))
                 for _, cand, split, ids in jobs]
        self.study._number += 1
        trial = Trial(self.study._number, self.study._phase, items, jobs)
        self.study._outbox.put(trial)
        results = self.study._inbox.get()
        if results is _CLOSE:  # the study was closed: stop the run, resumably
            raise RunStopped("the study was closed")
        self.calls += len(jobs)
        return [(j, cand, got) for (j, cand, _, _), got in zip(jobs, results)]


_CLOSE = object()  # what close() hands a run waiting for results


class Study:
    """An optimization of `program` driven from your loop. Settings as `optimize(program=...)`'s:
    `strategy`, `optimizer_model`, `budget`, `seed`, `resume` (a run dir), `callbacks` and RunConfig fields.
    The program's evaluator, if it has one, is not used: you score. Bad settings raise here, before any trial."""

    def __init__(self, program: Program, strategy: str = "paraphrase", *, resume: str | Path | None = None,
                 callbacks: Sequence[Any] = (), **settings: Any):
        from promptopt import api
        how = {k: settings.pop(k) for k in ("model", "backend", "optimizer_model", "optimizer_backend", "budget",
                                             "seed") if k in settings}
        accept = settings.pop("accept_changed_inputs", False)
        if resume is not None:
            cfg = api.resume_config(resume)
            api.check_program(cfg, program, resume)
        else:
            cfg = api.program_config(program, strategy, settings=settings, **how)
        self._outbox: queue.Queue[Trial | _Done] = queue.Queue()
        self._inbox: queue.Queue[Any] = queue.Queue()
        self._number = 0
        self._phase = "search"
        self._pending: Trial | None = None
        self._done: _Done | None = None
        self._run = None
        self.program = program
        started = time.monotonic()
        run, backends = api.prepare(cfg, resume_dir=Path(resume) if resume is not None else None,
                                    accept_changed_inputs=accept, callbacks=[*callbacks, _PhaseWatch(self)],
                                    program=program)
        run.program = _HandoffScorer(program, backends.cache, self)
        self._run = run
        self.run_dir = str(run.log.dir) if run.log else None

        def work() -> None:
            try:
                self._outbox.put(_Done(api.drive(run, backends, started), None))
            except BaseException as e:  # handed to the user's thread by ask()
                self._outbox.put(_Done(None, e))
        self._thread = threading.Thread(target=work, name="promptopt-study", daemon=True)
        self._thread.start()

    def ask(self) -> Trial | None:
        """The next trial to score, or None when the run is over (then see `report`)."""
        if self._pending is not None:
            raise PromptOptError(f"tell() the results of trial {self._pending.number} first")
        if self._done is not None:
            return None
        got = self._outbox.get()
        if isinstance(got, _Done):
            self._done = got
            self._thread.join()
            if got.error is not None:
                raise got.error
            return None
        self._pending = got
        return got

    def tell(self, trial: Trial, results: Sequence[Sequence[Result | float]]) -> None:
        """The results of `trial`: one list per item, one Result (or a number) per example, in order. A wrong
        count, a NaN or a non-number is refused naming the example; the trial then stays open to tell again."""
        if self._pending is None or trial is not self._pending:
            raise PromptOptError(f"trial {trial.number} is not the open trial; tell() the trial ask() returned")
        if len(results) != len(trial.items):
            raise PromptOptError(f"trial {trial.number} has {len(trial.items)} items, got results for {len(results)}")
        checker = self._run.program if self._run is not None else None
        assert isinstance(checker, ProgramScorer)
        checked = [checker._check(list(item.example_ids), list(rs)) for item, rs in zip(trial.items, results)]
        self._pending = None
        self._inbox.put(checked)

    @property
    def report(self) -> Report | None:
        """The final report, once ask() has returned None."""
        return self._done.report if self._done is not None else None

    def close(self) -> None:
        """Stop waiting: the run's log stays resumable (`Study(program, resume=study.run_dir)`)."""
        if self._done is None and self._thread.is_alive():
            if self._pending is not None:
                self._pending = None
            self._inbox.put(_CLOSE)
            got = self._outbox.get()
            self._done = got if isinstance(got, _Done) else _Done(None, None)
            self._thread.join()


class _PhaseWatch:
    """Tells the study which part of the run its trials are for (the callback events say)."""

    def __init__(self, study: Study):
        self.study = study

    def on_phase(self, run: Any, phase: str, n: int) -> None:
        self.study._phase = phase
