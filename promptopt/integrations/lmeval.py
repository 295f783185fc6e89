"""lm-evaluation-harness bridge (the `lmeval` extra: `pip install 'promptopt[lmeval]'`).

    promptopt lmeval import path/to/task.yaml          # check it, print the task spec: lmeval:/abs/path/to/task.yaml
    promptopt optimize --task lmeval:path/to/task.yaml --strategy hill_climb --optimizer-model none
    promptopt lmeval export runs/<id> --out exported/  # exported/<task>_promptopt.yaml, run by lm_eval unchanged
    lm_eval --model hf --model_args pretrained=... --include_path exported --tasks <task>_promptopt

An lm-eval task config (a YAML with `task`, `dataset_path`/`dataset_kwargs`, `doc_to_text`, `doc_to_target`,
`doc_to_choice`, `output_type`, `metric_list`, splits) becomes a promptopt Task through lm-eval's own
`TaskManager` and `ConfigurableTask`, so its Jinja templates, `!function` hooks and `process_docs` mean
what they mean to lm-eval:

- `multiple_choice` -> a `choose` task: the options are `target_delimiter + choice` scored by log-likelihood
  after the context, as lm-eval scores them (`acc`). The choices must be one list for every doc.
- `generate_until` -> a `generate` task: stop at `generation_kwargs.until`, at most `max_gen_toks` tokens,
  scored by lm-eval's exact match rule with the task's `ignore_case` / `ignore_punctuation` /
  `regexes_to_ignore` (the first `exact_match` entry of `metric_list`).
- splits: lm-eval's training -> train, validation -> dev, test -> test. With no validation split, dev is
  carved from train (a third, at most 100, with the run seed), or from test when there is no train split.
- the instruction prefix stands where lm-eval's `description` stands: `{prompt}\\n\\n` + doc_to_text. The seed
  prompt is the task's own description, else a plain instruction.
- the docs become rows of a `promptopt.task.spec.TaskSpec`, built by the same function as spec files and
  `make_task`, so the same rules hold (distinct options, no empty cells, ...); `limit` draws a split's rows
  as spec files' `limit` does (test with the fixed test sampler).
- the config must say its `output_type`, and be a `*.yaml` file. lm-eval looks a task up by name among the
  `*.yaml` files of the config's folder (and below): when it would load another file that declares the
  same `task:` name, the bridge refuses, naming that file.

Export writes the same YAML with `description` set to the best prompt as the model read it (instruction and
any demos) followed by a blank line, the task renamed `<task>_promptopt`, and relative paths (`include`,
`data_files`) made absolute, so `lm_eval` evaluates the optimized prompt with nothing else changed. It writes
only inside `--out` (a plain `--task-name`; `--out`'s parent must exist), atomically, and replaces only a
config an earlier export wrote (its `metadata.promptopt`).
"""
from __future__ import annotations

import contextlib
import os
import re
import string
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from promptopt.errors import ConfigError, TaskError
from promptopt.paths import write_text
from promptopt.task import SPLITS, Task
from promptopt.task.spec import build_task, validate_spec

PREFIX = "lmeval:"
INSTALL_HINT = "pip install 'promptopt[lmeval]' (lm-eval)"
DEFAULT_SEEDS = {"multiple_choice": "Choose the correct answer.", "generate_until": "Answer the question."}
SEPARATOR = "\n\n"  # between the instruction (lm-eval's description) and doc_to_text


def _lm_eval() -> Any:
    try:
        import lm_eval  # noqa: F401
        from lm_eval.tasks import TaskManager  # noqa: F401
    except ImportError as e:
        raise ConfigError(f"the lm-eval bridge needs the lm_eval package ({e.name or e}): {INSTALL_HINT}") from None
    return lm_eval


# -- YAML with lm-eval's !function tags kept as they are --

class _Function(str):
    """An lm-eval `!function module.name` value, written back unchanged."""


def _yaml() -> Any:
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    class Dumper(yaml.SafeDumper):
        pass

    Loader.add_constructor("!function", lambda loader, node: _Function(loader.construct_scalar(node)))
    Dumper.add_representer(_Function, lambda dumper, data: dumper.represent_scalar("!function", str(data)))
    return yaml, Loader, Dumper


