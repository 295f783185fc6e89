"""Demo search: random k-demo sets from train, ranked by best-arm selection on dev.

DSPy's LabeledFewShot draws k labeled train examples as demos; BootstrapFewShotWithRandomSearch
(its `num_candidate_programs=16` default) scores several such draws and keeps the best, and CAPO's
demo half does the same with racing. Here each candidate is the seed instruction with one demo set;
the zero-shot seed is an arm too, so a task on which demos hurt keeps its seed. Sets are drawn
label-balanced by default (k=4 on a 2-class task: 2 + 2 in a random order) from the run's seeded RNG.
Defaults: 16 sets of k=4 (DSPy's max_labeled_demos is 16; 4 as MIPROv2's and CAPO's demo counts, and
on 2 CPU cores a 4-demo prefix scores about twice as fast as an 8-demo one), ranked by successive
halving over the strategy's share of the budget.
"""
from __future__ import annotations

from typing import Sequence

from pydantic import Field

from promptopt.task.demos import sample_demo_ids
from promptopt.errors import ConfigError
from promptopt.registry import register_strategy
from promptopt.strategies.blocks.selection import SelectionConfig
from promptopt.strategy import Context, ScoreRequest, StrategyConfig
from promptopt.task import Task
from promptopt.types import Candidate, Evaluation


class FewShotConfig(StrategyConfig):
    k: int = Field(4, ge=1, description="demos per set (DSPy max_labeled_demos: 16; 4 as MIPROv2 and CAPO)")
    sets: int = Field(16, ge=1, description="demo sets drawn (DSPy num_candidate_programs: 16)")
    balanced: bool = Field(True, description="draw label-balanced sets on choose tasks")
    zero_shot: bool = Field(True, description="keep the seed prompt without demos as an arm")
    selection: SelectionConfig = Field(default_factory=lambda: SelectionConfig(method="sh", budget=1024),
                                       description="how the sets are ranked on dev")


@register_strategy("fewshot")
class FewShot:
    Config = FewShotConfig
    needs_optimizer = False

    def __init__(self, config: FewShotConfig):
        self.config = config
        self.selector = config.selection.make()
        self.started = False

    @property
    def done_reason(self) -> str:
        """Why the search ended (Strategy's optional done_reason): its selection did."""
        return self.selector.done_reason

    def check_task(self, task: Task) -> None:
        """Refuse before any model loads: no train split, or k larger than it."""
        train = task.split("train")
        if not train:
            raise ConfigError(f"fewshot: task {task.name} has no train split to draw demos from")
        if self.config.k > len(train):
            raise ConfigError(f"fewshot: k={self.config.k} is larger than the train pool ({len(train)} examples)")

    def arms(self, ctx: Context) -> list[Candidate]:
        seed = ctx.seed_candidates()[0]
        arms = [Candidate(seed.text, origin="seed")] if self.config.zero_shot else []
        if seed.demos:
            arms.append(seed)
        train = ctx.task.split("train")
        for i in range(self.config.sets):
            demos = sample_demo_ids(train, self.config.k, ctx.rng, balanced=self.config.balanced)
            arms.append(Candidate(seed.text, origin="fewshot.sample", meta={"set": i}, demos=demos))
        return arms

    def ask(self, ctx: Context) -> Sequence[Candidate | ScoreRequest]:
        if not self.started:
            self.started = True
            # The halving is planned for what the run can pay, so its last round is not the one cut short.
            budget = min(self.config.selection.budget, ctx.budget.room())
            self.selector.start(ctx, self.arms(ctx), budget=budget, keep=1)
        return self.selector.requests()

    def tell(self, ctx: Context, evals: Sequence[Evaluation]) -> None:
        self.selector.update(evals)
