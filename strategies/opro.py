"""OPRO: the optimizer LLM reads the scored trajectory and writes better instructions
(Yang et al. 2023, "Large Language Models as Optimizers").

Each step builds one meta-prompt from
  * the `max_instructions` best instructions scored so far with their scores as integers 0-100,
    in ascending order (the best last, nearest to where the model writes), and
  * `exemplars` random train examples shown as the task renders them, with <INS> standing where the
    instruction goes, each with its ground-truth answer,
and samples `proposals` instructions from it at `temperature` (the loop seeds each sample apart).
A proposal is read from between <INS> and </INS>; one that repeats an instruction of the run, copies
the meta-prompt, or cannot be read is rejected with a `proposal.rejected` note and never scored.
The rest are scored on the same `eval_examples` dev examples as every other instruction.

Paper defaults kept: 20 instructions shown in ascending order, integer scores 0-100, 3 random
exemplars a step, 8 proposals a step at temperature 1.0, dedupe against every earlier instruction.
Scaled down for a CPU run: `steps` (paper: up to 200) and `eval_examples` (paper: every example of its
optimization split, e.g. 3.5% of GSM8K train = 261). The paper scores on its training split; here
instructions are ranked on dev (the split the loop ranks finalists on) and the exemplars come from
train, so the optimizer never sees the examples its proposals are judged on.

`feedback_rejected` (off by default; not in the paper) lists the previous step's rejected proposals
and the reason for each in the next meta-prompt, so a model that keeps repeating itself is told.
Every meta-prompt is an editable template: `promptopt templates --strategy opro`.
`racing` (off by default; see blocks.selection) scores each step's proposals block by block against
the best instruction so far; a proposal dropped from the race is left out of later trajectories.

A program (promptopt.harness.program): each step rewrites one component, round-robin over the program's
components (strategies/blocks/components.py); all of a step's proposals edit that component of the best
program. The meta-prompt (`opro.meta_component`) shows the component's texts among the best programs with
their scores (each text once, at its best score), its name and role, the other components of the best
program as read-only context, and `exemplars` examples of the best program's run in place of rendered task
exemplars: input, output, score, and the evaluator's feedback and trace. They are drawn from its dev
results, the only ones OPRO has (a program needs no train split), so on a program the optimizer does see
some of the examples its proposals are judged on.
"""
from __future__ import annotations

import re
from typing import Sequence

from pydantic import Field

from promptopt.backends.base import GenRequest, GenResult
from promptopt.registry import register_strategy
from promptopt.strategies.blocks.components import ComponentChoice, edited, program_fields, seeds, show_results, text_of
from promptopt.strategies.blocks.parsing import clean_prompt, extract_marked
from promptopt.strategies.blocks.selection import Racing, RacingConfig, check_racing
from promptopt.strategies.blocks.templates import Template, TemplateSettings
from promptopt.strategy import Context, ScoreRequest
from promptopt.task import Task
from promptopt.types import Candidate, Evaluation, Example

META = Template("opro.meta", """\
Your task is to write the instruction <INS>. Below are some previous instructions with their scores. \
The score ranges from 0 to 100; higher is better.

{instructions}

Below are some problems. <INS> marks where the instruction goes.

{exemplars}

{rejected}

Write a new instruction that is different from all the instructions above and has a higher score than \
all of them. Begin the instruction with <INS> and end it with </INS>. Keep it concise, effective and \
generally applicable to all the problems above.""", "the meta-prompt: scored instructions, exemplars, the request")
PAIR = Template("opro.pair", "text:\n{instruction}\nscore:\n{score}", "one scored instruction in {instructions}")
EXEMPLAR = Template("opro.exemplar", "Problem:\n{problem}\nGround truth answer:\n{answer}",
                    "one task exemplar in {exemplars}")
REJECTED = Template("opro.rejected", "These recent proposals were rejected and not scored:\n{items}",
                    "{rejected} when feedback_rejected is on and the last step rejected something")
META_COMPONENT = Template("opro.meta_component", """Your task is to write the text <INS> of the component "{name}" of a program: {role}. Below are some previous \
texts of this component with the scores of the programs that used them. The score ranges from 0 to 100; \
higher is better.

{instructions}

The program's other components (context only, not to be changed):
{others}

Below are some examples of the best program's run: the input, the program's output and score, and the \
feedback and trace of the run.

{exemplars}

{rejected}

Write a new text for "{name}" that is different from all the texts above and gives a higher score than all \
of them. Begin it with <INS> and end it with </INS>. Keep it concise, effective and generally applicable to \
all the examples above.""", "a program: the meta-prompt for one component, with the best program's traces")

INS_OPEN, INS_CLOSE = "<INS>", "</INS>"
MIN_ECHO_CHARS = 20  # a proposal this long found verbatim in the meta-prompt is a copy of it
MAX_REJECTED_CHARS = 160  # each rejected proposal is shown clipped to this


