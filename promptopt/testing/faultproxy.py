"""A fault-injecting HTTP proxy for testing clients of OpenAI-compatible servers.

It listens on 127.0.0.1 only, forwards each request to a real upstream server, and at chosen
rates replaces the exchange with a fault: 429 with or without Retry-After, 500/502/503, the fatal
401 (a revoked key) and 404 (a removed model), a hang
(no response until the client times out), a dropped connection, malformed JSON, a truncated
body, or a slow (but correct) response. It counts what it injected. Faults can also be queued to
hit the next requests in order, which makes tests deterministic. It stops itself after
`max_lifetime` seconds.

    with FakeOpenAIServer() as server, FaultProxy(server.url, rates={"503": 0.1}) as proxy:
        ...  # point the client at proxy.url
"""
from __future__ import annotations

import http.client
import json
import random
import threading
from collections import Counter, deque
from typing import Mapping
from urllib.parse import urlsplit

from promptopt.testing._http import Handler, LocalService, respond

FAULTS = ("429", "429_no_retry_after", "500", "502", "503", "hang", "drop", "malformed",
          "truncated", "slow", "401", "404")
FATAL = ("401", "404")  # no retry can fix these: a client must stop
_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "host",
               "proxy-connection", "te", "trailer", "upgrade"}


class FaultProxy(LocalService):
    def __init__(self, upstream: str, rates: Mapping[str, float] | None = None, *, seed: int = 0,
                 retry_after: float = 1.0, hang_seconds: float = 30.0, slow_seconds: float = 0.5,
                 max_lifetime: float = 600.0):
        rates = dict(rates or {})
        unknown = set(rates) - set(FAULTS)
        if unknown:
            raise ValueError(f"unknown fault kinds {sorted(unknown)}; known: {', '.join(FAULTS)}")
        if sum(rates.values()) > 1.0 or any(r < 0 for r in rates.values()):
            raise ValueError("fault rates must be >= 0 and sum to at most 1")
        parts = urlsplit(upstream)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"upstream {upstream!r} is not an http(s) URL")
        self._upstream = parts
        self.rates = rates
        self.retry_after = retry_after
        self.hang_seconds = hang_seconds
        self.slow_seconds = slow_seconds
        self.max_lifetime = max_lifetime
        self.injected: Counter[str] = Counter()
        self.requests = 0
        self.forwarded = 0  # requests that reached the upstream (slow/malformed/truncated included)
        self.peak_in_flight = 0  # most requests waiting on the upstream at once: the concurrency it saw
        self._in_flight = 0
        self._planned: deque[str | None] = deque()
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._stopping = threading.Event()

    @property
    def url(self) -> str:
        """The proxy's base URL: the upstream's path on the proxy's port."""
        return f"http://127.0.0.1:{self.port}{self._upstream.path.rstrip('/')}"

    def queue(self, *faults: str | None) -> None:
        """Inject these faults, in order, into the next requests (None lets one through)."""
        unknown = {f for f in faults if f is not None} - set(FAULTS)
        if unknown:
            raise ValueError(f"unknown fault kinds {sorted(unknown)}")
        with self._lock:
            self._planned.extend(faults)

    def stop(self) -> None:
        self._stopping.set()  # releases hanging handlers
        super().stop()

    # --- per request ----------------------------------------------------------------------

    def _choose(self) -> str | None:
        with self._lock:
            self.requests += 1
            if self._planned:
                fault = self._planned.popleft()
            else:
                fault, edge, draw = None, 0.0, self._rng.random()
                for kind, rate in self.rates.items():
                    edge += rate
                    if draw < edge:
                        fault = kind
                        break
            if fault is not None:
                self.injected[fault] += 1
            return fault

    def _handle(self, h: Handler, body: bytes) -> None:
        fault = self._choose()
        if fault in ("429", "429_no_retry_after", "500", "502", "503", "401", "404"):
            status = int(fault[:3])
            extra = {"Retry-After": f"{self.retry_after:g}"} if fault == "429" else {}
            return respond(h, status, _error_body(status), extra)
        if fault in ("hang", "drop"):
            if fault == "hang":
                self._stopping.wait(self.hang_seconds)
            h.close_connection = True
            return
        if fault == "slow":
            self._stopping.wait(self.slow_seconds)
        status, headers, data = self._forward(h, body)
        if fault == "malformed" and status == 200:
            data = data[: len(data) // 2]  # cut JSON, but a complete HTTP message
        if fault == "truncated":
            return respond(h, status, data, headers, send=len(data) // 2)
        respond(h, status, data, headers)

    def _forward(self, h: Handler, body: bytes) -> tuple[int, dict[str, str], bytes]:
        up = self._upstream
        conn_cls = http.client.HTTPSConnection if up.scheme == "https" else http.client.HTTPConnection
        conn = conn_cls(up.hostname, up.port, timeout=self.hang_seconds + 30)
        headers = {k: v for k, v in h.headers.items() if k.lower() not in _HOP_BY_HOP}
        with self._lock:
            self._in_flight += 1
            self.peak_in_flight = max(self.peak_in_flight, self._in_flight)
        try:
            conn.request(h.command, h.path, body=body or None, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
            kept = {k: v for k, v in resp.getheaders() if k.lower() not in _HOP_BY_HOP}
            with self._lock:
                self.forwarded += 1
            return resp.status, kept, data
        except OSError as e:
            return 502, {"Content-Type": "application/json"}, json.dumps(
                {"error": {"message": f"faultproxy: upstream unreachable ({e})", "code": 502}}).encode()
        finally:
            conn.close()
            with self._lock:
                self._in_flight -= 1


def _error_body(status: int) -> bytes:
    message = {429: "Rate limit reached", 500: "Internal server error", 502: "Bad gateway",
               503: "Service unavailable", 401: "Incorrect API key provided",
               404: "The model does not exist"}[status]
    return json.dumps({"error": {"message": f"{message} (injected by faultproxy)",
                                 "type": "server_error", "code": status}}).encode()
