"""The RLPrompt policy, its losses and rewards, on a tiny randomly initialised causal LM (fast tier)."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from promptopt.errors import ConfigError
from promptopt.strategies.blocks.rl_policy import (PolicyTrainer, PromptPolicy, load_backbone, reinforce_loss, seeded_generator,
                                 sql_loss)
from promptopt.strategies.rlprompt.reward import classification_gap, classification_reward, zscore
from promptopt.testing import TINY_LM_WORDS
from promptopt.types import Evaluation, ExampleResult


def make_policy(tiny_lm_dir: Path, seed: int = 0, **options) -> PromptPolicy:
    backbone, tokenizer = load_backbone(str(tiny_lm_dir))
    settings = {"prompt_length": 3, "adapter_hidden": 32, **options}
    return PromptPolicy(backbone, tokenizer, generator=seeded_generator(seed), **settings)


def test_backbone_is_frozen_and_only_the_adapter_trains(tiny_lm_dir: Path) -> None:
    policy = make_policy(tiny_lm_dir)
    trainable = {name for name, p in policy.named_parameters() if p.requires_grad}
    assert trainable and all(name.startswith("adapter.") for name in trainable)
    before = {k: v.clone() for k, v in policy.backbone.state_dict().items()}
    trainer = PolicyTrainer(policy, algorithm="sql", learning_rate=1e-2, grad_clip=5.0, target_update_rate=0.1)
    sample = policy.sample(4, top_k=0, generator=seeded_generator(1))
    trainer.update(sample, [1.0, -1.0, 0.5, -0.5])
    assert all(torch.equal(before[k], v) for k, v in policy.backbone.state_dict().items())


def test_initial_policy_is_near_uniform(tiny_lm_dir: Path) -> None:
    policy = make_policy(tiny_lm_dir)
    probs = policy.logits(policy.backbone_states(torch.empty((1, 0), dtype=torch.long))[:, -1]).softmax(-1)
    assert torch.allclose(probs, torch.full_like(probs, 1 / probs.shape[-1]), atol=1e-4)


def test_sampling_is_a_function_of_the_generator_seed(tiny_lm_dir: Path) -> None:
    policy = make_policy(tiny_lm_dir)
    a = policy.sample(6, top_k=8, generator=seeded_generator(7)).actions
    b = policy.sample(6, top_k=8, generator=seeded_generator(7)).actions
    c = policy.sample(6, top_k=0, generator=seeded_generator(8)).actions
    assert a.shape == (6, 3) and torch.equal(a, b) and not torch.equal(a, c)


def test_restricted_vocabulary_is_all_it_emits(tiny_lm_dir: Path) -> None:
    policy = make_policy(tiny_lm_dir, vocabulary=["good", "bad", "movie"])
    sample = policy.sample(16, top_k=0, generator=seeded_generator(3))
    words = {w for row in sample.actions for w in policy.text(row).split()}
    assert words <= {"good", "bad", "movie"} and len(words) > 1
    with pytest.raises(ConfigError, match="exactly one token"):
        make_policy(tiny_lm_dir, vocabulary=["good movie"])


def test_default_vocabulary_drops_special_tokens(tiny_lm_dir: Path) -> None:
    policy = make_policy(tiny_lm_dir)
    assert set(policy.token_ids.tolist()) == set(range(3, 3 + len(TINY_LM_WORDS)))


def test_sql_loss_is_zero_at_path_consistency() -> None:
    # A one-token episode whose advantage equals r - V'(s): both terms vanish.
    logits = torch.tensor([[[0.0, math.log(3.0)]]])
    target = torch.zeros(1, 1, 2)
    actions = torch.tensor([[1]])
    advantage = math.log(3.0) - math.log(4.0)
    reward = torch.tensor([advantage + math.log(2.0)])
    assert float(sql_loss(logits, target, actions, reward)) == pytest.approx(0.0, abs=1e-6)
    assert float(sql_loss(logits, target, actions, reward + 1)) == pytest.approx(1.0, abs=1e-5)


def test_reinforce_loss_pushes_up_positive_advantages() -> None:
    logits = torch.zeros(2, 1, 3, requires_grad=True)
    reinforce_loss(logits, torch.tensor([[0], [1]]), torch.tensor([1.0, -1.0])).backward()
    grad = logits.grad[:, 0]
    assert grad[0, 0] < 0 < grad[1, 1]  # descent raises token 0 in row 0, lowers token 1 in row 1


@pytest.mark.parametrize("algorithm", ["sql", "reinforce"])
def test_policy_learns_a_token_the_reward_prefers(tiny_lm_dir: Path, algorithm: str) -> None:
    """The learning signal is real: the reward counts one token the untrained policy does not favour;
    within a few hundred steps the policy samples it most of the time and the greedy prompt is it."""
    policy = make_policy(tiny_lm_dir, seed=1, prompt_length=2)
    favoured = set(policy.greedy()[0].tolist())
    wanted = next(i for i in range(len(policy.token_ids)) if i not in favoured)
    trainer = PolicyTrainer(policy, algorithm=algorithm, learning_rate=3e-3, grad_clip=5.0,
                            target_update_rate=0.01)
    generator = seeded_generator(2)
    rates: list[float] = []
    for _ in range(300):
        sample = policy.sample(8, top_k=0, generator=generator)
        hits = (sample.actions == wanted).float().mean(1).tolist()
        rates.append(sum(hits) / len(hits))
        if sum(rates[-5:]) / 5 >= 0.75:
            break
        trainer.update(sample, [5 * z for z in zscore(hits)])
    assert sum(rates[:5]) / 5 < 0.25, "the wanted token was already common before training"
    assert sum(rates[-5:]) / 5 >= 0.75, f"not learned in {len(rates)} steps"
    assert policy.greedy()[0].tolist() == [wanted, wanted]


def test_gap_reward_is_asymmetric_and_z_scored() -> None:
    right = ExampleResult("a", "", 1.0, option_logprobs=(math.log(0.2), math.log(0.8)))
    wrong = ExampleResult("b", "", 0.0, option_logprobs=(math.log(0.8), math.log(0.2)))
    assert classification_gap(right, 1) == pytest.approx(200 * 0.6)
    assert classification_gap(wrong, 1) == pytest.approx(-180 * 0.6)
    ev = Evaluation("c", "train", (right, wrong))
    assert classification_reward(ev, {"a": 1, "b": 1}) == pytest.approx((120 - 108) / 2)
    z = zscore([1.0, 2.0, 3.0])
    assert z == pytest.approx([-1.0, 0.0, 1.0], abs=1e-3) and zscore([4.0]) == [0.0]
