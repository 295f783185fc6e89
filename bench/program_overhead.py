"""What promptopt costs around a program's evaluator: an async evaluator that sleeps `--sleep` seconds per
example (a stand-in for a network call), run at `--concurrency` by `optimize(program=...)` with hill
climbing. The ideal is concurrency / sleep examples per second (320/s at 16 and 50 ms); the figures are the
examples per second reached, their share of the ideal, and the share of wall time spent in promptopt
(everything but waiting on the evaluator at full concurrency).

    python bench/program_overhead.py                    # 16 at 50 ms, no result cache
    python bench/program_overhead.py --cache            # results cached (sqlite) as they come

Prints one JSON line.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path

import promptopt
from promptopt import Program, Result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sleep", type=float, default=0.05)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--dev", type=int, default=160, help="dev examples (each step scores candidates on all)")
    ap.add_argument("--budget", type=int, default=2000, help="examples evaluated in the search")
    ap.add_argument("--cache", action="store_true", help="cache results (a fresh sqlite file)")
    args = ap.parse_args()
    words = "the a answer number short step text carefully question facts".split()
    rows = [{"id": f"x{i}", "key": words[i % len(words)]} for i in range(args.dev)]
    state = {"evaluated": 0}

    async def evaluate(components, examples):
        out = []
        for ex in examples:
            await asyncio.sleep(args.sleep)  # the evaluator's own work: one network call per example
            state["evaluated"] += 1
            text = " ".join(components.values()).lower().split()
            out.append(Result(float(ex["key"] in text), trace={"words": len(text)}))
        return out

    program = Program({"extract": ("Extract the key facts from the text.", "extracts what matters"),
                       "answer": ("Answer the question from the facts.", "answers from the extract")},
                      evaluate, dev=rows, version="bench", concurrency=args.concurrency)
    with tempfile.TemporaryDirectory() as tmp:
        settings = {"cache_path": str(Path(tmp) / "cache.sqlite")} if args.cache else {"cache": False}
        t0 = time.perf_counter()
        report = promptopt.optimize(program=program, strategy="hill_climb", optimizer_model=None,
                                    budget={"max_examples": args.budget}, run_dir=str(Path(tmp) / "runs"),
                                    strategy_options={"steps": 50, "patience": 50}, **settings)
        wall = time.perf_counter() - t0
    n = state["evaluated"]
    ideal = args.concurrency / args.sleep
    ideal_wall = n / ideal
    print(json.dumps({"evaluated": n, "wall_s": round(wall, 3), "examples_per_s": round(n / wall, 1),
                      "ideal_per_s": ideal, "share_of_ideal": round(n / wall / ideal, 3),
                      "promptopt_share_of_wall": round(1 - ideal_wall / wall, 3), "cache": args.cache,
                      "steps": report.steps, "timings": report.timings}))


if __name__ == "__main__":
    main()
