"""Demo search on the RLPrompt 16-shot tasks: the seed prompt vs random demo sets of the same k vs the
demo strategies, at one budget of scored examples, over seeds, on the same test examples.

    PROMPTOPT_DATA_DIR=../shared/data python bench/demos.py --tasks sst2,mr,cr,sst5,agnews,trec \
        --methods fewshot,mipro --seeds 0,1,2 --budget 320 --test-limit 500 --k 4 --draws 2

The method runs are one `promptopt sweep` per method (and per set of task options), tasks x seeds, the
embedded model on CPU, in runs/bench-demos/sweeps/<method>[-<task>]/cells/...: a finished cell is read back,
a cut-off one resumes from its log. The demo pool is the task's train split, dev is the 16-shot dev split,
and the test sample is the loop's fixed one. For each task the seed prompt and `--draws` random label-balanced
sets of k train demos are scored on the same test examples; a method's best prompt is compared with
the seed (McNemar, from the run's own report) and with the per-example mean of the random sets (paired
bootstrap). Results go to a JSON-lines file one record at a time, so a stopped bench resumes where it
was; `--table` prints the markdown table from that file.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from optimize_cli import ROOT, finished
from promptopt.api import Backends, load_task
from promptopt.scoring.cache import ResponseCache, default_cache_path
from promptopt.config import ModelConfig
from promptopt.task.demos import sample_demo_ids
from promptopt.loop import test_sample
from promptopt.resolved import BackendSpec
from promptopt.scoring.scorer import Job, score_jobs
from promptopt.measure.significance import paired_bootstrap
from promptopt.types import prompt_id

METHODS: dict[str, dict[str, Any]] = {
    "fewshot": {"strategy": "fewshot", "options": {"k": 4}},
    "mipro": {"strategy": "mipro", "options": {"k": 4}},
    "promptquine": {"strategy": "promptquine", "options": {"k": 4}},
    "apo_demos": {"strategy": "apo", "demos": 4, "optimizer": True,
                  "options": {"rounds": 2}},
    "bootstrap": {"strategy": "bootstrap", "options": {"k": 4}},
}
# Smaller dev carves where a task's default dev split would eat the whole budget (GSM8K: 200 by default).
TASK_OPTIONS: dict[str, dict[str, Any]] = {"gsm8k": {"dev_size": 50}}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tasks", default="sst2,mr,cr,sst5,agnews,trec")
    p.add_argument("--methods", default="fewshot,mipro")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--budget", type=int, default=320, help="scored examples per run (search phase)")
    p.add_argument("--test-limit", type=int, default=500)
    p.add_argument("--k", type=int, default=4, help="demos in each random baseline set")
    p.add_argument("--draws", type=int, default=2, help="random demo sets per task")
    p.add_argument("--run-dir", default="runs/bench-demos")
    p.add_argument("--out", default="runs/bench-demos/results.jsonl")
    p.add_argument("--table", action="store_true", help="print the table from --out and stop")
    p.add_argument("--threads", type=int, help="torch threads (1 holds up best on a loaded 2-core machine)")
    return p.parse_args(argv)


def done_keys(out: Path) -> dict[tuple[str, ...], dict[str, Any]]:
    if not out.exists():
        return {}
    recs = [json.loads(line) for line in out.read_text().splitlines() if line.strip()]
    return {tuple(r["key"]): r for r in recs}


def append(out: Path, rec: dict[str, Any]) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "a", encoding="utf-8") as f:
        f.write(json.dumps(rec) + "\n")


def test_scores(task: Any, backend: Any, prefix: str, test: list[Any]) -> list[float]:
    ev = score_jobs(task, backend, [Job(prompt_id(prefix), prefix, "test", tuple(test))])[0]
    if ev.state != "complete":
        raise RuntimeError(f"test scoring failed: {ev.error}")
    by_id = {r.example_id: r.score for r in ev.results}
    return [by_id[ex.id] for ex in test]


def baselines(task_name: str, args: argparse.Namespace, backend: Any) -> dict[str, Any]:
    task = load_task(task_name, options=TASK_OPTIONS.get(task_name))
    test = test_sample(list(task.split("test")), args.test_limit)
    seed_prompt = task.seed_prompts[0]
    started = time.monotonic()
    seed = test_scores(task, backend, seed_prompt, test)
    draws = []
    by_id = {ex.id: ex for ex in task.split("train")}
    for d in range(args.draws):
        ids = sample_demo_ids(task.split("train"), args.k, random.Random(f"bench-random:{d}"))
        draws.append(test_scores(task, backend, task.prompt_text(seed_prompt, [by_id[i] for i in ids]), test))
    return {"seed_test": statistics.fmean(seed), "seed_scores": seed,
            "random_test": [statistics.fmean(s) for s in draws],
            "random_mean_scores": [statistics.fmean(col) for col in zip(*draws)] if draws else [],
            "test_n": len(test), "seconds": time.monotonic() - started}


def sweep_method(method: str, tasks: list[str], args: argparse.Namespace) -> dict[tuple[str, int], dict[str, Any]]:
    """One `promptopt sweep` of `method` over these tasks (same task options) and the seeds; each cell's
    summary by (task, seed). The sweep skips finished cells and resumes cut-off ones."""
    spec = METHODS[method]
    options = TASK_OPTIONS.get(tasks[0], {})
    out = Path(args.run_dir) / "sweeps" / (method + (f"-{tasks[0]}" if options else ""))
    argv = [sys.executable, "-m", "promptopt.cli", "sweep", "--tasks", ",".join(tasks), "--strategies", spec["strategy"],
            "--seeds", args.seeds, "--budget", str(args.budget), "--test-limit", str(args.test_limit),
            "--out", str(out)]
    if not spec.get("optimizer"):
        argv += ["--optimizer-model", "none"]
    sets = [f"{spec['strategy']}.{k}={v}" for k, v in spec["options"].items()]
    sets += [f"demos={spec['demos']}"] if spec.get("demos") else []
    sets += [f"task.{k}={v}" for k, v in options.items()]
    for s in sets:
        argv += ["--set", s]
    env = {**os.environ, **({"OMP_NUM_THREADS": str(args.threads)} if args.threads else {})}
    print(f"-- {' '.join(argv[3:])}", flush=True)
    if subprocess.run(argv, cwd=ROOT, env=env).returncode != 0:
        raise SystemExit(f"bench: the sweep in {out} did not finish; run the bench again to resume it")
    return {(t, int(seed)): finished(next((ROOT / out).glob(f"cells/{t}__{spec['strategy']}__seed{seed}/*/summary.json")),
                                     f"{method} on {t} seed {seed}")
            for t in tasks for seed in args.seeds.split(",")}


def method_record(task_name: str, summary: dict[str, Any], backend: Any, base: dict[str, Any],
                  args: argparse.Namespace) -> dict[str, Any]:
    """A sweep cell's run against the task's baselines: the seed (the run's own paired test) and the
    per-example mean of the random demo sets (paired bootstrap on the same test examples)."""
    task = load_task(task_name, options=TASK_OPTIONS.get(task_name))
    test = test_sample(list(task.split("test")), args.test_limit)
    best = test_scores(task, backend, summary["best_prefix"], test)  # cached: the run scored this prefix
    diff = low = high = p = float("nan")
    if base["random_mean_scores"]:
        diff, low, high, p = paired_bootstrap(base["random_mean_scores"], best)
    sig = summary.get("significance") or {"diff": 0.0, "p": 1.0}
    return {"seed_test": summary["seed_test"], "best_test": summary["best_test"], "best_dev": summary["best_dev"],
            "seed_dev": summary["seed_dev"], "p_vs_seed": sig["p"], "diff_vs_seed": sig["diff"],
            "diff_vs_random": diff, "ci_vs_random": [low, high], "p_vs_random": p,
            "scored_examples": summary["search"]["examples"], "optimizer_calls": summary["search"]["optimizer_calls"],
            "demos": len(summary["best_demos"]), "best_prompt": summary["best_prompt"], "run_dir": summary["run_dir"],
            "seconds": summary["seconds"]}


def table(out: Path) -> str:
    recs = done_keys(out)
    tasks = list(dict.fromkeys(k[0] for k in recs))
    rnd: list[float] = []
    lines = ["| task | method | test (mean ± std) | Δ vs seed | seeds p<0.05 vs seed | Δ vs random k | "
             "seeds p<0.05 vs random | scored ex. | wall s |", "|---|---|---|---|---|---|---|---|---|"]
    for t in tasks:
        base = recs.get((t, "baseline"))
        if base:
            rnd = base["random_test"]
            lines.append(f"| {t} | seed prompt | {base['seed_test']:.3f} | | | | | 0 | |")
        if base and rnd:
            lines.append(f"| {t} | random demos (mean of {len(rnd)}) | {statistics.fmean(rnd):.3f} "
                         f"({', '.join(f'{x:.3f}' for x in rnd)}) | {statistics.fmean(rnd) - base['seed_test']:+.3f} "
                         f"| | | | 0 | {base['seconds']:.0f} |")
        for m in METHODS:
            runs = [r for k, r in recs.items() if k[0] == t and k[1] == m]
            if not runs:
                continue
            tests = [r["best_test"] for r in runs]
            std = statistics.stdev(tests) if len(tests) > 1 else 0.0
            sig_seed = sum(1 for r in runs if r["p_vs_seed"] < 0.05 and r["diff_vs_seed"] > 0)
            sig_rnd = sum(1 for r in runs if r["p_vs_random"] < 0.05 and r["diff_vs_random"] > 0)
            vs_rnd = statistics.fmean(r["diff_vs_random"] for r in runs)
            lines.append(
                f"| {t} | {m} | {statistics.fmean(tests):.3f} ± {std:.3f} "
                f"| {statistics.fmean(r['diff_vs_seed'] for r in runs):+.3f} | {sig_seed}/{len(runs)} "
                f"| {vs_rnd:+.3f} | {sig_rnd}/{len(runs)} "
                f"| {statistics.fmean(r['scored_examples'] for r in runs):.0f} "
                f"| {statistics.fmean(r['seconds'] for r in runs):.0f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = Path(args.out)
    if args.table:
        print(table(out))
        return 0
    unknown = [m for m in args.methods.split(",") if m not in METHODS]
    if unknown:
        print(f"bench/demos.py: unknown method(s) {unknown}; choose from {', '.join(METHODS)}", file=sys.stderr)
        return 2
    if args.threads:  # this process scores the baselines; the sweep's cells get OMP_NUM_THREADS
        import torch
        torch.set_num_threads(args.threads)
    backend = Backends(ResponseCache(default_cache_path())).get(BackendSpec.of(ModelConfig(), "target"))
    recs = done_keys(out)
    tasks = args.tasks.split(",")
    for task_name in tasks:
        if (task_name, "baseline") not in recs:
            rec = {"key": [task_name, "baseline"], **baselines(task_name, args, backend)}
            append(out, rec)
            recs[(task_name, "baseline")] = rec
    # Tasks that share their options share a sweep (a sweep's --set reaches every task).
    groups: dict[str, list[str]] = {}
    for t in tasks:
        groups.setdefault(json.dumps(TASK_OPTIONS.get(t, {}), sort_keys=True), []).append(t)
    for method in args.methods.split(","):
        for group in groups.values():
            todo = [t for t in group for seed in args.seeds.split(",") if (t, method, seed) not in recs]
            if not todo:
                continue
            for (task_name, seed), summary in sweep_method(method, group, args).items():
                key = (task_name, method, str(seed))
                if key in recs:
                    continue
                rec = {"key": list(key), **method_record(task_name, summary, backend, recs[(task_name, "baseline")], args)}
                append(out, rec)
                recs[key] = rec
                print(f"{task_name} {method} seed {seed}: test {rec['seed_test']:.3f} -> {rec['best_test']:.3f} "
                      f"(p {rec['p_vs_seed']:.3g}; vs random {rec['diff_vs_random']:+.3f}, p {rec['p_vs_random']:.3g}) "
                      f"{rec['seconds']:.0f}s", flush=True)
    print(table(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
