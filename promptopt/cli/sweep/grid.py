"""A sweep's grid and its cells. The grid is saved as `<out>/grid.json`; each cell is one `optimize` run
under `<out>/cells/<cell>/`, found again by its name, so a rerun knows which cells are done."""
from __future__ import annotations

import json
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from promptopt import registry
from promptopt.cli.sweep.soft import SOFT_FILE, is_soft, split_sets
from promptopt.errors import ConfigError

GRID_FILE = "grid.json"
CELLS = "cells"


class Grid(BaseModel):
    """What a sweep runs. `sets` are `--set KEY=VALUE` for every cell, except that a key whose first part
    names another strategy of the grid (`apo.rounds=2`) goes to that strategy's cells only."""

    model_config = ConfigDict(extra="forbid")

    tasks: list[str] = Field(min_length=1)
    strategies: list[str] = Field(min_length=1)
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    budget: str | None = None  # as --budget takes it: 256 or examples=256,calls=40
    test_limit: int | None = Field(None, ge=1)
    model: str | None = None
    backend: str | None = None
    optimizer_model: str | None = None
    sets: list[str] = Field(default_factory=list)
    num_cpus: float = Field(1.0, gt=0)  # what one cell asks of a Ray node
    num_gpus: float = Field(0.0, ge=0)  # e.g. 1 for a cell whose target is a vLLM engine


def load_grid_file(path: str) -> dict[str, Any]:
    """A grid file (TOML) as a dict; flags given with it override its keys."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"grid file {path}: not a file")
    try:
        return tomllib.loads(p.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"grid file {path}: {e}") from None


def make_grid(values: dict[str, Any]) -> Grid:
    try:
        grid = Grid.model_validate(values)
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(x) for x in err["loc"])
        raise ConfigError(f"sweep: {where}: {err['msg']}") from None
    for name in grid.strategies:
        if not is_soft(name):  # the soft methods are the sweep's own (cli/sweep/soft.py)
            registry.get("strategies", name)  # unknown name: one line with "did you mean"
    for s in grid.sets:
        if "=" not in s:
            raise ConfigError(f"sweep: --set {s!r}: expected KEY=VALUE")
    return grid


@dataclass(frozen=True)
class Cell:
    task: str
    strategy: str
    seed: int

    @property
    def name(self) -> str:
        task = Path(self.task).stem if ("/" in self.task or "." in self.task) else self.task
        task = "".join(c if c.isalnum() or c in "-_" else "-" for c in task)
        return f"{task}__{self.strategy}__seed{self.seed}"


def cells(grid: Grid) -> list[Cell]:
    return [Cell(t, s, seed) for t in grid.tasks for s in grid.strategies for seed in grid.seeds]


def new_run_argv(grid: Grid, cell: Cell, out: Path) -> list[str]:
    """The `promptopt optimize` arguments that start this cell's run."""
    argv = ["optimize", "--task", cell.task, "--strategy", cell.strategy, "--seed", str(cell.seed),
            "--run-dir", str(cell_root(out, cell)), "--set", f"run_name={cell.name}", "-q"]
    for flag, value in (("--budget", grid.budget), ("--test-limit", grid.test_limit), ("--model", grid.model),
                        ("--backend", grid.backend), ("--optimizer-model", grid.optimizer_model)):
        if value is not None:
            argv += [flag, str(value)]
    for s in grid.sets:
        head = s.split("=", 1)[0].split(".", 1)[0]
        if head in grid.strategies and head != cell.strategy:
            continue
        argv += ["--set", s]
    return argv


def soft_run_argv(grid: Grid, cell: Cell, out: Path) -> tuple[dict[str, Any], list[str]]:
    """A soft cell's settings (its method's `--set`s) and the `optimize` arguments of its run config: the
    cell's task, seed, model, budget and other settings, with the `seed` strategy (no search) in its place."""
    values, rest = split_sets(grid.sets, cell.strategy)
    argv = new_run_argv(grid.model_copy(update={"sets": rest}), Cell(cell.task, "seed", cell.seed), out)
    return values, argv


def soft_run_dir(out: Path, cell: Cell) -> Path:
    return cell_root(out, cell) / f"{cell.name}-soft"


def cell_root(out: Path, cell: Cell) -> Path:
    return out / CELLS / cell.name


def cell_run(out: Path, cell: Cell) -> Path | None:
    """The cell's run dir, if it was started (the loop names it `<cell>-<suffix>`)."""
    if is_soft(cell.strategy):
        run = soft_run_dir(out, cell)
        return run if (run / SOFT_FILE).is_file() else None
    found = sorted(cell_root(out, cell).glob(f"{cell.name}-*/config.json"))
    return found[0].parent if found else None


def cell_done(run: Path | None) -> bool:
    if run is None or not (run / "summary.json").is_file():
        return False
    summary = json.loads((run / "summary.json").read_text(encoding="utf-8"))
    return not summary.get("partial") and summary.get("stop_reason") != "interrupted"


def claim_out_dir(out: Path, grid: Grid) -> None:
    """Make `out` this grid's sweep dir, or check that it already is. A folder that holds another grid,
    or files that no sweep wrote, is refused: a sweep never mixes its cells with something else."""
    record = {"grid": grid.model_dump(mode="json")}
    gfile = out / GRID_FILE
    if gfile.is_file():
        try:
            found = json.loads(gfile.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise ConfigError(f"sweep: {gfile}: unreadable ({e})") from None
        if found != record:
            raise ConfigError(f"sweep: {out} holds another grid ({gfile} differs); use another --out, "
                              "or delete that folder to start over")
        return
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"sweep: {out} exists and is not a sweep dir (no {GRID_FILE}); use another --out")
    try:
        out.mkdir(parents=True, exist_ok=True)
        tmp = out / f".{GRID_FILE}.partial"
        tmp.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
        tmp.rename(gfile)
    except OSError as e:
        raise ConfigError(f"sweep: cannot write {gfile}: {e.strerror or e}") from None


def read_grid(out: Path) -> Grid:
    return Grid.model_validate(json.loads((out / GRID_FILE).read_text(encoding="utf-8"))["grid"])
