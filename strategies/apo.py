"""APO / ProTeGi: prompt optimization with textual gradients and beam search (Pryzant et al., 2023).

Each round, for every prompt in the beam:
  1. score it on one minibatch of train examples (the same minibatch for the whole beam);
  2. show the optimizer `n_gradients` groups of `errors_per_gradient` of its mistakes and ask what
     is wrong with the prompt: the textual "gradient";
  3. ask for `edits_per_gradient` rewritten prompts that fix that problem;
  4. ask for `paraphrases` meaning-preserving rewrites of every edit and of the prompt itself
     (Monte-Carlo search around each edit);
  5. keep at most `max_expansion` of these children (a random sample).
Then a best-arm selection (promptopt.strategies.blocks.selection, UCB by default) over the children and the beam picks
the next beam of `beam_width`. Defaults are those of the official code.

Selection scores on the dev split, not on train as the official code does. That code has no other
labeled split, so its train set serves both to find errors and to select. Here dev is the split the
loop ranks finalists on, and keeping it apart from the minibatches means an edit written to fix
some train examples gets no credit for fixing exactly those. `--set apo.selection.split=train`
reproduces the official behaviour; the final beam is then scored on dev once, for the report.

A program (promptopt.harness.program): each critique is of one component, round-robin over the program's
components (strategies/blocks/components.py), and its edits and their paraphrases edit that component only;
a paraphrase of a beam prompt takes the next turn. The `*_component` meta-prompts show the component's name
and role, the other components as read-only context, and for each error the program's output, score, and the
evaluator's feedback and trace.

Every optimizer reply is parsed defensively: the meta-prompts ask for <START>...<END> tags; from a
reply without them (a 135M model rarely complies) one paragraph is picked, preferring one that
quotes a prompt on its own; anything empty, cut off, copied, echoed or commentary is logged as a
`proposal.rejected` note, never adopted.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

from pydantic import Field

from promptopt.backends.base import GenRequest, GenResult
from promptopt.strategies.blocks.components import ComponentChoice, edited, program_fields, show_results, text_of
from promptopt.strategies.blocks.parsing import clean_prompt, strip_wrapping
from promptopt.registry import register_strategy
from promptopt.strategies.blocks.selection import RacingConfig, SelectionConfig, Selector, check_racing
from promptopt.strategies.blocks.templates import Template, TemplateSettings
from promptopt.strategy import Context, ScoreRequest
from promptopt.task import Task
from promptopt.types import Candidate, Evaluation, Example, ExampleResult, normalize_prompt

FRAME = "I'm writing an instruction for a language model that {job}.\nMy current instruction is:\n\"{prompt}\""

GRADIENT = (FRAME + "\n\nIt got these examples wrong:\n\n{errors}\n\n"
            "Give {k} reason(s) why the instruction could have led to these mistakes. "
            "Wrap each reason in <START> and <END>.")

EDIT = (FRAME + "\n\nIt got these examples wrong:\n\n{errors}\n\n"
        "The problem with it: {gradient}\n\n"
        "Write {k} improved instruction(s) that avoid this problem. "
        "Reply with the new instruction(s) only, each wrapped in <START> and <END>.")

PARAPHRASE = ("Rewrite the instruction below in other words, keeping its meaning. "
              "Reply with the new instruction only, wrapped in <START> and <END>.\n\nInstruction: {prompt}")

COMPONENT_FRAME = ("I'm improving one component of a program, \"{name}\": {role}.\nIts current text is:\n\"{prompt}\"\n\n"
                   "The program's other components (context only, not to be changed):\n{others}\n\n"
                   "The program did badly on these examples (each with the program's output and score, and the "
                   "feedback and trace of its run):\n\n{errors}")

GRADIENT_COMPONENT = (COMPONENT_FRAME + "\n\nGive {k} reason(s) why the text of \"{name}\" could have led to these "
                      "mistakes. Wrap each reason in <START> and <END>.")

EDIT_COMPONENT = (COMPONENT_FRAME + "\n\nThe problem with it: {gradient}\n\n"
                  "Write {k} improved text(s) for \"{name}\" that avoid this problem. "
                  "Reply with the new text(s) only, each wrapped in <START> and <END>.")

PARAPHRASE_COMPONENT = ("Rewrite the text below in other words, keeping its meaning. It is the component \"{name}\" "
                        "of a program: {role}. The program's other components (context only):\n{others}\n\n"
                        "Reply with the new text only, wrapped in <START> and <END>.\n\nText: {prompt}")

TEMPLATES = (Template("apo.gradient", GRADIENT, "critique: {k} reasons why the instruction led to the errors"),
             Template("apo.edit", EDIT, "rewrite: {k} instructions that avoid the problem a critique names"),
             Template("apo.paraphrase", PARAPHRASE, "Monte-Carlo paraphrase of an instruction"),
             Template("apo.gradient_component", GRADIENT_COMPONENT,
                      "a program: critique of one component from the errors' outputs, feedback and traces"),
             Template("apo.edit_component", EDIT_COMPONENT, "a program: rewrites of one component that avoid the problem"),
             Template("apo.paraphrase_component", PARAPHRASE_COMPONENT, "a program: paraphrase of one component"))

_TAGGED = re.compile(r"<\s*START\s*>(.*?)<\s*END\s*>", re.I | re.S)
_TAG = re.compile(r"<\s*/?\s*(?:START|END)\s*>", re.I)
_LABEL_LINE = re.compile(r"^[^\n]{0,80}:[ \t]*\n")  # "Modified instruction:" above the text itself
# Talk about the prompt rather than a prompt: "To fix the instruction, I'll...", "Here's how...".
_COMMENTARY = re.compile(r"to \w+ (?:the|this|that|your|my|our) (?:original |current |new )?(?:instruction|prompt)\b"
                         r"|here(?:'s| is) (?:how|what|why)\b"
                         r"|the (?:new|revised|modified|improved|original|current|rewritten) (?:instruction|prompt) "
                         r"(?:is|was|will)\b", re.I)
_COMPLETE_SENTENCES = re.compile(r".*[.!?](?=\s)", re.S)  # up to the last sentence end before more text
MIN_ECHO_CHARS = 20  # a reply this long found verbatim in our request is parroting, not writing
MAX_GRADIENT_CHARS = 600


class APOConfig(TemplateSettings):
    TEMPLATES = TEMPLATES

    rounds: int = Field(6, ge=1, description="expansion rounds (beam-search depth)")
    beam_width: int = Field(4, ge=1, description="prompts kept after each selection")
    minibatch_size: int = Field(64, ge=1, description="train examples per round on which errors are found")
    n_gradients: int = Field(4, ge=1, description="critique calls per beam prompt, each on its own group of errors")
    errors_per_gradient: int = Field(4, ge=1, description="errors shown in one critique call")
    reasons_per_gradient: int = Field(1, ge=1, description="reasons asked for per critique call (official: gradients_per_error)")
    edits_per_gradient: int = Field(1, ge=1, description="rewrites asked for per reason (official: steps_per_gradient)")
    paraphrases: int = Field(2, ge=0, description="paraphrases of each edit and of the parent (official: mc_samples_per_step)")
    max_expansion: int = Field(8, ge=1, description="children kept per beam prompt, a random sample (official: max_expansion_factor)")
    temperature: float = Field(0.7, ge=0.0, le=2.0, description="optimizer sampling temperature")
    max_tokens: int = Field(256, ge=16, description="longest optimizer reply")
    selection: SelectionConfig = Field(default_factory=SelectionConfig, description="how the next beam is chosen")
    racing: RacingConfig = Field(default_factory=RacingConfig, description="race each selection step instead of "
                                 "selection.method (blocks.selection)")


@dataclass(frozen=True)
class _Gradient:
    """One critique of a beam prompt, with the errors it was written from."""

    parent: Candidate
    errors: tuple[tuple[Example, ExampleResult], ...]
    text: str
    component: str | None = None  # a program: the component it critiques


@register_strategy("apo")
class APO:
    Config = APOConfig
    needs_optimizer = True

    def __init__(self, config: APOConfig):
        self.config = config
        self.prompts = config.templates()
        self.round = 0  # expansion rounds done
        self.beam: list[Candidate] = []
        self.minibatch: tuple[str, ...] = ()  # example ids of the current round's minibatch
        self.selector: Selector | None = None
        self.reported_on_dev = False
        self.choice = ComponentChoice()  # a program: which component each critique is about

    # -- the ask/tell state machine: seeds -> (minibatch -> expansion -> selection) x rounds --
    def ask(self, ctx: Context) -> Sequence[Candidate | ScoreRequest]:
        if self.round == 0 and not self.beam and self.selector is None:
            seeds = ctx.seed_candidates()
            self._start_selection(ctx, seeds)
        while True:
            if self.selector is not None:
                reqs = self.selector.requests()
                if reqs:
                    return reqs
                self._end_selection(ctx)
            if self.round >= self.config.rounds:
                return self._report_on_dev()
            if not self.minibatch:
                self.minibatch = self._sample_minibatch(ctx)
                reqs = self._minibatch_requests(ctx)
                if reqs:
                    return reqs
            if self._selection_room(ctx) < self._min_pull(ctx):
                # Not enough budget left to score even one new prompt: stop before paying the optimizer.
                self.round = self.config.rounds
                return self._report_on_dev()
            self.round += 1
            children = self._affordable(ctx, self._expand(ctx))
            self.minibatch = ()
            self._start_selection(ctx, self.beam + children)

    def tell(self, ctx: Context, evals: Sequence[Evaluation]) -> None:
        """Minibatch results are read back from ctx.history; only the selector needs telling."""
        if self.selector is not None:
            self.selector.update(evals)

    # -- selection --
    def _selection_room(self, ctx: Context) -> int:
        """Examples the next selection step may use: its own budget, cut to what the run has left."""
        return min(self.config.selection.budget, ctx.budget.room())

    def _min_pull(self, ctx: Context) -> int:
        """The fewest examples worth scoring a new prompt on."""
        sel = self.config.selection
        return max(1, min(sel.samples_per_eval, len(ctx.task.split(sel.split))))

    def _affordable(self, ctx: Context, children: list[Candidate]) -> list[Candidate]:
        """As many children as the budget can score properly (a random sample), rather than all of
        them on an example or two each: a mean over one example would crown a lucky prompt."""
        fits = self._selection_room(ctx) // self._min_pull(ctx)
        if len(children) <= fits:
            return children
        picked = sorted(ctx.rng.sample(range(len(children)), fits))
        ctx.note("proposal.dropped", reason="no budget left to score it",
                 texts=[c.text for i, c in enumerate(children) if i not in picked])
        return [children[i] for i in picked]

    def check_task(self, task: Task) -> None:
        check_racing(self.config.racing, len(task.split(self.config.selection.split)))

    def _start_selection(self, ctx: Context, pool: list[Candidate]) -> None:
        racing = self.config.racing
        self.selector = racing.make(split=self.config.selection.split) if racing.enabled else self.config.selection.make()
        self.selector.start(ctx, pool, self._selection_room(ctx), keep=self.config.beam_width)

    def _end_selection(self, ctx: Context) -> None:
        assert self.selector is not None
        self.beam = self.selector.ranking()[: self.config.beam_width]
        split = self.selector.split
        ctx.note("apo.beam", round=self.round, split=split,
                 beam=[{"id": c.id, "score": _round(ctx.history.score(c.id, split)),
                        "n": ctx.history.n_scored(c.id, split)} for c in self.beam])
        self.selector = None

    def _report_on_dev(self) -> list[ScoreRequest]:
        """When selection ran on train, score the final beam on dev once: the loop ranks on dev."""
        if self.config.selection.split == "dev" or self.reported_on_dev:
            return []
        self.reported_on_dev = True
        return [ScoreRequest(c, "dev") for c in self.beam]

    # -- the minibatch --
    @staticmethod
    def _minibatch_split(ctx: Context) -> str:
        return "train" if ctx.task.split("train") else "dev"

    def _sample_minibatch(self, ctx: Context) -> tuple[str, ...]:
        examples = ctx.task.split(self._minibatch_split(ctx))
        picked = ctx.rng.sample(range(len(examples)), min(self.config.minibatch_size, len(examples)))
        return tuple(examples[i].id for i in picked)

    def _minibatch_requests(self, ctx: Context) -> list[ScoreRequest]:
        """Score each beam prompt on the minibatch examples it has not seen (the rest are known)."""
        split = self._minibatch_split(ctx)
        reqs = []
        for cand in self.beam:
            seen = ctx.history.results(cand.id, split)
            missing = tuple(i for i in self.minibatch if i not in seen)
            if missing:
                reqs.append(ScoreRequest(cand, split, example_ids=missing))
        return reqs

    def _errors(self, ctx: Context, cand: Candidate) -> list[tuple[Example, ExampleResult]]:
        split = self._minibatch_split(ctx)
        by_id = {ex.id: ex for ex in ctx.task.split(split)}
        results = ctx.history.results(cand.id, split)
        return [(by_id[i], results[i]) for i in self.minibatch if i in results and results[i].score < 1]

    # -- expansion: gradients -> edits -> paraphrases --
    def _expand(self, ctx: Context) -> list[Candidate]:
        gradients = self._gradients(ctx)
        edits = self._edits(ctx, gradients)
        children = edits + self._paraphrases(ctx, edits)
        return self._dedup_and_cap(ctx, children)

    def _gradients(self, ctx: Context) -> list[_Gradient]:
        cfg = self.config
        groups: list[tuple[Candidate, tuple[tuple[Example, ExampleResult], ...], str | None]] = []
        for parent in self.beam:
            errors = self._errors(ctx, parent)
            if not errors:
                ctx.note("apo.no_errors", parent=parent.id, round=self.round)
                continue
            for _ in range(cfg.n_gradients):
                errs = tuple(ctx.rng.sample(errors, min(len(errors), cfg.errors_per_gradient)))
                groups.append((parent, errs, self.choice.pick(parent)))
        asks = [self._ask(ctx, "gradient", p, name, errs, k=cfg.reasons_per_gradient) for p, errs, name in groups]
        outs = ctx.require_optimizer().generate([self._request(a) for a in asks], purpose="apo.gradient")
        gradients = []
        for (parent, errs, name), ask, out in zip(groups, asks, outs):
            for text in self._parse(ctx, out, ask, parent, "apo.gradient", cfg.reasons_per_gradient, name):
                gradients.append(_Gradient(parent, errs, text[:MAX_GRADIENT_CHARS], name))
        return gradients

    def _ask(self, ctx: Context, kind: str, cand: Candidate, name: str | None,
             errors: Sequence[tuple[Example, ExampleResult]] = (), **fields: object) -> str:
        """One meta-prompt: the single-prompt template, or for a program its `*_component` version."""
        if name is None:
            if kind == "paraphrase":
                return self.prompts[kind].format(prompt=cand.text)
            return self.prompts[kind].format(job=_job(ctx.task), prompt=cand.text,
                                             errors=_show_errors(ctx.task, errors), **fields)
        if kind != "paraphrase":
            fields["errors"] = show_results(ctx.task, errors)
        return self.prompts[kind + "_component"].format(prompt=text_of(cand, name), **program_fields(ctx, cand, name),
                                                        **fields)

    def _edits(self, ctx: Context, gradients: list[_Gradient]) -> list[Candidate]:
        asks = [self._ask(ctx, "edit", g.parent, g.component, g.errors, gradient=g.text, k=self.config.edits_per_gradient)
                for g in gradients]
        outs = ctx.require_optimizer().generate([self._request(a) for a in asks], purpose="apo.edit")
        edits = []
        for g, ask, out in zip(gradients, asks, outs):
            for text in self._parse(ctx, out, ask, g.parent, "apo.edit", self.config.edits_per_gradient, g.component):
                edits.append(edited(g.parent, g.component, text, origin="apo.edit",
                                    meta={"gradient": g.text, "round": self.round,
                                          "errors": [ex.id for ex, _ in g.errors]}))
        return edits

    def _paraphrases(self, ctx: Context, edits: list[Candidate]) -> list[Candidate]:
        """Paraphrases of every edit and of every beam prompt itself, as the official code does.
        Each keeps its beam parent as lineage and, for an edit's paraphrase, the edit's gradient."""
        sources = [(e, e.parents[0], True) for e in edits] + [(p, p.id, False) for p in self.beam]
        # A program: an edit's paraphrases rephrase the component the edit changed; a beam prompt's take turns.
        jobs = [(src, parent_id, src.meta.get("component") if is_edit else self.choice.pick(src))
                for src, parent_id, is_edit in sources for _ in range(self.config.paraphrases)]
        asks = [self._ask(ctx, "paraphrase", src, name) for src, _, name in jobs]
        outs = ctx.require_optimizer().generate([self._request(a) for a in asks], purpose="apo.paraphrase")
        out = []
        for (src, parent_id, name), ask, reply in zip(jobs, asks, outs):
            for text in self._parse(ctx, reply, ask, src, "apo.paraphrase", 1, name):
                meta = {"round": self.round, "paraphrase_of": src.id}
                if "gradient" in src.meta:
                    meta["gradient"] = src.meta["gradient"]
                out.append(edited(src, name, text, parents=(parent_id,), origin="apo.paraphrase", meta=meta))
        return out

    def _dedup_and_cap(self, ctx: Context, children: list[Candidate]) -> list[Candidate]:
        """Drop repeats of earlier prompts, then keep at most `max_expansion` children per parent."""
        fresh: dict[str, Candidate] = {}
        for c in children:
            if c.id in ctx.history or c.id in fresh:
                ctx.note("proposal.rejected", stage=c.origin, parent=c.parents[0],
                         reason="duplicate of an earlier candidate", raw=text_of(c, c.meta.get("component")))
            else:
                fresh[c.id] = c
        kept: list[Candidate] = []
        for parent in self.beam:
            mine = [c for c in fresh.values() if c.parents[0] == parent.id]
            if len(mine) > self.config.max_expansion:
                picked = sorted(ctx.rng.sample(range(len(mine)), self.config.max_expansion))
                dropped = [c.text for i, c in enumerate(mine) if i not in picked]
                ctx.note("proposal.dropped", parent=parent.id, reason="over max_expansion", texts=dropped)
                mine = [mine[i] for i in picked]
            kept += mine
        return kept

    # -- talking to the optimizer --
    def _request(self, text: str) -> GenRequest:
        return GenRequest(messages=(("user", text),), max_tokens=self.config.max_tokens,
                          temperature=self.config.temperature)

    def _parse(self, ctx: Context, out: GenResult, ask: str, source: Candidate, stage: str, want: int,
               name: str | None = None) -> list[str]:
        """The usable items of one reply (at most `want`); each unusable one becomes a rejection note.
        `name`: a program's component the reply rewrites (or critiques)."""
        own = text_of(source, name)
        items, problem = _reply_items(out, stage, own)
        accepted: list[str] = []
        if problem:
            ctx.note("proposal.rejected", stage=stage, parent=source.id, reason=problem, raw=out.text)
            return accepted
        for item in items[:want]:
            check = _check_gradient if stage == "apo.gradient" else _check_prompt
            text, problem = check(item, own)
            problem = problem or _echo(text, ask, own)
            if problem:
                ctx.note("proposal.rejected", stage=stage, parent=source.id, reason=problem, raw=out.text)
            else:
                accepted.append(text)
        return accepted


