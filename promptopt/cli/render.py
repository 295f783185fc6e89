"""Terminal tables for reports."""
from __future__ import annotations

import math
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from promptopt.timing import breakdown_line
from promptopt.scoring.routes import route_line
from promptopt.runlog import CONTINUABLE, RunView, load_run

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
                     f"routed to {len(sel['choices'])} finalists"
                     + ("; to route new inputs: promptopt.load_selector(run dir)" if report.run_dir else ""))
        check = sel.get("check")
        if check:
            verdict = "it routes" if check["routes"] else "it keeps the pick for every input"
            lines.append(f"selector check, held out over the folds of its examples: routed {fmt(check['routed'])} vs "
                         f"the pick's {fmt(check['pick'])}; {verdict}")
    return lines


PARTIAL = ("partial: Ctrl-C skipped the final report; the dev scores are as the search left them (not all on "
           "the whole dev split) and there is no test score")


def stop_text(reason: str | None) -> str:
    """A stop reason for a line that already says "stop:": a stop condition's recorded "stop: why" loses its
    prefix (the prefix stays in summary.json, where --resume reads it)."""
    reason = reason or "-"
    return reason[len("stop: "):] if reason.startswith("stop: ") else reason


def cache_batches(cache: dict) -> Any:
    """Batches sent to a model in the last session: summary.json's cache.model_batches, which runs made
    before it was named so call model_calls."""
    return cache.get("model_batches", cache.get("model_calls", "-"))


def answers_warning(view: RunView) -> str | None:
    """The best prompt's answer warnings (one answer dominates, many are empty), read from the run log."""
    from promptopt.cli.predictions import best_results, prediction_lines
    scored = best_results(view)
    return prediction_lines(scored[1])[1] if scored else None


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
    for name, text in report.best_components.items():  # a program, or --components: the whole best candidate
        console.print(escape(f"best {name}: {short(text)}"))
    tasks = report.final.get("tasks")
    if tasks:  # one system prompt over several tasks: each task on its own
        per = Table(title="each task (seed -> best)")
        for col in ("task", "dev seed", "dev best", "test seed", "test best"):
            per.add_column(col, justify="left" if col == "task" else "right")
        for name, row in tasks.items():
            per.add_row(name, *(fmt(row[k]) for k in ("seed_dev", "best_dev", "seed_test", "best_test")))
        console.print(per)
    if report.best_demos:
        console.print(f"best prompt's demos (train ids, in order): {', '.join(report.best_demos)}")
    if report.significance:
        console.print(significance_line(report.significance))
    for line in final_pick_lines(report):
        console.print(line)
    view = load_run(Path(report.run_dir)) if report.run_dir else None
    warning = answers_warning(view) if view else None
    if warning:
        console.print(escape(f"warning: the best prompt's answers: {warning}"), style="bold yellow")
    tu, ou = report.target_usage, report.optimizer_usage
    cache = report.search.get("cache", {})
    console.print(f"steps {report.steps} · candidates {report.candidates} · stop: {stop_text(report.stop_reason)}")
    console.print(
        f"scored examples: search {report.search.get('examples', 0)} (what --budget caps) + final report "
        f"{report.final.get('examples', 0)} · optimizer calls {report.search.get('optimizer_calls', 0)}")
    console.print(
        f"target tokens {tu.tokens:,} · optimizer tokens {ou.tokens:,} · usd {tu.usd + ou.usd:.4f}"
        f" · model requests {tu.calls + ou.calls:,} · model batches {cache_batches(cache)} (this session)"
        f" · cache hits {cache.get('hits', '-')} · failures {report.failures} · {report.seconds:.1f}s")
    route = route_line(view.events) if view else None
    if route:
        console.print(route)
    if report.timings:
        console.print(breakdown_line(report.timings))
    if report.run_dir:
        console.print(f"run log: {report.run_dir}")
        if report.stop_reason.startswith(CONTINUABLE):
            console.print(f"stopped early: `promptopt optimize --resume {report.run_dir}` continues the search")
