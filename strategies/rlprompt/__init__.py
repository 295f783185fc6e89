"""RLPrompt: discrete prompt optimization with reinforcement learning (Deng et al., EMNLP 2022;
arXiv 2205.12548; research/algorithms-rl-pmpo.md §1).

A policy (frozen causal LM + trainable MLP adapter, promptopt.strategies.blocks.rl_policy) emits short token
prompts. Each step
  1. samples `prompts_per_step` prompts (top-k sampling) and asks the loop to score all of them on
     the same `examples_per_reward` training examples (candidates with origin "rl.sample"),
  2. turns each prompt's results into a reward (promptopt.strategies.rlprompt.reward: the scaled probability gap
     for classification; the task metric or gold log-likelihood for generation), z-scores the
     rewards across the step's prompts and scales them by `reward_scale`,
  3. updates the adapter with on-policy soft Q-learning and a Polyak target network (the paper's
     method, algorithm "sql") or with REINFORCE using the z-scored rewards as advantages
     ("reinforce": an RLPrompt-style alternative, not the paper's method).
Every `eval_every` steps (and after the last) the greedy prompt is scored on the dev split
(origin "rl.greedy"); the loop's final report picks the best of those by dev score.
Per-step numbers go to the run log as notes "rl.step" and "rl.eval" (promptopt.cli.plots reads them).

Defaults are sized for a CPU; `preset: "paper"` fills every setting left unset with the paper's.
The paper's policy backbone is distilgpt2; here it is any causal LM (`policy_model`).
"""
from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any, Literal, Sequence

from pydantic import Field, model_validator

from promptopt.registry import register_strategy
from promptopt.strategies.blocks.rl_policy import PolicyTrainer, PromptPolicy, PromptSample, load_backbone, seeded_generator
from promptopt.strategies.rlprompt.reward import CORRECT_COEFF, INCORRECT_COEFF, classification_reward, mean_score, zscore
from promptopt.strategies.blocks.components import refuse_program
from promptopt.strategy import Context, ScoreRequest, StrategyConfig
from promptopt.task import Task
from promptopt.types import Candidate, Evaluation

# The paper's few-shot classification settings (fsc_config.yaml; research doc §1.6).
PAPER = {"steps": 12000, "prompts_per_step": 16, "examples_per_reward": None, "prompt_length": 5,
         "top_k": 256, "adapter_hidden": 2048, "learning_rate": 5e-5, "grad_clip": 5.0,
         "target_update_rate": 1e-3, "reward_scale": 5.0, "eval_every": 10}


