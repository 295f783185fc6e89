"""Python API: build a run from a RunConfig, run it to the end (or resume it), evaluate prompts."""
from __future__ import annotations

import dataclasses
import json
import logging
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from promptopt import __version__, registry
from promptopt.scoring import routes
from promptopt.backends.base import Backend, canonical_hash
from promptopt.scoring.cache import CachedBackend, ResponseCache, default_cache_path
from promptopt.config import BUDGET_LIMITS, NONE_MODEL, RunConfig, build_config
from promptopt.task.data import test_sample
from promptopt.errors import BackendError, ConfigError, ResumeError, RunStopped, SkipReport, Terminated
from promptopt.loop import Report, Run
from promptopt.resolved import BackendSpec, ResolvedRun, load_task, resolve, warn_reused_splits
from promptopt.measure.selector import SELECTOR_FILE
from promptopt.runlog import CONFIG, SUMMARY, RunLog, continuable, new_run_dir, write_json_atomic
from promptopt.scoring import candidates
from promptopt.scoring.scorer import score_jobs
from promptopt.task.retrieval import Retriever, check_policy
from promptopt.task import Task
from promptopt.task.from_examples import IN_MEMORY, MetricError
from promptopt.types import Candidate, Evaluation


log = logging.getLogger("promptopt")


class Backends:
    """Creates each distinct backend once (target and optimizer share one when identical)."""

    def __init__(self, cache: ResponseCache | None):
        self.cache = cache
        self._made: dict[str, Backend] = {}
        self.cached: list[CachedBackend] = []

    def get(self, spec: BackendSpec) -> Backend:
        key = spec.config.model_dump_json()
        if key not in self._made:
            inner = spec.build()
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


def task_fingerprint(task: Task) -> str:
    """A hash of what the task scores: every example of every split, its template, options and seed prompts."""
    splits = {s: [[ex.id, ex.input, ex.target, ex.label, dict(ex.fields)] for ex in task.split(s)]
              for s in ("train", "dev", "test")}
    data = {"splits": splits, "template": task.template, "options": list(task.options or ()),
            "seed_prompts": list(task.seed_prompts)}
    if task.corpus_metric is not None:  # only when set, so the fingerprints of earlier runs stay
        data["corpus_metric"] = task.corpus_metric
    return "sha256:" + canonical_hash(data)


def templates_fingerprint(settings: Any) -> dict[str, str]:
    """{"templates": hash} of the meta-prompts a strategy's settings put in use (the defaults, or the user's
    prompt_files), {} for a strategy without any: a template file edited between a stop and --resume, or a
    default changed by an upgrade, is caught like changed task data."""
    templates = getattr(settings, "templates", None)
    texts = templates() if callable(templates) else {}
    return {"templates": "sha256:" + canonical_hash(texts)} if texts else {}


def with_added_defaults(recorded: Mapping[str, Any], current: Mapping[str, Any],
                        defaults: Mapping[str, Any]) -> dict[str, Any]:
    """`recorded` plus the settings of `current` it lacks that are at their default, at any depth (a
    setting added to a nested block such as `final` since the run started)."""
    out = dict(recorded)
    for key, value in current.items():
        default = defaults.get(key)
        if key not in recorded:
            if value == default:
                out[key] = value
        elif isinstance(value, dict) and isinstance(recorded[key], dict) and isinstance(default, dict):
            out[key] = with_added_defaults(recorded[key], value, default)
    return out


def _check_inputs(log: RunLog, meta: Mapping[str, Any], accept: bool) -> list[str]:
    """What changed since the run started (its config.json against the checksummed run.start event, and
    the task data and models against their recorded fingerprints). Refused unless `accept`."""
    start = next((s for s in log.sessions if s["type"] == "run.start"), None)
    if start is None:
        return []
    recorded = start.get("config")
    if isinstance(recorded, dict):  # a setting added since the run started, at its default, changes nothing
        recorded = with_added_defaults(recorded, meta["config"], RunConfig().model_dump(mode="json"))
    changed = [] if recorded == meta["config"] else ["config.json differs from the config recorded at start"]
    for what, old in (start.get("fingerprints") or {}).items():
        new = meta["fingerprints"].get(what)
        if old != new:
            thing = {"task": "task data", "templates": "meta-prompt templates"}.get(what, f"{what} model")
            changed.append(f"{thing} changed ({old} -> {new})")
    if changed and not accept:
        log.close()
        raise ResumeError(f"{log.dir}: its inputs changed since it started: {'; '.join(changed)}; a resume would "
                          "mix results of both. Restore them, or pass --accept-changed-inputs")
    return changed


