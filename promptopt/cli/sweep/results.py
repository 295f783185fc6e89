"""A sweep's results: one row per (task, method) over seeds, as JSON, CSV, a PNG of test score against
cost, and an HTML page. The seed prompt is a row of its own (its test score, from the same runs)."""
from __future__ import annotations

import base64
import csv
import html
import json
import statistics
from pathlib import Path
from typing import Any

from promptopt.cli.sweep.grid import Grid, cell_done, cell_run, cells

ALPHA = 0.05
COLUMNS = ("task", "method", "seeds", "test_mean", "test_sd", "seed_test_mean", "gain", "seeds_p_lt_0.05",
           "scored_examples", "usd", "wall_s")


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
    for task in grid.tasks:
        seeds: dict[int, float] = {}
        for strategy in grid.strategies:
            runs = by_method.get((task, strategy), [])
            for r in runs:
                if r.get("seed_test") is not None:
                    seeds.setdefault(r["seed"], r["seed_test"])
            rows.append(_row(task, strategy, runs))
        mean, sd = _mean_sd(list(seeds.values()))
        rows.insert(len(rows) - len(grid.strategies), {
            "task": task, "method": "seed", "seeds": len(seeds), "test_mean": mean, "test_sd": sd,
            "seed_test_mean": mean, "gain": 0.0 if mean is not None else None, "seeds_p_lt_0.05": None,
            "scored_examples": 0, "usd": 0.0, "wall_s": 0.0})
    return rows, missing


def _row(task: str, strategy: str, runs: list[dict[str, Any]]) -> dict[str, Any]:
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
            "usd": usd, "wall_s": statistics.fmean(r["seconds"] for r in runs) if runs else None}


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.3f}" if abs(v) < 100 else f"{v:.0f}"
    return str(v)


def table_lines(rows: list[dict[str, Any]]) -> list[str]:
    head = ("task", "method", "seeds", "test", "gain", "p<0.05", "scored", "usd", "wall s")
    body = [(r["task"], r["method"], str(r["seeds"]),
             "-" if r["test_mean"] is None else f"{r['test_mean']:.3f} ± {r['test_sd']:.3f}",
             "-" if r["gain"] is None else f"{r['gain']:+.3f}",
             "-" if r["seeds_p_lt_0.05"] is None else f"{r['seeds_p_lt_0.05']}/{r['seeds']}",
             _fmt(r["scored_examples"]), f"{r['usd']:.4f}", _fmt(r["wall_s"])) for r in rows]
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
