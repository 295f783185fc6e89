"""EvoPrompt's differential evolution: for each member x of the population, the optimizer LLM finds
the parts where two other members a and b differ, mutates those parts, puts them into the best prompt
so far, and crosses the result with x; the child replaces x only if it scores higher.

"Best" is the best prompt ever scored, including initial prompts that did not enter the population
(as in EvoPrompt). EvoPrompt calls the LLM member by member and updates the best as it goes; we ask
for all of a generation's children in one batched call, so the best is updated once per generation.
With `racing` on, children race against the best prompt so far, and one dropped from the race does
not replace its x (it was significantly worse than the best; it may still have beaten x).
On a program each child edits one component of x, in turns (strategies/blocks/evoprompt.py)."""
from __future__ import annotations

from promptopt.strategies.blocks.components import text_of
from promptopt.strategies.blocks.evoprompt import COMPONENT, DE, PARAPHRASE, Evolution, EvolutionConfig
from promptopt.strategies.blocks.population import Member, best
from promptopt.registry import register_strategy
from promptopt.strategy import Context


class DEConfig(EvolutionConfig):
    TEMPLATES = (PARAPHRASE, DE, COMPONENT)


@register_strategy("evoprompt_de")
class EvoPromptDE(Evolution):
    Config = DEConfig
    _slots: list[int]  # the population position each proposed child competes for

    def generation(self, ctx: Context) -> list[Member]:
        leader = self.best or best(self.population)
        requests, slots = [], []
        for j, x in enumerate(self.population):
            others = [m for m in self.population if m.id != x.id]
            a, b = ctx.rng.sample(others, 2) if len(others) >= 2 else [ctx.rng.choice(self.population)
                                                                        for _ in range(2)]
            name = self.choice.pick(x.candidate)  # a program: the component this child edits
            ta, tb, tbest, tx = (text_of(m.candidate, name) for m in (a, b, leader, x))
            text = self.prompts["de"].format(a=ta, b=tb, best=tbest, current=tx)
            requests.append((text, (x, a, b, leader), name))
            slots.append(j)
        children = self.ask_optimizer(ctx, requests, "evoprompt.de")
        self._slots = [j for j, c in zip(slots, children) if c]
        return [c for c in children if c]

    def survive(self, ctx: Context, children: list[Member]) -> None:
        for j, child in zip(self._slots, children):
            if child.rank_key > self.population[j].rank_key:
                self.population[j] = child
