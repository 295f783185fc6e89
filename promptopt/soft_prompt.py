"""Soft prompt tuning (Lester et al., 2021) with PEFT, scored through the same scorer as discrete prompts.

A soft prompt is P trainable vectors placed before the embedded input of a frozen causal LM.
PEFT owns the prompt parameters: their initialization (from text, sampled vocabulary or random),
the trainable-parameter count and the saved artifact. The forward pass is ours, one function
(`continuation_logprobs`) used both for the training loss and by `SoftPromptBackend`, so the
loss optimizes exactly what evaluation measures. `SoftPromptBackend` implements the Backend
protocol, so `score_jobs` scores a soft prompt with the task's own examples, decoding and metric
(the template is rendered with an empty discrete prompt).
"""
from __future__ import annotations

import hashlib
import json
import math
import random
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from promptopt.backends._local import split_pairs
from promptopt.backends.base import CHAT, GENERATE, LOGLIKELIHOOD, PROMPT_EMBEDS, GenRequest, GenResult, LLRequest, LLResult
from promptopt.errors import ConfigError, PromptOptError
from promptopt.scoring.scorer import Job, reference_text, score_jobs
from promptopt.task import Task
from promptopt.types import Evaluation, Usage, prompt_id

try:
    import torch
    from peft import PromptTuningConfig, get_peft_model
    from peft.utils import load_peft_weights
    from transformers import DynamicCache
    from transformers.optimization import Adafactor
except ImportError as e:
    raise ImportError(f"soft prompts need torch, transformers and peft: pip install 'promptopt[soft]' ({e})",
                      name=e.name) from e

INITS = ("text", "labels", "vocab", "random")
OPTIMIZERS = ("adafactor", "adamw")
PROJECTIONS = ("cosine", "l2")
META_FILE = "soft_prompt.json"
ADAPTER = "default"


@dataclass(frozen=True)
class SoftPromptConfig:
    """How to train one soft prompt. Defaults follow the paper's optimizer (Adafactor, lr 0.3)."""

    num_virtual_tokens: int = 8
    init: str = "text"  # text: `init_text`; labels: the task's options; vocab: sampled tokens; random: N(0, 1)
    init_text: str = ""
    optimizer: str = "adafactor"
    lr: float = 0.3
    steps: int = 30
    batch_size: int = 8
    eval_every: int = 10  # dev evaluations for checkpoint selection; 0 keeps the last step
    seed: int = 0

    def __post_init__(self) -> None:
        if self.num_virtual_tokens < 1:
            raise ConfigError(f"soft prompt: num_virtual_tokens must be >= 1, got {self.num_virtual_tokens}")
        if self.init not in INITS:
            raise ConfigError(f"soft prompt: init must be one of {', '.join(INITS)}, not {self.init!r}")
        if self.init == "text" and not self.init_text.strip():
            raise ConfigError("soft prompt: init='text' needs a non-empty init_text")
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"soft prompt: optimizer must be one of {', '.join(OPTIMIZERS)}, "
                              f"not {self.optimizer!r}")
        if not (self.lr > 0 and self.steps >= 1 and self.batch_size >= 1 and self.eval_every >= 0):
            raise ConfigError("soft prompt: lr must be > 0, steps and batch_size >= 1, eval_every >= 0")


@dataclass
class TrainedSoftPrompt:
    """A trained soft prompt (P x d, float32 on CPU) and how it was made."""

    embeddings: "torch.Tensor"
    config: SoftPromptConfig
    base_fingerprint: str
    trainable_parameters: int
    train_seconds: float = 0.0
    model_calls: int = 0  # sequences run through the model (training rows + dev evaluations)
    best_step: int = 0
    history: list[dict[str, float]] = field(default_factory=list)  # step, seconds, model_calls, dev


# ---- the shared forward pass ---------------------------------------------------------------------

