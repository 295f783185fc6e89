"""`promptopt show RUN`: top candidates, the best prompt's lineage, and score per step, from events.jsonl."""
from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .errors import ConfigError
from .render import fmt, short
from .runlog import EVENTS, SUMMARY, read_events


@dataclass
class RunView:
    """A run reconstructed from its log."""

    candidates: dict[str, dict[str, Any]] = field(default_factory=dict)
    scores: dict[tuple[str, str], dict[str, float]] = field(default_factory=lambda: defaultdict(dict))
    first_step: dict[str, int] = field(default_factory=dict)
    notes: list[dict[str, Any]] = field(default_factory=list)
    optimizer_calls: int = 0
    summary: dict[str, Any] | None = None

    def score(self, cid: str, split: str = "dev") -> float:
        s = self.scores.get((cid, split))
        return sum(s.values()) / len(s) if s else float("nan")

    def n(self, cid: str, split: str = "dev") -> int:
        return len(self.scores.get((cid, split), {}))

    def lineage(self, cid: str) -> list[dict[str, Any]]:
        chain, seen = [], set()
        while cid in self.candidates and cid not in seen:
            seen.add(cid)
            c = self.candidates[cid]
            chain.append(c)
            cid = c["parents"][0] if c.get("parents") else ""
        return chain


def load_run(run_dir: Path) -> RunView:
    path = run_dir / EVENTS
    if not path.exists():
        raise ConfigError(f"{run_dir} is not a run directory (no {EVENTS})")
    events, _ = read_events(path)
    view = RunView()
    for e in events:
        t = e["type"]
        if t == "candidate":
            view.candidates[e["candidate_id"]] = e
            view.first_step.setdefault(e["candidate_id"], e.get("step", 0))
        elif t == "eval" and e.get("state") == "complete":
            bucket = view.scores[(e["candidate_id"], e["split"])]
            for r in e["results"]:
                bucket[r["example_id"]] = r["score"]
        elif t == "note":
            view.notes.append(e)
        elif t == "optimizer_call":
            view.optimizer_calls += len(e.get("requests", ()))
    if (run_dir / SUMMARY).exists():
        view.summary = json.loads((run_dir / SUMMARY).read_text(encoding="utf-8"))
    return view


def best_by_step(view: RunView) -> list[tuple[int, float, int]]:
    """(step, best dev score among candidates proposed up to that step, candidates so far)."""
    steps = sorted(set(view.first_step.values()))
    out = []
    for s in steps:
        ids = [c for c, st in view.first_step.items() if st <= s and view.n(c)]
        if ids:
            out.append((s, max(view.score(c) for c in ids), len(ids)))
    return out


def show_run(run_dir: Path, top: int = 5, console: Console | None = None) -> None:
    console = console or Console(width=120)
    view = load_run(run_dir)
    ranked = sorted((c for c in view.candidates if view.n(c)), key=lambda c: -view.score(c))
    t = Table(title=f"top candidates — {run_dir}")
    for col in ("id", "origin", "dev", "n", "test", "prompt"):
        t.add_column(col, overflow="fold")
    for cid in ranked[:top]:
        c = view.candidates[cid]
        t.add_row(cid[:8], c.get("origin", ""), fmt(view.score(cid)), str(view.n(cid)),
                  fmt(view.score(cid, "test")) if view.n(cid, "test") else "-", short(c["text"], 60))
    console.print(t)
    best = view.summary["best_id"] if view.summary else (ranked[0] if ranked else None)
    if best:
        console.print("[bold]lineage of the best prompt[/bold] (newest first):")
        for c in view.lineage(best):
            why = c.get("meta", {}).get("gradient") or c.get("meta", {}).get("edit") or ""
            console.print(escape(f"  {c['candidate_id'][:8]} [{c.get('origin', '')}] "
                                 f"dev {fmt(view.score(c['candidate_id']))}: {short(c['text'], 80)}"))
            if why:
                console.print(escape(f"      because: {short(str(why), 100)}"))
    steps = Table(title="best dev score by step")
    for col in ("step", "best dev", "candidates"):
        steps.add_column(col, justify="right")
    for s, b, n in best_by_step(view):
        steps.add_row(str(s), fmt(b), str(n))
    console.print(steps)
    rejected = sum(1 for n in view.notes if n.get("kind", "").endswith("rejected"))
    console.print(f"candidates {len(view.candidates)} · optimizer calls {view.optimizer_calls} · "
                  f"rejected proposals {rejected}")
    if view.summary:
        console.print(f"stop: {view.summary.get('stop_reason')} · seed dev {fmt(view.summary.get('seed_dev'))} "
                      f"→ best dev {fmt(view.summary.get('best_dev'))}, test {fmt(view.summary.get('best_test'))}")
