"""One cell of a sweep, run in this process: start its run, resume it from its log, or do nothing when
it is done. Both executors run cells through `execute_cell`, so a cell whose worker died is resumed from
its log wherever it lands next. `python -m promptopt.cli.sweep.cell OUT NAME` is what the local executor starts."""
from __future__ import annotations

import os
import sys
from contextlib import redirect_stderr, redirect_stdout
from datetime import datetime, timezone
from pathlib import Path

from promptopt.cli.sweep.grid import cell_done, cell_root, cell_run, cells, new_run_argv, read_grid

LOG = "cell.log"


def execute_cell(out: str, name: str, cwd: str | None = None) -> int:
    """Run cell `name` of the sweep in `out` to its end; returns `promptopt optimize`'s exit code."""
    from promptopt.cli.commands import main

    if cwd:  # a Ray worker starts elsewhere: relative paths in the grid are the driver's
        os.chdir(cwd)
    root = Path(out)
    grid = read_grid(root)
    cell = next(c for c in cells(grid) if c.name == name)
    run = cell_run(root, cell)
    if cell_done(run):
        return 0
    argv = ["optimize", "--resume", str(run), "-q"] if run else new_run_argv(grid, cell, root)
    log_dir = cell_root(root, cell)
    log_dir.mkdir(parents=True, exist_ok=True)
    with open(log_dir / LOG, "a", encoding="utf-8") as log, redirect_stdout(log), redirect_stderr(log):
        print(f"== {datetime.now(timezone.utc).isoformat(timespec='seconds')} pid {os.getpid()}: "
              f"promptopt {' '.join(argv)}", flush=True)
        code = main(argv)
        print(f"== exit {code}", flush=True)
    return code


if __name__ == "__main__":
    sys.exit(execute_cell(sys.argv[1], sys.argv[2]))
