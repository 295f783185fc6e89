"""Harmony search over phrase edits (Plum's HS). A harmony memory keeps the best prompts. Each new
prompt is improvised in `segments` parts: part j is the j-th slice of the phrases of a random memory
member, kept as it is with probability `hmcr` (memory consideration; then paraphrased with
probability `par`, the pitch adjustment, when the run has an optimizer), otherwise given one random
edit. The memory keeps the `memory` fittest distinct prompts.

Unlike Plum's code, slices cover every phrase (its slices drop the last phrase of each fifth, so its
harmonies shrink as they are copied)."""
from __future__ import annotations

import math

from pydantic import Field

from promptopt.strategies.blocks.edits import PARAPHRASE, Edit, Pieces, apply_edit, deleted_after, is_sane, join, plan_edit, render, tidy
from promptopt.strategies.blocks.phrase_search import REDRAW_ROUNDS, PhraseSearch, PhraseSearchConfig
from promptopt.strategies.blocks.population import Member, top
from promptopt.registry import register_strategy
from promptopt.strategy import Context


class HarmonyConfig(PhraseSearchConfig):
    memory: int = Field(10, ge=1, description="harmony memory size (Plum: 10)")
    segments: int = Field(5, ge=1, description="parts a prompt is improvised in (Plum: 5)")
    hmcr: float = Field(0.4, ge=0.0, le=1.0, description="probability of keeping a remembered part (Plum: 0.4)")
    par: float = Field(0.5, ge=0.0, le=1.0, description="probability of paraphrasing a kept part (Plum: 0.5)")


# One part of an improvisation: the member it came from, its slice of pieces, and the edit (if any).
Part = tuple[Member, Pieces, Edit | None]


@register_strategy("harmony")
class Harmony(PhraseSearch):
    Config = HarmonyConfig
    config: HarmonyConfig
    memory: list[Member]

    def start(self, ctx: Context, scored: list[Member]) -> None:
        self.memory = top(scored, self.config.memory)

    def propose(self, ctx: Context) -> list[Member]:
        found: dict[str, Member] = {}
        remembered = {m.id for m in self.memory}
        for _ in range(REDRAW_ROUNDS):
            want = self.config.candidates - len(found)
            if want <= 0:
                break
            for harmony in self._improvise(ctx, want):
                if harmony is not None and harmony.id not in remembered and is_sane(harmony.text):
                    found.setdefault(harmony.id, harmony)
        return list(found.values())[: self.config.candidates]

    def _improvise(self, ctx: Context, n: int) -> list[Member | None]:
        ks, ops = self.config.segments, self.ops(ctx)
        pitch = PARAPHRASE in ops
        harmonies: list[list[Part]] = []
        for _ in range(n):
            parts: list[Part] = []
            for j in range(ks):
                source = ctx.rng.choice(self.memory)
                pieces = self.segment(source.text)
                size = len(pieces)
                part = pieces[math.ceil(j * size / ks): math.ceil((j + 1) * size / ks)]
                if ctx.rng.random() < self.config.hmcr:
                    adjust = pitch and ctx.rng.random() < self.config.par
                    edit = plan_edit(part, ctx.rng, [PARAPHRASE]) if adjust else None
                else:
                    edit = plan_edit(part, ctx.rng, ops, source.deleted, keep_one=False)
                parts.append((source, part, edit))
            harmonies.append(parts)
        # All paraphrases of this round in one optimizer call.
        flat = self.fill_paraphrases(ctx, [e for parts in harmonies for _, _, e in parts])
        filled = iter(flat)
        return [self._compose(parts, [next(filled) for _ in parts]) for parts in harmonies]

    @staticmethod
    def _compose(parts: list[Part], edits: list[Edit | None]) -> Member | None:
        if any(e is None and planned is not None for (_, _, planned), e in zip(parts, edits)):
            return None  # a paraphrase was rejected: this improvisation is dropped
        sources = [source for source, _, _ in parts]
        deleted: tuple[str, ...] = tuple(dict.fromkeys(p for s in sources for p in s.deleted))
        pieces = []
        for (_, part, _), edit in zip(parts, edits):
            if edit is not None:
                part = apply_edit(part, edit)
                deleted = deleted_after(deleted, edit)
            pieces.append(part)
        text = tidy(render(join(pieces)))
        record = {"op": "harmony", "sources": [s.id for s in sources],
                  "edits": [e.to_json() if e else None for e in edits]}
        cand = sources[0].candidate.revise(text, parents=tuple(dict.fromkeys(s.id for s in sources)), origin="plum.harmony",
                                 meta={"edit": record})
        return Member(cand, deleted=deleted)

    def update(self, ctx: Context, scored: list[Member]) -> None:
        self.memory = top(self.memory + scored, self.config.memory)
