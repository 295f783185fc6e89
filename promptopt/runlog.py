"""The append-only run log: runs/<id>/{config.json, events.jsonl, summary.json}.

Every event is one JSON line written with a single append and flushed, so a crash leaves at most one
partial last line, which reading detects and drops. Resume = replay: the loop runs again from the
start with the same seed; while its events match the recorded ones they are not written again, and
recorded model responses are served instead of calling a model. Past the end of the log the run is live.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import secrets
import shutil
import time
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

from promptopt.errors import ConfigError, ResumeError, RunStopped
from promptopt.types import Usage

EVENTS = "events.jsonl"
CONFIG = "config.json"
SUMMARY = "summary.json"
# Events outside the replayed stream: they describe sessions, not the search.
SESSION_EVENTS = frozenset({"run.start", "run.resume", "run.end", "run.stop"})
# Every line ends with `,"sum":"<16 hex>"}`: the sha256 of the line's bytes without it (closed by "}").
_SUM = re.compile(rb',"sum":"([0-9a-f]{16})"\}$')
# What a run name may be: one path component, no hidden or parent names.
RUN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
# Events that open a session (a start or a resume); wall time is summed per session.
_SESSION_OPENERS = frozenset({"run.start", "run.resume"})


def read_events(path: Path) -> tuple[list[dict[str, Any]], int]:
    """Parse events.jsonl. Returns the complete events and the byte length they occupy; a partial
    or corrupt last line (from a crash mid-write) is excluded."""
    events: list[dict[str, Any]] = []
    good = 0
    with open(path, "rb") as f:
        data = f.read()
    pos = 0
    summed = None  # whether this log's lines carry checksums (logs written before them do not)
    while pos < len(data):
        end = data.find(b"\n", pos)
        if end < 0:
            break  # no newline: the last write never finished
        line, n = data[pos:end], len(events) + 1
        try:
            event = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError):
            if data.find(b"\n", end + 1) >= 0:
                raise ResumeError(f"{path}: corrupt line {n} in the middle of the log")
            break
        if not isinstance(event, dict) or not isinstance(event.get("type"), str):
            raise ResumeError(f"{path}: line {n} is not an event (a JSON object with a \"type\")")
        found = _SUM.search(line)
        summed = bool(found) if summed is None else summed
        if summed and (not found or _line_sum(line[:found.start()] + b"}") != found[1].decode()):
            raise ResumeError(f"{path}: line {n} fails its checksum: the log was edited or damaged "
                              "(restore it, or start a new run)")
        event.pop("sum", None)
        events.append(event)
        pos = good = end + 1
    return events, good


def _line_sum(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()[:16]


def clean_temp_files(run_dir: Path) -> None:
    """Remove the temp files of an atomic write a killed process left behind (names only promptopt makes)."""
    for tmp in run_dir.glob("*.json.tmp*"):
        if re.fullmatch(r"(config|summary)\.json\.tmp\d+", tmp.name) and tmp.is_file():
            tmp.unlink()


def new_run_dir(root: Path, config: Any, name: str | None = None) -> Path:
    """Create a fresh run directory holding config.json. It is built under a hidden name and renamed
    into place, so a run dir never exists without its config; a random suffix keeps parallel runs apart."""
    try:
        root.mkdir(parents=True, exist_ok=True)
        if not os.access(root, os.W_OK):
            raise PermissionError(13, "permission denied")
    except OSError as e:
        raise ConfigError(f"cannot create run directory {root}: {e.strerror or e}") from e
    if name is not None and not RUN_NAME.fullmatch(name):
        raise ConfigError(f"run_name {name!r}: use letters, digits, '.', '_' and '-' (one path component)")
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    for _ in range(20):
        final = root / f"{name or stamp}-{secrets.token_hex(3)}"
        staging = root / f".{final.name}.partial"
        try:
            staging.mkdir()
        except FileExistsError:
            continue
        try:
            write_json_atomic(staging / CONFIG, config)
            os.rename(staging, final)  # fails if `final` exists: then try another name
        except OSError as e:
            shutil.rmtree(staging, ignore_errors=True)  # ours, made just now: never leave it behind
            if not final.exists():
                raise ConfigError(f"cannot create run directory {final}: {e.strerror or e}") from None
            continue
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return final
    raise ConfigError(f"could not create a unique run directory under {root}")


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write via a temp file and a rename: `path` is whole or absent. A failed write (disk full,
    read-only storage) removes the temp file and raises RunStopped: nothing recorded is lost."""
    tmp = path.with_suffix(path.suffix + f".tmp{os.getpid()}")
    text = json.dumps(obj, indent=2, ensure_ascii=False, default=str) + "\n"
    try:
        with open(tmp, "wb") as f:
            f.write(text.encode("utf-8", "backslashreplace"))  # a lone surrogate stays its JSON escape
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise RunStopped(f"cannot write {path}: {e.strerror or e}") from None


