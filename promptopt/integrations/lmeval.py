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

Export writes the same YAML with `description` set to the best prompt as the model read it (instruction and
any demos) followed by a blank line, the task renamed `<task>_promptopt`, and relative paths (`include`,
`data_files`) made absolute, so `lm_eval` evaluates the optimized prompt with nothing else changed.
"""
from __future__ import annotations

import os
import random
import re
import string
from pathlib import Path
from typing import Any, Mapping, Sequence

from promptopt.errors import ConfigError, TaskError
from promptopt.paths import write_text
from promptopt.task import Task
from promptopt.types import Example

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
        manager = TaskManager(include_path=str(path.parent), include_defaults=False)
    else:
        name = spec
        manager = TaskManager()
    if name not in manager.all_tasks:
        where = f"in {path.parent}" if path else "among lm-eval's tasks"
        raise ConfigError(f"lm-eval task {name!r} not found {where}" + (
            "" if path else " (give the path to its YAML file)"))
    try:
        # TaskManager.load (lm-eval >= 0.4.10) returns {"tasks": {...}}; get_task_dict before it
        tasks = manager.load([name])["tasks"] if hasattr(manager, "load") else get_task_dict([name], manager)
    except Exception as e:  # noqa: BLE001 - dataset loading, Jinja, !function imports: one line
        raise ConfigError(f"lm-eval could not build task {name!r}: {type(e).__name__}: "
                          f"{str(e).splitlines()[0] if str(e) else ''}") from None
    task = tasks.get(name)
    if task is None or not hasattr(task, "doc_to_text"):
        raise ConfigError(f"lm-eval task {name!r} is a group; name one of its tasks")
    return task, name, path


# -- lm-eval's exact match, with the task's options --

def _exact_match_rule(metric_list: Sequence[Mapping[str, Any]] | None) -> dict[str, Any]:
    for m in metric_list or ():
        if isinstance(m, Mapping) and m.get("metric") == "exact_match":
            return {k: m[k] for k in ("ignore_case", "ignore_punctuation", "regexes_to_ignore") if k in m}
    return {}


def make_exact_match(ignore_case: bool = False, ignore_punctuation: bool = False,
                     regexes_to_ignore: Sequence[str] = ()) -> Any:
    """lm-eval's exact_match (lm_eval.api.metrics.exact_match_hf_evaluate) for one prediction."""
    table = str.maketrans("", "", string.punctuation)

    def norm(s: str) -> str:
        for r in regexes_to_ignore or ():
            s = re.sub(r, "", s)
        if ignore_case:
            s = s.lower()
        if ignore_punctuation:
            s = s.translate(table)
        return s

    def metric(prediction: str, example: Example) -> float:
        return float(norm(prediction) == norm(example.target))
    return metric


def _docs(task: Any, which: str) -> list[dict[str, Any]]:
    if not getattr(task, f"has_{which}_docs")():
        return []
    return list(getattr(task, f"{which}_docs")())