def prepare(cfg: RunConfig, *, resume_dir: Path | None = None,
            on_step: Callable[[Run], None] | None = None,
            accept_changed_inputs: bool = False, task_object: Task | None = None,
            callbacks: Sequence[Any] = (), program: Any = None) -> tuple[Run, Backends]:
    """Resolve `cfg` (what --dry-run prints), create (or reopen) the run dir, load the models, and return
    a ready Run. `task_object`: a Task built in Python (cfg.task is then "python:<name>"). `program`: a
    promptopt.harness.program.Program, whose evaluator scores instead of the target model (none is loaded)."""
    from promptopt.harness.program import ProgramScorer
    from promptopt.harness.tasks import TaskScorer
    if program is not None:
        task_object = program.task
    resolved = resolve(cfg, task=task_object)
    backends = Backends(ResponseCache(resolved.cache_path) if resolved.cache_path else None)
    assert resolved.target is not None  # for the type checker: resolve() always names the target
    if resume_dir is not None:
        resolved = _keep_recorded_route(resolved, resume_dir)
    # first: a target that cannot load is the first thing to report
    target = backends.get(resolved.target) if program is None else None
    optimizer = backends.get(resolved.optimizer) if resolved.optimizer is not None else None
    parts = resolved.components  # --components: the task's prompt as named components (harness/tasks.py)
    meta = {"config": cfg.model_dump(mode="json"), "versions": _versions(), "git_sha": _git_sha(),
            "fingerprints": {"target": target.fingerprint() if target is not None else f"program:{program.version}",
                             "optimizer": optimizer.fingerprint() if optimizer else None,
                             "task": task_fingerprint(resolved.task), **templates_fingerprint(resolved.strategy_config)},
            # the route a choose task takes on this target (a shared run: each task's)
            "scoring": parts.routes(target) if parts is not None and parts.shared else routes.describe(resolved.task, target),
            "argv": sys.argv}
    scorer: Any = ProgramScorer(program, backends.cache) if program is not None else None
    if parts is not None:
        assert target is not None
        parts.check_target(target)
        scorer = TaskScorer(parts, target)
    # The Run checks capabilities as it is built: build it first, so a bad input leaves no run dir. A shared
    # run's union of tasks is no task a model scores: the scorer alone holds the target (checked above).
    run = Run(resolved, target=None if parts is not None and parts.shared else target, optimizer=optimizer,
              on_step=on_step, callbacks=callbacks, program=scorer)
    if resume_dir is None:
        log = RunLog(new_run_dir(resolved.run_dir, meta, resolved.run_name))
        log.session("run.start", config=meta["config"], fingerprints=meta["fingerprints"])
    else:
        log = RunLog(resume_dir, resume=True)
        changed = _check_inputs(log, meta, accept_changed_inputs)
        log.session("run.resume", recorded_events=len(log.recorded), **({"accepted_changes": changed} if changed else {}))
        run.tracker.elapsed_before = log.elapsed_before  # a time budget spans resumes
    run.log = log
    return run, backends


def _keep_recorded_route(resolved: ResolvedRun, run_dir: Path) -> ResolvedRun:
    """A resumed run scores by the route each model started with (the `|route:X` its recorded fingerprint
    ends in; none means loglikelihood): the start-up probe is not trusted again, since an echo probe that
    failed once under faults must not move the run to another route halfway. A server that can no longer
    serve that route is then refused in one line, never silently re-routed."""
    try:
        recorded = json.loads((run_dir / CONFIG).read_text(encoding="utf-8")).get("fingerprints") or {}
    except (OSError, ValueError):
        return resolved  # the resume's own checks report an unreadable config.json
    specs = {}
    for role in ("target", "optimizer"):
        spec, fingerprint = getattr(resolved, role), recorded.get(role)
        fields = getattr(type(spec.options), "model_fields", {}) if spec is not None else {}
        if (spec is None or not isinstance(fingerprint, str) or "choose_route" not in fields
                or spec.config.options.get("choose_route", "auto") != "auto"):
            continue
        route = fingerprint.rpartition("|route:")[2] if "|route:" in fingerprint else "loglikelihood"
        config = spec.config.model_copy(update={"options": {**spec.config.options, "choose_route": route}})
        specs[role] = BackendSpec(config, spec.cls, spec.options)
    return dataclasses.replace(resolved, **specs) if specs else resolved


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
    parts = run.resolved.components
    if parts is not None and parts.shared and not report.partial:  # each task on its own, and their mean
        report.final["tasks"] = parts.breakdown(run.history, parts.seed, run.history.candidate(report.best_id))
    elif parts is not None and report.best_id in run.history:  # the whole prompt, system text included
        report.best_prefix = parts.prefix(run.history.candidate(report.best_id))
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
        if run.learned_selector is not None and report.selector:  # routes new inputs: promptopt.load_selector
            write_json_atomic(run.log.dir / SELECTOR_FILE, run.learned_selector.to_json())
        run.log.close()
    report.search["cache"] = summary["cache"]
    run.callbacks.emit("on_run_end", run, report)
    return report


