"""One cell of a sweep, run in this process: start its run, resume it from its log, or do nothing when
it is done. Both executors run cells through `execute_cell`, so a cell whose worker died is resumed from
its log wherever it lands next. `python -m promptopt.cli.sweep.cell OUT NAME` is what the local executor starts."""
from __future__ import annotations

import os
import sys
import traceback
from contextlib import redirect_stderr, redirect_stdout
from datetime import datetime, timezone
from pathlib import Path

from promptopt.cli.sweep.grid import (Cell, Grid, cell_done, cell_root, cell_run, cells, new_run_argv, read_grid,
                                      soft_run_argv, soft_run_dir)
from promptopt.cli.sweep.soft import is_soft

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
    log_dir = cell_root(root, cell)
    log_dir.mkdir(parents=True, exist_ok=True)
    with open(log_dir / LOG, "a", encoding="utf-8") as log, redirect_stdout(log), redirect_stderr(log):
        if is_soft(cell.strategy):
            print(f"== {_now()} pid {os.getpid()}: soft cell {cell.strategy}", flush=True)
            code = _soft_cell(root, grid, cell)
        else:
            argv = ["optimize", "--resume", str(run), "-q"] if run else new_run_argv(grid, cell, root)
            print(f"== {_now()} pid {os.getpid()}: promptopt {' '.join(argv)}", flush=True)
            code = main(argv)
        print(f"== exit {code}", flush=True)
    return code


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _soft_cell(root: Path, grid: Grid, cell: Cell) -> int:
    """A soft cell (cli/sweep/soft.py) with `promptopt optimize`'s exit codes: 2 for bad input, 1 for a
    failure worth retrying (its traceback goes to the cell's log)."""
    from promptopt.cli.commands import _new_config, build_parser
    from promptopt.cli.sweep.soft import run_soft_cell
    from promptopt.errors import PromptOptError

    try:
        values, argv = soft_run_argv(grid, cell, root)
        cfg = _new_config(build_parser().parse_args(argv))
        return run_soft_cell(soft_run_dir(root, cell), cell.strategy, values, cfg)
    except PromptOptError as e:
        print(f"promptopt: error: {e}", flush=True)
        return 2
    except Exception:  # noqa: BLE001 - any other failure: logged whole, and the executor tries again
        traceback.print_exc()
        return 1


if __name__ == "__main__":
    sys.exit(execute_cell(sys.argv[1], sys.argv[2]))
