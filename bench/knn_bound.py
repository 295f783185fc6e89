"""Positions per example an exact scorer needs at least: a fixed k-demo set vs k demos retrieved per input.

    PROMPTOPT_DATA_DIR=../shared/data python bench/knn_bound.py --tasks agnews,sst2,trec --n 24 --k 4

No model runs: the embedded model's tokenizer reads the log-likelihood requests a choose task's scoring
sends (`task.render` of each input with each option), and the bound is the number of distinct token prefixes
of the model inputs (each request's tokens but its last), the positions a causal model must run even when it
reuses every shared prefix's KV. Retrieval is BM25 (the `knn` strategy's first trial), nearest last.
"""
from __future__ import annotations

import argparse
import random
import sys

from transformers import AutoTokenizer

from promptopt.api import load_task
from promptopt.backends._local import split_pairs, start_token
from promptopt.backends.models import embedded_hf_dir
from promptopt.task.demos import sample_demo_ids
from promptopt.task.retrieval import RetrievalPolicy, Retriever


def distinct_prefixes(rows: list[tuple[int, ...]]) -> int:
    """Nodes of the token trie of `rows`: sorted, each row adds the positions past its common prefix with the last."""
    total, prev = 0, ()
    for row in sorted(set(rows)):
        shared = next((i for i, (a, b) in enumerate(zip(row, prev)) if a != b), min(len(row), len(prev)))
        total += len(row) - shared
        prev = row
    return total


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tasks", default="agnews,sst2,trec")
    p.add_argument("--n", type=int, default=24, help="dev inputs")
    p.add_argument("--k", type=int, default=4)
    args = p.parse_args(argv)
    tok = AutoTokenizer.from_pretrained(str(embedded_hf_dir()))
    start = start_token(tok, {tok.eos_token_id})
    print("| task | inputs | fixed: distinct prefixes / input | retrieved: distinct prefixes / input | retrieved: "
          "positions / input without reuse | fixed / retrieved bounds (best examples/s ratio by positions) |\n|---|---:|---:|---:|---:|---:|")
    for name in args.tasks.split(","):
        task = load_task(name)
        train, inputs = task.split("train"), task.split("dev")[:args.n]
        by_id = {ex.id: ex for ex in train}
        seed = task.seed_prompts[0]

        def rows(prompts: list[str]) -> list[tuple[int, ...]]:
            pairs = [(task.render(p, ex), opt) for p, ex in zip(prompts, inputs) for opt in task.options]
            return [tuple(t[:-1]) for t, _ in split_pairs(tok, pairs, start)]

        fixed = task.prompt_text(seed, [by_id[d] for d in sample_demo_ids(train, args.k, random.Random("throughput"))],
                                 (), "")
        sets = Retriever(train).retrieve(RetrievalPolicy(k=args.k), inputs)
        retrieved = rows([task.prompt_text(seed, [by_id[d] for d in s], (), "") for s in sets])
        f, r = distinct_prefixes(rows([fixed] * len(inputs))), distinct_prefixes(retrieved)
        n = len(inputs)
        print(f"| {name} | {n} | {f / n:.0f} | {r / n:.0f} | {sum(map(len, set(retrieved))) / n:.0f} | {f / r:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
