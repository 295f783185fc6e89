"""Where a sweep's cells run: local processes (`--jobs N`) or the tasks of a Ray cluster. An executor only
places cells; each cell resumes from its own log, so a lost process or worker costs a replay, not a result."""
from __future__ import annotations

import ipaddress
import logging
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

from promptopt.cli.sweep.cell import execute_cell
from promptopt.cli.sweep.grid import Grid
from promptopt.errors import ConfigError

# A cell that stopped resumably (exit 3), was killed, or lost its worker is resumed this many times more.
RETRIES = 2
CONNECT_TIMEOUT = 5.0  # seconds to reach a Ray head given as host:port
BAD_INPUT = 2  # `promptopt optimize`'s exit code for bad input: running it again cannot help
# What a cell's environment must carry to a Ray worker (data dir, cache dir, offline switches); API keys
# are not sent: a worker reads them from its own environment (`api_key_env` names the variable).
_ENV_PREFIXES = ("PROMPTOPT_", "HF_", "TRANSFORMERS_")

Report = Callable[[str, str], None]  # (cell name, what happened)


def run_local(out: Path, names: list[str], jobs: int, report: Report) -> dict[str, int]:
    """Run the cells as child processes, at most `jobs` at a time; returns each cell's last exit code."""
    pending, running, tries, codes = list(names), {}, dict.fromkeys(names, 0), {}
    try:
        while pending or running:
            while pending and len(running) < jobs:
                name = pending.pop(0)
                tries[name] += 1
                running[name] = subprocess.Popen([sys.executable, "-m", "promptopt.cli.sweep.cell", str(out), name],
                                                 stdin=subprocess.DEVNULL)
                report(name, "started" if tries[name] == 1 else f"resumed (try {tries[name]})")
            for name, proc in list(running.items()):
                code = proc.poll()
                if code is None:
                    continue
                del running[name]
                if code not in (0, BAD_INPUT) and tries[name] <= RETRIES:
                    report(name, f"exit {code}; resuming from its log")
                    pending.append(name)
                    continue
                codes[name] = code
                report(name, "done" if code == 0 else f"failed (exit {code}; see its cell.log)")
            time.sleep(0.1)  # polling children: the only wait here
    except KeyboardInterrupt:
        for proc in running.values():
            proc.terminate()  # SIGTERM: each run stops resumably
        for proc in running.values():
            proc.wait()
        raise
    return codes


def _ray_cell(out: str, name: str, cwd: str) -> int:
    return execute_cell(out, name, cwd)


def _reachable(address: str) -> tuple[str | None, str | None]:
    """(host, why not) for a host:port address: Ray's own client retries an unreachable one for minutes,
    so one TCP connect with a short timeout decides first. "auto" and ray:// addresses are left to Ray."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or "/" in host:
        return None, None
    try:
        socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT).close()
    except OSError as e:
        return host, e.strerror or str(e) or type(e).__name__
    return host, None


def connect_ray(address: str) -> None:
    """Join the Ray cluster at `address` (or refuse in one line) before anything is started."""
    try:
        import ray
    except ImportError:
        raise ConfigError("--executor ray needs Ray: pip install 'promptopt[ray]'") from None
    host, why = _reachable(address)
    if why:
        raise ConfigError(f"--address {address}: no Ray cluster reachable there ({why})")
    env = {k: v for k, v in os.environ.items() if k.startswith(_ENV_PREFIXES)}
    # A cluster on loopback: the driver must say so too, or Ray announces it on the machine's own address.
    local = {"_node_ip_address": host} if host and ipaddress.ip_address(socket.gethostbyname(host)).is_loopback else {}
    try:
        ray.init(address=address, logging_level=logging.ERROR, log_to_driver=False,
                 runtime_env={"env_vars": env} if env else None, **local)
    except Exception as e:  # ConnectionError, ValueError, RuntimeError, depending on what is wrong
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ConfigError(f"--address {address}: no Ray cluster reachable there ({first})") from None


def run_ray(out: Path, names: list[str], grid: Grid, report: Report) -> dict[str, int]:
    """One Ray task per cell, with the resources the grid declares. Ray re-runs a task whose worker died
    (`max_retries`), and the cell then resumes from its log on whichever node takes it."""
    import ray

    task = ray.remote(_ray_cell).options(num_cpus=grid.num_cpus, num_gpus=grid.num_gpus, max_retries=RETRIES)
    cwd = os.getcwd()
    tries = dict.fromkeys(names, 1)
    refs = {task.remote(str(out), name, cwd): name for name in names}
    for name in names:
        report(name, "submitted")
    codes: dict[str, int] = {}
    try:
        while refs:
            ready, _ = ray.wait(list(refs), num_returns=1)
            for ref in ready:
                name = refs.pop(ref)
                try:
                    code = ray.get(ref)
                except ray.exceptions.RayError as e:
                    codes[name] = -1
                    report(name, f"lost ({type(e).__name__} after {RETRIES} retries)")
                    continue
                if code not in (0, BAD_INPUT) and tries[name] <= RETRIES:  # stopped resumably: go on
                    tries[name] += 1
                    refs[task.remote(str(out), name, cwd)] = name
                    report(name, f"exit {code}; resuming from its log")
                    continue
                codes[name] = code
                report(name, "done" if code == 0 else f"failed (exit {code}; see its cell.log)")
    finally:
        ray.shutdown()
    return codes
