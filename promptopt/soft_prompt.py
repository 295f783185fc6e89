"""Soft prompts: PEFT's prompt-learning methods, trained on a task and scored like discrete prompts.

PEFT owns each method: its config, its trainable parameters and their initialization, its forward
pass during training and the saved adapter. Ours is the task's loss on the train split, checkpoint
selection on dev and the artifact directory (PEFT's adapter files plus `soft_prompt.json`, which
records the base model's fingerprint). Scoring goes through the one model seam: the hf backend with
`soft_prompt=DIR` (`HFBackend.with_soft_prompt`) puts the adapter's virtual tokens before every input
and scores with the task's own template (empty discrete prompt), examples, decoding and metric.

Methods and their papers' settings (prompt length and steps are scaled down for CPU where noted):
  prompt_tuning  Lester et al. 2021: Adafactor, lr 0.3, prompt initialized from text (paper: 100 tokens)
  p_tuning       Liu et al. 2021 ("GPT Understands, Too"): an LSTM prompt encoder; Adam lr 1e-5 in the
                 paper (with the model tuned); the frozen-model default here is AdamW lr 1e-3
  prefix_tuning  P-Tuning v2 (Liu et al. 2022): trainable keys and values at every layer, no
                 reparameterization, AdamW lr 5e-3..1e-2 (1e-2 here), fewer than 20 tokens for classification
  cpt            Context-aware Prompt Tuning (Blau et al. 2024): the prompt is a few train examples
                 rendered with the template, whose embeddings learn bounded deltas (PEFT's projection)
"""
from __future__ import annotations

import json
import math
import random
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Sequence

from promptopt.backends.base import LLRequest
from promptopt.backends.hf import SOFT_PROMPT_META
from promptopt.errors import ConfigError
from promptopt.scoring.scorer import Job, reference_text, score_jobs
from promptopt.task import Task
from promptopt.types import Evaluation, prompt_id

try:
    import torch
    from peft import CPTConfig, PrefixTuningConfig, PromptEncoderConfig, PromptTuningConfig, get_peft_model
    from transformers.optimization import Adafactor
except ImportError as e:
    raise ImportError(f"soft prompts need torch, transformers and peft: pip install 'promptopt[soft]' ({e})",
                      name=e.name) from e

METHODS = ("prompt_tuning", "p_tuning", "prefix_tuning", "cpt")
INITS = ("text", "labels", "vocab", "random")
OPTIMIZERS = ("adafactor", "adamw")
PROJECTIONS = ("cosine", "l2")
# Each method's optimizer and learning rate from its paper (see the module docstring).
PAPER_OPTIMIZER = {"prompt_tuning": ("adafactor", 0.3), "p_tuning": ("adamw", 1e-3),
                   "prefix_tuning": ("adamw", 1e-2), "cpt": ("adamw", 1e-3)}
# CPT's token types (its paper's masks): template text, example input, template after the input, label.
CPT_TEMPLATE, CPT_INPUT, CPT_FORMAT, CPT_LABEL = 1, 2, 3, 4


@dataclass(frozen=True)
class SoftPromptConfig:
    """How to train one soft prompt. optimizer/lr left None take the method's paper defaults."""

    method: str = "prompt_tuning"
    num_virtual_tokens: int = 8  # cpt: the number of train examples in its context instead
    init: str = "text"  # prompt_tuning: text (`init_text`), labels (the task's options), vocab or random
    init_text: str = ""
    optimizer: str | None = None
    lr: float | None = None
    steps: int = 30
    batch_size: int = 8
    eval_every: int = 10  # dev evaluations for checkpoint selection; 0 keeps the last step
    seed: int = 0

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"soft prompt: method must be one of {', '.join(METHODS)}, not {self.method!r}")
        if self.num_virtual_tokens < 1:
            raise ConfigError(f"soft prompt: num_virtual_tokens must be >= 1, got {self.num_virtual_tokens}")
        if self.init not in INITS:
            raise ConfigError(f"soft prompt: init must be one of {', '.join(INITS)}, not {self.init!r}")
        if self.method == "prompt_tuning" and self.init == "text" and not self.init_text.strip():
            raise ConfigError("soft prompt: init='text' needs a non-empty init_text")
        if self.optimizer is not None and self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"soft prompt: optimizer must be one of {', '.join(OPTIMIZERS)}, "
                              f"not {self.optimizer!r}")
        if not ((self.lr is None or self.lr > 0) and self.steps >= 1 and self.batch_size >= 1
                and self.eval_every >= 0):
            raise ConfigError("soft prompt: lr must be > 0, steps and batch_size >= 1, eval_every >= 0")

    @property
    def optimizer_name(self) -> str:
        return self.optimizer or PAPER_OPTIMIZER[self.method][0]

    @property
    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else PAPER_OPTIMIZER[self.method][1]


