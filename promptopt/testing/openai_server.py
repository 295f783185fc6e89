"""A tiny OpenAI-compatible HTTP server for tests and benchmarks: deterministic, on 127.0.0.1 only.

It serves `/v1/models`, `/v1/chat/completions` and `/v1/completions` (echo + logprobs in the
shape vLLM returns) with values that are a fixed function of the text, so tests can recompute
them. Switches imitate other servers: a key check, a small context window, a server that wants
max_tokens >= 1 with echo (older vLLM), one that cannot echo (llama.cpp: HTTP 500), one without a chat
template (a base model on vLLM), a BOS token in the echo. With `vllm=True` it also is a vLLM server:
`/version`, `/tokenize`, token-id prompts (one or a list), `logprob_token_ids` with
`return_tokens_as_token_ids`, and `/metrics` prefix-cache counters (blocks of 4 tokens);
`vllm="refuses"` claims vLLM but rejects the extension fields; `lie="nan"|"negative_index"` makes that
route lie (NaN label logprobs; choice indices counted from the end).

Hosted chat APIs: `chat_only=True` refuses `/completions` as OpenAI does for its chat models (no echo)
and answers chat as a "picking" model (its reply is the most likely word of the conversation; see
`pick_logprobs`), with `logprobs`/`top_logprobs` (at most `max_top_logprobs`, 20 as on OpenAI) on
every server. `reasoning=True` refuses `temperature`, `logprobs` and `max_tokens` as OpenAI's reasoning
models do (they take `max_completion_tokens`). Odd servers: `preamble` words before the pick (a reply
cut by max_tokens), `bad_utf8` (reply bytes that are not UTF-8), `logprobs_for` (chat logprobs stop
after that many requests). It stops itself after `max_lifetime`.

Like a hosted API account: `rpm`/`tpm` limits answer 429 with `Retry-After` (and `retry-after-ms`, as
OpenAI sends) once passed, with OpenAI's error body; a request costs its prompt tokens plus the
completion tokens it allows, as OpenAI counts. The allowance refills continuously and holds
`burst_seconds` worth, as providers enforce per-minute limits over short windows. `prompt_cache=N`
reports `usage.prompt_tokens_details.cached_tokens`: the longest prefix, in whole blocks of N tokens,
that an earlier request already sent.
"""
from __future__ import annotations

import hashlib
import json
import math
import re
import threading
import time
from collections import Counter
from typing import Any, Callable, Mapping

from promptopt.testing._http import Handler, LocalService, respond

_TOKEN = re.compile(r"\s*(?:\w+|[^\w\s])|\s+")
GREEDY_ABOVE = -1.0  # a token is the greedy choice iff its logprob is above this
GENERATED_TOKEN = " the"  # what the server "generates" after an echoed prompt
_COMPLETIONS = ("/v1/chat/completions", "/v1/completions")


def tokenize(text: str) -> list[str]:
    """Words and punctuation with their leading whitespace; the pieces join back to `text`."""
    return _TOKEN.findall(text)


def token_logprob(prefix: str, token: str) -> float:
    """The server's deterministic log-probability of `token` after `prefix`, in (-4.05, -0.05]."""
    digest = hashlib.sha256(f"{prefix}\x00{token}".encode("utf-8")).digest()
    return -0.05 - 4.0 * int.from_bytes(digest[:8], "big") / 2**64


def chat_reply(messages: list[Mapping[str, Any]]) -> str:
    return "echo: " + str(messages[-1].get("content", "")) if messages else "echo:"


_WORD = re.compile(r"\w+")


def pick_logprobs(messages: list[Mapping[str, Any]]) -> list[tuple[str, float]]:
    """The picking model's first-token distribution: every distinct word of the conversation, with a
    logprob that is a fixed function of the conversation and the word, best first."""
    text = "\x00".join(f"{m.get('role')}:{m.get('content')}" for m in messages)
    words = dict.fromkeys(w for m in messages for w in _WORD.findall(str(m.get("content") or "")))
    return sorted(((w, token_logprob(text, w)) for w in words), key=lambda t: (-t[1], t[0]))


def _send(h: Handler, status: int, body: Mapping[str, Any], headers: Mapping[str, str] | None = None) -> None:
    respond(h, status, json.dumps(body).encode("utf-8"), headers)


