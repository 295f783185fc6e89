"""Python API: build a run from a RunConfig, run it to the end (or resume it), evaluate prompts."""
from __future__ import annotations

import json
import logging
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from promptopt import __version__, registry
from promptopt.backends.base import Backend, canonical_hash
from promptopt.budget import SHORT_NAMES
from promptopt.cache import CachedBackend, ResponseCache, default_cache_path
from promptopt.config import ModelConfig, RunConfig, build_config, strategy_config
from promptopt.data import test_sample
from promptopt.errors import (BackendError, CapabilityError, ConfigError, ResumeError, RunStopped, SkipReport,
                              Terminated)
from promptopt.loop import Report, Run
from promptopt.runlog import CONFIG, SUMMARY, RunLog, continuable, new_run_dir, write_json_atomic
from promptopt.scorer import Job, score_jobs
from promptopt.strategy import needs
from promptopt.task import Task
from promptopt.task_from_examples import IN_MEMORY, MetricError
from promptopt.types import Evaluation

TASK_FILE_SUFFIXES = (".toml", ".yaml", ".yml")
log = logging.getLogger("promptopt")


def load_task(name: str, *, data_dir: str | None = None, seed: int = 0, options: Mapping[str, Any] | None = None) -> Task:
    """A registered task by name, or a custom task from a spec file path."""
    opts = dict(options or {})
    if name.startswith(IN_MEMORY):
        raise ConfigError(f"task {name!r} was built in Python (promptopt.make_task), so it cannot be loaded by "
                          "name; pass the same Task object (optimize(task=task, resume=RUN), evaluate(prompt, task))")
    if name.startswith("lmeval:"):  # an lm-evaluation-harness task config or name (the lmeval extra)
        from promptopt.integrations.lmeval import task_factory
        return task_factory(name[len("lmeval:"):], data_dir=data_dir, seed=seed, **opts)
    if name.endswith(TASK_FILE_SUFFIXES) or Path(name).is_file():
        factory = registry.get("tasks", "custom")
        opts["spec"] = name
    else:
        factory = registry.get("tasks", name)
    return factory(data_dir=data_dir, seed=seed, **opts)


class Backends:
    """Creates each distinct backend once (target and optimizer share one when identical)."""

    def __init__(self, cache: ResponseCache | None):
        self.cache = cache
        self._made: dict[str, Backend] = {}
        self.cached: list[CachedBackend] = []

    def get(self, mc: ModelConfig) -> Backend:
        key = mc.model_dump_json()
        if key not in self._made:
            inner = registry.get("backends", mc.backend)(model=mc.model, **mc.options)
            check = getattr(inner, "check", None)
            if callable(check):
                check()  # capability probe at start, never mid-run
            wrapped = CachedBackend(inner, self.cache)
            self.cached.append(wrapped)
            self._made[key] = wrapped
        return self._made[key]


