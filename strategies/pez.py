"""PEZ: hard prompts by gradient descent on a local model (Wen et al., "Hard Prompts Made Easy",
NeurIPS 2023; arXiv 2302.03668).

The prompt is kept as `prompt_length` continuous vectors P. Every step
  1. projects P onto the nearest vocabulary embeddings (cosine: normalized dot product, as the
     paper's nearest-neighbour search), giving real tokens and their embeddings P',
  2. runs a train batch with P' where the task template's {prompt} stands, and takes the task's
     loss (choose: cross-entropy over the options' log-likelihoods; generate: NLL of the reference),
  3. applies the gradient taken at P' to P (the paper's straight-through step) with the optimizer.
Every `eval_every` steps (and after the last) the projected tokens, decoded to text, are a candidate
the loop scores on dev like any other: logged, cached, resumable, and plain text that transfers to
another model. The loop's final report picks the best by dev score.

The gradients come from a local causal LM (`model`, the same loading path as RLPrompt's policy),
which should be the target's model. An API target (a backend that sends requests to a server) is
refused in one line when the run is resolved (`needs_local_target`), before any request; a target that
cannot give log-likelihoods is refused by the loop (`needs_loglikelihood`).

Paper settings for language models (its prompt_lm code for SST-2 on GPT-2 large): 10 prompt tokens,
Adafactor at lr 0.3, up to 5000 steps, evaluation every 100 steps. Scaled down for CPU here: 30 steps,
evaluation every 10 (`preset: "paper"` restores steps and eval_every).
"""
from __future__ import annotations

from typing import Any, Literal, Sequence

from pydantic import Field, model_validator

from promptopt.backends._local import common_prefix
from promptopt.registry import register_strategy
from promptopt.scoring.scorer import reference_text
from promptopt.strategy import Context, ScoreRequest, StrategyConfig
from promptopt.types import Candidate, Evaluation

PAPER = {"prompt_length": 10, "optimizer": "adafactor", "lr": 0.3, "steps": 5000, "eval_every": 100}
MARK = "\x00"  # stands for the prompt while a template is split around it