class Allowance:
    """A per-minute limit as a provider enforces it: refills continuously, holds `burst_seconds` worth
    (at least one unit). A cost above what it holds passes on a full allowance and leaves a debt."""

    def __init__(self, per_minute: float, burst_seconds: float, clock: Callable[[], float]):
        self.per_minute = per_minute
        self.rate = per_minute / 60.0
        self.capacity = max(self.rate * burst_seconds, 1.0)
        self.level = self.capacity
        self.clock = clock
        self.updated = clock()

    def take(self, cost: float) -> float:
        """0.0 when `cost` was taken, else the seconds until it could be."""
        now = self.clock()
        self.level = min(self.capacity, self.level + (now - self.updated) * self.rate)
        self.updated = now
        need = min(cost, self.capacity)
        if self.level < need - 1e-9:  # rounding: a client on the same clock that waited exactly is in time
            return (need - self.level) / self.rate
        self.level -= cost
        return 0.0


def _error(h: Handler, status: int, message: str, code: str | int) -> None:
    _send(h, status, {"error": {"message": message, "type": "invalid_request_error", "code": code}})


class FakeOpenAIServer(LocalService):
    """Use as a context manager; `url` is the base URL (ending in /v1) to give a client."""

    def __init__(self, model: str = "test-model", *, api_key: str | None = None, delay: float = 0.0,
                 max_context: int = 4096, echo: bool = True, echo_min_max_tokens: int = 0,
                 chat: bool = True, bos: str = "", served_model: str | None = None,
                 leak_key_in_errors: bool = False, max_lifetime: float = 120.0, vllm: bool | str = False,
                 lie: str | None = None, chat_only: bool = False, reasoning: bool = False,
                 max_top_logprobs: int = 20, preamble: str = "", bad_utf8: bool = False,
                 logprobs_for: int | None = None,
                 rpm: float | None = None, tpm: float | None = None, burst_seconds: float = 1.0,
                 prompt_cache: int = 0, clock: Callable[[], float] = time.monotonic,
                 reply: Callable[[list[Mapping[str, Any]]], str] | None = None):
        self.model = model
        self.api_key = api_key
        self.delay = delay
        self.max_context = max_context
        self.echo = echo
        self.echo_min_max_tokens = echo_min_max_tokens
        self.chat = chat
        self.bos = bos
        self.served_model = served_model or model
        self.leak_key_in_errors = leak_key_in_errors  # a careless server, to test redaction
        self.max_lifetime = max_lifetime
        self.vllm = vllm
        self.lie = lie
        self.chat_only = chat_only
        self.reasoning = reasoning
        self.max_top_logprobs = max_top_logprobs
        self.preamble = preamble
        self.bad_utf8 = bad_utf8
        self.logprobs_for = logprobs_for
        self.chat_logprobs_served = 0
        self.vocab: dict[str, int] = {}  # token -> id, assigned as tokens are first seen
        self.pieces: list[str] = []  # id -> token
        self.cache_blocks: set[tuple[int, ...]] = set()
        self.cache = {"queries": 0, "hits": 0}
        self.requests: Counter[str] = Counter()
        self.in_flight = 0
        self.max_in_flight = 0
        self.bodies: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self.clock = clock
        self.limits = {name: Allowance(limit, burst_seconds, clock)
                       for name, limit in (("requests", rpm), ("tokens", tpm)) if limit}
        self.rate_limited: Counter[str] = Counter()  # 429s sent, by the limit passed
        self.served_at: list[float] = []  # clock() of each completion request let through the limits
        self.prompt_cache = prompt_cache
        self._cached_blocks: set[tuple[Any, ...]] = set()
        self.cached_tokens = 0  # reported to clients, summed
        self.reply = reply  # the chat reply's text, if given (a bench answers each client in its own format)
        self.usage: Counter[str] = Counter()  # prompt and completion tokens of the answers sent

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    # --- request handling -------------------------------------------------------------------

    def _handle(self, h: Handler, raw: bytes) -> None:
        method, body = h.command, None
        if method == "POST":
            try:
                body = json.loads(raw)
            except ValueError:
                return _error(h, 400, "request body is not JSON", 400)
        path = h.path.split("?")[0]
        with self._lock:
            self.requests[path] += 1
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            if body is not None:
                self.bodies.append(body)
        try:
            self._route(h, method, path, body)
        finally:
            with self._lock:
                self.in_flight -= 1

    def _route(self, h: Handler, method: str, path: str, body: dict[str, Any] | None) -> None:
        sent = h.headers.get("Authorization", "")
        if self.api_key is not None and sent != f"Bearer {self.api_key}":
            shown = sent.removeprefix("Bearer ") if self.leak_key_in_errors else "sk-...redacted"
            return _error(h, 401, f"Incorrect API key provided: {shown}.", "invalid_api_key")
        # A 429 comes back at once, as from a provider's gateway; `delay` is the model's latency.
        if self.limits and body is not None and path in _COMPLETIONS and self._over_limit(h, path, body):
            return
        if self.delay:
            time.sleep(self.delay)
        if method == "GET" and path == "/v1/models":
            return _send(h, 200, {"object": "list", "data": [
                {"id": self.served_model, "object": "model", "owned_by": "promptopt-test", "root": self.model}]})
        if self.vllm and method == "GET" and path == "/version":
            return _send(h, 200, {"version": "0.0.0-promptopt-test"})
        if self.vllm and method == "GET" and path == "/metrics":
            text = (f"vllm:prefix_cache_queries_total{{model_name=\"{self.model}\"}} {self.cache['queries']}.0\n"
                    f"vllm:prefix_cache_hits_total{{model_name=\"{self.model}\"}} {self.cache['hits']}.0\n")
            return respond(h, 200, text.encode("utf-8"))
        if self.vllm and method == "POST" and path == "/tokenize" and body is not None:
            special = body.get("add_special_tokens", True)
            ids = [self._id(t) for t in ([self.bos] if self.bos and special else []) + tokenize(str(body.get("prompt")))]
            return _send(h, 200, {"tokens": ids, "count": len(ids), "max_model_len": self.max_context})
        if method != "POST" or path not in ("/v1/chat/completions", "/v1/completions"):
            return _send(h, 404, {"detail": "Not Found"})
        assert body is not None
        if body.get("model") != self.model:
            return _error(h, 404, f"The model `{body.get('model')}` does not exist.", "model_not_found")
        if path == "/v1/chat/completions":
            return self._chat(h, body)
        return self._completions(h, body)

    def _cost(self, path: str, body: dict[str, Any]) -> int:
        """Tokens a request counts against `tpm`: its prompt plus the completion it allows."""
        if path == "/v1/chat/completions":
            prompt = sum(len(tokenize(str(m.get("content", "")))) for m in body.get("messages") or [])
            allowed = body.get("max_completion_tokens") or body.get("max_tokens") or 16
        else:
            prompt = len(tokenize(str(body.get("prompt", ""))))
            allowed = body.get("max_tokens", 16)
        return prompt + int(allowed)

    def _over_limit(self, h: Handler, path: str, body: dict[str, Any]) -> bool:
        """Take this request's share of every limit, or answer 429 with when to come back."""
        costs = {"requests": 1, "tokens": self._cost(path, body)}
        with self._lock:
            waits = {name: lim.take(costs[name]) for name, lim in self.limits.items()}
            passed = [name for name, wait in waits.items() if wait > 0]
            if not passed:
                self.served_at.append(self.clock())
                return False
            for name, wait in waits.items():  # a refused request spends nothing
                if wait == 0:
                    self.limits[name].level += costs[name]
            name = max(passed, key=lambda n: waits[n])
            self.rate_limited[name] += 1
        wait, lim = waits[name], self.limits[name]
        unit = "RPM" if name == "requests" else "TPM"
        _send(h, 429, {"error": {"message": f"Rate limit reached for {self.model} on {name} per min ({unit}): "
                                            f"Limit {lim.per_minute:g}, Requested {costs[name]}. "
                                            f"Please try again in {wait * 1000:.0f}ms.",
                                 "type": name, "param": None, "code": "rate_limit_exceeded"}},
              {"retry-after-ms": f"{wait * 1000:.0f}", "Retry-After": str(math.ceil(wait))})
        return True

    def _cache_hit(self, tokens: list[Any]) -> int:
        """Prompt tokens served from the prompt cache: the longest prefix in whole `prompt_cache`-token
        blocks seen before. Every block of this prompt is cached afterwards."""
        if not self.prompt_cache:
            return 0
        blocks = [tuple(tokens[:n]) for n in range(self.prompt_cache, len(tokens) + 1, self.prompt_cache)]
        with self._lock:
            hit = 0
            for b in blocks:
                if b not in self._cached_blocks:
                    break
                hit = len(b)
            self._cached_blocks.update(blocks)
            self.cached_tokens += hit
        return hit

    def _usage(self, prompt_tokens: int, completion_tokens: int, cached: int) -> dict[str, Any]:
        usage: dict[str, Any] = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                                 "total_tokens": prompt_tokens + completion_tokens}
        with self._lock:
            self.usage.update(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens)
        if self.prompt_cache:
            usage["prompt_tokens_details"] = {"cached_tokens": cached}
        return usage

    def _too_long(self, h: Handler, prompt_tokens: int, max_tokens: int) -> bool:
        if prompt_tokens + max_tokens <= self.max_context:
            return False
        _error(h, 400, f"This model's maximum context length is {self.max_context} tokens. However, you "
                       f"requested {prompt_tokens + max_tokens} tokens ({prompt_tokens} in the prompt, "
                       f"{max_tokens} in the completion).", 400)
        return True

    def _chat(self, h: Handler, body: dict[str, Any]) -> None:
        if not self.chat:
            return _error(h, 400, "Cannot use chat template functions because tokenizer.chat_template "
                                  "is not set and no template argument was passed!", 400)
        if self.reasoning:
            refused = self._reasoning_refusal(body)
            if refused:
                return _error(h, 400, refused[0], refused[1])
        messages = body.get("messages") or []
        tokens = [(str(m.get("role")), t) for m in messages for t in tokenize(str(m.get("content", "")))]
        prompt_tokens = len(tokens)
        max_tokens = int(body.get("max_completion_tokens") or body.get("max_tokens") or 16)
        if self._too_long(h, prompt_tokens, max_tokens):
            return
        want = int(body.get("top_logprobs") or 0) if body.get("logprobs") else 0
        if want > self.max_top_logprobs:
            return _error(h, 400, f"Invalid 'top_logprobs': integer above maximum value. Expected a value <= "
                                  f"{self.max_top_logprobs}, but got {want} instead.", "integer_above_max_value")
        picks = pick_logprobs(messages)
        reply = self.reply(messages) if self.reply else \
            (self.preamble + picks[0][0]) if self.chat_only and picks else chat_reply(messages)
        for stop in body.get("stop") or []:
            reply = reply.split(stop)[0]
        pieces = tokenize(reply)
        finish = "length" if len(pieces) > max_tokens else "stop"
        reply = "".join(pieces[:max_tokens])
        choice: dict[str, Any] = {"index": 0, "finish_reason": finish,
                                  "message": {"role": "assistant", "content": "\ufffe" if self.bad_utf8 else reply}}
        if body.get("logprobs"):
            with self._lock:
                self.chat_logprobs_served += 1
                vanished = self.logprobs_for is not None and self.chat_logprobs_served > self.logprobs_for
            first = picks[0] if picks else (reply, GREEDY_ABOVE)
            choice["logprobs"] = None if vanished else {"content": [
                {"token": first[0], "logprob": first[1], "bytes": list(first[0].encode("utf-8")),
                 "top_logprobs": [{"token": w, "logprob": lp, "bytes": list(w.encode("utf-8"))}
                                  for w, lp in picks[:want]]}]}
        data = json.dumps({"id": "chatcmpl-test", "object": "chat.completion", "model": self.served_model,
                           "choices": [choice],
                           "usage": self._usage(prompt_tokens, min(len(pieces), max_tokens),
                                                self._cache_hit(tokens))}).encode("utf-8")
        # bad_utf8: the reply's bytes are not UTF-8 (a server that cut a character in two)
        respond(h, 200, data.replace(b"\\ufffe", b"\xff\xfe") if self.bad_utf8 else data)

    @staticmethod
    def _reasoning_refusal(body: Mapping[str, Any]) -> tuple[str, str] | None:
        """OpenAI's words for what its reasoning models refuse."""
        if "max_tokens" in body:
            return ("Unsupported parameter: 'max_tokens' is not supported with this model. "
                    "Use 'max_completion_tokens' instead.", "unsupported_parameter")
        if body.get("temperature") not in (None, 1, 1.0):
            return ("Unsupported value: 'temperature' does not support 0.0 with this model. "
                    "Only the default (1) value is supported.", "unsupported_value")
        for name in ("logprobs", "top_logprobs"):
            if name in body:
                return f"Unsupported parameter: '{name}' is not supported with this model.", "unsupported_parameter"
        return None

    def _id(self, token: str) -> int:
        with self._lock:
            if token not in self.vocab:
                self.vocab[token] = len(self.pieces)
                self.pieces.append(token)
            return self.vocab[token]

    def _one_token(self, h: Handler, body: dict[str, Any]) -> None:
        """vLLM's logprob_token_ids route: token-id prompts, one generated token, the labels' logprobs."""
        if self.vllm == "refuses":
            return _error(h, 400, "1 validation error: logprob_token_ids: Extra inputs are not permitted", 400)
        prompts = body.get("prompt")
        prompts = [prompts] if prompts and isinstance(prompts[0], int) else prompts
        labels = body.get("logprob_token_ids") or []
        choices, prompt_tokens = [], 0
        for i, ids in enumerate(prompts or []):
            if any(not isinstance(t, int) or not 0 <= t < len(self.pieces) for t in ids):
                return _error(h, 400, "token id out of vocabulary", 400)
            self._cache_lookup(ids)
            text = "".join(self.pieces[t] for t in ids)
            tops = {f"token_id:{t}": math.nan if self.lie == "nan" else token_logprob(text, self.pieces[t])
                    for t in labels}
            # Greedy as the echo route has it (a token above GREEDY_ABOVE is the top one): the best label
            # if one is above it, else the generated token, just above every label.
            best = max(labels, key=lambda t: tops[f"token_id:{t}"], default=None)
            if best is not None and not tops[f"token_id:{best}"] <= GREEDY_ABOVE:
                gen = best
            else:
                gen = self._id(GENERATED_TOKEN)
                tops[f"token_id:{gen}"] = GREEDY_ABOVE / 2
            choices.append({"index": i - len(prompts) if self.lie == "negative_index" else i, "text": GENERATED_TOKEN, "finish_reason": "length",
                            "logprobs": {"tokens": [f"token_id:{gen}"], "token_logprobs": [tops[f"token_id:{gen}"]],
                                         "top_logprobs": [tops], "text_offset": [0]}})
            prompt_tokens += len(ids)
        _send(h, 200, {"id": "cmpl-test", "object": "text_completion", "model": self.served_model,
                       "choices": choices, "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": len(choices),
                                                     "total_tokens": prompt_tokens + len(choices)}})

    def _cache_lookup(self, ids: list[int]) -> None:
        """Count the block-aligned prefix (4-token blocks, never the last token) already seen, then cache it."""
        with self._lock:
            self.cache["queries"] += len(ids)
            blocks = [tuple(ids[:n]) for n in range(4, len(ids), 4)]
            hit = 0
            for b in blocks:
                if b not in self.cache_blocks:
                    break
                hit = len(b)
            self.cache["hits"] += hit
            self.cache_blocks.update(blocks)

    def _completions(self, h: Handler, body: dict[str, Any]) -> None:
        if self.vllm and (body.get("logprob_token_ids") is not None or isinstance(body.get("prompt"), list)):
            return self._one_token(h, body)
        if self.chat_only:  # OpenAI's words for a chat model on the legacy route
            return _send(h, 404, {"error": {"message": "This is a chat model and not supported in the v1/completions "
                                                       "endpoint. Did you mean to use v1/chat/completions?",
                                            "type": "invalid_request_error", "param": "model", "code": None}})
        prompt = str(body.get("prompt", ""))
        max_tokens = int(body.get("max_tokens", 16))
        echo = bool(body.get("echo"))
        if echo and not self.echo:  # llama.cpp raises a runtime_error, which it sends as a 500
            return _error(h, 500, "Only no echo is supported", 500)
        if echo and max_tokens < self.echo_min_max_tokens:
            return _error(h, 400, f"max_tokens must be at least {self.echo_min_max_tokens}, got {max_tokens}.", 400)
        tokens = ([self.bos] if self.bos else []) + tokenize(prompt)
        if self._too_long(h, len(tokens), max_tokens):
            return
        generated = [GENERATED_TOKEN] * max_tokens
        shown = (tokens if echo else []) + generated
        choice: dict[str, Any] = {"index": 0, "finish_reason": "length",
                                  "text": (prompt if echo else "") + "".join(generated), "logprobs": None}
        if body.get("logprobs") is not None:
            choice["logprobs"] = self._logprobs(shown, echo, len(tokens))
        _send(h, 200, {"id": "cmpl-test", "object": "text_completion", "model": self.served_model,
                       "choices": [choice], "usage": self._usage(len(tokens), max_tokens, self._cache_hit(tokens))})

    def _logprobs(self, shown: list[str], echo: bool, n_prompt: int) -> dict[str, Any]:
        values: list[float | None] = []
        tops: list[dict[str, float] | None] = []
        offsets: list[int] = []
        text = ""
        for i, tok in enumerate(shown):
            offsets.append(len(text))
            if echo and i == 0:  # the first prompt token has no context, as in vLLM
                values.append(None)
                tops.append(None)
            else:
                lp = token_logprob(text, tok)
                values.append(lp)
                tops.append({tok: lp} if lp > GREEDY_ABOVE else {"<alt>": GREEDY_ABOVE / 2, tok: lp})
            text += tok
        return {"tokens": shown, "token_logprobs": values, "top_logprobs": tops, "text_offset": offsets}
