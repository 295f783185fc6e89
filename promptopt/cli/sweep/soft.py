"""Soft-prompt cells: PEFT's prompt-learning methods as methods of a sweep, beside the strategies.

A grid's `--strategies` may name `prompt_tuning`, `p_tuning`, `prefix_tuning` and `cpt` (these names are
the sweep's; no strategy may take them). Such a cell is not a search: it trains the method's soft prompt
on the train split (`promptopt.soft_prompt`, PEFT's own configs), keeps the best checkpoint by the dev
score, and scores the test sample through the hf backend's `soft_prompt=DIR` option with the same scorer,
response cache and test examples as a discrete cell. The seed prompt and the soft prompt's projection to
its nearest tokens are scored on the same examples, so its row has a paired test against the seed and the
share of its gain that the projection keeps.

Equal budgets: a discrete cell's `--budget N` is N scored examples for its search. A soft cell sees N
train examples through the gradient: `N // batch_size` steps of `batch_size` (the remainder, under one
batch, is not used). Checkpoint selection scores the whole dev split `dev_checks + 1` times (at step 0
and `dev_checks` times along the way); like a discrete run's final pick of its top prompts on the whole
dev split, that is not counted in N, and the summary reports it (`soft.dev_examples`).

The cell's run dir (`<cell>/<cell>-soft/`) holds `soft.json` (what it trains), `soft_prompt/` (PEFT's
adapter, written whole or not at all) and, once done, `summary.json` in the shape a run's summary has.
A rerun skips a finished cell; a cut-off one keeps a saved adapter and scores it (the scores come from
the response cache when they were made before), and trains again from the start if none was saved."""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError

from promptopt.config import parse_value
from promptopt.errors import ConfigError
from promptopt.strategy import StrictSettings

# promptopt.soft_prompt.METHODS (that module needs torch and peft; the grid is checked without them).
SOFT_METHODS = ("prompt_tuning", "p_tuning", "prefix_tuning", "cpt")
SOFT_FILE = "soft.json"
ADAPTER = "soft_prompt"


class SoftSettings(StrictSettings):
    """A soft method's settings in a sweep: `--set prompt_tuning.num_virtual_tokens=20` (that method's
    cells only). The optimizer and learning rate default to the method's paper (`soft_prompt.PAPER_OPTIMIZER`);
    steps follow from the budget."""

    num_virtual_tokens: int = Field(8, ge=1, le=512, description="prompt length (cpt: train examples in its "
                                    "context); papers: 100 (prompt tuning), under 20 (P-Tuning v2); 8 for CPU")
    init: Literal["text", "labels", "vocab", "random"] | None = Field(
        None, description="prompt_tuning: None = labels for a choose task (Lester et al.'s best), else text")
    init_text: str = Field("", description="init=text: the text (default: the seed prompt)")
    optimizer: Literal["adafactor", "adamw"] | None = None
    lr: float | None = Field(None, gt=0)
    batch_size: int = Field(8, ge=1, le=4096, description="train examples a step (papers: 32; 8 for CPU)")
    dev_checks: int = Field(2, ge=0, le=1000, description="dev evaluations for checkpoint selection, besides step 0")
    projection: Literal["cosine", "l2"] = "cosine"


def is_soft(strategy: str) -> bool:
    return strategy in SOFT_METHODS


def split_sets(sets: list[str], method: str) -> tuple[dict[str, Any], list[str]]:
    """(this soft method's settings, the sets left for the run config) from a soft cell's `--set`s."""
    mine: dict[str, Any] = {}
    rest = []
    for s in sets:
        key, _, raw = s.partition("=")
        head, _, sub = key.strip().partition(".")
        if head == method:
            if sub == "steps":
                raise ConfigError(f"sweep: --set {s}: a soft cell's steps follow from --budget "
                                  "(budget // batch_size); change the budget or batch_size")
            mine[sub] = parse_value(raw)
        else:
            rest.append(s)
    return mine, rest


def settings(method: str, values: dict[str, Any]) -> SoftSettings:
    try:
        return SoftSettings.model_validate(values)
    except ValidationError as e:
        err = e.errors()[0]
        raise ConfigError(f"sweep: {method}.{'.'.join(str(x) for x in err['loc'])}: {err['msg']}") from None


