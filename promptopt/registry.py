"""Plugins by name: strategies, tasks and backends register with a decorator and are found lazily.

Built-ins are declared as entry points in pyproject.toml (group `promptopt.<kind>`), so the core
never imports a strategy or task module until one is asked for by name.
"""
from __future__ import annotations

import difflib
import importlib
from importlib.metadata import entry_points
from typing import Any, Callable, TypeVar

from promptopt.errors import RegistryError

KINDS = ("strategies", "tasks", "backends")
_registered: dict[str, dict[str, Any]] = {k: {} for k in KINDS}
F = TypeVar("F", bound=Callable[..., Any])

def _register(kind: str, name: str) -> Callable[[F], F]:
    def deco(obj: F) -> F:
        _registered[kind][name] = obj
        return obj
    return deco


def register_strategy(name: str) -> Callable[[F], F]:
    return _register("strategies", name)


def register_task(name: str) -> Callable[[F], F]:
    return _register("tasks", name)


def register_backend(name: str) -> Callable[[F], F]:
    return _register("backends", name)


def _entry_points(kind: str) -> dict[str, Any]:
    return {ep.name: ep for ep in entry_points(group=f"promptopt.{kind}")}


def names(kind: str) -> list[str]:
    return sorted(set(_registered[kind]) | set(_entry_points(kind)))


def get(kind: str, name: str) -> Any:
    if kind not in KINDS:
        raise RegistryError(f"unknown plugin kind {kind!r}")
    if name in _registered[kind]:
        return _registered[kind][name]
    eps = _entry_points(kind)
    if name in eps:
        try:
            obj = eps[name].load()
        except ImportError as e:
            raise RegistryError(f"{kind[:-1] if kind != 'strategies' else 'strategy'} {name!r} "
                                f"needs a missing package: {e.name or e}") from e
        _registered[kind].setdefault(name, obj)
        return _registered[kind][name]
    known = names(kind)
    close = difflib.get_close_matches(name, known, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    singular = {"strategies": "strategy", "tasks": "task", "backends": "backend"}[kind]
    raise RegistryError(f"unknown {singular} {name!r}{hint} (known: {', '.join(known) or 'none'})")


def load_module(module: str) -> None:
    """Import a user's plugin module so its decorators run (``--plugin my_module``)."""
    try:
        importlib.import_module(module)
    except ImportError as e:
        raise RegistryError(f"cannot import plugin module {module!r}: {e}") from e
