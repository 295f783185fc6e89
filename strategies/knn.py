"""Demonstrations retrieved for each input (kNN), searched jointly with the instruction by optuna's TPE.

KATE (Liu et al. 2022) showed that the train examples nearest to an input make better demos for it than
a random fixed set, most of all where the right demos depend on the input (topic classification with
many labels); DSPy's KNNFewShot and LangChain's similarity / MMR example selectors do the same. Each
candidate here is an instruction plus a retrieval policy (promptopt.task.retrieval): k, the embedding, the MMR
lambda (diversity), label balance and order. The search is MIPROv2's (strategies/mipro.py): instruction
candidates from the optimizer LLM or phrase edits, then TPE trials on dev minibatches with a full dev
evaluation of the best every `full_eval_every` trials, under the loop's budget. The first trial is the
seed instruction with the first choice of every setting (k=4 by BM25, nearest last).
Defaults: BM25 (no model; works with API targets); add "hidden" for the target model's own hidden states
(local targets) or "st:<model>" for a sentence-transformers model. `shared` (default 0) puts that many fixed
demos, one label-balanced draw from train per number, before the retrieved ones: the backend computes them
once for all inputs, which makes scoring faster the more of the prompt they are.
"""
from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator
from pydantic_core import PydanticCustomError

from promptopt.errors import ConfigError
from promptopt.registry import register_strategy
from promptopt.task.demos import sample_demo_ids
from promptopt.task.retrieval import RetrievalPolicy, check_policy
from promptopt.strategies.mipro import Mipro
from promptopt.strategy import Context, StrategyConfig
from promptopt.task import Task
from promptopt.types import Candidate


class KnnConfig(StrategyConfig):
    instructions: int = Field(4, ge=1, description="instruction candidates, the seed included")
    k: list[int] = Field([4, 8, 2], min_length=1, description="demos per input to choose from (KATE: up to 20 on "
                                                               "GPT-3; 4 as MIPROv2; kept short for CPU)")
    embedding: list[str] = Field(["bm25"], min_length=1, description="bm25, hidden (local target), st:<model>")
    mmr: list[float] = Field([1.0, 0.7], min_length=1, description="MMR lambdas (1: nearest only)")
    order: list[Literal["nearest_last", "nearest_first"]] = Field(["nearest_last", "nearest_first"], min_length=1,
                                                                  description="where the nearest demo stands")
    balanced: list[bool] = Field([False], min_length=1, description="label-balanced retrieval (choose tasks)")
    shared: list[int] = Field([0], min_length=1, description="fixed demos before the retrieved ones, the same for "
                                                             "every input (computed once: faster)")
    minibatch: int = Field(35, ge=1, description="dev examples per trial (MIPROv2: 35; capped at half the dev split)")
    full_eval_every: int = Field(5, ge=1, description="trials between full dev evaluations (MIPROv2: 5)")
    trials: int | None = Field(None, ge=1, description="trials to run (default: until the budget is spent)")
    temperature: float = Field(1.0, ge=0.0, le=2.0, description="optimizer temperature for proposals")
    max_tokens: int = Field(96, ge=8)
    proposal_examples: int = Field(3, ge=1, description="train examples shown to the proposer")
    instruction_edits: bool = Field(True, description="without an optimizer model: fill the instruction pool with "
                                                      "the seed's words deleted or swapped (false: the seed only)")

    @field_validator("k", "embedding", "mmr", "order", "balanced", "shared", mode="after")
    @classmethod
    def _valid_choices(cls, values: list[Any], info: Any) -> list[Any]:
        if len(set(values)) != len(values):
            raise PydanticCustomError("choices", "a choice is repeated")
        if info.field_name == "shared":
            if min(values) < 0:
                raise PydanticCustomError("choices", "a number of shared demos cannot be negative")
            return values
        for v in values:  # RetrievalPolicy says what is wrong with one value
            try:
                RetrievalPolicy(**{info.field_name: v})
            except ConfigError as e:  # the reason alone, without pydantic's "Value error," prefix
                raise PydanticCustomError("choices", "{reason}", {"reason": str(e).split(": ", 1)[-1]}) from e
        return values


@register_strategy("knn")
class Knn(Mipro):
    """MIPROv2's search over (instruction, retrieval policy) instead of (instruction, fixed demo set)."""

    Config = KnnConfig
    name = "knn"

    def __init__(self, config: KnnConfig):
        super().__init__(config)  # type: ignore[arg-type]  # the Mipro settings the search reads are all here
        self.config: KnnConfig = config  # type: ignore[assignment]

    @property
    def retrieval_embeddings(self) -> list[str]:
        """Read by the loop at start: each must be usable with the target (one line if not)."""
        return list(self.config.embedding)

    def check_task(self, task: Task) -> None:
        train = task.split("train")
        for name in self.config.embedding:
            check_policy(RetrievalPolicy(k=max(self.config.k), embedding=name), train, where="knn")
        most = max(self.config.k) + max(self.config.shared)
        if most > len(train):
            raise ConfigError(f"knn: k={max(self.config.k)} retrieved and shared={max(self.config.shared)} demos "
                              f"need {most} train examples; the train split has {len(train)}")

    def _start(self, ctx: Context) -> None:
        seed = ctx.seed_candidates()[0]
        self.instructions = self._instructions(ctx, seed)
        sampler = self._optuna.samplers.TPESampler(seed=ctx.rng.randrange(2**31), multivariate=True)
        self.study = self._optuna.create_study(direction="maximize", sampler=sampler)
        c = self.config
        train = ctx.task.split("train")
        self.shared_sets = {n: sample_demo_ids(train, n, ctx.rng) if n else () for n in c.shared}
        first = {"instruction": 0, "k": c.k[0], "embedding": c.embedding[0], "mmr": c.mmr[0], "order": c.order[0],
                 "balanced": c.balanced[0]}
        self.study.enqueue_trial({**first, "shared": c.shared[0]} if len(c.shared) > 1 else first)

    def _suggest(self, trial: Any) -> Candidate:
        c = self.config
        i = trial.suggest_categorical("instruction", list(range(len(self.instructions))))
        policy = RetrievalPolicy(k=trial.suggest_categorical("k", c.k),
                                 embedding=trial.suggest_categorical("embedding", c.embedding),
                                 mmr=trial.suggest_categorical("mmr", c.mmr),
                                 order=trial.suggest_categorical("order", c.order),
                                 balanced=trial.suggest_categorical("balanced", c.balanced),
                                 # one choice is no search dimension: a run without shared demos samples as before
                                 shared=self.shared_sets[trial.suggest_categorical("shared", c.shared)
                                                         if len(c.shared) > 1 else c.shared[0]])
        inst = self.instructions[i]
        return Candidate(inst.text, parents=inst.parents, origin="knn",
                         meta={**inst.meta, "instruction": i, "instruction_origin": inst.origin}, retrieval=policy)
