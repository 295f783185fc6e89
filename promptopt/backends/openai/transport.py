"""One HTTP exchange with one OpenAI-compatible server, and how its failures are classified.

httpx is used directly rather than the `openai` SDK: only three JSON endpoints are needed, and
the backend must own retries (the SDK has its own), tell a dropped connection from a truncated
body or malformed JSON, and word every failure as one line that names the server and model.
openai>=3 ships httpx under the name `httpx2`; older installs have `httpx`. Same API.
"""
from __future__ import annotations

import email.utils
import json
import re
import time
from typing import Any, Mapping
from urllib.parse import urlsplit, urlunsplit

try:
    import httpx2 as httpx
except ModuleNotFoundError:  # pragma: no cover - depends on which openai/httpx is installed
    import httpx  # type: ignore[no-redef]

from promptopt.errors import BackendError

_CONTEXT_WORDS = ("context length", "context size", "context window", "context_length", "max_model_len")
_MAX_SERVER_TEXT = 240


class OpenAIRequestError(BackendError):
    """A request to an OpenAI-compatible server failed.

    `kind` names the failure for stats ("http_429", "timeout", "dropped", "malformed", ...).
    `fatal` marks errors no retry or other request can fix (bad key, unknown model, wrong URL):
    they sink the whole batch instead of becoming a per-request error.
    """

    def __init__(self, message: str, *, kind: str, detail: str = "", retryable: bool = False,
                 retry_after: float | None = None, fatal: bool = False):
        super().__init__(message, retryable=retryable, retry_after=retry_after, fatal=fatal)
        self.kind = kind
        self.detail = detail or message  # what happened, without server, model or advice


