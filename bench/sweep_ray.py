"""`promptopt sweep` on Ray, one worker against two: the same small grid (the embedded model, fewshot on
SST-2 over 8 seeds by default) on a local Ray cluster whose head takes no cells, first with one worker node
of 1 CPU, then with two; prints each wall time, the ratio, and whether the two results tables are the same.

    RAY_USAGE_STATS_ENABLED=0 PROMPTOPT_DATA_DIR=../shared/data HF_HUB_OFFLINE=1 \\
        .venv/bin/python bench/sweep_ray.py --seeds 0,1,2,3,4,5,6,7 --budget 64 --test-limit 100

Each phase starts its own cluster on loopback (`ray start --head --num-cpus=0`, then one `ray start` per
worker node, each `--num-cpus=1`, all with `--block` so the script stops exactly the processes it started,
by their ids) and tears it down after. Every cell asks for 1 CPU and runs torch on one thread
(OMP_NUM_THREADS=1, which Ray also sets for a 1-CPU task). Each phase writes a fresh sweep dir and a fresh
response cache, so neither phase reads the other's scores; the embedded model's converted weights (made once
per machine, in ~/.cache/promptopt/models) are linked into it, as a user's sweep finds them. The wall time is the whole `promptopt sweep`
process (start-up, checks and the results files included), so the ratio is a little under the cells' own.
Output: runs/bench-sweep-ray/<time>/{one,two}/ (the sweeps) and result.json there.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from optimize_cli import ROOT
from promptopt.backends.models import embedded_hf_dir

STARTED_LINE = "Ray runtime started"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--task", default="sst2")
    p.add_argument("--strategy", default="fewshot")
    p.add_argument("--seeds", default="0,1,2,3,4,5,6,7", help="one cell per seed")
    p.add_argument("--budget", default="64", help="each cell's --budget")
    p.add_argument("--test-limit", type=int, default=100)
    p.add_argument("--backend", help="target backend (default: the sweep's, hf)")
    p.add_argument("--model", help="target model (default: the embedded one)")
    p.add_argument("--workers", default="1,2", help="worker nodes in each phase")
    p.add_argument("--run-dir", default="runs/bench-sweep-ray")
    return p.parse_args(argv)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Cluster:
    """A local Ray cluster on loopback: a head that takes no cells and `workers` nodes of 1 CPU. Every
    node is a `ray start --block` process of ours; stopping them (SIGTERM, by pid) stops their Ray processes."""

    def __init__(self, workers: int, env: dict[str, str], log_dir: Path):
        self.ray = shutil.which("ray", path=str(Path(sys.executable).parent)) or "ray"
        self.port = free_port()
        self.env, self.log_dir = env, log_dir
        self.temp = tempfile.mkdtemp(prefix="ray-")  # short: Ray's socket paths must fit in 107 characters
        self.nodes: list[subprocess.Popen[bytes]] = []
        common = ["--block", "--node-ip-address=127.0.0.1", "--disable-usage-stats"]
        self._start(["--head", f"--port={self.port}", "--num-cpus=0", "--include-dashboard=false",
                     f"--temp-dir={self.temp}", *common], "head")
        for i in range(workers):
            self._start([f"--address={self.address}", "--num-cpus=1", *common], f"worker{i}")

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _start(self, args: list[str], name: str) -> None:
        log = self.log_dir / f"ray-{name}.log"
        with open(log, "wb") as out:
            self.nodes.append(subprocess.Popen([self.ray, "start", *args], stdout=out, stderr=subprocess.STDOUT,
                                               env=self.env, start_new_session=True))
        deadline = time.monotonic() + 180
        while STARTED_LINE not in log.read_text(errors="replace"):
            if self.nodes[-1].poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise SystemExit(f"bench: ray node {name} did not start; see {log}")
            time.sleep(0.5)  # polling another process's log: no event to wait on

    def stop(self) -> None:
        for proc in reversed(self.nodes):  # workers first, the head last
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)  # its own session: the node's Ray processes, none other
                try:
                    proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
        shutil.rmtree(self.temp, ignore_errors=True)


def table(out: Path) -> list[dict[str, Any]]:
    """The results table without wall times (the one column two executions may differ in)."""
    return [{k: v for k, v in r.items() if k != "wall_s"} for r in json.loads((out / "results.json").read_text())]


def phase(args: argparse.Namespace, workers: int, root: Path) -> dict[str, Any]:
    out = root / ("one" if workers == 1 else "two" if workers == 2 else f"w{workers}")
    out.mkdir(parents=True)
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "PROMPTOPT_CACHE_DIR": str(out / "cache")}  # a cold response cache in each phase
    if not args.model:  # but the embedded model's one-time conversion is an install step, not the sweep's
        (out / "cache").mkdir()
        (out / "cache" / "models").symlink_to(embedded_hf_dir().parent, target_is_directory=True)
    cluster = Cluster(workers, env, out)
    try:
        argv = [sys.executable, "-m", "promptopt.cli", "sweep", "--tasks", args.task, "--strategies", args.strategy,
                "--seeds", args.seeds, "--budget", args.budget, "--test-limit", str(args.test_limit),
                "--optimizer-model", "none", "--out", str(out / "sweep"), "--executor", "ray",
                "--address", cluster.address, "--num-cpus", "1"]
        for flag, value in (("--backend", args.backend), ("--model", args.model)):
            if value:
                argv += [flag, value]
        load = os.getloadavg()[0]
        started = time.monotonic()
        with open(out / "sweep.log", "wb") as log:
            code = subprocess.run(argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT).returncode
        wall = time.monotonic() - started
    finally:
        cluster.stop()
    if code != 0:
        raise SystemExit(f"bench: the sweep on {workers} worker(s) exited {code}; see {out / 'sweep.log'}")
    return {"workers": workers, "wall_s": round(wall, 2), "load_before": round(load, 2),
            "load_after": round(os.getloadavg()[0], 2), "out": str(out / "sweep"), "table": table(out / "sweep")}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not os.environ.get("PROMPTOPT_DATA_DIR") and (args.backend or "hf") != "fake":
        raise SystemExit("bench: set PROMPTOPT_DATA_DIR (e.g. ../shared/data)")
    try:
        import ray  # noqa: F401
    except ImportError:
        raise SystemExit("bench: needs Ray: pip install 'promptopt[ray]'") from None
    root = (ROOT / args.run_dir / time.strftime("%Y%m%d-%H%M%S")).resolve()
    results = [phase(args, int(w), root) for w in args.workers.split(",")]
    for r in results:
        print(f"{r['workers']} worker node(s) of 1 CPU: {r['wall_s']:.1f} s (load {r['load_before']} -> "
              f"{r['load_after']})")
    base = results[0]
    for r in results[1:]:
        print(f"{r['workers']} workers against {base['workers']}: {base['wall_s'] / r['wall_s']:.2f}x faster; "
              f"tables identical: {r['table'] == base['table']}")
    (root / "result.json").write_text(json.dumps({"config": vars(args), "phases": results}, indent=1) + "\n")
    print(f"wrote {root / 'result.json'}")
    return 0 if all(r["table"] == base["table"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
