"""Loading task data: local files first, the Hugging Face hub as a fallback, seeded splits.

Every built-in task reads a local copy laid out as docs/data.md describes from
`--data-dir` or PROMPTOPT_DATA_DIR when one is there, and otherwise asks the hub. A hub failure
becomes one DataNotFoundError line that says where to put the files, never a traceback.
This module also holds the options model every task factory validates its keyword settings with.
"""
from __future__ import annotations

import csv
import io
import json
import os
import random
from pathlib import Path
from typing import Any, Callable, Hashable, Mapping, Sequence, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from promptopt.errors import ConfigError, DataNotFoundError, TaskError
from promptopt.types import Example

DATA_DIR_ENV = "PROMPTOPT_DATA_DIR"
T = TypeVar("T")
O = TypeVar("O", bound="TaskOptions")
E = TypeVar("E", bound="Example")


def resolve_data_dir(explicit: str | Path | None = None) -> Path | None:
    """The data dir to read: the explicit argument, else $PROMPTOPT_DATA_DIR, else None (hub only)."""
    chosen, origin = (explicit, "--data-dir") if explicit else (os.environ.get(DATA_DIR_ENV), DATA_DIR_ENV)
    if not chosen:
        return None
    path = Path(chosen).expanduser()
    if not path.is_dir():
        raise DataNotFoundError(f"data dir {str(path)!r} (from {origin}) is not a directory; "
                                f"fix the path or leave it unset to use the hub")
    return path


def local_file(data_dir: Path | None, relpath: str) -> Path | None:
    """`data_dir/relpath` when it exists, else None."""
    if data_dir is None:
        return None
    path = data_dir / relpath
    return path if path.is_file() else None


def read_text(path: Path) -> str:
    """A whole UTF-8 file; unreadable or non-UTF-8 content is one TaskError naming file and line."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise TaskError(f"cannot read {path}: {e.strerror}") from None
    try:
        return data.decode("utf-8-sig")  # a BOM (as spreadsheet exports write) is not part of the header
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise TaskError(f"{path}:{line}: not UTF-8 text; re-save the file as UTF-8") from None


def lone_surrogate(value: Any) -> str | None:
    """Why a parsed JSON value cannot be text for a model (a lone UTF-16 surrogate such as "\\ud800",
    which no encoder accepts), or None."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as e:
            return f"text with a lone surrogate ({value[e.start]!r}), which is not valid Unicode"
        return None
    items = value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
    return next((why for why in map(lone_surrogate, items) if why), None)


