"""hf generation (the prompt's shared prefix run once per chunk) vs lm-eval's HFLM.generate_until, same model object.

    PROMPTOPT_DATA_DIR=../shared/data python bench/generation.py --n 50 --max-tokens 128 --demos 4 --threads 1

The first n GSM8K test problems after the task's seed instruction (and --demos worked train problems,
the prefix a `bootstrap` or `fewshot` candidate has), greedy, stopping at the task's stop
string or after --max-tokens new tokens (128 here: GSM8K's 256 halved for a 2-core CPU). Both sides get
the same plain-text prompts (no chat template) and the same model object, loaded once in fp32. lm-eval
runs with its defaults for `until`/`max_gen_toks`/`do_sample=False` and our batch size. Reports
examples/s for each, the ratio and how many outputs are identical (after lm-eval's own stop-string
truncation, which ours also applies).
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import time

from promptopt.api import load_task
from promptopt.backends.base import GenRequest
from promptopt.backends.hf import HFBackend
from promptopt.task.demos import sample_demo_ids


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=50)
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--demos", type=int, default=0, help="worked train problems after the instruction")
    p.add_argument("--threads", type=int)
    args = p.parse_args(argv)
    if args.threads:
        import torch
        torch.set_num_threads(args.threads)
    try:
        from lm_eval.api.instance import Instance
        from lm_eval.models.huggingface import HFLM
    except ImportError as e:
        print(f"bench/generation.py: lm_eval is not importable ({e}); pip install 'promptopt[lmeval]'", file=sys.stderr)
        return 2
    task = load_task("gsm8k")
    problems = list(task.split("test"))[: args.n]
    by_id = {ex.id: ex for ex in task.split("train")}
    ids = sample_demo_ids(task.split("train"), args.demos, random.Random("bench-generation")) if args.demos else []
    prefix = task.prompt_text(task.seed_prompts[0], [by_id[i] for i in ids])
    prompts = [task.render(prefix, ex) for ex in problems]
    stop = list(task.stop)
    backend = HFBackend("embedded", device="cpu", dtype="float32")
    lm = HFLM(pretrained=backend.model, tokenizer=backend.tokenizer, backend="causal", batch_size=backend.batch_size,
              device="cpu", max_length=backend.max_length)

    started = time.monotonic()
    ours = backend.generate([GenRequest(prompt=pr, max_tokens=args.max_tokens, stop=tuple(stop)) for pr in prompts])
    ours_s = time.monotonic() - started
    instances = [Instance(request_type="generate_until", doc={}, idx=i,
                          arguments=(pr, {"until": stop, "max_gen_toks": args.max_tokens, "do_sample": False}))
                 for i, pr in enumerate(prompts)]
    started = time.monotonic()
    theirs = lm.generate_until(instances, disable_tqdm=True)
    theirs_s = time.monotonic() - started
    same = sum(a.text == b for a, b in zip(ours, theirs))
    differ = [i for i, (a, b) in enumerate(zip(ours, theirs)) if a.text != b]
    rec = {"problems": len(prompts), "max_tokens": args.max_tokens, "demos": args.demos,
           "prefix_tokens": len(backend.tokenizer(prefix)["input_ids"]), "batch_size": backend.batch_size,
           "ours_seconds": round(ours_s, 1), "lm_eval_seconds": round(theirs_s, 1),
           "ours_examples_per_s": round(len(prompts) / ours_s, 3),
           "lm_eval_examples_per_s": round(len(prompts) / theirs_s, 3),
           "speedup": round(theirs_s / ours_s, 2), "identical": f"{same}/{len(prompts)}",
           "new_tokens": sum(r.usage.completion_tokens for r in ours),
           "first_difference": None if not differ else {"problem": differ[0], "ours": ours[differ[0]].text[:200],
                                                        "lm_eval": theirs[differ[0]][:200]}}
    print(json.dumps(rec, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
