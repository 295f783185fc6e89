"""The HTTP plumbing shared by the test server and the fault proxy: a quiet keep-alive handler, a
threaded server on 127.0.0.1 that stops itself after `max_lifetime` seconds, and `respond`."""
from __future__ import annotations

import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Mapping, TypeVar

S = TypeVar("S", bound="LocalService")


class Handler(BaseHTTPRequestHandler):
    """Hands every GET and POST (with its raw body) to the server's owner: `owner._handle(h, body)`."""

    protocol_version = "HTTP/1.1"  # keep-alive, as real servers do
    disable_nagle_algorithm = True  # headers and body go out in two writes: no 40 ms delayed-ACK stall
    timeout = 30  # idle keep-alive connections release their thread
    server: "_Server"

    def log_message(self, format: str, *args: Any) -> None:  # quiet in tests
        pass

    def do_GET(self) -> None:
        self.server.owner._handle(self, b"")

    def do_POST(self) -> None:
        self.server.owner._handle(self, self.rfile.read(int(self.headers.get("Content-Length") or 0)))


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256  # many concurrent connects must not overflow the listen backlog
    owner: "LocalService"

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that hung up mid-reply (a timeout, a test that moved on) is normal here, not news."""
        if not isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
            super().handle_error(request, client_address)


class LocalService:
    """Base of a server on a free port of 127.0.0.1; use as a context manager. Subclasses set
    `max_lifetime` and implement `_handle(h, body)`."""

    max_lifetime: float

    _httpd: _Server | None = None
    _timer: threading.Timer | None = None
    stopped: threading.Event  # set once stop() has closed the port (tests wait on it instead of sleeping)

    @property
    def port(self) -> int:
        assert self._httpd is not None, f"{type(self).__name__} not started"
        return self._httpd.server_address[1]

    def start(self: S) -> S:
        self.stopped = threading.Event()
        self._httpd = _Server(("127.0.0.1", 0), Handler)
        self._httpd.owner = self
        threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                         daemon=True).start()
        self._timer = threading.Timer(self.max_lifetime, self.stop)
        self._timer.daemon = True
        self._timer.start()
        return self

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self.stopped.set()

    def __enter__(self: S) -> S:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _handle(self, h: Handler, body: bytes) -> None:
        raise NotImplementedError


def respond(h: Handler, status: int, data: bytes, headers: Mapping[str, str] | None = None,
            send: int | None = None) -> None:
    """Send a response (JSON unless `headers` name a Content-Type). `send` < len(data) announces
    the full length but stops early and closes, which is what a truncated body looks like to a client."""
    headers = headers or {}
    h.send_response(status)
    for k, v in headers.items():
        h.send_header(k, v)
    if not any(k.lower() == "content-type" for k in headers):
        h.send_header("Content-Type", "application/json")
    h.send_header("Content-Length", str(len(data)))
    if send is not None:
        h.send_header("Connection", "close")
    h.end_headers()
    h.wfile.write(data if send is None else data[:send])
    if send is not None:
        h.wfile.flush()
        h.close_connection = True
