"""Rewards for RL prompt search (RLPrompt, Deng et al. 2022; see research/algorithms-rl-pmpo.md §1.3).

Classification: for each example, the gap between the gold option's probability and the best
wrong option's (probabilities renormalised over the options only), scaled asymmetrically so that
crossing into "correct" earns a bonus; a prompt's reward is the mean over its examples.
Generation: the task metric, or the mean log-likelihood of the gold output (the negative loss).
Rewards of the prompts sampled in one step are then z-scored against each other, which acts as
the per-step baseline both training algorithms rely on.
"""
from __future__ import annotations

import math
import statistics
from typing import Sequence

from promptopt.types import Evaluation, ExampleResult

# RLPrompt's few-shot classification constants (fsc_helpers.py): lambda2 / lambda1.
CORRECT_COEFF = 200.0
INCORRECT_COEFF = 180.0
ZSCORE_EPS = 1e-4  # keeps identical rewards from dividing by zero, as in the official code


def option_probabilities(logprobs: Sequence[float]) -> list[float]:
    """Softmax over the options only: the task LM's distribution restricted to the verbalizers."""
    top = max(logprobs)
    weights = [math.exp(lp - top) for lp in logprobs]
    total = sum(weights)
    return [w / total for w in weights]


def classification_gap(result: ExampleResult, label: int, correct_coeff: float = CORRECT_COEFF,
                       incorrect_coeff: float = INCORRECT_COEFF) -> float:
    """Scaled P(gold) - max P(wrong): positive (x correct_coeff) iff the prediction is right."""
    if result.option_logprobs is None:
        raise ValueError(f"example {result.example_id} has no option log-probabilities to reward")
    probs = option_probabilities(result.option_logprobs)
    gap = probs[label] - max(p for i, p in enumerate(probs) if i != label)
    return gap * (correct_coeff if gap > 0 else incorrect_coeff)


def classification_reward(ev: Evaluation, labels: dict[str, int], correct_coeff: float = CORRECT_COEFF,
                          incorrect_coeff: float = INCORRECT_COEFF) -> float:
    """Mean scaled gap of one prompt over the examples it was scored on."""
    gaps = [classification_gap(r, labels[r.example_id], correct_coeff, incorrect_coeff) for r in ev.results]
    return sum(gaps) / len(gaps)


def mean_score(ev: Evaluation) -> float:
    """Generation reward: the mean per-example score (task metric, or gold log-likelihood for
    objective="loss" evaluations, which is the negative loss)."""
    return ev.score


def zscore(rewards: Sequence[float]) -> list[float]:
    """Standardise rewards across the prompts of one step (sample std, as torch.std computes it)."""
    if len(rewards) < 2:
        return [0.0 for _ in rewards]
    mean = statistics.fmean(rewards)
    std = statistics.stdev(rewards)
    return [(r - mean) / (std + ZSCORE_EPS) for r in rewards]
