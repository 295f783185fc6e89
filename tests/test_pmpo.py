"""PMPO with fakes: the contract, mask analysis in one backend call, rewrites aimed at the harmful
segment, the rule-based segmentation fallback, budgets, and generation tasks."""
import re
from dataclasses import replace

import pytest

from promptopt.backends.base import CHAT, GENERATE
from promptopt.backends.fake import FakeBackend
from promptopt.budget import Budget
from promptopt.errors import CapabilityError
from promptopt.strategies.pmpo import PMPO, PMPOConfig
from promptopt.testing import (BAD_PROMPT, HARMFUL, HarmfulSentenceBackend, StrategyContract, events_of, make_run,
                               toy_task)

FIXED = "Is the text good or bad? Reply with one word."
SMALL = dict(iterations=3, train_examples=8, hard_examples=2, rewrites_per_example=2)


class TestPMPO(StrategyContract):
    def make_strategy(self, **options):
        return PMPO(PMPOConfig(**{**SMALL, **options}))


def bad_seed_task():
    return replace(toy_task(), seed_prompts=(BAD_PROMPT,))


def analysis_aware_optimizer(seen: list[str]) -> FakeBackend:
    """Marks every sentence for masking; proposes the fixed prompt only when the rewrite request
    reports the harmful sentence as hurting, otherwise a useless variant."""
    def reply(req):
        text = req.messages[-1][1]
        seen.append(text)
        if text.startswith("Copy the instruction"):
            prompt = text.split("Instruction:\n", 1)[1]
            return re.sub(r"([^.?!]+[.?!])", r"<mask>\1</mask>", prompt)
        if f'"{HARMFUL}" hurts' in text:
            return f"<prompt>{FIXED}</prompt>"
        return f"<prompt>{BAD_PROMPT} Think.</prompt>"
    return FakeBackend("optimizer", replies=reply)


def test_harmful_segment_is_found_and_rewritten_away(tmp_path):
    seen: list[str] = []
    run = make_run(PMPO(PMPOConfig(iterations=2, train_examples=12, hard_examples=2, rewrites_per_example=2)),
                   task=bad_seed_task(), target=HarmfulSentenceBackend(), optimizer=analysis_aware_optimizer(seen),
                   run_dir=tmp_path, budget=Budget(max_examples=None))
    report = run.run()
    run.log.close()
    assert report.best_prompt == FIXED and report.best_dev == 1.0 and report.seed_dev == 0.5
    notes = [e for e in events_of(tmp_path) if e["type"] == "note"]
    first = next(n for n in notes if n["kind"] == "pmpo.attribution")
    deltas = {s["segment"]: s["delta_loss"] for s in first["segments"]}
    assert min(deltas, key=deltas.get) == HARMFUL and deltas[HARMFUL] < -1.0
    masks = [c for c in run.history.candidates() if c.origin == "pmpo.mask"]
    assert {c.meta["segment"] for c in masks} >= {HARMFUL} and all(c.parents for c in masks)
    rewrite = next(c for c in run.history.candidates() if c.text == FIXED)
    assert rewrite.origin == "pmpo.rewrite" and rewrite.meta["segment"] == HARMFUL
    assert rewrite.meta["delta_loss"] == pytest.approx(deltas[HARMFUL])
    # Rewrites are aimed at the highest-loss examples: under the seed those are the "good" ones.
    first_round = [t for t in seen if t.startswith("You improve") and f"instruction:\n{BAD_PROMPT}\n" in t]
    assert len(first_round) == 4 and all("is good" in t for t in first_round)


def test_incumbent_and_masked_variants_are_scored_in_one_backend_call():
    target = HarmfulSentenceBackend()
    run = make_run(PMPO(PMPOConfig(**SMALL)), task=bad_seed_task(), target=target,
                   optimizer=analysis_aware_optimizer([]), budget=Budget(max_examples=None))
    reqs = run.ask()
    assert [r.candidate.origin for r in reqs] == ["seed", "pmpo.mask", "pmpo.mask", "pmpo.mask", "seed"]
    assert [r.split for r in reqs] == ["train"] * 4 + ["dev"]  # the seed's dev score rides along
    assert {r.objective for r in reqs[:4]} == {"loss"}
    run.tell(run.score(reqs))
    assert target.calls == 1


def test_unusable_segmentation_falls_back_to_sentences(tmp_path):
    run = make_run(PMPO(PMPOConfig(**SMALL)), task=bad_seed_task(), run_dir=tmp_path)
    reqs = run.ask()
    run.log.close()
    masked = [r.candidate.meta["segment"] for r in reqs if r.candidate.origin == "pmpo.mask"]
    assert masked == ["Is the text good or bad?", HARMFUL, "Reply with one word."]
    assert any(e.get("kind") == "pmpo.segment_fallback" for e in events_of(tmp_path))


def test_a_tight_budget_trims_rewrites_and_keeps_the_new_incumbent():
    # 12 train examples: analysis 4 x 12 + dev 12 = 60; then room for two rewrites, 12 kept for dev.
    run = make_run(PMPO(PMPOConfig(iterations=5, train_examples=12, hard_examples=2, rewrites_per_example=2)),
                   task=bad_seed_task(), target=HarmfulSentenceBackend(),
                   optimizer=analysis_aware_optimizer([]), budget=Budget(max_examples=96))
    report = run.run()
    assert run.tracker.examples <= 96
    assert report.best_prompt == FIXED
    assert sum(c.origin == "pmpo.rewrite" for c in run.history.candidates()) == 1  # two replies, one text


def test_generation_tasks_use_the_reference_cross_entropy():
    strategy = PMPO(PMPOConfig(**SMALL))
    run = make_run(strategy, task=toy_task(output="generate"))
    report = run.run()
    assert report.stop_reason == "strategy finished" and strategy.kind == "cross_entropy"
    seed = next(c for c in run.history.candidates() if c.origin == "seed")
    losses = run.history.results(seed.id, "train", "loss")
    assert len(losses) == 8 and all(r.logprob is not None and r.score < 0 for r in losses.values())


def test_target_without_loglikelihoods_fails_at_start():
    class GenerateOnly(FakeBackend):
        capabilities = frozenset({GENERATE, CHAT})

    with pytest.raises(CapabilityError, match="log-likelihoods"):
        make_run(PMPO(PMPOConfig()), task=toy_task(output="generate"), target=GenerateOnly())
