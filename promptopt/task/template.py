"""Prompt templates: `{name}` fields filled in one pass, so inserted text is never re-read.

No format-spec mini-language, attribute access or code evaluation: a field is `{identifier}` and
nothing else. Literal braces are written `{{` and `}}`.
"""
from __future__ import annotations

import re
from typing import Mapping

from promptopt.errors import TaskError

_TOKEN = re.compile(r"\{\{|\}\}|\{([A-Za-z_][A-Za-z0-9_]*)\}")


def template_fields(template: str) -> set[str]:
    return {m.group(1) for m in _TOKEN.finditer(template) if m.group(1)}


def render(template: str, values: Mapping[str, str]) -> str:
    def sub(m: re.Match[str]) -> str:
        tok = m.group(0)
        if tok == "{{":
            return "{"
        if tok == "}}":
            return "}"
        name = m.group(1)
        if name not in values:
            raise TaskError(f"template field {{{name}}} has no value")
        return str(values[name])

    return _TOKEN.sub(sub, template)


def check_template(template: str, required: tuple[str, ...] = ("prompt", "input")) -> None:
    missing = [f for f in required if f not in template_fields(template)]
    if missing:
        raise TaskError(f"template {template!r} lacks the field(s) " + ", ".join("{" + f + "}" for f in missing))


def split_at_prompt(template: str) -> tuple[str, str]:
    """Text before and after `{prompt}` (used to check the prompt comes first for KV reuse)."""
    i = template.find("{prompt}")
    return (template[:i], template[i + len("{prompt}"):]) if i >= 0 else (template, "")