def _left_padded(model: Any, soft: "torch.Tensor", rows: Sequence[Sequence[int]]
                 ) -> tuple["torch.Tensor", "torch.Tensor", "torch.Tensor"]:
    """[pad.., soft, tokens] embeddings, attention mask and position ids (the soft prompt starts at 0).

    Left padding aligns every row's end, so the scored positions are the last columns and the LM
    head runs only there (`logits_to_keep`)."""
    embed = model.get_input_embeddings()
    device = embed.weight.device
    n_soft, width = soft.shape[0], max(len(r) for r in rows)
    ids = torch.zeros((len(rows), width), dtype=torch.long)
    mask = torch.zeros((len(rows), n_soft + width), dtype=torch.long)
    # Column order of [soft, padded tokens] that yields [padding, soft, tokens] for each row.
    order = torch.empty((len(rows), n_soft + width), dtype=torch.long)
    for b, row in enumerate(rows):
        pad = width - len(row)
        ids[b, pad:] = torch.tensor(row, dtype=torch.long)
        mask[b, pad:] = 1
        order[b] = torch.cat([torch.arange(n_soft, n_soft + pad), torch.arange(n_soft),
                              torch.arange(n_soft + pad, n_soft + width)])
    tokens = embed(ids.to(device))
    prefix = soft.to(device=device, dtype=tokens.dtype).unsqueeze(0).expand(len(rows), -1, -1)
    joined = torch.cat([prefix, tokens], dim=1)
    embeds = joined.gather(1, order.to(device).unsqueeze(-1).expand(-1, -1, joined.shape[-1]))
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    return embeds, mask.to(device), positions.to(device)


def continuation_logprobs(model: Any, soft: "torch.Tensor", pairs: Sequence[tuple[Sequence[int], int]]
                          ) -> list["torch.Tensor"]:
    """Per-token log-probabilities of each pair's continuation (ids[n_ctx:]) after the soft prompt.

    Differentiable in `soft`. Pairs whose model input (ids[:-1]) is the same share one row, e.g.
    the single-token options of one example.
    """
    rows: dict[tuple[int, ...], int] = {}
    for ids, _ in pairs:
        rows.setdefault(tuple(ids[:-1]), len(rows))
    inputs = list(rows)
    # Scored input positions run from n_ctx - 1 (the soft prompt's last slot when n_ctx is 0) to the end.
    keep = max(len(ids) - n_ctx for ids, n_ctx in pairs)
    embeds, mask, positions = _left_padded(model, soft, inputs)
    logits = model(inputs_embeds=embeds, attention_mask=mask, position_ids=positions,
                   logits_to_keep=keep).logits
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    out = []
    for ids, n_ctx in pairs:
        b, n_in = rows[tuple(ids[:-1])], len(ids) - 1
        targets = torch.tensor(ids[n_ctx:], device=logprobs.device)
        # Input position j (token ids[j], or the soft prompt's last slot for j = -1) predicts ids[j + 1];
        # column keep - n_in + j holds it.
        cols = torch.arange(n_ctx - 1, n_in, device=logprobs.device) - n_in + keep
        out.append(logprobs[b, cols, targets])
    return out


# ---- the Backend that scores a soft prompt -------------------------------------------------------

