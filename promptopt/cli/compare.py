"""Compare a run's seed prompt, its best discrete prompt and soft prompts tuned on the same task.

One table (dev/test score, trainable parameters, prompt length, wall time, model requests, transfer to a
second model) and one PNG of dev score against compute, both written into the run dir. Every score
here is measured now on the same examples with the same scorer; search cost comes from the run's log.
"""
from __future__ import annotations

import logging
import statistics
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

from promptopt.errors import ConfigError
from promptopt.task.data import test_sample
from promptopt.config import RunConfig
from promptopt.runlog import is_task_score, load_run, write_json_atomic
from promptopt.scoring.scorer import Job, score_jobs
from promptopt.task import Task
from promptopt.types import prompt_id

TABLE_FILE = "compare.json"
PLOT_FILE = "compare.png"
SOFT_DIR = "soft_prompt"

log = logging.getLogger(__name__)


@dataclass
class Row:
    method: str
    prompt: str
    dev: float | None
    test: float | None
    trainable_parameters: int
    prompt_tokens: int
    seconds: float | None  # training or search wall time; None for a hand-written prompt
    model_calls: int | None
    transfer: str
    second_model_test: float | None = None


@dataclass
class Comparison:
    run_dir: str
    task: str
    model: str
    test_examples: int
    rows: list[Row] = field(default_factory=list)
    curves: dict[str, list[dict[str, float]]] = field(default_factory=dict)  # name -> points


def _read_run(run_dir: Path) -> tuple[RunConfig, dict[str, Any]]:
    from promptopt.api import load_run_config

    config = load_run_config(run_dir)
    summary = load_run(run_dir).summary
    if summary is None:
        raise ConfigError(f"{run_dir} is not a finished run (no summary.json)")
    return config, summary


def _score(task: Task, backend: Any, prompt: str, split: str, limit: int | None) -> float | None:
    examples = tuple(test_sample(task.split(split), limit) if split == "test" else tuple(task.split(split))[:limit])
    if not examples:
        return None
    ev = score_jobs(task, backend, [Job(prompt_id(prompt), prompt, split, examples)])[0]
    return ev.score if ev.state == "complete" else None


def search_curve(run_dir: Path, dev_size: int) -> list[dict[str, float]]:
    """Best dev score so far against cumulative model requests and seconds, from the run's events.

    A candidate counts once its dev results cover the whole dev split, so a lucky score on a few
    examples does not set the curve."""
    view = load_run(run_dir)
    start = view.started
    dev: dict[str, dict[str, float]] = {}
    calls, best, points = 0, None, []
    for e in view.events:
        if e["type"] == "optimizer_call":
            calls += len(e.get("requests", ())) or 1
        if e["type"] != "eval" or "results" not in e:
            continue
        calls += int(e.get("usage", {}).get("calls", 0))
        if e["split"] != "dev" or not is_task_score(e):
            continue
        seen = dev.setdefault(e["candidate_id"], {})
        seen.update({r["example_id"]: r["score"] for r in e["results"]})
        if len(seen) >= dev_size:
            score = sum(seen.values()) / len(seen)
            if best is None or score > best:
                best = score
                points.append({"model_calls": calls, "seconds": round(e["time"] - (start or e["time"]), 3),
                               "dev": score})
    return points


def compare(run_dir: str | Path, *, soft: bool = True, virtual_tokens: int = 8, seeds: Sequence[int] = (0,),
            soft_options: dict[str, Any] | None = None, second_model: str | None = None,
            test_limit: int | None = None, device: str = "auto", data_dir: str | None = None,
            projection: str = "cosine") -> Comparison:
    """Score the run's seed and best prompts and (with `soft`) tune one soft prompt per seed."""
    from promptopt.api import load_task
    from promptopt.backends.hf import HFBackend
    from promptopt.scoring.cache import CachedBackend, ResponseCache, default_cache_path

    run = Path(run_dir)
    config, summary = _read_run(run)
    if soft and config.target.backend != "hf":
        raise ConfigError(f"soft prompts need the hf backend; {run} used {config.target.backend!r}")
    task = load_task(config.task, data_dir=data_dir or config.data_dir, seed=config.seed,
                     options=config.task_options)
    model_name = config.target.model
    hf = HFBackend(model_name, device=device, dtype="float32")
    scorer = CachedBackend(hf, ResponseCache(default_cache_path()))  # the run's own scores are usually cached
    n_test = len(test_sample(task.split("test"), test_limit))
    out = Comparison(str(run), task.name, model_name, n_test)
    second = CachedBackend(HFBackend(second_model, device=device), scorer.cache) if second_model else None

    def discrete_row(method: str, prompt: str, seconds: float | None, calls: int | None) -> Row:
        return Row(method, prompt, _score(task, scorer, prompt, "dev", None),
                   _score(task, scorer, prompt, "test", test_limit), 0, len(hf.tokenizer(prompt)["input_ids"]),
                   seconds, calls, "yes: plain text",
                   _score(task, second, prompt, "test", test_limit) if second else None)

    search_calls = summary["target_usage"]["calls"] + summary["optimizer_usage"]["calls"]
    out.rows.append(discrete_row("seed prompt", summary["seed_prompt"], None, None))
    out.rows.append(discrete_row("best discrete", summary["best_prompt"], summary["seconds"], search_calls))
    out.curves["discrete search"] = search_curve(run, len(task.split("dev")))
    if soft:
        _add_soft_rows(out, task, hf, summary, virtual_tokens, seeds, dict(soft_options or {}), test_limit,
                       projection, run, scorer, second)
    write_json_atomic(run / TABLE_FILE, asdict(out))
    plot(out, run / PLOT_FILE)
    return out


