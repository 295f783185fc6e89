"""RLPrompt as a strategy: the contract suite on the toy task with a tiny policy backbone, what it asks
the loop for, its notes and plot, its config presets, checkpointing, and (model tier) the real backbone."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from promptopt.budget import Budget
from promptopt.config import strategy_config
from promptopt.errors import ConfigError
from promptopt.cli.plots import plot_rl_curves, rl_curves
from promptopt.registry import get
from promptopt.testing import StrategyContract, events_of, make_run, toy_task

from promptopt.strategies.rlprompt import PAPER, RLPrompt

SMALL = {"prompt_length": 3, "adapter_hidden": 32, "prompts_per_step": 4, "examples_per_reward": 4,
         "steps": 6, "eval_every": 2, "top_k": 8}


def make(tiny_lm_dir: Path, **options: Any) -> RLPrompt:
    return RLPrompt(strategy_config(RLPrompt, {**SMALL, "policy_model": str(tiny_lm_dir), **options}))


class TestRLPromptContract(StrategyContract):
    @pytest.fixture(autouse=True)
    def _backbone(self, tiny_lm_dir: Path) -> None:
        self.tiny_lm_dir = tiny_lm_dir

    def make_strategy(self, **options: Any) -> RLPrompt:
        return make(self.tiny_lm_dir, **options)


def test_registered_by_name() -> None:
    assert get("strategies", "rlprompt") is RLPrompt


def test_samples_are_scored_on_the_steps_train_batch(tiny_lm_dir: Path) -> None:
    run = make_run(make(tiny_lm_dir), task=toy_task(), budget=Budget(max_examples=400))
    first = run.ask()
    samples = [r for r in first if r.candidate.origin == "rl.sample"]
    greedy = [r for r in first if r.candidate.origin == "rl.greedy"]
    assert len(samples) == 4 and len(greedy) == 1 and greedy[0].split == "dev"
    batches = {r.example_ids for r in samples}
    assert len(batches) == 1 and all(r.split == "train" for r in samples)
    assert len(next(iter(batches))) == 4 and all(i.startswith("train-") for i in next(iter(batches)))
    assert all(len(r.candidate.text.split()) == 3 for r in samples)


def test_notes_record_every_step_and_plot(tmp_path: Path, tiny_lm_dir: Path) -> None:
    run = make_run(make(tiny_lm_dir), task=toy_task(), budget=Budget(max_examples=400), run_dir=tmp_path)
    report = run.run()
    run.log.close()
    rewards, dev = rl_curves(tmp_path)
    assert [s for s, _ in rewards] == list(range(1, 7))
    # Greedy prompts are scored every 2 steps and after the last; a repeated one is not rescored.
    assert dev and dev[0][0] == 0 and {s for s, _ in dev} <= {0, 2, 4, 6}
    assert report.stop_reason == "strategy finished"
    origins = {e["origin"] for e in events_of(tmp_path) if e["type"] == "candidate"}
    assert {"rl.sample", "rl.greedy"} <= origins
    png = plot_rl_curves(tmp_path)
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_generation_task_rewards_with_gold_loglikelihood(tiny_lm_dir: Path) -> None:
    run = make_run(make(tiny_lm_dir, steps=1), task=toy_task(output="generate"), budget=Budget(max_examples=400))
    reqs = run.ask()
    assert {r.objective for r in reqs if r.candidate.origin == "rl.sample"} == {"loss"}


def test_paper_preset_fills_only_unset_settings() -> None:
    cfg = strategy_config(RLPrompt, {"preset": "paper", "steps": 7})
    assert cfg.steps == 7 and cfg.prompts_per_step == PAPER["prompts_per_step"] == 16
    assert cfg.learning_rate == 5e-5 and cfg.examples_per_reward is None and cfg.target_update_rate == 1e-3
    assert strategy_config(RLPrompt, {}).steps == 30


def test_algorithm_is_validated() -> None:
    with pytest.raises(ConfigError):
        strategy_config(RLPrompt, {"algorithm": "ppo"})


def test_sql_and_reinforce_are_different_updates(tiny_lm_dir: Path) -> None:
    def adapter_after(algorithm: str) -> torch.Tensor:
        strategy = make(tiny_lm_dir, steps=1, algorithm=algorithm)
        make_run(strategy, task=toy_task(), budget=Budget(max_examples=400)).run()
        return strategy.trainer.policy.adapter.down.weight.detach().clone()
    assert not torch.equal(adapter_after("sql"), adapter_after("reinforce"))


@pytest.mark.model
def test_embedded_backbone_runs_a_few_steps() -> None:
    strategy = RLPrompt(strategy_config(RLPrompt, {"steps": 3, "prompts_per_step": 4, "examples_per_reward": 4,
                                                   "eval_every": 3}))
    report = make_run(strategy, task=toy_task(), budget=Budget(max_examples=400)).run()
    assert report.stop_reason == "strategy finished" and strategy.steps_done == 3
    assert len(strategy.trainer.policy.token_ids) > 40000  # the full visible vocabulary of SmolLM2