def _reply_items(out: GenResult, stage: str, source: str) -> tuple[list[str], str | None]:
    """The items of a reply: those wrapped in <START>...<END>, or for a reply that ignored the tags
    (small models often do) one item picked from its paragraphs. Text cut off by max_tokens is never
    used: a cut-off prompt is dropped, a cut-off critique keeps its complete sentences."""
    if out.error:
        return [], f"optimizer call failed: {out.error}"
    spans = [s.strip() for s in _TAGGED.findall(out.text)]
    if spans:
        return ([s for s in spans if s], None) if any(spans) else ([], "empty <START>...<END> tags")
    paragraphs = [p.strip() for p in re.split(r"\n\s*\n", _TAG.sub("", out.text)) if p.strip()]
    if out.finish_reason == "length" and paragraphs:
        # A cut-off prompt may be missing its point; a cut-off critique still says what its
        # complete sentences say.
        whole = _COMPLETE_SENTENCES.match(paragraphs[-1]) if stage == "apo.gradient" else None
        paragraphs[-1:] = [whole.group(0)] if whole else []
    bodies = [_LABEL_LINE.sub("", p).strip() for p in paragraphs]
    # A paragraph ending in a colon only announces what follows ("It went wrong in two ways:").
    usable = [b for b in map(strip_wrapping, bodies) if b and not b.endswith(":")]
    if not usable:
        return [], "truncated: the reply hit max_tokens" if out.finish_reason == "length" else "empty reply"
    if stage == "apo.gradient":
        return usable[:1], None
    # A chatty reply quotes the new prompt on its own line, often next to a quote of the old one.
    quoted = [strip_wrapping(b[1:-1]) for b in bodies if len(b) > 2 and b[0] in "\"\u201c" and b[-1] in "\"\u201d"]
    new = [q for q in quoted if normalize_prompt(q) != normalize_prompt(source)]
    return (new[:1] or quoted[:1] or usable[:1]), None