def read_config(path: str | Path) -> dict[str, Any]:
    """An lm-eval task YAML as a dict (ConfigError for a missing or unreadable file)."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise ConfigError(f"lm-eval task config {str(path)!r} does not exist (expected a task YAML file or an "
                          "lm-eval task name)")
    yaml, Loader, _ = _yaml()
    try:
        data = yaml.load(p.read_text(encoding="utf-8"), Loader=Loader)  # noqa: S506 - SafeLoader subclass
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise ConfigError(f"{p}: not a valid YAML file: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict) or not isinstance(data.get("task"), str):
        raise ConfigError(f"{p}: not an lm-eval task config (no `task:` name)")
    return data


def _looks_like_path(name: str) -> bool:
    return name.endswith((".yaml", ".yml")) or os.sep in name or name.startswith(".")


def load_lmeval_task(spec: str) -> tuple[Any, str, Path | None]:
    """lm-eval's own task object for a YAML path or a registered lm-eval task name, with its name and
    config path (None for a built-in name)."""
    _lm_eval()
    import logging
    from lm_eval.tasks import TaskManager, get_task_dict
    for quiet in ("lm_eval", "lm-eval"):  # its per-task notes on default aggregations are not ours to print
        logging.getLogger(quiet).setLevel(logging.ERROR)
    path: Path | None = None
    if _looks_like_path(spec) or Path(spec).expanduser().is_file():
        path = Path(spec).expanduser().resolve()
        name = read_config(path)["task"]
        if path.suffix != ".yaml":
            raise ConfigError(f"{path}: lm-eval reads task configs named *.yaml only; rename the file")
        manager = TaskManager(include_path=str(path.parent), include_defaults=False)
    else:
        name = spec
        manager = TaskManager()
    if name not in manager.all_tasks:
        where = f"in {path.parent}" if path else "among lm-eval's tasks"
        raise ConfigError(f"lm-eval task {name!r} not found {where}" + (
            "" if path else " (give the path to its YAML file)"))
    entry = manager.task_index.get(name)
    found = Path(entry.yaml_path).resolve() if entry is not None and entry.yaml_path else None
    if path is not None and found != path:  # lm-eval looks a task up by name: another file would stand in
        raise ConfigError(f"{path}: another config in its folder, {found}, also names task {name!r}, and lm-eval "
                          "would load that one; rename one of the two tasks")
    cfg = getattr(entry, "cfg", None) or {}
    if path is not None and cfg.get("output_type") not in ("multiple_choice", "generate_until"):
        raise ConfigError(f"{path}: output_type is {cfg.get('output_type')!r}; the bridge needs output_type: "
                          "multiple_choice or generate_until (say which; lm-eval's default hides a choice task)")
    try:
        with _quiet_datasets():
            # TaskManager.load (lm-eval >= 0.4.10) returns {"tasks": {...}}; get_task_dict before it
            tasks = manager.load([name])["tasks"] if hasattr(manager, "load") else get_task_dict([name], manager)
    except Exception as e:  # noqa: BLE001 - dataset loading, Jinja, !function imports: one line
        raise ConfigError(f"lm-eval could not build task {name!r}: {_why(e)}") from None
    task = tasks.get(name)
    if task is None or not hasattr(task, "doc_to_text"):
        raise ConfigError(f"lm-eval task {name!r} is a group; name one of its tasks")
    return task, name, path


@contextlib.contextmanager
def _quiet_datasets() -> Iterator[None]:
    """No `datasets` progress bars while lm-eval reads a task's files (an error stays one line); the
    caller's setting is restored."""
    import datasets
    was = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if was:
            datasets.enable_progress_bars()


def _why(e: BaseException) -> str:
    """An exception in one line; one without a message (lm-eval raises a bare TypeError when, say,
    doc_to_text is missing) is named by where it was raised."""
    text = str(e).splitlines()[0] if str(e) else ""
    if text:
        return f"{type(e).__name__}: {text}"
    import traceback
    frames = traceback.extract_tb(e.__traceback__)
    at = f" in lm-eval's {frames[-1].name}()" if frames else ""
    hint = "; check doc_to_text" if frames and "doc_to_text" in frames[-1].name else ""
    return f"{type(e).__name__} with no message{at}{hint}"


