"""Retrieved demos vs one fixed random demo set vs zero-shot, on the same test examples (no search).

    PROMPTOPT_DATA_DIR=../shared/data python bench/knn_agnews.py --task agnews --n 60 --k 4 --seeds 0,1,2

Each seed draws the fixed k-demo set as `--demos k` does for that run seed (label-balanced); retrieval is
BM25, nearest last, the knn strategy's first trial. Test examples are the ones `--test-limit n` scores.
Prints accuracy, the paired difference with McNemar's p (retrieved vs fixed, and vs zero-shot), and
examples/s of the fixed set and of retrieval on the same model (hf, embedded, no cache).
"""
from __future__ import annotations

import argparse
import random
import statistics
import sys
import time

from promptopt.api import load_task
from promptopt.backends.hf import HFBackend
from promptopt.task.data import test_sample
from promptopt.task.demos import sample_demo_ids
from promptopt.task.retrieval import RetrievalPolicy, Retriever
from promptopt.scoring.scorer import Job, score_jobs
from promptopt.measure.significance import compare_paired


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--task", default="agnews")
    p.add_argument("--n", type=int, default=60)
    p.add_argument("--k", type=int, default=4)
    p.add_argument("--seeds", default="0,1,2")
    args = p.parse_args(argv)
    task = load_task(args.task)
    backend = HFBackend()
    train = list(task.split("train"))
    by_id = {ex.id: ex for ex in train}
    test = test_sample(task.split("test"), args.n)
    seed_prompt = task.seed_prompts[0]
    score_jobs(task, backend, [Job("warm", seed_prompt, "test", tuple(test[:4]))])  # first-call overheads

    def scored(jobs: list[Job]) -> tuple[dict[str, float], float]:
        started = time.perf_counter()
        evs = score_jobs(task, backend, jobs)
        secs = time.perf_counter() - started
        return {r.example_id: r.score for ev in evs for r in ev.results}, secs

    zero, _ = scored([Job("zero", seed_prompt, "test", tuple(test))])
    retriever = Retriever(train)
    retriever.index("bm25")  # built once per run, at its start
    started = time.perf_counter()
    sets = retriever.retrieve(RetrievalPolicy(k=args.k), test)
    retrieval_secs = time.perf_counter() - started
    groups: dict[tuple[str, ...], list] = {}
    for ex, ids in zip(test, sets):
        groups.setdefault(ids, []).append(ex)
    knn, knn_secs = scored([Job("knn", task.prompt_text(seed_prompt, [by_id[i] for i in ids]), "test", tuple(g))
                            for ids, g in groups.items()])
    knn_secs += retrieval_secs
    order = [ex.id for ex in test]
    acc = lambda s: sum(s.values()) / len(s)  # noqa: E731
    print(f"| setting | seed | accuracy | vs fixed (diff, p) | vs zero-shot (diff, p) | examples/s |\n|---|---:|---:|---|---|---:|")
    print(f"| zero-shot | - | {acc(zero):.3f} | | | |")
    vz = compare_paired([zero[i] for i in order], [knn[i] for i in order])
    print(f"| retrieved k={args.k} (bm25) | - | {acc(knn):.3f} | | {vz['diff']:+.3f}, {vz['p']:.3g} | "
          f"{len(test) / knn_secs:.2f} |", flush=True)
    fixed_accs, rates, wins = [], [], 0
    for seed in (int(s) for s in args.seeds.split(",")):
        demos = sample_demo_ids(train, args.k, random.Random(f"{seed}:demos"))
        fixed, secs = scored([Job(f"fixed{seed}", task.prompt_text(seed_prompt, [by_id[i] for i in demos]), "test",
                                  tuple(test))])
        c = compare_paired([fixed[i] for i in order], [knn[i] for i in order])
        fz = compare_paired([zero[i] for i in order], [fixed[i] for i in order])
        fixed_accs.append(acc(fixed))
        rates.append(len(test) / secs)
        wins += c["diff"] > 0 and c["p"] < 0.05
        print(f"| fixed k={args.k} | {seed} | {acc(fixed):.3f} | retrieved {c['diff']:+.3f}, p={c['p']:.3g} | "
              f"{fz['diff']:+.3f}, {fz['p']:.3g} | {len(test) / secs:.2f} |", flush=True)
    sd = statistics.stdev(fixed_accs) if len(fixed_accs) > 1 else 0.0
    print(f"\nfixed: {statistics.mean(fixed_accs):.3f} ± {sd:.3f}; retrieved {acc(knn):.3f}; retrieved better with "
          f"p < 0.05 on {wins}/{len(fixed_accs)} seeds; examples/s retrieved / fixed: "
          f"{len(test) / knn_secs / statistics.mean(rates):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
