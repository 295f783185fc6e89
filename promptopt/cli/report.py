"""`promptopt report RUN`: one self-contained HTML page about a finished or partial run.

The page loads nothing and runs nothing: plots are inlined as base64 PNGs (and also written next to
it), and every piece of run text (prompts, critiques, names) is HTML-escaped, so a prompt containing
markup is shown as text, never executed."""
from __future__ import annotations

import base64
import os
from html import escape
from pathlib import Path
from typing import Any, Iterable, Sequence

from promptopt.api import load_run_config
from promptopt.cli.front import FRONT_PLOT, front_of, front_section, plot_axes
from promptopt.cli.plots import plot_dev_by_step, plot_front, plot_rl_curves
from promptopt.cli.predictions import best_results, prediction_lines
from promptopt.cli.render import cache_batches, fmt, significance_line, stop_text
from promptopt.cli.show import meta_text
from promptopt.config import RunConfig
from promptopt.errors import PromptOptError
from promptopt.paths import regular_or_absent, write_text
from promptopt.scoring.routes import route_line
from promptopt.runlog import RunView, load_run
from promptopt.timing import PARTS
from promptopt.types import Usage

REPORT_FILE = "report.html"
# A second line of defence should some text ever skip escaping: no scripts, no fetches, inline images only.
_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
_STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 1100px; padding: 0 1em; color: #222; }
h1 { font-size: 1.5em; } h2 { margin-top: 1.8em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; width: 100%; margin: .6em 0; }
th, td { border: 1px solid #ddd; padding: 4px 8px; text-align: right; vertical-align: top; }
th { background: #f3f3f3; } .text { text-align: left; white-space: pre-wrap; word-break: break-word; }
pre { white-space: pre-wrap; word-break: break-word; background: #f7f7f7; padding: .6em; margin: .3em 0; }
ol.lineage > li { border-left: 3px solid #bbb; padding-left: .8em; margin-bottom: 1em; }
.why { color: #555; } .why pre { background: #fff8e6; }
figure { margin: 1em 0; } figure img { max-width: 100%; border: 1px solid #ddd; }
"""


def write_report(run_dir: Path, out: str | Path | None = None, top: int = 10) -> Path:
    """Write the report and its PNGs beside it: to RUN/report.html, or `out`, a file or a folder
    (one that exists or is written with a trailing slash)."""
    view = load_run(run_dir)
    if out is None:
        path = run_dir / REPORT_FILE
    elif Path(out).is_dir() or str(out).endswith(("/", os.sep)):
        path = Path(out) / REPORT_FILE
    else:
        path = Path(out)
    regular_or_absent(path, "--out")  # a device or FIFO is refused before anything is written
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        plots = _plots(run_dir, view, path)
        write_text(path, render_html(run_dir, view, plots, top), "--out")
    except OSError as e:
        raise PromptOptError(f"cannot write the report to {path}: {e.strerror or e}") from None
    return path


def _plots(run_dir: Path, view: RunView, out: Path) -> list[tuple[str, Path]]:
    """(caption, PNG) of each plot that has data, saved as <report stem>_<plot>.png."""
    plots = []
    try:
        scored = [(view.first_step[c], view.score(c)) for c in view.ranked()]
        if scored:
            best = [(step, score) for step, score, _ in view.best_by_step()]
            plots.append(("Dev score of each candidate at the step it was proposed, and the best so far",
                          plot_dev_by_step(scored, best, out.with_name(f"{out.stem}_dev_by_step.png"))))
        if any(n.get("kind") == "rl.step" for n in view.notes):
            plots.append(("RL training: mean sampled reward and the greedy prompt's dev score",
                          plot_rl_curves(run_dir, out.with_name(f"{out.stem}_rl_curves.png"))))
        front = front_of(view.summary)
        axes = plot_axes(front) if front else None
        if front and axes:
            plots.append((f"The finalists' {axes[1]} score (dev) against {axes[0].replace('_', ' ')}: the Pareto front "
                          "joined, the chosen prompt ringed",
                          plot_front(front["points"], *axes, front.get("chosen"), out.with_name(f"{out.stem}{FRONT_PLOT}"))))
    except ImportError as e:  # matplotlib is the optional `plot` extra
        raise PromptOptError(f"the report's plots need matplotlib (pip install 'promptopt[plot]'): {e}") from None
    return plots


def render_html(run_dir: Path, view: RunView, plots: Sequence[tuple[str, Path]], top: int = 10) -> str:
    config = _config(run_dir)
    best = view.best_id()
    title = f"promptopt report — {run_dir.resolve().name}"
    parts = [f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
             f"<meta http-equiv=\"Content-Security-Policy\" content=\"{_CSP}\">"
             f"<title>{escape(title)}</title><style>{_STYLE}</style></head><body>",
             f"<h1>{escape(title)}</h1>", _overview(run_dir, view, config)]
    if best:
        parts.append(f"<h2>Best prompt</h2><pre id=\"best-prompt\">{escape(view.candidates[best]['text'])}</pre>")
        scored = best_results(view)
        if scored:
            dist, warning = prediction_lines(scored[1], f"answers on {scored[0]}")
            parts.append(f"<p id=\"answers\">{escape(dist)}</p>"
                         + (f"<p id=\"answer-warning\"><strong>warning: {escape(warning)}</strong></p>" if warning else ""))
        prefix = (view.summary or {}).get("best_prefix")
        if prefix and prefix != view.candidates[best]["text"]:
            parts.append("<h3>As the model reads it (instruction and demos, before each query)</h3>"
                         f"<pre id=\"best-prefix\">{escape(prefix)}</pre>")
    parts.append("<h2>Score by step</h2>")
    for caption, png in [p for p in plots if not p[1].name.endswith(FRONT_PLOT)]:  # the front has its section
        data = base64.b64encode(png.read_bytes()).decode("ascii")
        parts.append(f"<figure><img src=\"data:image/png;base64,{data}\" alt=\"{escape(caption)}\">"
                     f"<figcaption>{escape(caption)} ({escape(png.name)})</figcaption></figure>")
    if not plots:
        parts.append("<p>No candidate has been scored yet.</p>")
    parts.append(front_section(view.summary, plots))
    parts.append(_table(("step", "best dev", "candidates"),
                        [(s, fmt(b), n) for s, b, n in view.best_by_step()]))
    if best:
        parts.append(_lineage(view, best))
    parts += [_top_candidates(view, best, top), _costs(view)]
    parts.append("</body></html>\n")
    return "\n".join(parts)


def _config(run_dir: Path) -> RunConfig | None:
    """The run's settings, or None when config.json is missing or unreadable (the report still has the log)."""
    try:
        return load_run_config(run_dir)
    except PromptOptError:
        return None


def _overview(run_dir: Path, view: RunView, config: RunConfig | None) -> str:
    s = view.summary
    target, optimizer = (config.target, config.optimizer) if config else (None, None)
    rows = [("run", str(run_dir)), ("task", config.task if config else "?"),
            ("strategy", config.strategy if config else "?"), ("seed", config.seed if config else "?"),
            ("target model", f"{target.model} ({target.backend})" if target else "?"),
            ("optimizer model", f"{optimizer.model} ({optimizer.backend})" if optimizer else "none"),
            ("status", f"finished: {stop_text(s.get('stop_reason'))}" if s else "partial: no summary.json (running or stopped)"),
            ("steps", s["steps"] if s else max(view.first_step.values(), default=0)),
            ("candidates", len(view.candidates))]
    route = route_line(view.events)
    if route:
        rows.append(("scoring", route))
    if s:
        rows += [("dev: seed → best", f"{fmt(s.get('seed_dev'))} → {fmt(s.get('best_dev'))}"),
                 ("test: seed → best", f"{fmt(s.get('seed_test'))} → {fmt(s.get('best_test'))}")]
        if s.get("significance"):
            rows.append(("best vs seed (same test examples)", significance_line(s["significance"])))
        if s.get("best_demos"):
            rows.append(("best prompt's demos", ", ".join(s["best_demos"])))
    return "<table class=\"overview\">" + "".join(
        f"<tr><th>{escape(k)}</th><td class=\"text\">{escape(str(v))}</td></tr>" for k, v in rows) + "</table>"


def _lineage(view: RunView, best: str) -> str:
    items = []
    for c in reversed(view.lineage(best)):  # seed first, so it reads as the story of the prompt
        cid = c["candidate_id"]
        head = (f"step {c.get('step', '?')} · {c.get('origin') or '?'} · {cid[:8]} · "
                f"dev {fmt(view.score(cid))} on {view.n(cid)} examples")
        extra = c.get("parents", [])[1:]  # crossover and the like: the tree follows the first parent
        if extra:
            head += " · also from " + ", ".join(p[:8] for p in extra)
        why = meta_text(c)
        if c.get("demos"):
            head += f" · {len(c['demos'])} demos: " + ", ".join(c["demos"])
        items.append(f"<li><div>{escape(head)}</div><pre>{escape(c['text'])}</pre>"
                     + (f"<div class=\"why\">critique / edit that made it:<pre>{escape(why)}</pre></div>" if why else "")
                     + "</li>")
    return "<h2>Lineage of the best prompt</h2><ol class=\"lineage\">" + "".join(items) + "</ol>"


def _top_candidates(view: RunView, best: str | None, top: int) -> str:
    rows = []
    for i, cid in enumerate(view.ranked()[:top], 1):
        c = view.candidates[cid]
        rows.append((f"{i} (chosen)" if cid == best else i, cid[:8], c.get("origin", ""), view.first_step[cid],
                     fmt(view.score(cid)), view.n(cid),
                     fmt(view.score(cid, "test")) if view.n(cid, "test") else "-", len(c.get("demos", ())), c["text"]))
    return f"<h2>Top {len(rows)} candidates by dev score</h2>" + _table(
        ("#", "id", "origin", "step", "dev", "n dev", "test", "demos", "prompt"), rows, text_col=8)


def _costs(view: RunView) -> str:
    def row(name: str, u: Usage) -> tuple[Any, ...]:
        return (name, f"{u.calls:,}", f"{u.prompt_tokens:,}", f"{u.completion_tokens:,}", f"{u.tokens:,}",
                f"{u.usd:.4f}", f"{u.cache_hits:,}", f"{u.seconds:.1f}")

    usage = _table(("model", "model requests", "prompt tokens", "completion tokens", "tokens", "USD", "cache hits",
                    "model seconds"),
                   [row("target", view.target_usage), row("optimizer", view.optimizer_usage),
                    row("total", view.target_usage + view.optimizer_usage)])
    facts = [("wall time (logged, all sessions)", f"{view.wall_seconds:.1f} s"),
             ("optimizer calls (what the `calls` budget counts, cache hits included)", view.optimizer_calls),
             ("rejected proposals", view.rejected)]
    s = view.summary
    if s:
        cache = s.get("cache", {})
        facts += [("scored examples during the search (what the `examples` budget caps)",
                   s.get("search", {}).get("examples", "-")),
                  ("scored examples in the final report (outside the budget)", s.get("final", {}).get("examples", "-")),
                  ("failed evaluations", s.get("failures", "-")),
                  ("response cache, last session: hits / misses / model batches",
                   f"{cache.get('hits', '-')} / {cache.get('misses', '-')} / {cache_batches(cache)}")]
    return "<h2>Cost</h2>" + usage + _table(("counter", "value"), facts, text_col=0) + _time_parts(s)


def _time_parts(summary: dict[str, Any] | None) -> str:
    """The last session's wall time split into target scoring, optimizer generation, cache and overhead."""
    timings = (summary or {}).get("timings")
    if not timings:
        return ""
    wall = float(timings.get("wall") or 0.0)
    rows = [(key.replace("_", " "), f"{float(timings.get(key) or 0.0):.2f}",
             f"{100 * float(timings.get(key) or 0.0) / wall:.0f}%" if wall > 0 else "-")
            for key in (*PARTS, "overhead")]
    rows.append(("wall time (last session)", f"{wall:.2f}", "100%" if wall > 0 else "-"))
    return "<h3 id=\"time-parts\">Where the time goes</h3>" + _table(("part", "seconds", "share"), rows, text_col=0)


def _table(head: Sequence[str], rows: Iterable[Sequence[Any]], text_col: int | None = None) -> str:
    """An HTML table; every cell is escaped here, so callers pass raw values."""
    out = ["<table><tr>" + "".join(('<th class="text">' if j == text_col else "<th>") + f"{escape(h)}</th>"
                                   for j, h in enumerate(head)) + "</tr>"]
    for r in rows:
        out.append("<tr>" + "".join(('<td class="text">' if j == text_col else "<td>") + f"{escape(str(v))}</td>"
                                    for j, v in enumerate(r)) + "</tr>")
    return "".join(out) + "</table>"
