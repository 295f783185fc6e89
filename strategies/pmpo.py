"""PMPO: Probabilistic Metric Prompt Optimization (Zhao et al., 2025; arXiv 2505.16307).

Refines one prompt with forward passes only: no sampled task outputs, no judge.
Each iteration
  1. splits the incumbent prompt into at most `max_segments` removable pieces (the optimizer LLM
     marks them with <mask> tags; sentences are the fallback when its reply is unusable),
  2. scores the incumbent and every masked variant by loss on a fixed training sample, all in one
     step, so the loop sends them to the target model in one batch,
  3. asks the optimizer LLM for `rewrites_per_example` rewrites for each of the `hard_examples`
     highest-loss examples, showing which segments helped or hurt,
  4. keeps the lowest-loss rewrite if it beats the incumbent.
Step 1-2 are skipped while the incumbent is unchanged: its mask analysis would be identical.

Loss: classification uses the paper's preference form (gold option against each wrong option,
`beta`), generation the cross-entropy of the reference output (promptopt.measure.attribution).
Each new incumbent is also scored on the dev split with the task metric, which is what the
loop's final report ranks by.
"""
from __future__ import annotations

import re
from typing import Literal, Sequence

from pydantic import Field

from promptopt.measure.attribution import (LossKind, LossSummary, Segment, SegmentImpact, default_loss, impacts,
                                   marked_segments, mask, merge_segments, split_prompt, summarize, worst_first)
from promptopt.backends.base import GenRequest
from promptopt.strategies.blocks.components import refuse_program
from promptopt.strategies.blocks.parsing import clean_prompt
from promptopt.registry import register_strategy
from promptopt.scoring.scorer import reference_text
from promptopt.strategies.blocks.templates import Template, TemplateSettings
from promptopt.strategy import Context, ScoreRequest
from promptopt.task import Task
from promptopt.types import Candidate, Evaluation, Example

SEGMENT_INSTRUCTION = (
    "Copy the instruction below word for word, but put <mask> and </mask> around up to {limit} pieces "
    "that could each be deleted on their own: a rule, a hint, an example or a sentence. "
    "Do not nest or overlap the tags and do not change any word.\n\nInstruction:\n{prompt}")

REWRITE_INSTRUCTION = (
    "You improve instructions for a small language model.\n"
    "{task}Current instruction:\n{prompt}\n\n"
    "The model finds this example hardest:\n{example}\nExpected answer: {answer}\n\n"
    "{analysis}"
    "Write a better instruction so the model gives the expected answer for examples like this one. "
    "You may rephrase, make rules clearer, drop parts that hurt, keep parts that help, or add what is "
    "missing. Do not copy the example. Reply with the new instruction between <prompt> and </prompt>.")

TEMPLATES = (Template("pmpo.segment", SEGMENT_INSTRUCTION, "mark up to {limit} deletable pieces of the instruction"),
             Template("pmpo.rewrite", REWRITE_INSTRUCTION, "rewrite the instruction for the hardest examples"))

_PROMPT_TAG = re.compile(r"<prompt>(.*?)(?:</prompt>|$)", re.I | re.S)
EXAMPLE_CHARS = 600  # a hard example is shown truncated: the meta-prompt must fit a small model


class PMPOConfig(TemplateSettings):
    TEMPLATES = TEMPLATES

    iterations: int = Field(20, ge=1, description="refinement iterations (paper: 20)")
    hard_examples: int = Field(3, ge=1, description="highest-loss examples rewritten for (paper: 3)")
    rewrites_per_example: int = Field(4, ge=1, description="rewrites sampled per hard example (paper: 4)")
    max_segments: int = Field(5, ge=1, description="segments masked per analysis (paper: 5)")
    train_examples: int = Field(50, ge=1, description="training examples the loss is measured on (paper: <= 50)")
    loss: Literal["auto", "cross_entropy", "margin"] = Field(
        "auto", description="auto: margin (preference form) for classification, cross_entropy for generation")
    beta: float = Field(1.0, gt=0, description="preference-loss temperature (paper: 1)")
    mask_token: str = Field("<MASK>", description="what replaces a masked segment; '' deletes it")
    temperature: float = Field(0.8, ge=0.0, le=2.0, description="sampling temperature of rewrites")
    max_tokens: int = Field(160, ge=8, description="token limit of one optimizer reply")


