"""Terminal tables for reports."""
from __future__ import annotations

import math
import shutil
from typing import TYPE_CHECKING

from rich.console import Console
from rich.table import Table

from promptopt.timing import breakdown_line
from promptopt.scoring.routes import route_line
from promptopt.runlog import CONTINUABLE, load_run

if TYPE_CHECKING:  # a type only: showing a run's tables needs no loop
    from promptopt.loop import Report


def fmt(x: float | None) -> str:
    return "-" if x is None or math.isnan(x) else f"{x:.3f}"


def short(text: str, width: int = 70) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def significance_line(sig: dict) -> str:
    """Seed vs best on the same test examples, in one line."""
    low, high = sig["ci95"]
    line = (f"best - seed on {sig['n']} test examples: {sig['diff']:+.3f} (95% CI {low:+.3f} .. {high:+.3f}), "
            f"p = {sig['p']:.3g} ({sig['test']})")
    if sig["test"] == "mcnemar":
        line += f"; only seed right {sig['only_seed_right']}, only best right {sig['only_best_right']}"
    return line


def final_pick_lines(report: Report) -> list[str]:
    """The final.* rule's choice and the selector against the pick, when the run used them."""
    lines = []
    pick = report.final_pick or {}
    if pick.get("rule") == "kfold":
        mine = pick["finalists"].get(report.best_id, {})
        lines.append(f"final pick: {pick['repeats']}x {pick['folds']}-fold over {pick['examples']} dev + train "
                     f"examples, {len(pick['finalists'])} finalists; the pick's held-out mean "
                     f"{fmt(mine.get('mean'))} (sd over folds {fmt(mine.get('sd'))})")
    keep = pick.get("keep_seed")
    if keep and "p" not in keep:
        lines.append(f"keep-seed rule (alpha {keep['alpha']:g}): the pick is the seed")
    elif keep:
        verdict = "seed kept" if keep["kept"] else "seed replaced"
        lines.append(f"keep-seed rule: {verdict}: the pick {keep['diff']:+.3f} over the seed on {pick['examples']} "
                     f"examples, p = {keep['p']:.3g} ({keep['test']}), alpha {keep['alpha']:g}")
    sel = report.selector
    if sel:
        sig = sel["significance"]
        lines.append(f"selector ({sel['method']}, learned on {sel['learned_on']} examples): test {fmt(sel['test'])} vs "
                     f"the pick's {fmt(sel['pick_test'])} on {sig['n']} examples, p = {sig['p']:.3g} ({sig['test']}); "
                     f"routed to {len(sel['choices'])} finalists")
    return lines


PARTIAL = ("partial: Ctrl-C skipped the final report; the dev scores are as the search left them (not all on "
           "the whole dev split) and there is no test score")


def print_report(report: Report, console: Console | None = None) -> None:
    console = console or Console(width=max(100, shutil.get_terminal_size().columns))
    t = Table(title="promptopt result")
    t.add_column("prompt")
    t.add_column("text", overflow="fold")
    t.add_column("dev", justify="right")
    t.add_column("test", justify="right")
    t.add_row("seed", short(report.seed_prompt), fmt(report.seed_dev), fmt(report.seed_test))
    t.add_row("best", short(report.best_prompt), fmt(report.best_dev), fmt(report.best_test))
    console.print(t)
    if report.partial:
        console.print(PARTIAL, style="bold yellow")
    if report.best_demos:
        console.print(f"best prompt's demos (train ids, in order): {', '.join(report.best_demos)}")
    if report.significance:
        console.print(significance_line(report.significance))
    for line in final_pick_lines(report):
        console.print(line)
    tu, ou = report.target_usage, report.optimizer_usage
    cache = report.search.get("cache", {})
    console.print(
        f"steps {report.steps} · candidates {report.candidates} · scored examples {report.search.get('examples', 0)}"
        f" · optimizer calls {report.search.get('optimizer_calls', 0)} · stop: {report.stop_reason}")
    console.print(
        f"target tokens {tu.tokens:,} · optimizer tokens {ou.tokens:,} · usd {tu.usd + ou.usd:.4f}"
        f" · model calls {cache.get('model_calls', '-')} · cache hits {cache.get('hits', '-')}"
        f" · failures {report.failures} · {report.seconds:.1f}s")
    route = route_line(load_run(report.run_dir).events) if report.run_dir else None
    if route:
        console.print(route)
    if report.timings:
        console.print(breakdown_line(report.timings))
    if report.run_dir:
        console.print(f"run log: {report.run_dir}")
        if report.stop_reason.startswith(CONTINUABLE):
            console.print(f"stopped early: `promptopt optimize --resume {report.run_dir}` continues the search")
