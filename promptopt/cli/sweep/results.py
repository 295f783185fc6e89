"""A sweep's results: one row per (task, method) over seeds, as JSON, CSV, a PNG of test score against
cost, and an HTML page. The seed prompt is a row of its own: the `seed` method's cells when the grid has
them, else the seed's test score from the other cells (every run scores it on the same test sample).

Per method also: trainable parameters (0 for a discrete prompt), prompt tokens (a discrete prompt's text
before the input, demos included, in the target's tokenizer when it is a local model; a soft prompt's
virtual tokens) and, for soft methods, the mean test score of the soft prompt projected to its nearest
tokens and the share of the soft prompt's gain over the seed that the projection keeps."""
from __future__ import annotations

import base64
import csv
import html
import json
import statistics
from pathlib import Path
from typing import Any, Callable

from promptopt.cli.sweep.grid import Grid, cell_done, cell_run, cells

ALPHA = 0.05
COLUMNS = ("task", "method", "seeds", "test_mean", "test_sd", "seed_test_mean", "gain", "seeds_p_lt_0.05",
           "scored_examples", "usd", "wall_s", "trainable_params", "prompt_tokens", "projected_test",
           "projection_keeps")


def _mean_sd(xs: list[float]) -> tuple[float | None, float | None]:
    if not xs:
        return None, None
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def collect(out: Path, grid: Grid) -> tuple[list[dict[str, Any]], list[str]]:
    """Rows for finished cells, and the names of cells that are not finished."""
    by_method: dict[tuple[str, str], list[dict[str, Any]]] = {}
    missing = []
    for cell in cells(grid):
        run = cell_run(out, cell)
        if not cell_done(run):
            missing.append(cell.name)
            continue
        s = json.loads((run / "summary.json").read_text(encoding="utf-8"))
        by_method.setdefault((cell.task, cell.strategy), []).append({"seed": cell.seed, **s})
    rows = []
    count = _token_counter(grid)
    for task in grid.tasks:
        seeds: dict[int, float] = {}
        prompts: list[str] = []
        for strategy in grid.strategies:
            runs = by_method.get((task, strategy), [])
            for r in runs:
                if r.get("seed_test") is not None:
                    seeds.setdefault(r["seed"], r["seed_test"])
                prompts.append(r["seed_prompt"])
            rows.append(_row(task, strategy, runs, count))
        if "seed" in grid.strategies:  # the seed method's own cells are the seed row
            continue
        mean, sd = _mean_sd(list(seeds.values()))
        rows.insert(len(rows) - len(grid.strategies), {
            "task": task, "method": "seed", "seeds": len(seeds), "test_mean": mean, "test_sd": sd,
            "seed_test_mean": mean, "gain": 0.0 if mean is not None else None, "seeds_p_lt_0.05": None,
            "scored_examples": 0, "usd": 0.0, "wall_s": 0.0, "trainable_params": 0,
            "prompt_tokens": _mean([count(p) for p in dict.fromkeys(prompts)]) if count else None,
            "projected_test": None, "projection_keeps": None})
    return rows, missing


def _mean(xs: list[float | None]) -> float | None:
    vals = [x for x in xs if x is not None]
    return statistics.fmean(vals) if vals else None


def _token_counter(grid: Grid) -> Callable[[str], int] | None:
    """Tokens of a prompt in the target's tokenizer, when the target is a local model (hf, vllm); None for
    others (an API's tokenizer is not at hand), whose discrete rows then show no prompt tokens."""
    if (grid.backend or "hf") not in ("hf", "vllm"):
        return None
    try:
        from transformers import AutoTokenizer

        from promptopt.backends.models import EMBEDDED, embedded_hf_dir, quiet_transformers, resolve_model

        model = grid.model or EMBEDDED
        path, gguf = (str(embedded_hf_dir()), None) if model == EMBEDDED else \
            (resolve_model(model).path, resolve_model(model).gguf_file)
        with quiet_transformers():
            tokenizer = AutoTokenizer.from_pretrained(path, **({"gguf_file": gguf} if gguf else {}))
    except Exception:  # noqa: BLE001 - no tokenizer (not installed, not found): the column stays empty
        return None
    return lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"])


