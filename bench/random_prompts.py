"""A control for instruction search: the task's seed prompt against an empty prompt and random token strings.

    PROMPTOPT_DATA_DIR=../shared/data python bench/random_prompts.py --task agnews --strings 5 --tokens 10

Each random string is `--tokens` ids drawn (seeded, from id 1000 up, past the special and byte tokens) from
the embedded model's vocabulary and decoded. Every prompt is scored by `promptopt.api.evaluate` on the test
examples a run's `--test-limit LIMIT` scores, so the figures line up with a sweep's test column. If random
strings score like a method's found prompt, that method's gain is the seed prompt's removal, not its search.
"""
from __future__ import annotations

import argparse
import random
import sys

from transformers import AutoTokenizer

from promptopt.api import evaluate, load_task
from promptopt.backends.models import embedded_hf_dir


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--task", default="agnews")
    p.add_argument("--strings", type=int, default=5, help="random strings")
    p.add_argument("--tokens", type=int, default=10, help="tokens per random string")
    p.add_argument("--limit", type=int, default=200, help="test examples (the --test-limit sample)")
    args = p.parse_args(argv)
    tok = AutoTokenizer.from_pretrained(embedded_hf_dir())
    prompts = [("seed prompt", load_task(args.task).seed_prompts[0]), ("empty", "")]
    for s in range(args.strings):
        rng = random.Random(f"control-{s}")
        prompts.append((f"random {s}", tok.decode([rng.randrange(1000, tok.vocab_size) for _ in range(args.tokens)])))
    print("| prompt | text | test |\n|---|---|---:|")
    for name, text in prompts:
        ev = evaluate(text, args.task, split="test", limit=args.limit)
        print(f"| {name} | {text!r} | {ev.score:.3f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