class SoftPromptBackend:
    """A frozen causal LM with a soft prompt before every input; implements the Backend protocol."""

    def __init__(self, model: Any, tokenizer: Any, embeddings: "torch.Tensor", base_fingerprint: str,
                 batch_size: int = 16):
        self.model, self.tokenizer, self.batch_size = model, tokenizer, batch_size
        width = model.get_input_embeddings().weight.shape[1]
        if embeddings.ndim != 2 or embeddings.shape[1] != width:
            raise ConfigError(f"soft prompt of shape {tuple(embeddings.shape)} does not fit this model "
                              f"(embedding width {width}): soft prompts transfer only within one architecture")
        self.embeddings = embeddings
        digest = hashlib.sha256(embeddings.detach().float().cpu().numpy().tobytes()).hexdigest()[:16]
        self._fingerprint = f"{base_fingerprint}:soft={embeddings.shape[0]}x{width}:{digest}"
        caps = {GENERATE, LOGLIKELIHOOD, PROMPT_EMBEDS}
        if tokenizer.chat_template:
            caps.add(CHAT)
        self.capabilities = frozenset(caps)
        eos = [getattr(model.generation_config, "eos_token_id", None), tokenizer.eos_token_id]
        self._eos = {int(t) for e in eos if e is not None for t in (e if isinstance(e, list) else [e])}

    def fingerprint(self) -> str:
        return self._fingerprint

    def loglikelihood(self, reqs: Sequence[LLRequest]) -> list[LLResult]:
        pairs = split_pairs(self.tokenizer, [(r.context, r.continuation) for r in reqs])
        results: list[LLResult] = [LLResult(0.0, is_greedy=True)] * len(reqs)  # empty continuation
        # Sorting by input puts requests that can share a row (the options of one example) side by side.
        todo = sorted((i for i, (ids, n_ctx) in enumerate(pairs) if len(ids) > n_ctx),
                      key=lambda i: (len(pairs[i][0]), pairs[i][0][:-1]))
        with torch.inference_mode():
            for s in range(0, len(todo), self.batch_size * 2):
                chunk = todo[s:s + self.batch_size * 2]
                start = time.perf_counter()
                lps = continuation_logprobs(self.model, self.embeddings, [pairs[i] for i in chunk])
                share = (time.perf_counter() - start) / len(chunk)
                for i, lp in zip(chunk, lps):
                    ids = pairs[i][0]
                    results[i] = LLResult(float(lp.sum()), False, tuple(lp.tolist()),
                                          Usage(calls=1, prompt_tokens=len(ids) + self.embeddings.shape[0],
                                                seconds=share))
        return results

    def generate(self, reqs: Sequence[GenRequest]) -> list[GenResult]:
        out: list[GenResult] = []
        with torch.inference_mode():
            for s in range(0, len(reqs), self.batch_size):
                out.extend(self._generate_chunk(reqs[s:s + self.batch_size]))
        return out

    def _prompt_ids(self, req: GenRequest) -> list[int]:
        if not req.messages:
            return self.tokenizer(req.prompt)["input_ids"]
        text = self.tokenizer.apply_chat_template([{"role": r, "content": c} for r, c in req.messages],
                                                  add_generation_prompt=True, tokenize=False)
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def _generate_chunk(self, reqs: Sequence[GenRequest]) -> list[GenResult]:
        start = time.perf_counter()
        prompts = [self._prompt_ids(r) or [next(iter(self._eos), 0)] for r in reqs]
        embeds, mask, positions = _left_padded(self.model, self.embeddings, prompts)
        cache = DynamicCache(config=self.model.config)
        logits = self.model(inputs_embeds=embeds, attention_mask=mask, position_ids=positions,
                            past_key_values=cache, use_cache=True, logits_to_keep=1).logits[:, -1]
        rngs = [_rng(r) for r in reqs]
        tokens: list[list[int]] = [[] for _ in reqs]
        done: list[tuple[str, str] | None] = [None] * len(reqs)
        next_pos = positions[:, -1:] + 1
        # Finished rows keep decoding in the batch (their output is ignored): simple, and generation
        # with a soft prompt is the rare path (generate tasks only).
        while any(d is None for d in done):
            step = []
            for b, req in enumerate(reqs):
                token = _pick(logits[b], req.temperature, rngs[b])
                step.append(token)
                if done[b] is None:
                    tokens[b].append(token)
                    done[b] = self._finished(req, tokens[b])
            if all(d is not None for d in done):
                break
            mask = torch.cat([mask, mask.new_ones((len(reqs), 1))], dim=1)
            logits = self.model(input_ids=torch.tensor(step, device=mask.device)[:, None], attention_mask=mask,
                                position_ids=next_pos, past_key_values=cache, use_cache=True).logits[:, -1]
            next_pos = next_pos + 1
        share = (time.perf_counter() - start) / len(reqs)
        return [GenResult(text, reason, Usage(1, len(p) + self.embeddings.shape[0], len(t), share))
                for (text, reason), p, t in zip(done, prompts, tokens)]

    def _finished(self, req: GenRequest, tokens: list[int]) -> tuple[str, str] | None:
        hit_eos = tokens[-1] in self._eos
        text = self.tokenizer.decode(tokens[:-1] if hit_eos else tokens, skip_special_tokens=True)
        cuts = [i for i in (text.find(s) for s in req.stop if s) if i >= 0]
        if cuts:
            return text[:min(cuts)], "stop"
        if hit_eos:
            return text, "stop"
        return (text, "length") if len(tokens) >= req.max_tokens else None


def _rng(req: GenRequest) -> "torch.Generator | None":
    """None for greedy decoding; a generator of its own for a sampled request (seeded when it has a seed)."""
    if req.temperature <= 0:
        return None
    rng = torch.Generator()
    if req.seed is None:
        rng.seed()
    else:
        rng.manual_seed(req.seed)
    return rng


