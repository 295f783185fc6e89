"""hf generation with the shared prompt prefix: the prefix's KV runs once and is expanded over the batch;
greedy outputs are identical to the plain left-padded path, which stays the fallback."""
from __future__ import annotations

from pathlib import Path

import pytest

from promptopt.backends.base import GenRequest
from promptopt.backends.hf import HFBackend

TINY_INSTRUCTION = "classify the sentiment of the movie review as positive or negative the answer is not very "
TINY_INPUTS = ["good", "bad film", "a really great movie", "terrible plot", "the film is very bad",
               "not good", "great", "the review is really not terrible"]


def _both_paths(backend: HFBackend, reqs: list[GenRequest], monkeypatch: pytest.MonkeyPatch) -> tuple[list, list, int]:
    """(new-path results, old-path results, prefix forwards the new path ran)."""
    runs = []
    real = backend._prefix_cache
    monkeypatch.setattr(backend, "_prefix_cache", lambda prefix: runs.append(len(prefix)) or real(prefix))
    backend.share_generation_prefix = True
    try:
        new = backend.generate(reqs)
        backend.share_generation_prefix = False
        old = backend.generate(reqs)
    finally:
        backend.share_generation_prefix = True
    return new, old, len(runs)


@pytest.fixture(scope="module")
def tiny(tiny_lm_dir: Path) -> HFBackend:
    return HFBackend(str(tiny_lm_dir), device="cpu", batch_size=4)


def test_tiny_lm_greedy_outputs_are_identical_to_the_plain_path(tiny: HFBackend, monkeypatch) -> None:
    reqs = [GenRequest(prompt=TINY_INSTRUCTION + x, max_tokens=16) for x in TINY_INPUTS]
    new, old, prefix_runs = _both_paths(tiny, reqs, monkeypatch)
    assert [(r.text, r.finish_reason, r.usage.completion_tokens) for r in new] == \
           [(r.text, r.finish_reason, r.usage.completion_tokens) for r in old]
    assert any(r.text for r in new)
    assert prefix_runs == 1  # two chunks of 4 share one prefix forward
    assert [r.usage.prompt_tokens for r in new] == [r.usage.prompt_tokens for r in old]


def test_prompts_without_a_shared_prefix_take_the_plain_path(tiny: HFBackend, monkeypatch) -> None:
    reqs = [GenRequest(prompt=x, max_tokens=8) for x in ("good movie", "bad", "the plot is terrible", "not")]
    new, old, prefix_runs = _both_paths(tiny, reqs, monkeypatch)
    assert prefix_runs == 0 and [r.text for r in new] == [r.text for r in old]


def test_generation_prefix_stops_before_each_prompts_last_token() -> None:
    same = [list(range(40)), list(range(40))]  # identical prompts: the last token still runs per row
    assert HFBackend._generation_prefix(same) == tuple(range(39))
    assert HFBackend._generation_prefix([list(range(40))]) == ()  # one row: nothing to share
    assert HFBackend._generation_prefix([[1, 2, 3, 9], [1, 2, 3, 8]]) == ()  # saves too little


@pytest.mark.model
def test_embedded_model_greedy_outputs_are_identical_to_the_plain_path(hf_embedded: HFBackend, monkeypatch) -> None:
    instruction = ("Answer the question with one short sentence. Think about what the question asks, "
                   "and give only the answer.\nQuestion: ")
    questions = ["What is the capital of France?", "How many legs does a spider have?", "What colour is the sky?",
                 "Who wrote Hamlet?", "What is 2 + 3?", "What do bees make?", "Which planet is the largest?",
                 "What is frozen water called?"]
    reqs = [GenRequest(prompt=f"{instruction}{q}\nAnswer:", max_tokens=16) for q in questions]
    new, old, prefix_runs = _both_paths(hf_embedded, reqs, monkeypatch)
    assert [(r.text, r.finish_reason) for r in new] == [(r.text, r.finish_reason) for r in old]
    assert prefix_runs == 1
