"""Joint instruction x demo-set search with optuna's TPE sampler, after MIPROv2 (Opsahl-Ong et al. 2024);
with no optimizer model the extra instructions are the seed with words deleted or swapped.

1. Demo-set candidates: the zero-shot set, then random label-balanced sets of `k` train demos
   (MIPROv2 also bootstraps demos from the program's own correct traces; for a "choose" task the gold
   label is the only output, so labeled sets are what it would bootstrap).
2. Instruction candidates: the optimizer LLM proposes instructions from a few train examples and the
   seed (MIPROv2's grounded proposer, without its program summary); with `--optimizer-model none` they
   are the seed prompts plus random phrase edits of them (deletes and swaps, as Plum/GrIPS do), which
   read as shuffled words; the run says so on stderr, and `instruction_edits=false` keeps the seed
   instruction and searches demo sets only.
3. Search: each trial asks optuna's TPESampler (multivariate, seeded from the run's RNG) for an
   (instruction, demo set) pair and scores it on a random dev minibatch; every
   `full_eval_every` trials the best pair by minibatch mean is scored on the whole dev split.
   The default pair (seed instruction, zero-shot) is enqueued as the first trial, as MIPROv2 does.
   With `retrieval=true` one more demo-set choice retrieves the k train demos nearest each input by BM25
   (promptopt.task.retrieval; the `knn` strategy searches the retrieval policy itself).
Paper/code defaults: minibatch 35, full evaluation every 5 trials, 4 demos, `num_candidates` 6..18
instructions and demo sets (auto light/medium/heavy). Scaled for CPU: the minibatch is capped at half
the dev split (16-shot dev sets hold 32-96 examples) and the number of trials comes from the budget.
Resume replays the same tells into a fresh study, so the sampler's path is rebuilt exactly.
"""
from __future__ import annotations

import logging
import math
from typing import Any, Sequence

from pydantic import Field

from promptopt.backends.base import GenRequest
from promptopt.task.demos import sample_demo_ids
from promptopt.errors import ConfigError
from promptopt.registry import register_strategy
from promptopt.task.retrieval import RetrievalPolicy, check_policy
from promptopt.strategies.blocks.edits import DELETE, SWAP, apply_edit, plan_edit, render, segment, tidy
from promptopt.strategies.blocks.parsing import clean_prompt
from promptopt.strategy import Context, ScoreRequest, StrategyConfig
from promptopt.task import Task
from promptopt.types import Candidate, Evaluation

PROPOSE = ("Here are examples of a task. Each shows an input and its correct answer.\n\n{examples}\n\n"
           "The current instruction for this task is: {seed}\n"
           "Write a better instruction that tells a language model how to answer this task. "
           "Reply with the instruction only.")


class MiproConfig(StrategyConfig):
    instructions: int = Field(6, ge=1, description="instruction candidates, the seed included (MIPROv2 light: 6)")
    demo_sets: int = Field(6, ge=1, description="demo-set candidates, the zero-shot set included")
    k: int = Field(4, ge=1, description="demos per set (MIPROv2: 4 bootstrapped + 4 labeled at most)")
    minibatch: int = Field(35, ge=1, description="dev examples per trial (MIPROv2: 35; capped at half the dev split)")
    full_eval_every: int = Field(5, ge=1, description="trials between full dev evaluations (MIPROv2: 5)")
    trials: int | None = Field(None, ge=1, description="trials to run (default: until the budget is spent)")
    balanced: bool = Field(True, description="label-balanced demo sets on choose tasks")
    retrieval: bool = Field(False, description="one more demo-set choice: the k train demos nearest each input "
                                               "by BM25 (promptopt.task.retrieval; the `retrieval` extra)")
    temperature: float = Field(1.0, ge=0.0, le=2.0, description="optimizer temperature for proposals")
    max_tokens: int = Field(96, ge=8)
    proposal_examples: int = Field(3, ge=1, description="train examples shown to the proposer")
    instruction_edits: bool = Field(True, description="without an optimizer model: fill the instruction pool with "
                                                      "the seed's words deleted or swapped (false: the seed only)")


