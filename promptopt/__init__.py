"""promptopt: discrete prompt optimization with an LLM as optimizer.

The public surface: the data types, the strategy protocol, the registry decorators, the error root
and the two entry points `optimize` / `evaluate`. Everything but the data types and the error root
is imported on first use, so `import promptopt` stays light (no pydantic models, no torch).
"""
from __future__ import annotations

import importlib
from typing import Any

from promptopt.errors import PromptOptError
from promptopt.types import Candidate, Evaluation, Example, ExampleResult, Usage

__version__ = "0.1.0"

_LAZY = {
    "Context": "promptopt.strategy", "ScoreRequest": "promptopt.strategy", "Strategy": "promptopt.strategy",
    "StrategyConfig": "promptopt.strategy", "Objective": "promptopt.types",
    "Task": "promptopt.task", "Run": "promptopt.loop", "Report": "promptopt.loop",
    "ResolvedRun": "promptopt.resolved",
    "register_strategy": "promptopt.registry", "register_task": "promptopt.registry",
    "register_backend": "promptopt.registry",
    "optimize": "promptopt.api", "evaluate": "promptopt.api", "evaluate_candidate": "promptopt.api",
    "make_task": "promptopt.task.from_examples", "Callback": "promptopt.callbacks",
    "StopSearch": "promptopt.callbacks",
    "Program": "promptopt.harness.program", "Result": "promptopt.harness.program", "evaluator": "promptopt.harness.program",
    "Study": "promptopt.harness.study", "Trial": "promptopt.harness.study",
    "load_selector": "promptopt.measure.selector",
}

__all__ = ["Candidate", "Evaluation", "Example", "ExampleResult", "PromptOptError", "Usage", *_LAZY]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'promptopt' has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