@register_strategy("pmpo")
class PMPO:
    Config = PMPOConfig
    needs_optimizer = True
    needs_loglikelihood = True

    def __init__(self, config: PMPOConfig):
        self.config = config
        self.prompts = config.templates()
        self.iteration = 0
        self.split = "train"
        self.examples: dict[str, Example] = {}  # the fixed training sample, by id
        self.kind: LossKind = "cross_entropy"  # resolved from config.loss once the task is known
        self.incumbent: Candidate | None = None
        self.analysis: list[SegmentImpact] | None = None  # None: the incumbent is not analysed yet
        self.masked: list[tuple[Segment, Candidate]] = []
        self.pool: list[Candidate] = []  # this iteration's rewrites
        self.phase = ""  # what the last ask() asked for: "analysis", "rewrite" or "final"

    def check_task(self, task: Task) -> None:
        refuse_program(task, "pmpo", "it reads the target model's log-likelihoods of one prompt's segments, "
                                     "and a program's evaluator gives scores only")

    # ---- ask / tell ---------------------------------------------------------------------------

    def ask(self, ctx: Context) -> Sequence[Candidate | ScoreRequest]:
        if self.phase == "final":
            return []
        if self.incumbent is None:
            self._start(ctx)
        while self.iteration < self.config.iterations:
            if self.analysis is None:
                reqs = self._analysis_requests(ctx)
                if reqs is None:
                    break  # the budget cannot pay for another analysis
                if reqs:
                    self.phase = "analysis"
                    return reqs
                self._analyse(ctx)
            reqs = self._rewrite_requests(ctx)
            if reqs is None:
                break
            if reqs:
                self.phase = "rewrite"
                return reqs
            self._select(ctx)  # every rewrite was rejected or already scored
        self.phase = "final"
        return self._dev_request(ctx)

    def tell(self, ctx: Context, evals: Sequence[Evaluation]) -> None:
        """Results are read back from ctx.history, which merges them per candidate."""
        if self.phase == "analysis":
            self._analyse(ctx)
        elif self.phase == "rewrite":
            self._select(ctx)

    # ---- setup --------------------------------------------------------------------------------

    def _start(self, ctx: Context) -> None:
        pool = list(ctx.task.split("train"))
        if not pool:
            self.split = "dev"
            pool = list(ctx.task.split("dev"))
            ctx.note("pmpo.no_train_split", detail="the loss is measured on dev, which also picks the result")
        pool.sort(key=lambda ex: ex.id)  # a fixed order, so the sample depends on the run seed only
        sample = ctx.rng.sample(pool, min(self.config.train_examples, len(pool)))
        self.examples = {ex.id: ex for ex in sample}
        self.incumbent = ctx.seed_candidates()[0]
        self.kind = default_loss(ctx.task) if self.config.loss == "auto" else self.config.loss

    def _summary(self, ctx: Context, cand: Candidate) -> LossSummary | None:
        """Loss on the training sample; None until every example is scored."""
        results = ctx.history.results(cand.id, self.split, "loss")
        if any(i not in results for i in self.examples):
            return None
        return summarize([results[i] for i in self.examples], self.examples, self.kind, self.config.beta)

    def _unscored(self, ctx: Context, cands: Sequence[Candidate]) -> list[ScoreRequest]:
        """Loss requests for the candidates whose training sample is not fully scored yet."""
        out, asked = [], set()
        for c in cands:
            done = ctx.history.results(c.id, self.split, "loss")
            missing = tuple(i for i in self.examples if i not in done)
            if missing and c.id not in asked:
                asked.add(c.id)
                out.append(ScoreRequest(c, self.split, example_ids=missing, objective="loss"))
        return out

    def _affordable(self, ctx: Context, wanted: int) -> int:
        """How many of `wanted` loss evaluations fit the example budget. Enough is kept back to
        score one new incumbent on dev, so the best prompt found always reaches the final report."""
        return min(wanted, ctx.budget.room(len(self.examples), reserve=len(ctx.task.split("dev"))))

    # ---- 1-2: segment and mask ----------------------------------------------------------------

    def _analysis_requests(self, ctx: Context) -> list[ScoreRequest] | None:
        assert self.incumbent is not None
        segments = self._segments(ctx, self.incumbent.text)
        self.masked = []
        for seg in segments:
            text = mask(self.incumbent.text, seg, self.config.mask_token)
            if text != self.incumbent.text:
                self.masked.append((seg, self.incumbent.revise(text, origin="pmpo.mask",
                                                                 meta={"segment": seg.text, "iteration": self.iteration})))
        reqs = self._unscored(ctx, [self.incumbent, *(c for _, c in self.masked)])
        dev = self._dev_request(ctx)
        cost = sum(len(r.example_ids or ()) for r in reqs) + len(ctx.task.split("dev")) * len(dev)
        if not ctx.budget.room(cost):
            return None
        return reqs + dev

    def _segments(self, ctx: Context, prompt: str) -> list[Segment]:
        limit = self.config.max_segments
        req = GenRequest(messages=(("user", self.prompts["segment"].format(limit=limit, prompt=prompt)),),
                         max_tokens=max(self.config.max_tokens, len(prompt) // 2), temperature=0.0)
        (out,) = ctx.require_optimizer().generate([req], purpose="pmpo.segment")
        found = [] if out.error else marked_segments(prompt, out.text, limit)
        if found:
            return found
        ctx.note("pmpo.segment_fallback", reason=out.error or "no usable <mask> span", raw=out.text)
        return merge_segments(prompt, split_prompt(prompt), limit)

    def _analyse(self, ctx: Context) -> None:
        """Delta loss of each masked variant; a variant whose scoring failed is left out."""
        assert self.incumbent is not None
        full = self._summary(ctx, self.incumbent)
        scored = [(seg, c.text, s) for seg, c in self.masked if (s := self._summary(ctx, c)) is not None]
        self.analysis = impacts(full, scored) if full is not None else []
        ctx.note("pmpo.attribution", iteration=self.iteration, prompt=self.incumbent.id,
                 loss=full.loss if full else None,
                 segments=[{"segment": a.segment.text, "candidate": self.incumbent.revise(a.masked_prompt, origin="").id,
                            "delta_loss": a.delta_loss, "delta_accuracy": a.delta_accuracy, "verdict": a.verdict}
                           for a in self.analysis])

    # ---- 3: rewrite ---------------------------------------------------------------------------

    def _rewrite_requests(self, ctx: Context) -> list[ScoreRequest] | None:
        assert self.incumbent is not None
        hard = self._hard_examples(ctx)
        n = self._affordable(ctx, len(hard) * self.config.rewrites_per_example)
        if n == 0:
            return None
        reqs = [GenRequest(messages=(("user", self._rewrite_prompt(ctx, hard[i % len(hard)])),),
                           max_tokens=self.config.max_tokens, temperature=self.config.temperature)
                for i in range(n)]
        outs = ctx.require_optimizer().generate(reqs, purpose="pmpo.rewrite")
        worst = worst_first(self.analysis or [])
        target = {"segment": worst[0].segment.text, "delta_loss": worst[0].delta_loss} if worst else {}
        self.pool = []
        for i, out in enumerate(outs):
            match = _PROMPT_TAG.search(out.text)
            text, problem = clean_prompt(match.group(1) if match else out.text, parent=self.incumbent.text,
                                         error=out.error)
            if not problem and self.config.mask_token and self.config.mask_token.lower() in text.lower():
                problem = "contains the mask token"
            if problem:
                ctx.note("proposal.rejected", parent=self.incumbent.id, reason=problem, raw=out.text)
                continue
            cand = self.incumbent.revise(text, origin="pmpo.rewrite",
                                         meta={"iteration": self.iteration, "hard_example": hard[i % len(hard)].id, **target})
            if cand.id not in {c.id for c in self.pool}:
                self.pool.append(cand)
        return self._unscored(ctx, self.pool)

    def _hard_examples(self, ctx: Context) -> list[Example]:
        assert self.incumbent is not None
        summary = self._summary(ctx, self.incumbent)
        if summary is None:  # the incumbent's scoring failed: any examples will do
            return list(self.examples.values())[: self.config.hard_examples]
        ranked = sorted(self.examples, key=lambda i: -summary.per_example[i])
        return [self.examples[i] for i in ranked[: self.config.hard_examples]]

    def _rewrite_prompt(self, ctx: Context, example: Example) -> str:
        task = f"Task: {ctx.task.description}\n" if ctx.task.description else ""
        text = example.input if len(example.input) <= EXAMPLE_CHARS else example.input[:EXAMPLE_CHARS] + " ..."
        lines = [f'- "{a.segment.text}" {a.verdict} (removing it changes the loss by {a.delta_loss:+.3f})'
                 for a in self.analysis or []]
        analysis = "What each part of the current instruction does:\n" + "\n".join(lines) + "\n\n" if lines else ""
        return self.prompts["rewrite"].format(task=task, prompt=self.incumbent.text if self.incumbent else "",
                                          example=text, answer=reference_text(example), analysis=analysis)

    # ---- 4: select ----------------------------------------------------------------------------

    def _select(self, ctx: Context) -> None:
        assert self.incumbent is not None
        best, best_summary = self.incumbent, self._summary(ctx, self.incumbent)
        for cand in self.pool:
            summary = self._summary(ctx, cand)
            if summary is not None and (best_summary is None or summary.loss < best_summary.loss):
                best, best_summary = cand, summary
        ctx.note("pmpo.iteration", iteration=self.iteration, incumbent=best.id,
                 loss=best_summary.loss if best_summary else None,
                 accuracy=best_summary.accuracy if best_summary else None,
                 improved=best is not self.incumbent, rewrites=len(self.pool))
        if best is not self.incumbent:
            self.incumbent, self.analysis = best, None
        self.pool = []
        self.iteration += 1

    # ---- dev scoring of incumbents --------------------------------------------------------------

    def _dev_request(self, ctx: Context) -> list[ScoreRequest]:
        """The incumbent on the whole dev split (task metric), if not scored there yet."""
        assert self.incumbent is not None
        if ctx.history.n_scored(self.incumbent.id, "dev") >= len(ctx.task.split("dev")):
            return []
        return [ScoreRequest(self.incumbent, "dev")]
