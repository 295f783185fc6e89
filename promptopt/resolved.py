"""The one resolution step: a RunConfig becomes a ResolvedRun, the task, the strategy with its validated
config, the target and optimizer backends as specs (name, model, options; not loaded), the budget and
the final report's plan. `optimize` builds the backends and runs it (api.prepare); `--dry-run` prints it
(cli/plan.py); neither resolves anything on its own, so the plan cannot disagree with the run.
Resolving reads the task's data but loads no model."""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from promptopt import registry
from promptopt.backends.base import Backend
from promptopt.budget import Budget
from promptopt.scoring.cache import default_cache_path
from promptopt.config import ModelConfig, RunConfig, backend_options, strategy_config
from promptopt.measure import final_pick
from promptopt.measure.final_pick import FinalConfig
from promptopt.task.data import test_sample
from promptopt.errors import CapabilityError, ConfigError
from promptopt.strategy import Strategy, StrategyConfig, check_task, needs
from promptopt.task import Task
from promptopt.task.from_examples import IN_MEMORY

TASK_FILE_SUFFIXES = (".toml", ".yaml", ".yml")
LMEVAL = "lmeval:"  # `--task lmeval:PATH_OR_NAME`: the task plugin named "lmeval" (the lmeval extra)
log = logging.getLogger("promptopt")


def load_task(name: str, *, data_dir: str | None = None, seed: int = 0, options: Mapping[str, Any] | None = None) -> Task:
    """A registered task by name, or a custom task from a spec file path."""
    opts = dict(options or {})
    # demo_format=turns|inline: how demos reach a chat model (Task.chat_demos), an option of every task
    chat_demos = opts.pop("demo_format") if opts.get("demo_format") in ("turns", "inline") else None
    if chat_demos is not None:
        return dataclasses.replace(load_task(name, data_dir=data_dir, seed=seed, options=opts), chat_demos=chat_demos)
    if name.startswith(IN_MEMORY):
        raise ConfigError(f"task {name!r} was built in Python (promptopt.make_task), so it cannot be loaded by "
                          "name; pass the same Task object (optimize(task=task, resume=RUN), evaluate(prompt, task))")
    if name.startswith(LMEVAL):
        factory = registry.get("tasks", "lmeval")
        opts["spec"] = name[len(LMEVAL):]
    elif name.endswith(TASK_FILE_SUFFIXES) or Path(name).is_file():
        factory = registry.get("tasks", "custom")
        opts["spec"] = name
    else:
        factory = registry.get("tasks", name)
    return factory(data_dir=data_dir, seed=seed, **opts)


def warn_reused_splits(task: Task) -> list[str]:
    """Warn (log) when one split's examples are mostly another's (train given as dev): scores are then not held out."""
    from promptopt.measure.metrics import reused_splits
    found = reused_splits(task.splits)
    for line in found:
        log.warning("task %s: %s", task.name, line)
    return found


def optimizer_config(strategy_cls: Any, cfg: RunConfig) -> ModelConfig | None:
    """The optimizer model a run of this strategy uses, or None; refuses a strategy that needs one
    when none is configured."""
    wants = needs(strategy_cls)
    if wants.optimizer:
        if cfg.optimizer is None:
            raise CapabilityError(f"strategy {strategy_cls.__name__} needs an optimizer model; pass --optimizer-model")
        return cfg.optimizer
    return cfg.optimizer if wants.uses_optimizer else None


@dataclass(frozen=True)
class BackendSpec:
    """A backend by name with its model and options, checked by the backend's `Options`; not loaded."""

    config: ModelConfig
    cls: Any  # the registered backend class
    options: Any  # its validated `Options`, or None for a backend that declares none

    @classmethod
    def of(cls, config: ModelConfig, role: str) -> "BackendSpec":
        """`role` ("target", "optimizer") names the model in an error."""
        backend_cls = registry.get("backends", config.backend)
        return cls(config, backend_cls, backend_options(backend_cls, config, role))

    def urls(self) -> list[str]:
        """The servers its requests go to (none for a local model)."""
        return list(self.options.urls()) if self.options is not None else []

    def describe(self) -> str:
        """backend:model, and the server URLs it would be sent to (so a user sees where a key would go)."""
        urls = self.urls()
        return f"{self.config.backend}:{self.config.model}" + (f" at {', '.join(urls)}" if urls else "")

    def build(self) -> Backend:
        """Load it: the backend validates its options and loads the model (or connects)."""
        backend: Backend = self.cls(model=self.config.model, **self.config.options)
        return backend


@dataclass(frozen=True)
class FinalPlan:
    """What the final report scores, at most: the top_k finalists and the seed on the whole dev split (and,
    with final.pick=kfold, on the pool's train examples and their refit prompts on the held-out folds), then
    the best and the seed on the test sample
    (and, with a selector, the test inputs it routes to other finalists). `counted`: the part the example
    budget pays for (promptopt/final_pick.py)."""

    top_k: int
    dev: int
    test: int  # the test sample's size (after --test-limit)
    test_of: int  # the whole test split's
    rule: FinalConfig = field(default_factory=FinalConfig)
    train: int = 0  # the train split's size

    @property
    def examples_at_most(self) -> int:
        return (final_pick.scored_examples(self.rule, self.top_k + 1, self.dev, self.train) + 2 * self.test
                + (self.test if self.rule.selector != "none" else 0))

    @property
    def counted(self) -> int:
        return final_pick.counted_examples(self.rule, self.top_k + 1, self.dev, self.train)

    def describe(self) -> str:
        return final_pick.describe(self.rule, self.top_k + 1, self.dev, self.train)


