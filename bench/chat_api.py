"""Scoring against a hosted-style chat API: promptopt's openai backend next to DSPy's `Evaluate`.

Both sides score the same examples (SST-2 test reviews, the task's seed prompt) against the same
chat-only test server (`FakeOpenAIServer(chat_only=True)`: /v1/chat/completions with top_logprobs, no
/completions), which adds `--latency` seconds to every request, at the same concurrency (DSPy:
`Evaluate(num_threads=C)`; promptopt: `backend.concurrency=C`). promptopt scores the choose task `sst2`
by the route its start-up probe picks (chat_logprobs here: one request an example, one reply token);
DSPy runs `Predict` on a `review -> sentiment` signature whose output is a Literal of the same options.
Two cases, each side on a fresh server:

- latency: no limit binds. Goal: >= 80% of the ideal rate C / latency, and ahead of DSPy.
- limit: the server enforces `--rpm` (429 with Retry-After past it); promptopt is told the same
  `backend.rpm`; DSPy has no client-side limit and relies on litellm's retries (`num_retries`).
  Goal: >= 95% of the limit's rate, 0 failed examples.
- cli (`--cases cli`): a whole `promptopt optimize` run on the demo task with `backend.rpm=60` against a
  server enforcing 60 RPM, its `--dry-run` USD estimate beside the USD the run logged.

The server's reply text is the review's gold label in DSPy's ChatAdapter fields (so DSPy's accuracy of
1.0 shows every reply was parsed); promptopt's chat_logprobs route reads the server's first-token
top_logprobs instead, a fixed function of the conversation, so its accuracy is that of a coin. Tokens are
counted by the server (answers it sent) and USD priced from them with ONE table
(promptopt.backends.openai.prices) for the `--model` name the server serves. Each client runs in its
own process; DSPy's disk and memory caches are off, promptopt has no cache here.

    PROMPTOPT_DATA_DIR=../shared/data HF_HUB_OFFLINE=1 nice -n 10 .venv/bin/python bench/chat_api.py \\
        --examples 200 --concurrency 16 --latency 0.3 --rpm 600

DSPy is optional: without it (pip install dspy, in a bench venv only) its side is skipped with a note.
Results: bench/chat-api-result.json (or --out).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Mapping

ROOT = Path(__file__).resolve().parent.parent
_DSPY_FIELD = re.compile(r"\[\[ ## (\w+) ## \]\]")


def sst2_sample(n: int) -> tuple[Any, tuple[Any, ...]]:
    """The sst2 task and promptopt.task.data.test_sample(its test split, n)."""
    from promptopt.api import load_task
    from promptopt.task.data import test_sample
    task = load_task("sst2", seed=0)
    return task, tuple(test_sample(task.split("test"), n))


def load_examples(n: int) -> list[dict[str, str]]:
    task, exs = sst2_sample(n)
    return [{"id": ex.id, "review": ex.input, "label": task.options[ex.label or 0].strip()} for ex in exs]


def make_reply(examples: list[dict[str, str]]):
    """The server's answer to a conversation: the gold label of the review in its last message, as
    DSPy's ChatAdapter wants it (`[[ ## sentiment ## ]]` ... `[[ ## completed ## ]]`) when the system
    message asks for that format, else the bare word."""
    by_review = {ex["review"]: ex["label"] for ex in examples}

    def reply(messages: list[Mapping[str, Any]]) -> str:
        last = str(messages[-1].get("content", "")) if messages else ""
        label = next((lab for review, lab in by_review.items() if review in last), "unknown")
        system = " ".join(str(m.get("content", "")) for m in messages if m.get("role") == "system")
        fields = [f for f in _DSPY_FIELD.findall(system) if f not in ("review", "completed")]
        if fields:
            return f"[[ ## {fields[-1]} ## ]]\n{label}\n\n[[ ## completed ## ]]"
        return label
    return reply


# --- the two clients, each run in a process of its own --------------------------------------------

def client_promptopt(args: argparse.Namespace, examples: list[dict[str, str]]) -> dict[str, Any]:
    from promptopt.backends.openai.backend import OpenAIBackend
    from promptopt.scoring.scorer import Job, score_jobs

    task, exs = sst2_sample(len(examples))
    assert [ex.id for ex in exs] == [e["id"] for e in examples]
    backend = OpenAIBackend(args.model, base_url=args.url, concurrency=args.concurrency, rpm=args.client_rpm,
                            api_key_env="PROMPTOPT_BENCH_KEY", max_retries=6)
    backend.check()  # the start-up probe, not timed
    time.sleep(1.0)  # the server's allowance holds one second's worth: both sides start on a full one
    started, cpu = time.monotonic(), time.process_time()
    ev, = score_jobs(task, backend, [Job("seed", task.seed_prompts[0], "test", exs)])
    seconds, cpu = time.monotonic() - started, time.process_time() - cpu
    stats = backend.stats
    backend.close()
    return {"seconds": seconds, "cpu_seconds": cpu, "examples": len(ev.results), "failed": sum(r.error is not None for r in ev.results),
            "accuracy": sum(r.score for r in ev.results) / len(ev.results),
            "client": {"route": backend.choose_route, "retries": stats["retries"], "rate_limit_waits": stats["rate_limit_waits"],
                       "usd_logged": stats["usage"]["usd"]}}


def client_dspy(args: argparse.Namespace, examples: list[dict[str, str]]) -> dict[str, Any]:
    from typing import Literal

    import dspy

    task, _ = sst2_sample(1)
    options = tuple(o.strip() for o in task.options)
    lm = dspy.LM(f"openai/{args.model}", api_base=args.url, api_key="sk-bench", cache=False, temperature=0.0,
                 max_tokens=32, num_retries=args.dspy_retries)
    dspy.configure(lm=lm)

    # Built from a dict: this module's postponed annotations would hand DSPy the Literal as a string.
    signature = dspy.Signature({"review": (str, dspy.InputField()),
                                "sentiment": (Literal[options], dspy.OutputField())}, task.seed_prompts[0])
    program = dspy.Predict(signature)
    devset = [dspy.Example(review=e["review"], sentiment=e["label"]).with_inputs("review") for e in examples]
    evaluate = dspy.Evaluate(devset=devset, metric=lambda ex, pred, trace=None: ex.sentiment == pred.sentiment,
                             num_threads=args.concurrency, display_progress=False, max_errors=len(devset) + 1,
                             provide_traceback=False)
    started, cpu = time.monotonic(), time.process_time()
    result = evaluate(program)
    seconds, cpu = time.monotonic() - started, time.process_time() - cpu
    rows = result.results
    failed = sum(1 for _, pred, _ in rows if getattr(pred, "sentiment", None) is None)
    return {"seconds": seconds, "cpu_seconds": cpu, "examples": len(rows), "failed": failed,
            "accuracy": sum(float(score) for _, _, score in rows) / len(rows),
            "client": {"lm_calls_logged": len(lm.history), "num_retries": args.dspy_retries}}


# --- the driver ----------------------------------------------------------------------------------

def run_side(side: str, args: argparse.Namespace, url: str, client_rpm: float | None, data: Path) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--client", side, "--url", url, "--data", str(data), "--model", args.model,
           "--concurrency", str(args.concurrency), "--dspy-retries", str(args.dspy_retries)]
    if client_rpm:
        cmd += ["--client-rpm", str(client_rpm)]
    env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True", "DSPY_CACHEDIR": str(data.parent / "dspy-cache")}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    if proc.returncode != 0:
        raise SystemExit(f"bench: the {side} client failed (exit {proc.returncode}): {proc.stderr.strip()[-800:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def load() -> str:
    return os.getloadavg().__repr__()


def bench_case(case: str, side: str, args: argparse.Namespace, examples: list[dict[str, str]],
               data: Path) -> dict[str, Any]:
    from promptopt.backends.openai.prices import price_for, price_table, usd
    from promptopt.testing.openai_server import FakeOpenAIServer

    rpm = args.rpm if case == "limit" else None
    with FakeOpenAIServer(args.model, delay=args.latency, chat_only=True, rpm=rpm, reply=make_reply(examples),
                          max_lifetime=900) as srv:
        before = load()
        res = run_side(side, args, srv.url, rpm if side == "promptopt" else None, data)
        attempts = srv.requests["/v1/chat/completions"]
        limited = sum(srv.rate_limited.values())
        tokens = dict(srv.usage)
    ideal = args.concurrency / args.latency
    rate = res["examples"] / res["seconds"]
    target = ideal if case == "latency" else args.rpm / 60
    return {"case": case, "side": side, "examples": res["examples"], "failed": res["failed"],
            "accuracy": round(res["accuracy"], 4), "seconds": round(res["seconds"], 2),
            "examples_per_s": round(rate, 2),
            "answered_per_s": round((res["examples"] - res["failed"]) / res["seconds"], 2),  # failed ones left out
            "client_cpu_s": round(res["cpu_seconds"], 2), "goal_rate": round(target, 2),
            "share_of_goal_rate": round(rate / target, 3),
            # server-side, whole client process (promptopt's 2-3 probe requests included)
            "requests": attempts, "http_429": limited, "prompt_tokens": tokens.get("prompt_tokens", 0),
            "completion_tokens": tokens.get("completion_tokens", 0),
            "usd": round(usd(tokens.get("prompt_tokens", 0), tokens.get("completion_tokens", 0),
                             price_for(args.model, price_table())), 6),
            "client": res["client"], "loadavg_before": before, "loadavg_after": load()}


def bench_cli(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    """`promptopt optimize` on the demo task with backend.rpm=60 against a server enforcing 60 RPM."""
    from promptopt.testing.openai_server import FakeOpenAIServer
    with FakeOpenAIServer(args.model, rpm=60, max_lifetime=1800) as srv:
        common = ["optimize", "--task", "demo", "--strategy", "hill_climb", "--optimizer-model", "none",
                  "--backend", "openai", "--model", args.model, "--set", f"backend.base_url={srv.url}",
                  "--set", "backend.rpm=60", "--set", "backend.api_key_env=PROMPTOPT_BENCH_KEY",
                  "--set", "final_top_k=1", "--set", "hill_climb.eval_examples=6", "--budget", str(args.cli_budget),
                  "--test-limit", "4",
                  "--no-cache", "--run-dir", str(tmp / "runs"), "-q"]
        dry = subprocess.run([sys.executable, "-m", "promptopt.cli", *common, "--dry-run"], capture_output=True,
                             text=True, cwd=ROOT)
        if dry.returncode != 0:
            raise SystemExit(f"bench: the dry run failed: {dry.stderr.strip()}")
        before = load()
        started = time.monotonic()
        proc = subprocess.run([sys.executable, "-m", "promptopt.cli", *common, "--json"], capture_output=True,
                              text=True, cwd=ROOT)
        wall = time.monotonic() - started
        if proc.returncode != 0:
            raise SystemExit(f"bench: the rpm=60 run failed: {proc.stderr.strip()[-800:]}")
        attempts = sum(srv.requests[p] for p in ("/v1/chat/completions", "/v1/completions"))
        served = srv.served_at
    run_dir = next((tmp / "runs").glob("*/summary.json")).parent
    summary = json.loads((run_dir / "summary.json").read_text())
    stats = summary.get("backend_stats", {})
    from promptopt.runlog import load_run
    logged = load_run(run_dir).target_usage.to_json()  # every target call the run logged, search and final
    usd_line = next(line for line in dry.stdout.splitlines() if line.startswith("usd"))
    span = served[-1] - served[0] if len(served) > 1 else 0.0
    return {"case": "cli", "command": "promptopt " + " ".join(common), "dry_run_usd_line": usd_line,
            "usage_logged": logged, "backend_stats": stats,
            "wall_seconds": round(wall, 1), "requests": attempts, "served": len(served),
            "http_429": sum(srv.rate_limited.values()),
            # 60 RPM with one request's allowance at once: n requests need n - 1 seconds at least
            "served_span_s": round(span, 1), "limit_span_s": len(served) - 1,
            "loadavg_before": before, "loadavg_after": load()}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--examples", type=int, default=200)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--latency", type=float, default=0.3, help="seconds the server adds to every request")
    p.add_argument("--rpm", type=float, default=600, help="the server's limit in the limit case")
    p.add_argument("--model", default="gpt-4o-mini", help="the model name served (and priced)")
    p.add_argument("--cases", default="latency,limit", help="latency, limit, cli (comma-separated)")
    p.add_argument("--sides", default="promptopt,dspy")
    p.add_argument("--dspy-retries", type=int, default=6, help="DSPy LM num_retries (promptopt: max_retries=6)")
    p.add_argument("--cli-budget", type=int, default=24, help="search examples of the cli case")
    p.add_argument("--out", default=str(ROOT / "bench" / "chat-api-result.json"))
    # internal: one client process
    p.add_argument("--client", choices=["promptopt", "dspy"], help=argparse.SUPPRESS)
    p.add_argument("--url", help=argparse.SUPPRESS)
    p.add_argument("--data", help=argparse.SUPPRESS)
    p.add_argument("--client-rpm", type=float, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.client:
        examples = json.loads(Path(args.data).read_text())
        out = (client_promptopt if args.client == "promptopt" else client_dspy)(args, examples)
        print(json.dumps(out))
        return
    sides = args.sides.split(",")
    if "dspy" in sides:
        try:
            import dspy  # noqa: F401
        except ImportError:
            print("bench: DSPy is not installed (pip install dspy, in a bench venv): its side is skipped",
                  file=sys.stderr)
            sides.remove("dspy")
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="promptopt-chat-api-") as tmp:
        data = Path(tmp) / "examples.json"
        examples = load_examples(args.examples)
        data.write_text(json.dumps(examples))
        for case in args.cases.split(","):
            if case == "cli":
                results.append(bench_cli(args, Path(tmp)))
                print(json.dumps(results[-1]), flush=True)
                continue
            for side in sides:
                results.append(bench_case(case, side, args, examples, data))
                print(json.dumps(results[-1]), flush=True)
    Path(args.out).write_text(json.dumps({"args": {k: v for k, v in vars(args).items() if v is not None and k != "out"},
                                          "results": results}, indent=1) + "\n")


if __name__ == "__main__":
    main()
