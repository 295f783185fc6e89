"""Random demos, no search: the baseline row of the issue-31 comparison. Per run seed, one label-balanced
k-demo set drawn from train (as `fewshot`'s first candidates are drawn), with the task's seed instruction,
scored on the same test sample a sweep cell reports on (`--test-limit`), and McNemar's exact test against
the seed prompt alone on the same examples. One JSON line per (task, seed); the embedded model on hf.

    PROMPTOPT_DATA_DIR=../shared/data python bench/random_demos.py --tasks agnews,trec --seeds 0,1,2
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import time

from promptopt.api import load_task
from promptopt.backends.hf import HFBackend
from promptopt.measure.significance import compare_paired
from promptopt.scoring.scorer import Job, score_jobs
from promptopt.task.data import test_sample
from promptopt.task.demos import sample_demo_ids
from promptopt.types import prompt_id


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tasks", default="agnews")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--k", type=int, default=4)
    p.add_argument("--test-limit", type=int, default=200)
    args = p.parse_args(argv)
    backend = HFBackend()
    for name in args.tasks.split(","):
        task = load_task(name)
        test = test_sample(list(task.split("test")), args.test_limit)
        train = {ex.id: ex for ex in task.split("train")}

        def scores(prefix: str) -> list[float]:
            ev = score_jobs(task, backend, [Job(prompt_id(prefix), prefix, "test", tuple(test))])[0]
            got = {r.example_id: r.score for r in ev.results}
            return [got[ex.id] for ex in test]

        seed_prompt = task.seed_prompts[0]
        base = scores(seed_prompt)
        for seed in (int(s) for s in args.seeds.split(",")):
            started = time.time()
            ids = sample_demo_ids(list(train.values()), args.k, random.Random(f"random-demos:{seed}"))
            got = scores(task.prompt_text(seed_prompt, [train[i] for i in ids]))
            print(json.dumps({"task": name, "seed": seed, "seed_test": sum(base) / len(base),
                              "test": sum(got) / len(got), "p": compare_paired(base, got)["p"], "demos": list(ids),
                              "seconds": round(time.time() - started, 1)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
