"""Packed-suffix scoring in the hf backend: the suffixes of a prefix group run as one sequence with a
block-diagonal mask, and must give the log-likelihoods of the padded batches (issue 31, item 5).

The fast tier runs a tiny random Llama (fixture `tiny_lm_dir`); tests marked `model` run the real
embedded SmolLM2-135M on CPU (fixture `hf_embedded`) on real SST-2, AG News and TREC test examples
(fixture `shared_data`)."""
from __future__ import annotations

import copy
import csv
from pathlib import Path

import pytest
import torch

from promptopt.backends import hf
from promptopt.backends.base import LLRequest
from promptopt.backends.hf import (MAX_LOGIT_ROWS, MAX_PACKED_SCORES, PACKED_ATTENTION, PACKED_TOKENS, HFBackend,
                                  _Row, _Scored)

# Packing changes only the order of float sums (observed below 2e-5 nats); the issue asks for 1e-4.
TOLERANCE = 1e-4

SST2_PROMPT = ("You are a careful annotator of sentiment. Read one short excerpt from a movie review and decide "
               "whether the reviewer's overall opinion of the film is positive or negative. Weigh the words "
               "that praise against those that condemn, and be alert to sarcasm and faint praise.")
AGNEWS_PROMPT = ("Sort the news article below into one of four topics: world politics, sports, business and "
                 "the economy, or science and technology. Read the headline and the first sentence closely.")
AGNEWS_LABELS = (" World", " Sports", " Business and the economy", " Science and technology")


def _tsv(path: Path, n: int) -> list[str]:
    with open(path, newline="", encoding="utf-8") as f:
        return [row["sentence"] for row in csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)][:n]


def real_requests(data: Path) -> list[LLRequest]:
    """Two prompt groups (single- and multi-token labels, suffixes of many lengths) and requests
    that share no prefix (the unshared pool, packed without any cache)."""
    fsc = data / "rlprompt_fsc" / "16-shot"
    reqs = [LLRequest(f"{SST2_PROMPT}\nReview: {s}\nSentiment:", label)
            for s in _tsv(fsc / "sst-2" / "test.tsv", 12) for label in (" negative", " positive")]
    reqs += [LLRequest(f"{AGNEWS_PROMPT}\nArticle: {s}\nTopic:", label)
             for s in _tsv(fsc / "agnews" / "test.tsv", 4) for label in AGNEWS_LABELS]
    reqs += [LLRequest(s, " The end.") for s in _tsv(fsc / "trec" / "test.tsv", 3)]
    return reqs


def both_ways(backend: HFBackend, reqs: list[LLRequest]) -> tuple[list, list]:
    backend.pack_scoring = True
    try:
        packed = backend.loglikelihood(reqs)
        backend.pack_scoring = False
        padded = backend.loglikelihood(reqs)
    finally:
        backend.pack_scoring = backend._packing_applies()
    return packed, padded


# ---- planning (pure Python, no model) ---------------------------------------------------------

