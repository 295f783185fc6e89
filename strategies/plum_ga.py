"""Genetic algorithm over phrase edits (Plum's GA-M, and GA-C with `crossover=true`).

Each step: with crossover on, `offspring` children are made by one-point crossover of the phrase
lists of two tournament-selected parents (Plum's GA-C); then one tournament-selected parent gives
`candidates` mutants (Plum's GA-M). The population keeps the `population` fittest distinct prompts of
parents and children.

Deviations from Plum's code, for one GA with a flag: GA-M appends only the step's best child to an
uncapped population (even when worse) and GA-C mutates every member with probability 0.5; here both
modes share GA-C's elitist top-N survival and GA-M's single mutated parent per step."""
from __future__ import annotations

from pydantic import Field

from promptopt.strategies.blocks.edits import crossover, is_sane, render, tidy
from promptopt.strategies.blocks.phrase_search import PhraseSearch, PhraseSearchConfig
from promptopt.strategies.blocks.population import Member, top, tournament
from promptopt.registry import register_strategy
from promptopt.strategy import Context


class PlumGAConfig(PhraseSearchConfig):
    population: int = Field(10, ge=1, description="prompts kept between steps (Plum GA-C: 10)")
    tournament: int = Field(3, ge=1, description="draws per tournament for the mutated parent (scripts: 5)")
    crossover: bool = Field(False, description="also make children by phrase crossover (Plum's GA-C)")
    offspring: int = Field(5, ge=1, description="crossover children per step, when crossover is on")
    crossover_tournament: int = Field(2, ge=1, description="draws per tournament for a crossover parent")


@register_strategy("plum_ga")
class PlumGA(PhraseSearch):
    Config = PlumGAConfig
    config: PlumGAConfig
    population: list[Member]

    def start(self, ctx: Context, scored: list[Member]) -> None:
        self.population = top(scored, self.config.population)

    def propose(self, ctx: Context) -> list[Member]:
        children = self._crossovers(ctx) if self.config.crossover else []
        parent = tournament(ctx.rng, self.population, self.config.tournament)
        return children + self.mutants(ctx, [parent] * self.config.candidates, exclude={c.id for c in children})

    def _crossovers(self, ctx: Context) -> list[Member]:
        children: dict[str, Member] = {}
        for _ in range(self.config.offspring):
            a, b = (tournament(ctx.rng, self.population, self.config.crossover_tournament) for _ in range(2))
            pa, pb = self.segment(a.text), self.segment(b.text)
            cut = ctx.rng.randrange(max(len(pa), len(pb)))
            text = tidy(render(crossover(pa, pb, cut)))
            child = Member(a.candidate.revise(text, parents=(a.id, b.id), origin="plum.crossover",
                                                meta={"edit": {"op": "crossover", "cut": cut}}),
                           # phrases deleted on either side can come back, unless the child has them
                           deleted=tuple(p for p in dict.fromkeys(a.deleted + b.deleted) if p not in text))
            if is_sane(text) and child.id not in (a.id, b.id):
                children.setdefault(child.id, child)
        return list(children.values())

    def update(self, ctx: Context, scored: list[Member]) -> None:
        self.population = top(self.population + scored, self.config.population)
