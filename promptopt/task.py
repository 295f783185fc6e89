"""Task: data splits, a prompt-first template, how an output is produced, and how it is scored."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable, Literal, Mapping, Sequence

from promptopt.errors import TaskError
from promptopt.template import check_template, render, template_fields
from promptopt.types import Example

SPLITS = ("train", "dev", "test")


def exact_match(prediction: str, example: Example) -> float:
    return float(prediction.strip() == example.target.strip())


def identity(text: str) -> str:
    return text.strip()


_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def last_number(text: str) -> str:
    """The last number in a text, without thousands separators or a trailing '.0'."""
    found = _NUMBER.findall(text)
    if not found:
        return ""
    num = found[-1].replace(",", "")
    if "." in num:
        num = num.rstrip("0").rstrip(".")
    return num


@dataclass(frozen=True)
class Task:
    """Everything needed to score a prompt on examples.

    output="choose": each example's options (`options`) are scored by log-likelihood as
    continuations of the rendered template; the argmax is the prediction and `Example.label`
    the gold index. output="generate": the model writes text, `extract` pulls the answer out,
    `metric` compares it with `Example.target`.
    """

    name: str
    splits: Mapping[str, Sequence[Example]]
    template: str
    output: Literal["generate", "choose"]
    seed_prompts: tuple[str, ...]
    options: tuple[str, ...] = ()
    extract: Callable[[str], str] = identity
    metric: Callable[[str, Example], float] = exact_match
    max_tokens: int = 256
    stop: tuple[str, ...] = ()
    chat: bool = False
    description: str = ""
    meta: Mapping[str, object] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_template(self.template)
        if self.output not in ("generate", "choose"):
            raise TaskError(f"task {self.name}: output must be 'generate' or 'choose', not {self.output!r}")
        if self.output == "choose" and len(self.options) < 2:
            raise TaskError(f"task {self.name}: a 'choose' task needs at least two options")
        if not self.seed_prompts:
            raise TaskError(f"task {self.name}: no seed prompt")
        for split in ("dev",):
            if not self.splits.get(split):
                raise TaskError(f"task {self.name}: the {split} split is empty")
        extra = template_fields(self.template) - {"prompt", "input"}
        for ex in (e for s in self.splits.values() for e in s):
            missing = extra - set(ex.fields)
            if missing:
                raise TaskError(f"task {self.name}: example {ex.id} lacks template field(s) {sorted(missing)}")
            if self.output == "choose" and (ex.label is None or not 0 <= ex.label < len(self.options)):
                raise TaskError(f"task {self.name}: example {ex.id} has label {ex.label!r}, "
                                f"expected 0..{len(self.options) - 1}")

    def split(self, name: str) -> Sequence[Example]:
        if name not in SPLITS:
            raise TaskError(f"unknown split {name!r}; expected one of {', '.join(SPLITS)}")
        return self.splits.get(name, ())

    def render(self, prompt: str, example: Example) -> str:
        return render(self.template, {**example.fields, "prompt": prompt, "input": example.input})

    def without_test(self) -> "Task":
        """The view a strategy gets: the test split is not there at all."""
        return Task(**{**self.__dict__, "splits": {k: v for k, v in self.splits.items() if k != "test"}})