def _row(task: str, strategy: str, runs: list[dict[str, Any]], count: Callable[[str], int] | None
         ) -> dict[str, Any]:
    tests = [r["best_test"] for r in runs if r.get("best_test") is not None]
    seed_tests = [r["seed_test"] for r in runs if r.get("seed_test") is not None]
    mean, sd = _mean_sd(tests)
    seed_mean, _ = _mean_sd(seed_tests)
    # Seeds whose best prompt beat the seed prompt on the same test examples (the run's own paired test).
    significant = sum(1 for r in runs if (r.get("significance") or {}).get("p", 1.0) < ALPHA
                      and r["significance"].get("diff", 0) > 0)
    usd = sum(r["target_usage"]["usd"] + r["optimizer_usage"]["usd"] for r in runs)
    return {"task": task, "method": strategy, "seeds": len(runs), "test_mean": mean, "test_sd": sd,
            "seed_test_mean": seed_mean,
            "gain": (mean - seed_mean) if mean is not None and seed_mean is not None else None,
            "seeds_p_lt_0.05": significant,
            "scored_examples": statistics.fmean(r["search"].get("examples", 0) for r in runs) if runs else None,
            "usd": usd, "wall_s": statistics.fmean(r["seconds"] for r in runs) if runs else None,
            "trainable_params": max((r.get("trainable_parameters", 0) for r in runs), default=None),
            "prompt_tokens": _mean([r["prompt_tokens"] if "prompt_tokens" in r
                                    else count(r["best_prefix"]) if count else None for r in runs]),
            "projected_test": _mean([(r.get("projection") or {}).get("test") for r in runs]),
            "projection_keeps": _mean([(r.get("projection") or {}).get("keeps") for r in runs])}


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.3f}" if abs(v) < 100 else f"{v:.0f}"
    return str(v)


def table_lines(rows: list[dict[str, Any]]) -> list[str]:
    head = ("task", "method", "seeds", "test", "gain", "p<0.05", "scored", "usd", "wall s", "params", "tokens",
            "projected", "keeps")
    body = [(r["task"], r["method"], str(r["seeds"]),
             "-" if r["test_mean"] is None else f"{r['test_mean']:.3f} ± {r['test_sd']:.3f}",
             "-" if r["gain"] is None else f"{r['gain']:+.3f}",
             "-" if r["seeds_p_lt_0.05"] is None else f"{r['seeds_p_lt_0.05']}/{r['seeds']}",
             _fmt(r["scored_examples"]), f"{r['usd']:.4f}", _fmt(r["wall_s"]), _fmt(r["trainable_params"]),
             _fmt(r["prompt_tokens"]), _fmt(r["projected_test"]),
             "-" if r["projection_keeps"] is None else f"{r['projection_keeps']:.0%}") for r in rows]
    widths = [max(len(x[i]) for x in (head, *body)) for i in range(len(head))]
    return ["  ".join(x.ljust(w) for x, w in zip(line, widths)).rstrip() for line in (head, *body)]


def write_results(out: Path, rows: list[dict[str, Any]]) -> list[Path]:
    """results.json, results.csv, results.png (test against scored examples) and results.html."""
    paths = [out / "results.json", out / "results.csv"]
    paths[0].write_text(json.dumps(rows, indent=1) + "\n", encoding="utf-8")
    with open(paths[1], "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        w.writerows(rows)
    png = _plot(out / "results.png", rows)
    if png:
        paths.append(png)
    paths.append(_html(out / "results.html", rows, png))
    return paths


def _plot(path: Path, rows: list[dict[str, Any]]) -> Path | None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # the plot extra is optional: the table still stands
        return None
    tasks = sorted({r["task"] for r in rows})
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.2 * len(tasks), 3.6), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        for r in (r for r in rows if r["task"] == task and r["test_mean"] is not None):
            x = r["scored_examples"] or 0
            ax.errorbar(x, r["test_mean"], yerr=r["test_sd"] or 0, fmt="o", capsize=3)
            ax.annotate(r["method"], (x, r["test_mean"]), textcoords="offset points", xytext=(4, 4), fontsize=8)
        ax.set_title(task)
        ax.set_xlabel("scored examples (search)")
        ax.set_ylabel("test score")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _html(path: Path, rows: list[dict[str, Any]], png: Path | None) -> Path:
    cells_ = "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(r[c]))}</td>" for c in COLUMNS) + "</tr>" for r in rows)
    img = (f'<img alt="test score against scored examples" src="data:image/png;base64,'
           f'{base64.b64encode(png.read_bytes()).decode()}">' if png else "")
    page = (f"<!doctype html><meta charset=utf-8><title>promptopt sweep</title><h1>Sweep results</h1>{img}"
            f"<table border=1 cellpadding=4><tr>{''.join(f'<th>{c}</th>' for c in COLUMNS)}</tr>{cells_}</table>")
    path.write_text(page, encoding="utf-8")
    return path
