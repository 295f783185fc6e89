"""What the Plum-style metaheuristics share: their settings, random phrase edits of a prompt (with
paraphrases from the optimizer LLM batched into one call), Plum's stopping rules, and the
single-state search that hill climbing, annealing and tabu search differ from only in where they move.

Delete, swap and add-back need no model. Paraphrase is used only when the run has an optimizer
(ctx.optimizer is not None); a reply that is not a usable phrase is noted and dropped, never applied.
"""
from __future__ import annotations

import re
from typing import Collection, Literal, Sequence

from pydantic import Field

from promptopt.backends.base import GenRequest
from promptopt.strategies.blocks.edits import (PARAPHRASE, Edit, Pieces, apply_edit, deleted_after, is_sane, plan_edit, render, segment,
                    tidy)
from promptopt.strategies.blocks.components import ComponentChoice, edited, text_of
from promptopt.strategies.blocks.parsing import strip_wrapping
from promptopt.strategies.blocks.population import IterativeSearch, Member, SearchConfig, best
from promptopt.strategies.blocks.templates import Template, TemplateSettings
from promptopt.strategy import Context
from promptopt.types import normalize_prompt

EditName = Literal["delete", "swap", "add", "paraphrase"]
PARAPHRASE_REQUEST = ("Say the following phrase in other words. Keep its meaning. "
                      "Reply with the new phrase only.\n\nPhrase: {phrase}")
PARAPHRASE_TEMPLATE = Template("plum.paraphrase", PARAPHRASE_REQUEST, "paraphrase edit: one phrase in other words")
_PHRASE_LABEL = re.compile(r"^\s*(?:new |paraphrased? )?phrase\s*:\s*", re.I)
REDRAW_ROUNDS = 3  # attempts to replace an edit that changed nothing or repeated another


class PhraseSearchConfig(TemplateSettings, SearchConfig):
    """Defaults are the Plum code's argparse defaults; its run scripts use candidates=10, steps=50,
    patience=7."""

    TEMPLATES = (PARAPHRASE_TEMPLATE,)

    candidates: int = Field(5, ge=1, description="candidates made and scored per step (Plum's m)")
    compose: int = Field(1, ge=1, description="edits applied in sequence to make one candidate (Plum's l)")
    steps: int = Field(10, ge=1, description="search steps at most (Plum's --num-iter)")
    patience: int | None = Field(2, ge=1, description="stop after this many steps in a row without a new best")
    edits: tuple[EditName, ...] = Field(("delete", "swap", "paraphrase", "add"), min_length=1,
                                        description="edit operators; paraphrase only runs with an optimizer")
    level: Literal["phrase", "word"] = Field("phrase", description="what an edit moves: phrases or single words")
    paraphrase_temperature: float = Field(0.7, ge=0.0, le=2.0)
    paraphrase_max_tokens: int = Field(24, ge=4)