@dataclass
class TrainedSoftPrompt:
    """A trained soft prompt saved at `path` (PEFT adapter + soft_prompt.json) and how it was made."""

    path: Path
    config: SoftPromptConfig
    base_fingerprint: str
    trainable_parameters: int
    prompt_tokens: int  # virtual tokens before every input
    train_seconds: float = 0.0
    model_calls: int = 0  # sequences run through the model (training rows + dev evaluations)
    best_step: int = 0
    history: list[dict[str, float]] = field(default_factory=list)  # step, seconds, model_calls, dev


# ---- scoring (through the hf backend) ------------------------------------------------------------

def score_soft_prompt(task: Task, backend: Any, split: str, limit: int | None = None) -> Evaluation:
    """Score a soft prompt exactly like a discrete prompt: the task's template with an empty prompt.
    `backend` is an hf backend with a soft prompt (or a cache around one)."""
    examples = tuple(task.split(split))[:limit]
    if not examples:
        raise ConfigError(f"task {task.name} has no {split} examples")
    return score_jobs(task, backend, [Job(prompt_id(backend.fingerprint()), "", split, examples)])[0]


# ---- PEFT configs --------------------------------------------------------------------------------

def _cpt_context(task: Task, hf: Any, n: int, rng: random.Random) -> tuple[list[int], list[int]]:
    """CPT's context: `n` train examples rendered with the template and their answers, as token ids
    and token types (template, input, template after the input, label)."""
    if task.output != "choose":
        raise ConfigError(f"soft prompt: cpt needs a choose task (labels in its context); {task.name} generates text")
    ids: list[int] = []
    types: list[int] = []
    marker = "\x00"
    for ex in rng.sample(list(task.split("train")), min(n, len(task.split("train")))):
        before, _, after = task.render("", replace(ex, input=marker)).partition(marker)
        pieces = [(before, CPT_TEMPLATE), (ex.input, CPT_INPUT), (after, CPT_FORMAT),
                  (task.options[ex.label] + "\n\n", CPT_LABEL)]
        for text, kind in pieces:
            tokens = hf.tokenizer(text, add_special_tokens=False)["input_ids"]
            ids += tokens
            types += [kind] * len(tokens)
    return ids, types


def _peft_config(task: Task, hf: Any, cfg: SoftPromptConfig, tokenizer_dir: str) -> Any:
    common = {"task_type": "CAUSAL_LM"}
    if cfg.method == "p_tuning":  # the paper's encoder is a bidirectional LSTM (PEFT: "LSTM")
        return PromptEncoderConfig(num_virtual_tokens=cfg.num_virtual_tokens, encoder_reparameterization_type="LSTM",
                                   **common)
    if cfg.method == "prefix_tuning":  # P-Tuning v2: no reparameterization
        return PrefixTuningConfig(num_virtual_tokens=cfg.num_virtual_tokens, prefix_projection=False, **common)
    if cfg.method == "cpt":
        ids, types = _cpt_context(task, hf, cfg.num_virtual_tokens, random.Random(cfg.seed))
        return CPTConfig(cpt_token_ids=ids, cpt_mask=[1] * len(ids), cpt_tokens_type_mask=types,
                         opt_weighted_loss_type="decay", **common)
    if cfg.init == "vocab":
        init: dict[str, Any] = {"prompt_tuning_init": "SAMPLE_VOCAB"}
    elif cfg.init == "random":
        init = {"prompt_tuning_init": "RANDOM"}
    else:
        if cfg.init == "labels" and not task.options:
            raise ConfigError(f"soft prompt: init='labels' needs a choose task; {task.name} generates text")
        text = " ".join(o.strip() for o in task.options) if cfg.init == "labels" else cfg.init_text
        # PEFT reads the tokenizer from a path, so it needs a directory (GGUF-loaded models have none).
        init = {"prompt_tuning_init": "TEXT", "prompt_tuning_init_text": text,
                "tokenizer_name_or_path": tokenizer_dir}
    return PromptTuningConfig(num_virtual_tokens=cfg.num_virtual_tokens, **init, **common)