def run_config(cfg: RunConfig, *, resume_dir: Path | None = None,
               on_step: Callable[[Run], None] | None = None, accept_changed_inputs: bool = False,
               task_object: Task | None = None, callbacks: Sequence[Any] = (), program: Any = None) -> Report:
    started = time.monotonic()
    run, backends = prepare(cfg, resume_dir=resume_dir, on_step=on_step, accept_changed_inputs=accept_changed_inputs,
                            task_object=task_object, callbacks=callbacks, program=program)
    return drive(run, backends, started)


def drive(run: Run, backends: Backends, started: float) -> Report:
    """A prepared run to its end: the search, then the final report (or, stopped, a resumable log)."""
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
    what = "program=<the same program>" if run.program is not None else "task=<the same task>"
    in_python = run.task.meta.get("source") == "python" and load_run_config(run.log.dir).program is None
    how = (f"optimize({what}, resume={str(run.log.dir)!r})" if in_python  # a --program run resumes from the CLI too
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
             optimizer_model: str | None = "", optimizer_backend: str | None = None,
             budget: int | Mapping[str, Any] | None = None, seed: int = 0, resume: str | Path | None = None,
             callbacks: Sequence[Any] = (), mlflow: str | Path | None = None, progress: bool | None = None,
             program: Any = None,
             **settings: Any) -> Report:
    """Run an optimization end to end and return its Report.

    `task`: a registered name, a spec file, or a Task built in Python (`promptopt.make_task`); config.json
    then records "python:<name>" and the task's fingerprint, and a resume needs the same Task passed again.
    `optimizer_model`, `optimizer_backend`: the optimizer LLM; each is the target's unless given, and
    `optimizer_model=None` (or "none") runs without one.
    `callbacks`: `promptopt.callbacks.Callback` instances (events, stop conditions).
    `budget`: caps the search (the final report scores on top of it): an int is scored examples, as the
    CLI's `--budget 500`; a mapping takes the CLI's names (examples, calls, tokens, seconds, usd) or
    Budget's fields (max_examples, ...).
    `mlflow`: a tracking URI (e.g. "./mlruns") to log the run to MLflow (the mlflow extra; see
    promptopt/integrations/mlflow_tracking.py), checked before the run starts.
    `progress`: the CLI's progress bar on stderr; by default shown when stderr is a terminal.
    `program`: a `promptopt.Program` (components, examples, your evaluator) to optimize instead of a task;
    its evaluator scores every candidate (no target model is loaded; the optimizer model is still used).
    `components=["system", "instruction"]` (a setting): the task's prompt as a system prompt and the instruction,
    optimized apart; `task="sst2,trec,cr", components=["system"]`: one system prompt shared by the tasks
    (promptopt/harness/tasks.py; the report's `final["tasks"]` gives each task).
    `settings` are any other RunConfig fields (e.g. run_dir, strategy_options, task_options, cache)."""
    if mlflow is not None:  # the tracker is a plugin (integrations/mlflow_tracking.py), found by name
        callbacks = [*callbacks, registry.get("callbacks", "mlflow")(mlflow)]
    if program is not None:
        return _optimize_program(program, strategy, model=model, backend=backend, optimizer_model=optimizer_model,
                                 optimizer_backend=optimizer_backend, budget=budget, seed=seed, resume=resume,
                                 callbacks=callbacks, progress=progress, settings=settings)
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
    if optimizer_model is None or optimizer_model == NONE_MODEL:
        data["optimizer"] = None
    else:  # what is not named here is the target's (RunConfig's rule)
        data["optimizer"] = {k: v for k, v in (("model", optimizer_model), ("backend", optimizer_backend)) if v}
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
    fields = [field for field, _ in BUDGET_LIMITS.values()]
    out = {}
    for key, value in budget.items():
        name = BUDGET_LIMITS[key][0] if key in BUDGET_LIMITS else key
        if name in out:
            raise ConfigError(f"budget: {key!r} and {name!r} are the same limit; give one")
        if name not in fields:
            raise ConfigError(f"budget: unknown limit {key!r} (use {', '.join(BUDGET_LIMITS)}, or {', '.join(fields)})")
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


