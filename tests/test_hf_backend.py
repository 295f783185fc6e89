"""The hf backend: prefix-sharing log-likelihoods against a naive full forward, and generation.

Tests marked `model` run the real embedded SmolLM2-135M on CPU (fixture `hf_embedded`).
"""
from __future__ import annotations

import math
import random
from pathlib import Path
from typing import Any

import pytest
import torch

from promptopt.backends.base import CHAT, GenRequest, LLRequest
from promptopt.backends._local import generation_prompt
from promptopt.backends.hf import MIN_SHARED_TOKENS_SAVED, HFBackend, _Row, _Scored, _Shared
from promptopt.errors import ModelNotFoundError
from promptopt.backends.models import embedded_hf_dir
from promptopt.registry import get
from promptopt.testing import BackendContract

# fp32 throughout. Prefix caching, padding and batching change only the order of float sums
# (observed differences ~3e-5 nats); a wrong position or token shift is off by > 0.1.
TOLERANCE = 1e-3

PROMPT_A = ("Classify the sentiment of the movie review as positive or negative. Pay attention to "
            "the adjectives the reviewer chooses and to sarcasm. ")
PROMPT_B = "You are a careful annotator. Read the text below and decide how the writer feels. "
REVIEWS = ["a gorgeous, witty, seductive movie.",
           "dull and lifeless from start to finish, with a plot that never moves and characters nobody "
           "could care about",
           "ok"]
LABELS = [" positive", " negative", " mixed, leaning negative"]


def naive_loglikelihood(backend: HFBackend, req: LLRequest) -> tuple[float, bool]:
    """One full forward over context+continuation, scoring the tokens after the context's."""
    tok = backend.tokenizer
    whole = tok(req.context + req.continuation)["input_ids"]
    n_ctx = len(tok(req.context)["input_ids"])
    assert whole[:n_ctx] == tok(req.context)["input_ids"], "test case must not merge at the boundary"
    with torch.inference_mode():
        logits = backend.model(torch.tensor([whole], device=backend.device)).logits[0].float()
    logprobs = torch.log_softmax(logits, -1)
    targets = range(n_ctx, len(whole))
    total = sum(logprobs[i - 1, whole[i]].item() for i in targets)
    greedy = all(logprobs[i - 1].argmax().item() == whole[i] for i in targets)
    return total, greedy


def scoring_requests() -> list[LLRequest]:
    """Two candidate prompts first, several reviews and labels, plus unrelated requests, shuffled."""
    reqs = [LLRequest(f"{prompt}Review: {review}\nSentiment:", label)
            for prompt in (PROMPT_A, PROMPT_B) for review in REVIEWS for label in LABELS]
    reqs += [LLRequest("The capital of France is", " Paris"), LLRequest("1, 2, 3, 4,", " 5, 6, 7")]
    random.Random(0).shuffle(reqs)
    return reqs


# ---- planning (pure Python, no model) ---------------------------------------------------------

def _row(tokens: list[int], start: int, index: int = 0) -> _Row:
    return _Row(tuple(tokens[:-1]), [_Scored(index, tuple(tokens), start)])


def test_identical_and_prefix_inputs_share_one_row() -> None:
    ctx = list(range(10, 30))
    scored = [_Scored(0, tuple(ctx + [1]), 19), _Scored(1, tuple(ctx + [2]), 19),  # same input
              _Scored(2, tuple(ctx + [3, 4]), 19),  # its input extends the two above
              _Scored(3, tuple([5, 6, 7]), 1)]
    rows = HFBackend._rows(scored)
    assert len(rows) == 2
    host = next(r for r in rows if len(r.requests) == 3)
    assert host.inputs == tuple(ctx + [3])
    assert sorted(r.index for r in host.requests) == [0, 1, 2]


