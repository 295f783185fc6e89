"""Run configuration: defaults < --config file.toml < flags < --set a.b=c, validated before any model loads."""
from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path
from typing import Any, Mapping

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from promptopt import registry
from promptopt.budget import Budget
from promptopt.task.data import lone_surrogate
from promptopt.errors import ConfigError
from promptopt.measure.final_pick import FinalConfig
from promptopt.measure.objectives import check_objectives, check_weights
from promptopt.paths import has_password, read_text, redact

NONE_MODEL = "none"  # --optimizer-model none / optimize(optimizer_model="none"): no optimizer LLM
# The budget's limits by short name (--budget examples=500,calls=40), written once:
# short name -> (Budget field, how the dry-run plan names it).
BUDGET_LIMITS = {"examples": ("max_examples", "examples"), "calls": ("max_optimizer_calls", "optimizer calls"),
                 "tokens": ("max_tokens", "tokens"), "seconds": ("max_seconds", "seconds"), "usd": ("max_usd", "USD")}

_SECRET_KEY = re.compile(r"(api_?key|secret|password|token)$", re.I)


class ModelConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    backend: str = "hf"
    model: str = "embedded"
    options: dict[str, Any] = Field(default_factory=dict)

    @field_validator("options")
    @classmethod
    def _no_secrets(cls, options: dict[str, Any]) -> dict[str, Any]:
        # Options are saved in config.json and the run log: secrets must come from the environment.
        for key, value in options.items():
            if _SECRET_KEY.search(key):
                raise ValueError(f"{key!r} looks like a secret; put it in an environment variable and "
                                 f"name that variable instead (e.g. api_key_env=MY_KEY_VAR)")
            for text in value if isinstance(value, list) else [value]:
                if isinstance(text, str) and has_password(text):
                    raise ValueError(f"{key!r} has a password in its URL ({redact(text)}); URLs are saved "
                                     "with the run and printed: put the key in an environment variable and "
                                     "name it with api_key_env")
        return options


