"""A fake clock for tests of time-based behaviour (rate limits, retry waits, 429 pauses): time only
moves when something sleeps on it, by exactly what it asked, so no test waits or races a real clock."""
from __future__ import annotations

import asyncio

from promptopt.backends.openai.limits import Clock


class FakeClock(Clock):
    """`now()` starts at `start`; `sleep(s)` records `s`, yields to the event loop once (so tasks that
    start waiting at the same moment all read the same time), then moves time on to the sleeper's
    wake-up time, never back: waits in sequence add up, waits side by side overlap."""

    def __init__(self, start: float = 1000.0):
        self.time = start
        self.slept: list[float] = []

    def now(self) -> float:
        return self.time

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        wake = self.time + seconds
        await asyncio.sleep(0)
        self.time = max(self.time, wake)
