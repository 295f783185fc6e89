"""The openai backend against a real local OpenAI-compatible server, behind a fault proxy.

Every server here is a real HTTP server on 127.0.0.1 that stops itself; nothing is mocked.
"""
from __future__ import annotations

import asyncio
import json
import math
import socket
import threading

import pytest

from promptopt.backends.base import GENERATE, LOGLIKELIHOOD, GenRequest, LLRequest
from promptopt.backends.openai.backend import OpenAIBackend
from promptopt.backends.openai.limits import RateLimiter
from promptopt.backends.openai.logprobs import EchoedPrompt, continuation_logprob
from promptopt.backends.openai.prices import Price, estimate_usd, price_for, usd
from promptopt.backends.openai.transport import httpx, parse_retry_after, server_message
from promptopt.scoring.cache import CachedBackend
from promptopt.config import strategy_config
from promptopt.errors import BackendError, CapabilityError, ConfigError, PromptOptError
from promptopt.testing.faultproxy import FaultProxy
from promptopt.registry import get
from promptopt.testing import BackendContract, make_run
from promptopt.testing.clock import FakeClock
from promptopt.testing.openai_server import GREEDY_ABOVE, FakeOpenAIServer, token_logprob, tokenize

KEY_ENV = "PROMPTOPT_TEST_OPENAI_KEY"
SECRET = "sk-test-SECRET-0123456789abcdef"
MODEL = "test-model"
pytestmark = [pytest.mark.timeout(60), pytest.mark.usefixtures("quick_thread_switches")]


@pytest.fixture(autouse=True)
def _no_key(monkeypatch):
    monkeypatch.delenv(KEY_ENV, raising=False)


@pytest.fixture
def proxy(openai_server):
    with FaultProxy(openai_server.url, retry_after=0.3, hang_seconds=3, slow_seconds=0.2, max_lifetime=60) as p:
        yield p


def make(url, **kw) -> OpenAIBackend:
    opts = dict(api_key_env=KEY_ENV, backoff=0.01, max_wait=5, timeout=2, max_retries=3)
    return OpenAIBackend(kw.pop("model", MODEL), base_url=url, **{**opts, **kw})


@pytest.fixture
def backend_factory():
    made: list[OpenAIBackend] = []

    def factory(url, **kw):
        made.append(make(url, **kw))
        return made[-1]
    yield factory
    for b in made:
        b.close()


def expected_ll(context: str, continuation: str, bos: str = "") -> tuple[float, bool]:
    """Recompute what the test server assigns to the continuation's tokens."""
    pieces = ([bos] if bos else []) + tokenize(context + continuation)
    text, values, boundary = "", [], len(bos) + len(context)
    for tok in pieces:
        if len(text) + len(tok) > boundary:
            values.append(token_logprob(text, tok))
        text += tok
    return sum(values), all(v > GREEDY_ABOVE for v in values)


def assert_one_clear_line(err: BaseException, *must_contain: str) -> None:
    msg = str(err)
    assert isinstance(err, PromptOptError)
    assert "\n" not in msg and "Traceback" not in msg
    for part in must_contain:
        assert part in msg, f"{part!r} not in {msg!r}"
    assert SECRET not in msg


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- happy path -------------------------------------------------------------------------------

class TestBackendContract(BackendContract):
    """The shared backend contract, against the test server."""

    @pytest.fixture(autouse=True)
    def _backend(self, openai_server, backend_factory):
        self._backend_under_test = backend_factory(openai_server.url)

    def make_backend(self) -> OpenAIBackend:
        return self._backend_under_test


def test_registered_under_openai():
    assert get("backends", "openai") is OpenAIBackend