def _add_soft_rows(out: Comparison, task: Task, hf: Any, summary: dict[str, Any], virtual_tokens: int,
                   seeds: Sequence[int], options: dict[str, Any], test_limit: int | None, projection: str,
                   run: Path, scorer: Any, second: Any) -> None:
    from promptopt.soft_prompt import (SoftPromptBackend, SoftPromptConfig, project_to_text, save_soft_prompt,
                              train_soft_prompt)

    options.setdefault("init", "text")
    if options["init"] == "text" and not options.get("init_text"):
        options["init_text"] = summary["best_prompt"]  # by default start from the run's best prompt
    width = hf.model.get_input_embeddings().weight.shape[1]
    soft_rows = []
    for seed in seeds:
        cfg = SoftPromptConfig(num_virtual_tokens=virtual_tokens, seed=seed, **options)
        trained = train_soft_prompt(task, hf, cfg,
                                    on_progress=lambda point: log.info("soft prompt seed %d: %s", seed, point))
        save_soft_prompt(trained, hf, run / SOFT_DIR / f"seed-{seed}")
        backend = SoftPromptBackend(hf.model, hf.tokenizer, trained.embeddings, hf.fingerprint())
        row = Row(f"soft prompt (seed {seed})", f"{SOFT_DIR}/seed-{seed}", _score(task, backend, "", "dev", None),
                  _score(task, backend, "", "test", test_limit), trained.trainable_parameters, virtual_tokens,
                  round(trained.train_seconds, 2), trained.model_calls,
                  f"no: same architecture only (embedding width {width})")
        soft_rows.append(row)
        out.rows.append(row)
        out.curves[f"soft prompt (seed {seed})"] = trained.history
        text = project_to_text(trained.embeddings, hf, projection)
        projected = Row(f"soft -> nearest tokens ({projection}, seed {seed})", text,
                        _score(task, scorer, text, "dev", None), _score(task, scorer, text, "test", test_limit), 0,
                        len(hf.tokenizer(text)["input_ids"]), None, None, "yes: plain text",
                        _score(task, second, text, "test", test_limit) if second else None)
        out.rows.append(projected)
    if len(soft_rows) > 1:
        out.rows.append(_mean_row(soft_rows))


def _mean_row(rows: list[Row]) -> Row:
    def mean(values: list[float | None]) -> float | None:
        vals = [v for v in values if v is not None]
        return statistics.fmean(vals) if vals else None

    spread = statistics.stdev([r.test for r in rows if r.test is not None] or [0.0, 0.0])
    return replace(rows[0], method=f"soft prompt (mean of {len(rows)} seeds, test sd {spread:.3f})", prompt="",
                   dev=mean([r.dev for r in rows]), test=mean([r.test for r in rows]),
                   seconds=mean([r.seconds for r in rows]),
                   model_calls=round(mean([r.model_calls for r in rows]) or 0))


def format_table(comp: Comparison) -> str:
    def num(x: float | None, fmt: str = "{:.3f}") -> str:
        return "-" if x is None else fmt.format(x)

    header = ["method", "dev", "test", "trainable params", "prompt tokens", "seconds", "model requests", "transfers"]
    has_second = any(r.second_model_test is not None for r in comp.rows)
    if has_second:
        header.append("2nd-model test")
    lines = [f"task {comp.task}, model {comp.model}, test on {comp.test_examples} examples",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in comp.rows:
        cells = [r.method, num(r.dev), num(r.test), str(r.trainable_parameters), str(r.prompt_tokens),
                 num(r.seconds, "{:.1f}"), "-" if r.model_calls is None else str(r.model_calls), r.transfer]
        if has_second:
            cells.append(num(r.second_model_test))
        lines.append("| " + " | ".join(cells) + " |")
    prompts = [f"  {r.method}: {r.prompt!r}" for r in comp.rows if r.prompt]
    return "\n".join(lines + ["prompts:"] + prompts)


def plot(comp: Comparison, path: Path) -> None:
    """Dev score against model requests and against wall seconds, one line per method."""
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for ax, x in zip(axes, ("model_calls", "seconds")):
        for name, points in comp.curves.items():
            if points:
                ax.step([p[x] for p in points], [p["dev"] for p in points], where="post", marker="o",
                        label=name, linestyle="--" if name.startswith("soft") else "-")
        seed_dev = next((r.dev for r in comp.rows if r.method == "seed prompt"), None)
        if seed_dev is not None:
            ax.axhline(seed_dev, color="grey", linewidth=0.8, label="seed prompt")
        ax.set_xlabel("model requests (sequences through the model)" if x == "model_calls" else "wall seconds")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(f"dev score ({comp.task})")
    axes[1].legend(fontsize=8, loc="lower right")
    fig.suptitle(f"{comp.task} on {comp.model}: dev score vs compute")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
