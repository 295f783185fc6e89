"""Retry policy (tenacity) for OpenAI-compatible calls, and the counters a run reports."""
from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt
from tenacity import wait_random_exponential

from promptopt.backends.openai.transport import OpenAIRequestError


@dataclass
class CallStats:
    """HTTP attempts sent, retries made and calls that failed for good, each by failure kind."""

    requests: int = 0
    retries: int = 0
    failures: int = 0
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


def _should_retry(retry_connect: bool):
    def check(exc: BaseException) -> bool:
        if not isinstance(exc, OpenAIRequestError) or not exc.retryable:
            return False
        return retry_connect or exc.kind != "connect"
    return check


def retrying(stats: CallStats, *, max_retries: int, backoff: float, max_wait: float,
             retry_connect: bool = True) -> AsyncRetrying:
    """A tenacity policy retrying only retryable errors. `retry_connect=False` makes a refused
    connection fail at once: at start it means a wrong URL or a server that is not up."""

    def count(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        stats.record_retry(getattr(exc, "kind", "other"))

    return AsyncRetrying(stop=stop_after_attempt(max_retries + 1),
                         retry=retry_if_exception(_should_retry(retry_connect)),
                         wait=WaitRetryAfterOrBackoff(backoff, max_wait),
                         before_sleep=count, reraise=True)