def test_generate_keeps_order_and_reports_usage(openai_server, backend_factory):
    b = backend_factory(openai_server.url)
    reqs = [GenRequest(f"prompt number {i}", max_tokens=20) for i in range(12)]
    reqs.append(GenRequest(messages=(("system", "be brief"), ("user", "hi there")), max_tokens=20))
    reqs.append(GenRequest("a b c d e f", max_tokens=2))
    out = b.generate(reqs)
    assert [r.text for r in out[:12]] == [f"echo: prompt number {i}" for i in range(12)]
    assert out[12].text == "echo: hi there"
    assert (out[13].text, out[13].finish_reason) == ("echo:", "length")
    assert out[0].usage.prompt_tokens == 3 and out[0].usage.completion_tokens == 5
    assert all(r.error is None and r.usage.calls == 1 for r in out)
    body = next(x for x in openai_server.bodies if x.get("messages", [{}])[0].get("content") == "be brief")
    assert body["messages"] == [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi there"}]


def test_stop_and_seed_are_sent(openai_server, backend_factory):
    b = backend_factory(openai_server.url)
    (r,) = b.generate([GenRequest("one, two", stop=(",",), seed=7, temperature=0.7)])
    assert r.text == "echo: one"
    assert openai_server.bodies[-1]["seed"] == 7 and openai_server.bodies[-1]["stop"] == [","]


def test_usd_from_price_table_and_overrides(openai_server, backend_factory):
    b = backend_factory(openai_server.url, prices={MODEL: (1.5, 4.0)})
    out = b.generate([GenRequest("x y z", max_tokens=20)] * 3)
    for r in out:
        assert r.usage.usd == pytest.approx((r.usage.prompt_tokens * 1.5 + r.usage.completion_tokens * 4.0) / 1e6)
        assert r.usage.usd > 0
    assert b.stats["usage"]["usd"] == pytest.approx(sum(r.usage.usd for r in out))
    free = backend_factory(openai_server.url)
    assert free.generate([GenRequest("x")])[0].usage.usd == 0.0


def test_price_lookup():
    table = {"gpt-4o": (2.5, 10.0, 1.25), "gpt-4o-mini": (0.15, 0.6)}
    assert price_for("gpt-4o-mini-2024-07-18", table) == Price(0.15, 0.6)
    assert price_for("gpt-4o-2024-08-06", table) == Price(2.5, 10.0, 1.25)
    assert price_for("gpt-4omni", table) == Price(0.0, 0.0)
    assert price_for("my-local-llama", table) == Price(0.0, 0.0)
    assert usd(1_000_000, 500_000, (2.5, 10.0)) == pytest.approx(7.5)
    # 400k of the 1M prompt tokens read from the provider's cache, at half the input price
    assert usd(1_000_000, 500_000, (2.5, 10.0, 1.25), cached_tokens=400_000) == pytest.approx(7.5 - 0.5)
    assert usd(1_000, 0, (2.5, 10.0), cached_tokens=1_000) == pytest.approx(0.0025)  # no cached price: full
    with pytest.raises(ValueError, match="per 1M"):
        Price.of([1.0])


def test_usd_estimate_for_a_plan():
    est = estimate_usd("gpt-4o-mini-2024-07-18", None, calls=1000, prompt_tokens_per_call=200.4,
                       completion_tokens_per_call=8)
    assert est["prompt_tokens"] == 200_400 and est["completion_tokens"] == 8_000
    assert est["usd"] == pytest.approx((200_400 * 0.15 + 8_000 * 0.6) / 1e6)
    mine = estimate_usd("my-model", {"my-model": [1.0, 2.0]}, calls=10, prompt_tokens_per_call=100,
                        completion_tokens_per_call=10)
    assert mine["usd"] == pytest.approx((1000 * 1.0 + 100 * 2.0) / 1e6)
    assert estimate_usd("local-llama", None, calls=10, prompt_tokens_per_call=1, completion_tokens_per_call=1)["usd"] == 0


# --- log-likelihood ---------------------------------------------------------------------------

LL_CASES = [("Review: great film. Sentiment:", " positive"),
            ("Answer: ", "positive"),  # the continuation's token starts inside the context
            ("Q: 2+2=? A:", " four, clearly."),
            ("Hello", "")]


@pytest.mark.parametrize("bos", ["", "<s>"])
def test_loglikelihood_matches_server_logprobs(bos, backend_factory):
    with FakeOpenAIServer(MODEL, bos=bos, max_lifetime=60) as srv:
        b = backend_factory(srv.url)
        assert LOGLIKELIHOOD in b.capabilities
        out = b.loglikelihood([LLRequest(c, x) for c, x in LL_CASES])
        for (ctx, cont), res in zip(LL_CASES, out):
            logprob, greedy = expected_ll(ctx, cont, bos)
            assert res.error is None
            assert res.logprob == pytest.approx(logprob, abs=1e-9)
            assert res.is_greedy == greedy
        assert len(out[1].token_logprobs) == 1  # " positive", which starts inside the context
        assert len(out[2].token_logprobs) == 4 and out[3].token_logprobs == ()
        body = next(x for x in srv.bodies if x.get("prompt") == LL_CASES[0][0] + LL_CASES[0][1])
        assert body["echo"] is True and body["max_tokens"] == 0 and body["logprobs"] == 1


# --- vLLM: one-token continuations by one generated token --------------------------------------

SENTIMENT = [LLRequest(f"Classify the review.\nReview: film number {i} was {w}.\nSentiment:", label)
             for i in range(20) for w in ("fine", "dull") for label in (" positive", " negative")]


@pytest.mark.parametrize("bos", ["", "<s>"])
def test_vllm_one_token_route_equals_echo_and_keeps_the_prefix_cache(bos, backend_factory):
    """On a vLLM server one-token continuations go by `logprob_token_ids` (many prompts a request) and give
    the echo recipe's numbers; multi-token ones and merged tokens stay on echo; /metrics hits are reported."""
    reqs = SENTIMENT + [LLRequest(c, x) for c, x in LL_CASES]
    with FakeOpenAIServer(MODEL, bos=bos, vllm=True, max_lifetime=60) as srv:
        b = backend_factory(srv.url)
        out = b.loglikelihood(reqs)
        for req, res in zip(reqs, out):
            logprob, greedy = expected_ll(req.context, req.continuation, bos)
            assert res.error is None and res.logprob == pytest.approx(logprob, abs=1e-9), req
            rivals = [expected_ll(r.context, r.continuation, bos)[0] for r in SENTIMENT if r.context == req.context]
            # one generated token is the argmax: of two labels above the server's greedy line, only the best
            assert res.is_greedy == (greedy and (req not in SENTIMENT or logprob >= max(rivals)))
        stats = b.stats
        one = [x for x in srv.bodies if "logprob_token_ids" in x and isinstance(x.get("prompt"), list)]
        # 81 one-token requests: 41 distinct prompts (two labels each but one) in two even requests of at
        # most 32, after the start-up probe's one
        assert stats["one_token"] == {"requests": 2, "prompts": 41, "scored": len(SENTIMENT) + 1, "echo_fallbacks": 3}
        assert sorted(len(x["prompt"]) for x in one) == [1, 20, 21]
        assert all(len(x["logprob_token_ids"]) == 2 for x in one[1:])
        assert all(x["max_tokens"] == 1 and x["return_tokens_as_token_ids"] for x in one)
        cache = stats["prefix_cache"]
        assert cache["queried_tokens"] > 0 and cache["hit_rate"] > 0.5  # the shared instruction is read back
        assert sum(r.usage.prompt_tokens for r in out) == stats["usage"]["prompt_tokens"]  # shared out exactly


def test_a_server_that_claims_vllm_but_refuses_the_extension_scores_by_echo(backend_factory, caplog):
    with FakeOpenAIServer(MODEL, vllm="refuses", max_lifetime=60) as srv:
        b = backend_factory(srv.url)
        with caplog.at_level("WARNING", logger="promptopt"):
            out = b.loglikelihood(SENTIMENT[:6])
        assert [r.logprob for r in out] == pytest.approx([expected_ll(r.context, r.continuation)[0]
                                                          for r in SENTIMENT[:6]], abs=1e-9)
        said = [r.getMessage() for r in caplog.records if "says it is vLLM" in r.getMessage()]
        assert len(said) == 1 and "logprob_token_ids" in said[0] and "scoring by echo" in said[0]
        assert "one_token" not in b.stats


def test_one_token_route_unit_rules():
    from promptopt.backends.openai import onetoken
    assert onetoken.plan([1, 2, 3], [3]) == onetoken.Plan((1, 2), 3)
    assert onetoken.plan([1, 2, 9], [3]).label_id is None  # merged at the boundary
    assert onetoken.plan([1, 2, 3], [2, 3]).why_not.startswith("the continuation is more than one token")
    prompts = [(i // 2,) for i in range(70)]  # two labels per prompt
    # 35 prompts need 2 requests: 18 + 17 prompts, not 32 + 3
    assert onetoken.batches(prompts, [i % 2 for i in range(70)]) == [list(range(36)), list(range(36, 70))]
    assert [len(g) for g in onetoken.batches([(i,) for i in range(200)], list(range(200)))] == [29] * 6 + [26]
    # a multiple of the servers, so least-busy routing splits the work evenly
    assert [len(g) for g in onetoken.batches([(i,) for i in range(300)], [0] * 300, servers=2)] == [30] * 10
    assert [len(g) for g in onetoken.batches([(i,) for i in range(33)], [0] * 33, servers=3)] == [11] * 3
    assert [len(g) for g in onetoken.batches([(i,) for i in range(2)], [0] * 2, servers=3)] == [1, 1]
    assert [len(g) for g in onetoken.batches([(0,)] * 200, list(range(200)))] == [128, 72]  # the label cap
    page = ('# HELP x\nvllm:prefix_cache_queries_total{engine="0",model_name="m"} 120.0\n'
            'vllm:prefix_cache_hits_total{engine="0",model_name="m"} 90.0\n'
            'vllm:prefix_cache_hits_total{engine="1",model_name="m"} 6.0\n')
    assert onetoken.prefix_cache_counters(page) == {"queries": 120.0, "hits": 96.0}
    with pytest.raises(ValueError, match="token_id:N"):
        onetoken.label_logprobs({"choices": [{"index": 0, "logprobs": {"tokens": [" a"], "top_logprobs": [{}]}}]}, 1)


def test_greedy_flag_varies():
    greedy = [expected_ll("ctx", f" w{i}")[1] for i in range(40)]
    assert any(greedy) and not all(greedy)  # the server's data exercises both branches


def test_max_tokens_one_fallback_gives_same_scores(backend_factory):
    with FakeOpenAIServer(MODEL, echo_min_max_tokens=1, max_lifetime=60) as srv:
        b = backend_factory(srv.url)
        assert LOGLIKELIHOOD in b.capabilities
        out = b.loglikelihood([LLRequest(c, x) for c, x in LL_CASES])
        for (ctx, cont), res in zip(LL_CASES, out):
            assert res.logprob == pytest.approx(expected_ll(ctx, cont)[0], abs=1e-9)
        assert srv.bodies[-1]["max_tokens"] == 1


def test_server_without_echo_lacks_loglikelihood(backend_factory):
    with FakeOpenAIServer(MODEL, echo=False, max_lifetime=60) as srv:
        b = backend_factory(srv.url)
        assert b.capabilities == {GENERATE, "chat"}
        with pytest.raises(CapabilityError) as e:
            b.check(needs=[LOGLIKELIHOOD])
        assert_one_clear_line(e.value, srv.url, MODEL, "Only no echo is supported", "log-likelihood")
        with pytest.raises(CapabilityError):
            b.loglikelihood([LLRequest("a", " b")])
        assert b.generate([GenRequest("still chats")])[0].text == "echo: still chats"
        assert srv.requests["/v1/completions"] == 3  # the probe and two retries: a 500 may be a blip


def test_run_start_names_the_servers_reason_for_no_loglikelihood(backend_factory):
    hill_climb = get("strategies", "hill_climb")
    with FakeOpenAIServer(MODEL, echo=False, max_lifetime=60) as srv:
        # Without echo a choose task takes a chat route (tests/test_chat_routes.py); forced to log-likelihood
        # it is refused at start, with the server's reason.
        target = CachedBackend(backend_factory(srv.url), None)  # as api.prepare wraps it
        make_run(hill_climb(strategy_config(hill_climb, {})), target=target)  # toy task: a choose task
        assert target.inner.choose_route == "chat_logprobs"
        with pytest.raises(CapabilityError) as e:
            backend_factory(srv.url, choose_route="loglikelihood").check()
        assert_one_clear_line(e.value, "choose_route=loglikelihood", srv.url, "Only no echo is supported")


def test_server_without_chat_template_still_scores(backend_factory):
    with FakeOpenAIServer(MODEL, chat=False, max_lifetime=60) as srv:
        b = backend_factory(srv.url)
        assert b.capabilities == {LOGLIKELIHOOD}
        assert b.loglikelihood([LLRequest("a b", " c")])[0].error is None
        with pytest.raises(CapabilityError) as e:
            b.generate([GenRequest("hi")])
        assert_one_clear_line(e.value, srv.url, "chat_template")


def test_continuation_offsets_unit():
    # "<s>" is a BOS the server echoed; offsets count it, the prompt does not start with it.
    echo = EchoedPrompt(tokens=["<s>", "Answer", ":", " yes"], offsets=[0, 3, 9, 10],
                        logprobs=[None, -1.0, -0.5, -0.25], top=[None, None, {":": -0.5}, {" no": -0.1, " yes": -0.25}])
    assert continuation_logprob(echo, " yes") == (-0.25, False, (-0.25,))
    assert continuation_logprob(echo, "yes") == (-0.25, False, (-0.25,))
    assert continuation_logprob(echo, ": yes") == (-0.75, False, (-0.5, -0.25))
    with pytest.raises(ValueError):
        continuation_logprob(echo, "<s>Answer: yes")


def test_empty_context_is_a_per_request_error(openai_server, backend_factory):
    b = backend_factory(openai_server.url)
    res = b.loglikelihood([LLRequest("", "hello"), LLRequest("x", " y")])
    assert math.isnan(res[0].logprob) and "empty context" in res[0].error
    assert res[1].error is None


# --- faults: retried and survived -------------------------------------------------------------

FAULT_KIND = {"429": "http_429", "429_no_retry_after": "http_429", "500": "http_500",
              "502": "http_502", "503": "http_503", "drop": "dropped", "truncated": "dropped",
              "malformed": "malformed", "hang": "timeout"}


@pytest.mark.parametrize("fault", sorted(FAULT_KIND))
def test_each_retryable_fault_is_retried(fault, proxy, backend_factory):
    b = backend_factory(proxy.url, timeout=0.6 if fault == "hang" else 2.0)
    b.check()
    proxy.retry_after = 0.05
    proxy.queue(fault, fault)
    gen, = b.generate([GenRequest("survive this")])
    assert gen.error is None and gen.text == "echo: survive this"
    proxy.queue(fault)
    ll, = b.loglikelihood([LLRequest("Review: fine. Sentiment:", " positive")])
    assert ll.error is None and ll.logprob == pytest.approx(expected_ll("Review: fine. Sentiment:", " positive")[0])
    assert proxy.injected[fault] == 3
    assert b.stats["retries_by_kind"] == {FAULT_KIND[fault]: 3}
    assert b.stats["failures"] == 0


def test_slow_response_is_not_a_fault_for_the_client(proxy, backend_factory):
    b = backend_factory(proxy.url)
    b.check()
    proxy.queue("slow")
    assert b.generate([GenRequest("slowly")])[0].text == "echo: slowly"
    assert proxy.injected["slow"] == 1
    assert b.stats["retries"] == 0


def test_retry_after_is_honored(proxy, backend_factory):
    clock = FakeClock()
    b = backend_factory(proxy.url, clock=clock)
    b.check()
    proxy.retry_after = 1.0
    proxy.queue("429")
    assert b.generate([GenRequest("wait for it")])[0].error is None
    # the proxy says Retry-After: 1 (waited with up to 10% jitter); our own backoff would be ~0.01 s
    assert len(clock.slept) == 1 and 1.0 <= clock.slept[0] <= 1.1
    assert b.stats["rate_limit_waits"] == 1 and b.stats["failures"] == 0
    proxy.queue("429_no_retry_after")
    assert b.generate([GenRequest("no header")])[0].error is None
    assert len(clock.slept) == 2 and clock.slept[1] <= 0.01 * 2  # backoff, multiplier 0.01, first retry
    assert b.stats["rate_limit_waits"] == 1  # a 429 without Retry-After is an ordinary retry


def test_retry_after_parsing():
    assert parse_retry_after({"retry-after": "2"}) == 2.0
    assert parse_retry_after({"retry-after": "0.5"}) == 0.5
    assert parse_retry_after({"retry-after-ms": "250", "retry-after": "9"}) == 0.25
    assert parse_retry_after({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}) == 0.0  # in the past
    assert parse_retry_after({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"},
                             now=1445412420.0) == 60.0  # a minute before that date
    assert parse_retry_after({"retry-after": "soon"}) is None
    assert parse_retry_after({}) is None


def test_retries_exhausted_become_error_results(proxy, backend_factory):
    b = backend_factory(proxy.url, max_retries=2)
    b.check()
    proxy.queue("503", "503", "503")
    bad, = b.generate([GenRequest("doomed")])
    assert bad.finish_reason == "error" and bad.text == ""
    assert_one_clear_line(BackendError(bad.error), proxy.url, MODEL, "HTTP 503", "Service unavailable")
    proxy.queue("malformed", "malformed", "malformed")
    ll, = b.loglikelihood([LLRequest("a", " b")])
    assert math.isnan(ll.logprob)
    assert_one_clear_line(BackendError(ll.error), proxy.url, MODEL, "malformed JSON")
    assert b.stats["failures_by_kind"] == {"http_503": 1, "malformed": 1}
    assert b.generate([GenRequest("fine again")])[0].error is None  # the backend keeps working


def test_retry_moves_to_another_server(backend_factory):
    with FakeOpenAIServer(MODEL, max_lifetime=60) as a, FakeOpenAIServer(MODEL, max_lifetime=60) as b_srv, \
            FaultProxy(a.url, max_lifetime=60) as broken:
        b = backend_factory([broken.url, b_srv.url], max_retries=1)
        b.check()
        broken.rates = {"503": 1.0}  # from now on every request through it fails
        out = b.generate([GenRequest(f"q{i}") for i in range(10)])
        assert all(r.error is None for r in out)
        assert broken.injected["503"] >= 1


# --- start-up errors: one clear line, fast -----------------------------------------------------

def test_bad_api_key_fails_fast(monkeypatch, backend_factory):
    monkeypatch.setenv(KEY_ENV, SECRET)
    with FakeOpenAIServer(MODEL, api_key="sk-the-right-one", leak_key_in_errors=True, max_lifetime=60) as srv:
        clock = FakeClock()
        b = backend_factory(srv.url, clock=clock)
        with pytest.raises(BackendError) as e:
            b.check()
        assert clock.slept == []  # failed at once: no retry, no wait
        assert_one_clear_line(e.value, srv.url, MODEL, "HTTP 401", f"${KEY_ENV}", "***")
        assert srv.requests["/v1/chat/completions"] == 1  # not retried


def test_missing_api_key_says_which_variable(backend_factory):
    with FakeOpenAIServer(MODEL, api_key="sk-the-right-one", max_lifetime=60) as srv:
        with pytest.raises(BackendError) as e:
            backend_factory(srv.url).check()
        assert_one_clear_line(e.value, "no key was sent", f"${KEY_ENV}")


def test_good_api_key_is_sent(monkeypatch, backend_factory):
    monkeypatch.setenv(KEY_ENV, SECRET)
    with FakeOpenAIServer(MODEL, api_key=SECRET, max_lifetime=60) as srv:
        assert backend_factory(srv.url).generate([GenRequest("ok")])[0].text == "echo: ok"


def test_unknown_model_fails_fast(openai_server, backend_factory):
    with pytest.raises(BackendError) as e:
        backend_factory(openai_server.url, model="no-such-model").check()
    assert_one_clear_line(e.value, openai_server.url, "no-such-model", "does not exist", "/models")


def test_wrong_base_url_path(openai_server, backend_factory):
    root = openai_server.url.removesuffix("/v1")
    with pytest.raises(BackendError) as e:
        backend_factory(root).check()
    assert_one_clear_line(e.value, root, "HTTP 404", "check base_url", "/v1")


def test_refused_connection_fails_fast(backend_factory):
    url = f"http://127.0.0.1:{free_port()}/v1"
    clock = FakeClock()
    b = backend_factory(url, max_retries=6, backoff=0.5, clock=clock)  # retrying would wait seconds
    with pytest.raises(BackendError) as e:
        b.check()
    assert clock.slept == [] and b.stats["retries"] == 0
    assert_one_clear_line(e.value, url, MODEL, "cannot connect", "start the server or fix base_url")


def test_a_server_down_at_start_is_routed_around_and_said_once(backend_factory, caplog):
    down = f"http://127.0.0.1:{free_port()}/v1"
    with FakeOpenAIServer(MODEL, vllm=True, max_lifetime=60) as srv:
        b = backend_factory([down, srv.url])
        with caplog.at_level("WARNING", logger="promptopt"):
            out = b.loglikelihood(SENTIMENT[:10]) + b.loglikelihood(SENTIMENT[10:20])
        assert all(r.error is None for r in out) and len(out) == 20
        said = [r.getMessage() for r in caplog.records if "not reachable" in r.getMessage()]
        assert len(said) == 1 and down.removesuffix("/v1") in said[0] and "the other 1" in said[0]
        assert b.stats["failures"] == 0


def test_key_with_a_stray_newline_is_one_line_without_the_key(monkeypatch, openai_server, backend_factory):
    monkeypatch.setenv(KEY_ENV, SECRET[:8] + "\n" + SECRET[8:])
    with pytest.raises(BackendError) as e:
        backend_factory(openai_server.url).check()
    assert_one_clear_line(e.value, f"${KEY_ENV}", "stray characters")
    assert SECRET[8:] not in str(e.value)


def test_local_servers_bypass_proxy_settings(monkeypatch, openai_server, backend_factory):
    dead = f"http://127.0.0.1:{free_port()}"
    for var in ("HTTP_PROXY", "http_proxy", "ALL_PROXY"):
        monkeypatch.setenv(var, dead)
    assert backend_factory(openai_server.url).generate([GenRequest("direct")])[0].text == "echo: direct"


def test_server_messages_in_other_shapes():
    assert server_message(b'{"detail": "Not Found"}') == ("Not Found", "")
    assert server_message(b'{"object": "error", "message": "bad", "code": 400}') == ("bad", "400")
    assert server_message(b"<html><body><h1>502 Bad Gateway</h1></body></html>")[0] == "502 Bad Gateway"
    assert len(server_message(b"x" * 5000)[0]) <= 240


def test_config_errors_before_any_request(monkeypatch):
    with pytest.raises(ConfigError, match="not an http"):
        OpenAIBackend(MODEL, base_url="127.0.0.1:8000/v1")
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    with pytest.raises(ConfigError, match=r"\$OPENAI_API_KEY"):
        OpenAIBackend("gpt-4o-mini")
    with pytest.raises(ConfigError):
        OpenAIBackend(MODEL, base_url="http://127.0.0.1:1/v1", concurrency=0)


def test_context_too_long_is_a_per_request_error(backend_factory):
    with FakeOpenAIServer(MODEL, max_context=64, max_lifetime=60) as srv:
        b = backend_factory(srv.url)
        long = " ".join(["word"] * 100)
        out = b.generate([GenRequest(long, max_tokens=8), GenRequest("short", max_tokens=8)])
        assert out[0].finish_reason == "error"
        assert_one_clear_line(BackendError(out[0].error), srv.url, MODEL, "maximum context length",
                              "shorten the prompt or lower max_tokens")
        assert out[1].error is None
        ll = b.loglikelihood([LLRequest(long, " end")])[0]
        assert "maximum context length" in ll.error
        assert b.stats["retries"] == 0 and b.stats["failures_by_kind"] == {"context_length": 2}


def test_key_revoked_mid_run_sinks_the_batch(monkeypatch, backend_factory):
    monkeypatch.setenv(KEY_ENV, SECRET)
    with FakeOpenAIServer(MODEL, api_key=SECRET, delay=0.01, max_lifetime=60) as srv:
        b = backend_factory(srv.url)
        b.check()
        srv.api_key = "sk-rotated"
        with pytest.raises(BackendError) as e:
            b.generate([GenRequest(f"q{i}") for i in range(20)])
        assert_one_clear_line(e.value, srv.url, "HTTP 401")


def test_key_never_in_repr_fingerprint_or_stats(monkeypatch, backend_factory):
    monkeypatch.setenv(KEY_ENV, SECRET)
    with FakeOpenAIServer(MODEL, api_key=SECRET, served_model="test-model-2024-01-01", max_lifetime=60) as srv:
        b = backend_factory(srv.url)
        b.generate([GenRequest("x")])
        for text in (repr(b), b.fingerprint(), json.dumps(b.stats), str(b.__dict__.get("_info"))):
            assert SECRET not in text
        assert b.fingerprint() == "openai:test-model|served:test-model-2024-01-01"


# --- load: concurrency, several servers, rate limits, callers --------------------------------

def test_concurrency_bound_is_respected_across_base_urls(backend_factory):
    # Two base URLs reach the same server (one through a proxy), so the server sees the total.
    with FakeOpenAIServer(MODEL, delay=0.05, max_lifetime=60) as srv, \
            FaultProxy(srv.url, max_lifetime=60) as other_route:
        b = backend_factory([srv.url, other_route.url], concurrency=4)
        out = b.generate([GenRequest(f"q{i}") for i in range(24)])
        assert all(r.error is None for r in out)
        assert srv.max_in_flight == 4


def test_load_spreads_over_base_urls_and_fingerprint_ignores_order(backend_factory):
    with FakeOpenAIServer(MODEL, delay=0.02, max_lifetime=60) as a, \
            FakeOpenAIServer(MODEL, delay=0.02, max_lifetime=60) as c:
        b = backend_factory([a.url, c.url], concurrency=8)
        out = b.generate([GenRequest(f"q{i}") for i in range(40)])
        assert [r.text for r in out] == [f"echo: q{i}" for i in range(40)]
        served = (a.requests["/v1/chat/completions"], c.requests["/v1/chat/completions"])
        assert min(served) >= 15, served
        assert backend_factory([c.url, a.url]).fingerprint() == b.fingerprint()


def test_requests_per_minute_limit(openai_server, backend_factory):
    clock = FakeClock()
    b = backend_factory(openai_server.url, rpm=1200, clock=clock)  # 20 a second, a second's worth at once
    b.generate([GenRequest(f"q{i}") for i in range(40)])  # and the start-up probe's requests
    sent = openai_server.requests["/v1/chat/completions"] + openai_server.requests["/v1/completions"]
    assert sent > 40
    # the first 20 from the full bucket, then one every 0.05 s
    assert clock.time - 1000.0 == pytest.approx((sent - 20) / 20)


def test_tokens_per_minute_limiter():
    clock = FakeClock(start=0.0)

    async def run() -> None:
        limiter = RateLimiter(1_200_000, clock)  # 20,000 tokens a second, at most that many at once
        await limiter.acquire(25_000)  # over capacity: passes on a full bucket, leaves a 5,000 debt
        await limiter.acquire(1_000)  # waits out the debt and its own share: 0.3 s
        limiter.correct(2_000)  # the call used 2,000 more tokens than estimated
        await limiter.acquire(2_000)  # 0.2 s
    asyncio.run(run())
    assert clock.slept == pytest.approx([0.3, 0.2])


def test_callable_from_a_running_loop_and_from_threads(openai_server, backend_factory):
    b = backend_factory(openai_server.url)

    async def inside_a_loop():
        return b.generate([GenRequest("from a coroutine")])

    assert asyncio.run(inside_a_loop())[0].text == "echo: from a coroutine"
    results: list[str] = []
    threads = [threading.Thread(target=lambda i=i: results.append(b.generate([GenRequest(f"t{i}")])[0].text))
               for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert sorted(results) == [f"echo: t{i}" for i in range(4)]


def test_close_stops_the_loop_thread_and_the_backend_can_start_again(openai_server):
    b = make(openai_server.url, concurrency=2, rpm=6000)
    b.generate([GenRequest("x")] * 4)
    loop = b._loop
    b.close()
    assert loop is not None and not loop.running
    assert [r.text for r in b.generate([GenRequest("again")] * 4)] == ["echo: again"] * 4
    b.close()


# --- what a hosted account does: 429s with Retry-After, prompt caching, reasoning models ------------

def test_server_answers_429_with_retry_after_once_its_rpm_is_passed():
    clock = FakeClock()
    with FakeOpenAIServer(MODEL, rpm=120, clock=clock.now, max_lifetime=60) as srv:  # 2 a second, 2 at once
        body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
        codes = [httpx.post(srv.url + "/chat/completions", json=body).status_code for _ in range(3)]
        assert codes == [200, 200, 429]
        refused = httpx.post(srv.url + "/chat/completions", json=body)
        assert refused.headers["retry-after-ms"] == "500" and refused.headers["retry-after"] == "1"
        assert refused.json()["error"]["code"] == "rate_limit_exceeded"
        assert parse_retry_after(refused.headers) == 0.5
        clock.time += 0.5  # half a second later one more request is allowed
        assert httpx.post(srv.url + "/chat/completions", json=body).status_code == 200
        assert srv.rate_limited == {"requests": 2} and len(srv.served_at) == 3


def test_429s_with_retry_after_are_waited_out_not_failures():
    # The client's clock is the server's: waiting out a Retry-After really refills the server's allowance.
    clock = FakeClock()
    with FakeOpenAIServer(MODEL, rpm=60, clock=clock.now, max_lifetime=60) as srv:
        b = make(srv.url, max_retries=0, max_wait=5, clock=clock)  # no retry allowed for other errors
        out = b.generate([GenRequest(f"q{i}") for i in range(8)])
        assert [r.text for r in out] == [f"echo: q{i}" for i in range(8)]
        stats = b.stats
        assert stats["failures"] == 0 and srv.rate_limited["requests"] > 0
        assert stats["rate_limit_waits"] == srv.rate_limited["requests"] == stats["retries_by_kind"]["http_429"]
        # 8 requests and the probe's at 1 a second from one in the allowance: no faster than the limit
        assert clock.time - 1000.0 >= len(srv.served_at) - 1 >= 8
        b.close()


def test_client_rpm_at_the_accounts_limit_loses_nothing():
    # Not "no 429s": fake time jumps while real requests are in flight, so arrivals bunch up at the
    # server as network jitter bunches them on a real account. Whatever 429s that draws are waited out.
    clock = FakeClock()
    with FakeOpenAIServer(MODEL, rpm=600, clock=clock.now, max_lifetime=60) as srv:
        b = make(srv.url, rpm=600, max_retries=0, clock=clock)
        out = b.generate([GenRequest(f"q{i}") for i in range(40)])
        assert [r.text for r in out] == [f"echo: q{i}" for i in range(40)]
        assert b.stats["failures"] == 0 and b.stats["rate_limit_waits"] == sum(srv.rate_limited.values())
        assert clock.time - 1000.0 >= (len(srv.served_at) - 10) / 10 - 1e-9  # 10 at once, then 10 a second
        b.close()


def test_server_tokens_per_minute_counts_prompt_and_allowed_completion():
    clock = FakeClock()
    with FakeOpenAIServer(MODEL, tpm=6000, clock=clock.now, max_lifetime=60) as srv:  # 100 tokens a second
        b = make(srv.url, tpm=6000, max_retries=0, clock=clock)
        out = b.generate([GenRequest("one two three", max_tokens=40) for _ in range(6)])
        assert all(r.error is None for r in out) and b.stats["failures"] == 0
        # 6 x (3 + 40) tokens + the probes' share: well over one second's 100 tokens, so the client waited
        assert clock.time - 1000.0 >= 6 * 43 / 100 - 1
        b.close()


def test_cached_prompt_tokens_are_read_reported_and_priced():
    with FakeOpenAIServer(MODEL, prompt_cache=4, max_lifetime=60) as srv:
        b = make(srv.url, prices={MODEL: [2.0, 8.0, 0.5]})
        b.check()
        shared = "You are a careful annotator. Label the sentiment of the review as positive or negative."
        reqs = [GenRequest("", messages=(("system", shared), ("user", f"{i}. Review: fine.")), max_tokens=4)
                for i in range(3)]
        first, = b.generate(reqs[:1])
        rest = b.generate(reqs[1:])
        assert srv.cached_tokens > 0
        n_shared = len(tokenize(shared)) // 4 * 4  # whole 4-token blocks of the shared system message
        assert b.stats["cached_prompt_tokens"] == srv.cached_tokens == 2 * n_shared
        assert first.usage.usd == pytest.approx(usd(first.usage.prompt_tokens, first.usage.completion_tokens,
                                                     (2.0, 8.0)))
        for r in rest:
            full = usd(r.usage.prompt_tokens, r.usage.completion_tokens, (2.0, 8.0))
            assert r.usage.usd == pytest.approx(full - n_shared * 1.5 / 1e6)
        b.close()


def test_reasoning_models_get_max_completion_tokens(openai_server, backend_factory):
    b = backend_factory(openai_server.url, max_tokens_param="max_completion_tokens")
    r, = b.generate([GenRequest("think briefly", max_tokens=3)])
    assert r.text == "echo: think" and r.finish_reason == "length"
    sent = [body for body in openai_server.bodies if "messages" in body]
    assert all("max_completion_tokens" in body and "max_tokens" not in body for body in sent)
    assert sent[-1]["max_completion_tokens"] == 3
    with pytest.raises(ConfigError, match="max_tokens_param"):
        make(openai_server.url, max_tokens_param="max_length")


def test_dry_run_estimates_usd_for_an_openai_target(tmp_path, capsys):
    from promptopt.backends.openai.prices import estimate_task_usd
    from promptopt.cli import main
    from promptopt.registry import get as get_plugin

    args = ["optimize", "--task", "demo", "--strategy", "hill_climb", "--optimizer-model", "none",
            "--backend", "openai", "--model", "gpt-4o-mini", "--set", "backend.base_url=http://127.0.0.1:9/v1",
            "--run-dir", str(tmp_path / "runs"), "--budget", "100", "--test-limit", "10", "--no-cache", "--dry-run"]
    assert main(args) == 0
    out = capsys.readouterr().out
    task = get_plugin("tasks", "demo")()
    # 100 search examples + (3 finalists + seed) x 24 dev + 2 x 10 test, two options each
    est = estimate_task_usd("gpt-4o-mini", None, task, task.seed_prompts[0], 100 + 4 * 24 + 2 * 10)
    assert est["calls"] == 2 * 216 and est["usd"] > 0
    assert f"usd        target at most ~${est['usd']:.4f} at list price: {est['calls']} requests" in out
    assert main([*args[:-1], "--set", "backend.prices={\"gpt-4o-mini\": [0, 0]}", "--dry-run"]) == 0
    assert "at most ~$0.0000" in capsys.readouterr().out
    # a route named in the config: one request an example, a one-token reply
    assert main([*args[:-1], "--set", "backend.choose_route=chat_logprobs", "--dry-run"]) == 0
    chat = estimate_task_usd("gpt-4o-mini", None, task, task.seed_prompts[0], 216, route="chat_logprobs")
    assert chat["calls"] == 216 and chat["completion_tokens"] == 216 and chat["usd"] < est["usd"]
    assert f"at most ~${chat['usd']:.4f} at list price: 216 requests" in capsys.readouterr().out


def test_an_account_that_stays_over_its_limit_fails_after_the_cap_on_waits(monkeypatch):
    from promptopt.backends.openai import retry
    monkeypatch.setattr(retry, "RATE_LIMIT_WAITS", 5)
    # The server's clock stands still: after its one request's allowance, every request draws a 429.
    with FakeOpenAIServer(MODEL, rpm=60, clock=lambda: 0.0, max_lifetime=60) as srv:
        b = make(srv.url, max_retries=0, clock=FakeClock())
        out = b.generate([GenRequest("stuck")])
        assert out[0].finish_reason == "error" and "HTTP 429" in out[0].error
        assert b.stats["failures_by_kind"] == {"http_429": 1} and b.stats["rate_limit_waits"] >= 5
        b.close()


def test_pause_holds_every_waiter_until_the_latest_hold():
    from promptopt.backends.openai.limits import Pause
    clock = FakeClock(start=0.0)
    pause = Pause(clock)

    async def run() -> list[float]:
        pause.hold(2.0)
        pause.hold(1.0)  # a shorter hold does not shorten the pause
        return list(await asyncio.gather(pause.wait(), pause.wait()))
    assert asyncio.run(run()) == [2.0, 2.0] and clock.time == 2.0
    assert asyncio.run(pause.wait()) == 0.0  # over: no wait


def test_chat_prompts_put_the_shared_prefix_first_so_the_provider_cache_reads_it():
    # A candidate's system prompt, demos and instruction come before the example in the chat messages, so
    # every example after the first reads them from the provider's prompt cache, at the cached-input price.
    from promptopt.scoring.scorer import Job, PromptParts, score_jobs
    from promptopt.task import Task
    from promptopt.types import Example

    rows = [("a fine film", 1), ("dull and long", 0), ("loved every minute", 1), ("a mess", 0),
            ("quietly moving", 1), ("too loud by half", 0), ("a small joy", 1), ("nothing works", 0)]
    exs = tuple(Example(f"e{i}", t, ["negative", "positive"][y], label=y) for i, (t, y) in enumerate(rows))
    task = Task(name="senti", splits={"train": exs, "dev": exs}, template="{prompt}\nReview: {input}\nSentiment:",
                output="choose", options=(" negative", " positive"), seed_prompts=("Rate the review.",))
    parts = PromptParts("Rate the sentiment of the review.", system="You are a careful annotator of film reviews.",
                        demos=exs[:2])
    queries = exs[2:]
    with FakeOpenAIServer(MODEL, chat_only=True, prompt_cache=4, max_lifetime=60) as srv:
        b = make(srv.url, concurrency=1, prices={MODEL: [1.0, 1.0, 0.25]})  # one at a time: the first fills the cache
        ev, = score_jobs(task, b, [Job("c", parts.instruction, "dev", queries, parts=parts)])
        assert b.choose_route == "chat_logprobs" and all(r.error is None for r in ev.results)
        sent = [x["messages"] for x in srv.bodies if x.get("messages") and "Review:" in x["messages"][-1]["content"]]
        stats = b.stats
        b.close()
    assert len(sent) == len(queries) and [m["role"] for m in sent[0][:-1]] == ["system", "user", "assistant",
                                                                             "user", "assistant"]
    before_query = sum(len(tokenize(m["content"])) for m in sent[0][:-1])  # system and demo turns
    assert srv.cached_tokens >= (len(queries) - 1) * (before_query // 4 * 4) > 0
    assert stats["cached_prompt_tokens"] == srv.cached_tokens
    full = usd(ev.usage.prompt_tokens, ev.usage.completion_tokens, (1.0, 1.0))
    assert ev.usage.usd == pytest.approx(full - srv.cached_tokens * 0.75 / 1e6)