# -- lm-eval's exact match, with the task's options --

def _exact_match_rule(metric_list: Sequence[Mapping[str, Any]] | None) -> dict[str, Any]:
    for m in metric_list or ():
        if isinstance(m, Mapping) and m.get("metric") == "exact_match":
            return {k: m[k] for k in ("ignore_case", "ignore_punctuation", "regexes_to_ignore") if k in m}
    return {}


def make_exact_match(ignore_case: bool = False, ignore_punctuation: bool = False,
                     regexes_to_ignore: Sequence[str] = ()) -> Any:
    """lm-eval's exact_match (lm_eval.api.metrics.exact_match_hf_evaluate) for one prediction and its row."""
    table = str.maketrans("", "", string.punctuation)

    def norm(s: str) -> str:
        for r in regexes_to_ignore or ():
            s = re.sub(r, "", s)
        if ignore_case:
            s = s.lower()
        if ignore_punctuation:
            s = s.translate(table)
        return s

    def exact_match(prediction: str, row: Mapping[str, Any]) -> float:
        return float(norm(prediction) == norm(row["target"]))
    return exact_match


def _docs(task: Any, which: str) -> list[dict[str, Any]]:
    if not getattr(task, f"has_{which}_docs")():
        return []
    return list(getattr(task, f"{which}_docs")())


