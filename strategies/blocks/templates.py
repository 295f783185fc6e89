"""Named meta-prompt templates that a user can override from a file.

A strategy lists its optimizer-LLM prompts as `Template`s (a name such as "opro.meta" and a text with
str.format {placeholders}) in its Config's `TEMPLATES`, and the Config inherits `TemplateSettings`,
whose `prompt_files` setting maps a template's short name to a file:

    --set opro.prompt_files.meta=my_meta.txt      (or [strategy_options.prompt_files] in a config file)

The file's text replaces the default. It must use exactly the default's placeholders (literal braces
doubled, as in str.format). An unknown template name, a missing or unknown placeholder, or a file
that cannot be read fails validation of the strategy settings: one ConfigError line before any model
loads.
"""
from __future__ import annotations

import string
from dataclasses import dataclass
from typing import ClassVar

from pydantic import Field, model_validator
from pydantic_core import PydanticCustomError

from promptopt.errors import ConfigError
from promptopt.paths import read_text
from promptopt.strategy import StrategyConfig


def placeholders(text: str) -> frozenset[str]:
    """The field names a str.format template uses ({a}, {a!r}, {a:>4} all name `a`)."""
    try:
        parsed = list(string.Formatter().parse(text))
    except ValueError as e:  # a lone "{" or "}"
        raise ValueError(f"malformed braces ({e}); write a literal brace as {{{{ or }}}}") from None
    names = set()
    for _, field, _, _ in parsed:
        if field is None:
            continue
        root = field.split(".")[0].split("[")[0]
        if not root or root.isdigit():
            raise ValueError("positional placeholders ({} or {0}) are not allowed; name each field")
        names.add(root)
    return frozenset(names)


@dataclass(frozen=True)
class Template:
    """One optimizer-LLM prompt: `name` is "<strategy>.<short>", `text` the default wording."""

    name: str
    text: str
    about: str = ""  # what the template is for, shown by `promptopt templates`

    @property
    def short(self) -> str:
        return self.name.split(".", 1)[1]

    @property
    def fields(self) -> frozenset[str]:
        return placeholders(self.text)

    def check(self, text: str) -> str:
        """`text` if it can stand in for the default, else ValueError saying why."""
        used = placeholders(text)
        missing, unknown = self.fields - used, used - self.fields
        if missing:
            raise ValueError(f"missing placeholder(s) {_braced(missing)} (needs {_braced(self.fields)})")
        if unknown:
            raise ValueError(f"unknown placeholder(s) {_braced(unknown)} (allowed: {_braced(self.fields)})")
        return text


def _braced(names: frozenset[str] | set[str]) -> str:
    return ", ".join("{" + n + "}" for n in sorted(names)) or "none"


class TemplateSettings(StrategyConfig):
    """Strategy settings with editable meta-prompts (see the module docstring)."""

    TEMPLATES: ClassVar[tuple[Template, ...]] = ()

    prompt_files: dict[str, str] = Field(default_factory=dict, description=(
        "replace a meta-prompt with a file's text: template short name -> path, e.g. "
        "prompt_files.meta=my_meta.txt; `promptopt templates` lists the names and placeholders"))

    @model_validator(mode="after")
    def _check_prompt_files(self) -> "TemplateSettings":
        try:
            self.templates()  # read and check every file now, before any model loads
        except ValueError as e:  # reported as the reason alone, without pydantic's "Value error," prefix
            raise PydanticCustomError("template_file", "{reason}", {"reason": str(e)}) from None
        return self

    def templates(self) -> dict[str, str]:
        """The text in use for each template, by short name: the default or the user's file."""
        by_short = {t.short: t for t in self.TEMPLATES}
        texts = {t.short: t.text for t in self.TEMPLATES}
        for short, path in self.prompt_files.items():
            template = by_short.get(short)
            if template is None:
                names = ", ".join(t.name for t in self.TEMPLATES) or "none"
                raise ValueError(f"unknown template name {short!r} (this strategy has: {names})")
            try:
                text = read_text(path, f"template {template.name}: file")  # a device or FIFO is refused
            except ConfigError as e:
                raise ValueError(str(e)) from None
            try:
                texts[short] = template.check(text)
            except ValueError as e:
                raise ValueError(f"template {template.name} from {path}: {e}") from None
        return texts