def _pick(logits: "torch.Tensor", temperature: float, rng: "torch.Generator | None") -> int:
    if rng is None:
        return int(logits.argmax())
    probs = torch.softmax(logits.float().cpu() / temperature, dim=-1)
    return int(torch.multinomial(probs, 1, generator=rng))


def score_soft_prompt(task: Task, backend: SoftPromptBackend, split: str, limit: int | None = None) -> Evaluation:
    """Score a soft prompt exactly like a discrete prompt: the task's template with an empty prompt."""
    examples = tuple(task.split(split))[:limit]
    if not examples:
        raise ConfigError(f"task {task.name} has no {split} examples")
    return score_jobs(task, backend, [Job(prompt_id(backend.fingerprint()), "", split, examples)])[0]


# ---- training ------------------------------------------------------------------------------------

def _init_kwargs(task: Task, cfg: SoftPromptConfig, tokenizer_dir: str) -> dict[str, Any]:
    if cfg.init == "vocab":
        return {"prompt_tuning_init": "SAMPLE_VOCAB"}
    if cfg.init == "random":
        return {"prompt_tuning_init": "RANDOM"}
    if cfg.init == "labels":
        if not task.options:
            raise ConfigError(f"soft prompt: init='labels' needs a choose task; {task.name} generates text")
        text = " ".join(o.strip() for o in task.options)
    else:
        text = cfg.init_text
    # PEFT reads the tokenizer from a path, so it needs a directory (GGUF-loaded models have none).
    return {"prompt_tuning_init": "TEXT", "prompt_tuning_init_text": text, "tokenizer_name_or_path": tokenizer_dir}


def _loss(task: Task, model: Any, tokenizer: Any, soft: "torch.Tensor",
          batch: Sequence[Any]) -> tuple["torch.Tensor", int]:
    """The task's own loss on a batch, and how many sequences it ran.

    choose: cross-entropy over the options' log-likelihoods; generate: mean token NLL of the reference."""
    if task.output == "choose":
        pairs = split_pairs(tokenizer, [(task.render("", ex), opt) for ex in batch for opt in task.options])
        sums = torch.stack([lp.sum() for lp in continuation_logprobs(model, soft, pairs)])
        scores = sums.view(len(batch), len(task.options))
        labels = torch.tensor([ex.label for ex in batch], device=scores.device)
        return torch.nn.functional.cross_entropy(scores, labels), len(pairs)
    pairs = split_pairs(tokenizer, [(task.render("", ex), " " + reference_text(ex).strip()) for ex in batch])
    lps = continuation_logprobs(model, soft, pairs)
    return -torch.stack([lp.mean() for lp in lps]).mean(), len(pairs)


def _optimizer(cfg: SoftPromptConfig, params: list["torch.nn.Parameter"]) -> "torch.optim.Optimizer":
    if cfg.optimizer == "adafactor":
        # The paper's settings; lr 0.3 is sane only with Adafactor's update clipping.
        return Adafactor(params, lr=cfg.lr, relative_step=False, scale_parameter=False, warmup_init=False,
                         weight_decay=1e-5, decay_rate=-0.8)
    return torch.optim.AdamW(params, lr=cfg.lr)


