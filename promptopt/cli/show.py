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

from promptopt.errors import ConfigError
from promptopt.cli.render import fmt, short
from promptopt.runlog import EVENTS, SUMMARY, read_events
from promptopt.types import Usage

# Events that open a session (a start or a resume); wall time is summed per session.
_SESSION_OPENERS = frozenset({"run.start", "run.resume"})


@dataclass
class RunView:
    """A run reconstructed from its log."""

    candidates: dict[str, dict[str, Any]] = field(default_factory=dict)
    scores: dict[tuple[str, str], dict[str, float]] = field(default_factory=lambda: defaultdict(dict))
    first_step: dict[str, int] = field(default_factory=dict)
    notes: list[dict[str, Any]] = field(default_factory=list)
    optimizer_calls: int = 0
    target_usage: Usage = field(default_factory=Usage)
    optimizer_usage: Usage = field(default_factory=Usage)
    wall_seconds: float = 0.0  # summed over sessions, so pauses between a crash and a resume do not count
    summary: dict[str, Any] | None = None

    def score(self, cid: str, split: str = "dev") -> float:
        s = self.scores.get((cid, split))
        return sum(s.values()) / len(s) if s else float("nan")

    def n(self, cid: str, split: str = "dev") -> int:
        return len(self.scores.get((cid, split), {}))

    def ranked(self, split: str = "dev") -> list[str]:
        """Ids of the candidates scored on `split`, best first."""
        return sorted((c for c in self.candidates if self.n(c, split)), key=lambda c: -self.score(c, split))

    def best_id(self) -> str | None:
        """The run's chosen prompt once it finished, else the best-scoring one so far."""
        if self.summary:
            return self.summary["best_id"]
        ranked = self.ranked()
        return ranked[0] if ranked else None

    @property
    def rejected(self) -> int:
        """Proposals a strategy logged as rejected (never scored)."""
        return sum(1 for n in self.notes if n.get("kind", "").endswith("rejected"))

    def lineage(self, cid: str) -> list[dict[str, Any]]:
        chain, seen = [], set()
        while cid in self.candidates and cid not in seen:
            seen.add(cid)
            c = self.candidates[cid]
            chain.append(c)
            cid = c["parents"][0] if c.get("parents") else ""
        return chain


def reason(candidate: dict[str, Any]) -> str:
    """The critique (APO's textual gradient) or edit that produced a candidate, or ""."""
    meta = candidate.get("meta", {})
    return str(meta.get("gradient") or meta.get("edit") or "")


def _wall_seconds(events: list[dict[str, Any]]) -> float:
    """Logged wall time: first to last event of each session, so the gap before a resume is not counted."""
    total = 0.0
    span: list[float] | None = None  # [first, last] event time of the current session
    for e in events:
        if "time" not in e:
            continue
        if span is None or e["type"] in _SESSION_OPENERS:
            total += span[1] - span[0] if span else 0.0
            span = [e["time"], e["time"]]
        span[1] = e["time"]
    return total + (span[1] - span[0] if span else 0.0)


def load_run(run_dir: Path) -> RunView:
    path = run_dir / EVENTS
    if not path.exists():
        raise ConfigError(f"{run_dir} is not a run directory (no {EVENTS})")
    events, _ = read_events(path)
    view = RunView(wall_seconds=_wall_seconds(events))
    for e in events:
        t = e["type"]
        if t == "candidate":
            view.candidates[e["candidate_id"]] = e
            view.first_step.setdefault(e["candidate_id"], e.get("step", 0))
        elif t == "eval":
            view.target_usage += Usage.from_json(e.get("usage"))  # failed evaluations cost too
            if e.get("state") == "complete":
                bucket = view.scores[(e["candidate_id"], e["split"])]
                for r in e["results"]:
                    bucket[r["example_id"]] = r["score"]
        elif t == "note":
            view.notes.append(e)
        elif t == "optimizer_call":
            view.optimizer_calls += len(e.get("requests", ()))
            for r in e.get("responses", ()):
                view.optimizer_usage += Usage.from_json(r.get("usage"))
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
    ranked = view.ranked()
    t = Table(title=f"top candidates — {run_dir}")
    for col in ("id", "origin", "dev", "n", "test", "prompt"):
        t.add_column(col, overflow="fold")
    for cid in ranked[:top]:
        c = view.candidates[cid]
        t.add_row(cid[:8], c.get("origin", ""), fmt(view.score(cid)), str(view.n(cid)),
                  fmt(view.score(cid, "test")) if view.n(cid, "test") else "-", short(c["text"], 60))
    console.print(t)
    best = view.best_id()
    if best:
        console.print("[bold]lineage of the best prompt[/bold] (newest first):")
        for c in view.lineage(best):
            why = reason(c)
            console.print(escape(f"  {c['candidate_id'][:8]} [{c.get('origin', '')}] "
                                 f"dev {fmt(view.score(c['candidate_id']))}: {short(c['text'], 80)}"))
            if why:
                console.print(escape(f"      because: {short(why, 100)}"))
    steps = Table(title="best dev score by step")
    for col in ("step", "best dev", "candidates"):
        steps.add_column(col, justify="right")
    for s, b, n in best_by_step(view):
        steps.add_row(str(s), fmt(b), str(n))
    console.print(steps)
    console.print(f"candidates {len(view.candidates)} · optimizer calls {view.optimizer_calls} · "
                  f"rejected proposals {view.rejected}")
    if view.summary:
        console.print(f"stop: {view.summary.get('stop_reason')} · seed dev {fmt(view.summary.get('seed_dev'))} "
                      f"→ best dev {fmt(view.summary.get('best_dev'))}, test {fmt(view.summary.get('best_test'))}")