def test_plan_groups_rows_by_shared_prefix() -> None:
    prompt_a, prompt_b = list(range(100, 160)), list(range(200, 250))
    rows = [_row(prompt_a + [i, i + 1, 7], start=len(prompt_a) + 1) for i in range(5)]
    rows += [_row(prompt_b + [i, 9], start=len(prompt_b)) for i in range(4)]
    rows += [_row([1, 2, 3], start=1), _row([4, 5, 6, 7], start=2)]  # nothing to share
    rows.sort(key=lambda r: r.inputs)
    plan = HFBackend._plan(rows)
    shared = sorted((prefix, len(members)) for prefix, members in plan if prefix)
    assert shared == [(len(prompt_b), 4), (len(prompt_a), 5)]
    unshared = [members for prefix, members in plan if prefix == 0]
    assert [len(m) for m in unshared] == [2]
    assert sum(len(m) for _, m in plan) == len(rows)


def test_plan_nests_groups_under_a_shared_prefix() -> None:
    """Retrieval's shape: an instruction with shared demos (100 tokens), then a demo (60) that two inputs
    retrieved, or only one, then the input (20). The pairs run as groups of their own below the shared
    prefix (their KV extends it), the single inputs in the group over the shared prefix, which runs first."""
    prompt = list(range(1000, 1100))
    rows = []
    for d in range(12):
        demo = list(range(2000 + 100 * d, 2060 + 100 * d))
        for i in range(2 if d < 6 else 1):
            text = prompt + demo + list(range(5000 + 50 * d + 20 * i, 5020 + 50 * d + 20 * i))
            rows.append(_row(text, start=len(text) - 2, index=len(rows)))
    rows.sort(key=lambda r: r.inputs)
    plan = HFBackend._plan(rows)
    assert [(prefix, len(members)) for prefix, members in plan] == [(100, 6)] + [(160, 2)] * 6
    assert sorted(id(r) for _, members in plan for r in members) == sorted(id(r) for r in rows)
    # Packed, each pair's demo is a segment in the shared prefix's packs instead: no forward of its own.
    (prefix, units), = HFBackend._plan(rows, segments=True)
    assert prefix == 100 and sorted((u.ext, len(u.rows)) for u in units if isinstance(u, _Shared)) == [(60, 2)] * 6
    assert sorted(id(r) for u in units for r in (u.rows if isinstance(u, _Shared) else [u])) == sorted(id(r) for r in rows)


def test_plan_keeps_prefix_before_first_scored_position() -> None:
    base = list(range(300, 400))
    rows = sorted((_row(base + [i, 1, 2], start=50) for i in range(3)), key=lambda r: r.inputs)
    (prefix, members), = HFBackend._plan(rows)
    assert prefix == 50 and len(members) == 3


def test_plan_does_not_share_tiny_prefixes() -> None:
    rows = sorted((_row([1, 2, i, 9], start=2) for i in range(3)), key=lambda r: r.inputs)
    assert 2 * 2 < MIN_SHARED_TOKENS_SAVED
    assert HFBackend._plan(rows) == [(0, rows)]


def test_registered_as_hf() -> None:
    assert get("backends", "hf") is HFBackend


class _WordTokenizer:
    """One id per word; 0 stands for the special token a tokenizer adds in front."""

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict[str, list[int]]:
        return {"input_ids": [0] * add_special_tokens + [len(w) for w in text.split()]}

    def apply_chat_template(self, messages: list[dict[str, str]], **_: object) -> str:
        return " ".join(f"<{m['role']}> {m['content']}" for m in messages) + " <assistant>"


def test_generation_prompt_tokenizes_or_refuses() -> None:  # shared by the hf and vllm backends
    tok, chat = _WordTokenizer(), (("user", "hi there"),)

    def prepare(req: GenRequest, **kw: Any) -> Any:
        return generation_prompt(req, tok, **{"backend": "hf", "model": "m", "chat": True, "window": 6, **kw})

    assert prepare(GenRequest(prompt="a bb ccc")) == [0, 1, 2, 3]
    assert prepare(GenRequest(messages=chat)) == [6, 2, 5, 11]  # the template wrote the specials
    no_chat = prepare(GenRequest(messages=chat), chat=False)
    assert no_chat.finish_reason == "error" and no_chat.error.startswith("hf backend: m has no chat template")
    too_long = prepare(GenRequest(prompt="a b c d e"), backend="vllm", reader="the engine")
    assert too_long.finish_reason == "error"
    assert too_long.error.startswith("vllm backend: prompt is 6 tokens but the engine reads at most 6")
    empty = prepare(GenRequest(prompt="a b", max_tokens=0))
    assert (empty.text, empty.finish_reason, empty.usage.calls, empty.usage.prompt_tokens) == ("", "length", 1, 3)


