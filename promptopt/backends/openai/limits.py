"""Client-side requests-per-minute and tokens-per-minute limits, and the clock they wait on.

Providers enforce per-minute limits over windows shorter than a minute, so a full minute's
allowance sent at once still draws 429s. The bucket therefore refills continuously and holds
at most one second's worth, which spreads the allowance evenly.
"""
from __future__ import annotations

import asyncio
import time


class Clock:
    """Monotonic time and waiting. Limits, retries and 429 pauses take one, so tests can pass a fake
    clock that jumps instead of sleeping (promptopt.testing.clock.FakeClock)."""

    def now(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


class RateLimiter:
    def __init__(self, per_minute: float, clock: Clock | None = None):
        if per_minute <= 0:
            raise ValueError("a per-minute limit must be positive")
        self.clock = clock or Clock()
        self.rate = per_minute / 60.0  # units per second
        self.capacity = max(self.rate, 1.0)
        self.level = self.capacity
        self._updated = self.clock.now()
        self._lock = asyncio.Lock()  # first come, first served

    def _refill(self) -> None:
        now = self.clock.now()
        self.level = min(self.capacity, self.level + (now - self._updated) * self.rate)
        self._updated = now

    async def acquire(self, amount: float) -> None:
        """Wait until `amount` may be spent. An amount above the capacity waits for a full
        bucket and then leaves a debt, so big requests still pass and the long-run rate holds."""
        async with self._lock:
            self._refill()
            need = min(amount, self.capacity)
            if self.level < need:
                await self.clock.sleep((need - self.level) / self.rate)
                self._refill()
            self.level -= amount

    def correct(self, delta: float) -> None:
        """Charge (or refund, if negative) the difference between an estimate and the real cost."""
        self.level -= delta


class Pause:
    """A shared hold after a 429 with Retry-After: the server said the account is over its limit, so
    every request waits it out, not just the one that was refused (the others would only draw 429s)."""

    def __init__(self, clock: Clock | None = None):
        self.clock = clock or Clock()
        self.until = 0.0

    def hold(self, seconds: float) -> None:
        self.until = max(self.until, self.clock.now() + seconds)

    async def wait(self) -> float:
        """Wait until the hold ends; returns the seconds waited."""
        waited = 0.0
        while (left := self.until - self.clock.now()) > 0:
            await self.clock.sleep(left)
            waited += left
        return waited