def train_soft_prompt(task: Task, hf: Any, cfg: SoftPromptConfig,
                      on_progress: Callable[[dict[str, float]], None] | None = None) -> TrainedSoftPrompt:
    """Train a soft prompt on the task's train split for `hf` (an HFBackend: its model and tokenizer).

    With eval_every > 0 the dev split is scored every that many steps (and at the end) and the
    best-scoring checkpoint is kept, as the paper selects checkpoints by dev score.
    """
    train = list(task.split("train"))
    if not train:
        raise ConfigError(f"task {task.name} has no train split to tune a soft prompt on")
    model, tokenizer = hf.model, hf.tokenizer
    with tempfile.TemporaryDirectory() as tok_dir, torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)  # PEFT's vocabulary sampling and random init draw from the global RNG
        if cfg.init in ("text", "labels"):
            tokenizer.save_pretrained(tok_dir)
        peft_cfg = PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=cfg.num_virtual_tokens,
                                      **_init_kwargs(task, cfg, tok_dir))
        peft_model = get_peft_model(model, peft_cfg)
    soft = peft_model.prompt_encoder[ADAPTER].embedding.weight
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    optimizer = _optimizer(cfg, [soft])
    result = TrainedSoftPrompt(soft.detach().cpu().clone(), cfg, hf.fingerprint(), trainable)
    rng, order = random.Random(cfg.seed), []
    best_dev, started = -math.inf, time.perf_counter()

    def evaluate_dev(step: int) -> None:
        nonlocal best_dev
        backend = SoftPromptBackend(model, tokenizer, soft.detach().clone(), result.base_fingerprint)
        ev = score_soft_prompt(task, backend, "dev")
        result.model_calls += ev.usage.calls
        point = {"step": step, "seconds": round(time.perf_counter() - started, 3),
                 "model_calls": result.model_calls, "dev": ev.score}
        result.history.append(point)
        if on_progress:
            on_progress(point)
        if ev.score > best_dev:
            best_dev, result.best_step = ev.score, step
            result.embeddings = soft.detach().cpu().clone()

    model.train(False)  # frozen model: no dropout, only the prompt learns
    if cfg.eval_every:
        evaluate_dev(0)
    for step in range(1, cfg.steps + 1):
        if len(order) < cfg.batch_size:
            order += rng.sample(train, len(train))  # epochs of shuffled examples
        batch, order = order[:cfg.batch_size], order[cfg.batch_size:]
        loss, rows = _loss(task, model, tokenizer, soft, batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        result.model_calls += rows
        if cfg.eval_every and (step % cfg.eval_every == 0 or step == cfg.steps):
            evaluate_dev(step)
    if not cfg.eval_every:
        result.embeddings, result.best_step = soft.detach().cpu().clone(), cfg.steps
    result.train_seconds = time.perf_counter() - started
    return result


# ---- the artifact --------------------------------------------------------------------------------

def save_soft_prompt(trained: TrainedSoftPrompt, hf: Any, out_dir: Path) -> Path:
    """Write PEFT's adapter files (the prompt embeddings) plus soft_prompt.json with how it was made."""
    peft_cfg = PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=trained.config.num_virtual_tokens)
    with torch.random.fork_rng(devices=[]):  # the throwaway random init must not move the caller's RNG
        peft_model = get_peft_model(hf.model, peft_cfg)
    with torch.no_grad():
        peft_model.prompt_encoder[ADAPTER].embedding.weight.copy_(trained.embeddings)
    peft_model.save_pretrained(str(out_dir))
    meta = {"base_fingerprint": trained.base_fingerprint, "model": getattr(hf, "model_name", None),
            "config": asdict(trained.config), "trainable_parameters": trained.trainable_parameters,
            "train_seconds": round(trained.train_seconds, 3), "model_calls": trained.model_calls,
            "best_step": trained.best_step, "history": trained.history}
    (Path(out_dir) / META_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return Path(out_dir)


def load_soft_prompt(path: Path, hf: Any) -> SoftPromptBackend:
    """A saved soft prompt on `hf`'s model, ready to score; refuses a different base model."""
    path = Path(path)
    try:
        meta = json.loads((path / META_FILE).read_text(encoding="utf-8"))
        weights = load_peft_weights(str(path), device="cpu")["prompt_embeddings"]
    except (OSError, KeyError, json.JSONDecodeError) as e:
        raise PromptOptError(f"{path} is not a saved soft prompt ({e})") from None
    if meta.get("base_fingerprint") != hf.fingerprint():
        raise ConfigError(f"{path} was trained on {meta.get('base_fingerprint')}, not {hf.fingerprint()}: "
                          f"a soft prompt works only on the model it was trained for")
    return SoftPromptBackend(hf.model, hf.tokenizer, weights.float(), hf.fingerprint())


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


def project_to_text(trained_embeddings: "torch.Tensor", hf: Any, metric: str = "cosine") -> str:
    """The soft prompt made readable: its nearest tokens, decoded to a discrete prompt."""
    ids = nearest_tokens(trained_embeddings, hf.model.get_input_embeddings().weight, metric)
    return hf.tokenizer.decode(ids, skip_special_tokens=True)