# ---- real model ---------------------------------------------------------------------------------

@pytest.mark.model
def test_loglikelihood_matches_naive_forward(hf_embedded: HFBackend) -> None:
    reqs = scoring_requests()
    results = hf_embedded.loglikelihood(reqs)
    assert len(results) == len(reqs)
    for req, res in zip(reqs, results):
        expected, greedy = naive_loglikelihood(hf_embedded, req)
        assert res.error is None
        assert res.logprob == pytest.approx(expected, abs=TOLERANCE), req
        assert res.is_greedy == greedy, req
        assert math.isclose(sum(res.token_logprobs), res.logprob, abs_tol=1e-6)
        assert len(res.token_logprobs) == len(hf_embedded.tokenizer(req.continuation)["input_ids"])
        assert res.usage.prompt_tokens > 0


@pytest.mark.model
def test_loglikelihood_is_independent_of_batch_company(hf_embedded: HFBackend) -> None:
    reqs = scoring_requests()
    together = hf_embedded.loglikelihood(reqs)
    alone = [hf_embedded.loglikelihood([r])[0] for r in reqs[:4]]
    for a, b in zip(together, alone):
        assert a.logprob == pytest.approx(b.logprob, abs=TOLERANCE)


@pytest.mark.model
def test_is_greedy_on_an_obvious_fact(hf_embedded: HFBackend) -> None:
    paris, banana = hf_embedded.loglikelihood([LLRequest("The capital of France is", " Paris"),
                                               LLRequest("The capital of France is", " a banana split")])
    assert paris.is_greedy and not banana.is_greedy
    assert paris.logprob > banana.logprob + 5


@pytest.mark.model
def test_boundary_space_moves_into_the_continuation(hf_embedded: HFBackend) -> None:
    # "is " + "Paris" tokenizes as "is" + " Paris": the straddling token is scored as continuation.
    spaced, plain = hf_embedded.loglikelihood([LLRequest("The capital of France is ", "Paris"),
                                               LLRequest("The capital of France is", " Paris")])
    assert spaced.logprob == pytest.approx(plain.logprob, abs=TOLERANCE)


@pytest.mark.model
def test_empty_continuation_and_empty_context(hf_embedded: HFBackend) -> None:
    empty_cont, empty_ctx = hf_embedded.loglikelihood([LLRequest("Hello", ""), LLRequest("", "Hello world")])
    assert empty_cont.logprob == 0.0 and empty_cont.is_greedy and empty_cont.error is None
    assert empty_ctx.error is None and -60 < empty_ctx.logprob < 0
    assert len(empty_ctx.token_logprobs) == 2


@pytest.mark.model
def test_too_long_requests_get_error_results(hf_embedded: HFBackend, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hf_embedded, "max_length", 16)
    long_text = "one two three four five six seven eight nine ten eleven twelve thirteen fourteen" * 2
    ok, too_long = hf_embedded.loglikelihood([LLRequest("Hi", " there"), LLRequest(long_text, " fifteen")])
    assert ok.error is None and ok.logprob < 0
    assert too_long.error and "at most 16" in too_long.error and too_long.logprob == -math.inf
    fine, refused = hf_embedded.generate([GenRequest(prompt="Hi", max_tokens=2),
                                          GenRequest(prompt=long_text, max_tokens=2)])
    assert fine.error is None and fine.finish_reason in ("stop", "length")
    assert refused.finish_reason == "error" and "at most 16" in (refused.error or "")


@pytest.mark.model
def test_generation_honours_stop_strings_and_max_tokens(hf_embedded: HFBackend) -> None:
    prompt = "Here is a list of fruits: apple, banana, cherry,"
    free, stopped, short = hf_embedded.generate([
        GenRequest(prompt=prompt, max_tokens=24),
        GenRequest(prompt=prompt, max_tokens=24, stop=(",",)),
        GenRequest(prompt=prompt, max_tokens=3)])
    assert "," in free.text
    assert stopped.text == free.text[:free.text.index(",")] and stopped.finish_reason == "stop"
    assert short.finish_reason == "length" and short.usage.completion_tokens == 3
    assert free.text.startswith(short.text)
    assert short.usage.prompt_tokens == len(hf_embedded.tokenizer(prompt)["input_ids"])