def test_packs_bound_suffix_tokens_and_keep_order() -> None:
    prefix = list(range(1000, 1040))
    rows = [_Row(tuple(prefix + [7] * n), [_Scored(i, tuple(prefix + [7] * (n + 1)), len(prefix) + n - 1)])
            for i, n in enumerate([PACKED_TOKENS + 10, *[PACKED_TOKENS // 2] * 3, 5, 5])]
    packs = HFBackend._packs(rows, len(prefix), len(prefix))
    assert [r for p in packs for r in p] == rows  # every row once, in order
    assert [len(p) for p in packs] == [1, 2, 3]  # a too-long suffix alone; then greedy up to the budget
    for pack in packs[1:]:
        assert sum(len(r.inputs) - len(prefix) for r in pack) <= PACKED_TOKENS


def test_packs_bound_logit_rows() -> None:
    # Long continuations (scored positions) close a pack before its tokens do.
    keep = MAX_LOGIT_ROWS // 2 + 1
    rows = [_Row(tuple(range(keep + 1)), [_Scored(i, tuple(range(keep + 2)), 0)]) for i in range(3)]
    assert [len(p) for p in HFBackend._packs(rows, 0, 0)] == [1, 1, 1]


def test_packs_bound_attention_scores_over_a_long_prefix() -> None:
    past = MAX_PACKED_SCORES // 100  # 100 tokens of queries over this prefix fill the bound
    rows = [_Row(tuple(range(60)), [_Scored(i, tuple(range(61)), 59)]) for i in range(3)]
    assert [len(p) for p in HFBackend._packs(rows, 10, past)] == [1, 1, 1]  # 50 + 50 tokens would exceed it
    assert [len(p) for p in HFBackend._packs(rows, 10, 0)] == [3]


# ---- tiny random Llama (fast) -------------------------------------------------------------------

TINY_PROMPT = "classify the sentiment of the movie review as positive or negative the answer is "
TINY_INPUTS = ["good", "bad film", "a really great movie", "terrible plot", "the film is very bad", "not good",
               "great", "the review is really not terrible", "the plot is not very good the film is bad"]


@pytest.fixture(scope="module")
def tiny(tiny_lm_dir: Path) -> HFBackend:
    return HFBackend(str(tiny_lm_dir), device="cpu")


def test_tiny_lm_packed_matches_padded(tiny: HFBackend, monkeypatch: pytest.MonkeyPatch) -> None:
    """One prefix group, multi-token continuations, and requests sharing no prefix (the unshared pool),
    in packs of every size from one suffix to all."""
    reqs = [LLRequest(TINY_PROMPT + x + " sentiment", label) for x in TINY_INPUTS
            for label in (" positive", " negative", " not very good")]
    reqs += [LLRequest(x, " the answer is good") for x in TINY_INPUTS[:4]]
    assert tiny.pack_scoring and tiny.model.config._attn_implementation == PACKED_ATTENTION
    packed, padded = both_ways(tiny, reqs)
    for size in (1, 7):
        monkeypatch.setattr(hf, "PACKED_TOKENS", size)
        small, _ = both_ways(tiny, reqs)
        packed += small
    for p, q in zip(packed, padded * 3):
        assert p.token_logprobs == pytest.approx(q.token_logprobs, abs=TOLERANCE)
        assert p.is_greedy == q.is_greedy
    assert len({round(q.logprob, 3) for q in padded}) > len(padded) // 2  # the scores tell requests apart


def _positions(backend: HFBackend) -> list[int]:
    """A counter of the token positions every forward of `backend` runs (prefix forwards included)."""
    seen = [0]

    def count(module: object, args: tuple, kwargs: dict) -> None:
        seen[0] += int(kwargs["input_ids"].numel())

    backend.model.register_forward_pre_hook(count, with_kwargs=True)
    return seen


def _trie_nodes(backend: HFBackend, reqs: list[LLRequest]) -> int:
    """The fewest positions an exact scorer runs: distinct token prefixes of the model inputs."""
    return len({tokens[:i] for tokens, _ in backend.token_pairs(reqs) for i in range(1, len(tokens))})


@pytest.mark.parametrize("soft", [False, True])
def test_nested_prefixes_run_each_shared_token_once(tiny_lm_dir: Path, soft: bool,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Retrieval's shape: instruction and shared demos, then a retrieved demo that a few inputs (or only
    one) share, then the input. Each group's prefix extends the KV of the one before it, so the scorer runs
    about the token trie's positions (a group per demo recomputing the shared part, or one group re-reading
    every demo, runs far more), and every score equals the request's score alone. The tiny model's words
    are a few tokens each, so a forward's fixed cost is set to one token here."""
    monkeypatch.setattr(hf, "MIN_SHARED_TOKENS_SAVED", 1)
    backend = HFBackend(str(tiny_lm_dir), device="cpu")
    if soft:  # a soft prompt's KV comes first: the reused KV is sliced after it
        with torch.inference_mode():
            backend._soft_kv = backend._prefix_cache(tuple(backend.tokenizer("movie reviews follow")["input_ids"]))
        assert backend.soft_tokens > 0
    shared = TINY_PROMPT + " ".join(f"review {x} answer good" for x in TINY_INPUTS[:3])
    demos = [f" review {x} answer {y}" for x in TINY_INPUTS for y in ("good", "bad")]
    reqs = [LLRequest(f"{shared}{demo} review {x} answer", label)
            for d, demo in enumerate(demos) for x in TINY_INPUTS[d % 3:d % 3 + (3 if d < 6 else 1)]
            for label in (" good", " bad")]
    seen = _positions(backend)
    together = backend.loglikelihood(reqs)
    ran = seen[0]
    alone = [backend.loglikelihood([r])[0] for r in reqs]
    for req, t, a in zip(reqs, together, alone):
        assert t.error is None and t.logprob == pytest.approx(a.logprob, abs=TOLERANCE), req
    bound = _trie_nodes(backend, reqs)
    assert bound <= ran <= 1.1 * bound, (ran, bound)


def test_packing_does_not_apply_to_eager_attention(tiny_lm_dir: Path) -> None:
    eager = HFBackend(str(tiny_lm_dir), device="cpu", attn_implementation="eager")
    assert not eager.pack_scoring and eager.model.config._attn_implementation == "eager"
    reqs = [LLRequest(TINY_PROMPT + x, " positive") for x in TINY_INPUTS]
    assert all(r.error is None and r.logprob < 0 for r in eager.loglikelihood(reqs))


# ---- real model ---------------------------------------------------------------------------------

@pytest.mark.model
def test_packing_is_chosen_on_cpu_for_llama(hf_embedded: HFBackend) -> None:
    assert hf_embedded.model.config.model_type == "llama" and hf_embedded.device == "cpu"
    assert hf_embedded.pack_scoring is True and hf_embedded.model.config._attn_implementation == PACKED_ATTENTION


@pytest.mark.model
def test_packed_loglikelihoods_match_padded_batches(hf_embedded: HFBackend, shared_data: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    reqs = real_requests(shared_data)
    packed, padded = both_ways(hf_embedded, reqs)
    # Small packs: many packs per group, and a suffix longer than the budget alone in its pack.
    monkeypatch.setattr(hf, "PACKED_TOKENS", 24)
    small, _ = both_ways(hf_embedded, reqs)
    for req, p, s, q in zip(reqs, packed, small, padded):
        assert p.error is None and q.error is None
        for got in (p, s):
            assert got.logprob == pytest.approx(q.logprob, abs=TOLERANCE), req
            assert got.token_logprobs == pytest.approx(q.token_logprobs, abs=TOLERANCE), req
            assert got.is_greedy == q.is_greedy, req
    assert any(len(q.token_logprobs) > 1 for q in padded)  # multi-token labels were scored
    assert sum(q.is_greedy for q in padded) not in (0, len(padded))  # a wrong target shift would not keep both


@pytest.mark.model
def test_packed_scoring_after_a_soft_prompt(hf_embedded: HFBackend, shared_data: Path) -> None:
    """A soft prompt's KV comes before every prefix group and before the unshared pool; here the KV of
    real tokens stands in for it (a soft prompt is kept as just such a KV)."""
    soft = copy.copy(hf_embedded)  # the same model, its own _soft_kv
    with torch.inference_mode():
        soft._soft_kv = hf_embedded._prefix_cache(tuple(hf_embedded.tokenizer("Movie reviews follow.")["input_ids"]))
    assert soft.soft_tokens > 0 and hf_embedded.soft_tokens == 0
    reqs = real_requests(shared_data)
    packed, padded = both_ways(soft, reqs)
    for req, p, q in zip(reqs, packed, padded):
        assert p.error is None and p.logprob == pytest.approx(q.logprob, abs=TOLERANCE), req
    plain = hf_embedded.loglikelihood(reqs[:2])  # the soft KV must change the scores, or it was not used
    assert abs(plain[0].logprob - packed[0].logprob) > 1e-3
