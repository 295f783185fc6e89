"""Retry policy (tenacity) for OpenAI-compatible calls, and the counters a run reports."""
from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, wait_random_exponential

from promptopt.backends.openai.limits import Clock, Pause
from promptopt.backends.openai.transport import OpenAIRequestError

# 429s with Retry-After one call waits out before it gives up: an account that stays over its limit
# this long (at least this many Retry-After periods) is stuck, not busy.
RATE_LIMIT_WAITS = 100


@dataclass
class CallStats:
    """HTTP attempts sent, retries made and calls that failed for good, each by failure kind; and the
    429s with Retry-After that were waited out (also retries, of kind http_429), with the seconds waited."""

    requests: int = 0
    retries: int = 0
    failures: int = 0
    rate_limit_waits: int = 0
    rate_limit_seconds: float = 0.0
    retries_by_kind: Counter = field(default_factory=Counter)
    failures_by_kind: Counter = field(default_factory=Counter)

    def record_retry(self, kind: str) -> None:
        self.retries += 1
        self.retries_by_kind[kind] += 1

    def record_failure(self, kind: str) -> None:
        self.failures += 1
        self.failures_by_kind[kind] += 1

    def to_json(self) -> dict[str, Any]:
        return {"requests": self.requests, "retries": self.retries, "failures": self.failures,
                "rate_limit_waits": self.rate_limit_waits, "rate_limit_seconds": round(self.rate_limit_seconds, 3),
                "retries_by_kind": dict(sorted(self.retries_by_kind.items())),
                "failures_by_kind": dict(sorted(self.failures_by_kind.items()))}


class WaitRetryAfterOrBackoff:
    """Honor the server's Retry-After (plus up to 10% jitter so that requests told the same
    wait do not return together), capped at `max_wait`; otherwise full-jitter exponential."""

    def __init__(self, backoff: float, max_wait: float):
        self.max_wait = max_wait
        self._backoff = wait_random_exponential(multiplier=backoff, max=max_wait)

    def __call__(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        retry_after = getattr(exc, "retry_after", None)
        if retry_after is not None:
            return min(retry_after * (1 + 0.1 * random.random()), self.max_wait)
        return self._backoff(state)


def rate_limited(exc: BaseException | None) -> bool:
    """A 429 that says when to come back: the account's limit speaking, not a failure."""
    return isinstance(exc, OpenAIRequestError) and exc.kind == "http_429" and exc.retry_after is not None


class StopAfterRetries:
    """Stop after `max_retries` retries of other errors; 429s with Retry-After do not count against
    them, up to RATE_LIMIT_WAITS of them."""

    def __init__(self, max_retries: int):
        self.max_retries = max_retries
        self.others = 0
        self.waits = 0

    def __call__(self, state: RetryCallState) -> bool:
        if rate_limited(state.outcome.exception() if state.outcome else None):
            self.waits += 1
            return self.waits > RATE_LIMIT_WAITS
        self.others += 1
        return self.others > self.max_retries


def _should_retry(retry_connect: bool):
    def check(exc: BaseException) -> bool:
        if not isinstance(exc, OpenAIRequestError) or not exc.retryable:
            return False
        return retry_connect or exc.kind != "connect"
    return check


def retrying(stats: CallStats, *, max_retries: int, backoff: float, max_wait: float,
             retry_connect: bool = True, clock: Clock | None = None, pause: Pause | None = None) -> AsyncRetrying:
    """A tenacity policy retrying only retryable errors, waiting on `clock`. `retry_connect=False`
    makes a refused connection fail at once: at start it means a wrong URL or a server that is not up.
    A 429 with Retry-After also holds `pause`, which every other request waits on before it is sent."""
    clock = clock or Clock()

    def count(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        stats.record_retry(getattr(exc, "kind", "other"))
        if rate_limited(exc):
            wait = state.next_action.sleep if state.next_action else 0.0
            stats.rate_limit_waits += 1
            stats.rate_limit_seconds += wait
            if pause is not None:
                pause.hold(wait)

    return AsyncRetrying(sleep=clock.sleep, stop=StopAfterRetries(max_retries),
                         retry=retry_if_exception(_should_retry(retry_connect)),
                         wait=WaitRetryAfterOrBackoff(backoff, max_wait),
                         before_sleep=count, reraise=True)
