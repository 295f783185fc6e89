"""How much do injected faults cost the openai backend? Runs the same requests twice through
the fault proxy (no faults, then faults at a given rate) and reports what was injected, what
the client retried, what still failed, and the wall-time overhead.

    python bench/faults.py --n 300 --rate 0.2
    python bench/faults.py --base-url http://127.0.0.1:8000/v1 --model smol --n 200 --rate 0.1

Without --base-url it runs against the built-in test server (promptopt.testing.openai_server).
All traffic stays on 127.0.0.1 unless --base-url points elsewhere.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from promptopt.backends.base import GenRequest, LLRequest
from promptopt.backends.openai.backend import OpenAIBackend
from promptopt.testing.faultproxy import FATAL, FAULTS, FaultProxy
from promptopt.testing.openai_server import FakeOpenAIServer


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=300, help="requests per pass")
    p.add_argument("--rate", type=float, default=0.2, help="share of requests that get a fault")
    p.add_argument("--kinds", default=",".join(k for k in FAULTS if k not in FATAL),  # those end a run
                   help=f"comma-separated fault kinds, sharing the rate equally (from: {', '.join(FAULTS)})")
    p.add_argument("--base-url", help="a real OpenAI-compatible server instead of the test server")
    p.add_argument("--model", default="test-model")
    p.add_argument("--api-key-env", default="OPENAI_API_KEY")
    p.add_argument("--loglikelihood", action="store_true", help="score echo log-likelihoods instead of chatting")
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--timeout", type=float, default=1.0, help="client timeout; a 'hang' costs this much")
    p.add_argument("--max-retries", type=int, default=6)
    p.add_argument("--backoff", type=float, default=0.1, help="base of the jittered exponential backoff")
    p.add_argument("--retry-after", type=float, default=0.2, help="what injected 429s ask the client to wait")
    p.add_argument("--server-delay", type=float, default=0.01, help="test server's time per request")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/bench_faults.json")
    return p.parse_args(argv)


def run_pass(upstream: str, args: argparse.Namespace, rates: dict[str, float]) -> dict[str, Any]:
    """One pass of N requests through a fresh proxy and backend; returns what happened."""
    with FaultProxy(upstream, rates, seed=args.seed, retry_after=args.retry_after,
                    hang_seconds=args.timeout + 1, slow_seconds=args.timeout / 4) as proxy, \
            OpenAIBackend(args.model, base_url=proxy.url, api_key_env=args.api_key_env,
                          concurrency=args.concurrency, timeout=args.timeout,
                          max_retries=args.max_retries, backoff=args.backoff, max_wait=10) as backend:
        saved = proxy.rates
        proxy.rates = {}  # the start-up probe is not what is measured
        backend.check()
        probe_requests = backend.stats["requests"]
        proxy.rates = saved
        started = time.monotonic()
        if args.loglikelihood:
            results = backend.loglikelihood([LLRequest(f"Review {i}: fine. Sentiment:", " positive")
                                             for i in range(args.n)])
        else:
            results = backend.generate([GenRequest(f"request {i}", max_tokens=16) for i in range(args.n)])
        wall = time.monotonic() - started
        client = backend.stats
        client["requests"] -= probe_requests
        return {"wall_s": round(wall, 3), "failed": sum(r.error is not None for r in results),
                "injected": dict(sorted(proxy.injected.items())), "client": client}


def table(baseline: dict[str, Any], faulty: dict[str, Any], rate: float) -> str:
    lines = [f"{'fault injected':<22}{'count':>8}", "-" * 30]
    lines += [f"{kind:<22}{n:>8}" for kind, n in faulty["injected"].items()] or ["(none)"]
    lines += ["", f"{'client retries by kind':<22}{'count':>8}", "-" * 30]
    lines += [f"{kind:<22}{n:>8}" for kind, n in faulty["client"]["retries_by_kind"].items()] or ["(none)"]
    overhead = faulty["wall_s"] / baseline["wall_s"] - 1 if baseline["wall_s"] else float("nan")
    lines += ["", f"{'':<22}{'no faults':>12}{f'faults {rate:.0%}':>14}", "-" * 48]
    for label, key in (("requests sent", "requests"), ("retries", "retries"), ("failed for good", "failures")):
        lines.append(f"{label:<22}{baseline['client'][key]:>12}{faulty['client'][key]:>14}")
    lines.append(f"{'wall time (s)':<22}{baseline['wall_s']:>12.2f}{faulty['wall_s']:>14.2f}")
    lines.append(f"{'overhead':<22}{'':>12}{overhead:>14.0%}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    rates = {k: args.rate / len(kinds) for k in kinds} if kinds else {}
    with ExitStack() as stack:
        upstream = args.base_url or stack.enter_context(
            FakeOpenAIServer(args.model, delay=args.server_delay, max_lifetime=3600)).url
        baseline = run_pass(upstream, args, {})
        faulty = run_pass(upstream, args, rates)
    print(table(baseline, faulty, args.rate))
    report = {"config": {k: v for k, v in vars(args).items() if k != "out"}, "rates": rates,
              "baseline": baseline, "faulty": faulty,
              "overhead": round(faulty["wall_s"] / baseline["wall_s"] - 1, 4) if baseline["wall_s"] else None}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
