"""Scoring throughput with 0, 4 and 8 demos in the prompt (hf backend, embedded model, no cache).

    PROMPTOPT_DATA_DIR=../shared/data python bench/demo_scoring.py --task sst2 --n 200

Instruction and demos form the shared prefix, so the scorer computes their KV once per batch and
only the query and options are new per example; the table shows examples/s and the prefix length.
"""
from __future__ import annotations

import argparse
import random
import sys
import time

from promptopt.api import load_task
from promptopt.backends.hf import HFBackend
from promptopt.task.demos import sample_demo_ids
from promptopt.scoring.scorer import Job, score_jobs


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--task", default="sst2")
    p.add_argument("--n", type=int, default=200, help="test examples scored per setting")
    p.add_argument("--ks", default="0,4,8")
    args = p.parse_args(argv)
    task = load_task(args.task)
    backend = HFBackend()
    test = tuple(task.split("test")[: args.n])
    by_id = {ex.id: ex for ex in task.split("train")}
    score_jobs(task, backend, [Job("warm", task.seed_prompts[0], "test", test[:8])])  # first-call overheads
    print("| demos | prefix tokens | examples | seconds | examples/s | accuracy |\n|---:|---:|---:|---:|---:|---:|")
    for k in (int(x) for x in args.ks.split(",")):
        ids = sample_demo_ids(task.split("train"), k, random.Random("throughput")) if k else ()
        prefix = task.prompt_text(task.seed_prompts[0], [by_id[i] for i in ids])
        started = time.perf_counter()
        ev = score_jobs(task, backend, [Job(f"k{k}", prefix, "test", test)])[0]
        secs = time.perf_counter() - started
        print(f"| {k} | {backend.count_tokens(prefix)} | {len(test)} | {secs:.1f} | {len(test) / secs:.2f} | {ev.score:.3f} |",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
