"""The `sweep` subcommand: read the grid, check every cell as `--dry-run` would (nothing starts if one is
wrong), reach the executor, then run what is not done and print one table."""
from __future__ import annotations

import argparse
import io
import sys
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any

from promptopt.cli.sweep import soft
from promptopt.cli.sweep.grid import (Cell, Grid, cell_done, cell_run, cells, claim_out_dir, load_grid_file,
                                      make_grid, new_run_argv, soft_run_argv)
from promptopt.cli.sweep.soft import is_soft
from promptopt.errors import ConfigError

_LISTS = {"tasks": str, "strategies": str, "seeds": int}


def add_parser(sub: Any) -> None:
    p = sub.add_parser("sweep", help="run a grid of tasks x strategies x seeds; resumable; local processes or Ray",
                       description="Each cell is an ordinary `promptopt optimize` run in OUT/cells/<cell>/, all "
                                   "sharing the response cache. A rerun skips finished cells and resumes cut-off "
                                   "ones. Results: OUT/results.{json,csv,png,html}. Flags override the grid file.")
    p.add_argument("grid", nargs="?", help="grid file (TOML): tasks, strategies, seeds, budget, test_limit, model, "
                                           "backend, optimizer_model, sets, num_cpus, num_gpus")
    p.add_argument("--tasks", help="comma-separated task names or spec files")
    p.add_argument("--strategies", help="comma-separated strategies, `seed` (the seed prompt, no search) and "
                                        "soft methods (prompt_tuning, p_tuning, prefix_tuning, cpt)")
    p.add_argument("--seeds", help="comma-separated seeds, e.g. 0,1,2")
    p.add_argument("--budget", help="each cell's --budget, e.g. 256 or examples=256,calls=40")
    p.add_argument("--test-limit", type=int)
    p.add_argument("--model")
    p.add_argument("--backend")
    p.add_argument("--optimizer-model")
    p.add_argument("--set", dest="sets", action="append", metavar="KEY=VALUE",
                   help="a setting for every cell; one whose key starts with a strategy of the grid "
                        "(apo.rounds=2) goes to that strategy's cells only")
    p.add_argument("--out", required=True, help="the sweep dir (made if new; must hold this grid if it exists)")
    p.add_argument("--executor", choices=["local", "ray"], default="local")
    p.add_argument("--jobs", type=int, default=1, help="local executor: cells at once (default 1)")
    p.add_argument("--address", default="auto", help="ray executor: the cluster address (default: auto)")
    p.add_argument("--num-cpus", type=float, help="ray: CPUs one cell asks for (default 1)")
    p.add_argument("--num-gpus", type=float, help="ray: GPUs one cell asks for (default 0)")
    p.add_argument("--dry-run", action="store_true", help="check every cell and print the plan; start nothing")


def _grid_values(args: argparse.Namespace) -> dict[str, Any]:
    values = load_grid_file(args.grid) if args.grid else {}
    for key, kind in _LISTS.items():
        text = getattr(args, key)
        if text is not None:
            try:
                values[key] = [kind(x.strip()) for x in text.split(",") if x.strip()]
            except ValueError:
                raise ConfigError(f"--{key}: expected a comma-separated list of {kind.__name__}s, got {text!r}") from None
    for key in ("budget", "test_limit", "model", "backend", "optimizer_model", "num_cpus", "num_gpus"):
        if getattr(args, key) is not None:
            values[key] = getattr(args, key)
    if args.sets:
        values["sets"] = [*values.get("sets", []), *args.sets]
    # A spec file named relative to here must still be found by a cell that runs elsewhere.
    values["tasks"] = [str(Path(t).resolve()) if Path(t).is_file() else t for t in values.get("tasks", [])]
    return values


def check_cells(grid: Grid, out: Path) -> list[str]:
    """Every (task, strategy) pair through `optimize --dry-run`: the same checks a run makes before it
    loads a model. Seeds change no setting, so one seed stands for all. Returns a line per soft
    (task, method): what it trains."""
    from promptopt.cli.commands import _new_config, build_parser, main

    errors, plans = [], []
    for cell in {Cell(c.task, c.strategy, grid.seeds[0]) for c in cells(grid)}:
        values, argv = soft_run_argv(grid, cell, out / ".check") if is_soft(cell.strategy) else \
            ({}, new_run_argv(grid, cell, out / ".check"))
        err = io.StringIO()
        with redirect_stdout(io.StringIO()), redirect_stderr(err):
            code = main([*argv, "--dry-run"])
        if code == 0 and is_soft(cell.strategy):  # and what only a soft cell needs (hf, a budget, a train split)
            try:
                plan = soft.check(cell.strategy, values, _new_config(build_parser().parse_args(argv)))
                checks = (f"the whole dev split scored at step 0 and {plan['dev_checks']} more times"
                          if plan["dev_checks"] else "no dev checks (the last step is kept)")
                plans.append(f"sweep: {cell.task} {cell.strategy}: {plan['steps']} steps of {plan['batch_size']} "
                             f"train examples, {checks}")
            except ConfigError as e:
                err.write(str(e).removeprefix("sweep: ") + "\n")
                code = 2
        if code != 0:
            line = err.getvalue().strip().splitlines()[-1:] or [f"exit {code}"]
            errors.append(f"task {cell.task}, strategy {cell.strategy}: {line[0].removeprefix('promptopt: error: ')}")
    if errors:
        raise ConfigError("sweep: " + "; ".join(sorted(errors)))
    return sorted(plans)


def run(args: argparse.Namespace) -> int:
    from promptopt.cli.sweep.executors import connect_ray, run_local, run_ray
    from promptopt.cli.sweep.results import collect, table_lines, write_results

    grid = make_grid(_grid_values(args))
    out = Path(args.out).resolve()
    if args.jobs < 1:
        raise ConfigError(f"--jobs: expected a whole number >= 1, got {args.jobs}")
    plans = check_cells(grid, out)
    todo = [c.name for c in cells(grid) if not cell_done(cell_run(out, c))]
    if args.dry_run:
        for line in plans:
            print(line)
        print(f"sweep: {len(cells(grid))} cells ({len(grid.tasks)} tasks x {len(grid.strategies)} strategies x "
              f"{len(grid.seeds)} seeds), {len(todo)} to run, on {args.executor}; every cell checked")
        return 0
    if args.executor == "ray":
        connect_ray(args.address)
    claim_out_dir(out, grid)

    def report(name: str, what: str) -> None:
        print(f"sweep: {name}: {what}", file=sys.stderr, flush=True)

    print(f"sweep: {len(todo)} of {len(cells(grid))} cells to run in {out}", file=sys.stderr)
    codes = (run_ray(out, todo, grid, report) if args.executor == "ray"
             else run_local(out, todo, args.jobs, report))
    rows, missing = collect(out, grid)
    print("\n".join(table_lines(rows)))
    paths = write_results(out, rows)
    print(f"sweep: wrote {', '.join(p.name for p in paths)} in {out}", file=sys.stderr)
    failed = sorted(n for n, c in codes.items() if c != 0)
    if missing:
        print(f"sweep: {len(missing)} cells not finished ({', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''});"
              " run the same command again to resume them", file=sys.stderr)
        return 3
    return 1 if failed else 0
