"""What EvoPrompt's GA and DE share: their settings, the initial population (seed prompts plus
optimizer paraphrases), the meta-prompts, and defensive reading of the optimizer's replies.

The meta-prompts follow the structure of EvoPrompt's (numbered steps, one worked example from a
different task, the answer between <prompt> tags) in our own words. A small optimizer often ignores
the tags, answers with the example, or repeats a parent: such replies are noted, never adopted.

A program (promptopt.harness.program): each child edits one component, round-robin over the program's
components (strategies/blocks/components.py); its meta-prompt is the usual one on that component's texts
in the parents, after a preamble (`evoprompt.component`) with the component's name and role and the first
parent's other components as read-only context. EvoPrompt's operators learn from parents, not from
examples, so no example or trace is shown.
"""
from __future__ import annotations

import re
from typing import Sequence

from pydantic import Field

from promptopt.backends.base import GenRequest
from promptopt.strategies.blocks.components import ComponentChoice, edited, program_fields, text_of
from promptopt.strategies.blocks.parsing import clean_prompt
from promptopt.strategies.blocks.plum_score import ObjectiveName
from promptopt.strategies.blocks.population import IterativeSearch, Member, SearchConfig, top
from promptopt.strategies.blocks.templates import Template, TemplateSettings
from promptopt.strategy import Context
from promptopt.types import normalize_prompt

PARAPHRASE_REQUEST = ("Write a new version of the instruction below that asks for the same thing in different "
                      "words. Reply with the new instruction only.\n\nInstruction: {prompt}")

# Worked examples come from a text-simplification task, as in EvoPrompt's classification setup,
# so the model sees the operator, not an answer to copy for the task at hand.
_DEMO_A = "Make the sentence below easier to read."
_DEMO_B = "Rewrite this complicated sentence with simple words, keeping what it means."
_DEMO_BEST = "Simplify the text while keeping its meaning."
_DEMO_CURRENT = "Turn the hard sentence into an easy one."
_DEMO_GA_ANSWER = "Rewrite the following sentence in plain, simple words without changing its meaning."
_DEMO_DE_ANSWER = "Restate the given hard passage plainly and simply, without losing any information."

GA_REQUEST = f"""Make a better instruction from two parent instructions, in two steps.
Step 1 (crossover): merge the ideas of Instruction A and Instruction B into one new instruction.
Step 2 (mutation): change some words of the step-1 instruction so that it is clearer or more effective.
Write the final instruction between <prompt> and </prompt>.

Example
Instruction A: {_DEMO_A}
Instruction B: {_DEMO_B}
Step 1: Rewrite the sentence below with simple words so it is easier to read.
Step 2: <prompt>{_DEMO_GA_ANSWER}</prompt>

Now you
Instruction A: {{a}}
Instruction B: {{b}}
Step 1:"""

DE_REQUEST = f"""Make a better instruction in four steps.
Step 1: list the parts where Instruction A and Instruction B differ.
Step 2: change each of those parts at random (new words, same purpose).
Step 3: put the changed parts into the Best instruction, replacing the parts they correspond to.
Step 4: cross the step-3 instruction with the Current instruction into one final instruction, and write it between <prompt> and </prompt>.

Example
Instruction A: {_DEMO_A}
Instruction B: {_DEMO_B}
Best instruction: {_DEMO_BEST}
Current instruction: {_DEMO_CURRENT}
Step 1: "Make ... easier to read" vs "Rewrite ... with simple words"; "the sentence below" vs "this complicated sentence"; B adds "keeping what it means".
Step 2: "Make ... easier to read" -> "Restate ... plainly"; "the sentence below" -> "the given passage"; "keeping what it means" -> "without losing any information".
Step 3: Restate the given passage plainly, without losing any information.
Step 4: <prompt>{_DEMO_DE_ANSWER}</prompt>

Now you
Instruction A: {{a}}
Instruction B: {{b}}
Best instruction: {{best}}
Current instruction: {{current}}
Step 1:"""

PARAPHRASE = Template("evoprompt.paraphrase", PARAPHRASE_REQUEST, "a paraphrase that fills the initial population")
CROSSOVER = Template("evoprompt.crossover", GA_REQUEST, "GA: crossover of parents {a} and {b}, then mutation")
DE = Template("evoprompt.de", DE_REQUEST, "DE: mutate where {a} and {b} differ, into {best}, crossed with {current}")
COMPONENT = Template("evoprompt.component", """\
The instructions below are versions of one component of a program, "{name}": {role}.
The program's other components (context only, not to be changed):
{others}

{request}""", "a program: the component's name, role and the other components, before the {request} (GA, DE or paraphrase)")

_DEMO_TEXTS = {normalize_prompt(t).casefold() for t in
               (_DEMO_A, _DEMO_B, _DEMO_BEST, _DEMO_CURRENT, _DEMO_GA_ANSWER, _DEMO_DE_ANSWER)}
_TAGGED = re.compile(r"<prompt>(.*?)</prompt>", re.S | re.I)
_OPEN = re.compile(r"<prompt>", re.I)


