"""Could any final rule meet issue #31's spread goal? The bound from every searched candidate's test score.

    PROMPTOPT_DATA_DIR=../shared/data python bench/spread_bound.py --spread runs/spread --task sst2 --strategy fewshot

Reads the dev-pick runs that `bench/final_pick_spread.py` left in SPREAD (one per seed), scores every candidate each
run scored on dev (and the seed prompt) on that run's test sample (through the run's response cache, so a prompt already scored costs nothing),
and then asks, by an exact search over one candidate per seed: what is the least seed-to-seed standard deviation of
the test gain that keeps the mean gain no lower than the baseline's? A final rule (dev, k-fold, a shortlist)
only ever chooses among the searched candidates, so if no choice at all reaches half the baseline's sd, none of
them can. Also the same search over the final report's finalists (the shortlist's top `final_top_k` and the seed),
and the best candidate on test per seed (an oracle). The test split is read only here, to bound what any rule could
do; no run sees it.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Sequence

import numpy as np

from promptopt import registry
from promptopt.api import evaluate_candidate, load_run_config, load_task
from promptopt.measure.final_pick import shortlist
from promptopt.runlog import load_run
from promptopt.scoring.cache import CachedBackend, ResponseCache, default_cache_path
from promptopt.types import Candidate


def test_gains(run_dir: Path) -> tuple[dict[str, float], str, list[str]]:
    """Test gain over the seed prompt (points) of each candidate a rule could pick (those the search scored on
    dev, and the seed), the dev pick's id, and the finalists the final report took: the shortlist of the search's
    dev scores, before the final phase scored them on all of dev, ties in the order the run logged them."""
    view, cfg = load_run(run_dir), load_run_config(run_dir)
    assert view.summary is not None, f"{run_dir} has no summary"
    task = load_task(cfg.task, data_dir=cfg.data_dir, seed=cfg.seed, options=cfg.task_options)
    target = CachedBackend(registry.get("backends", cfg.target.backend)(model=cfg.target.model, **cfg.target.options),
                           ResponseCache(Path(cfg.cache_path) if cfg.cache_path else default_cache_path()))
    seed_id = Candidate(view.summary["seed_prompt"]).id  # the final report's baseline: the seed prompt, no demos
    search: dict[str, dict[str, float]] = {}
    for e in view.events:
        if (e["type"] == "eval" and e.get("phase") == "search" and e["split"] == "dev" and e.get("state") == "complete"
                and e.get("objective", "task") == "task"):
            search.setdefault(e["candidate_id"], {}).update({r["example_id"]: r["score"] for r in e["results"]})
    logged = [c for c in view.candidates if c in search]
    # the mean is the run's dev score for a per-example metric (accuracy: SST-2, CR, TREC), not for a corpus metric
    finalists = shortlist({c: (statistics.mean(search[c].values()), list(search[c].values())) for c in logged},
                          cfg.final_top_k)
    pool = {c: Candidate.from_json(view.candidates[c]) for c in logged}
    pool[seed_id] = Candidate(view.summary["seed_prompt"])
    scores = {c: evaluate_candidate(cand, task, split="test", limit=cfg.test_limit, target=target).score
              for c, cand in pool.items()}
    gains = {c: 100 * (s - scores[seed_id]) for c, s in scores.items()}
    return gains, view.summary["best_id"], list(dict.fromkeys([*finalists, seed_id]))


def least_sd(per_seed: Sequence[Sequence[float]], floor: float) -> tuple[float, list[float]] | None:
    """The least sample sd of one value per seed among choices whose mean is at least `floor`; exact (each seed's
    distinct values, all combinations, taken one value of the first seed at a time)."""
    values = [np.unique(np.round(v, 6)) for v in per_seed]
    rest = np.stack([g.ravel() for g in np.meshgrid(*values[1:], indexing="ij")], axis=1)
    best: tuple[float, list[float]] | None = None
    for first in values[0]:
        g = np.column_stack([np.full(len(rest), first), rest])
        ok = g.mean(1) >= floor - 1e-9
        if ok.any():
            sd = g[ok].std(1, ddof=1)
            i = int(np.argmin(sd))
            if best is None or sd[i] < best[0]:
                best = (float(sd[i]), g[ok][i].tolist())
    return best


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--spread", required=True, help="the --out of bench/final_pick_spread.py")
    p.add_argument("--task", required=True)
    p.add_argument("--strategy", required=True)
    p.add_argument("--seeds", default="0,1,2,3,4")
    p.add_argument("--before", help="the baseline's test gain per seed, comma-separated (default: the dev pick's "
                                    "gains in SPREAD)")
    p.add_argument("--out", help="JSON path (default SPREAD/<task>-<strategy>-bound.json)")
    args = p.parse_args(argv)
    if len(args.seeds.split(",")) < 2:
        p.error("--seeds: a spread needs at least two seeds")
    spread = Path(args.spread)
    every, finals, picks = [], [], []
    for seed in [int(s) for s in args.seeds.split(",")]:
        summary = json.loads((spread / f"{args.task}-{args.strategy}-dev-s{seed}.json").read_text())
        gains, pick, finalists = test_gains(Path(summary["run_dir"]))
        every.append(list(gains.values()))
        finals.append([gains[c] for c in finalists])
        picks.append(gains[pick])
        print(f"seed {seed}: {len(gains)} candidates, test gain {min(gains.values()):+.1f} to {max(gains.values()):+.1f}; "
              f"dev pick {gains[pick]:+.1f}; finalists {', '.join(f'{gains[c]:+.1f}' for c in finalists)}", flush=True)
    before = [float(x) for x in args.before.split(",")] if args.before else picks
    mean, sd = statistics.mean(before), statistics.stdev(before)
    oracle = [max(g) for g in every]
    out: dict[str, object] = {"task": args.task, "strategy": args.strategy, "before": before, "dev_pick": picks,
                              "oracle": oracle, "goal_sd": sd / 2}
    print(f"baseline {mean:+.1f} ± {sd:.1f} (goal: sd <= {sd / 2:.1f}, mean >= {mean:+.1f}); "
          f"best candidate on test per seed: {statistics.mean(oracle):+.1f} ± {statistics.stdev(oracle):.1f}")
    for name, pool in (("any candidate", every), ("the finalists and the seed", finals)):
        found = least_sd(pool, mean)
        out[name] = found and {"sd": found[0], "gains": found[1]}
        print(f"{name}: " + (f"no choice keeps the mean >= {mean:+.1f}" if found is None else
              f"least sd {found[0]:.1f} (mean {statistics.mean(found[1]):+.1f}, gains "
              f"{', '.join(f'{g:+.1f}' for g in found[1])}): goal {'met' if found[0] <= sd / 2 else 'not met'}"))
    dst = Path(args.out) if args.out else spread / f"{args.task}-{args.strategy}-bound.json"
    dst.write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
