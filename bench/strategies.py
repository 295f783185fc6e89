"""Every strategy on one task with the same budget of scored examples and the same seeds: seed vs
best dev/test score (mean ± std over seeds), optimizer calls, wall time; a markdown table, a JSON
file, and a PNG of the best-so-far dev score against scored examples (one line per strategy).

    PROMPTOPT_DATA_DIR=../shared/data python bench/strategies.py --task sst2 --seeds 0,1,2 --budget 256

The runs are one `promptopt sweep` per group (runs/bench-strategies/<task>/{llm-free,llm}/cells/...):
a finished cell is read back instead of re-run, and a cut-off one is resumed from its log, so the bench
can be stopped and started again. Strategies that can run without an optimizer LLM
(the Plum-style ones, rlprompt) run with `--optimizer-model none` unless --llm-edits is given, so the
comparison of search quality does not hinge on the weak embedded optimizer.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

from optimize_cli import ROOT, finished
from promptopt import registry
from promptopt.cli.sweep.soft import SOFT_METHODS, is_soft
from promptopt.runlog import is_task_score, load_run
from promptopt.strategy import needs


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--task", default="sst2")
    p.add_argument("--strategies", help="comma-separated (default: every registered strategy); soft methods "
                                        "(prompt_tuning, p_tuning, prefix_tuning, cpt) too")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--budget", type=int, default=256, help="scored examples per run (search phase)")
    p.add_argument("--test-limit", type=int, default=200)
    p.add_argument("--prompt", help="seed prompt for every strategy (default: the task's)")
    p.add_argument("--llm-edits", action="store_true", help="let LLM-free strategies use the optimizer too")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="extra setting for every run; one for a strategy (apo.rounds=2) goes to that one only")
    p.add_argument("--run-dir", default="runs/bench-strategies")
    p.add_argument("--out", help="output prefix (default: <run-dir>/<task>/strategies)")
    return p.parse_args(argv)


def sweep(args: argparse.Namespace, strategies: list[str], llm_free: bool, out: Path) -> dict[str, list[dict[str, Any]]]:
    """One `promptopt sweep` over these strategies (it skips finished cells and resumes cut-off ones);
    returns each strategy's run summaries in seed order."""
    argv = [sys.executable, "-m", "promptopt.cli", "sweep", "--tasks", args.task, "--strategies", ",".join(strategies),
            "--seeds", args.seeds, "--budget", str(args.budget), "--test-limit", str(args.test_limit),
            "--out", str(out)]
    if llm_free:
        argv += ["--optimizer-model", "none"]
    if args.prompt:
        argv += ["--set", f"prompt={args.prompt}"]
    for s in args.sets:  # a strategy's own setting (apo.rounds=2) reaches only that strategy's cells
        argv += ["--set", s]
    print(f"-- {' '.join(argv[3:])}", flush=True)
    if subprocess.run(argv, cwd=ROOT, env=os.environ.copy()).returncode != 0:
        raise SystemExit(f"bench: the sweep in {out} did not finish; run the bench again to resume it")
    found: dict[str, list[dict[str, Any]]] = {}
    for strategy in strategies:
        for seed in args.seeds.split(","):
            summary = next(out.glob(f"cells/*__{strategy}__seed{seed}/*/summary.json"))
            found.setdefault(strategy, []).append(finished(summary, f"{strategy} seed {seed}"))
    return found


def best_so_far(run: Path) -> list[tuple[int, float]]:
    """(scored examples so far, best dev score of any candidate scored on the whole dev set so far),
    from the search-phase task-metric evaluations in the run log."""
    seen: dict[str, dict[str, float]] = {}
    examples, best, curve = 0, float("-inf"), []
    n_dev = 0
    for e in load_run(run).evals:
        if e.get("phase") != "search":
            continue
        results = e.get("results") or []
        examples += len(results)
        if e.get("split") != "dev" or not is_task_score(e):
            continue
        scores = seen.setdefault(e["candidate_id"], {})
        scores.update({r["example_id"]: r["score"] for r in results})
        n_dev = max(n_dev, len(scores))
        if len(scores) == n_dev and scores:
            best = max(best, sum(scores.values()) / len(scores))
        if best > float("-inf"):
            curve.append((examples, best))
    return curve


def mean_std(xs: list[float]) -> tuple[float, float]:
    return statistics.fmean(xs), statistics.stdev(xs) if len(xs) > 1 else 0.0