def _json_row(row: Any, where: str, what: str) -> dict[str, Any]:
    """A parsed JSON row that must be an object of valid Unicode text; else one TaskError at `where`."""
    if not isinstance(row, dict):
        raise TaskError(f"{where}: expected a JSON object, got {type(row).__name__}")
    bad = lone_surrogate(row)
    if bad:
        raise TaskError(f"{where}: {bad}; {what}")
    return row


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """One JSON object a line; blank lines are skipped. A bad line is named by file and number."""
    rows = []
    # Split on "\n" only: JSON strings may hold other line separators (U+2028) unescaped.
    for lineno, line in enumerate(read_text(path).split("\n"), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise TaskError(f"{path}:{lineno}: not valid JSON ({e.msg}); fix or remove that line") from None
        rows.append(_json_row(row, f"{path}:{lineno}", "fix or remove that line"))
    return rows


def read_json_array(path: Path, text: str) -> list[dict[str, Any]]:
    """A JSON array of objects; a bad item is named by its number."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise TaskError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None
    if not isinstance(data, list):
        raise TaskError(f"{path}: expected a JSON array of objects")
    return [_json_row(row, f"{path}: item {i} of the array", "fix or remove that item")
            for i, row in enumerate(data, 1)]


def read_rows(path: Path) -> list[dict[str, Any]]:
    """Rows of a data file, by its content: a JSON array of objects, JSON lines (whatever the file is called:
    `.json`, `.jsonl`, `.ndjson`, `.txt`), else CSV or TSV (by the extension, or by the header line:
    tabs make it TSV)."""
    text = read_text(path)
    head = text.lstrip()[:1]
    if head == "[":
        return read_json_array(path, text)
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
            return []  # no rows: an empty split
        raise TaskError(f"{path}: expected JSON lines or a JSON array of objects, but it starts with "
                        f"{text.lstrip()[:20]!r}")
    header = text.split("\n", 1)[0]
    tsv = path.suffix == ".tsv" or (path.suffix != ".csv" and "\t" in header)
    return read_table(path, "\t" if tsv else ",")


def read_table(path: Path, delimiter: str = "\t") -> list[dict[str, str]]:
    """A CSV/TSV file with a header row, read with standard CSV quoting.

    Quoting matters: some RLPrompt fields are `"`-quoted and one holds a tab inside its quotes,
    so a naive split on the delimiter would cut rows apart.
    """
    reader = csv.DictReader(io.StringIO(read_text(path), newline=""), delimiter=delimiter)
    rows = []
    try:
        if not reader.fieldnames:
            raise TaskError(f"{path}: empty file, expected a header row")
        twice = sorted({c for c in reader.fieldnames if reader.fieldnames.count(c) > 1})
        if twice:  # csv would keep the last one silently, relabelling every row
            raise TaskError(f"{path}:1: the header names {', '.join(map(repr, twice))} more than once")
        for row in reader:
            # Rows with more fields than the header put the extras under the key None.
            if None in row or None in row.values():
                raise TaskError(f"{path}:{reader.line_num}: has {len(reader.fieldnames)} header columns "
                                f"but this row does not match; check its quoting")
            rows.append(row)
    except csv.Error as e:
        raise TaskError(f"{path}:{reader.line_num}: cannot parse this row ({e})") from None
    return rows


def require_columns(rows: Sequence[Mapping[str, Any]], columns: Sequence[str], source: str) -> None:
    """Every row has every column; else one line naming the first row that lacks one."""
    for i, row in enumerate(rows):
        missing = [c for c in columns if c not in row]
        if missing:
            raise TaskError(f"{source}: row {i + 1} has no column {missing[0]!r} "
                            f"(columns there: {', '.join(map(str, row)) or 'none'})")


def no_local_copy(task: str, looked_in: Path | None, layout: str, why: str = "") -> DataNotFoundError:
    """The one-line error for data that is neither local nor fetchable; `why` says what else failed."""
    where = f"no local copy under {looked_in}" if looked_in else "no data dir given"
    return DataNotFoundError(f"task {task}: {where}{why}; pass --data-dir or set {DATA_DIR_ENV} to a "
                             f"folder holding {layout} (docs/data.md says where each task's files come from)")


_OFFLINE_ENV = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
_hub_up: bool | None = None  # the probe's answer, once per process


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the hub's host answers a TCP connect within `timeout` (asked once per process). The name
    lookup counts too: a socket's timeout does not bound it, and a slow resolver took 20 s, so the probe
    runs in a daemon thread that is given up on after `timeout`."""
    global _hub_up
    if _hub_up is None:
        import socket
        import threading
        from urllib.parse import urlparse
        url = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
        answer: list[bool] = []

        def probe() -> None:
            try:
                socket.create_connection((url.hostname or "", url.port or (80 if url.scheme == "http" else 443)),
                                         timeout=timeout).close()
                answer.append(True)
            except OSError:
                answer.append(False)
        thread = threading.Thread(target=probe, name="promptopt-hub-probe", daemon=True)
        thread.start()
        thread.join(timeout)
        _hub_up = bool(answer and answer[0])
    return _hub_up


def _go_offline() -> None:
    """Make `datasets` serve its local cache without retrying an unreachable hub (~25 s of doubled warnings)."""
    for name in _OFFLINE_ENV:
        os.environ[name] = "1"
    import sys
    for module in ("huggingface_hub.constants", "datasets.config"):  # when already imported, they read it at import
        if module in sys.modules and hasattr(sys.modules[module], "HF_HUB_OFFLINE"):
            setattr(sys.modules[module], "HF_HUB_OFFLINE", True)


def load_hub(dataset: str, split: str, *, config: str | None = None, task: str,
             looked_in: Path | None, layout: str) -> list[dict[str, Any]]:
    """Rows of one split from the hub, or a DataNotFoundError naming where local files would go."""
    try:
        return hub_rows(dataset, split, config=config)
    except HubUnavailable as e:
        raise no_local_copy(task, looked_in, layout, f" and {e}") from None


class HubUnavailable(Exception):
    """The hub (or its local cache) cannot give a dataset split; the message says why, in one line."""


def hub_rows(dataset: str, split: str, *, config: str | None = None) -> list[dict[str, Any]]:
    """Rows of one hub dataset split through `datasets`.

    An unreachable hub (a 3 s connect probe) switches `datasets` to offline mode first, so it serves its
    local cache or fails at once instead of spending ~25 s on retries.
    """
    try:
        import datasets  # the `hf` extra; imported late because it is heavy and optional
    except ImportError:
        raise HubUnavailable(f"the `datasets` package is not installed to fetch {dataset!r}") from None
    offline = any(os.environ.get(v, "").lower() in ("1", "true", "yes", "on") for v in _OFFLINE_ENV)
    unreachable = not offline and not hub_reachable()
    if unreachable:
        _go_offline()
    try:
        return [dict(row) for row in datasets.load_dataset(dataset, config, split=split)]
    except Exception as e:  # any hub failure (offline, 404, retries exhausted) means "not available"
        reason = ("the hub's host did not answer and the local hub cache has no copy" if unreachable else
                  f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:160])
        raise HubUnavailable(f"the hub cannot provide {dataset!r} ({reason})") from None


