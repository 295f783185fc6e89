"""SIGKILL in the middle of a program run, then resume: how many evaluations the resume repeated of those
already in the log (goal 0), and whether the result equals an uninterrupted run's.

The program is two components and a deterministic evaluator (a word-overlap score, so runs compare
exactly); it kills its own process after `k` evaluated examples, for each `k` of --kill-at. The result
cache is off, so nothing but the log's replay can spare an evaluation.

    python bench/program_kill_resume.py --kill-at 5,23,61,97,140

Prints one JSON line per kill point.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

WORDS = "the a answer number short step text carefully question facts".split()
ROWS = [{"id": f"r{i}", "key": w} for i, w in enumerate(WORDS * 3)]
SEED = {"extract": ("Extract the key facts.", "pulls what matters out of the input"),
        "answer": ("Answer the question.", "answers from the extracted facts")}


def run(kill_at: int, calls_log: Path, run_dir: Path, resume: str | None = None) -> dict:
    """One optimize(program=...) in this process; each evaluated (components, example) goes to calls_log."""
    import promptopt

    def evaluate(components, examples):
        words = set(" ".join(components.values()).lower().split())
        with open(calls_log, "a") as f:
            for ex in examples:
                f.write(json.dumps([sorted(components.items()), ex["id"]]) + "\n")
        if kill_at and sum(1 for _ in open(calls_log)) >= kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        return [promptopt.Result(float(ex["key"] in words)) for ex in examples]
    program = promptopt.Program(SEED, evaluate, dev=ROWS[:16], test=ROWS[16:], version="bench", batch_size=2)
    report = promptopt.optimize(program=program, strategy="hill_climb", optimizer_model=None, resume=resume,
                                budget={"max_examples": 120}, run_dir=str(run_dir), cache=False)
    return report.to_json()


def logged(run_dir: Path) -> set[tuple[str, str]]:
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    comps = {e["candidate_id"]: json.dumps(sorted(map(tuple, e["components"])))
             for e in events if e["type"] == "candidate"}
    return {(comps[e["candidate_id"]], r["example_id"]) for e in events if e["type"] == "eval" for r in e["results"]}


def calls(path: Path) -> list[tuple[str, str]]:
    if not path.exists():
        return []
    return [(json.dumps([tuple(c) for c in json.loads(line)[0]]), json.loads(line)[1])
            for line in path.read_text().splitlines()]


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        print(json.dumps(run(int(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4]))))
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kill-at", default="5,23,61,97,140")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        full = run(0, root / "full.calls", root / "full")
        n_full = len(calls(root / "full.calls"))
        for k in [int(x) for x in args.kill_at.split(",")]:
            child = subprocess.run([sys.executable, __file__, "--child", str(k), str(root / f"k{k}.calls"),
                                    str(root / f"k{k}")], capture_output=True, text=True)
            run_dir = next((root / f"k{k}").iterdir())
            before = logged(run_dir)
            resumed = run(0, root / f"r{k}.calls", root / f"k{k}", resume=str(run_dir))
            again = calls(root / f"r{k}.calls")
            same = all(resumed[key] == full[key] for key in ("best_id", "best_dev", "best_test", "seed_test",
                                                              "steps", "candidates"))
            print(json.dumps({"kill_after_evaluations": k, "killed_by": -child.returncode,
                              "in_log_at_kill": len(before), "evaluated_on_resume": len(again),
                              "repeated_from_log": len(set(again) & before),
                              "evaluations_uninterrupted": n_full,
                              "evaluations_killed_plus_resumed": len(calls(root / f"k{k}.calls")) + len(again),
                              "result_equals_uninterrupted": same}))


if __name__ == "__main__":
    main()
