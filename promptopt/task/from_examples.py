"""A Task built in Python from a harness's own examples and metric (`promptopt.make_task`).

    task = make_task(rows, template="{prompt}\\n\\nQ: {question}\\nA:", input_key="question",
                     target_key="answer", output="generate", metric=my_metric, extract="first_line",
                     prompt="Answer the question in one line.")

`examples` is a list of dicts, a pandas DataFrame or a `datasets.Dataset`; test is carved from it with a
fixed seed (the same rows whatever the seed), dev with `seed`, the rest is train. Or pass `train=`,
`dev=` and `test=` separately (dev, or train to carve dev from with `dev_size`). `prompt=` is required: it is
the seed instruction the search starts from. The defaults (max_tokens 256, extract strip) are a spec file's.
The template may name the input column (`{question}`) instead of `{input}`; other `{field}`s are filled from
the columns of the same name.

`metric(prediction, example)` gets the extracted prediction (the chosen option's text for a choose task)
and the example's original row (a dict), and returns a number or `(number, feedback text)`; the feedback
goes into each example's result, where reflective strategies (gepa) read it. A metric may also be a name:
accuracy, exact_match, contains, numeric, or for a choose task the corpus metrics balanced_accuracy and
macro_f1 (promptopt.measure.metrics). A metric that raises or returns something else is a `MetricError` naming the
example (checked once on the first example's gold answer when the task is built, so an obvious mistake
costs no model call).

The rules (options, gold answers, empty cells, split sizes, ids) are the ones spec files and the lm-eval
bridge follow: promptopt/task/spec.py builds all three.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable, Literal, Mapping, Sequence

from promptopt.errors import ConfigError, TaskError
from promptopt.task import Task
from promptopt.task.spec import MetricError, build_task, check_size, count, validate_spec

IN_MEMORY = "python:"  # RunConfig.task of a run whose task was built in Python: "python:<name>"
DEFAULT_TEMPLATE = "{prompt}\n\nInput: {input}\nAnswer:"

__all__ = ["IN_MEMORY", "MetricError", "make_task", "rows_of"]


def rows_of(data: Any, what: str = "examples") -> list[dict[str, Any]]:
    """A list of dicts from a list/tuple of mappings, a pandas DataFrame or a `datasets.Dataset`."""
    if data is None:
        return []
    if hasattr(data, "to_dict") and hasattr(data, "columns") and hasattr(data, "iloc"):  # pandas DataFrame
        return [dict(r) for r in data.to_dict("records")]
    if hasattr(data, "column_names") and hasattr(data, "features"):  # datasets.Dataset
        return [dict(r) for r in data]
    if isinstance(data, Mapping):
        raise TaskError(f"{what}: got a mapping ({', '.join(map(str, list(data)[:4]))}); pass a list of dicts, "
                        "or its splits as train=, dev=, test=")
    if isinstance(data, (str, bytes)) or not isinstance(data, Iterable):
        raise TaskError(f"{what}: expected a list of dicts, a pandas DataFrame or a datasets.Dataset, "
                        f"not {type(data).__name__}")
    rows = list(data)
    for i, r in enumerate(rows):
        if not isinstance(r, Mapping):
            raise TaskError(f"{what}[{i}]: expected a dict, not {type(r).__name__}")
    return [dict(r) for r in rows]


def make_task(examples: Any = None, *, train: Any = None, dev: Any = None, test: Any = None,
              template: str = DEFAULT_TEMPLATE, output: Literal["generate", "choose"] = "generate",
              options: Sequence[str] | None = None,
              metric: Callable[[str, Mapping[str, Any]], Any] | str | None = None,
              input_key: str = "input", target_key: str = "target", label_key: str | None = None,
              id_key: str | None = None, prompt: str | Sequence[str] | None = None, name: str = "examples",
              extract: str | Callable[[str], str] | None = None, strict: bool = False,
              dev_size: float | int = 0.2, test_size: float | int = 0.2, seed: int = 0,
              max_tokens: int | None = None, stop: Sequence[str] = (), chat: bool = False,
              description: str = "") -> Task:
    """A Task from examples in memory (see the module doc). Bad input is one TaskError/ConfigError line."""
    if examples is not None and any(x is not None for x in (train, dev, test)):
        raise ConfigError("make_task: pass examples= (carved into train/dev/test) or train=/dev=/test=, not both")
    if examples is None and dev is None and train is None:
        raise ConfigError("make_task: pass examples=[...], or dev=[...] (or train=[...] to carve dev from) "
                          "with optional train= and test=")
    for what, size in (("dev_size", dev_size), ("test_size", test_size)):
        try:
            check_size(size, what)
        except ValueError as e:
            raise ConfigError(f"make_task: {e}") from None
    data: dict[str, Any]
    if examples is not None:
        data = {"kind": "pool", "rows": rows_of(examples), "dev": dev_size, "test": test_size,
                "where": "examples[{i}]"}
    else:
        data = {"kind": "splits", **{s: rows_of(d, s) for s, d in (("train", train), ("dev", dev), ("test", test))},
                "where": {s: f"{s}[{{i}}]" for s in ("train", "dev", "test")}}
        if dev is None:  # dev carved from train
            data["dev_size"] = count(dev_size, len(data["train"])) or None
    no_prompt = ["prompt: pass prompt=, the seed instruction the search starts from (a text or a list)"]
    seeds = [prompt] if isinstance(prompt, str) else list(prompt or ["-"])  # "-" stands in while no_prompt is said
    spec = validate_spec(
        "make_task", no_prompt if prompt is None else (), name=name, description=description, template=template,
        output=output, options=[str(o) for o in options or ()], seed_prompts=seeds, metric=metric,
        extract=extract, strict=strict, chat=chat,
        **({} if max_tokens is None else {"max_tokens": max_tokens}), stop=list(stop),
        columns={"input": input_key, "target": None if label_key else target_key, "label": label_key, "id": id_key},
        data=data, meta={"source": "python"})
    return build_task(spec, seed)