def plan(method: str, soft: SoftSettings, run_cfg: Any, task: Any) -> dict[str, Any]:
    """What the cell trains, checked before anything starts: one line for what cannot run."""
    if run_cfg.target.backend != "hf":
        raise ConfigError(f"sweep: {method} trains a soft prompt on a local model: the target must use the "
                          f"hf backend, not {run_cfg.target.backend!r}")
    budget = run_cfg.budget.max_examples
    if budget is None:
        raise ConfigError(f"sweep: {method} needs an example budget (--budget N): its N train examples")
    steps = budget // soft.batch_size
    if steps < 1:
        raise ConfigError(f"sweep: {method}: --budget {budget} is under one batch of {soft.batch_size} train "
                          f"examples; lower {method}.batch_size")
    if not task.split("train") or not task.split("dev"):
        raise ConfigError(f"sweep: {method} needs a train split (to train on) and a dev split (to select on); "
                          f"task {task.name} lacks one")
    if method == "cpt" and task.output != "choose":
        raise ConfigError(f"sweep: cpt needs a choose task (labels in its context); {task.name} generates text")
    init, init_text = "text", ""  # what SoftPromptConfig takes for the methods that have no init
    if method == "prompt_tuning":
        init = soft.init or ("labels" if task.output == "choose" else "text")
        if init == "labels" and task.output != "choose":
            raise ConfigError(f"sweep: prompt_tuning.init=labels needs a choose task; {task.name} generates text")
        seed = run_cfg.prompt if run_cfg.prompt is not None else task.seed_prompts[0]
        init_text = soft.init_text or (seed if init == "text" else "")
        if init == "text" and not init_text.strip():
            raise ConfigError("sweep: prompt_tuning.init=text starts from the seed prompt, which is empty here; "
                              "set prompt_tuning.init_text or prompt_tuning.init=labels")
    dev_checks = min(soft.dev_checks, steps)
    return {"method": method, "num_virtual_tokens": soft.num_virtual_tokens, "init": init, "init_text": init_text,
            "optimizer": soft.optimizer, "lr": soft.lr, "steps": steps, "batch_size": soft.batch_size,
            "eval_every": -(-steps // dev_checks) if dev_checks else 0, "seed": run_cfg.seed,
            "dev_checks": dev_checks, "projection": soft.projection}


def check(method: str, values: dict[str, Any], run_cfg: Any) -> dict[str, Any]:
    """The cell's training plan from its settings and run config (the task is loaded, no model)."""
    from promptopt.resolved import load_task

    task = load_task(run_cfg.task, data_dir=run_cfg.data_dir, seed=run_cfg.seed, options=run_cfg.task_options)
    return plan(method, settings(method, values), run_cfg, task)


def _same_cell(old: dict[str, Any], new: dict[str, Any], config_type: Any) -> bool:
    """Whether a recorded soft cell is this one. The recorded run config is read again first, so a setting
    that a later promptopt added (at its default) does not stop a cell cut off under the earlier one."""
    try:
        recorded = config_type.model_validate(old["run_config"]).model_dump(mode="json")
    except (KeyError, TypeError, ValueError):
        return False
    return {**old, "run_config": recorded} == new


def run_soft_cell(run_dir: Path, method: str, values: dict[str, Any], run_cfg: Any) -> int:
    """Train (or find) the cell's soft prompt, score it, the seed prompt and its projection, and write
    summary.json. Returns 0; a failure raises (the cell's process exits non-zero and is retried)."""
    from promptopt.backends.hf import SOFT_PROMPT_META
    from promptopt.measure.significance import compare_paired
    from promptopt.resolved import resolve
    from promptopt.runlog import write_json_atomic
    from promptopt.scoring.cache import CachedBackend, ResponseCache
    from promptopt.soft_prompt import SoftPromptConfig, project_to_text, train_soft_prompt
    from promptopt.task.data import test_sample

    started = time.monotonic()
    resolved = resolve(run_cfg)
    task = resolved.task
    train_plan = plan(method, settings(method, values), run_cfg, task)
    record = {"method": method, "settings": values, "plan": train_plan, "run_config": run_cfg.model_dump(mode="json")}
    run_dir.mkdir(parents=True, exist_ok=True)
    if (run_dir / SOFT_FILE).is_file() and not _same_cell(json.loads((run_dir / SOFT_FILE).read_text(encoding="utf-8")),
                                                          record, type(run_cfg)):
        raise ConfigError(f"{run_dir}: {SOFT_FILE} records another soft cell; delete that folder to start over")
    write_json_atomic(run_dir / SOFT_FILE, record)
    assert resolved.target is not None
    hf = resolved.target.build()
    adapter = run_dir / ADAPTER
    cfg = SoftPromptConfig(**{k: v for k, v in train_plan.items() if k not in ("dev_checks", "projection")})
    if not (adapter / SOFT_PROMPT_META).is_file():
        print(f"{method}: training {cfg.steps} steps of {cfg.batch_size} on {task.name} (seed {cfg.seed})", flush=True)
        train_soft_prompt(task, hf, cfg, adapter, on_progress=lambda p: print(f"{method}: dev check {p}", flush=True))
    meta = json.loads((adapter / SOFT_PROMPT_META).read_text(encoding="utf-8"))
    cache = ResponseCache(resolved.cache_path) if resolved.cache_path else None
    soft_hf = hf.with_soft_prompt(adapter)
    plain, soft = CachedBackend(hf, cache), CachedBackend(soft_hf, cache)
    test = tuple(test_sample(list(task.split("test")), resolved.test_limit))
    dev = tuple(task.split("dev"))
    seed_prompt = resolved.seed_prompt
    projected = project_to_text(soft_hf, train_plan["projection"])
    scores = {
        "seed_dev": _scores(task, plain, seed_prompt, "dev", dev), "seed_test": _scores(task, plain, seed_prompt, "test", test),
        "best_dev": _scores(task, soft, "", "dev", dev), "best_test": _scores(task, soft, "", "test", test)}
    if projected is not None:
        scores["projected_dev"] = _scores(task, plain, projected, "dev", dev)
        scores["projected_test"] = _scores(task, plain, projected, "test", test)
    mean = {k: sum(v) / len(v) if v else None for k, v in scores.items()}
    keeps = None
    if projected is not None and mean["best_test"] is not None and mean["seed_test"] is not None \
            and mean["best_test"] > mean["seed_test"]:
        keeps = (mean["projected_test"] - mean["seed_test"]) / (mean["best_test"] - mean["seed_test"])
    n_dev_checks = len(meta.get("history", []))
    calls = meta.get("model_calls", 0) + plain.misses + soft.misses
    usage = {"calls": calls, "prompt_tokens": 0, "completion_tokens": 0, "seconds": 0.0, "usd": 0.0,
             "cache_hits": plain.hits + soft.hits}
    summary = {
        "run_dir": str(run_dir), "kind": "soft", "method": method, "seed_prompt": seed_prompt,
        "best_prompt": "", "best_prefix": "", "best_soft_prompt": str(adapter),
        **{k: mean[k] for k in ("seed_dev", "best_dev", "seed_test", "best_test")},
        "stop_reason": f"soft prompt trained: {cfg.steps} steps of {cfg.batch_size} train examples",
        "search": {"examples": cfg.steps * cfg.batch_size, "optimizer_calls": 0},
        "final": {"examples": len(scores) // 2 * (len(dev) + len(test))},  # seed, soft (and projection)
        "target_usage": usage, "optimizer_usage": {**usage, "calls": 0, "cache_hits": 0},
        "failures": 0, "significance": compare_paired(scores["seed_test"], scores["best_test"]) if test else None,
        "trainable_parameters": meta["trainable_parameters"], "prompt_tokens": meta["prompt_tokens"],
        "projection": {"metric": train_plan["projection"], "text": projected, "dev": mean.get("projected_dev"),
                       "test": mean.get("projected_test"), "keeps": keeps},
        "soft": {"train_examples": cfg.steps * cfg.batch_size, "steps": cfg.steps, "batch_size": cfg.batch_size,
                 "optimizer": cfg.optimizer_name, "lr": cfg.learning_rate, "dev_checks": n_dev_checks,
                 "dev_examples": n_dev_checks * len(dev), "best_step": meta.get("best_step"),
                 "train_seconds": meta.get("train_seconds"), "history": meta.get("history", [])},
        # Training (possibly in an earlier session, from its adapter's record) plus this session's scoring.
        "seconds": round(meta.get("train_seconds", 0.0) + time.monotonic() - started, 3),
    }
    write_json_atomic(run_dir / "summary.json", summary)
    print(f"{method}: test {mean['best_test']} (seed {mean['seed_test']}, projected {mean.get('projected_test')})",
          flush=True)
    return 0


def _scores(task: Any, backend: Any, prompt: str, split: str, examples: tuple[Any, ...]) -> list[float]:
    """Per-example scores in `examples`' order, through the scorer every discrete run uses."""
    from promptopt.errors import BackendError
    from promptopt.scoring.scorer import Job, score_jobs
    from promptopt.types import prompt_id

    if not examples:
        return []
    ev = score_jobs(task, backend, [Job(prompt_id(prompt), prompt, split, examples)])[0]
    if ev.state != "complete":
        raise BackendError(f"scoring {split} failed: {ev.error}")
    by_id = {r.example_id: r.score for r in ev.results}
    return [by_id[ex.id] for ex in examples]