def table(rows: list[dict[str, Any]]) -> str:
    head = ("| strategy | optimizer | seed dev | best dev | seed test | best test | Δ test | "
            "seeds p<0.05 | p per seed | scored ex. | opt. calls | wall s |")
    lines = [head, "|" + "---|" * 12]
    for r in rows:
        cells = [r["strategy"], r["optimizer"]]
        for key in ("seed_dev", "best_dev", "seed_test", "best_test", "delta_test"):
            m, s = r[key]
            cells.append(f"{m:.3f} ± {s:.3f}")
        cells.append(f"{r['significant']}/{r['seeds']}")
        cells.append(", ".join("n/a" if p is None else f"{p:.2g}" for p in r["p"]))
        cells += [f"{r['examples'][0]:.0f}", f"{r['optimizer_calls'][0]:.1f}", f"{r['seconds'][0]:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(curves: dict[str, list[list[tuple[int, float]]]], budget: int, out: Path) -> None:
    """Mean best-so-far dev score over seeds, sampled on a common grid of scored examples."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    grid = list(range(0, budget + 1, max(1, budget // 64)))
    fig, ax = plt.subplots(figsize=(9, 5))
    colors = plt.get_cmap("tab20").colors
    styles = ("-", "--", ":", "-.")
    for i, (strategy, runs) in enumerate(sorted(curves.items())):
        if not runs:  # a soft method: no search curve
            continue
        ys = []
        for x in grid:
            vals = [next((b for e, b in reversed(c) if e <= x), None) for c in runs]
            vals = [v for v in vals if v is not None]
            ys.append(statistics.fmean(vals) if len(vals) == len(runs) else None)
        pts = [(x, y) for x, y in zip(grid, ys) if y is not None]
        if pts:  # strategies that make the same search draw the same line: styles keep both visible
            ax.step(*zip(*pts), where="post", label=strategy, color=colors[(2 * i + i // 10) % 20],
                    linestyle=styles[i % len(styles)], linewidth=1.6)
    ax.set_xlabel("scored examples (search)")
    ax.set_ylabel("best dev score so far (mean over seeds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not all(s.strip().isdigit() for s in args.seeds.split(",")):
        raise SystemExit(f"bench: --seeds takes comma-separated integers, not {args.seeds!r}")
    strategies = args.strategies.split(",") if args.strategies else sorted(registry.names("strategies"))
    unknown = sorted(set(strategies) - set(registry.names("strategies")) - set(SOFT_METHODS))
    if unknown:
        raise SystemExit(f"bench: unknown strategy {', '.join(unknown)} "
                         f"(known: {', '.join(sorted(registry.names('strategies')))})")
    if not os.environ.get("PROMPTOPT_DATA_DIR"):
        raise SystemExit("bench: set PROMPTOPT_DATA_DIR (e.g. ../shared/data)")
    run_dir = (ROOT / args.run_dir / args.task).resolve()
    llm_free = {st for st in strategies if is_soft(st) or (not needs(registry.get("strategies", st)).optimizer
                                                          and not args.llm_edits)}
    runs: dict[str, list[dict[str, Any]]] = {}
    for group, free in ((sorted(llm_free), True), ([st for st in strategies if st not in llm_free], False)):
        if group:
            runs.update(sweep(args, group, free, run_dir / ("llm-free" if free else "llm")))
    rows, curves, raw = [], {}, {}
    for strategy in strategies:
        summaries = runs[strategy]
        raw[strategy] = summaries
        # A soft method's cell has no search log: its training is not a curve over scored examples.
        curves[strategy] = [] if is_soft(strategy) else [best_so_far(Path(s["run_dir"])) for s in summaries]
        row: dict[str, Any] = {"strategy": strategy, "optimizer": "none" if strategy in llm_free else "embedded"}
        for key in ("seed_dev", "best_dev", "seed_test", "best_test"):
            row[key] = mean_std([s[key] for s in summaries])
        row["delta_test"] = mean_std([s["best_test"] - s["seed_test"] for s in summaries])
        row["examples"] = mean_std([s["search"]["examples"] for s in summaries])
        row["optimizer_calls"] = mean_std([s["search"]["optimizer_calls"] for s in summaries])
        row["seconds"] = mean_std([s["seconds"] for s in summaries])
        # Seeds whose best prompt beat the seed prompt on the same test examples (McNemar / bootstrap).
        row["significant"] = sum(1 for s in summaries if (s.get("significance") or {}).get("p", 1.0) < 0.05
                                 and s["significance"]["diff"] > 0)
        row["seeds"] = len(summaries)
        row["p"] = [(s.get("significance") or {}).get("p") for s in summaries]
        rows.append(row)
        print(table(rows[-1:]).splitlines()[-1], flush=True)
    out = Path(args.out) if args.out else run_dir / "strategies"
    out.parent.mkdir(parents=True, exist_ok=True)
    md = table(rows)
    header = (f"task {args.task}, budget {args.budget} scored examples, seeds {args.seeds}, "
              f"test limit {args.test_limit}; mean ± std over seeds")
    out.with_suffix(".md").write_text(header + "\n\n" + md + "\n")
    out.with_suffix(".json").write_text(json.dumps({"config": vars(args), "rows": rows, "runs": raw,
                                                    "curves": curves}, indent=1) + "\n")
    plot(curves, args.budget, out.with_suffix(".png"))
    print("\n" + header + "\n\n" + md)
    print(f"\nwrote {out.with_suffix('.md')}, .json, .png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