def display_url(url: str) -> str:
    """The URL without user:password, for messages."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))


def parse_retry_after(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """Seconds to wait from `retry-after-ms` (OpenAI) or `Retry-After` (seconds or HTTP date, counted
    from `now`, Unix time, default the current time)."""
    if "retry-after-ms" in headers:
        try:
            return max(0.0, float(headers["retry-after-ms"]) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def _one_line(text: str) -> str:
    text = re.sub(r"\s+", " ", text).strip()
    return text if len(text) <= _MAX_SERVER_TEXT else text[: _MAX_SERVER_TEXT - 1] + "…"


def server_message(body: bytes) -> tuple[str, str]:
    """(message, code) from an error body in the OpenAI shape or the common variants
    (FastAPI `detail`, plain `message`, plain text or HTML)."""
    try:
        data = json.loads(body)
    except ValueError:
        return _one_line(re.sub(r"<[^>]+>", " ", body.decode("utf-8", "replace"))), ""
    err = data.get("error", data) if isinstance(data, dict) else data
    if isinstance(err, dict):
        msg = err.get("message") or err.get("detail") or json.dumps(err)[:_MAX_SERVER_TEXT]
        return _one_line(str(msg)), str(err.get("code") or err.get("type") or "")
    return _one_line(str(err)), ""


class Server:
    """One base URL: a pooled async HTTP client and what error messages need to name."""

    def __init__(self, base_url: str, api_key: str | None, api_key_env: str, timeout: float,
                 max_connections: int):
        self.base_url = base_url.rstrip("/")
        self.url = display_url(self.base_url)
        self.in_flight = 0
        self._api_key = api_key
        self._api_key_env = api_key_env
        self._timeout = timeout
        self._max_connections = max_connections
        self._client: httpx.AsyncClient | None = None

    def __repr__(self) -> str:
        return f"Server({self.url!r})"

    def _http(self) -> httpx.AsyncClient:
        # Created on first use, i.e. inside the loop that will drive it.
        if self._client is None:
            headers = {"Authorization": f"Bearer {self._api_key}"} if self._api_key else {}
            # A plain-http server (a local vLLM) never does TLS; building the default TLS
            # context anyway costs ~0.1 s per client. Requests are relative to base_url.
            tls = self.base_url.startswith("https:")
            # A server on this machine is never reached through an HTTP(S)_PROXY from the environment.
            local = urlsplit(self.base_url).hostname in ("127.0.0.1", "localhost", "::1")
            self._client = httpx.AsyncClient(
                base_url=self.base_url + "/", headers=headers, timeout=self._timeout, verify=tls,
                trust_env=not local,
                limits=httpx.Limits(max_connections=self._max_connections,
                                    max_keepalive_connections=self._max_connections))
        return self._client

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    def redact(self, text: str) -> str:
        return text.replace(self._api_key, "***") if self._api_key else text

    def error(self, model: str, what: str, todo: str, **kw: Any) -> OpenAIRequestError:
        what = self.redact(what)
        line = f"openai backend at {self.url} (model {model!r}): {what}; {todo}"
        return OpenAIRequestError(line, detail=what, **kw)

    @property
    def root_url(self) -> str:
        """The server's root, where vLLM serves /version, /tokenize and /metrics (base_url less its /v1)."""
        return self.base_url.removesuffix("/v1")

    async def get_text(self, url: str) -> str | None:
        """GET an absolute URL on this server; None on any failure (for optional routes: /version, /metrics)."""
        try:
            resp = await self._http().get(url)
        except httpx.HTTPError:
            return None
        return resp.text if resp.status_code == 200 else None

    async def post(self, path: str, model: str, payload: Mapping[str, Any]) -> dict[str, Any]:
        """Send one request and return its JSON object, or raise OpenAIRequestError."""
        try:
            resp = await self._http().post(path, json=payload)
        except httpx.ConnectTimeout:
            raise self.error(model, "connecting timed out", "check base_url and that the server is up",
                             kind="connect", retryable=True) from None
        except httpx.ConnectError as e:
            raise self.error(model, f"cannot connect ({e or 'connection refused'})",
                             "start the server or fix base_url", kind="connect", retryable=True) from None
        except httpx.TimeoutException:
            raise self.error(model, f"no response within {self._timeout:g}s",
                             "raise timeout= or lower concurrency", kind="timeout", retryable=True) from None
        except httpx.LocalProtocolError:  # its text may quote a header, i.e. the key: not shown
            raise self.error(model, "the request could not be sent (invalid header or URL)",
                             f"check ${self._api_key_env} and base_url for stray characters",
                             kind="unsendable", fatal=True) from None
        except (httpx.TransportError, httpx.DecodingError) as e:
            raise self.error(model, f"connection dropped before the response was complete ({type(e).__name__})",
                             "check the server (or proxy) logs", kind="dropped", retryable=True) from None
        if resp.status_code >= 400:
            raise self.status_error(model, path, resp.status_code, resp.headers, resp.content)
        try:
            # Bytes that are not UTF-8 (a character cut in two) become U+FFFD: the reply is still an answer,
            # one the scorer can count as unreadable, not a failed request.
            data = json.loads(resp.content.decode("utf-8", "replace"))
        except ValueError as e:
            raise self.error(model, f"returned malformed JSON ({e})", "check the server (or proxy) logs",
                             kind="malformed", retryable=True) from None
        if not isinstance(data, dict):
            raise self.malformed(model, "the response is not a JSON object")
        return data

    def malformed(self, model: str, detail: str) -> OpenAIRequestError:
        return self.error(model, f"returned an unexpected response ({detail})",
                          "check that the server is OpenAI-compatible", kind="malformed", retryable=True)

    def status_error(self, model: str, path: str, status: int, headers: Mapping[str, str],
                     body: bytes) -> OpenAIRequestError:
        msg, code = server_message(body)
        what = f"HTTP {status} from /{path}" + (f": {msg}" if msg else "")
        kind = f"http_{status}"
        if status in (401, 403):
            todo = (f"check the key in ${self._api_key_env}" if self._api_key
                    else f"no key was sent: set ${self._api_key_env}")
            return self.error(model, what, todo, kind=kind, fatal=True)
        if status == 429 and code == "insufficient_quota":
            return self.error(model, what, "add credit to the account or use another key",
                              kind=kind, fatal=True)
        if status == 404:
            if code == "model_not_found" or ("model" in msg.lower() and model in msg):
                return self.error(model, what, f"use a model the server lists at {self.url}/models",
                                  kind=kind, fatal=True)
            return self.error(model, what, "check base_url (OpenAI-compatible servers usually end in /v1)",
                              kind=kind, fatal=True)
        if status in (408, 409, 429) or status >= 500:
            return self.error(model, what, "gave up after retrying", kind=kind, retryable=True,
                              retry_after=parse_retry_after(headers))
        if any(w in msg.lower() for w in _CONTEXT_WORDS) or code == "context_length_exceeded":
            return self.error(model, what, "shorten the prompt or lower max_tokens", kind="context_length")
        return self.error(model, what, "the server refused this request", kind=kind)
