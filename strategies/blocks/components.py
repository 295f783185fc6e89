"""Which component of a program a proposal edits (promptopt.harness.program), and how the optimizer LLM is shown
a program. Each proposal edits one component; by default they take turns (round-robin, in the program's order).
A single prompt has no components: `pick` returns None and the edit is of the candidate's text, as before
programs existed, so a strategy's single-prompt meta-prompts, ids and requests are unchanged.

For a program the meta-prompts carry what a component cannot be judged without: its name and one-line role,
the other components (read-only context), and each shown example's output, score, feedback and trace (what the
user's evaluator returned in `Result`)."""
from __future__ import annotations

import json
from typing import Any, Mapping, Sequence

from promptopt.errors import ConfigError
from promptopt.strategy import Context
from promptopt.task import Task
from promptopt.types import Candidate, Example, ExampleResult

MAX_FIELD_CHARS = 400  # each shown input, output, feedback or trace is clipped to this (both ends kept)


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
           meta: Mapping[str, Any] | None = None, parents: tuple[str, ...] | None = None) -> Candidate:
    """`cand` with the picked component (or a single prompt's text) replaced; a program edit records
    which component it changed in meta["component"]."""
    if name is None:
        return cand.revise(text, origin=origin, meta=meta, parents=parents)
    return cand.with_component(name, text, origin=origin, parents=parents,
                               meta={**dict(meta or {}), "component": name})


def refuse_program(task: Task, strategy: str, why: str) -> None:
    """One line for a strategy that cannot optimize a program's components."""
    if task.meta.get("program"):
        raise ConfigError(f"strategy {strategy} cannot optimize a program: {why}")


def seeds(ctx: Context) -> list[Candidate]:
    """The seed candidates of a strategy that scores the task's seed prompts without demos (a program: its
    seed components)."""
    if ctx.seed_program is not None:
        return [ctx.seed_program]
    return [Candidate(p, origin="seed") for p in ctx.task.seed_prompts]


def role_of(ctx: Context, name: str) -> str:
    return ctx.component_roles.get(name) or f"the component named {name}"


def program_fields(ctx: Context, cand: Candidate, name: str) -> dict[str, str]:
    """The placeholders a program meta-prompt fills: {name}, {role} and {others} (the other components, as
    read-only context: one line each with its role and text)."""
    others = [f'- {n} ({role_of(ctx, n)}): "{clip(t)}"' for n, t in cand.components if n != name]
    return {"name": name, "role": role_of(ctx, name),
            "others": "\n".join(others) or "(none: this is the program's only component)"}


def show_result(task: Task, ex: Example, res: ExampleResult) -> str:
    """One example as a program meta-prompt shows it: the input, the expected answer where the task has one,
    the program's output and score, and the evaluator's feedback and trace when it gave them."""
    lines = [f"Input: {clip(ex.input)}"]
    if task.output == "choose" and ex.label is not None and task.options:
        lines.append(f"Expected: {task.options[ex.label].strip()}")
    elif ex.target.strip():
        lines.append(f"Expected: {clip(ex.target)}")
    lines += [f"Output: {clip(res.output) or '(none)'}", f"Score: {res.score:g}"]
    if res.error:
        lines.append(f"Error: {res.error.strip().splitlines()[-1]}")
    if res.feedback:
        lines.append(f"Feedback: {clip(res.feedback)}")
    if res.trace is not None:
        lines.append(f"Trace: {clip(json.dumps(res.trace, ensure_ascii=False, default=repr))}")
    return "\n".join(lines)


def show_results(task: Task, shown: Sequence[tuple[Example, ExampleResult]]) -> str:
    return "\n\n".join(f"# Example {k + 1}\n{show_result(task, ex, res)}" for k, (ex, res) in enumerate(shown))


def clip(text: str, limit: int = MAX_FIELD_CHARS) -> str:
    """Keep both ends of a long text: a worked solution (or a trace) ends with its answer."""
    text = text.strip()
    if len(text) <= limit:
        return text
    half = limit // 2
    return f"{text[:half].rstrip()} ... {text[-half:].lstrip()}"
