"""The `openai` backend: any OpenAI-compatible server (OpenAI, vLLM's server, llama.cpp, ...).

Generation goes through `/chat/completions`; log-likelihoods through `/completions` with
`echo` + `logprobs` + `max_tokens=0` (or 1 where a server refuses 0), which `check()` probes once
per server before the run. On vLLM servers one-token continuations (labels, option letters) are scored
by one generated token with `logprob_token_ids` instead, which keeps the prefix cache (onetoken.py). Requests run concurrently on a private event loop, bounded by
`concurrency` and optional requests/tokens-per-minute limits, retried only when retrying can help.
"""
from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import os
import threading
import time
import weakref
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Iterable, Literal, Mapping, Sequence, TypeVar
from urllib.parse import urlsplit

from pydantic import Field, NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt, field_validator

from promptopt.backends.base import (CHAT, GENERATE, LOGLIKELIHOOD, BackendOptions, GenRequest, GenResult, LLRequest,
                                     LLResult)
from promptopt.errors import CapabilityError, ConfigError
from promptopt.registry import register_backend
from promptopt.types import Usage
from promptopt.backends.openai.limits import Clock, Pause, RateLimiter
from promptopt.backends.openai import chat as chatroute, onetoken
from promptopt.backends.openai.logprobs import EchoedPrompt, continuation_logprob, echoed_prompt
from promptopt.backends.openai.aioloop import LoopThread
from promptopt.backends.openai.prices import Price, price_for, price_table, usd
from promptopt.backends.openai.retry import CallStats, retrying
from promptopt.backends.openai.transport import OpenAIRequestError, Server, display_url

T = TypeVar("T")
Scored = tuple[float, bool, tuple[float, ...]]  # logprob, is_greedy, per-token logprobs
OPENAI_URL = "https://api.openai.com/v1"
log = logging.getLogger("promptopt")
_PROBE_TEXT = "The quick brown fox jumps over the lazy dog."
_PROBE_TAIL = " lazy dog."
_PROBE_ONE = ("The quick brown fox jumps over the lazy", " dog")  # one-token probe, checked against echo
_PROBE_ONE_TOLERANCE = 0.05  # nats: catches a different quantity, not kernel noise (bf16 servers)
_PROBE_LL_RETRIES = 2  # llama.cpp answers echo with a 500: absorb a blip, not a refusal


@dataclass(frozen=True)
class _ServerInfo:
    """What check() learned about one server."""

    url: str
    served_model: str  # the model id the server reports in its responses
    chat_error: str | None  # why chat completions do not work, if they do not
    ll_max_tokens: int | None  # 0 or 1: what echo+logprobs needs; None when unsupported
    ll_error: str | None
    one_token: bool = False  # a vLLM server whose logprob_token_ids route matched echo on the probe
    one_token_note: str | None = None  # why not, for a server that says it is vLLM
    chat_params: chatroute.ChatParams = chatroute.ChatParams()  # what its chat route accepts


def _serves(info: _ServerInfo, route: str) -> bool:
    """Whether the server can score choose tasks by `route` (promptopt/scoring/routes.py)."""
    if route == "loglikelihood":
        return info.ll_max_tokens is not None
    return info.chat_error is None and (route == "generate" or info.chat_params.top_logprobs > 0)


def _base_urls(base_url: str | Sequence[str] | None) -> list[str]:
    if base_url is None:
        base_url = os.environ.get("OPENAI_BASE_URL") or OPENAI_URL
    urls = [base_url] if isinstance(base_url, str) else list(base_url)
    if not urls:
        raise ConfigError("openai backend: base_url is an empty list; give at least one server URL")
    for url in urls:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"openai backend: base_url {url!r} is not an http(s) URL "
                              "(e.g. http://127.0.0.1:8000/v1)")
    return list(dict.fromkeys(u.rstrip("/") for u in urls))


def _usage_counts(data: Mapping[str, Any]) -> tuple[int, int]:
    """(prompt, completion) tokens; 0 where a server leaves usage out or garbles it."""
    usage = data.get("usage")
    try:
        return int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)
    except (AttributeError, TypeError, ValueError):
        return 0, 0


def _cached_tokens(data: Mapping[str, Any]) -> int:
    """Prompt tokens the provider read from its prompt cache (`usage.prompt_tokens_details.cached_tokens`,
    OpenAI's field, which vLLM also fills when asked to); 0 where it is absent."""
    try:
        return max(0, int(data["usage"]["prompt_tokens_details"]["cached_tokens"] or 0))
    except (KeyError, TypeError, ValueError):
        return 0