class PEZConfig(StrategyConfig):
    preset: Literal["cpu", "paper"] = Field("cpu", description="'paper' fills unset settings with the paper's")
    model: str = Field("embedded", description="the local model whose gradients guide the search "
                                               "(the target's): 'embedded', an HF dir, .gguf or hub id")
    device: str = Field("cpu", description="torch device of that model (cpu, cuda, ...)")
    prompt_length: int = Field(10, ge=1, description="prompt tokens (paper: 10)")
    init: Literal["vocab", "seed"] = Field(
        "vocab", description="vocab: random vocabulary tokens (the paper); seed: the seed prompt's first tokens")
    optimizer: Literal["adafactor", "adamw"] = Field("adafactor", description="paper (language models): adafactor")
    lr: float = Field(0.3, gt=0, description="learning rate (paper: 0.3 with Adafactor)")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay (the paper's image setting: 0.1)")
    steps: int = Field(30, ge=1, description="gradient steps (paper: up to 5000)")
    batch_size: int = Field(8, ge=1, description="train examples per step")
    eval_every: int = Field(10, ge=1, description="score the projected prompt on dev every this many steps (paper: 100)")

    @model_validator(mode="before")
    @classmethod
    def _apply_preset(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("preset") == "paper":
            return {**PAPER, **data}
        return data


class _Model:
    """The local model, its vocabulary embeddings (visible tokens only) and the continuous prompt."""

    def __init__(self, cfg: PEZConfig, ctx: Context):
        import torch

        from promptopt.strategies.blocks.rl_policy import load_backbone, prompt_vocabulary, seeded_generator

        self.torch = torch
        self.model, self.tokenizer = load_backbone(cfg.model, cfg.device)
        embed = self.model.get_input_embeddings().weight.detach()
        # Only tokens that decode to visible text: a candidate must read back as the tokens it was.
        self.vocab_ids = torch.tensor(prompt_vocabulary(self.tokenizer, embed.shape[0]), device=embed.device)
        self.vocab = embed[self.vocab_ids]
        self.unit_vocab = torch.nn.functional.normalize(self.vocab, dim=-1)
        if cfg.init == "seed":
            ids = self.tokenizer(ctx.task.seed_prompts[0], add_special_tokens=False)["input_ids"][:cfg.prompt_length]
            start = embed[torch.tensor(ids, dtype=torch.long)] if ids else self.vocab[:0]
            fill = cfg.prompt_length - len(ids)
        else:
            start, fill = self.vocab[:0], cfg.prompt_length
        pick = torch.randint(len(self.vocab_ids), (fill,), generator=seeded_generator(ctx.rng.getrandbits(63)))
        self.prompt = torch.nn.Parameter(torch.cat([start, self.vocab[pick.to(embed.device)]]).clone())
        if cfg.optimizer == "adafactor":
            from transformers.optimization import Adafactor

            self.optimizer: Any = Adafactor([self.prompt], lr=cfg.lr, relative_step=False, scale_parameter=False,
                                            warmup_init=False, weight_decay=cfg.weight_decay)
        else:
            self.optimizer = torch.optim.AdamW([self.prompt], lr=cfg.lr, weight_decay=cfg.weight_decay)

    def project(self) -> "Any":
        """Ids (into the model's vocabulary) of the nearest visible token to each prompt vector."""
        sim = self.torch.nn.functional.normalize(self.prompt.detach(), dim=-1) @ self.unit_vocab.T
        return self.vocab_ids[sim.argmax(-1)]

    def text(self) -> str:
        return self.tokenizer.decode(self.project().tolist(), skip_special_tokens=True)

    def step(self, ctx: Context, batch: Sequence[Any]) -> float:
        """One PEZ step on `batch`; returns the loss at the projected prompt."""
        projected = self.model.get_input_embeddings().weight[self.project()].detach().requires_grad_(True)
        loss = self._loss(ctx, projected, batch)
        loss.backward()
        self.prompt.grad = projected.grad  # the gradient taken at the projection moves the continuous prompt
        self.optimizer.step()
        self.optimizer.zero_grad()
        return float(loss.detach())

    def _loss(self, ctx: Context, prompt: Any, batch: Sequence[Any]) -> Any:
        task, torch = ctx.task, self.torch
        if task.output == "choose":
            rows = [(ex, option) for ex in batch for option in task.options]
        else:
            rows = [(ex, " " + reference_text(ex).strip()) for ex in batch]
        lps = self._logprobs(task, prompt, rows)
        if task.output == "choose":
            scores = torch.stack([lp.sum() for lp in lps]).view(len(batch), len(task.options))
            labels = torch.tensor([ex.label for ex in batch], device=scores.device)
            return torch.nn.functional.cross_entropy(scores, labels)
        return -torch.stack([lp.mean() for lp in lps]).mean()

    def _logprobs(self, task: Any, prompt: Any, rows: Sequence[tuple[Any, str]]) -> list[Any]:
        """Log-probabilities of each row's continuation after [template before {prompt}, the prompt
        vectors, template after {prompt} with the example]. Rows with the same model input (the
        single-token options of one example) share a forward row; rows are left-padded so the LM head
        runs only on the last columns, where the scored tokens are."""
        torch, embed = self.torch, self.model.get_input_embeddings()
        inputs: dict[tuple[tuple[int, ...], tuple[int, ...]], int] = {}
        scored = []
        for ex, continuation in rows:
            before, _, after = task.render(MARK, ex).partition(MARK)
            head = self.tokenizer(before)["input_ids"]  # with the start token the scorer's tokenization has
            whole = self.tokenizer(after + continuation, add_special_tokens=False)["input_ids"]
            # A token straddling the boundary belongs to the continuation, as in the scorer.
            n = common_prefix(whole, self.tokenizer(after, add_special_tokens=False)["input_ids"])
            key = (tuple(head), tuple(whole[:-1]))
            scored.append((inputs.setdefault(key, len(inputs)), whole[n:]))
        n_prompt = prompt.shape[0]
        width = max(len(h) + n_prompt + len(t) for h, t in inputs)
        keep = max(len(target) for _, target in scored)
        device = prompt.device
        batch = torch.zeros((len(inputs), width, prompt.shape[1]), dtype=prompt.dtype, device=device)
        mask = torch.zeros((len(inputs), width), dtype=torch.long, device=device)
        for (head, tail), b in inputs.items():
            body = embed(torch.tensor(head + tail, dtype=torch.long, device=device))
            seq = torch.cat([body[:len(head)], prompt, body[len(head):]])
            batch[b, width - len(seq):], mask[b, width - len(seq):] = seq, 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        logits = self.model(inputs_embeds=batch, attention_mask=mask, position_ids=positions,
                            logits_to_keep=keep).logits
        out = []
        for b, target in scored:
            # The last input predicts the last target token; column keep - 1 holds the last input.
            lp = torch.log_softmax(logits[b, keep - len(target):].float(), dim=-1)
            out.append(lp.gather(-1, torch.tensor(target, device=device)[:, None])[:, 0])
        return out


@register_strategy("pez")
class PEZ:
    Config = PEZConfig
    needs_optimizer = False
    # Gradients come from a local model: an API target is refused when the run is resolved, in one line.
    needs_local_target = True
    needs_loglikelihood = True

    def __init__(self, config: PEZConfig):
        self.config = config
        self.state: _Model | None = None
        self.steps_done = 0

    def ask(self, ctx: Context) -> Sequence[ScoreRequest]:
        cfg = self.config
        if self.steps_done >= cfg.steps:
            return []
        state = self._state(ctx)
        train = list(ctx.task.split("train"))
        while True:  # gradient steps run here; the loop only sees the projected prompts it scores
            batch = ctx.rng.sample(train, min(cfg.batch_size, len(train)))
            loss = state.step(ctx, batch)
            self.steps_done += 1
            text = state.text()
            ctx.note("pez.step", pez_step=self.steps_done, loss=loss, prompt=text)
            if self.steps_done % cfg.eval_every == 0 or self.steps_done == cfg.steps:
                cand = Candidate(text, origin="pez.projected", meta={"pez_step": self.steps_done, "loss": loss})
                if not ctx.history.n_scored(cand.id, "dev"):
                    return [ScoreRequest(cand, "dev")]
            if self.steps_done >= cfg.steps:
                return []

    def tell(self, ctx: Context, evals: Sequence[Evaluation]) -> None:
        for ev in evals:
            ctx.note("pez.eval", pez_step=self.steps_done, candidate=ev.candidate_id, dev_score=ev.score)

    def _state(self, ctx: Context) -> _Model:
        if self.state is None:  # built on first use: the random init draws from the run's RNG
            self.state = _Model(self.config, ctx)
        return self.state