class PhraseSearch(IterativeSearch):
    """Base of hill climbing, annealing, tabu, GA and harmony search. Needs no optimizer, but uses
    one for paraphrase edits when the run has it."""

    Config = PhraseSearchConfig
    needs_optimizer = False
    uses_optimizer = True  # the run passes an optimizer if one is configured
    config: PhraseSearchConfig

    def __init__(self, config: PhraseSearchConfig):
        super().__init__(config)
        self.prompts = config.templates()
        self.choice = ComponentChoice()  # a program: which component each mutant edits
        self.done_reason = ""  # why the search ended (Strategy's optional done_reason)
        self.unscored: tuple[int, int] | None = None  # the last mutants(): (edits not scored before, asked for)

    def finished(self, ctx: Context) -> bool:
        patience = self.config.patience
        if self.iteration >= self.config.steps:
            self.done_reason = f"all {self.config.steps} steps made (steps={self.config.steps})"
        elif patience is not None and self.stale >= patience:
            self.done_reason = f"no new best for {self.stale} steps in a row (patience={patience})"
        if self.done_reason and self.unscored and self.unscored[0] < self.unscored[1]:
            self.done_reason += (f"; the edits ran out: the last step found {self.unscored[0]} unscored edit(s) of "
                                 f"the {self.unscored[1]} it asked for (a short prompt has few phrases to edit)")
        return bool(self.done_reason)

    def ops(self, ctx: Context) -> list[str]:
        return [op for op in self.config.edits if op != PARAPHRASE or ctx.optimizer is not None]

    def segment(self, text: str) -> Pieces:
        return segment(text, self.config.level)

    def mutants(self, ctx: Context, parents: Sequence[Member], exclude: Collection[str] = ()) -> list[Member]:
        """One mutant per parent (`compose` random edits each), in parent order. A mutant that equals
        its parent, repeats another, is in `exclude` or has no letters is redrawn a few times, then
        dropped: the result may be shorter than `parents`."""
        found: dict[int, Member] = {}
        for _ in range(REDRAW_ROUNDS):
            todo = [i for i in range(len(parents)) if i not in found]
            if not todo:
                break
            for i, child in zip(todo, self._edit_all(ctx, [parents[i] for i in todo])):
                taken = {m.id for m in found.values()}
                if child is not None and child.id != parents[i].id and child.id not in exclude \
                        and child.id not in taken and is_sane(child.text):
                    found[i] = child
        self.unscored = (sum(1 for m in found.values() if m.id not in ctx.history), len(parents))
        return [found[i] for i in sorted(found)]

    def _edit_all(self, ctx: Context, parents: Sequence[Member]) -> list[Member | None]:
        ops = self.ops(ctx)
        names = [self.choice.pick(p.candidate) for p in parents]
        states: list[tuple[Pieces, tuple[str, ...], list[Edit]] | None] = [
            (self.segment(text_of(p.candidate, n)), p.deleted, []) for p, n in zip(parents, names)]
        for _ in range(self.config.compose):
            plans = [plan_edit(s[0], ctx.rng, ops, s[1]) if s else None for s in states]
            plans = self.fill_paraphrases(ctx, plans)
            for k, (state, plan) in enumerate(zip(states, plans)):
                if state is None or plan is None:
                    states[k] = None
                    continue
                pieces, deleted, done = state
                text = tidy(render(apply_edit(pieces, plan)))
                states[k] = (self.segment(text), deleted_after(deleted, plan), done + [plan])
        return [self._child(p, s, n) if s else None for p, s, n in zip(parents, states, names)]

    @staticmethod
    def _child(parent: Member, state: tuple[Pieces, tuple[str, ...], list[Edit]], name: str | None) -> Member:
        pieces, deleted, edits = state
        if len(edits) == 1:
            origin, record = f"plum.{edits[0].op}", edits[0].to_json()
        else:
            origin, record = "plum.compose", {"op": "compose", "steps": [e.to_json() for e in edits]}
        cand = edited(parent.candidate, name, render(pieces), origin=origin, meta={"edit": record})
        return Member(cand, deleted=deleted)

    def fill_paraphrases(self, ctx: Context, plans: Sequence[Edit | None]) -> list[Edit | None]:
        """Give every paraphrase edit its new phrase with one optimizer call; a reply that is no
        usable phrase turns its edit into None (and is noted)."""
        out = list(plans)
        wanted = [k for k, e in enumerate(plans) if e is not None and e.op == PARAPHRASE]
        if not wanted or ctx.optimizer is None:
            return [None if k in wanted else e for k, e in enumerate(out)]
        phrases = [e.phrase for e in plans if e is not None and e.op == PARAPHRASE]
        reqs = [GenRequest(messages=(("user", self.prompts["paraphrase"].format(phrase=phrase)),),
                           max_tokens=self.config.paraphrase_max_tokens,
                           temperature=self.config.paraphrase_temperature) for phrase in phrases]
        replies = ctx.optimizer.generate(reqs, purpose="plum.paraphrase")
        for k, reply in zip(wanted, replies):
            edit = out[k]
            assert edit is not None
            phrase, problem = clean_phrase(reply.text, edit.phrase, reply.error)
            if problem:
                ctx.note("proposal.rejected", op=PARAPHRASE, phrase=edit.phrase, reason=problem, raw=reply.text)
                out[k] = None
            else:
                out[k] = Edit(PARAPHRASE, edit.index, edit.phrase, new=phrase)
        return out


class LocalSearch(PhraseSearch):
    """Base of hill climbing, annealing and tabu search: one current prompt, which starts as the best
    seed; each step scores `candidates` mutants of it, and `update` decides where to move."""

    current: Member

    def start(self, ctx: Context, scored: list[Member]) -> None:
        self.current = best(scored)

    def propose(self, ctx: Context) -> list[Member]:
        return self.mutants(ctx, [self.current] * self.config.candidates)


def clean_phrase(raw: str, phrase: str, error: str | None = None) -> tuple[str, str | None]:
    """A usable paraphrase of `phrase` from a model reply, or (text, why it was rejected)."""
    if error:
        return "", f"optimizer call failed: {error}"
    lines = [line for line in strip_wrapping(raw).splitlines() if line.strip()]
    text = _PHRASE_LABEL.sub("", lines[0]) if lines else ""
    # Plum drops a paraphrase's final period; here also before unquoting: "read closely".
    text = strip_wrapping(text.strip().rstrip(".")).rstrip(".").strip()
    if not is_sane(text):
        return text, "empty or no letters"
    if normalize_prompt(text).casefold() == normalize_prompt(phrase).casefold():
        return text, "copy of the phrase"
    if len(text) > 3 * len(phrase) + 30:
        return text, f"too long for a phrase ({len(text)} chars)"
    if "{" in text or "}" in text:
        return text, "contains template braces"
    return text, None
