"""Hill climbing over phrase edits (GrIPS; Plum's HC): each step makes `candidates` random edits of
the current prompt and moves to the best of them only if it scores strictly higher."""
from __future__ import annotations

from promptopt.strategies.blocks.phrase_search import LocalSearch
from promptopt.strategies.blocks.population import Member, best
from promptopt.registry import register_strategy
from promptopt.strategy import Context


@register_strategy("hill_climb")
class HillClimb(LocalSearch):
    def update(self, ctx: Context, scored: list[Member]) -> None:
        if scored and best(scored).rank_key > self.current.rank_key:
            self.current = best(scored)