@register_strategy("mipro")
class Mipro:
    Config = MiproConfig
    name = "mipro"  # in messages that name a setting (knn, a subclass, says its own)
    needs_optimizer = False
    uses_optimizer = True  # proposes instructions with it when there is one; phrase edits otherwise

    def __init__(self, config: MiproConfig):
        import optuna
        self.config = config
        self._optuna = optuna
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.study: Any = None
        self.instructions: list[Candidate] = []
        self.demo_sets: list[tuple[str, ...] | RetrievalPolicy] = []  # fixed ids, or a policy (`retrieval`)
        self.trials = 0
        self.pending: list[tuple[Any, Candidate]] = []  # (optuna trial, candidate) scored on a minibatch
        self.full: Candidate | None = None  # being scored on the rest of dev
        self.last_full = 0  # trial count at the last full evaluation
        self.proposed: set[str] = set()  # ids of the candidates this search's trials scored

    @property
    def done_reason(self) -> str:
        """Why ask() returned [] (Strategy's optional done_reason): its trials, or a budget too small for a trial."""
        if self.config.trials is not None and self.trials >= self.config.trials:
            return f"all {self.config.trials} trials made (trials={self.config.trials})"
        return f"the examples left do not pay for one more minibatch trial, after {self.trials} trials"

    def check_task(self, task: Task) -> None:
        train = task.split("train")
        if not train:
            raise ConfigError(f"mipro: task {task.name} has no train split to draw demos from")
        if self.config.k > len(train):
            raise ConfigError(f"mipro: k={self.config.k} is larger than the train pool ({len(train)} examples)")
        if self.config.retrieval:
            check_policy(RetrievalPolicy(k=self.config.k), train, where="mipro")

    @property
    def retrieval_embeddings(self) -> list[str]:
        """Read by the loop at start: the embeddings this search retrieves demos with."""
        return ["bm25"] if self.config.retrieval else []

    # -- setup: the two candidate pools and the study --
    def _start(self, ctx: Context) -> None:
        seed = ctx.seed_candidates()[0]
        self.instructions = self._instructions(ctx, seed)
        train = ctx.task.split("train")
        self.demo_sets = [seed.demos] + [sample_demo_ids(train, self.config.k, ctx.rng, balanced=self.config.balanced)
                                         for _ in range(self.config.demo_sets - 1)]
        if self.config.retrieval:
            self.demo_sets.append(RetrievalPolicy(k=self.config.k))
        sampler = self._optuna.samplers.TPESampler(seed=ctx.rng.randrange(2**31), multivariate=True)
        self.study = self._optuna.create_study(direction="maximize", sampler=sampler)
        self.study.enqueue_trial({"instruction": 0, "demos": 0})

    def _instructions(self, ctx: Context, seed: Candidate) -> list[Candidate]:
        out = {c.id: c for c in [Candidate(p, origin="seed") for p in ctx.task.seed_prompts]}
        want = self.config.instructions
        if ctx.optimizer is not None:
            shown = ctx.rng.sample(list(ctx.task.split("train")), min(self.config.proposal_examples,
                                                                     len(ctx.task.split("train"))))
            examples = "\n\n".join(ctx.task.demo_text(ex) for ex in shown)
            prompt = PROPOSE.format(examples=examples, seed=seed.text)
            reqs = [GenRequest(messages=(("user", prompt),), max_tokens=self.config.max_tokens,
                               temperature=self.config.temperature) for _ in range(max(0, want - len(out)))]
            for res in ctx.optimizer.generate(reqs, purpose="mipro.propose"):
                text, problem = clean_prompt(res.text, parent=seed.text, error=res.error)
                if problem:
                    ctx.note("proposal.rejected", reason=problem, raw=res.text)
                    continue
                out.setdefault(Candidate(text).id, Candidate(text, parents=(seed.id,), origin="mipro.propose"))
        if ctx.optimizer is None and len(out) < want:
            if not self.config.instruction_edits:
                return list(out.values())  # the instruction stays fixed: only demo sets are searched
            logging.getLogger("promptopt").warning(
                "%s: no optimizer model, so its other %d instructions are the seed with words deleted or "
                "swapped, which reads as shuffled text; pass --optimizer-model for written ones, or --set "
                "%s.instruction_edits=false to keep the seed instruction and search demos only",
                self.name, want - len(out), self.name)
        bases = list(out.values())
        for attempt in range(8 * want):  # phrase edits fill what the proposer did not
            if len(out) >= want:
                break
            base = bases[attempt % len(bases)]
            pieces = segment(base.text)
            edit = plan_edit(pieces, ctx.rng, (DELETE, SWAP))
            if edit is None:
                continue
            text = tidy(render(apply_edit(pieces, edit)))
            out.setdefault(Candidate(text).id, Candidate(text, parents=(base.id,), origin="mipro.edit",
                                                         meta={"edit": edit.to_json()}))
        return list(out.values())[:want]

    def _candidate(self, i: int, j: int) -> Candidate:
        inst, demos = self.instructions[i], self.demo_sets[j]
        policy = demos if isinstance(demos, RetrievalPolicy) else None
        return Candidate(inst.text, parents=inst.parents, origin=inst.origin,
                         meta={**inst.meta, "instruction": i, "demo_set": j},
                         demos=() if policy else demos, retrieval=policy)  # type: ignore[arg-type]

    # -- ask / tell --
    def ask(self, ctx: Context) -> Sequence[Candidate | ScoreRequest]:
        if self.study is None:
            self._start(ctx)
        if self.trials - self.last_full >= self.config.full_eval_every:
            self.last_full = self.trials
            best = self._best_by_minibatch(ctx)
            if best is not None and ctx.history.n_scored(best.id) < len(ctx.task.split("dev")):
                self.full = best
                return [ScoreRequest(best, "dev")]  # the rest of dev: "ask again means more"
        dev = ctx.task.split("dev")
        size = min(self.config.minibatch, max(1, len(dev) // 2))
        if (self.config.trials is not None and self.trials >= self.config.trials) or not ctx.budget.room(size):
            return []  # a trial on fewer examples than the minibatch would not be comparable
        trial = self.study.ask()
        cand = self._suggest(trial)
        self.proposed.add(cand.id)
        ids = tuple(ex.id for ex in ctx.rng.sample(list(dev), size))
        self.pending = [(trial, cand)]
        return [ScoreRequest(cand, "dev", example_ids=ids)]

    def _suggest(self, trial: Any) -> Candidate:
        """The trial's candidate: here an (instruction, demo set) pair; knn suggests a retrieval policy instead."""
        i = trial.suggest_categorical("instruction", list(range(len(self.instructions))))
        j = trial.suggest_categorical("demos", list(range(len(self.demo_sets))))
        return self._candidate(i, j)

    def tell(self, ctx: Context, evals: Sequence[Evaluation]) -> None:
        if self.full is not None and not self.pending:
            self.full = None
            return
        for (trial, _), ev in zip(self.pending, evals):
            score = ev.score
            if math.isnan(score):
                self.study.tell(trial, state=self._optuna.trial.TrialState.FAIL)
            else:
                self.study.tell(trial, score)
        self.pending = []
        self.trials += 1

    def _best_by_minibatch(self, ctx: Context) -> Candidate | None:
        ranked = ctx.history.ranked("dev")
        return next((c for c, _ in ranked if c.id in self.proposed), None)