class RunLog:
    """Writer (and replayer) of one run's events. Holds an exclusive lock on the run dir."""

    def __init__(self, run_dir: Path, *, resume: bool = False, fsync: bool = False):
        self.dir = Path(run_dir)
        self.path = self.dir / EVENTS
        self.fsync = fsync
        try:
            self._lock = open(self.dir / ".lock", "w")
        except OSError as e:  # read-only storage, a directory named .lock, ...
            raise ResumeError(f"cannot lock {self.dir / '.lock'}: {e.strerror or e}") from None
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock.close()
            raise ResumeError(f"{self.dir} is in use by another promptopt process") from None
        self.recorded: list[dict[str, Any]] = []
        self.sessions: list[dict[str, Any]] = []
        self.continues: str | None = None  # a run a stop condition or Ctrl-C ended: why, when resumed to go on
        if resume and (self.dir / SUMMARY).exists():  # checked under the lock: a racing resumer finished it
            self.continues = continuable(self.dir / SUMMARY)
            if self.continues is None:
                self._lock.close()
                raise ResumeError(f"{self.dir} already finished (see {self.dir / SUMMARY})")
        if resume:
            clean_temp_files(self.dir)
            if not self.path.exists():
                raise ResumeError(f"{self.dir} has no {EVENTS}; nothing to resume")
            events, good = read_events(self.path)
            if good < self.path.stat().st_size:
                os.truncate(self.path, good)  # drop the partial last line before appending
            self.sessions = [e for e in events if e["type"] in SESSION_EVENTS]
            self.recorded = replay_stream(events, continuing=self.continues is not None)
        self.elapsed_before = wall_seconds(events) if resume else 0.0  # earlier sessions, for the time budget
        self.cursor = 0  # position in `recorded` of the next event the run will produce
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    @property
    def replaying(self) -> bool:
        return self.cursor < len(self.recorded)

    def peek(self) -> dict[str, Any] | None:
        return self.recorded[self.cursor] if self.replaying else None

    def _write(self, event: dict[str, Any]) -> None:
        # backslashreplace: a lone surrogate (from data or a model) is written as its JSON escape.
        body = json.dumps(event, ensure_ascii=False, separators=(",", ":"), default=str).encode(
            "utf-8", "backslashreplace")
        line = body[:-1] + b',"sum":"' + _line_sum(body).encode() + b'"}\n'
        start = os.lseek(self._fd, 0, os.SEEK_END)
        try:
            done = os.write(self._fd, line)  # one append: no interleaving, at most one torn line
            while done < len(line):  # a short write: finish the line
                done += os.write(self._fd, line[done:])
            if self.fsync:
                os.fsync(self._fd)
        except OSError as e:  # disk full, read-only: drop the partial line, so the log stays resumable
            try:
                os.ftruncate(self._fd, start)
            except OSError:
                pass  # the torn line is dropped on resume anyway
            raise RunStopped(f"cannot write {self.path}: {e.strerror or e}") from None

    def session(self, type_: str, **data: Any) -> None:
        """Write a session event (start/resume/end); never part of the replayed stream."""
        if type_ == "run.resume" and self.continues is not None:
            data["continues"] = self.continues
        self._write({"type": type_, "time": time.time(), **data})
        if type_ == "run.resume" and self.continues is not None:
            # Only now, with the resume recorded (so a crash from here on replays the search alone), is
            # the stopped run's summary set aside: the run is in progress again.
            n = 1
            while (self.dir / f"summary.stopped-{n}.json").exists():
                n += 1
            os.replace(self.dir / SUMMARY, self.dir / f"summary.stopped-{n}.json")

    def emit(self, type_: str, **data: Any) -> dict[str, Any]:
        """Record a stream event; while replaying, check it matches the log instead of writing."""
        event = {"seq": self.cursor, "type": type_, **data}
        if self.replaying:
            old = self.recorded[self.cursor]
            if old["type"] != type_ or _identity(old) != _identity(event):
                raise ResumeError(
                    f"{self.path}: event {self.cursor} was {old['type']} {_identity(old)} but the resumed run "
                    f"produced {type_} {_identity(event)}; resume with the original configuration and seed")
            self.cursor += 1
            return old
        self.recorded.append(event)
        self.cursor += 1
        self._write({**event, "time": time.time()})
        return event

    def close(self) -> None:
        os.close(self._fd)
        self._lock.close()


