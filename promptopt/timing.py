"""Where a run's wall time goes: target scoring, optimizer generation, the response cache, and the rest.

The loop measures (time.perf_counter) its score() call and the optimizer channel's generate; the
cache wrapper (cache.CachedBackend) measures its own lookups and writes, which the loop subtracts from
the call they happened in. Timings are wall-clock facts of one session: they go to summary.json and
the report only, never into events.jsonl, so a replayed run's events are unchanged by them."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

PARTS = ("target_scoring", "optimizer_generation", "cache")


def cache_seconds(backend: Any) -> float:
    """Seconds a (cached) backend has spent in its cache so far; 0 for one without a cache wrapper."""
    return float(getattr(backend, "cache_seconds", 0.0) or 0.0)


@dataclass
class Timings:
    """Seconds accumulated in this session, by part."""

    target_scoring: float = 0.0
    optimizer_generation: float = 0.0
    cache: float = 0.0

    def add(self, part: str, seconds: float, cache: float = 0.0) -> None:
        """`seconds` measured around a call to `part`, of which `cache` was spent in the cache."""
        cache = min(max(cache, 0.0), seconds)
        setattr(self, part, getattr(self, part) + seconds - cache)
        self.cache += cache

    def to_json(self, wall: float) -> dict[str, float]:
        """The parts and the overhead (the rest of `wall`), in seconds; the parts never exceed `wall`."""
        parts = {p: max(getattr(self, p), 0.0) for p in PARTS}
        wall = max(wall, sum(parts.values()))  # clocks agree; this only guards rounding
        out = {"wall": round(wall, 4), **{p: round(v, 4) for p, v in parts.items()}}
        out["overhead"] = round(max(wall - sum(parts.values()), 0.0), 4)
        return out


def breakdown_line(timings: dict[str, float]) -> str:
    """'time: target scoring 1.2 s (60%) · optimizer generation ... · overhead ...' for a summary's timings."""
    wall = timings.get("wall") or 0.0
    names = {"target_scoring": "target scoring", "optimizer_generation": "optimizer generation",
             "cache": "cache", "overhead": "overhead"}
    bits = []
    for key, name in names.items():
        v = float(timings.get(key) or 0.0)
        share = f" ({100 * v / wall:.0f}%)" if wall > 0 else ""
        bits.append(f"{name} {v:.2f} s{share}")
    return f"time ({wall:.1f} s): " + " · ".join(bits)
