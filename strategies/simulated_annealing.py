"""Simulated annealing over phrase edits (Plum's HC with --simulated-anneal): like hill climbing, but
the step's best candidate replaces the current prompt even when worse, with probability
exp(Δ / T), T = temperature · exp(-step / cooling).

The reported prompt is the best one ever scored, not the last state (Plum's code returns the last
accepted state; see research/algorithms-search.md §3.7 item 10). The loop picks its finalists from
every scored candidate anyway; `best` is the same choice by this strategy's own objective."""
from __future__ import annotations

import math

from pydantic import Field

from promptopt.strategies.blocks.phrase_search import LocalSearch, PhraseSearchConfig
from promptopt.strategies.blocks.population import Member, best
from promptopt.registry import register_strategy
from promptopt.strategy import Context


class AnnealingConfig(PhraseSearchConfig):
    # Plum uses T0 = 10 on its 0-100 score scale; ours is 0-1.
    temperature: float = Field(0.1, gt=0.0, description="initial temperature, in objective units")
    cooling: float = Field(5.0, gt=0.0, description="steps for the temperature to fall by a factor e")


@register_strategy("simulated_annealing")
class SimulatedAnnealing(LocalSearch):
    Config = AnnealingConfig
    config: AnnealingConfig

    def update(self, ctx: Context, scored: list[Member]) -> None:
        if not scored or math.isnan(best(scored).fitness) or best(scored).dropped:
            return  # nothing usable (a candidate dropped from a race is never moved to)
        challenger = best(scored)
        delta = challenger.fitness - self.current.rank_key
        temperature = self.config.temperature * math.exp(-self.iteration / self.config.cooling)
        if delta > 0:
            self.current = challenger
        elif ctx.rng.random() < math.exp(delta / temperature):
            ctx.note("anneal.accept_worse", candidate=challenger.id, delta=round(delta, 6),
                     temperature=round(temperature, 6))
            self.current = challenger
