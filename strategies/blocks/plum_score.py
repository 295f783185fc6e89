"""Plum's search objective: balanced accuracy plus a weighted entropy of the predicted labels.

Plum scores a prompt by 100 * balanced accuracy + 10 * H(predicted-label frequencies) (natural log).
The entropy term penalizes prompts that make the model answer one label for everything, which plain
accuracy on a small, balanced score set rewards too easily. We keep the 0..1 scale of the task
metric, so the default weight is 10 / 100 = 0.1. Tasks that generate text use the task metric.

"likelihood" (our addition, not Plum's) scores the mean log-probability of the gold option,
normalized over the options. When every prompt makes a small model answer the same label, accuracy
is flat and a search cannot tell its candidates apart; the likelihood still moves.
"""
from __future__ import annotations

import math
from collections import Counter
from typing import Literal, Mapping, Sequence

from promptopt.task import Task
from promptopt.types import ExampleResult

ObjectiveName = Literal["plum", "task", "likelihood"]
PLUM_ENTROPY_WEIGHT = 0.1


def predicted_label(task: Task, result: ExampleResult) -> int | None:
    """The option the model chose: argmax of the option log-probabilities, else the output text."""
    if result.option_logprobs:
        lps = result.option_logprobs
        return max(range(len(lps)), key=lps.__getitem__)
    texts = [o.strip() for o in task.options]
    return texts.index(result.output.strip()) if result.output.strip() in texts else None


def balanced_accuracy(gold: Sequence[int], pred: Sequence[int | None]) -> float:
    """Mean recall over the gold labels present."""
    per_label: dict[int, list[bool]] = {}
    for g, p in zip(gold, pred):
        per_label.setdefault(g, []).append(g == p)
    if not per_label:
        return math.nan
    return sum(sum(hits) / len(hits) for hits in per_label.values()) / len(per_label)


def label_entropy(pred: Sequence[int | None]) -> float:
    """Entropy (nats) of the predicted-label frequencies; unparseable predictions are left out."""
    counts = Counter(p for p in pred if p is not None)
    total = sum(counts.values())
    return -sum(c / total * math.log(c / total) for c in counts.values()) if total else 0.0


class Objective:
    """Scores a candidate from its per-example results: Plum's score ("plum"), the mean gold-option
    log-probability ("likelihood"), or the mean task metric ("task", and always for generation tasks)."""

    def __init__(self, task: Task, name: ObjectiveName = "plum", entropy_weight: float = PLUM_ENTROPY_WEIGHT):
        self.task = task
        self.name = name if task.output == "choose" else "task"
        self.entropy_weight = entropy_weight
        self._gold = {ex.id: ex.label for split in ("train", "dev") for ex in task.split(split)}

    def __call__(self, results: Mapping[str, ExampleResult]) -> float:
        """NaN when there is nothing to score (e.g. every evaluation of the candidate failed)."""
        if not results:
            return math.nan
        if self.name == "task":
            return sum(r.score for r in results.values()) / len(results)
        ids = sorted(results)
        if self.name == "likelihood":
            return sum(_gold_logprob(results[i], self._gold[i]) for i in ids) / len(ids)  # type: ignore[arg-type]
        gold = [self._gold[i] for i in ids]
        pred = [predicted_label(self.task, results[i]) for i in ids]
        return balanced_accuracy(gold, pred) + self.entropy_weight * label_entropy(pred)  # type: ignore[arg-type]


def _gold_logprob(result: ExampleResult, gold: int) -> float:
    """log p(gold option | options): 0 for a sure right answer, very negative for a sure wrong one."""
    lps = result.option_logprobs
    if not lps:
        return -math.inf if result.score <= 0 else 0.0  # no log-probabilities: right or wrong only
    top = max(lps)
    return lps[gold] - top - math.log(sum(math.exp(x - top) for x in lps))
