"""Task: data splits, a prompt-first template, how an output is produced, and how it is scored."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable, Literal, Mapping, Sequence

from promptopt.measure import answers as _answers
from promptopt.errors import TaskError
from promptopt.task.template import check_template, render, split_at_prompt, template_fields
from promptopt.types import Example

SPLITS = ("train", "dev", "test")


def exact_match(prediction: str, example: Example) -> float:
    """Case-, whitespace- and surrounding-punctuation-insensitive (promptopt.measure.answers); the strict rule
    of earlier versions is `exact_match_strict`."""
    return _answers.exact_match(prediction, example)


exact_match_strict = _answers.exact_match_strict


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
    metric: Callable[[str, Example], float] = exact_match  # may return (score, feedback text)
    max_tokens: int = 256
    stop: tuple[str, ...] = ()
    chat: bool = False
    demo_format: str | None = None  # how one demo renders; default: the template's text after {prompt}
    demo_separator: str = "\n\n"
    description: str = ""
    meta: Mapping[str, object] = field(default_factory=dict)
    metric_on_choice: bool = False  # choose: score the chosen option's text with `metric` (else: label match)
    # choose: "balanced_accuracy" or "macro_f1" is what a score over examples reports (promptopt.measure.metrics);
    # None keeps mean accuracy. Per-example scores stay correctness.
    corpus_metric: str | None = None
    # On the chat routes (promptopt/scoring/routes.py): demos as user/assistant turns, or inline in the user message.
    chat_demos: Literal["turns", "inline"] = "turns"

    def __post_init__(self) -> None:
        check_template(self.template)
        if self.output not in ("generate", "choose"):
            raise TaskError(f"task {self.name}: output must be 'generate' or 'choose', not {self.output!r}")
        if self.output == "choose" and len(self.options) < 2:
            raise TaskError(f"task {self.name}: a 'choose' task needs at least two options")
        if not self.seed_prompts:
            raise TaskError(f"task {self.name}: no seed prompt")
        if self.corpus_metric is not None:
            from promptopt.measure.metrics import CORPUS_METRICS
            if self.corpus_metric not in CORPUS_METRICS or self.output != "choose" or self.metric_on_choice:
                raise TaskError(f"task {self.name}: corpus_metric {self.corpus_metric!r} needs a choose task scored "
                                f"by label match, and one of {', '.join(CORPUS_METRICS)}")
        for split in ("dev",):
            if not self.splits.get(split):
                raise TaskError(f"task {self.name}: the {split} split is empty")
        if self.chat_demos not in ("turns", "inline"):
            raise TaskError(f"task {self.name}: demo_format for chat must be 'turns' or 'inline', not {self.chat_demos!r}")
        if self.demo_format is not None:
            check_template(self.demo_format, required=("input",))
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

    def demo_text(self, example: Example, answer: str | None = None) -> str:
        """One demonstration: the query format filled with `example` and its answer (the gold one
        unless a bootstrapped `answer` is given)."""
        fmt = self.demo_format if self.demo_format is not None else split_at_prompt(self.template)[1]
        query = render(fmt, {**example.fields, "input": example.input}).strip("\n")
        if self.output == "choose":
            return query + (self.options[example.label] if answer is None and example.label is not None else answer or "")
        # A generated answer follows the query on its own line: a worked solution when the task has one.
        return query + "\n" + (example.fields.get("reference", example.target) if answer is None else answer).strip()

    def messages(self, instruction: str, example: Example, demos: Sequence[Example] = (),
                 answers: Sequence[str | None] = (), system: str = "", answer_line: str = "") -> tuple[tuple[str, str], ...]:
        """The prompt as chat messages: the system prompt as the system message, the demos as user/assistant
        turns (or inline, per `chat_demos`), then the instruction (and `answer_line`) with the query as the
        user message."""
        out = [("system", system.strip())] if system.strip() else []
        prompt = instruction
        if demos and self.chat_demos == "inline":
            prompt = self.prompt_text(instruction, demos, answers)
        elif demos:
            fmt = self.demo_format if self.demo_format is not None else split_at_prompt(self.template)[1]
            for ex, answer in zip(demos, list(answers) or [None] * len(demos)):
                out.append(("user", render(fmt, {**ex.fields, "input": ex.input}).strip()))
                gold = self.options[ex.label] if self.output == "choose" and ex.label is not None else \
                    ex.fields.get("reference", ex.target)
                out.append(("assistant", (gold if answer is None else answer).strip()))
        if answer_line:
            prompt = f"{prompt}\n{answer_line}" if prompt.strip() else answer_line
        out.append(("user", self.render(prompt, example).strip()))
        return tuple(out)

    def prompt_text(self, instruction: str, demos: Sequence[Example] = (), answers: Sequence[str | None] = (),
                    system: str = "") -> str:
        """What stands where `{prompt}` is: system prompt, instruction, then the demos, separated so
        the query that follows is set off like each demo."""
        parts = [p for p in (system.strip(), instruction) if p]
        if not demos:
            return "\n\n".join(parts) if system.strip() else instruction
        answers = list(answers) or [None] * len(demos)
        text = self.demo_separator.join([*parts, *(self.demo_text(ex, a) for ex, a in zip(demos, answers))])
        # The template's own text after {prompt} may already start with part of the separator.
        after = split_at_prompt(self.template)[1]
        lead = len(after) - len(after.lstrip("\n"))
        sep_newlines = len(self.demo_separator) - len(self.demo_separator.lstrip("\n"))
        if self.demo_separator.strip("\n") == "" and lead < sep_newlines:
            text += "\n" * (sep_newlines - lead)
        return text

    def without_test(self) -> "Task":
        """The view a strategy gets: the test split is not there at all."""
        return Task(**{**self.__dict__, "splits": {k: v for k, v in self.splits.items() if k != "test"}})
