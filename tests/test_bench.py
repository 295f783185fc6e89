"""bench/strategies.py end to end on the embedded model: the table, JSON and plot it writes, a second
pass (a rerun of its `promptopt sweep`) that reads finished runs back and resumes a cut-off one in place,
and bad arguments refused."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.model, pytest.mark.timeout(900)]

ROOT = Path(__file__).resolve().parents[1]
STRATEGIES, SEEDS, BUDGET = ("hill_climb", "tabu"), (0, 1), 48


def bench(run_dir: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    # The demo task ships with the package: any data dir will do when none is set.
    env = {"PROMPTOPT_DATA_DIR": str(run_dir.parent), **os.environ, "PROMPTOPT_CACHE_DIR": str(run_dir.parent / "cache")}
    cmd = [sys.executable, "bench/strategies.py", "--task", "demo", "--strategies", ",".join(STRATEGIES),
           "--seeds", ",".join(map(str, SEEDS)), "--budget", str(BUDGET), "--test-limit", "10",
           "--run-dir", str(run_dir), *extra]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)


def run_dirs(out: Path) -> list[Path]:
    return sorted(p.parent for p in out.glob("*/cells/*/*/config.json"))  # <group>/cells/<cell>/<run>


@pytest.fixture(scope="module")
def first_pass(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess[str]]:
    run_dir = tmp_path_factory.mktemp("bench") / "runs"
    return run_dir, bench(run_dir)


def test_writes_table_json_and_plot(first_pass):
    run_dir, proc = first_pass
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = run_dir / "demo"
    assert len(run_dirs(out)) == len(STRATEGIES) * len(SEEDS)
    table = (out / "strategies.md").read_text()
    for strategy in STRATEGIES:
        assert f"| {strategy} | none |" in table
    data = json.loads((out / "strategies.json").read_text())
    assert [r["strategy"] for r in data["rows"]] == list(STRATEGIES)
    for strategy, summaries in data["runs"].items():
        assert len(summaries) == len(SEEDS)
        for s in summaries:
            assert 0 < s["search"]["examples"] <= BUDGET and s["search"]["optimizer_calls"] == 0
            assert 0.0 <= s["best_test"] <= 1.0 and s["best_dev"] >= s["seed_dev"]
    assert "| p per seed |" in table
    for row in data["rows"]:  # the p column is each seed's own best-vs-seed test, in seed order
        assert row["p"] == [(s.get("significance") or {}).get("p") for s in data["runs"][row["strategy"]]]
    png = (out / "strategies.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 10_000


def test_second_pass_reads_runs_back_and_resumes_a_cut_off_one(first_pass):
    run_dir, proc = first_pass
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = run_dir / "demo"
    before = run_dirs(out)
    rows = json.loads((out / "strategies.json").read_text())["rows"]
    (summary_path,) = out.glob("*/cells/demo__tabu__seed1/*/summary.json")
    finished = json.loads(summary_path.read_text())
    summary_path.unlink()  # as if the process died before its final report
    again = bench(run_dir)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "sweep: 1 of 4 cells to run" in again.stderr and "demo__tabu__seed1: started" in again.stderr
    assert f"optimize --resume {summary_path.parent} -q" in (summary_path.parent.parent / "cell.log").read_text()
    assert run_dirs(out) == before  # resumed in place, nothing run twice
    resumed = json.loads(summary_path.read_text())
    assert resumed["best_prompt"] == finished["best_prompt"] and resumed["best_test"] == finished["best_test"]
    same = lambda r: {k: v for k, v in r.items() if k != "seconds"}  # the resumed run's wall time is its own
    assert [same(r) for r in json.loads((out / "strategies.json").read_text())["rows"]] == [same(r) for r in rows]


@pytest.mark.parametrize("args, message", [
    (["--strategies", "nope,tabu"], "bench: unknown strategy nope"),
    (["--seeds", "a"], "bench: --seeds takes comma-separated integers"),
])
def test_bad_arguments_get_one_line(tmp_path, args, message):
    proc = subprocess.run([sys.executable, "bench/strategies.py", "--task", "demo", "--run-dir", str(tmp_path), *args],
                          cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode != 0
    assert proc.stderr.strip().startswith(message) and len(proc.stderr.strip().splitlines()) == 1
    assert not any(tmp_path.iterdir())
