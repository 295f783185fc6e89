"""Run `promptopt optimize` in a process of its own and read back its summary: the benches measure
whole CLI runs (start-up included) and keep a crashed run from taking the bench down with it."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def optimize_command(args: list[str]) -> list[str]:
    return [sys.executable, "-m", "promptopt.cli", "optimize", *args]


def run_optimize(args: list[str], root: Path, what: str) -> tuple[dict[str, Any], float]:
    """Run `promptopt optimize ARGS` whose run directory lands under `root`; return the newest
    summary there and the process's wall seconds. Exits the bench with one line if it failed."""
    started = time.monotonic()
    proc = subprocess.run(optimize_command(args), cwd=ROOT, env=os.environ.copy())
    wall = time.monotonic() - started
    runs = sorted(root.glob("*/summary.json"), key=lambda p: p.stat().st_mtime)
    if proc.returncode != 0 or not runs:
        raise SystemExit(f"bench: {what} failed (exit {proc.returncode}); its run log is under {root}")
    return finished(runs[-1], what), wall


def finished(summary_path: Path, what: str) -> dict[str, Any]:
    """A run's summary, refused when the run was interrupted: a partial search must not enter a table."""
    summary = json.loads(summary_path.read_text())
    if summary.get("stop_reason") == "interrupted":
        raise SystemExit(f"bench: {what} was interrupted; delete {summary_path.parent} and run the bench again")
    return summary
