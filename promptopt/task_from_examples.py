"""A Task built in Python from a harness's own examples and metric (`promptopt.make_task`).

    task = make_task(rows, template="{prompt}\\n\\nQ: {question}\\nA:", input_key="question",
                     target_key="answer", output="generate", metric=my_metric, extract="first_line")

`examples` is a list of dicts, a pandas DataFrame or a `datasets.Dataset`; test is carved from it with a
fixed seed (the same rows whatever the seed), dev with `seed`, the rest is train. Or pass `train=`,
`dev=` (required) and `test=` separately. The template may name the input column (`{question}`) instead of
`{input}`; other `{field}`s are filled from the columns of the same name.

`metric(prediction, example)` gets the extracted prediction (the chosen option's text for a choose task)
and the example's original row (a dict), and returns a number or `(number, feedback text)`; the feedback
goes into each example's result, where reflective strategies (gepa) read it. A choose task may instead
name a corpus metric, `metric="balanced_accuracy"` or `"macro_f1"` (promptopt.metrics), reported by every
score over examples; per-example scores stay correctness. A metric that raises or
returns something else is a `MetricError` naming the example (checked once on the first example's gold
answer when the task is built, so an obvious mistake costs no model call).
"""
from __future__ import annotations

import math
from typing import Any, Callable, Iterable, Literal, Mapping, Sequence

from promptopt.answers import exact_match, exact_match_strict, get_extractor
from promptopt.data import carve
from promptopt.errors import ConfigError, TaskError
from promptopt.metrics import CORPUS_METRICS
from promptopt.task import Task
from promptopt.template import template_fields
from promptopt.types import Example

DEFAULT_TEMPLATE = "{prompt}\n\nInput: {input}\nAnswer:"
DEFAULT_PROMPT = "Answer the question."
IN_MEMORY = "python:"  # RunConfig.task of a run whose task was built in Python: "python:<name>"


class MetricError(TaskError):
    """A user's metric raised or returned something that is not a number."""


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


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def make_task(examples: Any = None, *, train: Any = None, dev: Any = None, test: Any = None,
              template: str = DEFAULT_TEMPLATE, output: Literal["generate", "choose"] = "generate",
              options: Sequence[str] | None = None,
              metric: Callable[[str, Mapping[str, Any]], Any] | str | None = None,
              input_key: str = "input", target_key: str = "target", label_key: str | None = None,
              id_key: str | None = None, prompt: str | Sequence[str] = DEFAULT_PROMPT, name: str = "examples",
              extract: str | Callable[[str], str] | None = None, strict: bool = False,
              dev_size: float | int = 0.2, test_size: float | int = 0.2, seed: int = 0,
              max_tokens: int = 64, stop: Sequence[str] = (), chat: bool = False, description: str = "") -> Task:
    """A Task from examples in memory (see the module doc). Bad input is a TaskError/ConfigError naming it."""
    if output not in ("generate", "choose"):
        raise ConfigError(f"output must be 'generate' or 'choose', not {output!r}")
    corpus_metric = None
    if isinstance(metric, str):  # a named metric: accuracy (the default), or a corpus metric of a choose task
        if metric not in ("accuracy", *CORPUS_METRICS) or (output != "choose" and metric != "accuracy"):
            raise ConfigError(f"metric {metric!r}: a name is one of accuracy, {', '.join(CORPUS_METRICS)} (the last "
                              "two for output='choose'); or pass a callable (prediction, example) -> float")
        corpus_metric, metric = (None if metric == "accuracy" else metric), None
    if metric is not None and not callable(metric):
        raise ConfigError(f"metric must be a callable (prediction, example) -> float, not {type(metric).__name__}")
    fields = template_fields(template)
    if "input" not in fields and input_key in fields:  # the template names the input column itself
        template = template.replace("{" + input_key + "}", "{input}")
        fields = template_fields(template)
    if "prompt" not in fields or "input" not in fields:
        raise ConfigError(f"template {template!r} needs {{prompt}} and {{input}} (or {{{input_key}}})")
    extra = sorted(fields - {"prompt", "input"})
    opts: tuple[str, ...] = ()
    if output == "choose":
        if not options or len(options) < 2:
            raise ConfigError("a choose task needs options=[...] with at least two answers")
        # A continuation follows the template: give it a leading space unless the template ends in one.
        lead = "" if template[-1:].isspace() else " "
        opts = tuple(o if o[:1].isspace() else lead + o for o in map(str, options))
    elif options:
        raise ConfigError("options are for output='choose'")
    if output == "generate" and extract is not None and not callable(extract):
        get_extractor(extract)  # an unknown name fails now
    seed_prompts = (prompt,) if isinstance(prompt, str) else tuple(prompt)

    def build(rows: list[dict[str, Any]], prefix: str, what: str) -> list[Example]:
        out = []
        needed = [input_key, *( [label_key] if label_key else [target_key]), *extra, *([id_key] if id_key else [])]
        for i, row in enumerate(rows):
            lacking = [c for c in needed if c not in row]
            if lacking:
                raise TaskError(f"{what} row {i}: no column(s) {', '.join(map(repr, lacking))} "
                                f"(it has {', '.join(map(repr, list(row)[:8]))}); set input_key=/target_key=")
            bad = [c for c in needed if _missing(row[c])]
            if bad:
                raise TaskError(f"{what} row {i}: column(s) {', '.join(map(repr, bad))} are empty")
            ex_id = str(row[id_key]) if id_key else f"{prefix}{i}"
            label = None
            if output == "choose":
                label = _label(row, opts, label_key, target_key, f"{what} row {i}")
                target = opts[label].strip()
            else:
                target = str(row[target_key])
            out.append(Example(ex_id, str(row[input_key]), target, label, {f: str(row[f]) for f in extra}))
            rows_by_id[ex_id] = row
        return out

    rows_by_id: dict[str, dict[str, Any]] = {}
    if examples is not None:
        if any(x is not None for x in (train, dev, test)):
            raise ConfigError("pass examples= (carved into train/dev/test) or train=/dev=/test=, not both")
        pool = build(rows_of(examples), f"{name}-", "examples")
        n = len(pool)
        if n < 3:
            raise TaskError(f"examples: {n} rows; at least 3 are needed (dev and test are carved from them)")
        n_test, n_dev = _size(test_size, n, "test_size"), _size(dev_size, n, "dev_size")
        if n_test + n_dev >= n:
            raise ConfigError(f"test_size {test_size} + dev_size {dev_size} leave no train rows of {n}")
        rest, test_ex = carve(pool, n_test, "test", "examples test split") if n_test else (pool, [])
        rest, dev_ex = carve(rest, n_dev, seed, "examples dev split")
        splits = {"train": rest, "dev": dev_ex, "test": test_ex}
    else:
        if dev is None:
            raise ConfigError("pass examples=[...], or at least dev=[...] (train= and test= are optional)")
        splits = {s: build(rows_of(d, s), f"{name}-{s}-", s) for s, d in (("train", train), ("dev", dev), ("test", test))}
    ids = [e.id for s in splits.values() for e in s]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise TaskError(f"example id {dup!r} appears twice; {id_key!r} must be unique" if id_key else
                        f"example id {dup!r} appears twice")

    user_metric = metric
    if user_metric is not None:
        metric_name = getattr(user_metric, "__name__", type(user_metric).__name__)

        def task_metric(prediction: str, ex: Example) -> Any:
            row = rows_by_id.get(ex.id, {})
            try:
                value = user_metric(prediction, dict(row))
            except Exception as e:  # noqa: BLE001 - a user's function: one clear line naming the example
                raise MetricError(f"metric {metric_name} raised {type(e).__name__}: {e} on example {ex.id} "
                                  f"(prediction {prediction[:60]!r})") from e
            return check_metric_value(value, metric_name, ex.id)
        task_metric.__name__ = metric_name
        metric_fn: Callable[..., Any] = task_metric
    else:
        metric_fn = exact_match_strict if strict else exact_match
    task = Task(name=name, splits=splits, template=template, output=output, seed_prompts=seed_prompts,
                options=opts, extract=get_extractor(extract) if output == "generate" else get_extractor(None),
                metric=metric_fn, max_tokens=max_tokens, stop=tuple(stop), chat=chat, description=description,
                metric_on_choice=output == "choose" and user_metric is not None, corpus_metric=corpus_metric,
                meta={"source": "python", "metric": corpus_metric or getattr(metric_fn, "__name__", "metric"),
                      "extract": getattr(get_extractor(extract), "__name__", "extract"),
                      "sizes": {k: len(v) for k, v in splits.items()}})
    if user_metric is not None:  # one call on a gold answer: a broken metric fails here, before any model
        first = next(e for s in ("dev", "train", "test") for e in splits[s])
        task_metric(first.target, first)
    return task