# ---- the training loss, through PEFT's forward ---------------------------------------------------

def continuation_logprobs(peft_model: Any, pad_id: int, pairs: Sequence[tuple[Sequence[int], int]]
                          ) -> list["torch.Tensor"]:
    """Per-token log-probabilities of each pair's continuation (ids[n_ctx:]) under PEFT's forward
    (the method's virtual tokens before the ids). Differentiable in the prompt's parameters. Pairs
    whose model input (ids[:-1]) is the same share one right-padded row."""
    rows: dict[tuple[int, ...], int] = {}
    for ids, _ in pairs:
        rows.setdefault(tuple(ids[:-1]), len(rows))
    width = max(len(r) for r in rows)
    ids_t = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for row, b in rows.items():
        ids_t[b, :len(row)] = torch.tensor(row)
        mask[b, :len(row)] = 1
    device = peft_model.get_base_model().device
    extra = {"labels": None} if peft_model.peft_config["default"].peft_type == "CPT" else {}
    logits = peft_model(input_ids=ids_t.to(device), attention_mask=mask.to(device), **extra).logits[:, -width:]
    b_idx, cols, targets, sizes = [], [], [], []
    for ids, n_ctx in pairs:
        b = rows[tuple(ids[:-1])]
        b_idx += [b] * (len(ids) - n_ctx)
        cols += range(n_ctx - 1, len(ids) - 1)  # input position j predicts ids[j + 1]
        targets += ids[n_ctx:]
        sizes.append(len(ids) - n_ctx)
    picked = torch.log_softmax(logits[torch.tensor(b_idx), torch.tensor(cols)].float(), dim=-1)
    lps = picked.gather(-1, torch.tensor(targets, device=picked.device)[:, None])[:, 0]
    return list(lps.split(sizes))


def _loss(task: Task, peft_model: Any, hf: Any, batch: Sequence[Any]) -> tuple["torch.Tensor", int]:
    """The task's own loss on a batch, and how many sequences it ran. Tokenized as the hf backend
    scores (`HFBackend.token_pairs`). choose: cross-entropy over the options' log-likelihoods;
    generate: mean token NLL of the reference."""
    if task.output == "choose":
        pairs = hf.token_pairs([LLRequest(task.render("", ex), opt) for ex in batch for opt in task.options])
        sums = torch.stack([lp.sum() for lp in continuation_logprobs(peft_model, hf.pad_id, pairs)])
        scores = sums.view(len(batch), len(task.options))
        labels = torch.tensor([ex.label for ex in batch], device=scores.device)
        return torch.nn.functional.cross_entropy(scores, labels), len(pairs)
    pairs = hf.token_pairs([LLRequest(task.render("", ex), " " + reference_text(ex).strip()) for ex in batch])
    lps = continuation_logprobs(peft_model, hf.pad_id, pairs)
    return -torch.stack([lp.mean() for lp in lps]).mean(), len(pairs)


def _optimizer(cfg: SoftPromptConfig, params: list["torch.nn.Parameter"]) -> "torch.optim.Optimizer":
    if cfg.optimizer_name == "adafactor":
        # Prompt tuning's settings; lr 0.3 is sane only with Adafactor's update clipping.
        return Adafactor(params, lr=cfg.learning_rate, relative_step=False, scale_parameter=False,
                         warmup_init=False, weight_decay=1e-5, decay_rate=-0.8)
    return torch.optim.AdamW(params, lr=cfg.learning_rate)


# ---- training ------------------------------------------------------------------------------------