@pytest.mark.model
def test_messages_go_through_the_chat_template(hf_embedded: HFBackend) -> None:
    assert CHAT in hf_embedded.capabilities
    messages = (("user", "Name one colour."),)
    templated = hf_embedded.tokenizer.apply_chat_template(
        [{"role": "user", "content": "Name one colour."}], add_generation_prompt=True, tokenize=False)
    assert templated.rstrip().endswith("<|im_start|>assistant")
    chat, raw = hf_embedded.generate([GenRequest(messages=messages, max_tokens=12),
                                      GenRequest(prompt=templated, max_tokens=12)])
    assert chat.text == raw.text and chat.text.strip()
    assert chat.usage.prompt_tokens == raw.usage.prompt_tokens


@pytest.mark.model
def test_seeded_sampling_is_reproducible(hf_embedded: HFBackend) -> None:
    def sample(seed: int) -> GenRequest:
        return GenRequest(prompt="Once upon a time, in a small village,", max_tokens=12,
                          temperature=1.0, seed=seed)

    alone = hf_embedded.generate([sample(7)])[0].text
    crowd = hf_embedded.generate([GenRequest(prompt="A much longer prompt that pads the batch: " * 3,
                                             max_tokens=4), sample(7), sample(8), sample(9)])
    assert crowd[1].text == alone
    assert hf_embedded.generate([sample(7)])[0].text == alone
    assert len({alone, crowd[2].text, crowd[3].text}) > 1  # different seeds, different stories


@pytest.mark.model
def test_fingerprint_names_model_dtype_and_template(hf_embedded: HFBackend) -> None:
    fp = hf_embedded.fingerprint()
    assert fp.startswith("hf:embedded:SmolLM2-135M-Instruct.Q4_1.gguf:sha256=")
    assert ":float32:" in fp and ":chat=" in fp


@pytest.mark.model
def test_directories_and_hub_ids_load_with_their_own_fingerprints(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import huggingface_hub.constants

    converted = embedded_hf_dir()
    local = HFBackend(str(converted))
    assert local.fingerprint().startswith(f"hf:{converted.resolve()}:digest=")
    # A hub id resolved offline from a hub cache laid out as huggingface_hub writes it.
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "models--local--smollm2"
    (repo / "snapshots" / commit).mkdir(parents=True)
    for f in converted.iterdir():
        (repo / "snapshots" / commit / f.name).symlink_to(f)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    hub = HFBackend("local/smollm2")
    assert hub.fingerprint() == f"hf:local/smollm2@{commit}:float32:chat={local.fingerprint()[-12:]}"
    req = [LLRequest("The capital of France is", " Paris")]
    assert hub.loglikelihood(req)[0].logprob == pytest.approx(local.loglikelihood(req)[0].logprob, abs=1e-6)


def test_unknown_model_is_a_clear_error() -> None:  # fails fast: conftest sets HF_HUB_OFFLINE
    with pytest.raises(ModelNotFoundError, match="cannot load model 'no-such-org/no-such-model'"):
        HFBackend("no-such-org/no-such-model")


@pytest.mark.model
class TestHFContract(BackendContract):
    @pytest.fixture(autouse=True)
    def _backend(self, hf_embedded: HFBackend) -> None:
        self.backend = hf_embedded

    def make_backend(self) -> HFBackend:
        return self.backend


@pytest.mark.model
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_scores_match_cpu(hf_embedded: HFBackend) -> None:
    gpu = HFBackend("embedded", device="cuda", dtype="float32")
    reqs = scoring_requests()
    for a, b in zip(gpu.loglikelihood(reqs), hf_embedded.loglikelihood(reqs)):
        assert a.logprob == pytest.approx(b.logprob, abs=1e-2)  # TF32/cuBLAS sum orders differ
    greedy = GenRequest(prompt="The capital of France is", max_tokens=4)
    assert gpu.generate([greedy])[0].text == hf_embedded.generate([greedy])[0].text
