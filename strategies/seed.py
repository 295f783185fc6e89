"""The seed prompt, no search: the baseline row of a comparison (`promptopt sweep --strategies seed,...`).

It proposes nothing, so the run goes straight to its final report, which scores the seed prompt on the
whole dev split and on the test sample like any other run's chosen prompt: the same scorer, the same
examples, a log and a summary. Its search spends no examples."""
from __future__ import annotations

from typing import Sequence

from promptopt.registry import register_strategy
from promptopt.strategy import Context, ScoreRequest, StrategyConfig
from promptopt.types import Candidate, Evaluation


class SeedConfig(StrategyConfig):
    """No settings: the seed prompt is the run's (`--prompt`, else the task's first)."""


@register_strategy("seed")
class Seed:
    Config = SeedConfig
    done_reason = "the seed prompt, no search"

    def __init__(self, config: SeedConfig):
        self.config = config

    def ask(self, ctx: Context) -> Sequence[Candidate | ScoreRequest]:
        return []

    def tell(self, ctx: Context, evals: Sequence[Evaluation]) -> None:
        pass