# Stop reasons after which `--resume` continues the search instead of refusing a finished run.
CONTINUABLE = ("stop:", "interrupted")


def continuable(summary: Path) -> str | None:
    """The stop reason of a finished run that may go on (a stop condition, a callback's StopSearch, Ctrl-C)."""
    try:
        reason = json.loads(summary.read_text(encoding="utf-8")).get("stop_reason", "")
    except (OSError, ValueError, AttributeError):
        return None
    return reason if isinstance(reason, str) and reason.startswith(CONTINUABLE) else None


def replay_stream(events: list[dict[str, Any]], *, continuing: bool = False) -> list[dict[str, Any]]:
    """The stream a resumed run replays. A run ended by a stop condition recorded its final report's events
    after the search's (run.end's `search_events` says where the search ended); when it is resumed to go
    on, those are left out, so the search continues from where it stopped and reports again at its end."""
    stream: list[dict[str, Any]] = []
    search_end: int | None = None
    for e in events:
        if e["type"] == "run.end":
            search_end = e.get("search_events")
        elif e["type"] == "run.resume" and e.get("continues") and search_end is not None:
            del stream[search_end:]
        elif e["type"] not in SESSION_EVENTS:
            stream.append(e)
    if continuing and search_end is not None and events and events[-1]["type"] == "run.end":
        del stream[search_end:]  # this resume goes on from the stopped search
    return stream


def _identity(event: dict[str, Any]) -> tuple[Any, ...]:
    """The fields that must agree between a recorded event and its replay."""
    return tuple(event.get(k) for k in ("step", "candidate_id", "split", "purpose", "kind"))


def iter_runs(root: Path) -> Iterator[Path]:
    return (p for p in sorted(root.iterdir()) if (p / EVENTS).exists())


# ---- the one reader of a run log (show, report, compare, plots and the benches use it) -----------

def is_task_score(event: dict[str, Any]) -> bool:
    """Whether an eval event scores with the task metric (objective "task"), the only kind that is a
    dev or test score; "loss" evaluations are log-likelihoods on another scale."""
    return event.get("objective", "task") == "task"