class RLPromptConfig(StrategyConfig):
    preset: Literal["cpu", "paper"] = Field("cpu", description="'paper' fills unset settings with the paper's")
    algorithm: Literal["sql", "reinforce"] = Field(
        "sql", description="sql: soft Q-learning (the paper); reinforce: REINFORCE with a z-score baseline")
    policy_model: str = Field("embedded", description="policy backbone: 'embedded', an HF dir, .gguf or hub id")
    device: str = Field("cpu", description="torch device of the policy (cpu, cuda, cuda:1, ...)")
    vocabulary: tuple[str, ...] | None = Field(
        None, description="restrict prompt tokens to these (each one token); default: all visible tokens")
    prompt_length: int = Field(5, ge=1, description="tokens per prompt (paper: 5)")
    steps: int = Field(30, ge=1, description="training steps (paper: 12000)")
    prompts_per_step: int = Field(8, ge=2, description="prompts sampled per step (paper: 16)")
    examples_per_reward: int | None = Field(
        16, ge=1, description="train examples each step's prompts are scored on; None: all (paper)")
    top_k: int = Field(256, ge=0, description="sample from the policy's top-k tokens; 0: all (paper: 256)")
    adapter_hidden: int = Field(2048, ge=1, description="hidden width of the MLP adapter (paper: 2048)")
    learning_rate: float = Field(1e-4, gt=0, description="Adam learning rate (paper: 5e-5 over 12000 steps)")
    grad_clip: float = Field(5.0, gt=0, description="gradient-norm clip (paper: 5)")
    target_update_rate: float = Field(0.01, gt=0, le=1, description="Polyak rate of the SQL target (paper: 0.001)")
    reward_scale: float = Field(5.0, gt=0, description="z-scored rewards are multiplied by this (paper: 5)")
    correct_coeff: float = Field(CORRECT_COEFF, gt=0, description="gap multiplier when correct (paper: 200)")
    incorrect_coeff: float = Field(INCORRECT_COEFF, gt=0, description="gap multiplier when wrong (paper: 180)")
    generation_reward: Literal["loss", "metric"] = Field(
        "loss", description="generation tasks: gold-output log-likelihood (dense) or the task metric")
    eval_every: int = Field(5, ge=1, description="score the greedy prompt on dev every this many steps")
    dev_examples: int | None = Field(None, ge=1, description="dev examples per greedy evaluation; None: all")

    @model_validator(mode="before")
    @classmethod
    def _apply_preset(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("preset") == "paper":
            return {**PAPER, **data}
        return data


@dataclass
class _StepPlan:
    """What one ask() sent out, so tell() can match results to samples."""

    sample: PromptSample | None
    greedy: Candidate | None


@register_strategy("rlprompt")
class RLPrompt:
    Config = RLPromptConfig
    needs_optimizer = False

    def __init__(self, config: RLPromptConfig):
        self.config = config
        self.trainer: PolicyTrainer | None = None
        self.steps_done = 0
        self.evaluated_at = -1  # steps_done when the greedy prompt was last scored on dev
        self._plan: _StepPlan | None = None

    def check_task(self, task: Task) -> None:
        refuse_program(task, "rlprompt", "its policy writes one whole prompt from scratch, with no place for "
                                         "a program's named components")

    # -- ask / tell --
    def ask(self, ctx: Context) -> Sequence[ScoreRequest]:
        trainer = self._trainer(ctx)
        cfg = self.config
        requests: list[ScoreRequest] = []
        greedy = None
        if self.evaluated_at < self.steps_done and (self.steps_done % cfg.eval_every == 0
                                                    or self.steps_done == cfg.steps):
            greedy = ctx.seed_candidates()[0].revise(trainer.policy.text(trainer.policy.greedy()[0]), parents=(),
                                                     origin="rl.greedy", meta={"rl_step": self.steps_done})
            self.evaluated_at = self.steps_done
            if ctx.history.n_scored(greedy.id, "dev"):
                self._note_eval(ctx, greedy)  # already known: scoring again would add nothing
                greedy = None
            else:
                requests.append(ScoreRequest(greedy, "dev", n=cfg.dev_examples))
        sample = None
        if self.steps_done < cfg.steps:
            sample = trainer.policy.sample(cfg.prompts_per_step, cfg.top_k, seeded_generator(ctx.rng.getrandbits(63)))
            batch = self._reward_batch(ctx)
            objective = "task" if ctx.task.output == "choose" or cfg.generation_reward == "metric" else "loss"
            step_meta = {"rl_step": self.steps_done + 1}
            # Samples first: tell() reads them by position.
            requests[:0] = [ScoreRequest(ctx.seed_candidates()[0].revise(trainer.policy.text(row), parents=(),
                                                                      origin="rl.sample", meta=step_meta),
                                         "train", example_ids=batch, objective=objective)
                            for row in sample.actions]
        if sample is None and greedy is None and self.steps_done >= cfg.steps:
            return []
        self._plan = _StepPlan(sample, greedy)
        return requests

    def tell(self, ctx: Context, evals: Sequence[Evaluation]) -> None:
        plan, self._plan = self._plan, None
        assert plan is not None, "tell() without ask()"
        if plan.sample is not None:
            self._learn(ctx, plan.sample, evals[:len(plan.sample.actions)])
        if plan.greedy is not None:
            self._note_eval(ctx, plan.greedy)

    # -- internals --
    def _trainer(self, ctx: Context) -> PolicyTrainer:
        """Built on first use: the adapter's initial weights come from the run's RNG."""
        if self.trainer is None:
            cfg = self.config
            backbone, tokenizer = load_backbone(cfg.policy_model, cfg.device)
            policy = PromptPolicy(backbone, tokenizer, prompt_length=cfg.prompt_length,
                                  adapter_hidden=cfg.adapter_hidden, vocabulary=cfg.vocabulary,
                                  generator=seeded_generator(ctx.rng.getrandbits(63)))
            self.trainer = PolicyTrainer(policy, algorithm=cfg.algorithm, learning_rate=cfg.learning_rate,
                                         grad_clip=cfg.grad_clip, target_update_rate=cfg.target_update_rate)
        return self.trainer

    def _reward_batch(self, ctx: Context) -> tuple[str, ...]:
        """The train examples every prompt of this step is scored on (the same ones, so rewards compare)."""
        ids = [ex.id for ex in ctx.task.split("train")]
        k = self.config.examples_per_reward
        if k is None or k >= len(ids):
            return tuple(ids)
        return tuple(sorted(ctx.rng.sample(ids, k), key=ids.index))

    def _rewards(self, ctx: Context, evals: Sequence[Evaluation]) -> list[float]:
        if ctx.task.output != "choose":
            return [mean_score(ev) for ev in evals]
        labels = {ex.id: ex.label for ex in ctx.task.split("train")}
        return [classification_reward(ev, labels, self.config.correct_coeff, self.config.incorrect_coeff)
                for ev in evals]

    def _learn(self, ctx: Context, sample: PromptSample, evals: Sequence[Evaluation]) -> None:
        assert self.trainer is not None
        self.steps_done += 1
        # A failed evaluation has no reward: leave that prompt out of the update.
        keep = [i for i, ev in enumerate(evals) if ev.state == "complete" and ev.results]
        if len(keep) < 2:
            ctx.note("rl.step", rl_step=self.steps_done, skipped="fewer than two prompts could be scored")
            return
        raw = self._rewards(ctx, [evals[i] for i in keep])
        shaped = [self.config.reward_scale * z for z in zscore(raw)]
        kept = PromptSample(sample.actions[keep], sample.states[keep])
        stats = self.trainer.update(kept, shaped)
        best = max(range(len(keep)), key=raw.__getitem__)
        ctx.note("rl.step", rl_step=self.steps_done, reward=statistics.fmean(raw), reward_max=raw[best],
                 train_score=statistics.fmean(evals[i].score for i in keep), loss=stats.loss,
                 entropy=stats.entropy, best_sample=evals[keep[best]].candidate_id)

    def _note_eval(self, ctx: Context, greedy: Candidate) -> None:
        ctx.note("rl.eval", rl_step=greedy.meta["rl_step"], candidate=greedy.id, prompt=greedy.text,
                 dev_score=ctx.history.score(greedy.id, "dev"))