def _carve(rows: list[Any], seed: int, what: str) -> tuple[list[Any], list[Any]]:
    """(rest, dev): a third of `rows` (at most 100) as dev, drawn with the run seed."""
    order = list(range(len(rows)))
    random.Random(f"{seed}:lmeval:{what}").shuffle(order)
    n = max(1, min(100, len(rows) // 3))
    dev_idx = set(order[:n])
    return [r for i, r in enumerate(rows) if i not in dev_idx], [r for i, r in enumerate(rows) if i in dev_idx]


def lmeval_task(spec: str, *, data_dir: str | None = None, seed: int = 0, prompt: str | None = None,
                limit: int | None = None) -> Task:
    """A promptopt Task from an lm-eval task (YAML path or name). `limit` caps each split (smoke runs)."""
    task, name, path = load_lmeval_task(spec)
    output_type = getattr(task, "OUTPUT_TYPE", None) or task.config.output_type
    if output_type not in ("multiple_choice", "generate_until"):
        raise ConfigError(f"lm-eval task {name!r}: output_type {output_type!r} is not supported "
                          "(multiple_choice or generate_until)")
    splits_docs = {"train": _docs(task, "training"), "dev": _docs(task, "validation"), "test": _docs(task, "test")}
    tagged = {s: [(f"{s}-{i}", d) for i, d in enumerate(docs)] for s, docs in splits_docs.items()}
    note = ""
    if not tagged["dev"]:
        source = "train" if tagged["train"] else "test"
        if not tagged[source]:
            raise ConfigError(f"lm-eval task {name!r} has no documents in any split")
        tagged[source], tagged["dev"] = _carve(tagged[source], seed, source)
        note = f"; dev carved from lm-eval's {source} split"
    if limit is not None:
        tagged = {s: rows[:limit] for s, rows in tagged.items()}
    cfg = task.config
    delim = cfg.target_delimiter if cfg.target_delimiter is not None else " "
    choices: list[str] | None = None
    splits: dict[str, list[Example]] = {}
    for split, rows in tagged.items():
        out = []
        for doc_id, doc in rows:
            try:
                text = task.doc_to_text(doc)
                target = task.doc_to_target(doc)
                doc_choices = task.doc_to_choice(doc) if output_type == "multiple_choice" else None
            except Exception as e:  # noqa: BLE001 - a template or hook that fails on a doc: name it
                raise TaskError(f"lm-eval task {name!r}: doc {doc_id} failed: {type(e).__name__}: {e}") from None
            if not isinstance(text, str):
                raise TaskError(f"lm-eval task {name!r}: doc_to_text gave {type(text).__name__} for doc {doc_id}; "
                                "only text contexts are supported")
            if output_type == "multiple_choice":
                doc_choices = [str(c) for c in doc_choices]
                if choices is None:
                    choices = doc_choices
                elif doc_choices != choices:
                    raise TaskError(f"lm-eval task {name!r}: doc {doc_id} has choices {doc_choices} but others "
                                    f"{choices}; promptopt choose tasks need one list of choices for every doc")
                if isinstance(target, str) and target in choices:
                    label = choices.index(target)
                elif isinstance(target, (int, float)) and not isinstance(target, bool) and int(target) == target:
                    label = int(target)
                else:
                    raise TaskError(f"lm-eval task {name!r}: doc {doc_id} target {target!r} is neither a choice "
                                    "nor an index into the choices")
                if not 0 <= label < len(choices):
                    raise TaskError(f"lm-eval task {name!r}: doc {doc_id} target index {label} is out of range")
                out.append(Example(id=f"{name}-{doc_id}", input=text, target=choices[label], label=label))
            else:
                if isinstance(target, list):
                    target = target[0] if target else ""
                out.append(Example(id=f"{name}-{doc_id}", input=text, target=str(target)))
        splits[split] = out
    seed_prompt = prompt or (cfg.description or "").strip() or DEFAULT_SEEDS[output_type]
    meta = {"source": "lmeval", "lmeval_task": name, "lmeval_config": str(path) if path else None,
            "output_type": output_type}
    common = dict(name=f"{PREFIX}{name}", splits=splits, template="{prompt}" + SEPARATOR + "{input}",
                  seed_prompts=(seed_prompt,), description=f"lm-eval task {name} ({output_type}{note})", meta=meta)
    if output_type == "multiple_choice":
        return Task(output="choose", options=tuple(delim + c for c in (choices or ())), **common)
    gen = dict(cfg.generation_kwargs or {})
    until = gen.get("until", [cfg.fewshot_delimiter or "\n\n"])
    until = [until] if isinstance(until, str) else list(until)
    return Task(output="generate", stop=tuple(until), max_tokens=int(gen.get("max_gen_toks", 256)),
                metric=make_exact_match(**_exact_match_rule(cfg.metric_list)), **common)


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

    cfg = load_run_config(run_dir)
    if not cfg.task.startswith(PREFIX):
        raise ConfigError(f"{run_dir} optimized task {cfg.task!r}, not an lm-eval task (--task lmeval:PATH)")
    summary = load_run(Path(run_dir)).summary
    if summary is None:
        raise ConfigError(f"{run_dir} is not a finished run (no summary.json)")
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
    new_name = task_name or f"{name}_promptopt"
    data["task"] = new_name
    data["description"] = (summary.get("best_prefix") or summary["best_prompt"]) + SEPARATOR
    data.setdefault("metadata", {})
    if isinstance(data["metadata"], dict):
        data["metadata"]["promptopt"] = {"run_dir": str(Path(run_dir).resolve()), "best_id": summary["best_id"],
                                         "best_dev": summary.get("best_dev"), "seed_dev": summary.get("seed_dev"),
                                         "source_config": str(path)}
    out = Path(out_dir).expanduser()
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out}: exists and is not a directory")
    yaml, _, Dumper = _yaml()
    text = yaml.dump(data, Dumper=Dumper, sort_keys=False, allow_unicode=True, width=1000)
    out.mkdir(parents=True, exist_ok=True)
    target = out / f"{new_name}.yaml"
    write_text(target, text, "--out")  # atomic; a device or FIFO there is refused
    for hook in sorted(path.parent.glob("*.py")):  # !function hooks resolve beside the YAML
        if not (out / hook.name).exists():
            (out / hook.name).write_text(hook.read_text(encoding="utf-8"), encoding="utf-8")
    return target


__all__ = ["PREFIX", "describe_import", "export_run", "lmeval_task", "load_lmeval_task", "make_exact_match",
           "read_config", "task_factory"]
