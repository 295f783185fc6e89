"""`promptopt show RUN`: top candidates, the best prompt's lineage, and score per step, from events.jsonl."""
from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from promptopt.cli.export import one_prompt_run
from promptopt.cli.predictions import best_results, prediction_lines
from promptopt.cli.front import print_front
from promptopt.cli.render import PARTIAL, fmt, short, significance_line, stop_text
from promptopt.errors import ConfigError
from promptopt.scoring.routes import route_line
from promptopt.runlog import CONFIG, EVENTS, load_run


def meta_text(candidate: dict[str, Any]) -> str:
    """What a strategy recorded about how it made a candidate (e.g. a critique or an edit): the text
    values of its meta, one `key: value` line each, or "". Generic: no strategy's keys are known here."""
    meta = candidate.get("meta") or {}
    return "\n".join(f"{k}: {v}" for k, v in meta.items() if isinstance(v, str) and v.strip())


def demos_cell(c: dict) -> str:
    """How many fixed demos, or "knn k=K" for demos retrieved per input ("N + knn k=K" after N shared ones)."""
    r = c.get("retrieval")
    if not r:
        return str(len(c.get("demos", ())))
    return f"{len(r['shared'])} + knn k={r['k']}" if r.get("shared") else f"knn k={r['k']}"


def latest_run(root: Path = Path("runs")) -> Path:
    """The run most recently started under `root` (by its config.json's time): what `show` and `report`
    read when no run is named."""
    runs = [p for p in root.iterdir() if (p / EVENTS).is_file() and (p / CONFIG).is_file()] if root.is_dir() else []
    if not runs:
        raise ConfigError(f"no run under {root}/ to show; name one (promptopt show runs/<id>) or run "
                          "promptopt optimize first")
    return max(runs, key=lambda p: ((p / CONFIG).stat().st_mtime, p.name))


def show_run(run_dir: Path, top: int = 5, console: Console | None = None) -> None:
    console = console or Console(width=120)
    view = load_run(run_dir)
    ranked = view.ranked()
    t = Table(title=f"top candidates — {run_dir}")
    for col in ("id", "origin", "dev", "n", "test", "demos", "prompt"):
        t.add_column(col, overflow="fold")
    for cid in ranked[:top]:
        c = view.candidates[cid]
        t.add_row(cid[:8], c.get("origin", ""), fmt(view.score(cid)), str(view.n(cid)),
                  fmt(view.score(cid, "test")) if view.n(cid, "test") else "-", demos_cell(c),
                  short(c["text"], 60))
    console.print(t)
    config = next((e.get("config") or {} for e in view.events if e["type"] == "run.start"), {})
    if len(ranked) > 1 and one_prompt_run(config.get("task", ""), config.get("task_options") or {}):
        console.print(escape(f"score another on test: promptopt evaluate --run {shlex.quote(str(run_dir))} --candidate {ranked[1][:8]} "
                             "--split test"), style="dim", soft_wrap=True)  # one line: a command to copy
    best = view.best_id()
    if best:
        console.print("[bold]lineage of the best prompt[/bold] (newest first):")
        for c in view.lineage(best):
            console.print(escape(f"  {c['candidate_id'][:8]} [{c.get('origin', '')}] "
                                 f"dev {fmt(view.score(c['candidate_id']))}: {short(c['text'], 80)}"))
            for line in meta_text(c).splitlines():
                console.print(escape(f"      {short(line, 100)}"))
            if c.get("demos"):
                console.print(escape(f"      demos (train ids, in order): {', '.join(c['demos'])}"))
            if c.get("retrieval"):
                r = c["retrieval"]
                console.print(escape(f"      demos retrieved per input: k={r['k']} by {r['embedding']}, MMR λ {r['mmr']}, "
                                     f"{r['order'].replace('_', ' ')}{', label-balanced' if r['balanced'] else ''}"
                                     + (f", after shared demos {', '.join(r['shared'])}" if r.get("shared") else "")))
    steps = Table(title="best dev score by step")
    for col in ("step", "best dev", "candidates"):
        steps.add_column(col, justify="right")
    for s, b, n in view.best_by_step():
        steps.add_row(str(s), fmt(b), str(n))
    console.print(steps)
    console.print(f"candidates {len(view.candidates)} · optimizer calls {view.optimizer_calls} · "
                  f"rejected proposals {view.rejected}"
                  + (f" · examples the budget left unscored {view.unscored}" if view.unscored else ""))
    route = route_line(view.events)
    if route:
        console.print(escape(route))
    scored = best_results(view)
    if scored:
        dist, warning = prediction_lines(scored[1], f"answers of the best prompt on {scored[0]}")
        console.print(escape(dist))
        if warning:
            console.print(escape(f"warning: {warning}"), style="bold yellow")
    if view.summary and view.summary.get("partial"):
        console.print(PARTIAL, style="bold yellow")
    if view.summary:
        console.print(f"stop: {stop_text(view.summary.get('stop_reason'))} · seed dev {fmt(view.summary.get('seed_dev'))} "
                      f"→ best dev {fmt(view.summary.get('best_dev'))}, test {fmt(view.summary.get('best_test'))}")
        if "final" in view.summary:  # runs made before it was recorded have only the search's count
            console.print(f"scored examples: search {view.summary.get('search', {}).get('examples', '-')} "
                          f"(what --budget caps) + final report {view.summary['final'].get('examples', '-')}")
        if view.summary.get("significance"):
            console.print(significance_line(view.summary["significance"]))
        print_front(console, view.summary)