def program_config(program: Any, strategy: str, *, model: str = "embedded", backend: str = "hf",
                   optimizer_model: str | None = "", optimizer_backend: str | None = None,
                   budget: int | Mapping[str, Any] | None = None, seed: int = 0,
                   settings: Mapping[str, Any] | None = None) -> RunConfig:
    """The RunConfig of a program run: the program's task as "python:<name>" with the program's fingerprint,
    and the program's evaluator as the target (promptopt.harness.program.EvaluatorTarget: nothing to load). `model`
    and `backend` name the optimizer model unless `optimizer_model` / `optimizer_backend` do."""
    settings = dict(settings or {})
    if "task_options" in settings:
        raise ConfigError("task_options are for a task loaded by name; a program carries its own settings")
    data: dict[str, Any] = {"strategy": strategy, "seed": seed, **program_fields(program), **settings}
    if optimizer_model is None or optimizer_model == NONE_MODEL:
        data["optimizer"] = None
    else:
        data["optimizer"] = {"model": optimizer_model or model, "backend": optimizer_backend or backend}
    if budget is not None:
        data["budget"] = budget_settings(budget)
    return build_config(data)


def program_fields(program: Any) -> dict[str, Any]:
    """The RunConfig fields that make a run a program's: its task as "python:<name>" with the program's
    fingerprint, and its evaluator as the target."""
    from promptopt.harness.program import TARGET
    return {"task": IN_MEMORY + program.name, "target": {"backend": TARGET, "model": program.name},
            "task_options": {"fingerprint": program.fingerprint, "program": True}}


def check_program(cfg: RunConfig, program: Any, run_dir: str | Path) -> None:
    """A program run resumes only with the same program (examples, seed components, roles, version)."""
    if not cfg.task_options.get("program"):
        raise ResumeError(f"{run_dir} was not made with a program; resume it as it was made")
    if program.fingerprint != cfg.task_options.get("fingerprint"):
        raise ResumeError(f"{run_dir}: the program passed is not the one the run was made with (its examples, "
                          "components, roles or evaluator version differ); pass the same program")


def _optimize_program(program: Any, strategy: str, *, resume: str | Path | None, callbacks: Sequence[Any],
                      progress: bool | None, settings: dict[str, Any], **how: Any) -> Report:
    if program.evaluate is None:
        raise ConfigError("this program has no evaluator: pass evaluate=..., or score its trials yourself "
                          "with promptopt.Study(program)")
    if resume is not None:
        cfg = resume_config(resume)
        check_program(cfg, program, resume)
        return _with_progress(progress, cfg, resume_dir=Path(resume), callbacks=callbacks, program=program,
                              accept_changed_inputs=settings.pop("accept_changed_inputs", False))
    return _with_progress(progress, program_config(program, strategy, settings=settings, **how), callbacks=callbacks,
                          program=program)


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
    return evaluate_candidate(Candidate(prompt), task, split=split, model=model, backend=backend,
                              backend_options=backend_options, data_dir=data_dir, limit=limit, cache=cache, seed=seed,
                              task_options=task_options, target=target)


def evaluate_candidate(cand: Candidate, task: str | Task = "demo", *, split: str = "dev", model: str = "embedded",
                       backend: str = "hf", backend_options: Mapping[str, Any] | None = None,
                       data_dir: str | None = None, limit: int | None = None, cache: bool = True, seed: int = 0,
                       task_options: Mapping[str, Any] | None = None, target: Backend | None = None) -> Evaluation:
    """Score a candidate (a run's, or one built here) on a split as a run scores it: its system prompt and
    demos (train ids) with the instruction, apart for a chat model, and a retrieval policy's demos retrieved
    from the train split for each input."""
    t = task if isinstance(task, Task) else load_task(task, data_dir=data_dir, seed=seed, options=task_options)
    warn_reused_splits(t)
    examples = tuple(t.split(split))
    if not examples:
        raise ConfigError(f"task {t.name} has no {split} examples")
    if limit is not None:
        if limit < 1:  # examples[:-3] would quietly drop three, [:0] score nothing
            raise ConfigError(f"limit must be at least 1, got {limit}")
        examples = tuple(test_sample(examples, limit)) if split == "test" else examples[:limit]
    if cand.components:
        raise ConfigError(f"candidate {cand.id} is a program of named components: its own evaluator scores it")
    candidates.check_shape(cand)
    demos_by_id = {ex.id: ex for s in ("train", "dev") for ex in t.split(s)}  # a run's demo ids, under any --seed
    missing = [d for d in cand.demos if d not in demos_by_id]
    if missing:
        raise ConfigError(f"candidate {cand.id}: demo id(s) {missing[:3]} are not in task {t.name}'s train or dev split")
    cache_path = default_cache_path()
    if target is None:
        inner = registry.get("backends", backend)(model=model, **dict(backend_options or {}))
        target = CachedBackend(inner, ResponseCache(cache_path) if cache else None)
    retriever = None
    if cand.retrieval is not None:
        check_policy(cand.retrieval, t.split("train"), target)
        retriever = Retriever(t.split("train"), target, cache_path.parent / "embeddings" if cache else None)
    jobs, _ = candidates.jobs(t, cand, split, examples, demos_by_id, retriever)
    return candidates.merged(score_jobs(t, target, jobs), [ex.id for ex in examples])
