"""One task builder: a validated `TaskSpec` and `build_task`, the one function that turns it into a `Task`.

Spec files (tasks/custom.py), `promptopt.make_task` and the lm-eval bridge (integrations/lmeval.py) each read
their input into a TaskSpec: rows as dicts, which column is which, and the task's settings. So one set of rules
holds for all three:

- template: needs `{prompt}` and `{input}`; `{<input column>}` may stand for `{input}`; any other `{field}` is
  filled from the column of that name.
- options (choose): at least two, distinct after stripping outer whitespace. Each is a continuation of the
  template: one that starts with no whitespace after a template that ends with none gets a leading space
  (the lm-eval bridge passes `exact_options`: its options are `target_delimiter + choice`, as lm-eval scores them).
- gold answers (choose): a target column's value picks the option equal to it after stripping, else the one
  equal ignoring case when exactly one is; a label column holds the option index.
- a needed cell that is missing, None or NaN is refused, and so is text holding a lone surrogate.
- splits: rows per split (`Splits`), or one pool cut by sizes (`Pool`): test with a fixed seed (every run
  reports on the same rows), then dev with the run seed; train is the rest, or a seeded sample. A size is a row
  count or a fraction in [0, 1); a positive fraction is at least one row. Dev needs at least one row; train
  and test may be empty (no test split: no test score).
- example ids: an id column, else `<name>-<split>-<i>` (`<name>-<i>` in a pool); they must be unique.
- metric: a name (`METRIC_NAMES`) or a callable `(prediction, row) -> number | (number, feedback)`. A callable
  that raises (SystemExit included) or returns anything but a finite number within +-1e300 is a MetricError
  naming the example, checked once on a gold answer when the task is built.
- extract (generate): a name (promptopt.measure.answers) or a callable; default `strip`, `last_number` with `numeric`.

Every problem with the settings is reported at once, one line (`problems`).
"""
from __future__ import annotations

import math
from collections import Counter
from typing import Annotated, Any, Callable, Literal, Mapping, Sequence, Union

from pydantic import (BaseModel, ConfigDict, Field, PositiveInt, SkipValidation, ValidationError, field_validator,
                      model_validator)

from promptopt.measure.answers import EXTRACTORS, exact_match, exact_match_strict, get_extractor
from promptopt.task.data import carve, lone_surrogate, sample, test_sample
from promptopt.errors import ConfigError, TaskError
from promptopt.measure.metrics import CORPUS_METRICS
from promptopt.task import SPLITS, Task
from promptopt.task.template import template_fields
from promptopt.types import Example

METRIC_NAMES = ("accuracy", "exact_match", "contains", "numeric", *CORPUS_METRICS)
CHOOSE_METRICS = ("accuracy", *CORPUS_METRICS)
# A metric score beyond this could overflow when scores are summed for a mean (1e308 + 1e308 = inf).
MAX_SCORE = 1e300


class MetricError(TaskError):
    """A user's metric raised or returned something that is not a finite number."""


def contains(prediction: str, example: Example) -> float:
    """1 when the gold answer appears in the prediction, ignoring case."""
    return float(example.target.strip().lower() in prediction.lower())


def numeric(prediction: str, example: Example) -> float:
    """1 when both parse as the same number (so "3.50" matches "3.5")."""
    try:
        got, want = float(prediction.replace(",", "")), float(example.target.replace(",", ""))
    except ValueError:
        return 0.0
    return float(math.isclose(got, want, rel_tol=1e-9, abs_tol=1e-9))


# choose tasks score by label match (the corpus metric on top); these apply to generate tasks
METRICS: dict[str, Callable[[str, Example], float]] = {
    "accuracy": exact_match, "exact_match": exact_match, "contains": contains, "numeric": numeric,
    "balanced_accuracy": exact_match, "macro_f1": exact_match}