class OPROConfig(TemplateSettings):
    TEMPLATES = (META, PAIR, EXEMPLAR, REJECTED, META_COMPONENT)

    steps: int = Field(20, ge=1, description="optimization steps after the seeds (paper: up to 200; scaled down for CPU)")
    proposals: int = Field(8, ge=1, description="instructions sampled per step from one meta-prompt (paper: 8)")
    temperature: float = Field(1.0, ge=0.0, le=2.0, description="optimizer sampling temperature (paper: 1.0)")
    max_instructions: int = Field(20, ge=1, description="best instructions shown, ascending by score (paper: 20)")
    exemplars: int = Field(3, ge=0, description="random train exemplars per step, <INS> marking the instruction (paper: 3)")
    eval_examples: int | None = Field(64, ge=1, description="dev examples each instruction is scored on, the same for "
                                      "all (paper: its whole optimization split; scaled down for CPU; null: all of dev)")
    max_tokens: int = Field(128, ge=16, description="longest optimizer reply")
    feedback_rejected: bool = Field(False, description="show the previous step's rejected proposals and why in the "
                                    "next meta-prompt (not in the paper)")
    max_rejected_shown: int = Field(4, ge=1, description="rejected proposals shown when feedback_rejected is on")
    racing: RacingConfig = Field(default_factory=RacingConfig, description="score proposals in blocks and drop "
                                 "the clearly worse early (blocks.selection)")


@register_strategy("opro")
class OPRO:
    Config = OPROConfig
    needs_optimizer = True

    def __init__(self, config: OPROConfig):
        self.config = config
        self.prompts = config.templates()
        self.seeded = False
        self.step = 0  # optimization steps done (the seed round is not one)
        self.rejected: list[tuple[str, str]] = []  # (proposal as read, or the raw reply; reason) of the last step
        self.race: Racing | None = None
        self.dropped: set[str] = set()  # proposals dropped from a race
        self.choice = ComponentChoice()  # a program: which component each step rewrites

    def check_task(self, task: Task) -> None:
        check_racing(self.config.racing, len(task.split("dev")))

    def ask(self, ctx: Context) -> Sequence[Candidate | ScoreRequest]:
        if not self.seeded:
            self.seeded = True
            return [ScoreRequest(c, "dev", n=self.config.eval_examples) for c in seeds(ctx)]
        if self.race is not None:
            reqs = self.race.requests()
            if reqs:
                return reqs
            self.dropped |= self.race.dropped - {self.race.incumbent}  # the incumbent keeps its full score
            self.race = None
        # No scored instruction (every seed failed) leaves nothing to show the optimizer.
        while ctx.history.ranked("dev") and self.step < self.config.steps:
            room = self._room(ctx)
            if room == 0:
                return []  # the budget cannot score one more instruction: stop before paying the optimizer
            self.step += 1
            proposals = self._propose(ctx)
            if len(proposals) > room:
                ctx.note("proposal.dropped", reason="no budget left to score it", texts=[c.text for c in proposals[room:]])
                proposals = proposals[:room]
            if proposals and self.config.racing.enabled:
                return self._start_race(ctx, proposals)
            if proposals:
                return [ScoreRequest(c, "dev", n=self.config.eval_examples) for c in proposals]
        return []

    def tell(self, ctx: Context, evals: Sequence[Evaluation]) -> None:
        """Nothing else to update: the trajectory is read from ctx.history at every step."""
        if self.race is not None:
            self.race.update(evals)

    def _start_race(self, ctx: Context, proposals: list[Candidate]) -> list[ScoreRequest]:
        """Race the proposals against the best instruction so far (already scored: it costs nothing)."""
        racing = self.config.racing
        self.race = racing.make(target=racing.target(self.config.eval_examples, len(ctx.task.split("dev"))))
        self.race.stop_at_keep = False  # every survivor gets its full evaluation
        incumbent = self.trajectory(ctx)[-1][0]
        self.race.incumbent = incumbent.id
        self.race.start(ctx, [incumbent, *proposals], budget=1 << 60, keep=1)
        return self.race.requests()

    def _room(self, ctx: Context) -> int:
        """How many more instructions the example budget can score (a large number if unlimited)."""
        dev = len(ctx.task.split("dev"))
        return ctx.budget.room(min(self.config.eval_examples or dev, dev))

    # -- the meta-prompt --
    def trajectory(self, ctx: Context) -> list[tuple[Candidate, float]]:
        """The best `max_instructions` scored instructions, worst first (the paper's ascending order)."""
        ranked = [(c, s) for c, s in ctx.history.ranked("dev") if c.id not in self.dropped]
        return ranked[: self.config.max_instructions][::-1]

    def meta_prompt(self, ctx: Context, trajectory: Sequence[tuple[Candidate, float]], name: str | None = None) -> str:
        """The step's meta-prompt; `name`: a program's component it asks to rewrite."""
        rejected = ""
        if self.config.feedback_rejected and self.rejected:
            items = [f'- "{_clip(raw) or "(empty reply)"}": {reason}'
                     for raw, reason in self.rejected[: self.config.max_rejected_shown]]
            rejected = self.prompts["rejected"].format(items="\n".join(items))
        if name is not None:
            text = self._program_meta(ctx, trajectory, name, rejected)
        else:
            pairs = [self.prompts["pair"].format(instruction=c.text, score=round(100 * s)) for c, s in trajectory]
            pool = ctx.task.split("train") or ctx.task.split("dev")
            shown = ctx.rng.sample(list(pool), min(self.config.exemplars, len(pool)))
            exemplars = [self.prompts["exemplar"].format(problem=ctx.task.render(INS_OPEN, ex).strip(),
                                                         answer=_answer(ctx.task, ex)) for ex in shown]
            text = self.prompts["meta"].format(instructions="\n\n".join(pairs), exemplars="\n\n".join(exemplars),
                                               rejected=rejected)
        return re.sub(r"\n{3,}", "\n\n", text).strip()  # an empty section leaves no gap

    def _program_meta(self, ctx: Context, trajectory: Sequence[tuple[Candidate, float]], name: str,
                      rejected: str) -> str:
        best_of: dict[str, float] = {}  # each text of the component once, at its best score (still ascending)
        for c, s in trajectory:
            t = c.component(name)
            best_of.pop(t, None)
            best_of[t] = s
        pairs = [self.prompts["pair"].format(instruction=t, score=round(100 * s)) for t, s in best_of.items()]
        best = trajectory[-1][0]
        results = ctx.history.results(best.id, "dev")
        by_id = {ex.id: ex for ex in ctx.task.split("dev")}
        ids = sorted(i for i in results if i in by_id)
        picked = ctx.rng.sample(ids, min(self.config.exemplars, len(ids)))
        return self.prompts["meta_component"].format(
            instructions="\n\n".join(pairs), exemplars=show_results(ctx.task, [(by_id[i], results[i]) for i in picked]),
            rejected=rejected, **program_fields(ctx, best, name))

    # -- proposals --
    def _propose(self, ctx: Context) -> list[Candidate]:
        trajectory = self.trajectory(ctx)
        best = trajectory[-1][0]
        name = self.choice.pick(best)
        meta = self.meta_prompt(ctx, trajectory, name)
        # One meta-prompt, several samples: the loop gives each sampled request its own seed.
        reqs = [GenRequest(messages=(("user", meta),), max_tokens=self.config.max_tokens,
                           temperature=self.config.temperature) for _ in range(self.config.proposals)]
        outs = ctx.require_optimizer().generate(reqs, purpose="opro.propose")
        self.rejected = []
        proposals: list[Candidate] = []
        for out in outs:
            text, problem = read_proposal(out, meta, [text_of(c, name) for c, _ in trajectory])
            # Demos and system prompt come from the best instruction (OPRO edits the instruction only).
            cand = edited(best, name, text, origin="opro", meta={"step": self.step, "shown": len(trajectory)})
            if not problem and (cand.id in ctx.history or cand in proposals):
                problem = "duplicate of an earlier instruction"
            if problem:
                self.rejected.append((text or out.text, problem))
                ctx.note("proposal.rejected", stage="opro.propose", reason=problem, raw=out.text)
                continue
            proposals.append(cand)
        return proposals


