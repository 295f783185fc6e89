"""`promptopt optimize --dry-run`: the resolved run (promptopt/resolved.py, the one `optimize` runs) as a
few lines, without loading a model or making a run directory. Backend options are checked as the run
checks them; the model itself (capabilities, a server's reply, an API key) only when a run loads it.

Each line is a (label, value) pair built from the resolved run by `plan_lines`; a new line goes into that
list, from the resolved run only, so the plan keeps saying what the run does."""
from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from promptopt.config import BUDGET_LIMITS
from promptopt.errors import ConfigError
from promptopt.scoring.routes import planned

if TYPE_CHECKING:
    from promptopt.resolved import ResolvedRun

HEADER = "dry run: no model loaded, no run directory made"


def plan_lines(run: ResolvedRun) -> list[tuple[str, str]]:
    """What `run` does, in print order: the task, strategy, models, budget, final report, run dir, cache."""
    parts = run.components  # --components: the seed is the named components (promptopt/harness/tasks.py)
    seed = (", ".join(f"{n}={t!r}" for n, t in parts.components.items()) + " (each proposal edits one, in turns)"
            if parts is not None else repr(run.seed_prompt))
    return [("task", _task(run) + (f" [{', '.join(parts.tasks)}: one shared system prompt, scored by the mean "
                                   "of the per-task means]" if parts is not None and parts.shared else "")),
            ("seed", seed),
            ("strategy", _strategy(run)),
            ("target", run.target.describe() if run.target else "none"),
            *([("route", route)] if (route := _route(run)) else []),
            ("optimizer", run.optimizer.describe() if run.optimizer else "none"),
            ("budget", f"search: {_budget(run)}" + (f" ({run.final.counted} of the examples kept for the final pick)"
                                                    if run.final.counted and run.budget.max_examples else "")),
            ("ends", _ends(run)),
            # What the final pick is paid from the budget (final.*) is inside it; the rest is outside.
            ("final", f"at most {run.final.examples_at_most - run.final.counted} more scored examples, outside the "
                      f"budget (finalists on dev, then the best and the seed on test); {run.final.describe()}"),
            *([("total", f"at most {run.budget.max_examples + run.final.examples_at_most - run.final.counted} "
                         "scored examples (search + final report)")] if run.budget.max_examples is not None else []),
            ("run dir", str(run.run_dir / f"{run.run_name or '<time>'}-…")),
            ("cache", str(run.cache_path) if run.cache_path else "off"),
            *([("usd", usd)] if (usd := _usd(run)) else [])]


def describe(lines: list[tuple[str, str]]) -> str:
    """The plan for a terminal: a header, then one aligned line per (label, value)."""
    return "\n".join([HEADER, *(f"{label:<10} {value}" for label, value in lines)])


def check_run_dir(root: Path) -> None:
    """What creating `root` would hit, found without creating it (a run finds it when it makes it)."""
    existing = root
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"cannot create run directory {root}: {existing} is not a directory")
    if not os.access(existing, os.W_OK):
        raise ConfigError(f"cannot create run directory {root}: permission denied")


def _task(run: ResolvedRun) -> str:
    task, final = run.task, run.final
    options = f": {', '.join(map(repr, task.options))}" if task.options else ""
    test = f"{final.test} of {final.test_of}" if final.test != final.test_of else str(final.test)
    return (f"{task.name} ({task.output}{options}); train {len(task.split('train'))}, dev {final.dev}, "
            f"test {test}")


def _strategy(run: ResolvedRun) -> str:
    """A strategy's own settings first, then those many strategies share (templates, racing)."""
    name = run.strategy_name or type(run.strategy).__name__
    if run.strategy_config is None:
        return name
    settings: dict[str, Any] = run.strategy_config.model_dump(mode="json")
    shared = [k for k in ("prompt_files", "racing") if k in settings]
    ordered = {**{k: v for k, v in settings.items() if k not in shared}, **{k: settings[k] for k in shared}}
    return f"{name}: " + ", ".join(f"{k}={v}" for k, v in ordered.items())


def _budget(run: ResolvedRun) -> str:
    limits = run.budget.model_dump(mode="json")
    return ", ".join(f"{label} {limits[key]}" for key, label in BUDGET_LIMITS.values()
                     if limits.get(key) is not None) or "none (runs until the strategy stops)"


def _route(run: ResolvedRun) -> str | None:
    """How a choose task is scored on this target (promptopt/scoring/routes.py), when that is known before the run."""
    return planned(run.task, run.target.options) if run.target else None


def _usd(run: ResolvedRun) -> str | None:
    """What an openai target may cost at list price: the search budget's examples plus the final report's."""
    if run.target is None or run.target.config.backend != "openai":
        return None
    if run.budget.max_examples is None:
        return "target cost not estimated: no max_examples budget"
    from promptopt.backends.openai.prices import estimate_task_usd
    est = estimate_task_usd(run.target.config.model, run.target.config.options.get("prices"), run.task,
                            run.seed_prompt, run.budget.max_examples + run.final.examples_at_most,
                            route=run.target.config.options.get("choose_route"))
    if est["usd"] is None:
        return f"target cost not estimated: {est['why']}"
    return (f"target at most ~${est['usd']:.4f} at list price: {est['calls']} requests, "
            f"~{est['prompt_tokens']} prompt + {est['completion_tokens']} completion tokens "
            f"(${est['usd_per_1m_input']:g}/${est['usd_per_1m_output']:g} per 1M)")


# Settings by which a strategy ends its search itself, before the budget is spent (shown in the plan).
_OWN_LIMITS = ("steps", "patience", "rounds", "generations", "iterations", "trials", "sets")


def _ends(run: ResolvedRun) -> str:
    """What ends the search: a budget is a cap, not a plan, and the strategy may finish first."""
    settings: dict[str, Any] = run.strategy_config.model_dump(mode="json") if run.strategy_config is not None else {}
    own = [f"{k}={settings[k]}" for k in _OWN_LIMITS if settings.get(k) is not None]
    selection = settings.get("selection")
    if isinstance(selection, dict) and selection.get("budget") is not None:
        own.append(f"selection.budget={selection['budget']}")
    return ("at the first budget limit spent, or sooner when the strategy finishes"
            + (f" (its own {', '.join(own)})" if own else "") + "; the stop reason says which")
