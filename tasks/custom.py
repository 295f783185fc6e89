"""A task from a user's own files, described by a small TOML (or YAML) spec.

    name = "intents"                        # optional, defaults to the spec's file name
    template = "{prompt}\\n\\nMessage: {input}\\nIntent:"
    output = "choose"                       # or "generate"
    options = [" billing", " technical", " other"]   # choose only; index = label
    seed_prompts = ["What is this message about?"]
    metric = "accuracy"                     # choose: accuracy, balanced_accuracy or macro_f1;
                                            #   generate: exact_match (alias accuracy), contains or numeric
    [columns]
    input = "text"                          # the column put into {input}
    target = "intent"                       # gold answer; for choose it must match an option
    # label = "label"                       # choose: a column holding the option index instead
    [data]
    file = "intents.csv"                    # JSON lines, a JSON array, CSV or TSV (read by content), or a
                                            #   folder from datasets' save_to_disk; relative to the spec
    split = { train = 0.4, dev = 0.3, test = 0.3 }   # fractions or counts
    # or: train = "train.jsonl", dev = "dev.jsonl", test = "test.jsonl"
    #     limit = { train = 500, test = 1000 }   # optional: at most this many rows of a file
    # or: hub = "org/name", config = "...", train = "train", dev = "validation", test = "test"

Every key, with examples: docs/task-spec.md.

Other `{name}` fields in the template are filled from the column of the same name. A seeded split
draws test with a fixed seed, so every run reports on the same rows, then dev and train with the
run seed. Generation settings: extract (strip | first_line | first_number | last_number | option_letter |
regex:PATTERN, see promptopt/answers.py), strict (exact match compares after stripping outer whitespace
only; by default it ignores case, extra whitespace and surrounding punctuation), chat, max_tokens, stop.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Callable, Literal, Mapping, Sequence, Union

from pydantic import BaseModel, ConfigDict, Field, PositiveInt, ValidationError, model_validator

from promptopt.data import (HubUnavailable, TaskOptions, carve, hub_rows, lone_surrogate, parse_options, read_jsonl,
                            read_saved_dataset, read_table, read_text, require_columns, sample, test_sample)
from promptopt.errors import ConfigError, TaskError
from promptopt.registry import register_task
from promptopt.answers import EXTRACTORS as _ANSWER_EXTRACTORS, exact_match_strict, get_extractor
from promptopt.task import SPLITS, Task, exact_match, identity, last_number
from promptopt.template import template_fields
from promptopt.types import Example

Size = Union[PositiveInt, float]  # a count of rows, or a fraction of the file in (0, 1)


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


def first_line(text: str) -> str:
    return next((line.strip() for line in text.strip().splitlines() if line.strip()), "")


METRICS: dict[str, Callable[[str, Example], float]] = {
    "exact_match": exact_match, "accuracy": exact_match, "contains": contains, "numeric": numeric,
    "balanced_accuracy": exact_match, "macro_f1": exact_match}  # choose: label match, the corpus metric on top
EXTRACTORS: dict[str, Callable[[str], str]] = {
    **_ANSWER_EXTRACTORS, "strip": identity, "last_number": last_number, "first_line": first_line}


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Columns(_Spec):
    input: str
    target: str | None = None
    label: str | None = None


class DataFiles(_Spec):
    file: str | None = None
    split: dict[Literal["train", "dev", "test"], Size] | None = None
    train: str | None = None
    dev: str | None = None
    test: str | None = None
    # Separate files: at most this many rows of each (train and dev drawn with the run seed, test with the
    # fixed test sampler, so every run reports on the same rows).
    limit: dict[Literal["train", "dev", "test"], PositiveInt] | None = None
    # A hub dataset by name: train/dev/test then name its splits (e.g. dev = "validation").
    hub: str | None = None
    config: str | None = None

    @model_validator(mode="after")
    def one_layout(self) -> "DataFiles":
        explicit = [self.train, self.dev, self.test]
        if self.hub is not None:
            if self.file is not None or not all(explicit):
                raise ValueError("with `hub`, name its three splits: train = \"train\", dev = \"validation\", "
                                 "test = \"test\" (no `file`)")
        elif self.config is not None:
            raise ValueError("`config` names a hub dataset's configuration; it goes with `hub`")
        if self.file is not None:
            if any(explicit):
                raise ValueError("give either `file` with `split`, or `train`/`dev`/`test` files, not both")
            if self.limit:
                raise ValueError("`limit` is for separate train/dev/test files; with `file`, `split` sets the sizes")
            if self.split is None or set(self.split) != set(SPLITS):
                raise ValueError("`file` needs `split = { train = ..., dev = ..., test = ... }`")
        elif not all(explicit):
            raise ValueError("give `train`, `dev` and `test` files, or one `file` with a `split`")
        return self


class TaskSpec(_Spec):
    name: str | None = None
    description: str = ""
    template: str
    output: Literal["generate", "choose"]
    options: list[str] = []
    seed_prompts: list[str] = Field(min_length=1)
    metric: Literal["exact_match", "contains", "numeric", "accuracy", "balanced_accuracy", "macro_f1"] | None = None
    extract: str | None = None  # a name in EXTRACTORS or regex:PATTERN
    strict: bool = False
    chat: bool = False
    max_tokens: PositiveInt = 256
    stop: list[str] = []
    columns: Columns
    data: DataFiles

    @model_validator(mode="after")
    def consistent(self) -> "TaskSpec":
        problems = []  # every one, so a dry run lists them all at once (load_spec splits them again)
        missing = [f"{{{f}}}" for f in ("prompt", "input") if f not in template_fields(self.template)]
        if missing:
            problems.append(f"the template lacks {' and '.join(missing)}")
        if self.extract is not None and not self.extract.startswith("regex:") and self.extract not in EXTRACTORS:
            problems.append(f"extract: unknown extractor {self.extract!r} (use {', '.join(EXTRACTORS)} "
                            "or regex:PATTERN)")
        if self.output == "choose":
            if self.metric not in (None, "accuracy", "balanced_accuracy", "macro_f1"):
                problems.append(f"a choose task is scored by accuracy, balanced_accuracy or macro_f1, "
                                f"not {self.metric!r}")
            if len(self.options) < 2:
                problems.append("a choose task needs at least two `options`")
            if (self.columns.target is None) == (self.columns.label is None):
                problems.append("a choose task needs exactly one of columns.target or columns.label")
        else:
            if self.options:
                problems.append("`options` are for output = 'choose'; a generate task has none")
            if self.columns.target is None:
                problems.append("a generate task needs columns.target")
            if self.metric in ("balanced_accuracy", "macro_f1"):
                problems.append(f"metric {self.metric!r} is for choose tasks; a generate task takes exact_match, "
                                "contains or numeric")
        if problems:
            raise ValueError(_PROBLEMS.join(problems))
        return self


_PROBLEMS = "\x1f"  # joins several problems of one validator inside its ValueError


class CustomOptions(TaskOptions):
    spec: Path


@register_task("custom")
def custom(data_dir: str | Path | None = None, seed: int = 0, **options: Any) -> Task:
    """Build the task a spec file describes; `data_dir` is unused (the spec names its files)."""
    path = parse_options(CustomOptions, options, "custom").spec
    spec = load_spec(path)
    name = spec.name or path.stem
    splits = _splits(spec, path.parent, name, seed)
    for split, examples in splits.items():
        if not examples:
            raise TaskError(f"{path}: the {split} split is empty; give it at least one row")
    metric = spec.metric or ("accuracy" if spec.output == "choose" else "exact_match")
    extract = spec.extract or ("last_number" if metric == "numeric" else "strip")
    return Task(
        name=name,
        splits=splits,
        template=spec.template,
        output=spec.output,
        options=tuple(spec.options),
        seed_prompts=tuple(spec.seed_prompts),
        extract=EXTRACTORS[extract] if extract in EXTRACTORS else get_extractor(extract),
        metric=exact_match_strict if spec.strict and METRICS[metric] is exact_match else METRICS[metric],
        corpus_metric=metric if metric in ("balanced_accuracy", "macro_f1") else None,
        max_tokens=spec.max_tokens,
        stop=tuple(spec.stop),
        chat=spec.chat,
        description=spec.description,
        meta={"source": str(path), "metric": metric, "extract": extract,
              "sizes": {k: len(v) for k, v in splits.items()}},
    )


def load_spec(path: Path) -> TaskSpec:
    """Read and validate a spec; every problem is one line naming the file."""
    if not path.is_file():
        raise ConfigError(f"task spec {str(path)!r} does not exist; pass the path to a .toml or .yaml file")
    raw = _parse(path, read_text(path))
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a table of settings at the top level")
    try:
        return TaskSpec(**raw)
    except ValidationError as e:
        problems = []
        for err in e.errors():
            where = ".".join(str(p) for p in err["loc"])
            # Errors from the model validators have no location and start "Value error, ".
            msgs = err["msg"].removeprefix("Value error, ").split(_PROBLEMS)
            if err["type"] == "extra_forbidden":
                msgs = ["unknown setting"]
            problems += [f"{where + ': ' if where else ''}{m}" for m in msgs]
        if len(problems) == 1:
            raise ConfigError(f"{path}: {problems[0]}") from None
        raise ConfigError(f"{path}: {len(problems)} problems (see docs/task-spec.md): "
                          + "; ".join(f"({i}) {p}" for i, p in enumerate(problems, 1))) from None


def _parse(path: Path, text: str) -> Any:
    if path.suffix == ".toml":
        try:
            import tomllib
        except ImportError:  # Python 3.10
            raise ConfigError(f"{path}: TOML specs need Python 3.11+; write the spec in YAML") from None
        try:
            return tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{path}: not valid TOML ({e})") from None
    if path.suffix in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:
            raise ConfigError(f"{path}: YAML specs need PyYAML (pip install pyyaml); or write TOML") from None
        try:
            return yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML ({' '.join(str(e).split())})") from None
    raise ConfigError(f"{path}: a task spec must end in .toml, .yaml or .yml")


def _splits(spec: TaskSpec, base: Path, name: str, seed: int) -> dict[str, list[Example]]:
    data = spec.data
    if data.hub is not None:
        out = {split: [_example(spec, row, f"{name}-{split}-{i}", f"{data.hub} {hub_split} row {i + 1}")
                       for i, row in enumerate(_hub(spec, hub_split))]
               for split, hub_split in (("train", data.train), ("dev", data.dev), ("test", data.test))}
        return _limited(out, data.limit, seed)
    if data.file is None:
        files = {"train": data.train, "dev": data.dev, "test": data.test}
        absent = [f"{split} = {file!r}" for split, file in files.items() if file and not (base / file).exists()]
        if len(absent) > 1:
            raise TaskError(f"{base}: data files do not exist: {', '.join(absent)}; paths in a spec are relative "
                            "to the spec")
        out = {split: [_example(spec, row, f"{name}-{split}-{i}", f"{file} row {i + 1}")
                       for i, row in enumerate(_read(spec, base / file))]
               for split, file in files.items() if file}
        return _limited(out, data.limit, seed)
    rows = _read(spec, base / data.file)
    examples = [_example(spec, row, f"{name}-{i}", f"{data.file} row {i + 1}") for i, row in enumerate(rows)]
    sizes = _sizes(data.split or {}, len(examples), base / data.file)
    # Test with a fixed seed (the same rows in every run), then dev and train with the run seed.
    rest, test = carve(examples, sizes["test"], "test", f"{data.file} test split")
    rest, dev = carve(rest, sizes["dev"], seed, f"{data.file} dev split")
    return {"train": sample(rest, sizes["train"], seed), "dev": dev, "test": test}


def _sizes(split: Mapping[str, float], n_rows: int, file: Path) -> dict[str, int]:
    sizes = {}
    for name, size in split.items():
        if isinstance(size, float) and not 0 < size < 1:
            raise ConfigError(f"{file}: split.{name} = {size} must be a row count or a fraction in (0, 1)")
        sizes[name] = round(size * n_rows) if isinstance(size, float) else int(size)
        if sizes[name] < 1:
            raise TaskError(f"{file}: the {name} split would be empty ({size} of {n_rows} rows)")
    if sum(sizes.values()) > n_rows:
        raise ConfigError(f"{file}: the split asks for {sum(sizes.values())} rows but the file has {n_rows}")
    return sizes


def _limited(out: dict[str, list[Example]], limit: Mapping[str, int] | None, seed: int) -> dict[str, list[Example]]:
    for split, n in (limit or {}).items():
        out[split] = test_sample(out[split], n) if split == "test" else sample(out[split], n, f"{seed}:{split}")
    return out


def _hub(spec: TaskSpec, split: str | None) -> Sequence[Mapping[str, Any]]:
    assert spec.data.hub is not None and split is not None  # one_layout checked both
    try:
        rows = hub_rows(spec.data.hub, split, config=spec.data.config)
    except HubUnavailable as e:
        raise TaskError(f"data.hub: {e}; or save the data to files and name them in the spec") from None
    _require(spec, rows, f"{spec.data.hub} {split}")
    return rows


def _read(spec: TaskSpec, path: Path) -> Sequence[Mapping[str, Any]]:
    if path.is_dir():
        rows = read_saved_dataset(path)
    elif not path.is_file():
        raise TaskError(f"data file {str(path)!r} does not exist; paths in a spec are relative to the spec")
    else:
        rows = read_rows(path)
    _require(spec, rows, str(path))
    return rows


def _require(spec: TaskSpec, rows: Sequence[Mapping[str, Any]], source: str) -> None:
    needed = [c for c in (spec.columns.input, spec.columns.target, spec.columns.label) if c]
    require_columns(rows, needed + sorted(template_fields(spec.template) - {"prompt", "input"}), source)


def read_rows(path: Path) -> list[dict[str, Any]]:
    """Rows of a data file, by its content: a JSON array of objects, JSON lines (whatever the file is called:
    `.json`, `.jsonl`, `.ndjson`, `.txt`), else CSV or TSV (by the extension, or by the header line:
    tabs make it TSV)."""
    text = read_text(path)
    head = text.lstrip()[:1]
    if head == "[":
        return _json_array(path, text)
    if head == "{":
        first = next(line for line in text.split("\n") if line.strip())
        try:
            json.loads(first)
        except json.JSONDecodeError:  # one object over several lines: a JSON document, not JSON lines
            raise TaskError(f"{path}: holds one JSON object; give JSON lines (one object a line) or a JSON "
                            "array of objects") from None
        return read_jsonl(path)
    if path.suffix in (".jsonl", ".json", ".ndjson"):
        if not text.strip():
            return []  # no rows: the split is reported empty
        raise TaskError(f"{path}: expected JSON lines or a JSON array of objects, but it starts with "
                        f"{text.lstrip()[:20]!r}")
    header = text.split("\n", 1)[0]
    tsv = path.suffix == ".tsv" or (path.suffix != ".csv" and "\t" in header)
    return read_table(path, "\t" if tsv else ",")


def _json_array(path: Path, text: str) -> list[dict[str, Any]]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise TaskError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None
    if not isinstance(data, list):
        raise TaskError(f"{path}: expected a JSON array of objects")
    for i, row in enumerate(data):
        if not isinstance(row, dict):
            raise TaskError(f"{path}: item {i + 1} of the array is {type(row).__name__}, expected an object")
        bad = lone_surrogate(row)
        if bad:
            raise TaskError(f"{path}: item {i + 1}: {bad}")
    return data


def _example(spec: TaskSpec, row: Mapping[str, Any], example_id: str, where: str) -> Example:
    cols, options = spec.columns, [o.strip() for o in spec.options]
    extra = {f: str(row[f]) for f in template_fields(spec.template) - {"prompt", "input"}}
    text = str(row[cols.input])
    if spec.output == "generate":
        return Example(example_id, text, str(row[cols.target]), fields=extra)
    if cols.label is not None:
        label = _int_or_none(row[cols.label])
        if label is None or not 0 <= label < len(options):
            raise TaskError(f"{where}: label {row[cols.label]!r} is not an option index 0..{len(options) - 1}")
    else:
        target = str(row[cols.target]).strip()
        if target not in options:
            raise TaskError(f"{where}: target {target!r} is not one of the options ({', '.join(options)})")
        label = options.index(target)
    return Example(example_id, text, options[label], label=label, fields=extra)


def _int_or_none(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None
