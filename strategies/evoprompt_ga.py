"""EvoPrompt's genetic algorithm: each generation draws a pool of `population` parents by roulette
wheel (probability proportional to fitness), and for each child asks the optimizer LLM, in one
request, to cross over two parents from the pool and then mutate the result. The population keeps
the `population` fittest distinct prompts of parents and children (EvoPrompt's `topk` survival).
On a program each child edits one component, in turns (strategies/blocks/evoprompt.py)."""
from __future__ import annotations

from promptopt.strategies.blocks.components import text_of
from promptopt.strategies.blocks.evoprompt import COMPONENT, CROSSOVER, PARAPHRASE, Evolution, EvolutionConfig
from promptopt.strategies.blocks.population import Member, roulette, top
from promptopt.registry import register_strategy
from promptopt.strategy import Context


class GAConfig(EvolutionConfig):
    TEMPLATES = (PARAPHRASE, CROSSOVER, COMPONENT)


@register_strategy("evoprompt_ga")
class EvoPromptGA(Evolution):
    Config = GAConfig

    def generation(self, ctx: Context) -> list[Member]:
        n = self.config.population
        pool = roulette(ctx.rng, self.population, n)
        # Two distinct pool slots per child; they may hold the same prompt, as in EvoPrompt.
        pairs = [tuple(ctx.rng.sample(pool, 2)) for _ in range(n)]
        requests = []
        for a, b in pairs:
            name = self.choice.pick(a.candidate)  # a program: the component this child edits
            requests.append((self.prompts["crossover"].format(a=text_of(a.candidate, name), b=text_of(b.candidate, name)),
                             (a, b), name))
        return [c for c in self.ask_optimizer(ctx, requests, "evoprompt.crossover") if c]

    def survive(self, ctx: Context, children: list[Member]) -> None:
        self.population = top(self.population + children, self.config.population)
