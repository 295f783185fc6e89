"""Kill/resume soak: runs of many strategies on the fake backend (some with failing evaluations) are
killed at a random moment (SIGKILL, or SIGTERM as a scheduler sends), resumed, and compared with an
uninterrupted run of the same config: the same events in the same order and the same final report.

    python bench/kill_resume.py --trials 60
    python bench/kill_resume.py --trials 10 --strategies paraphrase,hill_climb

Prints one line per trial and a table per strategy; writes the records as JSON (--out).
"""
from __future__ import annotations

import argparse
import json
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from promptopt.runlog import SUMMARY, read_events

STRATEGIES = ("paraphrase", "apo", "evoprompt_ga", "evoprompt_de", "hill_climb", "simulated_annealing", "tabu",
              "opro")


def cli(runs: Path, strategy: str, fail_rate: float) -> list[str]:
    return [sys.executable, "-m", "promptopt.cli", "optimize", "--task", "demo", "--strategy", strategy,
            "--backend", "fake", "--model", "m", "--set", "backend.delay=0.05", "--set", f"backend.fail_rate={fail_rate}",
            "--set", "max_failures=100000", "--budget", "300", "--seed", "5", "--run-dir", str(runs), "--no-cache",
            "-q"]


def stream(run_dir: Path) -> list[dict[str, Any]]:
    """The replayed stream: what must match, without timing and cache counts."""
    events, _ = read_events(run_dir / "events.jsonl")
    return [{k: v for k, v in e.items() if k not in ("time", "usage")} for e in events if "seq" in e]


def report(run_dir: Path) -> tuple[Any, ...]:
    s = json.loads((run_dir / SUMMARY).read_text())
    return s["best_prompt"], s["best_dev"], s["best_test"], s["candidates"]


def reference(tmp: Path, strategy: str, fail_rate: float) -> tuple[Path, float]:
    """An uninterrupted run, and how long its logged part took (first to last event)."""
    runs = tmp / f"ref-{strategy}-{fail_rate}"
    subprocess.run(cli(runs, strategy, fail_rate), check=True, capture_output=True, timeout=600)
    (d,) = runs.iterdir()
    events, _ = read_events(d / "events.jsonl")
    return d, events[-1]["time"] - events[0]["time"]


def _logging(runs: Path) -> bool:
    """The run has logged its first evaluation: the search loop is running."""
    return any(b'"type":"eval"' in p.read_bytes() for p in runs.glob("*/events.jsonl"))


def trial(tmp: Path, i: int, strategy: str, fail_rate: float, ref: Path, ref_seconds: float,
          rng: random.Random) -> dict[str, Any]:
    runs = tmp / f"trial-{i}"
    sig = signal.SIGTERM if i % 5 == 4 else signal.SIGKILL
    proc = subprocess.Popen(cli(runs, strategy, fail_rate), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while not _logging(runs) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(rng.uniform(0, ref_seconds))  # anywhere in the search or the final report
    killed = proc.poll() is None
    proc.send_signal(sig)
    proc.wait(timeout=120)
    dirs = list(runs.iterdir()) if runs.exists() else []
    record: dict[str, Any] = {"trial": i, "strategy": strategy, "fail_rate": fail_rate, "signal": sig.name,
                              "killed_mid_run": killed and bool(dirs) and not (dirs[0] / SUMMARY).exists()}
    if not dirs:  # killed before the run dir existed: nothing to resume, a fresh start is the recovery
        record.update(resumed=False, match=True, note="killed before the run dir was made")
        return record
    d = dirs[0]
    before = len(stream(d))
    if not (d / SUMMARY).exists():
        done = subprocess.run([sys.executable, "-m", "promptopt.cli", "optimize", "--resume", str(d), "-q"],
                              capture_output=True, text=True, timeout=600)
        record.update(resume_rc=done.returncode, resume_err=done.stderr.strip().splitlines()[-1:] or None)
    record.update(resumed=True, events_before_resume=before,
                  match=(d / SUMMARY).exists() and stream(d) == stream(ref) and report(d) == report(ref))
    return record


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=60)
    p.add_argument("--strategies", default=",".join(STRATEGIES))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/bench_kill_resume.json")
    args = p.parse_args()
    strategies = args.strategies.split(",")
    rng = random.Random(args.seed)
    records = []
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        refs: dict[tuple[str, float], tuple[Path, float]] = {}
        for i in range(args.trials):
            strategy = strategies[i % len(strategies)]
            fail_rate = 0.05 if (i // len(strategies)) % 2 else 0.0  # every other round: failing evaluations
            if (strategy, fail_rate) not in refs:
                refs[strategy, fail_rate] = reference(tmp, strategy, fail_rate)
            record = trial(tmp, i, strategy, fail_rate, *refs[strategy, fail_rate], rng)
            records.append(record)
            print(json.dumps(record), flush=True)
    wall = time.monotonic() - started
    print(f"\n{'strategy':<20} {'trials':>6} {'mid-run':>7} {'match':>5}")
    for s in strategies:
        rs = [r for r in records if r["strategy"] == s]
        print(f"{s:<20} {len(rs):>6} {sum(r['killed_mid_run'] for r in rs):>7} {sum(r['match'] for r in rs):>5}")
    total = {"trials": len(records), "killed_mid_run": sum(r["killed_mid_run"] for r in records),
             "with_failing_evaluations": sum(r["fail_rate"] > 0 for r in records),
             "sigterm": sum(r["signal"] == "SIGTERM" for r in records),
             "match": sum(r["match"] for r in records), "wall_s": round(wall, 1)}
    print(json.dumps(total))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"total": total, "records": records}, indent=2))
    if total["match"] != total["trials"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