class RunConfig(BaseModel):
    """Everything that defines a run. Saved as config.json; resume rebuilds the run from it.

    `seed` has four jobs (docs/architecture.md, "The run seed's jobs"): (1) tasks that carve dev out of
    train (gsm8k, liar, custom) carve and sample with it; (2) the loop's order of each of train and dev,
    which "n more unseen examples" walks (`Random(f"{seed}:{split}")`); (3) the strategy's `ctx.rng`
    (`Random(seed)`) and the `--demos` draw; (4) the seeds of sampled optimizer calls. It does not pick
    the test sample: `data.test_sample` uses a fixed seed, so runs differing in seed share test examples."""

    model_config = ConfigDict(extra="forbid")

    task: str = "demo"
    task_options: dict[str, Any] = Field(default_factory=dict)
    strategy: str = "paraphrase"
    strategy_options: dict[str, Any] = Field(default_factory=dict)
    target: ModelConfig = Field(default_factory=ModelConfig)
    # The optimizer is the target model unless named: see _optimizer_defaults_to_the_target.
    optimizer: ModelConfig | None = Field(default_factory=ModelConfig)
    budget: Budget = Field(default_factory=Budget)
    seed: int = Field(0, strict=True)  # `--set seed=true` is not seed 1
    prompt: str | None = None  # overrides the task's seed prompt
    run_dir: str = "runs"
    run_name: str | None = Field(None, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")  # one path component
    data_dir: str | None = None
    cache: bool = True
    cache_path: str | None = None
    final_top_k: int = Field(3, ge=1)
    final: FinalConfig = Field(default_factory=FinalConfig)
    max_failures: int = Field(20, ge=1)
    test_limit: int | None = Field(None, ge=1)
    demos: int = Field(0, ge=0, description="train demos every seed candidate carries (label-balanced draw)")
    plugins: list[str] = Field(default_factory=list)
    # Run objectives (promptopt/measure/objectives.py): what the final report chooses by; ["task"] = as always.
    objectives: list[str] = Field(default_factory=lambda: ["task"])
    objective_weights: dict[str, float] = Field(default_factory=dict)
    # The task's prompt as named components (promptopt/harness/tasks.py): [] = one prompt, as always;
    # ["system", "instruction"] optimizes the two apart; ["system"] with task "a,b,c": one shared system prompt.
    components: list[str] = Field(default_factory=list)
    # A program run started from the CLI: where its Program object is (file.py:NAME, module:NAME), so
    # --resume imports it again (promptopt/harness/program.py, load_program).
    program: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _optimizer_defaults_to_the_target(cls, data: Any) -> Any:
        """The one place the rule is written: the optimizer's backend and model, each unless named, are
        the target's (`optimizer = None` or --optimizer-model none: no optimizer LLM)."""
        if not isinstance(data, dict):
            return data
        optimizer = data.get("optimizer", {})
        if optimizer is None or isinstance(optimizer, ModelConfig) or not isinstance(optimizer, dict):
            return data  # none, already whole, or not a section (validation says so)
        target = data.get("target") or {}
        if isinstance(target, ModelConfig):
            target = target.model_dump()
        if not isinstance(target, dict):
            return data
        named = {k: target[k] for k in ("backend", "model") if k in target}
        return {**data, "optimizer": {**named, **optimizer}}

    @field_validator("objectives")
    @classmethod
    def _known_objectives(cls, names: list[str]) -> list[str]:
        return check_objectives(names)

    @model_validator(mode="after")
    def _weights_of_objectives(self) -> "RunConfig":
        check_weights(self.objective_weights, self.objectives)
        return self

    @model_validator(mode="after")
    def _final_rule_by_the_task_metric(self) -> "RunConfig":
        if not self.final.default and self.objectives != ["task"]:
            raise ValueError("final.pick=kfold, final.keep_seed_alpha and final.selector choose by the task "
                             "metric; they cannot be combined with objectives other than task")
        return self

    @field_validator("components", mode="before")
    @classmethod
    def _comma_list(cls, value: Any) -> Any:
        return [x.strip() for x in value.split(",") if x.strip()] if isinstance(value, str) else value

    @field_validator("prompt")
    @classmethod
    def _encodable(cls, prompt: str | None) -> str | None:
        bad = lone_surrogate(prompt)
        if bad:  # it would crash the first model call, mid-run
            raise ValueError(bad)
        return prompt


def parse_value(text: str) -> Any:
    """`--set` values: JSON when it parses (numbers, true/false, null, lists), else the raw string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _set_path(d: dict[str, Any], path: list[str], value: Any) -> None:
    for key in path[:-1]:
        nxt = d.setdefault(key, {})
        if not isinstance(nxt, dict):
            raise ConfigError(f"--set {'.'.join(path)}: {key} is not a section")
        d = nxt
    d[path[-1]] = value


# Short section names accepted by --set, mapped to RunConfig fields.
_SECTIONS = {"task": "task_options", "backend": "target.options", "target": "target",
             "optimizer": "optimizer", "budget": "budget", "objective_weights": "objective_weights",
             "final": "final"}


def apply_set(data: dict[str, Any], assignment: str) -> None:
    """Apply one `--set a.b=c`. `<strategy>.x` sets a strategy option, `task.x` a task option,
    `backend.x` a target backend option, `budget.x`, `final.x`, `target.x`, `optimizer.x` and top-level keys as named."""
    key, sep, raw = assignment.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set expects key=value, got {assignment!r}")
    parts = key.strip().split(".")
    value = parse_value(raw)
    head = parts[0]
    if len(parts) == 1:
        data[head] = value
    elif head == data.get("strategy", RunConfig.model_fields["strategy"].default) or head == "strategy":
        _set_path(data, ["strategy_options", *parts[1:]], value)
    elif head in _SECTIONS:
        _set_path(data, [*_SECTIONS[head].split("."), *parts[1:]], value)
    else:
        raise ConfigError(f"--set {key}: unknown section {head!r} (use the strategy's name, task, backend, "
                          f"budget, final, target, optimizer, or a top-level key)")


def load_toml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    text = read_text(p, "config file")  # a device or FIFO is refused, not read forever
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config file {p} is not valid TOML: {e}") from None


def deep_merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, Mapping) and isinstance(out.get(k), dict) else v
    return out


def build_config(data: Mapping[str, Any]) -> RunConfig:
    """Validate a config dict, including the strategy's own options, without loading any model."""
    try:
        cfg = RunConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_one_line(e)) from None
    for module in cfg.plugins:
        registry.load_module(module)
    # A plugin named by its file is recorded with an absolute path, so --resume finds it from anywhere.
    cfg = cfg.model_copy(update={"strategy": registry.canonical(cfg.strategy), "task": registry.canonical(cfg.task)})
    strategy_cls = registry.get("strategies", cfg.strategy)
    strategy_config(strategy_cls, cfg.strategy_options)
    target_cls = _options_owner(cfg.target)
    backend_options(target_cls, cfg.target, "target")
    if cfg.optimizer is not None:
        inherits = cfg.optimizer.backend == cfg.target.backend and cfg.target.options
        optimizer_cls = registry.get("backends", cfg.optimizer.backend) if inherits else _options_owner(cfg.optimizer)
        if inherits:
            # The optimizer reaches the target's server the same way unless told otherwise (a key meant for
            # a local server must never go to a default host).
            inherited = getattr(getattr(optimizer_cls, "Options", None), "inherited", frozenset())
            options = {**{k: v for k, v in cfg.target.options.items() if k in inherited}, **cfg.optimizer.options}
            cfg = cfg.model_copy(update={"optimizer": cfg.optimizer.model_copy(update={"options": options})})
        backend_options(optimizer_cls, cfg.optimizer, "optimizer")
    return cfg