def check_size(value: Any, what: str) -> float | int:
    """A split size: a row count (>= 0) or a fraction in [0, 1)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{what} must be a row count or a fraction in [0, 1), not {value!r}")
    if isinstance(value, float) and not (0 <= value < 1):
        raise ValueError(f"{what} = {value!r} must be a row count or a fraction in [0, 1)")
    if value < 0:
        raise ValueError(f"{what} = {value!r} must not be negative")
    return value


def count(size: float | int, n: int) -> int:
    """Rows a size stands for among `n`: a positive fraction is at least one row."""
    return int(size) if isinstance(size, int) else (max(1, round(size * n)) if size > 0 else 0)


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)


class Columns(_Model):
    input: str
    target: str | None = None
    label: str | None = None
    id: str | None = None


# Rows are checked one by one as they become Examples, where an error can name the row and the column.
Rows = SkipValidation[list[Mapping[str, Any]]]


class Pool(_Model):
    """One set of rows, cut into test (fixed seed), dev (run seed) and train (the rest, or a sample)."""
    kind: Literal["pool"] = "pool"
    rows: Rows
    dev: Any
    test: Any
    train: Any = None  # None: every row not in dev or test
    where: str = "examples row {n}"  # how an error names a row: {i} its index, {n} its number from 1

    @field_validator("dev", "test", "train")
    @classmethod
    def _size(cls, v: Any, info: Any) -> Any:
        return v if v is None and info.field_name == "train" else check_size(v, info.field_name)


class Splits(_Model):
    """Rows per split."""
    kind: Literal["splits"] = "splits"
    train: Rows = []
    dev: Rows = []
    test: Rows = []
    limit: dict[Literal["train", "dev", "test"], PositiveInt] = {}  # at most this many rows of a split
    dev_size: PositiveInt | None = None  # no dev rows: carve this many from train (test when train is empty)
    where: dict[Literal["train", "dev", "test"], str] = {}  # per split, as Pool.where; default "<split> row {n}"


class TaskSettings(_Model):
    """What a task is, apart from its name and rows: the keys a spec file shares with make_task."""
    description: str = ""
    template: str
    output: Literal["generate", "choose"]
    options: list[str] = []
    seed_prompts: list[str] = Field(min_length=1)
    metric: Any = None  # a name in METRIC_NAMES or a callable (prediction, row)
    extract: Any = None  # a name in promptopt.measure.answers.EXTRACTORS, regex:PATTERN, or a callable
    strict: bool = False
    chat: bool = False
    max_tokens: PositiveInt = 256
    stop: list[str] = []
    columns: Columns

    @field_validator("metric")
    @classmethod
    def _metric(cls, v: Any) -> Any:
        if v is None or callable(v) or v in METRIC_NAMES:
            return v
        raise ValueError(f"{v!r} is not a metric: use {', '.join(METRIC_NAMES)}, or (in Python) a callable "
                         "(prediction, row) -> float")

    @model_validator(mode="after")
    def _consistent(self) -> "TaskSettings":
        problems = settings_problems(self)
        if problems:
            raise ValueError(_JOIN.join(problems))
        return self


class TaskSpec(TaskSettings):
    """A task, validated: its settings, its name and its rows. `build_task` makes the Task."""
    name: str = Field(min_length=1)
    data: Annotated[Union[Pool, Splits], Field(discriminator="kind")]
    exact_options: bool = False  # options are continuations exactly as given (no leading space added)
    meta: dict[str, Any] = {}  # merged into Task.meta (source, ...)


_JOIN = "\x1f"  # joins the problems one validator finds inside its ValueError


def settings_problems(s: TaskSettings) -> list[str]:
    problems = []
    fields = template_fields(s.template)
    if "input" not in fields and s.columns.input in fields:
        fields = (fields - {s.columns.input}) | {"input"}
    missing = [f"{{{f}}}" for f in ("prompt", "input") if f not in fields]
    if missing:
        problems.append(f"the template lacks {' and '.join(missing)}" + (
            f" (or {{{s.columns.input}}})" if "{input}" in missing else ""))
    if isinstance(s.extract, str) and not s.extract.startswith("regex:") and s.extract not in EXTRACTORS:
        problems.append(f"extract: unknown extractor {s.extract!r} (use {', '.join(EXTRACTORS)} or regex:PATTERN)")
    elif s.extract is not None and not isinstance(s.extract, str) and not callable(s.extract):
        problems.append(f"extract must be a name or a callable (text) -> str, not {type(s.extract).__name__}")
    if s.output == "choose":
        if isinstance(s.metric, str) and s.metric not in CHOOSE_METRICS:
            problems.append(f"a choose task is scored by {', '.join(CHOOSE_METRICS)} (or a callable), "
                            f"not {s.metric!r}")
        if len(s.options) < 2:
            problems.append("a choose task needs at least two `options`")
        stripped = [o.strip() for o in s.options]
        twice = sorted({o for o in stripped if stripped.count(o) > 1})
        if twice:
            problems.append(f"options {', '.join(map(repr, twice))} appear more than once; each answer once")
        if (s.columns.target is None) == (s.columns.label is None):
            problems.append("a choose task needs exactly one of columns.target or columns.label")
    else:
        if s.options:
            problems.append("`options` are for output = 'choose'; a generate task has none")
        if s.columns.target is None:
            problems.append("a generate task needs columns.target")
        if s.columns.label is not None:
            problems.append("columns.label is for choose tasks; a generate task names columns.target")
        if s.metric in CORPUS_METRICS:
            problems.append(f"metric {s.metric!r} is for choose tasks; a generate task takes exact_match, "
                            "contains, numeric or a callable")
    if any(not p.strip() for p in s.seed_prompts):
        problems.append("seed_prompts: a seed prompt is empty")
    return problems


def problems(e: ValidationError) -> list[str]:
    """Each problem of a failed validation as 'where: what'."""
    out = []
    for err in e.errors():
        where = ".".join(str(p) for p in err["loc"] if p not in ("pool", "splits"))  # the union's tags
        msgs = err["msg"].removeprefix("Value error, ").split(_JOIN)
        if err["type"] == "extra_forbidden":
            msgs = ["unknown setting"]
        out += [f"{where + ': ' if where else ''}{m}" for m in msgs]
    return out


def one_line(found: Sequence[str], where: str, hint: str = "") -> str:
    """Several problems as one line: '<where>: 3 problems<hint>: (1) ...; (2) ...'."""
    if len(found) == 1:
        return f"{where}: {found[0]}"
    return f"{where}: {len(found)} problems{hint}: " + "; ".join(f"({i}) {p}" for i, p in enumerate(found, 1))


def validate_spec(where: str, also: Sequence[str] = (), **fields: Any) -> TaskSpec:
    """A TaskSpec from keyword fields; every problem (with those a builder found itself, `also`) at once,
    in one ConfigError line starting `where`."""
    try:
        spec = TaskSpec(**fields)
    except ValidationError as e:
        raise ConfigError(one_line([*also, *problems(e)], where)) from None
    if also:
        raise ConfigError(one_line(also, where))
    return spec


# -- TaskSpec -> Task ------------------------------------------------------------------------------------

def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


class _Builder:
    """Rows to Examples under one spec's rules; remembers each example's row for a callable metric."""

    def __init__(self, spec: TaskSpec):
        self.spec = spec
        cols = spec.columns
        fields = template_fields(spec.template)
        self.template = spec.template
        if "input" not in fields:  # the template names the input column itself
            self.template = spec.template.replace("{" + cols.input + "}", "{input}")
            fields = template_fields(self.template)
        self.extra = sorted(fields - {"prompt", "input"})
        lead = "" if self.template[-1:].isspace() else " "
        self.options = tuple(o if spec.exact_options or o[:1].isspace() else lead + o for o in spec.options)
        answer = cols.label if cols.label is not None else cols.target
        self.needed = [cols.input, *([answer] if answer else []), *self.extra, *([cols.id] if cols.id else [])]
        self.rows_by_id: dict[str, Mapping[str, Any]] = {}

    def examples(self, rows: Sequence[Mapping[str, Any]], id_prefix: str, where: str) -> list[Example]:
        return [self.example(row, i, id_prefix, where) for i, row in enumerate(rows)]

    def example(self, row: Mapping[str, Any], i: int, id_prefix: str, where: str) -> Example:
        spec, cols = self.spec, self.spec.columns
        if not isinstance(row, Mapping):
            raise TaskError(f"{where.format(i=i, n=i + 1)}: expected a dict of columns, not {type(row).__name__}")
        lacking = [c for c in self.needed if c not in row]
        if lacking:
            raise TaskError(f"{where.format(i=i, n=i + 1)} has no column {', '.join(map(repr, lacking))} "
                            f"(columns there: {', '.join(map(repr, list(row)[:8])) or 'none'})")
        cells = {c: row[c] for c in self.needed}
        empty = [c for c, v in cells.items() if _missing(v)]
        if empty:
            raise TaskError(f"{where.format(i=i, n=i + 1)}: column {', '.join(map(repr, empty))} is empty "
                            "(None or NaN)")
        text = {c: str(v) for c, v in cells.items()}
        for c, t in text.items():
            why = None if t.isascii() else lone_surrogate(t)
            if why:
                raise TaskError(f"{where.format(i=i, n=i + 1)}: column {c!r} holds {why}")
        ex_id = text[cols.id] if cols.id else f"{id_prefix}{i}"
        fields = {f: text[f] for f in self.extra}
        if spec.output == "generate":
            ex = Example(ex_id, text[cols.input], text[cols.target or ""], fields=fields)
        else:
            label = self.label(cells, where, i)
            ex = Example(ex_id, text[cols.input], self.options[label].strip(), label, fields)
        self.rows_by_id[ex_id] = row
        return ex

    def label(self, cells: Mapping[str, Any], where: str, i: int) -> int:
        cols, clean = self.spec.columns, [o.strip() for o in self.options]
        if cols.label is not None:
            value = cells[cols.label]
            try:
                index = float(value)  # 1, "1", 1.0 and True all mean option 1
                label = int(index) if index.is_integer() else -1
            except (TypeError, ValueError, OverflowError):
                label = -1
            if not 0 <= label < len(clean):
                raise TaskError(f"{where.format(i=i, n=i + 1)}: label {value!r} is not an option index "
                                f"0..{len(clean) - 1}")
            return label
        target = str(cells[cols.target or ""]).strip()
        if target in clean:
            return clean.index(target)
        folded = [k for k, o in enumerate(clean) if o.casefold() == target.casefold()]
        if len(folded) == 1:
            return folded[0]
        raise TaskError(f"{where.format(i=i, n=i + 1)}: target {target!r} is not one of the options "
                        f"({', '.join(clean)})"
                        + (" (it matches several, ignoring case)" if folded else ""))


def _splits(spec: TaskSpec, b: _Builder, seed: int) -> dict[str, list[Example]]:
    data = spec.data
    if isinstance(data, Pool):
        pool = b.examples(data.rows, f"{spec.name}-", data.where)
        n = len(pool)
        n_test, n_dev = count(data.test, n), count(data.dev, n)
        n_train = n - n_test - n_dev if data.train is None else count(data.train, n)
        if n_dev < 1:
            raise TaskError(f"{spec.name}: the dev split would be empty (dev = {data.dev!r} of {n} rows); "
                            "give it at least one row")
        if n_test + n_dev + n_train > n or n_train < 0:
            raise TaskError(f"{spec.name}: the splits ask for {n_test + n_dev + max(n_train, 0)} rows "
                            f"(test {n_test}, dev {n_dev}{'' if data.train is None else f', train {n_train}'}) "
                            f"but there are {n}")
        # Test with a fixed seed (the same rows in every run), then dev and train with the run seed.
        rest, test = carve(pool, n_test, "test", f"{spec.name} test split") if n_test else (pool, [])
        rest, dev = carve(rest, n_dev, seed, f"{spec.name} dev split") if n_dev < len(rest) else ([], rest)
        return {"train": sample(rest, n_train, seed), "dev": dev, "test": test}
    out = {s: b.examples(getattr(data, s), f"{spec.name}-{s}-", data.where.get(s, f"{s} row {{n}}"))
           for s in SPLITS}
    if not out["dev"] and data.dev_size is not None:
        source = "train" if out["train"] else "test"
        out[source], out["dev"] = carve(out[source], data.dev_size, seed, f"{spec.name} dev split from {source}")
    for split, n in data.limit.items():
        out[split] = test_sample(out[split], n) if split == "test" else sample(out[split], n, f"{seed}:{split}")
    if not out["dev"]:
        raise TaskError(f"{spec.name}: the dev split is empty; give it at least one row")
    return out


def _user_metric(fn: Callable[..., Any], rows_by_id: Mapping[str, Mapping[str, Any]]) -> Callable[..., Any]:
    name = getattr(fn, "__name__", type(fn).__name__)

    def task_metric(prediction: str, ex: Example) -> Any:
        try:
            value = fn(prediction, dict(rows_by_id.get(ex.id, {})))
        # A user's function: one clear line naming the example. SystemExit too, or a metric calling
        # sys.exit would end the run with exit 0 and no summary; Ctrl-C still stops it.
        except (Exception, SystemExit) as e:  # noqa: BLE001
            raise MetricError(f"metric {name} raised {type(e).__name__}: {e} on example {ex.id} "
                              f"(prediction {prediction[:60]!r})") from e
        return check_metric_value(value, name, ex.id)
    task_metric.__name__ = name
    return task_metric


def check_metric_value(value: Any, metric_name: str, example_id: str) -> Any:
    """A metric's value as float or (float, feedback); anything else is a MetricError naming the example."""
    pair = isinstance(value, tuple) and len(value) == 2
    score = value[0] if pair else value
    if pair and value[1] is not None and not isinstance(value[1], str):
        raise MetricError(f"metric {metric_name} on example {example_id}: feedback must be text, "
                          f"not {type(value[1]).__name__}")
    try:
        if isinstance(score, (str, bytes)):
            raise TypeError
        f = float(score)  # bools and numpy numbers are numbers
    except (TypeError, ValueError, OverflowError):
        raise MetricError(f"metric {metric_name} returned {score!r} on example {example_id}; "
                          "expected a number or (number, feedback text)") from None
    if not math.isfinite(f) or abs(f) > MAX_SCORE:
        raise MetricError(f"metric {metric_name} returned {score!r} on example {example_id}; expected a finite "
                          f"number within +-{MAX_SCORE:g} (scores are summed for means)")
    return (f, value[1]) if pair else f