@dataclass
class RunView:
    """A run reconstructed from its log. Scores are task-metric scores only (see is_task_score)."""

    events: list[dict[str, Any]] = field(default_factory=list)  # every complete event, in log order
    candidates: dict[str, dict[str, Any]] = field(default_factory=dict)
    scores: dict[tuple[str, str], dict[str, float]] = field(default_factory=lambda: defaultdict(dict))
    first_step: dict[str, int] = field(default_factory=dict)
    notes: list[dict[str, Any]] = field(default_factory=list)
    optimizer_calls: int = 0
    target_usage: Usage = field(default_factory=Usage)
    optimizer_usage: Usage = field(default_factory=Usage)
    wall_seconds: float = 0.0  # summed over sessions, so pauses between a crash and a resume do not count
    summary: dict[str, Any] | None = None
    # Per (candidate, split): each example's logged result (for corpus metrics and the answer distribution),
    # and the corpus metric its evaluations name (promptopt.measure.metrics), when they name one.
    results: dict[tuple[str, str], dict[str, dict[str, Any]]] = field(default_factory=lambda: defaultdict(dict))
    metrics: dict[tuple[str, str], str] = field(default_factory=dict)

    @property
    def evals(self) -> list[dict[str, Any]]:
        """Every eval event (failed ones too, any objective), in log order."""
        return [e for e in self.events if e["type"] == "eval"]

    @property
    def started(self) -> float | None:
        """Time of the run.start event."""
        return next((e["time"] for e in self.events if e["type"] == "run.start"), None)

    def score(self, cid: str, split: str = "dev") -> float:
        s = self.scores.get((cid, split))
        if s and (cid, split) in self.metrics:
            from promptopt.measure.metrics import corpus_score
            return corpus_score(self.metrics[(cid, split)], self.results[(cid, split)].values())
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

    def best_by_step(self) -> list[tuple[int, float, int]]:
        """(step, best dev score among candidates proposed up to that step, candidates so far)."""
        out = []
        for s in sorted(set(self.first_step.values())):
            ids = [c for c, st in self.first_step.items() if st <= s and self.n(c)]
            if ids:
                out.append((s, max(self.score(c) for c in ids), len(ids)))
        return out

    @property
    def rejected(self) -> int:
        """Proposals a strategy logged as rejected (never scored)."""
        return sum(1 for n in self.notes if n.get("kind", "").endswith("rejected"))

    @property
    def unscored(self) -> int:
        """Examples the search asked for that the budget left unscored (its last step, cut to fit)."""
        return sum(len(r["unscored"]) for n in self.notes if n.get("kind") == "budget.unscored" for r in n["requests"])

    def lineage(self, cid: str) -> list[dict[str, Any]]:
        chain, seen = [], set()
        while cid in self.candidates and cid not in seen:
            seen.add(cid)
            c = self.candidates[cid]
            chain.append(c)
            cid = c["parents"][0] if c.get("parents") else ""
        return chain


def wall_seconds(events: list[dict[str, Any]]) -> float:
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
    """Read a run's events.jsonl (and summary.json when it finished) into a RunView."""
    run_dir = Path(run_dir)
    path = run_dir / EVENTS
    if not path.exists():
        raise ConfigError(f"{run_dir} is not a run directory (no {EVENTS})")
    events, _ = read_events(path)
    view = RunView(events=events, wall_seconds=wall_seconds(events))
    for e in events:
        t = e["type"]
        if t == "candidate":
            view.candidates[e["candidate_id"]] = e
            view.first_step.setdefault(e["candidate_id"], e.get("step", 0))
        elif t == "eval":
            view.target_usage += Usage.from_json(e.get("usage"))  # failed evaluations cost too
            if e.get("state") == "complete" and is_task_score(e):
                bucket = view.scores[(e["candidate_id"], e["split"])]
                kept = view.results[(e["candidate_id"], e["split"])]
                if e.get("metric"):
                    view.metrics[(e["candidate_id"], e["split"])] = e["metric"]
                for r in e["results"]:
                    bucket[r["example_id"]] = r["score"]
                    kept[r["example_id"]] = r
        elif t == "note":
            view.notes.append(e)
        elif t == "optimizer_call":
            view.optimizer_calls += len(e.get("requests", ()))
            for r in e.get("responses", ()):
                view.optimizer_usage += Usage.from_json(r.get("usage"))
    if (run_dir / SUMMARY).exists():
        try:
            view.summary = json.loads((run_dir / SUMMARY).read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ConfigError(f"{run_dir / SUMMARY} is not valid JSON: {e}") from None
    return view