def _options_owner(model: ModelConfig) -> Any:
    """The backend class that checks a model's options, or None when it has none to check and its name is
    known: its module (torch and transformers for hf, 5-20 s to import) then loads when a run builds it, so
    a dry run reports a task's missing data without waiting for it."""
    if not model.options and not registry.is_location(model.backend) and model.backend in registry.names("backends"):
        return None
    return registry.get("backends", model.backend)


def backend_options(backend_cls: Any, model: ModelConfig, role: str) -> Any:
    """A model's backend options checked by the backend's pydantic `Options`, before any model loads."""
    options_cls = getattr(backend_cls, "Options", None)
    if options_cls is None:
        return None
    try:
        return options_cls.model_validate(model.options)
    except ValidationError as e:
        raise ConfigError(f"{role} backend {model.backend} option {_one_line(e)}") from None


def strategy_config(strategy_cls: Any, options: Mapping[str, Any]) -> Any:
    try:
        return strategy_cls.Config.model_validate(dict(options))
    except ValidationError as e:
        raise ConfigError(f"strategy options: {_one_line(e)}{_valid_keys(strategy_cls, e)}") from None


def _valid_keys(strategy_cls: Any, e: ValidationError) -> str:
    """For a misspelled setting: the closest valid key and the list of valid ones."""
    import difflib
    unknown = [str(err["loc"][0]) for err in e.errors() if err["type"] == "extra_forbidden" and err["loc"]]
    if not unknown:
        return ""
    keys = list(strategy_cls.Config.model_fields)
    close = difflib.get_close_matches(unknown[0], keys, n=1)
    return ((f" (did you mean {close[0]!r}?)" if close else "")
            + f"; valid settings: {', '.join(keys) or 'none'}")


def _one_line(e: ValidationError) -> str:
    parts = []
    for err in e.errors()[:3]:
        loc = ".".join(str(x) for x in err["loc"]) or "config"
        msg = "unknown setting" if err["type"] == "extra_forbidden" else err["msg"]
        if err["type"] == "extra_forbidden" and err["loc"][:1] == ("budget",) and len(err["loc"]) == 2:
            msg += f" (budget limits: {', '.join(Budget.model_fields)})"  # `examples=` is the CLI's short form
        parts.append(f"{loc}: {msg}")
    more = f" (+{e.error_count() - 3} more)" if e.error_count() > 3 else ""
    return "; ".join(parts) + more
