"""The finalists' Pareto front (several objectives, promptopt/measure/objectives.py) for `show` and `report`,
read from summary.json's "objectives"; runs without it show nothing new."""
from __future__ import annotations

import base64
from html import escape
from pathlib import Path
from typing import Any, Sequence

FRONT_PLOT = "_front.png"  # the report's front plot is <report stem>_front.png


def front_of(summary: dict[str, Any] | None) -> dict[str, Any] | None:
    obj = (summary or {}).get("objectives")
    return obj if isinstance(obj, dict) and obj.get("points") else None


def _num(v: Any) -> str:
    if v is None:
        return "-"
    return f"{v:.4f}" if isinstance(v, float) and not float(v).is_integer() else f"{v:g}"


def front_rows(obj: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of every finalist: front members first, then by rank and task score."""
    names = list(obj["names"])
    head = ["id", "front", *names, *(["scalar"] if obj.get("weights") else []), "prompt"]
    points = sorted(obj["points"], key=lambda p: (p.get("rank", 0), -(p.get("task") or 0.0)))
    rows = []
    for p in points:
        mark = ("chosen " if p["id"] == obj.get("chosen") else "") + ("yes" if p.get("front") else f"rank {p.get('rank')}")
        rows.append([p["id"][:8], mark, *[_num(p.get(n)) for n in names],
                     *([_num(p.get("scalar"))] if obj.get("weights") else []), " ".join(p.get("text", "").split())])
    return head, rows


def describe(obj: dict[str, Any]) -> str:
    dirs = obj.get("directions", {})
    named = ", ".join(f"{n} ({dirs.get(n, '?')})" for n in obj["names"])
    return (f"objectives {named} on {obj.get('split', 'dev')}; "
            f"tokens counted by {obj.get('token_counter', '?')}; chosen by {obj.get('rule', '?')}")


def print_front(console: Any, summary: dict[str, Any] | None) -> None:
    """`promptopt show`: the front as a table, when the run had several objectives."""
    obj = front_of(summary)
    if obj is None:
        return
    from rich.markup import escape as rich_escape
    from rich.table import Table
    head, rows = front_rows(obj)
    t = Table(title=f"Pareto front of the finalists ({len(obj.get('front', []))} of {len(rows)} on it)")
    for col in head:
        t.add_column(col, overflow="fold", justify="left" if col in ("id", "front", "prompt") else "right")
    for r in rows:
        t.add_row(*[rich_escape(c if i < len(r) - 1 else c[:60]) for i, c in enumerate(r)])
    console.print(t)
    console.print(rich_escape(describe(obj)))


def plot_axes(obj: dict[str, Any]) -> tuple[str, str] | None:
    """(x, y) of the front plot: the first cost objective (prompt_tokens when chosen) against task."""
    others = [n for n in obj["names"] if n != "task"]
    if not others:
        return None
    return ("prompt_tokens" if "prompt_tokens" in others else others[0]), "task"


def front_section(summary: dict[str, Any] | None, plots: Sequence[tuple[str, Path]]) -> str:
    """`promptopt report`: the front plot (inlined) and table; "" without several objectives."""
    obj = front_of(summary)
    if obj is None:
        return ""
    parts = ["<h2 id=\"pareto-front\">Objectives: the finalists' Pareto front</h2>", f"<p>{escape(describe(obj))}</p>"]
    for caption, png in plots:
        if png.name.endswith(FRONT_PLOT):
            data = base64.b64encode(png.read_bytes()).decode("ascii")
            parts.append(f"<figure><img src=\"data:image/png;base64,{data}\" alt=\"{escape(caption)}\">"
                         f"<figcaption>{escape(caption)} ({escape(png.name)})</figcaption></figure>")
    head, rows = front_rows(obj)
    parts.append("<table><tr>" + "".join(f"<th>{escape(h)}</th>" for h in head) + "</tr>" + "".join(
        "<tr>" + "".join((f"<td class=\"text\">{escape(c)}</td>" if j == len(r) - 1 else f"<td>{escape(c)}</td>")
                         for j, c in enumerate(r)) + "</tr>" for r in rows) + "</table>")
    return "\n".join(parts)
