"""A deterministic in-process backend for fast tests: no model, but real Backend semantics.

Log-likelihoods are a fixed function of the text (so scores differ between prompts and are
reproducible); generation replays scripted replies, or writes a deterministic instruction variant when none are left.
"""
from __future__ import annotations

import hashlib
import math
import time
from typing import Callable, Sequence

from pydantic import NonNegativeFloat, NonNegativeInt, confloat

from promptopt.backends.base import (CHAT, GENERATE, LOGLIKELIHOOD, BackendOptions, GenRequest, GenResult, LLRequest,
                                     LLResult)
from promptopt.errors import BackendError
from promptopt.registry import register_backend
from promptopt.types import Usage


def _unit(text: str) -> float:
    """A stable pseudo-random number in [0, 1) derived from text."""
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big") / 2**64


_WORDS = ("clearly", "carefully", "briefly", "precisely", "think", "label", "answer", "read", "decide", "check")


def _variant(text: str, seed: int | None) -> str:
    """A deterministic new instruction derived from the request: lets strategies run on the fake."""
    k = int(_unit(f"{seed}\x00{text}") * 1e9)
    return (f"Read the text {_WORDS[k % 10]}, {_WORDS[(k // 10) % 10]} and {_WORDS[(k // 100) % 10]}, "
            "then give the answer.")


class FakeOptions(BackendOptions):
    fail_every: NonNegativeInt = 0  # every Nth batch call raises a (non-fatal) BackendError
    fail_rate: confloat(ge=0, lt=1) = 0.0  # type: ignore[valid-type]  # share of requests that fail, by content
    delay: NonNegativeFloat = 0.0


@register_backend("fake")
class FakeBackend:
    capabilities = frozenset({GENERATE, LOGLIKELIHOOD, CHAT})
    Options = FakeOptions

    def __init__(self, model: str = "fake", replies: Sequence[str] | Callable[[GenRequest], str] = (),
                 fail_every: int = 0, fail_rate: float = 0.0, delay: float = 0.0, **_: object):
        self.model = model
        self._replies = replies if callable(replies) else list(replies)
        self.fail_every = fail_every
        # Chosen by the request's text, not by call order: the same requests fail in a resumed run.
        self.fail_rate = fail_rate
        self.delay = delay  # seconds per batch call: lets crash tests kill a run mid-call
        self.calls = 0  # batch calls made (tests assert on this, e.g. zero after a cache re-run)
        self.requests = 0

    def fingerprint(self) -> str:
        return f"fake:{self.model}"

    def _tick(self, n: int) -> None:
        if self.delay:
            time.sleep(self.delay)
        self.calls += 1
        self.requests += n
        if self.fail_every and self.calls % self.fail_every == 0:
            raise BackendError("fake backend: injected failure", retryable=False)

    def generate(self, reqs: Sequence[GenRequest]) -> list[GenResult]:
        self._tick(len(reqs))
        out = []
        for r in reqs:
            text = r.prompt or "\n".join(c for _, c in r.messages)
            if callable(self._replies):
                reply = self._replies(r)
            elif self._replies:
                reply = self._replies.pop(0)
            else:
                reply = _variant(text, r.seed)
            out.append(GenResult(reply, "stop", Usage(1, len(text.split()), len(reply.split()))))
        return out

    def loglikelihood(self, reqs: Sequence[LLRequest]) -> list[LLResult]:
        self._tick(len(reqs))
        return [LLResult(math.nan, usage=Usage(1, 0, 0), error="fake backend: injected request failure")
                if self.fail_rate and _unit("fail\x00" + r.context) < self.fail_rate else
                LLResult(-1.0 - 4.0 * _unit(r.context + "\x00" + r.continuation),
                         usage=Usage(1, len((r.context + r.continuation).split()), 0)) for r in reqs]
