"""Reference strategy: ask the optimizer LLM to rewrite the best prompts, keep what scores better.

Small on purpose: it is the example to copy when writing a strategy. Each round scores the new
proposals on the dev split; proposals are rewrites of the current top `parents` prompts."""
from __future__ import annotations

from typing import Sequence

from pydantic import Field

from promptopt.backends.base import GenRequest
from promptopt.strategies.blocks.components import ComponentChoice, edited, text_of
from promptopt.strategies.blocks.parsing import clean_prompt
from promptopt.registry import register_strategy
from promptopt.strategies.blocks.templates import Template, TemplateSettings
from promptopt.strategy import Context, ScoreRequest
from promptopt.types import Candidate, Evaluation

INSTRUCTION = ("Rewrite the following instruction so that a language model follows it better. "
               "Keep its meaning and task. Reply with the new instruction only.\n\nInstruction: {prompt}")


REWRITE = Template("paraphrase.rewrite", INSTRUCTION, "rewrite one of the best prompts")
COMPONENT = ("Rewrite the following instruction so that a language model follows it better. It is one step "
             "of a program: {role}. Keep its meaning and task. Reply with the new instruction only.\n\n"
             "Instruction: {prompt}")
REWRITE_COMPONENT = Template("paraphrase.rewrite_component", COMPONENT,
                             "rewrite one component of a program (a program run), given its role")


class ParaphraseConfig(TemplateSettings):
    TEMPLATES = (REWRITE, REWRITE_COMPONENT)

    rounds: int = Field(4, ge=1, description="rewrite rounds after scoring the seed prompts")
    proposals: int = Field(4, ge=1, description="rewrites asked for in each round")
    parents: int = Field(2, ge=1, description="how many of the best prompts are rewritten")
    temperature: float = Field(0.9, ge=0.0, le=2.0)
    max_tokens: int = Field(96, ge=8)


@register_strategy("paraphrase")
class Paraphrase:
    Config = ParaphraseConfig
    needs_optimizer = True

    def __init__(self, config: ParaphraseConfig):
        self.config = config
        self.prompts = config.templates()
        self.round = 0
        self.choice = ComponentChoice()  # a program: which component each rewrite edits

    def ask(self, ctx: Context) -> Sequence[Candidate | ScoreRequest]:
        if self.round == 0:
            self.round = 1
            return ctx.seed_candidates()
        while self.round <= self.config.rounds:
            self.round += 1
            proposals = self._propose(ctx)
            if proposals:
                return proposals
        self.done_reason = f"all {self.config.rounds} rounds made (rounds={self.config.rounds})"
        return []

    def _propose(self, ctx: Context) -> list[Candidate]:
        # When every evaluation so far failed nothing is ranked: rewrite the seed prompts instead.
        parents = [c for c, _ in ctx.history.ranked("dev")[: self.config.parents]] or \
            ([ctx.seed_program] if ctx.seed_program is not None else
             [Candidate(p, origin="seed") for p in ctx.task.seed_prompts[: self.config.parents]])
        names = [self.choice.pick(parents[i % len(parents)]) for i in range(self.config.proposals)]
        reqs = [GenRequest(messages=(("user", self._ask(ctx, parents[i % len(parents)], names[i])),),
                           max_tokens=self.config.max_tokens, temperature=self.config.temperature)
                for i in range(self.config.proposals)]
        outs = ctx.require_optimizer().generate(reqs, purpose="paraphrase")
        proposals = []
        for i, out in enumerate(outs):
            parent = parents[i % len(parents)]
            text, problem = clean_prompt(out.text, parent=text_of(parent, names[i]), error=out.error)
            if problem:
                ctx.note("proposal.rejected", parent=parent.id, reason=problem, raw=out.text)
                continue
            cand = edited(parent, names[i], text, origin="paraphrase")
            if cand.id in ctx.history or cand in proposals:
                ctx.note("proposal.rejected", parent=parent.id, reason="duplicate of an earlier candidate", raw=out.text)
                continue
            proposals.append(cand)
        return proposals

    def _ask(self, ctx: Context, parent: Candidate, name: str | None) -> str:
        if name is None:
            return self.prompts["rewrite"].format(prompt=parent.text)
        role = ctx.component_roles.get(name) or f"the component named {name}"
        return self.prompts["rewrite_component"].format(prompt=text_of(parent, name), role=role)

    def tell(self, ctx: Context, evals: Sequence[Evaluation]) -> None:
        """Nothing to update: the ranking lives in ctx.history."""