def lmeval_task(spec: str, *, data_dir: str | None = None, seed: int = 0, prompt: str | None = None,
                limit: int | None = None) -> Task:
    """A promptopt Task from an lm-eval task (YAML path or name). `limit` caps each split (smoke runs)."""
    task, name, path = load_lmeval_task(spec)
    output_type = getattr(task, "OUTPUT_TYPE", None) or task.config.output_type
    if output_type not in ("multiple_choice", "generate_until"):
        raise ConfigError(f"lm-eval task {name!r}: output_type {output_type!r} is not supported "
                          "(multiple_choice or generate_until)")
    cfg = task.config
    choose = output_type == "multiple_choice"
    choices: list[str] | None = None
    rows: dict[str, list[dict[str, Any]]] = {}
    for split, which in (("train", "training"), ("dev", "validation"), ("test", "test")):
        rows[split] = []
        for i, doc in enumerate(_docs(task, which)):
            doc_id = f"{split}-{i}"
            try:
                text = task.doc_to_text(doc)
                target = task.doc_to_target(doc)
                doc_choices = [str(c) for c in task.doc_to_choice(doc)] if choose else None
            except Exception as e:  # noqa: BLE001 - a template or hook that fails on a doc: name it
                raise TaskError(f"lm-eval task {name!r}: doc {doc_id} failed: {_why(e)}") from None
            if not isinstance(text, str):
                raise TaskError(f"lm-eval task {name!r}: doc_to_text gave {type(text).__name__} for doc {doc_id}; "
                                "only text contexts are supported")
            row: dict[str, Any] = {"id": f"{name}-{doc_id}", "input": text}
            if doc_choices is not None:
                if choices is None:
                    choices = doc_choices
                elif doc_choices != choices:
                    raise TaskError(f"lm-eval task {name!r}: doc {doc_id} has choices {doc_choices} but others "
                                    f"{choices}; promptopt choose tasks need one list of choices for every doc")
                if isinstance(target, str) and target in choices:  # lm-eval matches a text target exactly
                    row["label"] = choices.index(target)
                elif isinstance(target, (int, float)) and not isinstance(target, bool) and int(target) == target:
                    row["label"] = int(target)
                else:
                    raise TaskError(f"lm-eval task {name!r}: doc {doc_id} target {target!r} is neither a choice "
                                    "nor an index into the choices")
            else:
                row["target"] = str(target[0] if target else "") if isinstance(target, list) else str(target)
            rows[split].append(row)
    note, dev_size = "", None
    if not rows["dev"]:  # dev carved from train, or from test when there is no train split
        source = "train" if rows["train"] else "test"
        if not rows[source]:
            raise ConfigError(f"lm-eval task {name!r} has no documents in any split")
        dev_size = max(1, min(100, len(rows[source]) // 3))
        note = f"; dev carved from lm-eval's {source} split"
    delim = cfg.target_delimiter if cfg.target_delimiter is not None else " "
    gen = dict(cfg.generation_kwargs or {})
    until = gen.get("until", [cfg.fewshot_delimiter or "\n\n"])
    settings: dict[str, Any] = {"options": [delim + c for c in choices or ()], "exact_options": True} if choose else {
        "stop": [until] if isinstance(until, str) else list(until), "max_tokens": int(gen.get("max_gen_toks", 256)),
        "metric": make_exact_match(**_exact_match_rule(cfg.metric_list))}
    built = validate_spec(
        f"lm-eval task {name!r}", name=f"{PREFIX}{name}", description=f"lm-eval task {name} ({output_type}{note})",
        template="{prompt}" + SEPARATOR + "{input}", output="choose" if choose else "generate",
        seed_prompts=[prompt or (cfg.description or "").strip() or DEFAULT_SEEDS[output_type]],
        columns={"input": "input", "id": "id", **({"label": "label"} if choose else {"target": "target"})},
        data={"kind": "splits", **rows, "dev_size": dev_size, "limit": {s: limit for s in SPLITS} if limit else {},
              "where": {s: f"lm-eval task {name!r} {s} doc {{i}}" for s in SPLITS}},
        meta={"source": "lmeval", "lmeval_task": name, "lmeval_config": str(path) if path else None,
              "output_type": output_type}, **settings)
    return build_task(built, seed)


def task_factory(*, spec: str | None = None, data_dir: str | None = None, seed: int = 0, **options: Any) -> Task:
    """An lm-evaluation-harness task config or name: --task lmeval:PATH_OR_NAME (options: prompt, limit)."""
    if not spec:
        raise ConfigError("task lmeval needs an lm-eval task config or name: --task lmeval:PATH_OR_NAME")
    unknown = set(options) - {"prompt", "limit"}
    if unknown:
        raise ConfigError(f"task lmeval: unknown option(s) {sorted(unknown)} (use prompt, limit)")
    return lmeval_task(spec, data_dir=data_dir, seed=seed, **options)


def describe_import(spec: str) -> str:
    """What `promptopt lmeval import` prints: the task's splits and how to optimize it."""
    t = lmeval_task(spec)
    path = t.meta.get("lmeval_config")
    task_spec = f"{PREFIX}{path or t.meta['lmeval_task']}"
    sizes = ", ".join(f"{s} {len(t.split(s))}" for s in ("train", "dev", "test"))
    lines = [f"lm-eval task {t.meta['lmeval_task']}: {t.meta['output_type']} -> promptopt {t.output} task",
             f"splits: {sizes}", f"seed prompt: {t.seed_prompts[0]!r}"]
    if t.output == "choose":
        lines.append(f"options: {list(t.options)}")
    else:
        lines.append(f"stop: {list(t.stop)} · max tokens {t.max_tokens}")
    lines.append(f"task: {task_spec}")
    lines.append(f"optimize: promptopt optimize --task {task_spec} --strategy hill_climb --optimizer-model none")
    return "\n".join(lines)


# -- export --

def _absolute(value: Any, base: Path) -> Any:
    """Relative file paths in data_files made absolute against the config's folder, when they exist there."""
    if isinstance(value, str):
        p = Path(value).expanduser()
        return str((base / p).resolve()) if not p.is_absolute() and (base / p).exists() else value
    if isinstance(value, list):
        return [_absolute(v, base) for v in value]
    if isinstance(value, dict):
        return {k: _absolute(v, base) for k, v in value.items()}
    return value


def export_run(run_dir: str | Path, out_dir: str | Path, *, task_name: str | None = None) -> Path:
    """Write the best prompt of a finished run on an lm-eval task back as an lm-eval task config."""
    from promptopt.api import load_run_config
    from promptopt.runlog import load_run

    if task_name is not None:
        _task_name(task_name)
    out = Path(out_dir).expanduser().absolute()
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out}: exists and is not a directory")
    if not out.exists() and not out.parent.is_dir():
        raise ConfigError(f"--out {out}: its parent folder {out.parent} does not exist; create it first "
                          "(export creates one folder, not a path)")
    cfg = load_run_config(run_dir)
    if not cfg.task.startswith(PREFIX):
        raise ConfigError(f"{run_dir} optimized task {cfg.task!r}, not an lm-eval task (--task lmeval:PATH)")
    summary = load_run(Path(run_dir)).summary
    if summary is None:
        raise ConfigError(f"{run_dir} is not a finished run (no summary.json)")
    if summary.get("best_retrieval"):
        raise ConfigError(f"{run_dir}: the best prompt retrieves its demos for each input, which one lm-eval "
                          "description cannot hold; export it with `promptopt export`")
    spec = cfg.task[len(PREFIX):]
    task, name, path = load_lmeval_task(spec)
    if path is None:
        raise ConfigError(f"{run_dir}: lm-eval task {name!r} was named, not given as a YAML file; export needs "
                          "the YAML (optimize with --task lmeval:path/to/task.yaml)")
    data = read_config(path)
    if "include" in data and isinstance(data["include"], str) and not Path(data["include"]).is_absolute():
        data["include"] = str((path.parent / data["include"]).resolve())
    if isinstance(data.get("dataset_kwargs"), dict) and "data_files" in data["dataset_kwargs"]:
        data["dataset_kwargs"]["data_files"] = _absolute(data["dataset_kwargs"]["data_files"], path.parent)
    new_name = _task_name(task_name or f"{name}_promptopt")
    target = out / f"{new_name}.yaml"
    if target.exists() or target.is_symlink():
        if not _ours(target):
            raise ConfigError(f"{target} exists and was not written by promptopt lmeval export; choose another "
                              "--out or --task-name (export never replaces a file it did not write)")
    data["task"] = new_name
    data["description"] = (summary.get("best_prefix") or summary["best_prompt"]) + SEPARATOR
    data.setdefault("metadata", {})
    if isinstance(data["metadata"], dict):
        data["metadata"]["promptopt"] = {"run_dir": str(Path(run_dir).resolve()), "best_id": summary["best_id"],
                                         "best_dev": summary.get("best_dev"), "seed_dev": summary.get("seed_dev"),
                                         "source_config": str(path)}
    yaml, _, Dumper = _yaml()
    text = yaml.dump(data, Dumper=Dumper, sort_keys=False, allow_unicode=True, width=1000)
    if not out.exists():
        out.mkdir()
    write_text(target, text, "--out")  # atomic; a device or FIFO there is refused
    for hook in sorted(path.parent.glob("*.py")):  # !function hooks resolve beside the YAML
        try:
            _write_new(out / hook.name, hook.read_text(encoding="utf-8"))
        except FileExistsError:  # the user's own, or an earlier export's: left as it is
            pass
        except OSError as e:
            raise ConfigError(f"--out {out}: cannot write {hook.name} there ({e.strerror or e})") from None
    return target


_TASK_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")


def _task_name(name: str) -> str:
    """A task name that is safe as a file name in --out (no folder, no traversal)."""
    if not _TASK_NAME.fullmatch(name):
        raise ConfigError(f"--task-name {name!r}: a task name is letters, digits, '_', '-' and '.', not starting "
                          "with '.' or '-' (it also names the file written in --out)")
    return name


def _write_new(path: Path, text: str) -> None:
    """Create `path` with `text`; FileExistsError when anything is there, a dangling symlink included (never
    written through). The user's umask applies, as for any file they create."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
    except BaseException:  # nothing half-written stays
        path.unlink(missing_ok=True)
        raise


def _ours(path: Path) -> bool:
    """Whether `path` is a regular file that an earlier export wrote (its metadata names promptopt)."""
    if path.is_symlink() or not path.is_file():
        return False
    try:
        data = read_config(path)
    except ConfigError:
        return False
    meta = data.get("metadata")
    return isinstance(meta, dict) and isinstance(meta.get("promptopt"), dict)


__all__ = ["PREFIX", "describe_import", "export_run", "lmeval_task", "load_lmeval_task", "make_exact_match",
           "read_config", "task_factory"]
