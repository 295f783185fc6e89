"""`promptopt export RUN`: the best prompt of a finished run, with its demos, as JSON, YAML or plain text,
and the full text the model reads for one example (the task's template rendered)."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Mapping

from promptopt.errors import ConfigError, PromptOptError
from promptopt.paths import write_text
from promptopt.scoring import candidates
from promptopt.types import Candidate

FORMATS = ("json", "yaml", "text")


def export_data(run_dir: str | Path, example_id: str | None = None, candidate: str | None = None) -> dict[str, Any]:
    """What `export` writes: the best candidate (or `candidate`, an id or its start: any the run logged; the run
    need not have finished) with its instruction, demos and system prompt, what stands where the template has
    {prompt}, scores, and the template rendered for one example (`example_id`, default the first test example;
    None when the task cannot be loaded by name, e.g. one built in Python)."""
    from promptopt.api import load_run_config, load_task
    from promptopt.runlog import load_run

    d = Path(run_dir)
    view = load_run(d)
    s = view.summary or {}
    cfg = load_run_config(d)
    if candidate is not None:
        cand = find_candidate(d, view, candidate)
        who = {"candidate_id": cand.id}
        scores = {split: _score(view, cand.id, split) for split in ("dev", "test")}
        prompt = None  # rendered below, once the task is loaded
    elif view.summary is None:
        raise ConfigError(f"{d} is not a finished run (no summary.json); export reads its best prompt from there "
                          "(--candidate ID exports one of its candidates)")
    else:
        cand_json = view.candidates.get(s["best_id"])
        cand = Candidate.from_json(cand_json) if cand_json else Candidate(s["best_prompt"])
        who = {"best_id": s["best_id"]}
        scores = {"dev": s.get("best_dev"), "test": s.get("best_test")}
        prompt = s.get("best_prefix") or s["best_prompt"]
    demos = list(s.get("best_demos") or cand.demos) if candidate is None else list(cand.demos)
    out: dict[str, Any] = {
        "run": str(d), "task": cfg.task, **who, "instruction": cand.text if candidate else s["best_prompt"],
        "system": cand.system or None, "demo_ids": demos, "prompt": prompt,
        "scores": {**scores, "seed_dev": s.get("seed_dev"), "seed_test": s.get("seed_test")},
        "seed_prompt": s.get("seed_prompt"),
    }
    if cand.retrieval is not None:  # demos picked per input: the policy, and below the demos one example gets
        out["retrieval"] = cand.retrieval.to_json()
    try:
        task = load_task(cfg.task, data_dir=cfg.data_dir, seed=cfg.seed, options=cfg.task_options)
    except PromptOptError as e:
        if example_id is not None:
            raise ConfigError(f"--example-id needs the run's task, which cannot be loaded: {e}") from None
        out.update(template=None, output=None, options=None, demos=None, example=None, rendered=None,
                   note=f"the task could not be loaded, so nothing is rendered: {e}")
        out["prompt"] = out["prompt"] or cand.text
        return out
    by_id = {ex.id: ex for split in ("train", "dev", "test") for ex in task.split(split)}
    missing = [i for i in demos if i not in by_id]
    if missing:
        raise ConfigError(f"{d}: demo id(s) {missing[:3]} are not in task {cfg.task}'s data any more")
    if out["prompt"] is None:  # a named candidate: as the run put it where the template has {prompt}
        cand = plain_candidate(cand, cfg, task)
        out["prompt"] = candidates.prompt_text(task, cand, by_id)
    answers = list(cand.demo_answers) or [None] * len(demos)
    out.update(template=task.template, output=task.output, options=list(task.options) or None,
               demos=[{"id": i, "text": task.demo_text(by_id[i], a)} for i, a in zip(demos, answers)])
    if example_id is None:
        pool = list(task.split("test")) or list(task.split("dev"))
        example = pool[0]
    elif example_id in by_id:
        example = by_id[example_id]
    else:
        some = ", ".join(list(by_id)[:3])
        raise ConfigError(f"--example-id {example_id!r}: task {task.name} has no such example (ids look like {some})")
    out["example"] = {"id": example.id, "input": example.input, "target": example.target}
    if cand.retrieval is not None:
        out.update(_retrieved_for(task, cand, cand.retrieval, example))
    out["rendered"] = task.render(out["prompt"], example)
    return out


def _score(view: Any, cid: str, split: str) -> float | None:
    """A candidate's score on a split as a summary gives one: rounded, None where it has none."""
    score = view.score(cid, split) if view.n(cid, split) else math.nan
    return round(score, 6) if math.isfinite(score) else None


