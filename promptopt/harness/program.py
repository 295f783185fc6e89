"""Optimize a whole program: named text components and the user's own evaluator.

A `Program` is the seed components (each with a one-line role), the dev/test (and train) examples,
and `evaluate(components, examples) -> list[Result]`, sync or async, which may run any code (its own
client calls, several steps). To the loop the evaluator is a scoring target like a backend
(`ProgramScorer`): results are cached by (component texts, example id, evaluator version), logged with
their traces, replayed on resume and counted against the budget in evaluated examples. An exception
for one example is that example's failure (score 0, traceback logged); a wrong answer shape is an error.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import importlib
import inspect
import json
import math
import time
import traceback
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Awaitable, Callable, Iterator, Mapping, Sequence

from promptopt.backends.base import canonical_hash
from promptopt.errors import ConfigError, PromptOptError
from promptopt.task import Task
from promptopt.types import Candidate, Evaluation, Example, ExampleResult, Usage

SOURCE = "python"  # task.meta["source"]: a resume needs the same object passed again
FLUSH_SECONDS = 1.0  # how often results reach the cache while a step runs
TARGET = "promptopt.harness.program:EvaluatorTarget"  # what a program run's config.json names as its target


@dataclass(frozen=True)
class Result:
    """What the evaluator says about one example: `score` (higher is better), and optionally textual
    `feedback` (reflective strategies read it), a JSON-able `trace` (logged) and the program's `output`."""

    score: float
    feedback: str | None = None
    trace: Any = None
    output: str = ""


class EvaluatorError(PromptOptError):
    """The evaluator broke its contract (wrong number of results, a score that is not a number)."""


Evaluate = Callable[[Mapping[str, str], list[Any]], "Sequence[Result] | Awaitable[Sequence[Result]]"]


