"""Plugins by name: strategies, tasks and backends register with a decorator and are found lazily.

Built-ins are declared as entry points in pyproject.toml (group `promptopt.<kind>`), so the core
never imports a strategy or task module until one is asked for by name. A plugin outside the package
is named by where it lives, `module:Name` or `path/to/file.py:Name`, and needs no install. A name
registered twice by two different objects is an error that names both.
"""
from __future__ import annotations

import difflib
import hashlib
import importlib
import importlib.util
import sys
from importlib.metadata import entry_points
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, TypeVar

from promptopt.errors import RegistryError

# "callbacks": run callbacks the core offers by name (optimize(mlflow=URI) finds "mlflow" so).
KINDS = ("strategies", "tasks", "backends", "callbacks")
_SINGULAR = {"strategies": "strategy", "tasks": "task", "backends": "backend", "callbacks": "callback"}
_registered: dict[str, dict[str, Any]] = {k: {} for k in KINDS}
_file_modules: dict[Path, ModuleType] = {}  # plugin files loaded by path, each once
F = TypeVar("F", bound=Callable[..., Any])


def _source(obj: Any) -> str:
    """Where a plugin object is defined: module.Name, or the file for one loaded by path."""
    module = sys.modules.get(getattr(obj, "__module__", ""))
    where = getattr(module, "__file__", None) if module in _file_modules.values() else None
    return f"{where or getattr(obj, '__module__', '?')}:{getattr(obj, '__qualname__', repr(obj))}"


def _register(kind: str, name: str) -> Callable[[F], F]:
    def deco(obj: F) -> F:
        old = _registered[kind].get(name)
        ep = _entry_points(kind).get(name)
        # A re-import of the same definition (same module and name) is not a clash; anything else is.
        if old is not None and _source(old) != _source(obj):
            raise RegistryError(f"{_SINGULAR[kind]} name {name!r} is registered twice: by {_source(old)} "
                                f"and by {_source(obj)}")
        ep_module = ep.value.split(":")[0] if ep is not None else ""
        if old is None and ep is not None and not (obj.__module__ + ".").startswith(ep_module + "."):
            raise RegistryError(f"{_SINGULAR[kind]} name {name!r} is registered twice: by {ep.value} "
                                f"(installed) and by {_source(obj)}")
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


def is_location(name: str) -> bool:
    """Whether `name` names a plugin by where it lives (`module:Name` or `file.py:Name`)."""
    return ":" in name


def canonical(name: str) -> str:
    """`name` as a run config records it: a plugin file's path made absolute, so resume finds it."""
    where, _, attr = name.rpartition(":")
    if is_location(name) and where.endswith(".py"):
        return f"{Path(where).expanduser().resolve()}:{attr}"
    return name


def _load_location(kind: str, name: str) -> Any:
    where, _, attr = name.rpartition(":")
    what = f"{_SINGULAR[kind]} {name!r}"
    if not where or not attr:
        raise RegistryError(f"{what}: expected module:Name or path/to/file.py:Name")
    try:
        module = load_file(Path(where)) if where.endswith(".py") else importlib.import_module(where)
    except RegistryError:
        raise
    except ImportError as e:
        raise RegistryError(f"{what}: cannot import {where!r}: {e}") from e
    except Exception as e:  # a user's file that fails on import: one line, not a traceback
        raise RegistryError(f"{what}: importing {where} failed: {type(e).__name__}: {e}") from e
    try:
        return getattr(module, attr)
    except AttributeError:
        raise RegistryError(f"{what}: {where} defines no {attr!r}") from None


def load_file(path: Path) -> ModuleType:
    """A Python file imported as a module once per process (plugins; a CLI program, harness/program.py)."""
    path = path.expanduser().resolve()
    if path in _file_modules:
        return _file_modules[path]
    if not path.is_file():
        raise RegistryError(f"plugin file {path} does not exist")
    # A stable, unique module name per file, so two plugin files may share a stem.
    module_name = f"promptopt_plugin_{path.stem}_{hashlib.sha256(str(path).encode()).hexdigest()[:8]}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise RegistryError(f"cannot load plugin file {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # before exec: dataclasses and pickling look the module up
    _file_modules[path] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[module_name], _file_modules[path]
        raise
    return module


def get(kind: str, name: str) -> Any:
    if kind not in KINDS:
        raise RegistryError(f"unknown plugin kind {kind!r}")
    if is_location(name):
        return _load_location(kind, name)
    if name in _registered[kind]:
        return _registered[kind][name]
    eps = _entry_points(kind)
    if name in eps:
        try:
            obj = eps[name].load()
        except ImportError as e:
            raise RegistryError(f"{_SINGULAR[kind]} {name!r} needs a missing package: {e.name or e}") from e
        _registered[kind].setdefault(name, obj)
        return _registered[kind][name]
    known = names(kind)
    close = difflib.get_close_matches(name, known, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise RegistryError(f"unknown {_SINGULAR[kind]} {name!r}{hint} (known: {', '.join(known) or 'none'})")


def load_module(module: str) -> None:
    """Import a user's plugin module so its decorators run (``--plugin my_module``)."""
    try:
        importlib.import_module(module)
    except ImportError as e:
        raise RegistryError(f"cannot import plugin module {module!r}: {e}") from e