def _check_prompt(text: str, source: str) -> tuple[str, str | None]:
    text, problem = clean_prompt(text, parent=source)
    if not problem and _COMMENTARY.match(text):
        problem = "commentary about the instruction, not an instruction"
    return text, problem


def _check_gradient(text: str, prompt: str) -> tuple[str, str | None]:
    text = strip_wrapping(text)
    if len(text) < 8:
        return text, "empty or too short"
    if normalize_prompt(text) == normalize_prompt(prompt):
        return text, "copy of the parent prompt"
    return text, None


def _echo(text: str, ask: str, prompt: str) -> str | None:
    """Reject a reply that repeats part of our request (instructions or error examples) rather
    than writing something; repeating or shortening the prompt itself is caught elsewhere."""
    body, needle = _squash(ask).replace(_squash(prompt), " "), _squash(text)
    if len(needle) >= MIN_ECHO_CHARS and needle in body:
        return "echo of the request"
    return None


def _squash(text: str) -> str:
    return " ".join(text.split()).lower()


def _job(task: Task) -> str:
    if task.output == "choose":
        return "labels each input as one of: " + ", ".join(o.strip() for o in task.options)
    return "answers each input; its final answer is compared with the expected one"


def _show_errors(task: Task, errors: Sequence[tuple[Example, ExampleResult]]) -> str:
    """Each mistake as the optimizer sees it: the input, the gold answer, and what the model said."""
    blocks = []
    for ex, res in errors:
        if task.output == "choose" and ex.label is not None:
            blocks.append(f"Input: {_clip(ex.input)}\nCorrect label: {task.options[ex.label].strip()}\n"
                          f"Model's label: {res.output}")
        else:
            blocks.append(f"Input: {_clip(ex.input)}\nExpected answer: {ex.target}\n"
                          f"Model's output: {_clip(res.output)}\nModel's final answer: {task.extract(res.output) or '(none)'}")
    return "\n\n".join(blocks)


def _clip(text: str, limit: int = 400) -> str:
    """Keep both ends of a long text: a worked solution ends with its answer."""
    text = text.strip()
    if len(text) <= limit:
        return text
    half = limit // 2
    return f"{text[:half].rstrip()} ... {text[-half:].lstrip()}"


def _round(x: float) -> float | None:
    return None if x != x else round(x, 4)
