"""Demonstrations: how a candidate's demo ids become the text before the query, and how demo sets are drawn.

A demo is a train example rendered with the task's own query format (the template's text after
`{prompt}`, or the task's `demo_format`) with its gold answer filled in: the option text for a
"choose" task, the target (or a bootstrapped output) for a "generate" task. Instruction and demos
form one prefix placed where `{prompt}` stands, so the scorers' shared-prefix reuse keeps working.
"""
from __future__ import annotations

import random
from collections import defaultdict
from typing import Sequence

from promptopt.errors import ConfigError
from promptopt.types import Example


def sample_demo_ids(pool: Sequence[Example], k: int, rng: random.Random, *, balanced: bool = True,
                    labeled: bool = True) -> tuple[str, ...]:
    """k distinct example ids from `pool`. Balanced: round-robin over labels (a random order of
    labels and of examples within each), so k=4 on a 2-class task gives 2 + 2; then shuffled."""
    if k > len(pool):
        raise ConfigError(f"cannot draw {k} demos from a train pool of {len(pool)} examples")
    if not (balanced and labeled) or any(ex.label is None for ex in pool):
        return tuple(ex.id for ex in rng.sample(list(pool), k))
    by_label: dict[int, list[Example]] = defaultdict(list)
    for ex in pool:
        by_label[ex.label].append(ex)  # type: ignore[index]
    queues = []
    for label in sorted(by_label):
        group = list(by_label[label])
        rng.shuffle(group)
        queues.append(group)
    rng.shuffle(queues)
    picked: list[Example] = []
    while len(picked) < k:
        for q in queues:
            if q and len(picked) < k:
                picked.append(q.pop())
    rng.shuffle(picked)
    return tuple(ex.id for ex in picked)


def check_demo_ids(demo_ids: Sequence[str], train_ids: set[str], where: str = "a candidate") -> None:
    """Demos come from train only: a dev or test id (or an unknown one) is refused."""
    bad = [d for d in demo_ids if d not in train_ids]
    if bad:
        raise ConfigError(f"{where} has demo id(s) {bad[:3]} that are not train examples "
                          "(demos come from the train split only)")
    if len(set(demo_ids)) != len(demo_ids):
        raise ConfigError(f"{where} repeats a demo id")