@dataclass(frozen=True)
class ResolvedRun:
    """Everything a run is made of, resolved. `Run` takes it, with the backends built from the specs
    (or, built in Python, backend objects of the caller's). Hand-built ones leave the specs None."""

    task: Task
    strategy: Strategy
    strategy_config: StrategyConfig | None = None  # None when the strategy object was passed in
    target: BackendSpec | None = None
    optimizer: BackendSpec | None = None  # None: the strategy runs without an optimizer LLM
    budget: Budget = field(default_factory=Budget)
    seed: int = 0
    prompt: str | None = None  # a user's seed prompt (--prompt); None: the task's first
    final_top_k: int = 3
    final_rule: FinalConfig = field(default_factory=FinalConfig)  # how the final report picks (final_pick.py)
    max_failures: int = 20
    test_limit: int | None = None
    demos: int = 0
    objectives: tuple[str, ...] = ("task",)
    objective_weights: Mapping[str, float] = field(default_factory=dict)
    run_dir: Path = Path("runs")  # where a new run's directory is made
    run_name: str | None = None
    cache_path: Path | None = None  # the response cache; None: off
    strategy_name: str = ""  # its registered name, when resolved from a config
    # The task's prompt as named components, or one system prompt over several tasks
    # (promptopt.harness.tasks.TaskComponents); None: one prompt, as always.
    components: Any = None

    @property
    def seed_prompt(self) -> str:
        """Where the search starts: the user's prompt, else the task's first seed prompt."""
        return self.prompt if self.prompt is not None else self.task.seed_prompts[0]  # "": no instruction

    @property
    def final(self) -> FinalPlan:
        return FinalPlan(self.final_top_k, len(self.task.split("dev")),
                         len(test_sample(self.task.split("test"), self.test_limit)), len(self.task.split("test")),
                         self.final_rule, len(self.task.split("train")))


def _components(cfg: RunConfig, task: Task | None) -> Any:
    """The components program of `--components` or of several tasks (`--task a,b,c`), or None."""
    from promptopt.harness.tasks import TaskComponents, check_components, task_list
    names = task_list(cfg.task) if task is None else [task.name]
    if not cfg.components and len(names) == 1:
        return None
    check_components(cfg.components, names)  # before any data is read
    if len(names) > 1 and cfg.prompt is not None:
        raise ConfigError("--prompt: a shared system prompt starts from a plain one, and each task keeps its "
                          "own instruction; drop --prompt")
    tasks = [task] if task is not None else [load_task(n, data_dir=cfg.data_dir, seed=cfg.seed,
                                                       options=cfg.task_options) for n in names]
    if len({t.name for t in tasks}) != len(tasks):
        raise ConfigError(f"--task {cfg.task}: two of these are the same task ({', '.join(t.name for t in tasks)})")
    return TaskComponents({t.name: t for t in tasks}, cfg.components, instruction=cfg.prompt,
                          test_limit=cfg.test_limit)


def resolve(cfg: RunConfig, *, task: Task | None = None) -> ResolvedRun:
    """`cfg` resolved: the task loaded (or `task`, one built in Python), the strategy built from its checked
    config, the backends looked up and their options checked. Raises what a run refuses before any model loads."""
    strategy_cls = registry.get("strategies", cfg.strategy)
    settings = strategy_config(strategy_cls, cfg.strategy_options)
    strategy = strategy_cls(settings)
    components = _components(cfg, task)
    if components is not None:
        task = components.task
    elif task is None:
        task = load_task(cfg.task, data_dir=cfg.data_dir, seed=cfg.seed, options=cfg.task_options)
    warn_reused_splits(task)
    check_task(strategy, task.without_test())  # settings the task cannot carry: refused before any model loads
    optimizer = optimizer_config(strategy_cls, cfg)
    target = BackendSpec.of(cfg.target, "target")
    if needs(strategy_cls).local_target and target.urls():  # refused before any request goes out
        raise CapabilityError(f"strategy {cfg.strategy} computes gradients on a local model, so the target must be "
                              f"one too; {target.describe()} is an API (use --backend hf)")
    run = ResolvedRun(
        task=task, strategy=strategy, strategy_config=settings, strategy_name=cfg.strategy,
        target=target,
        optimizer=BackendSpec.of(optimizer, "optimizer") if optimizer is not None else None,
        budget=cfg.budget, seed=cfg.seed, prompt=cfg.prompt, final_top_k=cfg.final_top_k, final_rule=cfg.final,
        max_failures=cfg.max_failures, demos=cfg.demos, components=components,
        test_limit=None if components is not None and components.shared else cfg.test_limit,  # applied per task
        objectives=tuple(cfg.objectives), objective_weights=dict(cfg.objective_weights),
        run_dir=Path(cfg.run_dir), run_name=cfg.run_name,
        cache_path=(Path(cfg.cache_path) if cfg.cache_path else default_cache_path()) if cfg.cache else None)
    final_pick.search_examples(run.budget.max_examples, run.final.counted)  # a pick leaving no search: refused
    return run