async def _gather(coros: Iterable[Awaitable[T]]) -> list[T]:
    """Like asyncio.gather, but a raised (fatal) error cancels the other requests at once."""
    tasks = [asyncio.ensure_future(c) for c in coros]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


def _shutdown(loop: LoopThread, servers: list[Server]) -> None:
    async def close_clients() -> None:
        for server in servers:
            await server.aclose()
    loop.stop(close_clients)


class OpenAIOptions(BackendOptions):
    # An optimizer on this backend talks to the target's servers with the target's key unless told
    # otherwise: a key never goes to a default host the user did not name.
    inherited = frozenset({"base_url", "api_key_env", "timeout", "max_retries", "backoff", "max_wait",
                           "probe_timeout", "prices"})

    base_url: str | list[str] | None = None
    api_key_env: str = Field("OPENAI_API_KEY", min_length=1)
    concurrency: PositiveInt = 32
    rpm: PositiveFloat | None = None
    tpm: PositiveFloat | None = None
    timeout: PositiveFloat = 60.0
    probe_timeout: PositiveFloat = 10.0
    max_retries: NonNegativeInt = 6
    prices: dict[str, list[NonNegativeFloat]] | None = None
    backoff: NonNegativeFloat = 0.5
    max_wait: NonNegativeFloat = 60.0
    one_token: bool = True  # on vLLM servers, score one-token continuations by one generated token
    # Reasoning models refuse `max_tokens` and want `max_completion_tokens`; the start-up probe switches on a
    # refusal that names it, this starts there (one refused probe fewer).
    max_tokens_param: Literal["max_tokens", "max_completion_tokens"] = "max_tokens"
    choose_route: Literal["auto", "loglikelihood", "chat_logprobs", "generate"] = "auto"

    @field_validator("prices")
    @classmethod
    def _two_prices(cls, prices: dict[str, list[float]] | None) -> dict[str, list[float]] | None:
        for model, values in (prices or {}).items():
            if len(values) not in (2, 3):
                raise ValueError(f"{model!r}: give [USD per 1M input tokens, USD per 1M output tokens] "
                                 "or [input, output, cached input]")
        return prices

    def urls(self) -> list[str]:
        return [display_url(u) for u in _base_urls(self.base_url)]