def extract_prompt(raw: str, parents: Sequence[str] = (), error: str | None = None) -> tuple[str, str | None]:
    """The final prompt of an EvoPrompt reply, or (text, why it was rejected).

    Takes the last <prompt>...</prompt>; a reply cut off after its last <prompt> keeps what follows
    up to a blank line; a reply with no tags at all is accepted only if it is a single line (a model
    that answered with the prompt alone). Copies of a parent or of the worked example are rejected."""
    if error:
        return "", f"optimizer call failed: {error}"
    if not raw.strip():
        return raw, "empty reply"
    tagged = _TAGGED.findall(raw)
    if tagged:
        text = tagged[-1]
    elif _OPEN.search(raw):
        text = _OPEN.split(raw)[-1].split("\n\n")[0]
    elif len(raw.strip().splitlines()) == 1:
        text = raw
    else:
        return raw, "no <prompt> tags"
    text, problem = clean_prompt(text)
    if problem:
        return text, problem
    norm = normalize_prompt(text).casefold()
    if norm in _DEMO_TEXTS:
        return text, "copy of the worked example"
    if any(norm == normalize_prompt(p).casefold() for p in parents):
        return text, "copy of a parent prompt"
    return text, None


class EvolutionConfig(TemplateSettings, SearchConfig):
    """EvoPrompt's defaults (population 10, 10 generations, temperature 0.5); its dev sets have 200
    examples and its fitness is the task metric."""

    TEMPLATES = (PARAPHRASE, CROSSOVER, DE, COMPONENT)

    population: int = Field(10, ge=2, description="prompts in the population")
    generations: int = Field(10, ge=1, description="generations after the initial population")
    eval_examples: int | None = Field(200, ge=1, description="dev examples each candidate is scored on "
                                      "(the same ones for every candidate; null: the whole dev split)")
    objective: ObjectiveName = Field("task", description="fitness: the task metric (EvoPrompt), Plum's "
                                     "balanced accuracy + label entropy, or the gold-option likelihood")
    temperature: float = Field(0.5, ge=0.0, le=2.0, description="sampling temperature of every optimizer call")
    max_tokens: int = Field(300, ge=16, description="reply length limit (EvoPrompt: 1000)")


class Evolution(IterativeSearch):
    """The initial population and the optimizer calls of both EvoPrompt variants. Iteration 1 makes
    the paraphrases that fill the population; iterations 2.. are the generations."""

    Config = EvolutionConfig
    needs_optimizer = True
    config: EvolutionConfig
    population: list[Member]

    def __init__(self, config: EvolutionConfig):
        super().__init__(config)
        self.prompts = config.templates()
        self.choice = ComponentChoice()  # a program: which component each child edits

    def start(self, ctx: Context, scored: list[Member]) -> None:
        # EvoPrompt keeps the better half of its initial pool and adds one paraphrase per kept prompt;
        # with fewer seeds than that, the paraphrases go round the seeds until the population is full.
        self.population = top(scored, max(1, self.config.population // 2))

    def finished(self, ctx: Context) -> bool:
        if self.iteration > self.config.generations:
            self.done_reason = f"all {self.config.generations} generations made (generations={self.config.generations})"
            return True
        return False

    def propose(self, ctx: Context) -> list[Member]:
        if self.iteration == 1:
            return self._paraphrases(ctx)
        return self.generation(ctx)

    def update(self, ctx: Context, scored: list[Member]) -> None:
        if self.iteration == 1:
            self.population = top(self.population + scored, self.config.population)
        else:
            self.survive(ctx, scored)

    def generation(self, ctx: Context) -> list[Member]:
        raise NotImplementedError

    def survive(self, ctx: Context, children: list[Member]) -> None:
        raise NotImplementedError

    def _paraphrases(self, ctx: Context) -> list[Member]:
        sources = [self.population[i % len(self.population)]
                   for i in range(self.config.population - len(self.population))]
        requests = []
        for s in sources:
            name = self.choice.pick(s.candidate)
            requests.append((self.prompts["paraphrase"].format(prompt=text_of(s.candidate, name)), (s,), name))
        return [m for m in self.ask_optimizer(ctx, requests, "evoprompt.paraphrase", tagged=False) if m]

    def ask_optimizer(self, ctx: Context, requests: Sequence[tuple[str, tuple[Member, ...], str | None]], purpose: str,
                      tagged: bool = True) -> list[Member | None]:
        """One optimizer call for all requests (meta-prompt, parents, the program component it edits or None);
        a child per request, or None where the reply is unusable. `tagged`: the answer is between <prompt>
        tags (else the reply is it)."""
        texts_in = [text if name is None else self.prompts["component"].format(
            request=text, **program_fields(ctx, parents[0].candidate, name)) for text, parents, name in requests]
        reqs = [GenRequest(messages=(("user", text),), max_tokens=self.config.max_tokens,
                           temperature=self.config.temperature) for text in texts_in]
        replies = ctx.require_optimizer().generate(reqs, purpose=purpose)
        children: list[Member | None] = []
        for (_, parents, name), reply in zip(requests, replies):
            texts = [text_of(p.candidate, name) for p in parents]
            if tagged:
                text, problem = extract_prompt(reply.text, texts, reply.error)
            else:
                text, problem = clean_prompt(reply.text, parent=texts[0], error=reply.error)
            if problem:
                ctx.note("proposal.rejected", purpose=purpose, parents=[p.id for p in parents], reason=problem,
                         raw=reply.text)
                children.append(None)
                continue
            cand = edited(parents[0].candidate, name, text, parents=tuple(dict.fromkeys(p.id for p in parents)),
                          origin=purpose, meta={"edit": {"op": purpose.removeprefix("evoprompt."),
                                                         "parents": [p.id for p in parents]}})
            children.append(Member(cand))
        return children