def plain_candidate(cand: Candidate, cfg: Any, task: Any) -> Candidate:
    """A --components run's candidate as one prompt: its system text and its (or the run's) instruction, as the
    run's TaskComponents gives them; any other candidate as it is."""
    if not cand.components:
        return cand
    from promptopt.harness.tasks import TaskComponents
    names = [n for n, _ in cand.components]
    parts = TaskComponents({task.name: task}, names, instruction=cfg.prompt).parts(cand, task.name)
    return Candidate(parts.instruction, system=parts.system, demos=cand.demos, demo_answers=cand.demo_answers)


def one_prompt_run(task: str, task_options: Mapping[str, Any]) -> bool:
    """Whether a run optimized one task's prompt, which `evaluate --run` scores: not a program, nor one system
    prompt shared by several tasks."""
    return "," not in task and not task_options.get("program")


def find_candidate(run_dir: str | Path, view: Any, key: str) -> Candidate:
    """The candidate of a run whose id is `key` or starts with it (`show` lists ids by their first 8 characters)."""
    found = [cid for cid in view.candidates if cid.startswith(key)] if key else []
    if len(found) != 1:
        why = f"matches {len(found)} candidates ({', '.join(found[:3])}...)" if found else "matches no candidate"
        raise ConfigError(f"--candidate {key!r} {why} of {run_dir}; `promptopt show {run_dir}` lists them")
    return Candidate.from_json(view.candidates[found[0]])


def _retrieved_for(task: Any, cand: Candidate, policy: Any, example: Any) -> dict[str, Any]:
    """The demos a retrieval policy gives `example` and the prompt with them; BM25 needs no model, a model
    embedding is not loaded here (the prompt is then the instruction alone, with a note)."""
    from promptopt.task.retrieval import Retriever
    if policy.embedding != "bm25":
        return {"note": f"demos are retrieved for each input with the {policy.embedding} embedding, which export "
                        "does not load: the rendered example shows the instruction without them"}
    train = {ex.id: ex for ex in task.split("train")}
    ids, = Retriever(list(train.values())).retrieve(policy, [example])
    demos = [train[i] for i in ids]
    return {"demo_ids": list(ids), "demos": [{"id": ex.id, "text": task.demo_text(ex)} for ex in demos],
            "prompt": task.prompt_text(cand.text, demos, (), cand.system)}


def format_export(data: dict[str, Any], fmt: str) -> str:
    if fmt == "json":
        return json.dumps(data, indent=2, ensure_ascii=False) + "\n"
    if fmt == "yaml":
        try:
            import yaml
        except ImportError:
            raise ConfigError("--format yaml needs PyYAML (pip install pyyaml); or use --format json") from None
        return yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=100)
    if fmt == "text":
        who = f"candidate {data['candidate_id']}" if "candidate_id" in data else "best prompt"
        parts = [f"# {who} of {data['run']} (dev {data['scores']['dev']}, test {data['scores']['test']})",
                 "", data["prompt"]]
        if data.get("rendered") is not None:
            parts += ["", f"# rendered for example {data['example']['id']}", "", data["rendered"]]
        return "\n".join(parts) + "\n"
    raise ConfigError(f"--format must be one of {', '.join(FORMATS)}, not {fmt!r}")


def write_export(text: str, out: str | Path) -> Path:
    """Atomically (promptopt.paths.write_text): a failed write leaves no half-written file, and a device,
    FIFO or directory at `out` is refused rather than replaced."""
    return write_text(out, text, "--out")


def export_command(args: Any) -> int:
    text = format_export(export_data(args.run, args.example_id, args.candidate), args.format)
    if args.out:
        print(f"export: {write_export(text, args.out)}")
    else:
        print(text, end="")
    return 0
