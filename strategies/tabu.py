"""Tabu search over phrase edits: each step moves to the best of `candidates` random edits of the
current prompt that is not on the tabu list, even when it is worse, and puts it on the list (FIFO,
`tabu_size` long). Candidates on the list are never proposed, scored or moved to.

Plum's version keeps hill climbing's "move only if better" and drops a tabu candidate only with
probability 0.5; with that rule the current prompt can never return to an old state anyway, so the
list does little. This is the classic rule, which lets the search walk out of a local optimum; the
best prompt ever scored is what the run reports."""
from __future__ import annotations

from collections import deque

from pydantic import Field

from promptopt.strategies.blocks.phrase_search import LocalSearch, PhraseSearchConfig
from promptopt.strategies.blocks.population import Member, best
from promptopt.registry import register_strategy
from promptopt.strategy import Context


class TabuConfig(PhraseSearchConfig):
    tabu_size: int = Field(5, ge=1, description="how many recent states are tabu (Plum: 5)")


@register_strategy("tabu")
class Tabu(LocalSearch):
    Config = TabuConfig
    config: TabuConfig

    def start(self, ctx: Context, scored: list[Member]) -> None:
        super().start(ctx, scored)
        self.tabu: deque[str] = deque([self.current.id], maxlen=self.config.tabu_size)

    def propose(self, ctx: Context) -> list[Member]:
        return self.mutants(ctx, [self.current] * self.config.candidates, exclude=self.tabu)

    def update(self, ctx: Context, scored: list[Member]) -> None:
        usable = [m for m in scored if m.id not in self.tabu and m.rank_key > float("-inf")]
        if usable:
            self.current = best(usable)
            self.tabu.append(self.current.id)