def build_task(spec: TaskSpec, seed: int = 0) -> Task:
    """The Task a spec describes: rows checked and split, metric and extractor resolved (module doc)."""
    b = _Builder(spec)
    splits = _splits(spec, b, seed)
    twice = [i for i, n in Counter(e.id for s in splits.values() for e in s).items() if n > 1]
    if twice:
        raise TaskError(f"{spec.name}: example id {twice[0]!r} appears twice"
                        + (f"; column {spec.columns.id!r} must be unique" if spec.columns.id else ""))
    named = spec.metric if isinstance(spec.metric, str) else None
    metric_name = named or ("accuracy" if spec.output == "choose" else "exact_match")
    extract = spec.extract if spec.extract is not None else ("last_number" if named == "numeric" else "strip")
    if callable(spec.metric):
        metric = _user_metric(spec.metric, b.rows_by_id)
        metric_name = metric.__name__
    else:
        metric = exact_match_strict if spec.strict and METRICS[metric_name] is exact_match else METRICS[metric_name]
    extractor = get_extractor(extract if spec.output == "generate" else None)
    task = Task(name=spec.name, splits=splits, template=b.template, output=spec.output, options=b.options,
                seed_prompts=tuple(spec.seed_prompts), extract=extractor, metric=metric, max_tokens=spec.max_tokens,
                stop=tuple(spec.stop), chat=spec.chat, description=spec.description,
                metric_on_choice=spec.output == "choose" and callable(spec.metric),
                corpus_metric=named if named in CORPUS_METRICS else None,
                meta={**spec.meta, "metric": metric_name,
                      "extract": extract if isinstance(extract, str) else getattr(extract, "__name__", "extract"),
                      "sizes": {k: len(v) for k, v in splits.items()}})
    if callable(spec.metric):  # one call on a gold answer: a broken metric fails here, before any model
        first = next(e for s in ("dev", "train", "test") for e in splits[s])
        metric(first.target, first)
    return task
