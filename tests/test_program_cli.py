"""A program run from the CLI: `promptopt optimize --program FILE.py:NAME`, recorded in config.json, and
`--resume` importing it again after a SIGKILL (fast tier: a deterministic evaluator, no model)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from promptopt.cli import main

PROGRAM = textwrap.dedent("""
    import json, os, signal
    import promptopt

    WORDS = "the a answer number short step text carefully question facts".split()
    ROWS = [{"id": f"r{i}", "key": w} for i, w in enumerate(WORDS * 3)]

    def evaluate(components, examples):
        # every call is logged, and the process kills itself once KILL_AT examples were evaluated
        log = os.environ["CALLS_LOG"]
        with open(log, "a") as f:
            for ex in examples:
                f.write(json.dumps([sorted(components.items()), ex["id"]]) + "\\n")
        if int(os.environ.get("KILL_AT", "0")) and sum(1 for _ in open(log)) >= int(os.environ["KILL_AT"]):
            os.kill(os.getpid(), signal.SIGKILL)
        words = set(" ".join(components.values()).lower().split())
        return [promptopt.Result(score=float(ex["key"] in words), trace={"words": len(words)}) for ex in examples]

    program = promptopt.Program({"extract": ("Extract the key facts.", "pulls out what matters"),
                                 "answer": ("Answer the question.", "answers from the facts")},
                                evaluate, dev=ROWS[:16], test=ROWS[16:], batch_size=2, name="words")
    not_a_program = 3
""")


def _cli(args: list[str], calls: Path, kill_at: int = 0) -> subprocess.CompletedProcess:
    env = {**os.environ, "CALLS_LOG": str(calls), "KILL_AT": str(kill_at)}
    return subprocess.run([sys.executable, "-m", "promptopt.cli", *args], capture_output=True, text=True, env=env,
                          timeout=120)


def _new(tmp_path: Path, runs: str) -> list[str]:
    return ["optimize", "--program", f"{tmp_path / 'prog.py'}:program", "--strategy", "hill_climb",
            "--optimizer-model", "none", "--budget", "120", "--run-dir", str(tmp_path / runs), "--no-cache", "-q",
            "--json"]


def _calls(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def test_cli_program_run_sigkilled_then_resumed_repeats_no_call_and_matches(tmp_path):
    (tmp_path / "prog.py").write_text(PROGRAM)
    full = _cli(_new(tmp_path, "a"), tmp_path / "full.log")
    assert full.returncode == 0, full.stderr
    expected = json.loads(full.stdout)
    (run_a,) = (tmp_path / "a").iterdir()
    config = json.loads((run_a / "config.json").read_text())["config"]
    assert config["program"] == f"{tmp_path / 'prog.py'}:program"  # the absolute path: --resume imports it
    assert config["task"] == "python:words" and config["optimizer"] is None

    killed = _cli(_new(tmp_path, "b"), tmp_path / "killed.log", kill_at=61)
    assert killed.returncode == -9
    (run_b,) = (tmp_path / "b").iterdir()
    events = [json.loads(line) for line in (run_b / "events.jsonl").read_text().splitlines()]
    comps = {e["candidate_id"]: sorted(map(tuple, e["components"])) for e in events if e["type"] == "candidate"}
    logged = {json.dumps([[list(c) for c in comps[e["candidate_id"]]], r["example_id"]])
              for e in events if e["type"] == "eval" for r in e["results"]}
    assert logged  # killed mid-run, after some results were logged

    again = _cli(["optimize", "--resume", str(run_b), "-q", "--json"], tmp_path / "again.log")
    assert again.returncode == 0, again.stderr
    repeated = set(_calls(tmp_path / "again.log")) & logged
    assert not repeated  # goal: 0 evaluator calls repeated for a logged result
    got = json.loads(again.stdout)
    for k in ("best_id", "best_dev", "best_test", "seed_dev", "seed_test", "steps", "candidates", "best_components"):
        assert got[k] == expected[k], k


@pytest.mark.parametrize("spec, says", [
    ("nope.py:program", "does not exist"),
    ("{dir}/prog.py:missing", "names nothing as 'missing'"),
    ("{dir}/prog.py:not_a_program", "names a int as 'not_a_program', not a promptopt.Program"),
    ("{dir}/prog.py", "expected path/to/file.py:NAME or module:NAME"),
    ("no_such_module_xyz:program", "cannot import|No module named"),
])
def test_a_bad_program_value_is_one_line_and_exit_2(tmp_path, capsys, spec, says):
    (tmp_path / "prog.py").write_text(PROGRAM)
    code = main(["optimize", "--program", spec.format(dir=tmp_path), "--run-dir", str(tmp_path / "runs"), "-q"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("promptopt: error: --program") and err.count("\n") == 1, err
    import re
    assert re.search(says, err), err
    assert not (tmp_path / "runs").exists()


def test_program_with_a_task_is_refused_and_a_dry_run_plans_it(tmp_path, capsys):
    (tmp_path / "prog.py").write_text(PROGRAM)
    spec = f"{tmp_path / 'prog.py'}:program"
    assert main(["optimize", "--program", spec, "--task", "demo", "-q"]) == 2
    assert "drop task" in capsys.readouterr().err
    assert main(["optimize", "--program", spec, "--strategy", "hill_climb", "--optimizer-model", "none",
                 "--run-dir", str(tmp_path / "runs"), "--dry-run"]) == 0
    assert "words (generate); train 0, dev 16, test 14" in capsys.readouterr().out
    assert not (tmp_path / "runs").exists()
