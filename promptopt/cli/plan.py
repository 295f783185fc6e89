"""`promptopt optimize --dry-run`: the checks a run makes before it starts that need no model, and
the most it may spend, without making a run directory. Backend options and the model itself
(capabilities, a server's reply, an API key) are checked when a real run builds its backends."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from promptopt import registry
from promptopt.api import load_task, optimizer_config, warn_reused_splits
from promptopt.cache import default_cache_path
from promptopt.config import ModelConfig, RunConfig, backend_options, strategy_config
from promptopt.errors import ConfigError
from promptopt.data import test_sample


def plan(cfg: RunConfig) -> dict[str, Any]:
    """What `cfg` would run: task splits, strategy settings with defaults, models, and what the search
    and the final report may score. Raises what a real run raises for a bad strategy, task, backend
    name or run directory."""
    strategy_cls = registry.get("strategies", cfg.strategy)
    settings = strategy_config(strategy_cls, cfg.strategy_options)
    task = load_task(cfg.task, data_dir=cfg.data_dir, seed=cfg.seed, options=cfg.task_options)
    warn_reused_splits(task)
    check_task = getattr(strategy_cls(settings), "check_task", None)  # as a run checks it (api.prepare)
    if callable(check_task):
        check_task(task.without_test())
    optimizer = optimizer_config(strategy_cls, cfg)
    for model in (cfg.target, optimizer):
        if model is not None:
            registry.get("backends", model.backend)
    _check_run_dir(Path(cfg.run_dir))
    dev = len(task.split("dev"))
    test = len(test_sample(task.split("test"), cfg.test_limit))
    return {
        "task": task.name, "output": task.output, "options": list(task.options or ()),
        "splits": {"train": len(task.split("train")), "dev": dev, "test": test,
                   "test_of": len(task.split("test"))},
        "seed_prompt": cfg.prompt or task.seed_prompts[0],
        "strategy": cfg.strategy, "settings": _own_first(settings.model_dump(mode="json")),
        "target": _where(cfg.target),
        "optimizer": _where(optimizer) if optimizer else None,
        "budget": cfg.budget.model_dump(mode="json"),
        # Finalists (top k and the seed) complete the dev split; then the best and the seed score test.
        "final_examples_at_most": dev * (cfg.final_top_k + 1) + 2 * test,
        "run_dir": str(Path(cfg.run_dir) / f"{cfg.run_name or '<time>'}-…"),
        "cache": str(Path(cfg.cache_path) if cfg.cache_path else default_cache_path()) if cfg.cache else None,
    }


def _own_first(settings: dict[str, Any]) -> dict[str, Any]:
    """A strategy's own settings first, then those many strategies share (templates, racing)."""
    shared = [k for k in ("prompt_files", "racing") if k in settings]
    return {**{k: v for k, v in settings.items() if k not in shared}, **{k: settings[k] for k in shared}}


def _where(model: ModelConfig) -> str:
    """backend:model, and the server URLs it would be sent to (so a user sees where a key would go)."""
    options = backend_options(registry.get("backends", model.backend), model, "model")
    urls = options.urls() if options is not None else []
    return f"{model.backend}:{model.model}" + (f" at {', '.join(urls)}" if urls else "")


def _check_run_dir(root: Path) -> None:
    """What creating `root` would hit, found without creating it."""
    existing = root
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"cannot create run directory {root}: {existing} is not a directory")
    if not os.access(existing, os.W_OK):
        raise ConfigError(f"cannot create run directory {root}: permission denied")


# Settings by which a strategy ends its search itself, before the budget is spent (shown in the plan).
_OWN_LIMITS = ("steps", "patience", "rounds", "generations", "iterations", "trials", "sets")


def _own_limits(settings: dict[str, Any]) -> str:
    """`steps=10, patience=2`: the strategy's settings that can end the search before its budget."""
    found = [f"{k}={settings[k]}" for k in _OWN_LIMITS if settings.get(k) is not None]
    selection = settings.get("selection")
    if isinstance(selection, dict) and selection.get("budget") is not None:
        found.append(f"selection.budget={selection['budget']}")
    return ", ".join(found)


def describe(p: dict[str, Any]) -> str:
    """The plan as a few lines for a terminal."""
    limits = {"max_examples": "examples", "max_optimizer_calls": "optimizer calls", "max_tokens": "tokens",
              "max_seconds": "seconds", "max_usd": "USD"}
    budget = ", ".join(f"{name} {p['budget'][key]}" for key, name in limits.items()
                       if p["budget"].get(key) is not None) or "none (runs until the strategy stops)"
    s = p["splits"]
    test = f"{s['test']} of {s['test_of']}" if s["test"] != s["test_of"] else str(s["test"])
    settings = ", ".join(f"{k}={v}" for k, v in p["settings"].items())
    own = _own_limits(p["settings"])
    if p["budget"].get("max_examples") is not None or own:  # a budget is a cap: say what else ends the search
        budget += (" (at most: the strategy may finish first" + (f", by its own {own}" if own else "") + ")")
    final = p["final_examples_at_most"]
    cap = p["budget"].get("max_examples")
    return "\n".join([
        "dry run: no model loaded, no run directory made",
        f"task       {p['task']} ({p['output']}{': ' + ', '.join(map(repr, p['options'])) if p['options'] else ''}); "
        f"train {s['train']}, dev {s['dev']}, test {test}",
        f"seed       {p['seed_prompt']!r}",
        f"strategy   {p['strategy']}: {settings}",
        f"target     {p['target']}",
        f"optimizer  {p['optimizer'] or 'none'}",
        f"budget     search: {budget}",
        f"final      at most {final} more scored examples, outside the budget "
        f"(finalists on dev, then the best and the seed on test)",
        *([f"total      at most {cap + final} scored examples (search + final report)"] if cap is not None else []),
        f"run dir    {p['run_dir']}",
        f"cache      {p['cache'] or 'off'}",
    ])
