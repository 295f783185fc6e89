"""Bootstrapped demos: the target's own correct outputs on train become the demos, as DSPy's
BootstrapFewShot does; several such sets are ranked on dev (BootstrapFewShotWithRandomSearch).

1. The seed prompt is run on `bootstrap_examples` train examples. For a generation task (GSM8K) each
   output the metric accepts is kept with its text (its rationale), so a demo shows the model's own
   worked solution; for a choose task a correct prediction keeps the gold label.
2. `sets` demo sets of `k` are drawn from the accepted pool; when the pool has fewer than k, labeled
   train demos (the gold answer or worked solution) fill the set, as DSPy's max_labeled_demos does.
3. The sets and the zero-shot seed are ranked on dev by successive halving (the fewshot strategy's
   selection), so a task where bootstrapped demos do not help keeps its seed.
DSPy defaults: max_bootstrapped_demos 4, max_labeled_demos 16, 16 candidate programs. Scaled for CPU:
`bootstrap_examples` 32 train examples are run once (DSPy runs the teacher until it has enough demos).
"""
from __future__ import annotations

from typing import Sequence

from pydantic import Field

from promptopt.registry import register_strategy
from promptopt.strategies.fewshot import FewShot, FewShotConfig
from promptopt.strategy import Context, ScoreRequest
from promptopt.types import Candidate, Evaluation


class BootstrapConfig(FewShotConfig):
    bootstrap_examples: int = Field(32, ge=1, description="train examples the seed prompt is run on")
    min_score: float = Field(1.0, description="an output is kept as a demo when its metric score reaches this")


@register_strategy("bootstrap")
class Bootstrap(FewShot):
    Config = BootstrapConfig

    def __init__(self, config: BootstrapConfig):
        super().__init__(config)
        self.config: BootstrapConfig = config
        self.accepted: list[tuple[str, str | None]] = []  # (train id, its own output or None for the label)
        self.bootstrapped = False

    def ask(self, ctx: Context) -> Sequence[Candidate | ScoreRequest]:
        if not self.bootstrapped:
            self.bootstrapped = True
            seed = ctx.seed_candidates()[0]
            n = min(self.config.bootstrap_examples, len(ctx.task.split("train")))
            return [ScoreRequest(Candidate(seed.text, origin="seed"), "train", n=n)]
        return super().ask(ctx)

    def tell(self, ctx: Context, evals: Sequence[Evaluation]) -> None:
        if not self.started:
            for ev in evals:
                for r in ev.results if ev.state == "complete" else ():
                    if r.score >= self.config.min_score:
                        own = r.output if ctx.task.output == "generate" else None
                        self.accepted.append((r.example_id, own))
            ctx.note("bootstrap.pool", accepted=len(self.accepted),
                     tried=sum(len(ev.results) for ev in evals))
            return
        super().tell(ctx, evals)

    def arms(self, ctx: Context) -> list[Candidate]:
        seed = ctx.seed_candidates()[0]
        arms = [Candidate(seed.text, origin="seed")] if self.config.zero_shot else []
        accepted_ids = {i for i, _ in self.accepted}
        labeled = [ex.id for ex in ctx.task.split("train") if ex.id not in accepted_ids]
        gold = {ex.id: ex for ex in ctx.task.split("train")}
        for i in range(self.config.sets):
            picked = ctx.rng.sample(self.accepted, min(self.config.k, len(self.accepted)))
            fill = ctx.rng.sample(labeled, min(self.config.k - len(picked), len(labeled)))
            demos = tuple(d for d, _ in picked) + tuple(fill)
            answers = tuple(own if own is not None else _gold_answer(ctx, gold[d]) for d, own in picked) + \
                tuple(_gold_answer(ctx, gold[d]) for d in fill)
            arms.append(Candidate(seed.text, origin="bootstrap.sample", demos=demos, demo_answers=answers,
                                  meta={"set": i, "bootstrapped": len(picked)}))
        return arms


def _gold_answer(ctx: Context, example) -> str:
    """A labeled demo's answer as the task renders it (demo_answers needs one per demo)."""
    query = ctx.task.demo_text(example, answer="")
    return ctx.task.demo_text(example)[len(query):]
