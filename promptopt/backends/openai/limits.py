"""Client-side requests-per-minute and tokens-per-minute limits.

Providers enforce per-minute limits over windows shorter than a minute, so a full minute's
allowance sent at once still draws 429s. The bucket therefore refills continuously and holds
at most one second's worth, which spreads the allowance evenly.
"""
from __future__ import annotations

import asyncio
import time


class RateLimiter:
    def __init__(self, per_minute: float):
        if per_minute <= 0:
            raise ValueError("a per-minute limit must be positive")
        self.rate = per_minute / 60.0  # units per second
        self.capacity = max(self.rate, 1.0)
        self.level = self.capacity
        self._updated = time.monotonic()
        self._lock = asyncio.Lock()  # first come, first served

    def _refill(self) -> None:
        now = time.monotonic()
        self.level = min(self.capacity, self.level + (now - self._updated) * self.rate)
        self._updated = now

    async def acquire(self, amount: float) -> None:
        """Wait until `amount` may be spent. An amount above the capacity waits for a full
        bucket and then leaves a debt, so big requests still pass and the long-run rate holds."""
        async with self._lock:
            self._refill()
            need = min(amount, self.capacity)
            if self.level < need:
                await asyncio.sleep((need - self.level) / self.rate)
                self._refill()
            self.level -= amount

    def correct(self, delta: float) -> None:
        """Charge (or refund, if negative) the difference between an estimate and the real cost."""
        self.level -= delta