def read_saved_dataset(path: Path) -> list[dict[str, Any]]:
    """Rows of a folder written by `datasets.Dataset.save_to_disk`. A DatasetDict's folder holds one
    such folder per split: name those."""
    if (path / "dataset_dict.json").is_file():
        try:
            splits = json.loads(read_text(path / "dataset_dict.json")).get("splits", [])
        except (json.JSONDecodeError, AttributeError):
            splits = []
        raise TaskError(f"{path} is a DatasetDict saved with save_to_disk (splits: {', '.join(splits) or '?'}); "
                        f"name one of its split folders per split, e.g. train = \"{path.name}/train\"")
    if not (path / "state.json").is_file():
        raise TaskError(f"{path} is a folder, but not one written by datasets' save_to_disk (no state.json)")
    try:
        import datasets
    except ImportError:
        raise TaskError(f"{path}: reading a save_to_disk folder needs the `datasets` package "
                        "(pip install 'promptopt[hf]')") from None
    try:
        return [dict(row) for row in datasets.load_from_disk(str(path))]
    except Exception as e:  # a damaged or foreign folder: one line, not a traceback
        raise TaskError(f"{path}: datasets cannot load this save_to_disk folder "
                        f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"[:300]) from None


def sample(items: Sequence[T], n: int | None, seed: int | str,
           balance_by: Callable[[T], Hashable] | None = None) -> list[T]:
    """A seeded sample of `n` items in their original order (all of them when n is None or large).

    With `balance_by`, classes are drawn in turn so each gets an equal share while it lasts.
    """
    if n is None or n >= len(items):
        return list(items)
    return [items[i] for i in _sample_indices(items, n, seed, balance_by)]


def test_sample(examples: Sequence[E], limit: int | None) -> list[E]:
    """The one test sampler: the `limit` test examples that a run's `--test-limit`, a task's
    `test_limit` option, `evaluate --limit`, `compare` and `--dry-run` all use. Its seed is fixed
    ("test"), not the run seed, so runs that differ only in seed report on the same examples; it draws
    the classes in turn (by `label`) when examples have one, and keeps the original order."""
    return sample(examples, limit, "test", balance_by=lambda ex: ex.label)


def carve(items: Sequence[T], n: int, seed: int | str, what: str) -> tuple[list[T], list[T]]:
    """Split a seeded random `n` items off `items` (e.g. a dev split from train): (rest, carved)."""
    if not 0 < n < len(items):
        raise ConfigError(f"{what}: cannot carve {n} examples from {len(items)}; "
                          f"choose a size between 1 and {len(items) - 1}")
    taken = set(_sample_indices(items, n, seed, None))
    return ([x for i, x in enumerate(items) if i not in taken],
            [x for i, x in enumerate(items) if i in taken])


def _sample_indices(items: Sequence[T], n: int, seed: int | str,
                    balance_by: Callable[[T], Hashable] | None) -> list[int]:
    rng = random.Random(seed)
    groups: dict[Hashable, list[int]] = {}
    for i, item in enumerate(items):
        groups.setdefault(balance_by(item) if balance_by else None, []).append(i)
    for members in groups.values():
        rng.shuffle(members)
    picked: list[int] = []
    while len(picked) < n:  # round robin over classes; n < len(items) so this ends
        for members in groups.values():
            if members and len(picked) < n:
                picked.append(members.pop())
    return sorted(picked)


class TaskOptions(BaseModel):
    """Base of a task factory's keyword options: unknown keys are an error, values validated."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def parse_options(model: type[O], options: Mapping[str, Any], task: str) -> O:
    """Validate a factory's options; any problem is one ConfigError line naming the valid options."""
    valid = ", ".join(model.model_fields) or "none"
    try:
        return model(**options)
    except ValidationError as e:
        err = e.errors()[0]
        name = ".".join(str(p) for p in err["loc"]) or "?"
        if err["type"] == "extra_forbidden":
            raise ConfigError(f"task {task}: unknown option {name!r} (valid options: {valid})") from None
        raise ConfigError(f"task {task}: option {name!r}: {err['msg']} (valid options: {valid})") from None
