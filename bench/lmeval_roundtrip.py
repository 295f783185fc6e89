"""An lm-eval task optimized by promptopt and the exported config run by lm-eval itself, before and after.

    PROMPTOPT_DATA_DIR=../shared/data python bench/lmeval_roundtrip.py --strategy fewshot --budget 320 \
        --limit 200 --threads 1

1. Writes an lm-eval task config (`sst2_rlprompt.yaml`) over the RLPrompt 16-shot SST-2 files (train, dev,
   test TSVs from the data dir; lm-eval's `csv` loader with a tab delimiter), with the task's seed
   instruction as its `description`.
2. `lm_eval.simple_evaluate` scores that config with the embedded model (lm-eval's HFLM over the model
   object promptopt loads): the "before" accuracy, lm-eval's own number.
3. `promptopt optimize --task lmeval:<yaml>` searches (any strategy; `fewshot` searches demos), then
   `promptopt lmeval export` writes `<task>_promptopt.yaml`.
4. lm-eval scores the exported config, unchanged, on the same test docs: the "after" accuracy.

lm-eval's `--limit N` takes the first N test docs; both configs are scored on those. Prints one JSON
record (and appends it to --out).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from promptopt.task.data import resolve_data_dir

SEED = "Is this movie review positive or negative?"
CONFIG = """task: {name}
dataset_path: csv
dataset_kwargs:
  delimiter: "\\t"
  data_files:
    train: {root}/16-100/train.tsv
    validation: {root}/16-100/dev.tsv
    test: {root}/test.tsv
training_split: train
validation_split: validation
test_split: test
output_type: multiple_choice
description: "{seed}\\n\\n"
doc_to_text: "Review: {{{{sentence}}}}\\nAnswer:"
doc_to_target: label
doc_to_choice: ["negative", "positive"]
metric_list:
  - metric: acc
"""


def lm_eval_accuracy(task_name: str, include: Path, limit: int, threads: int | None) -> tuple[float, float]:
    """lm-eval's acc for one task config, with the embedded model, and the seconds it took."""
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager
    from promptopt.backends.hf import HFBackend
    if threads:
        import torch
        torch.set_num_threads(threads)
    backend = HFBackend("embedded", device="cpu", dtype="float32")
    lm = HFLM(pretrained=backend.model, tokenizer=backend.tokenizer, backend="causal", batch_size=16,
              device="cpu", max_length=backend.max_length)
    started = time.monotonic()
    out = lm_eval.simple_evaluate(model=lm, tasks=[task_name], limit=limit, num_fewshot=0,
                                  task_manager=TaskManager(include_path=str(include), include_defaults=False))
    return out["results"][task_name]["acc,none"], time.monotonic() - started


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--strategy", default="fewshot")
    p.add_argument("--budget", type=int, default=320)
    p.add_argument("--limit", type=int, default=200, help="test docs lm-eval scores (its first N)")
    p.add_argument("--threads", type=int)
    p.add_argument("--work", default="runs/bench-lmeval")
    p.add_argument("--out", default="runs/bench-lmeval/results.jsonl")
    args = p.parse_args(argv)
    data = resolve_data_dir()
    if data is None:
        print("bench/lmeval_roundtrip.py: set PROMPTOPT_DATA_DIR to the data dir (docs/data.md)", file=sys.stderr)
        return 2
    work = Path(args.work).resolve()
    (work / "task").mkdir(parents=True, exist_ok=True)
    yaml_path = work / "task" / "sst2_rlprompt.yaml"
    yaml_path.write_text(CONFIG.format(name="sst2_rlprompt", root=(data / "rlprompt_fsc/16-shot/sst-2").resolve(),
                                       seed=SEED), encoding="utf-8")
    before, before_s = lm_eval_accuracy("sst2_rlprompt", yaml_path.parent, args.limit, args.threads)
    runs = work / "runs"
    cmd = [sys.executable, "-m", "promptopt.cli", "optimize", "--task", f"lmeval:{yaml_path}", "--strategy",
           args.strategy, "--budget", str(args.budget), "--run-dir", str(runs), "--test-limit", str(args.limit),
           "--json", "-q"]
    started = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        print(proc.stderr, file=sys.stderr)
        return proc.returncode
    summary = json.loads(proc.stdout)
    search_s = time.monotonic() - started
    exported = work / "exported"
    subprocess.run([sys.executable, "-m", "promptopt.cli", "lmeval", "export", summary["run_dir"], "--out",
                    str(exported)], check=True, capture_output=True)
    after, after_s = lm_eval_accuracy("sst2_rlprompt_promptopt", exported, args.limit, args.threads)
    rec: dict[str, Any] = {
        "strategy": args.strategy, "budget": args.budget, "lm_eval_test_docs": args.limit,
        "lm_eval_before": before, "lm_eval_after": after,
        "promptopt_seed_test": summary["seed_test"], "promptopt_best_test": summary["best_test"],
        "promptopt_test_n": args.limit, "best_prompt": summary["best_prompt"], "best_demos": summary["best_demos"],
        "run_dir": summary["run_dir"], "exported": str(exported / "sst2_rlprompt_promptopt.yaml"),
        "seconds": {"lm_eval_before": round(before_s, 1), "promptopt": round(search_s, 1),
                    "lm_eval_after": round(after_s, 1)}}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "a", encoding="utf-8") as f:
        f.write(json.dumps(rec) + "\n")
    print(json.dumps(rec, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