def read_proposal(out: GenResult, meta: str, shown: Sequence[str] = ()) -> tuple[str, str | None]:
    """The instruction in one reply, or (text, why it was rejected). Prefers the <INS> tags the
    meta-prompt asks for; a reply without them (small models often drop them) is accepted only as a
    single complete paragraph."""
    if out.error:
        return "", f"optimizer call failed: {out.error}"
    marked = extract_marked(out.text, INS_OPEN, INS_CLOSE)
    if marked is None:
        paragraphs = [p for p in re.split(r"\n\s*\n", out.text.strip()) if p.strip()]
        if out.finish_reason == "length":
            return out.text, "truncated: the reply hit max_tokens"
        if len(paragraphs) > 1:
            return out.text, "no <INS> tags"
        marked = out.text
    text, problem = clean_prompt(marked.replace(INS_CLOSE, ""))
    if problem:
        return text, problem
    # Parroting the request (its wording, an exemplar) is not writing; repeating a shown
    # instruction is caught as a duplicate instead, so those are cut out of the haystack.
    body = _squash(meta)
    for s in shown:
        body = body.replace(_squash(s), " ")
    if len(_squash(text)) >= MIN_ECHO_CHARS and _squash(text) in body:
        return text, "copy of the meta-prompt"
    return text, None


def _squash(text: str) -> str:
    return " ".join(text.split()).lower()


def _answer(task: Task, ex: Example) -> str:
    if task.output == "choose" and ex.label is not None:
        return task.options[ex.label].strip()
    return ex.target.strip()


def _clip(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= MAX_REJECTED_CHARS else text[: MAX_REJECTED_CHARS - 3] + "..."
