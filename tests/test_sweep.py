"""`promptopt sweep`: cells are ordinary runs; a rerun skips finished cells and resumes cut-off ones; a
killed cell process (local) or Ray worker is resumed from its log with no cell lost; bad grids start
nothing; local processes and a real 2-node Ray cluster on loopback give the same table."""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from promptopt.cli.commands import main

FAKE = ["--backend", "fake", "--model", "m", "--optimizer-model", "fake"]
GRID = ["--tasks", "demo", "--strategies", "hill_climb,paraphrase", "--seeds", "0,1", "--budget", "60", *FAKE]


def sweep(*args: str) -> list[str]:
    return [sys.executable, "-m", "promptopt.cli", "sweep", *args]


def rows(out: Path) -> list[dict]:
    """The results table without wall times (the one column that differs between two executions)."""
    return [{k: v for k, v in r.items() if k != "wall_s"} for r in json.loads((out / "results.json").read_text())]


def cell_pid(log: Path) -> int | None:
    """The pid that runs a cell, from the first line its executor writes to cell.log."""
    found = re.findall(r"pid (\d+):", log.read_text()) if log.exists() else []
    return int(found[-1]) if found else None


def kill_first_cell_mid_run(out: Path, proc: subprocess.Popen, pattern: str) -> Path:
    """Wait until a cell's run has written events, then SIGKILL the process running it."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        for log in sorted(out.glob(f"cells/{pattern}/cell.log")):
            events = list(log.parent.glob("*/events.jsonl"))
            pid = cell_pid(log)
            if pid and events and events[0].stat().st_size > 0 and not list(log.parent.glob("*/summary.json")):
                os.kill(pid, signal.SIGKILL)
                return log
        time.sleep(0.02)  # polling another process's files: no event to wait on
    pytest.fail("no cell was caught mid-run")


def test_grid_runs_every_cell_and_a_rerun_skips_them(tmp_path, capsys):
    out = tmp_path / "sw"
    assert main(["sweep", *GRID, "--out", str(out), "--jobs", "2"]) == 0
    table = capsys.readouterr().out
    assert "hill_climb" in table and "paraphrase" in table and "seed" in table
    got = rows(out)
    assert [(r["method"], r["seeds"]) for r in got] == [("seed", 2), ("hill_climb", 2), ("paraphrase", 2)]
    for name in ("results.json", "results.csv", "results.png", "results.html"):
        assert (out / name).stat().st_size > 0
    # Each cell is an ordinary run: `show` and --resume work on it, and its summary feeds the table.
    summaries = sorted(out.glob("cells/*/*/summary.json"))
    assert len(summaries) == 4
    hill = [json.loads(p.read_text()) for p in summaries if "hill_climb" in str(p)]
    assert got[1]["test_mean"] == pytest.approx(sum(s["best_test"] for s in hill) / 2)
    mtimes = [p.stat().st_mtime_ns for p in summaries]
    assert main(["sweep", *GRID, "--out", str(out)]) == 0
    assert "0 of 4 cells to run" in capsys.readouterr().err
    assert [p.stat().st_mtime_ns for p in summaries] == mtimes


def test_a_killed_cell_is_resumed_from_its_log_and_the_table_equals_an_unbroken_sweep(tmp_path):
    slow = [*GRID, "--set", "backend.delay=0.05"]
    whole = tmp_path / "whole"
    assert subprocess.run(sweep(*slow, "--out", str(whole)), capture_output=True).returncode == 0
    broken = tmp_path / "broken"
    proc = subprocess.Popen(sweep(*slow, "--out", str(broken)), stderr=subprocess.PIPE, text=True)
    log = kill_first_cell_mid_run(broken, proc, "*")
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert "exit -9; resuming from its log" in err
    assert "--resume" in log.read_text()  # the second try replayed the first one's log
    assert rows(broken) == rows(whole)


def test_a_cut_off_sweep_resumes_on_rerun(tmp_path, capsys):
    out = tmp_path / "sw"
    assert main(["sweep", *GRID, "--out", str(out)]) == 0
    capsys.readouterr()
    cut = next(out.glob("cells/demo__paraphrase__seed1/*/summary.json"))
    cut.unlink()  # as if the sweep died before this run's final report
    assert main(["sweep", *GRID, "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "1 of 4 cells to run" in err and cut.exists()


@pytest.mark.parametrize("args, message", [
    (["--strategies", "hill_clim"], "did you mean 'hill_climb'"),
    (["--tasks", "demo,nope"], "task nope, strategy hill_climb: unknown task 'nope'"),
    (["--set", "hill_climb.bogus=1"], "bogus: unknown setting"),
    (["--seeds", "0,x"], "--seeds: expected a comma-separated list of ints"),
])
def test_bad_grid_is_one_line_and_starts_nothing(tmp_path, capsys, args, message):
    out = tmp_path / "sw"
    base = ["--tasks", "demo", "--strategies", "hill_climb", "--budget", "60", *FAKE]
    assert main(["sweep", *base, *args, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not out.exists()


def test_a_sweep_dir_holding_another_grid_or_other_files_is_refused(tmp_path, capsys):
    out = tmp_path / "sw"
    assert main(["sweep", *GRID, "--out", str(out)]) == 0
    assert main(["sweep", *GRID[:-6], *FAKE, "--budget", "40", "--out", str(out)]) == 2
    assert "holds another grid" in capsys.readouterr().err
    user = tmp_path / "mine"
    user.mkdir()
    (user / "notes.txt").write_text("keep")
    assert main(["sweep", *GRID, "--out", str(user)]) == 2
    assert "is not a sweep dir" in capsys.readouterr().err
    assert [p.name for p in user.iterdir()] == ["notes.txt"]


def test_an_unreachable_ray_address_is_refused_before_anything_starts(tmp_path, capsys):
    pytest.importorskip("ray")
    out = tmp_path / "sw"
    assert main(["sweep", *GRID, "--out", str(out), "--executor", "ray", "--address", "127.0.0.1:1"]) == 2
    assert "no Ray cluster reachable there" in capsys.readouterr().err
    assert not out.exists()


@pytest.fixture
def ray_cluster(tmp_path):
    """A real local Ray cluster on loopback: a head node and one worker node, 1 CPU each. Each node is a
    `ray start --block` process in a session of its own, stopped by its id: no other Ray on the machine is touched."""
    if os.environ.get("PROMPTOPT_REQUIRE_RAY") != "1":
        pytest.importorskip("ray")
    ray_cli = shutil.which("ray", path=str(Path(sys.executable).parent))
    assert ray_cli, "the ray command is missing from this environment"
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    common = ["--block", "--node-ip-address=127.0.0.1", "--num-cpus=1", "--disable-usage-stats"]
    temp = tempfile.mkdtemp(prefix="ray-")  # short: Ray's socket paths must fit in 107 characters
    nodes: list[subprocess.Popen] = []

    def start(args: list[str], log: Path) -> None:
        with open(log, "wb") as out:
            nodes.append(subprocess.Popen([ray_cli, "start", *args, *common], stdout=out, stderr=subprocess.STDOUT,
                                          env=env, start_new_session=True))
        deadline = time.monotonic() + 120
        while "Ray runtime started" not in log.read_text(errors="replace"):
            assert nodes[-1].poll() is None and time.monotonic() < deadline, log.read_text(errors="replace")
            time.sleep(0.2)  # polling another process's log: no event to wait on

    try:
        start(["--head", f"--port={port}", "--include-dashboard=false", f"--temp-dir={temp}"], tmp_path / "head.log")
        start([f"--address=127.0.0.1:{port}"], tmp_path / "worker.log")
        yield f"127.0.0.1:{port}"
    finally:
        for node in reversed(nodes):
            if node.poll() is None:
                os.killpg(node.pid, signal.SIGTERM)
                try:
                    node.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    os.killpg(node.pid, signal.SIGKILL)
                    node.wait()
        shutil.rmtree(temp, ignore_errors=True)


def test_ray_gives_the_local_table_and_loses_no_cell_when_a_worker_dies(tmp_path, ray_cluster):
    slow = [*GRID, "--set", "backend.delay=0.05"]
    local = tmp_path / "local"
    assert subprocess.run(sweep(*slow, "--out", str(local), "--jobs", "2"), capture_output=True).returncode == 0
    on_ray = tmp_path / "ray"
    proc = subprocess.Popen(sweep(*slow, "--out", str(on_ray), "--executor", "ray", "--address", ray_cluster),
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"})
    log = kill_first_cell_mid_run(on_ray, proc, "*")
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    assert "lost" not in err
    assert "--resume" in log.read_text()  # Ray re-ran the task on a worker, which resumed from the log
    assert len(list(on_ray.glob("cells/*/*/summary.json"))) == 4
    assert rows(on_ray) == rows(local)
