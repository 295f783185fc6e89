"""Seed-to-seed spread of the test gain: the dev pick against the refit k-fold pick (issue #31, Show item 3).

    PROMPTOPT_DATA_DIR=../shared/data nice -n 10 python bench/final_pick_spread.py --task sst2 --strategy fewshot \
        --seeds 0,1,2,3,4 --search 160 --repeats 2 --out runs/spread

For each seed, one run picks by dev (`--budget SEARCH`) and one by the refit k-fold (`--budget SEARCH +` what
the pick keeps back, so both searches get SEARCH examples and, sharing one response cache, search alike).
Each is an ordinary `promptopt optimize` run under OUT/runs/, its summary kept as
OUT/<task>-<strategy>-<pick>-s<seed>.json; a seed and pick with a summary is read, not run again. Prints the test gain over the seed prompt per seed and its mean and sd per pick.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

from promptopt.measure import final_pick
from promptopt.measure.final_pick import FinalConfig


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--task", default="sst2")
    p.add_argument("--strategy", default="fewshot")
    p.add_argument("--seeds", default="0,1,2,3,4")
    p.add_argument("--search", type=int, default=160, help="examples the search gets in both runs")
    p.add_argument("--repeats", type=int, default=2, help="final.repeats of the k-fold pick")
    p.add_argument("--test-limit", type=int, default=200)
    p.add_argument("--dev", type=int, required=True, help="the task's dev size (for the k-fold run's budget)")
    p.add_argument("--train", type=int, required=True, help="the task's train size")
    p.add_argument("--top-k", type=int, default=3, help="final_top_k")
    p.add_argument("--set", action="append", default=[], help="a setting for both runs (e.g. fewshot.sets=8)")
    p.add_argument("--out", default="runs/spread")
    args = p.parse_args(argv)
    out = Path(args.out)
    rule = FinalConfig(pick="kfold", repeats=args.repeats)
    kept = final_pick.counted_examples(rule, args.top_k + 1, args.dev, args.train)  # the finalists and the seed
    rows: dict[str, list[float]] = {"dev": [], "kfold": []}
    for seed in [int(s) for s in args.seeds.split(",")]:
        for pick in ("dev", "kfold"):
            summary = out / f"{args.task}-{args.strategy}-{pick}-s{seed}.json"
            if not summary.is_file():
                extra = ["--set", "final.pick=kfold", "--set", f"final.repeats={args.repeats}"] if pick == "kfold" else []
                budget = args.search + (kept if pick == "kfold" else 0)
                done = subprocess.run([sys.executable, "-m", "promptopt.cli", "optimize", "--task", args.task,
                                       "--strategy", args.strategy, "--budget", str(budget), "--test-limit",
                                       str(args.test_limit), "--seed", str(seed), "--run-dir", str(out / "runs"),
                                       "--set", f"cache_path={out / 'cache.sqlite'}", "--set", f"final_top_k={args.top_k}",
                                       *[a for kv in args.set for a in ("--set", kv)], "--json", *extra],
                                      check=True, stdout=subprocess.PIPE, text=True)
                out.mkdir(parents=True, exist_ok=True)
                summary.write_text(done.stdout)
            s = json.loads(summary.read_text())
            gain = 100 * (s["best_test"] - s["seed_test"])
            rows[pick].append(gain)
            print(f"| {seed} | {pick} | {s['best_id']} | {s['seed_test']:.3f} | {s['best_test']:.3f} | {gain:+.1f} | "
                  f"{s['seconds']:.0f} |", flush=True)
    for pick, gains in rows.items():
        sd = statistics.stdev(gains) if len(gains) > 1 else 0.0
        print(f"{pick}: test gain {statistics.mean(gains):+.1f} points mean, sd {sd:.1f} ({len(gains)} seeds)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