def check_metric_value(value: Any, metric_name: str, example_id: str) -> Any:
    score = value[0] if isinstance(value, tuple) and len(value) == 2 else value
    if isinstance(value, tuple) and len(value) == 2 and value[1] is not None and not isinstance(value[1], str):
        raise MetricError(f"metric {metric_name} on example {example_id}: feedback must be text, "
                          f"not {type(value[1]).__name__}")
    try:
        if isinstance(score, (str, bytes)):
            raise TypeError
        f = float(score)  # bools and numpy numbers are numbers
    except (TypeError, ValueError):
        raise MetricError(f"metric {metric_name} returned {score!r} on example {example_id}; "
                          "expected a number or (number, feedback text)") from None
    if not math.isfinite(f):
        raise MetricError(f"metric {metric_name} returned {score!r} on example {example_id}; expected a finite number")
    return (f, value[1]) if isinstance(value, tuple) else f


def _size(size: float | int, n: int, what: str) -> int:
    if isinstance(size, bool) or not isinstance(size, (int, float)) or size < 0:
        raise ConfigError(f"{what} must be a row count or a fraction in [0, 1), got {size!r}")
    if isinstance(size, float) and size < 1:
        return max(1, round(size * n)) if size > 0 else 0
    return int(size)


def _label(row: Mapping[str, Any], opts: Sequence[str], label_key: str | None, target_key: str, where: str) -> int:
    clean = [o.strip() for o in opts]
    if label_key is not None:
        try:
            label = int(row[label_key])
        except (TypeError, ValueError):
            label = -1
        if not 0 <= label < len(opts):
            raise TaskError(f"{where}: label {row[label_key]!r} is not an option index 0..{len(opts) - 1}")
        return label
    target = str(row[target_key]).strip()
    if target in clean:
        return clean.index(target)
    folded = [o.casefold() for o in clean]
    if target.casefold() in folded:
        return folded.index(target.casefold())
    raise TaskError(f"{where}: target {target!r} is not one of the options ({', '.join(clean)})")


def in_memory_name(task: Task) -> str:
    """What config.json records as the task of a run given a Task object."""
    return IN_MEMORY + task.name