@register_backend("openai")
class OpenAIBackend:
    """A model behind one or more OpenAI-compatible servers (load spread over all of them).

    The API key is read from the environment variable `api_key_env` and only ever sent in the
    Authorization header. `prices` maps model -> (USD per 1M input, per 1M output tokens) and
    extends/overrides the defaults (a third number prices cached input). `rpm`/`tpm` cap requests and
    tokens a minute; a 429 with Retry-After pauses every request for that long (up to `max_wait`) and
    does not count against `max_retries`. `max_tokens_param` is the length field chat requests start
    with (the probe switches on a refusal). `clock` is for tests (a fake clock instead of real waiting).
    """

    Options = OpenAIOptions

    def __init__(self, model: str, base_url: str | Sequence[str] | None = None,
                 api_key_env: str = "OPENAI_API_KEY", concurrency: int = 32,
                 rpm: float | None = None, tpm: float | None = None, timeout: float = 60.0,
                 max_retries: int = 6, prices: Mapping[str, Sequence[float]] | None = None,
                 backoff: float = 0.5, max_wait: float = 60.0, probe_timeout: float = 10.0,
                 one_token: bool = True, choose_route: str = "auto", max_tokens_param: str = "max_tokens",
                 clock: Clock | None = None, **_: object):
        if not model:
            raise ConfigError("openai backend: name a model, e.g. model='gpt-4o-mini'")
        if concurrency < 1 or max_retries < 0 or timeout <= 0 or backoff < 0 or max_wait < 0:
            raise ConfigError("openai backend: concurrency must be >= 1, max_retries >= 0, "
                              "timeout > 0, backoff and max_wait >= 0")
        if max_tokens_param not in ("max_tokens", "max_completion_tokens"):
            raise ConfigError(f"openai backend: max_tokens_param is {max_tokens_param!r}; "
                              "use 'max_tokens' or 'max_completion_tokens' (reasoning models)")
        urls = _base_urls(base_url)
        api_key = os.environ.get(api_key_env, "").strip() or None
        if api_key is None and any(urlsplit(u).hostname == "api.openai.com" for u in urls):
            raise ConfigError(f"openai backend: model {model!r} on {OPENAI_URL} needs an API key; "
                              f"set ${api_key_env}")
        self.model = model
        self._servers = [Server(u, api_key, api_key_env, timeout, concurrency) for u in urls]
        try:
            self._price: Price = price_for(model, price_table(prices))
        except ValueError as e:
            raise ConfigError(f"openai backend: prices: {e}") from None
        self.max_tokens_param = max_tokens_param
        self._clock = clock or Clock()
        self._cached = 0  # prompt tokens the provider served from its prompt cache
        self._retry = dict(max_retries=max_retries, backoff=backoff, max_wait=max_wait)
        self._probe_timeout = probe_timeout
        self._try_one_token = one_token
        if choose_route not in chatroute.ROUTES + ("auto",):
            raise ConfigError(f"openai backend: choose_route must be auto or one of {', '.join(chatroute.ROUTES)}, "
                              f"not {choose_route!r}")
        self._forced_route = None if choose_route == "auto" else choose_route
        self._limits = (concurrency, rpm, tpm)
        self._slots: asyncio.Semaphore  # these three are made with the loop, in _run
        self._rpm: RateLimiter | None
        self._tpm: RateLimiter | None
        self._pause: Pause
        self._stats = CallStats()
        self._usage = Usage()
        self._turn = 0  # round-robin among equally loaded servers
        self._info: dict[Server, _ServerInfo] | None = None
        self._check_lock = threading.Lock()
        # one-token route: requests sent, distinct prompts in them, LLRequests scored, LLRequests left to echo
        self._one_token = {"requests": 0, "prompts": 0, "scored": 0, "echo_fallbacks": 0}
        self._cache_start: dict[Server, dict[str, float]] = {}  # /metrics prefix-cache counters at the probe
        self._loop: LoopThread | None = None
        self._finalizer: weakref.finalize | None = None

    def __repr__(self) -> str:
        return f"OpenAIBackend(model={self.model!r}, servers={[s.url for s in self._servers]})"

    # --- public API --------------------------------------------------------------------------

    @property
    def capabilities(self) -> frozenset[str]:
        """What every server can do for this model; probes the servers on first use."""
        info = self._checked()
        caps = {GENERATE, CHAT} if all(i.chat_error is None for i in info.values()) else set()
        if all(i.ll_max_tokens is not None for i in info.values()):
            caps.add(LOGLIKELIHOOD)
        return frozenset(caps)

    def check(self, needs: Iterable[str] = ()) -> None:
        """Probe every server once (idempotent) and fail with one line if the model, key or URL is
        wrong, or if a capability in `needs` is missing, naming the server and its reason."""
        info = self._checked()
        for cap in needs:
            if cap not in self.capabilities:
                raise self._capability_error(cap, info)
        _ = self.choose_route  # a forced route the servers cannot serve fails here, before any example

    @property
    def choose_route(self) -> str:
        """How a choose task is scored here (promptopt/scoring/routes.py): the forced route, else the best that every
        server serves (loglikelihood, then chat_logprobs, then generate)."""
        info = self._checked().values()
        if self._forced_route is None:
            return next((r for r in chatroute.ROUTES if all(_serves(i, r) for i in info)), "loglikelihood")
        bad = next((i for i in info if not _serves(i, self._forced_route)), None)
        if bad is not None:
            why = {"loglikelihood": bad.ll_error, "chat_logprobs": bad.chat_error or bad.chat_params.logprobs_error,
                   "generate": bad.chat_error}[self._forced_route]
            raise CapabilityError(f"openai backend at {bad.url} (model {self.model!r}) cannot serve choose_route="
                                  f"{self._forced_route} ({why}); use backend.choose_route=auto")
        return self._forced_route

    @property
    def top_logprobs(self) -> int:
        """The most top_logprobs every server gives on chat (0: none)."""
        return min((i.chat_params.top_logprobs for i in self._checked().values()), default=0)

    def fingerprint(self) -> str:
        """The model asked for plus what the servers report serving; never URLs or keys. A route other than
        loglikelihood is part of it, so the cache keeps each route's results apart."""
        served = sorted({i.served_model for i in self._checked().values()})
        route = self.choose_route
        return f"openai:{self.model}|served:{','.join(served)}" + ("" if route == "loglikelihood" else f"|route:{route}")

    @property
    def stats(self) -> dict[str, Any]:
        """Requests sent, retries and failures by kind, and the summed usage (tokens, USD); on vLLM servers
        also the one-token route's counts and the prefix cache's hits since the probe (from /metrics)."""
        out = {**self._stats.to_json(), "usage": self._usage.to_json(), "cached_prompt_tokens": self._cached}
        if self._info and any(i.one_token for i in self._info.values()):
            out["one_token"] = dict(self._one_token)
            cache = self._run(self._prefix_cache())
            if cache is not None:
                out["prefix_cache"] = cache
        return out

    def generate(self, reqs: Sequence[GenRequest]) -> list[GenResult]:
        self.check(needs=[GENERATE])
        return self._run(_gather(self._generate_one(r) for r in reqs)) if reqs else []

    def loglikelihood(self, reqs: Sequence[LLRequest]) -> list[LLResult]:
        self.check(needs=[LOGLIKELIHOOD])
        if not reqs:
            return []
        if self._info and all(i.one_token for i in self._info.values()):
            return self._run(self._loglikelihood_one_token(list(reqs)))
        return self._run(_gather(self._loglikelihood_one(r) for r in reqs))

    def close(self) -> None:
        """Close HTTP connections and stop the private loop thread (also done at garbage collection)."""
        if self._finalizer is not None:
            self._finalizer()

    def __enter__(self) -> "OpenAIBackend":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- plumbing ------------------------------------------------------------------------------

    def _run(self, coro: Awaitable[T]) -> T:
        if self._loop is None or not self._loop.running:
            # asyncio primitives belong to one loop: a new loop (first use, or use after close())
            # gets fresh ones.
            concurrency, rpm, tpm = self._limits
            self._slots = asyncio.Semaphore(concurrency)
            self._rpm = RateLimiter(rpm, self._clock) if rpm else None
            self._tpm = RateLimiter(tpm, self._clock) if tpm else None
            self._pause = Pause(self._clock)
            self._loop = LoopThread()
            self._finalizer = weakref.finalize(self, _shutdown, self._loop, self._servers)
        return self._loop.run(coro)

    def _checked(self) -> dict[Server, _ServerInfo]:
        with self._check_lock:
            if self._info is None:
                infos = self._run(self._probe_all())
                up = [(s, i) for s, i in zip(self._servers, infos) if isinstance(i, _ServerInfo)]
                down = [(s, e) for s, e in zip(self._servers, infos) if not isinstance(e, _ServerInfo)]
                other = [e for _, e in down if not (isinstance(e, OpenAIRequestError) and e.kind == "connect")]
                if other:  # a bad key, model or URL path is every server's problem: fail
                    raise other[0]
                if not up:
                    raise down[0][1]
                for server, err in down:  # down at start: the run goes on with the others, said once
                    log.warning("openai backend: %s is not reachable (%s); sending its share to the other %d",
                                server.url, getattr(err, "detail", err), len(up))
                self._servers = [s for s, _ in up]
                self._info = dict(up)
            return self._info

    async def _probe_all(self) -> list[_ServerInfo | BaseException]:
        return await asyncio.gather(*(self._probe_within(s) for s in self._servers), return_exceptions=True)

    def _capability_error(self, cap: str, info: Mapping[Server, _ServerInfo]) -> CapabilityError:
        if cap == LOGLIKELIHOOD:
            bad = next(i for i in info.values() if i.ll_max_tokens is None)
            return CapabilityError(
                f"openai backend at {bad.url} (model {self.model!r}) cannot give prompt "
                f"log-likelihoods ({bad.ll_error}); use a task scored by generation, or serve the "
                "model with vLLM, whose /v1/completions echoes prompt logprobs")
        if cap in (GENERATE, CHAT):
            bad = next(i for i in info.values() if i.chat_error is not None)
            return CapabilityError(
                f"openai backend at {bad.url} (model {self.model!r}) cannot chat ({bad.chat_error}); "
                "serve the model with a chat template, or use a task scored by log-likelihood")
        return CapabilityError(f"openai backend (model {self.model!r}) cannot do {cap!r}; "
                               f"it can do: {', '.join(sorted(self.capabilities)) or 'nothing'}")

    def _pick(self, avoid: Server | None) -> Server:
        """The least busy server, rotating among ties; after a failure prefer another server."""
        pool = [s for s in self._servers if s is not avoid] or self._servers
        least = min(s.in_flight for s in pool)
        ties = [s for s in pool if s.in_flight == least]
        self._turn += 1
        return ties[self._turn % len(ties)]

    async def _attempt(self, server: Server, path: str, payload: dict[str, Any],
                       parse: Callable[[dict[str, Any], Server], T], est_tokens: int) -> T:
        # Limits are taken before a concurrency slot so waiting on them never holds a slot.
        await self._pause.wait()
        if self._rpm:
            await self._rpm.acquire(1)
        if self._tpm:
            await self._tpm.acquire(est_tokens)
        async with self._slots:
            server.in_flight += 1
            self._stats.requests += 1
            try:
                data = await server.post(path, self.model, payload)
            finally:
                server.in_flight -= 1
        if self._tpm:
            self._tpm.correct(sum(_usage_counts(data)) - est_tokens)
        return parse(data, server)

    async def _call(self, path: str, payload: Callable[[Server], dict[str, Any]],
                    parse: Callable[[dict[str, Any], Server], T], est_tokens: int,
                    server: Server | None = None, retry_connect: bool = True,
                    max_retries: int | None = None) -> T:
        """One logical call with retries; `server` pins it (probes), else load is spread."""
        failed: Server | None = None

        async def once() -> T:
            nonlocal failed
            target = server or self._pick(avoid=failed)
            try:
                return await self._attempt(target, path, payload(target), parse, est_tokens)
            except OpenAIRequestError:
                failed = target
                raise

        policy = {**self._retry, **({} if max_retries is None else {"max_retries": max_retries})}
        return await retrying(self._stats, retry_connect=retry_connect, clock=self._clock, pause=self._pause,
                              **policy)(once)

    def _account(self, prompt_tokens: int, completion_tokens: int, started: float, cached: int = 0) -> Usage:
        """A call's usage, its cached prompt tokens priced at the cached-input price."""
        usage = Usage(1, prompt_tokens, completion_tokens, time.monotonic() - started,
                      usd(prompt_tokens, completion_tokens, self._price, cached))
        self._cached += cached
        self._usage = self._usage + usage
        return usage

    def _failed(self, err: OpenAIRequestError, started: float) -> Usage:
        self._stats.record_failure(err.kind)  # fatal ones too: they are failures the run reports
        if err.fatal:
            raise err
        return self._account(0, 0, started)

    # --- generation ----------------------------------------------------------------------------

    def _parse_chat(self, data: dict[str, Any], server: Server,
                    top: int = 0) -> tuple[str, str, tuple[int, int, int], tuple[tuple[str, float], ...]]:
        try:
            choice = data["choices"][0]
            text = choice["message"].get("content") or ""
        except (KeyError, IndexError, TypeError, AttributeError):
            raise server.malformed(self.model, "no choices[0].message") from None
        finish = "length" if choice.get("finish_reason") == "length" else "stop"
        tops: tuple[tuple[str, float], ...] = ()
        if top:  # asked for: a reply without them is a malformed one (retried, then counted), never re-routed
            try:
                tops = chatroute.first_top_logprobs(choice)
            except ValueError as e:
                raise server.malformed(self.model, str(e)) from None
        return str(text), finish, (*_usage_counts(data), _cached_tokens(data)), tops

    async def _generate_one(self, req: GenRequest) -> GenResult:
        messages = ([{"role": r, "content": c} for r, c in req.messages]
                    or [{"role": "user", "content": req.prompt}])
        info = self._info
        assert info is not None, "check() runs before any request"

        def payload(server: Server) -> dict[str, Any]:
            return info[server].chat_params.payload(self.model, messages, req.max_tokens, req.temperature,
                                                     req.stop, req.seed, req.top_logprobs)

        est = sum(len(m["content"]) for m in messages) // 4 + req.max_tokens
        started = time.monotonic()
        try:
            text, finish, (pt, ct, cached), tops = await self._call(
                "chat/completions", payload, lambda d, s: self._parse_chat(d, s, req.top_logprobs), est)
        except OpenAIRequestError as e:
            return GenResult("", "error", self._failed(e, started), error=str(e))
        return GenResult(text, finish, self._account(pt, ct, started, cached), top_logprobs=tops)

    # --- log-likelihood ------------------------------------------------------------------------

    def _echo_payload(self, prompt: str, max_tokens: int) -> dict[str, Any]:
        return {"model": self.model, "prompt": prompt, "echo": True, "logprobs": 1,
                "max_tokens": max_tokens, "temperature": 0.0}

    def _parse_echo(self, continuation: str, max_tokens: int,
                    data: dict[str, Any]) -> tuple[EchoedPrompt, Scored]:
        """Raises ValueError when the response does not carry usable prompt logprobs."""
        choices = data.get("choices")
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], Mapping):
            raise ValueError("no choices in the response")
        # With max_tokens=1 the echo also holds the generated token; usage says where the prompt ends.
        prompt_tokens = _usage_counts(data)[0] if max_tokens else None
        try:
            echo = echoed_prompt(choices[0], prompt_tokens or None)
            return echo, continuation_logprob(echo, continuation)
        except (AttributeError, TypeError, KeyError, IndexError) as e:  # wrongly typed fields
            raise ValueError(f"unexpected logprobs layout ({type(e).__name__}: {e})") from None

    async def _loglikelihood_one(self, req: LLRequest) -> LLResult:
        started = time.monotonic()
        if not req.context:
            msg = (f"openai backend (model {self.model!r}): an empty context cannot be scored "
                   "through echo (the first token has no logprob); put the prompt before the answer")
            self._stats.record_failure("empty_context")
            return LLResult(math.nan, usage=self._account(0, 0, started), error=msg)
        info = self._info
        assert info is not None, "check() runs before any request"

        def payload(server: Server) -> dict[str, Any]:
            return self._echo_payload(req.context + req.continuation, info[server].ll_max_tokens or 0)

        def parse(data: dict[str, Any], server: Server) -> tuple[Scored, tuple[int, int]]:
            try:
                _, scored = self._parse_echo(req.continuation, info[server].ll_max_tokens or 0, data)
            except ValueError as e:
                raise server.malformed(self.model, str(e)) from None
            return scored, _usage_counts(data)

        est = len(req.context + req.continuation) // 4 + 1
        try:
            (logprob, greedy, tokens), (pt, ct) = await self._call("completions", payload, parse, est)
        except OpenAIRequestError as e:
            return LLResult(math.nan, usage=self._failed(e, started), error=str(e))
        return LLResult(logprob, greedy, tokens, self._account(pt, ct, started))

    # --- log-likelihood by one generated token (vLLM) ---------------------------------------

    async def _tokens(self, text: str, special: bool) -> list[int]:
        """Token ids from a server's /tokenize (any one: they serve the same model). Pinned to the server
        picked, as the route is outside base_url; a failure sends the request to echo, which routes around."""
        server = self._pick(avoid=None)
        return await self._call(server.root_url + "/tokenize",
                                lambda _: onetoken.tokenize_payload(self.model, text, special),
                                self._token_ids, 0, server=server, max_retries=1)

    def _token_ids(self, data: dict[str, Any], server: Server) -> list[int]:
        try:
            return onetoken.token_ids(data)
        except ValueError as e:
            raise server.malformed(self.model, str(e)) from None

    async def _plan(self, req: LLRequest, alone: dict[str, list[int]]) -> onetoken.Plan:
        if not req.context or not req.continuation:
            return onetoken.Plan(None, None, "empty context or continuation")
        if req.continuation not in alone:
            alone[req.continuation] = await self._tokens(req.continuation, special=False)
        return onetoken.plan(await self._tokens(req.context + req.continuation, special=True),
                             alone[req.continuation])

    async def _loglikelihood_one_token(self, reqs: list[LLRequest]) -> list[LLResult]:
        """One-token continuations by one generated token, many prompts a request; the rest by echo. A
        request whose tokenization cannot be read goes to echo too: nothing is dropped."""
        alone: dict[str, list[int]] = {}
        plans = await _gather(self._plan_or_echo(r, alone) for r in reqs)
        fast = [i for i, pl in enumerate(plans) if pl.label_id is not None]
        out: list[LLResult | None] = [None] * len(reqs)
        groups = onetoken.batches([plans[i].prompt_ids or () for i in fast], [plans[i].label_id or 0 for i in fast],
                                  servers=len(self._servers))
        results = await _gather(self._one_token_batch([plans[fast[j]] for j in g]) for g in groups)
        for g, res in zip(groups, results):
            for j, r in zip(g, res):
                out[fast[j]] = r
        slow = [i for i, r in enumerate(out) if r is None]
        self._one_token["echo_fallbacks"] += len(slow)
        for i, r in zip(slow, await _gather(self._loglikelihood_one(reqs[i]) for i in slow)):
            out[i] = r
        return [r for r in out if r is not None]

    async def _plan_or_echo(self, req: LLRequest, alone: dict[str, list[int]]) -> onetoken.Plan:
        try:
            return await self._plan(req, alone)
        except OpenAIRequestError as e:
            if e.fatal:
                raise
            return onetoken.Plan(None, None, f"/tokenize failed: {e.detail}")

    async def _one_token_batch(self, plans: list[onetoken.Plan]) -> list[LLResult | None]:
        """One request for these plans; None for each (so it goes to echo) when the request fails."""
        started = time.monotonic()
        at: dict[tuple[int, ...], int] = {}  # each distinct prompt once: it reads every label asked of it
        for pl in plans:
            at.setdefault(pl.prompt_ids or (), len(at))
        prompts = list(at)
        labels = [pl.label_id or 0 for pl in plans]

        def parse(data: dict[str, Any], server: Server) -> tuple[list[Scored], tuple[int, int]]:
            try:
                reads = onetoken.label_logprobs(data, len(prompts))
                return [onetoken.scored(*reads[at[pl.prompt_ids or ()]], lab) for pl, lab in zip(plans, labels)], \
                    _usage_counts(data)
            except ValueError as e:
                raise server.malformed(self.model, str(e)) from None

        est = sum(len(p) for p in prompts) + len(prompts)
        try:
            scores, (pt, ct) = await self._call(
                "completions", lambda _: onetoken.completion_payload(self.model, prompts, labels), parse, est)
        except OpenAIRequestError as e:
            if e.fatal:
                raise
            log.warning("openai backend: a one-token request failed (%s); scoring its %d prompts by echo",
                        e.detail, len(plans))
            return [None] * len(plans)
        self._one_token["requests"] += 1
        self._one_token["prompts"] += len(prompts)
        self._one_token["scored"] += len(plans)
        total = self._account(pt, ct, started)
        n = len(plans)  # the request's usage, shared out so the per-result sums equal it
        return [LLResult(lp, greedy, toks, Usage(1 if i == 0 else 0, pt // n + (i < pt % n), ct // n + (i < ct % n),
                                               total.seconds / n, total.usd / n))
                for i, (lp, greedy, toks) in enumerate(scores)]

    async def _prefix_cache(self) -> dict[str, Any] | None:
        """Prompt tokens looked up in and read from vLLM's prefix cache since the probe, all servers."""
        now = {s: onetoken.prefix_cache_counters(await s.get_text(s.root_url + "/metrics") or "")
               for s in self._servers}
        if not all(now.values()):
            return None
        queries = sum(now[s].get("queries", 0) - self._cache_start.get(s, {}).get("queries", 0) for s in now)
        hits = sum(now[s].get("hits", 0) - self._cache_start.get(s, {}).get("hits", 0) for s in now)
        return {"queried_tokens": int(queries), "hit_tokens": int(hits),
                "hit_rate": round(hits / queries, 4) if queries else None}

    async def _probe_one_token(self, server: Server, ll_max_tokens: int) -> tuple[bool, str | None]:
        """Whether this server is vLLM and its one-token route gives what echo gives on a probe text."""
        version = await server.get_text(server.root_url + "/version")
        if not version or '"version"' not in version:
            return False, None  # not vLLM: echo it is, nothing to say
        context, continuation = _PROBE_ONE
        try:
            alone = await self._call(server.root_url + "/tokenize",
                                     lambda _: onetoken.tokenize_payload(self.model, continuation, False),
                                     self._token_ids, 0, server=server, retry_connect=False, max_retries=0)
            full = await self._call(server.root_url + "/tokenize",
                                    lambda _: onetoken.tokenize_payload(self.model, context + continuation, True),
                                    self._token_ids, 0, server=server, retry_connect=False, max_retries=0)
            pl = onetoken.plan(full, alone)
            if pl.label_id is None:
                return False, f"the probe's answer is not one token ({pl.why_not})"
            label = pl.label_id
            fast = await self._call(
                "completions", lambda _: onetoken.completion_payload(self.model, [pl.prompt_ids or ()], [label]),
                lambda d, _: onetoken.label_logprobs(d, 1)[0], 8, server=server, retry_connect=False,
                max_retries=0)
            echo = await self._call(
                "completions", lambda _: self._echo_payload(context + continuation, ll_max_tokens),
                lambda d, _: self._parse_echo(continuation, ll_max_tokens, d)[1], 16, server=server,
                retry_connect=False, max_retries=0)
        except (OpenAIRequestError, ValueError) as e:
            return False, f"its one-token route (logprob_token_ids) failed: {getattr(e, 'detail', e)}"
        lp = fast[0].get(label)
        if lp is None or not abs(lp - echo[0]) <= _PROBE_ONE_TOLERANCE:  # written so that NaN fails too
            return False, f"its one-token logprob ({lp}) differs from echo's ({echo[0]:.4f})"
        self._cache_start[server] = onetoken.prefix_cache_counters(
            await server.get_text(server.root_url + "/metrics") or "")
        return True, None

    # --- start-up probe ------------------------------------------------------------------------

    async def _probe_within(self, server: Server) -> _ServerInfo:
        """The probe under its own deadline: a server that accepts connections but never answers fails
        start-up in probe_timeout seconds, not after timeout x retries, and says what it waited for."""
        what = f"a 1-token chat completion and an echo completion for model {self.model!r}"
        log.info("openai backend: probing %s (%s), up to %gs", server.url, what, self._probe_timeout)
        try:
            return await asyncio.wait_for(self._probe(server), self._probe_timeout)
        except asyncio.TimeoutError:
            raise OpenAIRequestError(
                f"openai backend at {server.url}: no answer within {self._probe_timeout:g}s to the start-up "
                f"probe ({what}); check that the server is up and serves this model, or raise "
                "backend.probe_timeout", kind="probe_timeout", fatal=True) from None

    async def _probe(self, server: Server) -> _ServerInfo:
        """Chat with max_tokens=1, then echo+logprobs with max_tokens=0 (or 1). A refused
        connection, bad key, unknown model or wrong URL raises; an unsupported endpoint is noted."""
        chat_model, chat_error, params = None, None, chatroute.ChatParams()
        try:
            chat_model, params = await self._probe_chat(server)
        except OpenAIRequestError as e:
            if e.fatal or e.retryable:
                raise
            chat_error = e.detail
        ll_model, ll_max_tokens, ll_error = None, None, None
        for max_tokens in (0, 1):
            try:
                ll_model = await self._call(
                    "completions", lambda _: self._echo_payload(_PROBE_TEXT, max_tokens),
                    lambda d, _: self._validate_probe(d, max_tokens), 16, server=server,
                    retry_connect=False, max_retries=min(_PROBE_LL_RETRIES, self._retry["max_retries"]))
                ll_max_tokens = max_tokens
                break
            except OpenAIRequestError as e:
                if e.fatal and chat_error is not None:
                    raise  # a bad key or URL explains both failures
                ll_error = e.detail
                if e.kind not in ("http_400", "http_422"):
                    break  # only a refused max_tokens=0 is worth asking again with 1
            except ValueError as e:
                ll_error = f"/completions with echo gave no usable prompt logprobs: {e}"
        if chat_error is not None and ll_max_tokens is None:
            raise OpenAIRequestError(
                f"openai backend at {server.url} (model {self.model!r}): neither chat completions "
                f"({chat_error}) nor /completions with echo ({ll_error}) work; check base_url and model",
                kind="unsupported", fatal=True)
        served = chat_model or ll_model or self.model
        one_token, note = (False, None) if ll_max_tokens is None or not self._try_one_token else \
            await self._probe_one_token(server, ll_max_tokens)
        if note:
            log.warning("openai backend at %s says it is vLLM, but %s; scoring by echo", server.url, note)
        return _ServerInfo(server.url, served, chat_error, ll_max_tokens,
                           None if ll_max_tokens is not None else ll_error, one_token, note, params)

    async def _probe_chat(self, server: Server) -> tuple[str, chatroute.ChatParams]:
        """A 1-token chat completion, asked again without each parameter the server refuses by name (reasoning
        models refuse temperature and max_tokens); then the most top_logprobs it gives (0: none)."""
        params = chatroute.ChatParams(max_tokens_key=self.max_tokens_param)  # the probe switches it if refused
        messages = [{"role": "user", "content": "Say OK."}]
        for _ in range(3):
            try:
                model = await self._call("chat/completions", lambda _: params.payload(self.model, messages, 1),
                                         lambda d, _: str(d.get("model") or ""), 8, server=server,
                                         retry_connect=False)
                break
            except OpenAIRequestError as e:
                changed = params.without(e.detail) if e.kind in ("http_400", "http_422") else None
                if changed is None:
                    raise
                params = changed
        else:
            raise OpenAIRequestError(f"openai backend at {server.url}: chat keeps refusing the probe's parameters",
                                     kind="unsupported")
        error = None
        for k in chatroute.TOP_LOGPROBS_TRIES:
            try:
                tops = await self._call(
                    "chat/completions", lambda _: params.payload(self.model, messages, 1, top_logprobs=k),
                    lambda d, _: chatroute.first_top_logprobs(d["choices"][0]), 8, server=server,
                    retry_connect=False, max_retries=min(_PROBE_LL_RETRIES, self._retry["max_retries"]))
            except OpenAIRequestError as e:
                error = e.detail
                if e.retryable:  # not a refusal: say so, as choose tasks then take the generate route
                    log.warning("openai backend at %s: the chat logprobs probe failed (%s); choose tasks will be "
                                "scored by generation unless backend.choose_route says otherwise", server.url, error)
                if e.fatal or e.kind not in ("http_400", "http_422") or not chatroute.names(e.detail, "top_logprobs"):
                    break  # logprobs refused outright, or a server error: not worth a smaller k
                continue
            except (ValueError, KeyError, IndexError, TypeError) as e:
                error = f"chat completions gave no usable top_logprobs ({e})"
                break
            if tops:
                return model, dataclasses.replace(params, top_logprobs=k)
            error = "chat completions answered logprobs with no top_logprobs"
            break
        return model, dataclasses.replace(params, top_logprobs=0, logprobs_error=error)

    def _validate_probe(self, data: dict[str, Any], max_tokens: int) -> str:
        """The server's model id, if the probe's echo carries usable prompt logprobs."""
        echo, (logprob, _, _) = self._parse_echo(_PROBE_TAIL, max_tokens, data)
        if echo.text_length < len(_PROBE_TEXT) or len(echo.tokens) < 3 or not math.isfinite(logprob):
            raise ValueError("the echo does not cover the prompt")
        return str(data.get("model") or "")
