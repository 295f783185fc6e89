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

Every key, with examples: docs/task-spec.md. The file is read into a `promptopt.task.spec.TaskSpec` and
built by `build_task`, as `make_task` and the lm-eval bridge are: the three follow one set of rules.

Other `{name}` fields in the template are filled from the column of the same name. A seeded split
draws test with a fixed seed, so every run reports on the same rows, then dev and train with the
run seed. Generation settings: extract (strip | first_line | first_number | last_number | option_letter |
regex:PATTERN, see promptopt/measure/answers.py), strict (exact match compares after stripping outer whitespace
only; by default it ignores case, extra whitespace and surrounding punctuation), chat, max_tokens, stop.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Mapping, Sequence

from pydantic import PositiveInt, ValidationError, field_validator, model_validator

from promptopt.task.data import (HubUnavailable, TaskOptions, hub_rows, parse_options, read_rows, read_saved_dataset,
                            read_text)
from promptopt.errors import ConfigError, TaskError
from promptopt.registry import register_task
from promptopt.task import SPLITS, Task
from promptopt.task.spec import (Columns, TaskSettings, TaskSpec, _Model, build_task, check_size, one_line, problems,
                                validate_spec)

__all__ = ["Columns", "DataFiles", "SpecFile", "custom", "load_spec", "spec_of"]


class DataFiles(_Model):
    file: str | None = None
    split: dict[Literal["train", "dev", "test"], Any] | None = None  # a row count or a fraction in [0, 1)
    train: str | None = None
    dev: str | None = None
    test: str | None = None
    # Separate files: at most this many rows of each (train and dev drawn with the run seed, test with the
    # fixed test sampler, so every run reports on the same rows).
    limit: dict[Literal["train", "dev", "test"], PositiveInt] | None = None
    # A hub dataset by name: train/dev/test then name its splits (e.g. dev = "validation").
    hub: str | None = None
    config: str | None = None

    @field_validator("split")
    @classmethod
    def _sizes(cls, v: dict[str, Any] | None) -> dict[str, Any] | None:
        return v if v is None else {k: check_size(size, k) for k, size in v.items()}

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


class SpecFile(TaskSettings):
    """A spec file: the task's settings (promptopt.task.spec.TaskSettings), its name and where its rows are."""
    name: str | None = None
    data: DataFiles


class CustomOptions(TaskOptions):
    spec: Path


@register_task("custom")
def custom(data_dir: str | Path | None = None, seed: int = 0, **options: Any) -> Task:
    """Build the task a spec file describes; `data_dir` is unused (the spec names its files)."""
    return build_task(spec_of(parse_options(CustomOptions, options, "custom").spec), seed)


def spec_of(path: Path) -> TaskSpec:
    """The TaskSpec a spec file describes, with its rows read."""
    spec = load_spec(path)
    settings = spec.model_dump(exclude={"name", "data"})
    return validate_spec(str(path), **settings, name=spec.name or path.stem, data=_data(spec, path.parent),
                         meta={"source": str(path)})


def load_spec(path: Path) -> SpecFile:
    """Read and validate a spec file; every problem is in one line naming the file."""
    if not path.is_file():
        raise ConfigError(f"task spec {str(path)!r} does not exist; pass the path to a .toml or .yaml file")
    raw = _parse(path, read_text(path))
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a table of settings at the top level")
    try:
        return SpecFile(**raw)
    except ValidationError as e:
        raise ConfigError(one_line(problems(e), str(path), " (see docs/task-spec.md)")) from None


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


def _data(spec: SpecFile, base: Path) -> dict[str, Any]:
    """TaskSpec.data for a spec: its rows, read, and how they split."""
    data = spec.data
    if data.hub is not None:
        names = {"train": data.train, "dev": data.dev, "test": data.test}
        return {"kind": "splits", **{s: _hub(data.hub, data.config, n) for s, n in names.items()},
                "limit": data.limit or {}, "where": {s: f"{data.hub} {n} row {{n}}" for s, n in names.items()}}
    if data.file is None:
        files = {"train": data.train, "dev": data.dev, "test": data.test}
        absent = [f"{split} = {file!r}" for split, file in files.items() if file and not (base / file).exists()]
        if len(absent) > 1:
            raise TaskError(f"{base}: data files do not exist: {', '.join(absent)}; paths in a spec are relative "
                            "to the spec")
        return {"kind": "splits", **{s: _read(base / f) for s, f in files.items() if f},
                "limit": data.limit or {}, "where": {s: f"{f} row {{n}}" for s, f in files.items() if f}}
    return {"kind": "pool", "rows": _read(base / data.file), **(data.split or {}), "where": f"{data.file} row {{n}}"}


def _hub(dataset: str, config: str | None, split: str | None) -> Sequence[Mapping[str, Any]]:
    assert split is not None  # one_layout checked it
    try:
        return hub_rows(dataset, split, config=config)
    except HubUnavailable as e:
        raise TaskError(f"data.hub: {e}; or save the data to files and name them in the spec") from None


def _read(path: Path) -> Sequence[Mapping[str, Any]]:
    if path.is_dir():
        rows = read_saved_dataset(path)
    elif not path.is_file():
        raise TaskError(f"data file {str(path)!r} does not exist; paths in a spec are relative to the spec")
    else:
        rows = read_rows(path)
    return rows
