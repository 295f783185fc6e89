"""Which component of a program a proposal edits (promptopt.harness.program). Each proposal edits one component;
by default they take turns (round-robin, in the program's order). A single prompt has no components:
`pick` returns None and the edit is of the candidate's text, as before programs existed."""
from __future__ import annotations

from typing import Any, Mapping

from promptopt.errors import ConfigError
from promptopt.task import Task
from promptopt.types import Candidate


class ComponentChoice:
    """Round-robin over a candidate's components, one turn per proposal."""

    def __init__(self) -> None:
        self.turn = 0

    def pick(self, cand: Candidate) -> str | None:
        if not cand.components:
            return None
        name = cand.components[self.turn % len(cand.components)][0]
        self.turn += 1
        return name


def text_of(cand: Candidate, name: str | None) -> str:
    """The text a proposal edits: the picked component's, or a single prompt's."""
    return cand.component(name) if name is not None else cand.text


def edited(cand: Candidate, name: str | None, text: str, *, origin: str,
           meta: Mapping[str, Any] | None = None) -> Candidate:
    """`cand` with the picked component (or a single prompt's text) replaced; a program edit records
    which component it changed in meta["component"]."""
    if name is None:
        return cand.revise(text, origin=origin, meta=meta)
    return cand.with_component(name, text, origin=origin, meta={**dict(meta or {}), "component": name})


def refuse_program(task: Task, strategy: str, why: str) -> None:
    """One line for a strategy that cannot optimize a program's components."""
    if task.meta.get("program"):
        raise ConfigError(f"strategy {strategy} cannot optimize a program: {why}")