def evaluator(*, components: Sequence[str] | None = None,
              version: str | None = None) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Declare what an evaluator reads (its component names, checked before the first call) and its
    version (part of every cache key; bump it when the evaluator's behaviour changes)."""
    def mark(fn: Callable[..., Any]) -> Callable[..., Any]:
        if components is not None:
            fn.components = tuple(components)  # type: ignore[attr-defined]
        if version is not None:
            fn.version = version  # type: ignore[attr-defined]
        return fn
    return mark


def _example_id(ex: Any, split: str, i: int) -> str:
    if isinstance(ex, Example):
        return ex.id
    got = ex.get("id") if isinstance(ex, Mapping) else getattr(ex, "id", None)
    return str(got) if got is not None else f"{split}-{i}"


def _describe(ex: Any) -> str:
    """A stable text of a user's example (for the task fingerprint: changed data is caught on resume)."""
    if isinstance(ex, Example):
        return json.dumps([ex.input, ex.target, ex.label, dict(ex.fields)], ensure_ascii=False, default=str)
    try:
        return json.dumps(ex, ensure_ascii=False, sort_keys=True, default=str)
    except (TypeError, ValueError):
        return repr(ex)


def _source_version(fn: Any) -> str:
    """A hash of the evaluator's source code; refused (asking for `version=`) when there is none."""
    try:
        target = fn if inspect.isfunction(fn) or inspect.ismethod(fn) else type(fn)
        src = inspect.getsource(target)
    except (OSError, TypeError) as e:
        raise ConfigError(f"cannot fingerprint the evaluator {getattr(fn, '__name__', fn)!r} from its source ({e}); "
                          "pass version='...' (any text you change when the evaluator changes)") from None
    return "src:" + hashlib.sha256(src.encode("utf-8")).hexdigest()[:16]


class Program:
    """The seed components (name -> text, or name -> (text, role)), the examples, and the evaluator.

    `evaluate` may be None for a `promptopt.Study` driven from the user's own loop (the user scores)."""

    def __init__(self, components: Mapping[str, str | tuple[str, str]], evaluate: Evaluate | None, *,
                 dev: Sequence[Any], test: Sequence[Any] = (), train: Sequence[Any] = (),
                 version: str | None = None, concurrency: int = 8, batch_size: int = 1,
                 name: str = "program"):
        if not components:
            raise ConfigError("a program needs at least one component")
        self.components: dict[str, str] = {}
        self.roles: dict[str, str] = {}
        for n, v in components.items():
            text, role = (v, "") if isinstance(v, str) else v
            if not isinstance(n, str) or not n or not isinstance(text, str) or not text.strip():
                raise ConfigError(f"component {n!r}: a component is a non-empty name and a non-empty text")
            self.components[n], self.roles[n] = text, role
        if concurrency < 1 or batch_size < 1:
            raise ConfigError(f"concurrency and batch_size must be at least 1 (got {concurrency}, {batch_size})")
        if not dev:
            raise ConfigError("a program needs dev examples")
        self.evaluate = evaluate
        declared = getattr(evaluate, "components", None)
        if declared is not None:
            unknown = [n for n in self.components if n not in declared]
            if unknown:
                raise ConfigError(f"component(s) {unknown} are not known to the evaluator, which reads "
                                  f"{list(declared)}; rename them")
        given = version if version is not None else getattr(evaluate, "version", None)
        if given is None and evaluate is None:
            raise ConfigError("a program you score in your own loop (evaluate=None) needs version='...': it keys "
                              "the result cache; change it whenever your scoring changes")
        self.version = str(given) if given is not None else _source_version(evaluate)
        self.concurrency, self.batch_size, self.name = concurrency, batch_size, name
        self.is_async = evaluate is not None and (inspect.iscoroutinefunction(evaluate) or
                                                  inspect.iscoroutinefunction(getattr(evaluate, "__call__", None)))
        self._user: dict[str, dict[str, Any]] = {}
        splits: dict[str, list[Example]] = {}
        seen: dict[str, str] = {}  # id -> its split: an id names one example (it keys the result cache)
        for split, items in (("train", train), ("dev", dev), ("test", test)):
            exs = []
            for i, ex in enumerate(items):
                eid = _example_id(ex, split, i)
                if eid in seen:
                    raise ConfigError(f"example id {eid!r} appears twice ({seen[eid]} and {split}); "
                                      "each example needs its own id")
                seen[eid] = split
                self._user.setdefault(split, {})[eid] = ex
                exs.append(Example(eid, _describe(ex), ""))
            splits[split] = exs
        self.seed = Candidate.of_components(self.components, origin="seed")
        self.task = Task(name=name, splits=splits, template="{prompt}\n\n{input}", output="generate",
                         seed_prompts=(self.seed.text,), description="a program (promptopt.harness.program)",
                         meta={"source": SOURCE, "program": True})

    @property
    def fingerprint(self) -> str:
        """What a resume must find unchanged: the examples, the seed components with their roles, the version."""
        from promptopt.api import task_fingerprint
        return "sha256:" + canonical_hash({"task": task_fingerprint(self.task), "components": self.components,
                                           "roles": self.roles, "version": self.version})

    def user_example(self, split: str, example_id: str) -> Any:
        return self._user[split][example_id]

    def check(self, cand: Candidate) -> None:
        """A candidate must have exactly the program's components (refused before any evaluator call)."""
        names = [n for n, _ in cand.components] if cand.components else None
        if names != list(self.components):
            raise PromptOptError(f"candidate {cand.id} has components {names or '(a single prompt)'}, but the "
                                 f"program's are {list(self.components)}")


def load_program(spec: str) -> "Program":
    """The Program object `spec` names: `path/to/file.py:NAME` or `module:NAME` (what `--program` takes and
    a CLI program run's config records, the file's path made absolute, so `--resume` imports it again).
    Importing runs the file's top level: keep a run's own start under `if __name__ == "__main__":`."""
    from promptopt import registry
    where, _, attr = spec.rpartition(":")
    if not where or not attr.isidentifier():
        raise ConfigError(f"--program {spec!r}: expected path/to/file.py:NAME or module:NAME (a promptopt.Program)")
    try:
        module = (registry.load_file(Path(where)) if where.endswith(".py") else importlib.import_module(where))
    except PromptOptError as e:
        raise ConfigError(f"--program {spec!r}: {e}") from None
    except Exception as e:  # the user's file failing on import: one line, not a traceback
        raise ConfigError(f"--program {spec!r}: importing {where} failed: {type(e).__name__}: {e}") from None
    obj = getattr(module, attr, None)
    if not isinstance(obj, Program):
        what = "nothing" if obj is None else f"a {type(obj).__name__}"
        raise ConfigError(f"--program {spec!r}: {where} names {what} as {attr!r}, not a promptopt.Program")
    return obj


class EvaluatorTarget:
    """The target a program run's config names: the program's evaluator, which the run is handed in Python.
    There is no model to load, so building it is refused (it is never built by a program run)."""

    def __init__(self, model: str = "", **options: Any):
        raise ConfigError(f"the target of program {model!r} is its evaluator: pass the program "
                          "(optimize(program=...), promptopt.Study(program)); it cannot be loaded by name")


def result_key(version: str, cand: Candidate, example_id: str) -> str:
    return "program:" + canonical_hash({"v": version, "c": [list(c) for c in cand.components], "x": example_id})


class Components(Mapping[str, str]):
    """The component texts an evaluator gets: read-only; reading a name the program lacks is an error
    (not one example's failure), so a typo stops the run at once."""

    def __init__(self, items: Sequence[tuple[str, str]]):
        self._d = dict(items)

    def __getitem__(self, name: str) -> str:
        if name not in self._d:
            raise EvaluatorError(f"the evaluator reads component {name!r}, which the program does not have "
                                 f"(it has {list(self._d)})")
        return self._d[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._d)

    def __len__(self) -> int:
        return len(self._d)

    def __repr__(self) -> str:
        return f"Components({self._d!r})"


class ProgramScorer:
    """The evaluator as the loop's scoring target: cached, batched, bounded concurrency, failures as data."""

    def __init__(self, program: Program, cache: Any = None):
        self.program = program
        self.cache = cache  # a promptopt.scoring.cache.ResponseCache, or None
        self.calls = 0  # evaluator calls made (each on one batch)
        self._fresh: dict[str, Any] = {}  # results not yet written to the cache
        self._flushed_at = time.monotonic()
        self._loop: asyncio.AbstractEventLoop | None = None  # an async evaluator's, kept for the run

    def _keep(self, cand: Candidate, got: Mapping[str, ExampleResult], *, flush: bool = True) -> None:
        """Cache a batch's results (not its failures), written at most every FLUSH_SECONDS while a step runs,
        so a process killed mid-step loses at most that much evaluator work."""
        if self.cache is None:
            return
        for eid, r in got.items():
            if r.error is None:
                self._fresh[result_key(self.program.version, cand, eid)] = r.to_json()
        if flush and time.monotonic() - self._flushed_at >= FLUSH_SECONDS:
            self._flush()

    def _flush(self) -> None:
        if self.cache is not None and self._fresh:
            self.cache.put_many(self._fresh)
            self._fresh = {}
        self._flushed_at = time.monotonic()

    def cached(self, cand: Candidate, example_ids: Sequence[str]) -> dict[str, ExampleResult]:
        if self.cache is None or not example_ids:
            return {}
        keys = {result_key(self.program.version, cand, i): i for i in example_ids}
        got = self.cache.get_many(list(keys))
        return {keys[k]: ExampleResult.from_json(v) for k, v in got.items()}

    def score(self, cands: Sequence[Candidate], jobs: Sequence[Any]) -> list[Evaluation]:
        """Evaluations for `jobs` (promptopt.scoring.scorer.Job, one per candidate, same order)."""
        started = time.monotonic()
        results: list[dict[str, ExampleResult]] = []
        batches: list[tuple[int, Candidate, str, list[str]]] = []
        for j, (cand, job) in enumerate(zip(cands, jobs)):
            ids = [ex.id for ex in job.examples]
            have = self.cached(cand, ids)
            results.append(have)
            todo = [i for i in ids if i not in have]
            size = self.program.batch_size
            batches += [(j, cand, job.split, todo[k:k + size]) for k in range(0, len(todo), size)]
        try:
            for j, cand, got in self._run(batches):
                results[j].update(got)
                self._keep(cand, got, flush=False)
        finally:
            self._flush()
        seconds = time.monotonic() - started
        total = sum(len(j.examples) for j in jobs) or 1
        out = []
        for j, (cand, job) in enumerate(zip(cands, jobs)):
            rs = tuple(results[j][ex.id] for ex in job.examples)
            errors = [r for r in rs if r.error]
            n_cached = len(rs) - sum(len(b[3]) for b in batches if b[0] == j)
            usage = Usage(calls=sum(1 for b in batches if b[0] == j), seconds=seconds * len(rs) / total,
                          cache_hits=n_cached)
            if rs and len(errors) == len(rs):
                out.append(Evaluation(cand.id, job.split, rs, "failed",
                                      f"{len(errors)}/{len(rs)} examples failed: {errors[0].error.splitlines()[-1]}",
                                      usage, job.objective))
            else:
                out.append(Evaluation(cand.id, job.split, rs, "complete", None, usage, job.objective))
        return out

    # -- calling the evaluator --
    def _run(self, batches: list[tuple[int, Candidate, str, list[str]]]) -> list[tuple[int, Candidate, dict[str, ExampleResult]]]:
        if not batches:
            return []
        if self.program.evaluate is None:
            raise PromptOptError("this program has no evaluator: score its trials yourself (promptopt.Study)")
        if not self.program.is_async:
            done = []
            for j, cand, split, ids in batches:
                done.append((j, cand, self._sync(cand, split, ids)))
                self._keep(cand, done[-1][2])
            return done

        async def all_batches() -> list[tuple[int, Candidate, dict[str, ExampleResult]]]:
            gate = asyncio.Semaphore(self.program.concurrency)

            async def one(j: int, cand: Candidate, split: str, ids: list[str]) -> tuple[int, Candidate, dict[str, ExampleResult]]:
                async with gate:
                    got = await self._async(cand, split, ids)
                self._keep(cand, got)
                return j, cand, got
            return list(await asyncio.gather(*(one(*b) for b in batches)))
        # One event loop for the whole run, not one per step: an async client the evaluator keeps (an
        # AsyncOpenAI's connection pool) is bound to the loop it first ran on, and a closed one breaks it.
        if self._loop is None:
            self._loop = asyncio.new_event_loop()
            weakref.finalize(self, self._loop.close)
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return self._loop.run_until_complete(all_batches())
        # Called inside a running event loop (a notebook): run ours on a thread of its own.
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            return pool.submit(self._loop.run_until_complete, all_batches()).result()

    def _args(self, cand: Candidate, split: str, ids: Sequence[str]) -> tuple[Mapping[str, str], list[Any]]:
        return Components(cand.components), [self.program.user_example(split, i) for i in ids]

    def _sync(self, cand: Candidate, split: str, ids: list[str]) -> dict[str, ExampleResult]:
        try:
            self.calls += 1
            return self._check(ids, self.program.evaluate(*self._args(cand, split, ids)))  # type: ignore[misc]
        except EvaluatorError:
            raise
        except Exception as e:
            return self._failed(cand, split, ids, e, self._sync)

    async def _async(self, cand: Candidate, split: str, ids: list[str]) -> dict[str, ExampleResult]:
        try:
            self.calls += 1
            return self._check(ids, await self.program.evaluate(*self._args(cand, split, ids)))  # type: ignore[misc]
        except EvaluatorError:
            raise
        except Exception as e:
            if len(ids) == 1:
                return self._failed(cand, split, ids, e, None)
            out: dict[str, ExampleResult] = {}
            for i in ids:  # find which example raised: one at a time
                out.update(await self._async(cand, split, [i]))
            return out

    def _failed(self, cand: Candidate, split: str, ids: list[str], e: Exception,
                retry: Callable[..., dict[str, ExampleResult]] | None) -> dict[str, ExampleResult]:
        """An exception fails its example (score 0, the traceback logged); in a batch of several, each
        example is retried alone to find which one raised."""
        if len(ids) > 1 and retry is not None:
            out: dict[str, ExampleResult] = {}
            for i in ids:
                out.update(retry(cand, split, [i]))
            return out
        tb = "".join(traceback.format_exception(type(e), e, e.__traceback__))
        return {ids[0]: ExampleResult(ids[0], "", 0.0, error=tb.rstrip())}

    def _check(self, ids: list[str], results: Any) -> dict[str, ExampleResult]:
        if not isinstance(results, (list, tuple)) or len(results) != len(ids):
            n = len(results) if isinstance(results, (list, tuple)) else type(results).__name__
            raise EvaluatorError(f"the evaluator returned {n} results for {len(ids)} examples "
                                 f"({', '.join(ids[:5])}); it must return one Result per example, in order")
        out = {}
        for eid, r in zip(ids, results):
            score = r.score if isinstance(r, Result) else r
            if isinstance(score, bool) or not isinstance(score, (int, float)) or math.isnan(score):
                raise EvaluatorError(f"example {eid}: the evaluator's score is {score!r}, not a number; "
                                     "return Result(score=<a finite number>)")
            if not isinstance(r, Result):
                r = Result(float(score))
            out[eid] = ExampleResult(eid, str(r.output or ""), float(score),
                                     feedback=None if r.feedback is None else str(r.feedback),
                                     trace=_jsonable(r.trace))
        return out


def _jsonable(trace: Any) -> Any:
    """A trace as the log stores it (JSON); what JSON cannot hold becomes its repr."""
    if trace is None:
        return None
    try:
        return json.loads(json.dumps(trace, ensure_ascii=False, default=repr))
    except (TypeError, ValueError):
        return repr(trace)