def _git_sha() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version
    out = {"promptopt": __version__, "python": platform.python_version()}
    for pkg in ("torch", "transformers", "vllm", "openai"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out


def optimizer_config(strategy_cls: Any, cfg: RunConfig) -> ModelConfig | None:
    """The optimizer model a run of this strategy uses, or None; refuses a strategy that needs one
    when none is configured."""
    wants = needs(strategy_cls)
    if wants.optimizer:
        if cfg.optimizer is None:
            raise CapabilityError(f"strategy {strategy_cls.__name__} needs an optimizer model; pass --optimizer-model")
        return cfg.optimizer
    return cfg.optimizer if wants.uses_optimizer else None


def task_fingerprint(task: Task) -> str:
    """A hash of what the task scores: every example of every split, its template, options and seed prompts."""
    splits = {s: [[ex.id, ex.input, ex.target, ex.label, dict(ex.fields)] for ex in task.split(s)]
              for s in ("train", "dev", "test")}
    data = {"splits": splits, "template": task.template, "options": list(task.options or ()),
            "seed_prompts": list(task.seed_prompts)}
    if task.corpus_metric is not None:  # only when set, so the fingerprints of earlier runs stay
        data["corpus_metric"] = task.corpus_metric
    return "sha256:" + canonical_hash(data)


def _check_inputs(log: RunLog, meta: Mapping[str, Any], accept: bool) -> list[str]:
    """What changed since the run started (its config.json against the checksummed run.start event, and
    the task data and models against their recorded fingerprints). Refused unless `accept`."""
    start = next((s for s in log.sessions if s["type"] == "run.start"), None)
    if start is None:
        return []
    recorded = start.get("config")
    if isinstance(recorded, dict):  # a setting added since the run started, at its default, changes nothing
        defaults = RunConfig().model_dump(mode="json")
        recorded = {**{k: v for k, v in meta["config"].items() if k not in recorded and v == defaults.get(k)},
                    **recorded}
    changed = [] if recorded == meta["config"] else ["config.json differs from the config recorded at start"]
    for what, old in (start.get("fingerprints") or {}).items():
        new = meta["fingerprints"].get(what)
        if old != new:
            changed.append(f"{what} {'data' if what == 'task' else 'model'} changed ({old} -> {new})")
    if changed and not accept:
        log.close()
        raise ResumeError(f"{log.dir}: its inputs changed since it started: {'; '.join(changed)}; a resume would "
                          "mix results of both. Restore them, or pass --accept-changed-inputs")
    return changed


def prepare(cfg: RunConfig, *, resume_dir: Path | None = None,
            on_step: Callable[[Run], None] | None = None,
            accept_changed_inputs: bool = False, task_object: Task | None = None,
            callbacks: Sequence[Any] = ()) -> tuple[Run, Backends]:
    """Validate, create (or reopen) the run dir, load task and models, and return a ready Run.
    `task_object`: a Task built in Python (cfg.task is then "python:<name>")."""
    strategy_cls = registry.get("strategies", cfg.strategy)
    strategy = strategy_cls(strategy_config(strategy_cls, cfg.strategy_options))
    task = task_object if task_object is not None else \
        load_task(cfg.task, data_dir=cfg.data_dir, seed=cfg.seed, options=cfg.task_options)
    warn_reused_splits(task)
    check_task = getattr(strategy, "check_task", None)  # settings the task cannot carry: refused before any model loads
    if callable(check_task):
        check_task(task.without_test())
    cache = None
    if cfg.cache:
        cache = ResponseCache(Path(cfg.cache_path) if cfg.cache_path else default_cache_path())
    backends = Backends(cache)
    target = backends.get(cfg.target)  # first: a target that cannot load is the first thing to report
    optimizer_cfg = optimizer_config(strategy_cls, cfg)
    optimizer = backends.get(optimizer_cfg) if optimizer_cfg is not None else None
    meta = {"config": cfg.model_dump(mode="json"), "versions": _versions(), "git_sha": _git_sha(),
            "fingerprints": {"target": target.fingerprint(),
                             "optimizer": optimizer.fingerprint() if optimizer else None,
                             "task": task_fingerprint(task)},
            "argv": sys.argv}
    # The Run checks capabilities as it is built: build it first, so a bad input leaves no run dir.
    run = Run(task=task, strategy=strategy, target=target, optimizer=optimizer, budget=cfg.budget,
              seed=cfg.seed, log=None, seed_prompt=cfg.prompt, final_top_k=cfg.final_top_k,
              max_failures=cfg.max_failures, test_limit=cfg.test_limit, on_step=on_step,
              demos=cfg.demos, callbacks=callbacks, objectives=cfg.objectives,
              objective_weights=cfg.objective_weights)
    if resume_dir is None:
        log = RunLog(new_run_dir(Path(cfg.run_dir), meta, cfg.run_name))
        log.session("run.start", config=meta["config"], fingerprints=meta["fingerprints"])
    else:
        log = RunLog(resume_dir, resume=True)
        changed = _check_inputs(log, meta, accept_changed_inputs)
        log.session("run.resume", recorded_events=len(log.recorded), **({"accepted_changes": changed} if changed else {}))
        run.tracker.elapsed_before = log.elapsed_before  # a time budget spans resumes
    run.log = log
    return run, backends


def warn_reused_splits(task: Task) -> list[str]:
    """Warn (log) when one split's examples are mostly another's (train given as dev): scores are then not held out."""
    from promptopt.metrics import reused_splits
    found = reused_splits(task.splits)
    for line in found:
        log.warning("task %s: %s", task.name, line)
    return found


def backend_stats(backends: Backends) -> dict[str, Any]:
    """Retries and failures by kind of each backend that counts them (e.g. openai), by fingerprint; two
    backends with one fingerprint (a target and an optimizer with other options) keep separate entries."""
    out: dict[str, Any] = {}
    for b in backends.cached:
        stats = getattr(b.inner, "stats", None)
        if isinstance(stats, dict):
            key, n = b.fingerprint(), 2
            while key in out:
                key, n = f"{b.fingerprint()} #{n}", n + 1
            out[key] = stats
    return out


def finish_run(run: Run, backends: Backends, started: float, *, partial: bool = False) -> Report:
    """The final report and summary.json. Ctrl-C during the report (or `partial`) writes the result so far
    instead, marked partial."""
    search_events = run.log.cursor if run.log else 0  # where the search ended: a stopped run resumes from here
    try:
        report = run.finish(started, partial=partial)
    except KeyboardInterrupt as e:
        if isinstance(e, Terminated):
            raise
        run.stop_reason = "interrupted"
        report = run.finish(started, partial=True)
    summary = report.to_json()
    summary["cache"] = {"hits": sum(b.hits for b in backends.cached),
                        "misses": sum(b.misses for b in backends.cached),
                        "model_batches": sum(b.inner_calls for b in backends.cached)}  # runs before: model_calls
    # Backends that count retries and failures by kind (e.g. openai) report them here.
    summary["backend_stats"] = backend_stats(backends)
    if run.log:
        run.log.session("run.end", stop_reason=report.stop_reason, best_id=report.best_id,
                        search_events=search_events)
        write_json_atomic(run.log.dir / SUMMARY, summary)
        run.log.close()
    report.search["cache"] = summary["cache"]
    run.callbacks.emit("on_run_end", run, report)
    return report


def run_config(cfg: RunConfig, *, resume_dir: Path | None = None,
               on_step: Callable[[Run], None] | None = None, accept_changed_inputs: bool = False,
               task_object: Task | None = None, callbacks: Sequence[Any] = ()) -> Report:
    started = time.monotonic()
    run, backends = prepare(cfg, resume_dir=resume_dir, on_step=on_step, accept_changed_inputs=accept_changed_inputs,
                            task_object=task_object, callbacks=callbacks)
    try:
        try:
            while run.step_once():
                pass
        except Terminated:
            raise
        except KeyboardInterrupt as e:  # Ctrl-C: the user wants the result so far
            run.stop_reason = "interrupted"
            return finish_run(run, backends, started, partial=isinstance(e, SkipReport))
        return finish_run(run, backends, started)
    except (RunStopped, BackendError, Terminated, MetricError) as e:  # an escaping BackendError is a fatal one
        raise _stopped(run, backends, e) from None


def _stopped(run: Run, backends: Backends, error: BaseException) -> RunStopped:
    """Close the log without a summary, so the run stays resumable, and say how to continue it."""
    why = "stopped by SIGTERM" if isinstance(error, Terminated) else str(error)
    if run.log is None:
        return RunStopped(why)
    try:
        run.log.session("run.stop", reason=why, failures=run.failures,
                        backend_stats=backend_stats(backends))
    except RunStopped:
        pass  # the log cannot be written (disk full): what it holds is intact, and that is what matters
    run.log.close()
    try:
        run.callbacks.emit("on_run_end", run, None)
    except RunStopped as e:
        log.warning("%s", e)
    how = (f"optimize(task=<the same task>, resume={str(run.log.dir)!r})" if run.task.meta.get("source") == "python"
           else f"promptopt optimize --resume {run.log.dir}")
    return RunStopped(f"{why}; the run is resumable: {how}")


def load_run_config(run_dir: str | Path) -> RunConfig:
    """The validated config a run was made with (its config.json): the one reader of it, used by resume,
    `evaluate --run`, `compare`, `report` and the benches."""
    d = Path(run_dir)
    try:
        meta = json.loads((d / CONFIG).read_text(encoding="utf-8"))
    except (FileNotFoundError, NotADirectoryError):
        raise ResumeError(f"{d} is not a run directory (no {CONFIG})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ResumeError(f"{d / CONFIG} is not valid JSON: {e}") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("config"), dict):
        raise ResumeError(f"{d / CONFIG} has no \"config\" object")
    return build_config(meta["config"])


def resume_config(run_dir: str | Path) -> RunConfig:
    """The config to continue an unfinished run (or one a stop condition ended) with."""
    d = Path(run_dir)
    cfg = load_run_config(d)
    if (d / SUMMARY).exists() and continuable(d / SUMMARY) is None:
        raise ResumeError(f"{d} already finished (see {d / SUMMARY})")
    return cfg


def optimize(task: str | Task = "demo", strategy: str = "paraphrase", *, model: str = "embedded", backend: str = "hf",
             optimizer_model: str | None = "embedded", optimizer_backend: str | None = None,
             budget: int | Mapping[str, Any] | None = None, seed: int = 0, resume: str | Path | None = None,
             callbacks: Sequence[Any] = (), mlflow: str | Path | None = None, progress: bool | None = None,
             **settings: Any) -> Report:
    """Run an optimization end to end and return its Report.

    `task`: a registered name, a spec file, or a Task built in Python (`promptopt.make_task`); config.json
    then records "python:<name>" and the task's fingerprint, and a resume needs the same Task passed again.
    `callbacks`: `promptopt.callbacks.Callback` instances (events, stop conditions).
    `budget`: caps the search (the final report scores on top of it): an int is scored examples, as the
    CLI's `--budget 500`; a mapping takes the CLI's names (examples, calls, tokens, seconds, usd) or
    Budget's fields (max_examples, ...).
    `mlflow`: a tracking URI (e.g. "./mlruns") to log the run to MLflow (the mlflow extra; see
    promptopt/integrations/mlflow_tracking.py), checked before the run starts.
    `progress`: the CLI's progress bar on stderr; by default shown when stderr is a terminal.
    `settings` are any other RunConfig fields (e.g. run_dir, strategy_options, task_options, cache)."""
    if mlflow is not None:
        from promptopt.integrations.mlflow_tracking import MlflowTracker
        callbacks = [*callbacks, MlflowTracker(mlflow)]
    task_object = task if isinstance(task, Task) else None
    if task_object is None and not isinstance(task, str):
        raise ConfigError(f"task must be a task name, a spec file or a Task (promptopt.make_task(examples, ...)), "
                          f"not {type(task).__name__}")
    if resume is not None:
        cfg = resume_config(resume)
        _check_task_object(cfg, task_object, resume)
        return _with_progress(progress, cfg, resume_dir=Path(resume),
                              accept_changed_inputs=settings.pop("accept_changed_inputs", False),
                              task_object=task_object, callbacks=callbacks)
    if task_object is not None:
        if "task_options" in settings:
            raise ConfigError("task_options are for a task loaded by name; a Task object carries its own settings")
        settings["task_options"] = {"fingerprint": task_fingerprint(task_object)}
        task = IN_MEMORY + task_object.name
    data: dict[str, Any] = {"task": task, "strategy": strategy, "seed": seed,
                            "target": {"backend": backend, "model": model}, **settings}
    if optimizer_model in (None, "none"):
        data["optimizer"] = None
    else:
        data["optimizer"] = {"backend": optimizer_backend or backend, "model": optimizer_model}
    if budget is not None:
        data["budget"] = budget_settings(budget)
    return _with_progress(progress, build_config(data), task_object=task_object, callbacks=callbacks)


def budget_settings(budget: Any) -> dict[str, Any]:
    """optimize()'s `budget` as Budget fields: an int is scored examples (as `--budget 500`), and a
    mapping may use the CLI's short names."""
    if isinstance(budget, bool) or not isinstance(budget, (int, Mapping)):
        raise ConfigError(f"budget must be a number of scored examples (budget=500) or a mapping such as "
                          f"{{'examples': 500, 'calls': 40}}, not {type(budget).__name__}")
    if isinstance(budget, int):
        return {"max_examples": budget}
    out = {}
    for key, value in budget.items():
        name = SHORT_NAMES.get(key, key)
        if name in out:
            raise ConfigError(f"budget: {key!r} and {name!r} are the same limit; give one")
        if name not in SHORT_NAMES.values():
            raise ConfigError(f"budget: unknown limit {key!r} (use {', '.join(SHORT_NAMES)}, or "
                              f"{', '.join(SHORT_NAMES.values())})")
        out[name] = value
    return out


def _with_progress(progress: bool | None, cfg: RunConfig, *, callbacks: Sequence[Any] = (), **kwargs: Any) -> Report:
    """run_config with the progress bar among the callbacks when asked (None: when stderr is a terminal)."""
    if progress is None:
        progress = sys.stderr.isatty()
    if not progress:
        return run_config(cfg, callbacks=callbacks, **kwargs)
    from promptopt.progress import ProgressBar
    bar = ProgressBar(cfg.budget.max_examples)
    try:
        return run_config(cfg, callbacks=[*callbacks, bar], **kwargs)
    finally:
        bar.close()


def _check_task_object(cfg: RunConfig, task: Task | None, run_dir: str | Path) -> None:
    """A run made with a Python-built task resumes only with that task (same fingerprint)."""
    recorded = cfg.task_options.get("fingerprint") if cfg.task.startswith(IN_MEMORY) else None
    if cfg.task.startswith(IN_MEMORY):
        if task is None:
            raise ResumeError(f"{run_dir} was made with a task built in Python ({cfg.task[len(IN_MEMORY):]!r}); "
                              "pass the same Task: optimize(task=task, resume=...)")
        got = task_fingerprint(task)
        if got != recorded:
            raise ResumeError(f"{run_dir}: the task passed is not the one the run was made with (its examples, "
                              f"template or options differ: {got} vs recorded {recorded}); pass the same task")
    elif task is not None:
        raise ResumeError(f"{run_dir} was made with task {cfg.task!r}; resume it without a Task object")


def evaluate(prompt: str, task: str | Task = "demo", *, split: str = "dev", model: str = "embedded",
             backend: str = "hf", backend_options: Mapping[str, Any] | None = None, data_dir: str | None = None,
             limit: int | None = None, cache: bool = True, seed: int = 0,
             task_options: Mapping[str, Any] | None = None, target: Backend | None = None) -> Evaluation:
    """Score one prompt on a split of a task (through the cache unless cache=False)."""
    t = task if isinstance(task, Task) else load_task(task, data_dir=data_dir, seed=seed, options=task_options)
    warn_reused_splits(t)
    examples = tuple(t.split(split))
    if not examples:
        raise ConfigError(f"task {t.name} has no {split} examples")
    if limit is not None:
        if limit < 1:  # examples[:-3] would quietly drop three, [:0] score nothing
            raise ConfigError(f"limit must be at least 1, got {limit}")
        examples = tuple(test_sample(examples, limit)) if split == "test" else examples[:limit]
    if target is None:
        inner = registry.get("backends", backend)(model=model, **dict(backend_options or {}))
        target = CachedBackend(inner, ResponseCache(default_cache_path()) if cache else None)
    from promptopt.types import prompt_id
    return score_jobs(t, target, [Job(prompt_id(prompt), prompt, split, examples)])[0]