def train_soft_prompt(task: Task, hf: Any, cfg: SoftPromptConfig, out_dir: Path,
                      on_progress: Callable[[dict[str, float]], None] | None = None) -> TrainedSoftPrompt:
    """Train a soft prompt on the task's train split for `hf` (an HFBackend without a soft prompt)
    and save it to `out_dir` (replaced if promptopt wrote it before; written whole or not at all).

    With eval_every > 0 the dev split is scored through the hf backend every that many steps (and
    at the end) and the best-scoring checkpoint is kept, as the papers select checkpoints on dev.
    """
    train = list(task.split("train"))
    if not train:
        raise ConfigError(f"task {task.name} has no train split to tune a soft prompt on")
    out_dir = Path(out_dir)
    if out_dir.exists() and not (out_dir / SOFT_PROMPT_META).is_file():
        raise ConfigError(f"{out_dir} exists and is not a soft prompt promptopt saved; it is left alone")
    partial = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    with tempfile.TemporaryDirectory() as tok_dir, torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)  # PEFT's initializations draw from the global RNG
        hf.tokenizer.save_pretrained(tok_dir)
        peft_model = get_peft_model(hf.model, _peft_config(task, hf, cfg, tok_dir))
    params = [p for p in peft_model.parameters() if p.requires_grad]
    trainable = sum(p.numel() for p in params)
    prompt_tokens = peft_model.peft_config["default"].num_virtual_tokens
    optimizer = _optimizer(cfg, params)
    result = TrainedSoftPrompt(out_dir, cfg, hf.base_fingerprint(), trainable, prompt_tokens)
    rng, order = random.Random(cfg.seed), []
    best_dev, started = -math.inf, time.perf_counter()

    def save(to: Path) -> None:
        peft_model.save_pretrained(str(to))
        meta = {"base_fingerprint": result.base_fingerprint, "model": hf.model_name, "method": cfg.method,
                "config": asdict(cfg), "trainable_parameters": trainable, "prompt_tokens": prompt_tokens,
                "train_seconds": round(result.train_seconds, 3), "model_calls": result.model_calls,
                "best_step": result.best_step, "history": result.history}
        (to / SOFT_PROMPT_META).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")

    def evaluate_dev(step: int) -> None:
        nonlocal best_dev
        with tempfile.TemporaryDirectory() as now:
            save(Path(now))
            ev = score_soft_prompt(task, hf.with_soft_prompt(now), "dev")
            result.model_calls += ev.usage.calls
            point = {"step": step, "seconds": round(time.perf_counter() - started, 3),
                     "model_calls": result.model_calls, "dev": ev.score}
            result.history.append(point)
            if on_progress:
                on_progress(point)
            if ev.score > best_dev:
                best_dev, result.best_step = ev.score, step
                shutil.rmtree(partial, ignore_errors=True)
                shutil.copytree(now, partial)

    peft_model.train(False)  # frozen model: no dropout, only the prompt learns
    if cfg.eval_every:
        evaluate_dev(0)
    for step in range(1, cfg.steps + 1):
        if len(order) < cfg.batch_size:
            order += rng.sample(train, len(train))  # epochs of shuffled examples
        batch, order = order[:cfg.batch_size], order[cfg.batch_size:]
        loss, rows = _loss(task, peft_model, hf, batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        result.model_calls += rows
        if cfg.eval_every and (step % cfg.eval_every == 0 or step == cfg.steps):
            evaluate_dev(step)
    result.train_seconds = time.perf_counter() - started
    if not cfg.eval_every:
        result.best_step = cfg.steps
        save(partial)
    else:  # the kept checkpoint's metadata, with the whole run's history and cost
        meta = json.loads((partial / SOFT_PROMPT_META).read_text(encoding="utf-8"))
        meta.update(train_seconds=round(result.train_seconds, 3), model_calls=result.model_calls,
                    best_step=result.best_step, history=result.history)
        (partial / SOFT_PROMPT_META).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    if out_dir.exists():
        shutil.rmtree(out_dir)
    partial.rename(out_dir)
    return result


# ---- readable projection -------------------------------------------------------------------------

def nearest_tokens(embeddings: "torch.Tensor", vocabulary: "torch.Tensor", metric: str = "cosine") -> list[int]:
    """For each soft prompt vector, the id of the nearest vocabulary embedding (cosine or L2)."""
    if metric not in PROJECTIONS:
        raise ConfigError(f"projection metric must be one of {', '.join(PROJECTIONS)}, not {metric!r}")
    soft, vocab = embeddings.float().cpu(), vocabulary.detach().float().cpu()
    if metric == "cosine":
        sim = torch.nn.functional.normalize(soft, dim=-1) @ torch.nn.functional.normalize(vocab, dim=-1).T
        return sim.argmax(-1).tolist()
    return torch.cdist(soft, vocab).argmin(-1).tolist()


def project_to_text(soft: Any, metric: str = "cosine") -> str | None:
    """A soft prompt made readable: the nearest tokens of its virtual token embeddings, decoded.
    `soft` is an hf backend with a soft prompt; None for prefix tuning, whose prompt is per-layer
    keys and values, not input embeddings."""
    if soft.soft_embeddings is None:
        return None
    ids = nearest_tokens(soft.soft_embeddings, soft.model.get_input_embeddings().weight, metric)
    return soft.tokenizer.decode(ids, skip_special_tokens=True)
