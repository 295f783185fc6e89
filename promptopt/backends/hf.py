"""The transformers backend: batched generation and prefix-sharing log-likelihood scoring, CPU or CUDA.

Scoring is the hot path of prompt optimization. A candidate prompt comes first in the template,
so the requests of one call share long token prefixes. `loglikelihood` therefore
  1. merges requests whose model input is identical or a prefix of another's (one forward row
     serves several continuations, e.g. all single-token labels of one example),
  2. groups rows by shared token prefix, runs each prefix once and expands its KV cache over a
     batch of left-padded suffixes (explicit position ids); groups run in token order and each one's
     prefix extends the KV of the group before it, so nested prefixes (an instruction, the demos every
     input shares, a demo a few inputs retrieved) run once each, and
  3. applies the LM head only to the last K positions of each row, where the scored tokens are.
On CPU, for Llama-architecture models, step 2 packs the suffixes instead: one sequence without
padding after the prefix's KV (not expanded), per-suffix position ids, block-diagonal attention
(each suffix sees the prefix and its own earlier tokens, as varlen attention does), and the LM head
only at the scored positions (see `_score_packed`). There a few suffixes that start alike (inputs that
retrieved the same demo) need no group of their own: their shared tokens run once in the pack, as a
segment that each of them attends to (`_Shared`).
"""
from __future__ import annotations

import copy
import hashlib
import itertools
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence, cast

from pydantic import ConfigDict, Field, PositiveInt

from promptopt.backends.base import (CHAT, GENERATE, LOGLIKELIHOOD, BackendOptions, GenRequest, GenResult, LLRequest,
                                     LLResult)
from promptopt.errors import ConfigError, ModelNotFoundError
from promptopt.backends.models import EMBEDDED, embedded_gguf, embedded_hf_dir, file_sha256, quiet_transformers, resolve_model
from promptopt.registry import register_backend
from promptopt.types import Usage
from promptopt.backends._local import common_prefix, generation_prompt, split_pairs, start_token

log = logging.getLogger(__name__)

try:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, DynamicCache
except ImportError as e:  # the registry turns this into "backend 'hf' needs a missing package"
    raise ImportError(f"the hf backend needs torch and transformers: pip install 'promptopt[hf]' ({e})",
                      name=e.name) from e
try:  # custom attention functions (transformers >= 4.54); older versions keep the padded batches
    from transformers import AttentionInterface, AttentionMaskInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    from transformers.masking_utils import sdpa_mask
except ImportError:
    AttentionInterface = None

_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
           "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}
# A shared prefix gets its own forward pass only if reusing it saves at least this many tokens (the
# planner counts a forward as this many): on 2 CPU threads a forward of the embedded model costs about
# 35 ms before its first token, some 25 tokens' worth; otherwise its rows join a group with a shorter prefix.
MIN_SHARED_TOKENS_SAVED = 32
# Upper bound on (rows x scored positions) per forward: bounds the vocab-sized logits tensor.
MAX_LOGIT_ROWS = 4096
# Upper bound on rows x (prefix + suffix) tokens per forward: bounds activations and expanded KV.
MAX_BATCH_TOKENS = 32768
# Rows per forward when batch_size is not given. On 2 CPU cores matmuls saturate early and
# bigger batches mostly add padding (SST-2 scoring: 16 rows ran as fast as 32 or 64, and padded
# 6% instead of 14% or 29%).
DEFAULT_BATCH = {"cpu": 16, "cuda": 64}
# Tokens per packed forward: the GEMMs ran ~6% faster per token from 384 rows up than at 256 (one
# CPU thread); attention per token grows with the prefix and its own suffix only, not the pack.
# batch_size bounds the padded batches, not packs (a pack's memory is bounded by its tokens).
PACKED_TOKENS = 512
# Bounds the packed attention's score tensors (heads x this many floats): pack tokens x prefix length.
MAX_PACKED_SCORES = 1 << 22
# Packing needs per-token position ids and our attention function in place of SDPA: tested on Llama
# (SmolLM2); sliding-window or bias-adding architectures would need their own check.
PACKED_MODEL_TYPES = frozenset({"llama"})
PACKED_ATTENTION = "promptopt_packed"  # the attention implementation's registered name
SOFT_PROMPT_META = "soft_prompt.json"  # written beside PEFT's adapter files by promptopt.soft_prompt


@dataclass
class _Scored:
    """One log-likelihood request, tokenized: the targets tokens[start + 1:] are predicted from
    the outputs at input positions start, start + 1, ..."""

    index: int
    tokens: tuple[int, ...]
    start: int  # input position whose output predicts the first continuation token


@dataclass
class _Row:
    """One forward row: the model input (tokens[:-1] of its longest request) and what it scores."""

    inputs: tuple[int, ...]
    requests: list[_Scored] = field(default_factory=list)

    @property
    def first_scored(self) -> int:
        return min(r.start for r in self.requests)


@dataclass
class _Shared:
    """Rows whose inputs share `ext` more tokens past their group's prefix. In a pack those tokens run
    once, as a segment of their own, and each row attends to them as to its own earlier tokens."""

    ext: int
    rows: list[_Row]

    def tokens(self, prefix_len: int) -> int:
        return self.ext + sum(len(r.inputs) - prefix_len - self.ext for r in self.rows)


def _unit_tokens(unit: "_Row | _Shared", prefix_len: int) -> int:
    """Positions a pack runs for `unit` after the prefix."""
    return unit.tokens(prefix_len) if isinstance(unit, _Shared) else len(unit.inputs) - prefix_len


def _unit_rows(unit: "_Row | _Shared") -> list[_Row]:
    return unit.rows if isinstance(unit, _Shared) else [unit]


@dataclass
class _Packing:
    """How the packed tokens of one forward lie in attention's padded layout (`rows` lanes x `width`,
    right-padded), which is used inside attention only: each lane holds the keys one suffix attends to
    besides the prefix, causally."""

    prefix: "list[tuple[torch.Tensor, torch.Tensor]] | None"  # per layer (kv heads, prefix, head dim)
    gather: "torch.Tensor"  # rows * width: the packed position in each padded slot (0 for padding)
    slots: "torch.Tensor"  # per packed position: its padded slot
    future: "torch.Tensor"  # width x width: True where the key comes after the query
    rows: int
    width: int


def _attend(scores: "torch.Tensor", values: "torch.Tensor"
            ) -> tuple["torch.Tensor", "torch.Tensor", "torch.Tensor"]:
    """Softmax attention left unnormalized, so that parts over disjoint keys can be merged: the
    weighted values, each row's top score, and its sum of weights (relative to that top score)."""
    top = scores.amax(-1, keepdim=True)
    weights = scores.sub_(top).exp_()
    return torch.matmul(weights, values), top, weights.sum(-1, keepdim=True)


def _packed_attention(module: Any, query: "torch.Tensor", key: "torch.Tensor", value: "torch.Tensor",
                      attention_mask: Any, packing: _Packing | None = None, scaling: float | None = None,
                      **kwargs: Any) -> tuple["torch.Tensor", None]:
    """SDPA, except in a packed forward: then attention over the shared prefix (every query, every
    prefix key) and over each suffix's own earlier tokens (causal, in the padded layout) run apart
    and are merged by their softmax normalizers, as cascade attention does. Nothing is computed
    between different suffixes, and the prefix's KV is never copied per suffix."""
    if packing is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, **kwargs)
    _, heads, total, dim = query.shape
    kv_heads = key.shape[1]
    rows, width = packing.rows, packing.width
    q = query[0].view(kv_heads, heads // kv_heads, total, dim)  # query heads grouped by their KV head
    q = q * (scaling if scaling is not None else dim ** -0.5)
    padded = (kv_heads, 1, rows, width, dim)
    scores = torch.matmul(q[:, :, packing.gather].view(kv_heads, -1, rows, width, dim),
                          key[0][:, packing.gather].view(padded).transpose(-1, -2))
    out, top, norm = (part.flatten(2, 3)[:, :, packing.slots] for part in _attend(
        scores.masked_fill_(packing.future, float("-inf")), value[0][:, packing.gather].view(padded)))
    if packing.prefix is not None:
        prefix_keys, prefix_values = packing.prefix[module.layer_idx]
        prefix_out, prefix_top, prefix_norm = _attend(torch.matmul(q, prefix_keys[:, None].transpose(-1, -2)),
                                                      prefix_values[:, None])
        both = torch.maximum(top, prefix_top)
        own, shared = (top - both).exp_(), (prefix_top - both).exp_()
        out, norm = out * own + prefix_out * shared, norm * own + prefix_norm * shared
    return (out / norm).reshape(heads, total, dim).transpose(0, 1)[None], None


if AttentionInterface is not None:
    AttentionInterface.register(PACKED_ATTENTION, _packed_attention)
    AttentionMaskInterface.register(PACKED_ATTENTION, sdpa_mask)  # unpacked forwards get SDPA's masks


def _resolve_dtype(dtype: Any, device: str) -> "torch.dtype":
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        # bf16 matmuls on CPUs without native support are many times slower than fp32.
        if device.startswith("cuda"):
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    if dtype not in _DTYPES:
        raise ConfigError(f"hf backend: unknown dtype {dtype!r}; use auto, {', '.join(_DTYPES)}")
    return _DTYPES[dtype]


def _resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"hf backend: device {device!r} requested but CUDA is not available; use cpu")
    return device


def _dir_digest(path: Path) -> str:
    """Cheap identity of a model directory: names, sizes and the head/tail bytes of each file."""
    digest = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        size = f.stat().st_size
        digest.update(f"{f.relative_to(path)}:{size}".encode())
        with open(f, "rb") as fh:
            digest.update(fh.read(1 << 20))
            if size > 2 << 20:
                fh.seek(-(1 << 20), 2)
                digest.update(fh.read())
    return digest.hexdigest()[:16]


def _hub_commit(repo_id: str, revision: str | None) -> str:
    """The commit a hub model was loaded from, read from the local hub cache's snapshot path."""
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(repo_id, "config.json", revision=revision)
    return Path(cached).parent.name if isinstance(cached, str) else revision or "unknown"


def load_causal_lm(name: str, dtype: "torch.dtype", device: str = "cpu",
                   **model_kwargs: Any) -> tuple[Any, Any, str]:
    """A causal LM in eval mode on `device`, its tokenizer and the path it came from.

    `name` is "embedded", a hub id, a directory or a .gguf; other keys go to from_pretrained."""
    start = time.perf_counter()
    if name == EMBEDDED:
        # The converted safetensors dir loads in ~1 s; de-quantizing the GGUF takes ~25 s.
        path, gguf_file = str(embedded_hf_dir()), None
    else:
        source = resolve_model(name)
        path, gguf_file = source.path, source.gguf_file
    extra = {"gguf_file": gguf_file} if gguf_file else {}
    try:
        with quiet_transformers():
            tokenizer = AutoTokenizer.from_pretrained(path, **extra)
            model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, **extra, **model_kwargs)
    except (OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelNotFoundError(f"cannot load model {name!r} ({first}); give a local directory, a .gguf "
                                 f"file, or a hub id that is reachable or cached") from e
    model.to(device).eval()
    log.info("loaded %s on %s (%s) in %.1f s", name, device, dtype, time.perf_counter() - start)
    return model, tokenizer, path


class HFOptions(BackendOptions):
    model_config = ConfigDict(extra="allow", strict=True)  # other keys go to from_pretrained (e.g. revision)
    inherited = frozenset({"device", "dtype"})

    device: str = Field("auto", pattern=r"^(auto|cpu|mps|cuda(:\d+)?)$")
    dtype: str = "auto"
    batch_size: PositiveInt | None = None
    max_length: PositiveInt | None = None
    soft_prompt: str | None = None  # a saved PEFT prompt-learning adapter (promptopt.soft_prompt) before every input


@register_backend("hf")
class HFBackend:
    Options = HFOptions
    """A causal LM loaded with transformers. `model` is "embedded", a hub id, a directory or a .gguf.

    Sampling guarantee: a request with a seed draws from its own RNG, so the same request and
    seed give the same text in a batch of the same shape; across different batch compositions
    the text is the same unless padding-dependent float rounding moves a sampled token across
    a probability boundary (rare; greedy decoding has the same caveat at exact ties).
    """

    def __init__(self, model: str = EMBEDDED, device: str = "auto", dtype: Any = "auto",
                 batch_size: int | None = None, max_length: int | None = None, soft_prompt: str | None = None,
                 **model_kwargs: Any):
        if batch_size is not None and batch_size < 1:
            raise ConfigError(f"hf backend: batch_size must be >= 1, got {batch_size}")
        self.model_name = model
        self.device = _resolve_device(device)
        self.dtype = _resolve_dtype(dtype, self.device)
        self.batch_size = batch_size or DEFAULT_BATCH["cuda" if self.device.startswith("cuda") else "cpu"]
        self._revision = model_kwargs.get("revision")
        try:
            self.model, self.tokenizer, self._source = load_causal_lm(model, self.dtype, self.device, **model_kwargs)
        except ModelNotFoundError as e:
            raise ModelNotFoundError(f"hf backend: {e}") from e
        self.max_length = max_length or self._model_window()
        self._eos_ids = self._eos_token_ids()
        self._pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None \
            else next(iter(self._eos_ids), 0)
        caps = {GENERATE, LOGLIKELIHOOD}
        if self.tokenizer.chat_template:
            caps.add(CHAT)
        self.capabilities = frozenset(caps)
        self._fingerprint: str | None = None
        self.soft_prompt = soft_prompt
        # The soft prompt as the KV of its virtual tokens: every forward continues from it, like from a
        # shared token prefix, so scoring and generation keep their batched prefix-sharing paths.
        self._soft_kv: list[tuple["torch.Tensor", "torch.Tensor"]] | None = None
        self._soft_id = ""
        self.soft_embeddings: "torch.Tensor | None" = None  # input-embedding methods only (not prefix tuning)
        if soft_prompt is not None:
            self._set_soft_prompt(Path(soft_prompt))
        # Generation runs a chunk's shared prompt prefix once and expands its KV over the chunk; False
        # forces the plain left-padded path (same greedy outputs; kept as the fallback and for benches).
        self.share_generation_prefix = True
        # Scoring packs suffixes without padding where that is faster (see _packing_applies); False forces
        # the left-padded batches (same log-likelihoods within float rounding; kept for benches).
        self.pack_scoring = self._packing_applies()

    # ---- loading -------------------------------------------------------------------------------

    def count_tokens(self, text: str) -> int:
        """Tokens of `text` plus the start token the scorer adds and the soft prompt's virtual tokens
        (for up-front window checks)."""
        return len(self.tokenizer(text)["input_ids"]) + 1 + self.soft_tokens

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        """The last hidden state mean-pooled over each text's tokens (promptopt.task.retrieval's "hidden"
        embedding: the target model itself, no extra model). Batches of `batch_size`, right-padded."""
        out: list[list[float]] = []
        with torch.inference_mode():
            for lo in range(0, len(texts), self.batch_size):
                ids = [self.tokenizer(t)["input_ids"][: self.max_length] or [self._pad_id]
                       for t in texts[lo:lo + self.batch_size]]
                width = max(len(i) for i in ids)
                batch = torch.tensor([i + [self._pad_id] * (width - len(i)) for i in ids], device=self.device)
                mask = torch.tensor([[1] * len(i) + [0] * (width - len(i)) for i in ids], device=self.device)
                hidden = self.model(input_ids=batch, attention_mask=mask, output_hidden_states=True).hidden_states[-1]
                m = mask.unsqueeze(-1).to(hidden.dtype)
                out.extend(((hidden * m).sum(1) / m.sum(1)).float().cpu().tolist())
        return out

    def _model_window(self) -> int:
        config = self.model.config.get_text_config()
        window = getattr(config, "max_position_embeddings", None)
        if window:
            return int(window)
        tok_max = getattr(self.tokenizer, "model_max_length", None)
        return int(tok_max) if tok_max and tok_max < 1_000_000 else 2048

    def _packing_applies(self) -> bool:
        """Pack scoring suffixes only on CPU, where GEMMs run at full rate from a few hundred rows so
        padding costs its full share, and only for tested architectures running SDPA: the model then
        runs _packed_attention, which is SDPA itself for every forward that is not packed. Elsewhere
        the padded batches stay: on GPUs big batches are cheap and fused kernels beat our attention."""
        config = self.model.config
        if (AttentionInterface is None or self.device != "cpu" or config.model_type not in PACKED_MODEL_TYPES
                or config._attn_implementation not in ("sdpa", PACKED_ATTENTION)):
            return False
        if config._attn_implementation == "sdpa":
            self.model.set_attn_implementation(PACKED_ATTENTION)
        return True

    def _eos_token_ids(self) -> set[int]:
        ids: set[int] = set()
        for source in (getattr(self.model, "generation_config", None), self.tokenizer):
            eos = getattr(source, "eos_token_id", None)
            if isinstance(eos, int):
                ids.add(eos)
            elif eos:
                ids.update(int(t) for t in eos)
        return ids

    def with_soft_prompt(self, path: str | Path) -> "HFBackend":
        """This backend's model (shared, not reloaded) with the soft prompt saved at `path`."""
        other = copy.copy(self)
        other._set_soft_prompt(Path(path))
        return other

    def _set_soft_prompt(self, path: Path) -> None:
        """Load a saved PEFT prompt-learning adapter: PEFT builds its prompt (prompt tuning, P-tuning
        and CPT: input embeddings; prefix tuning: a KV cache), kept here as the KV of its virtual
        tokens. Refuses an adapter trained for another base model (its soft_prompt.json)."""
        try:
            from peft import PeftModel
        except ImportError as e:
            raise ConfigError(f"hf backend: soft_prompt needs peft: pip install 'promptopt[soft]' ({e})") from None
        try:
            meta = json.loads((path / SOFT_PROMPT_META).read_text(encoding="utf-8"))
            weights = (path / "adapter_model.safetensors").read_bytes()
        except (OSError, json.JSONDecodeError) as e:
            raise ConfigError(f"hf backend: {path} is not a saved soft prompt ({e})") from None
        if meta.get("base_fingerprint") != self.base_fingerprint():
            raise ConfigError(f"hf backend: soft prompt {path} was trained on {meta.get('base_fingerprint')}, not "
                              f"{self.base_fingerprint()}: a soft prompt works only on the model it was trained for")
        with torch.inference_mode(), quiet_transformers():
            try:
                peft_model = PeftModel.from_pretrained(self.model, str(path))
            except (OSError, ValueError, RuntimeError) as e:
                raise ConfigError(f"hf backend: cannot load soft prompt {path} ({str(e).splitlines()[0]})") from None
            prompt = peft_model.get_prompt(batch_size=1)
            embeddings = None
            if torch.is_tensor(prompt):
                embeddings = prompt[0].detach().float().cpu()
                n = prompt.shape[1]
                prompt = self.model(inputs_embeds=prompt.to(self.device, self.dtype),
                                    position_ids=torch.arange(n, device=self.device)[None],
                                    use_cache=True, logits_to_keep=1).past_key_values
            kv = [(layer.keys.to(self.device, self.dtype), layer.values.to(self.device, self.dtype))
                  for layer in prompt.layers]
        self._soft_kv, self._soft_id = kv, hashlib.sha256(weights).hexdigest()[:16]
        self.soft_embeddings, self.soft_prompt = embeddings, str(path)

    @property
    def soft_tokens(self) -> int:
        """Virtual tokens before every input (0 without a soft prompt)."""
        return self._soft_kv[0][0].shape[2] if self._soft_kv else 0

    def fingerprint(self) -> str:
        base = self.base_fingerprint()
        return f"{base}:soft={self.soft_tokens}:{self._soft_id}" if self._soft_kv else base

    def base_fingerprint(self) -> str:
        """The model's identity without its soft prompt."""
        if self._fingerprint is None:
            if self.model_name == EMBEDDED:
                ident = f"embedded:{embedded_gguf().name}:sha256={file_sha256(embedded_gguf())[:16]}"
            elif Path(self._source).is_dir():
                ident = f"{Path(self._source).resolve()}:digest={_dir_digest(Path(self._source))}"
            else:
                ident = f"{self._source}@{_hub_commit(self._source, self._revision)}"
            template = hashlib.sha256((self.tokenizer.chat_template or "").encode()).hexdigest()[:12]
            self._fingerprint = f"hf:{ident}:{str(self.dtype).removeprefix('torch.')}:chat={template}"
        return self._fingerprint

    # ---- tokenization --------------------------------------------------------------------------

    @property
    def pad_id(self) -> int:
        return self._pad_id

    def token_pairs(self, reqs: Sequence[LLRequest]) -> list[tuple[tuple[int, ...], int]]:
        """Token ids of each context+continuation and how many are context (see _local.split_pairs)."""
        return split_pairs(self.tokenizer, [(r.context, r.continuation) for r in reqs],
                           start_token(self.tokenizer, self._eos_ids))

    # ---- log-likelihood ------------------------------------------------------------------------

    def loglikelihood(self, reqs: Sequence[LLRequest]) -> list[LLResult]:
        start = time.perf_counter()
        results: list[LLResult | None] = [None] * len(reqs)
        scored: list[_Scored] = []
        for i, (tokens, n_ctx) in enumerate(self.token_pairs(reqs)):
            if len(tokens) + self.soft_tokens > self.max_length:
                results[i] = LLResult(-math.inf, error=(
                    f"hf backend: request is {len(tokens) + self.soft_tokens} tokens but {self.model_name} reads at most "
                    f"{self.max_length}; shorten the prompt or the input"))
            elif n_ctx == len(tokens):  # empty continuation: probability 1
                results[i] = LLResult(0.0, is_greedy=True)
            else:
                scored.append(_Scored(i, tokens, n_ctx - 1))
        logprobs = self._score(scored)
        per_request = (time.perf_counter() - start) / max(len(reqs), 1)
        for item in scored:
            token_lps, greedy = logprobs[item.index]
            results[item.index] = LLResult(
                float(sum(token_lps)), greedy, tuple(token_lps),
                Usage(calls=1, prompt_tokens=len(item.tokens), seconds=per_request))
        return cast("list[LLResult]", results)  # every slot was filled above

    def _score(self, scored: list[_Scored]) -> dict[int, tuple[list[float], bool]]:
        out: dict[int, tuple[list[float], bool]] = {}
        last: tuple[tuple[int, ...], list[tuple["torch.Tensor", "torch.Tensor"]]] | None = None
        with torch.inference_mode():
            for prefix_len, units in self._plan(self._rows(scored), segments=self.pack_scoring):
                prefix = _unit_rows(units[0])[0].inputs[:prefix_len]
                prefix_kv = self._prefix_cache(prefix, last) if prefix_len or self._soft_kv else None
                if prefix_len and prefix_kv is not None:
                    last = (prefix, prefix_kv)
                # Longest first, so the biggest batch runs (and fails, if memory is short) first.
                units.sort(key=lambda u: _unit_tokens(u, prefix_len), reverse=True)
                if self.pack_scoring:
                    for chunk in self._packs(units, prefix_len, prefix_kv[0][0].shape[2] if prefix_kv else 0):
                        out.update(self._score_packed(chunk, prefix_len, prefix_kv))
                else:  # without segments every unit is a row
                    for batch in self._chunks(cast("list[_Row]", units)):
                        out.update(self._score_chunk(batch, prefix_len, prefix_kv))
        return out

    @staticmethod
    def _rows(scored: list[_Scored]) -> list[_Row]:
        """Distinct model inputs in lexicographic order; an input that is a prefix of the next one
        is served by that longer row (causal attention gives the same outputs there)."""
        by_input: dict[tuple[int, ...], _Row] = {}
        for item in scored:
            key = item.tokens[:-1]
            by_input.setdefault(key, _Row(key)).requests.append(item)
        rows = [by_input[k] for k in sorted(by_input)]
        kept: list[_Row] = []
        for row in reversed(rows):
            host = kept[-1] if kept else None
            if host is not None and host.inputs[:len(row.inputs)] == row.inputs:
                host.requests.extend(row.requests)
            else:
                kept.append(row)
        kept.reverse()
        return kept

    @staticmethod
    def _plan(rows: list[_Row], segments: bool = False) -> list[tuple[int, list[_Row | _Shared]]]:
        """Split sorted rows into (shared prefix length, units) groups, in row order; a group with
        prefix 0 (rows that share nothing worth a forward) comes last. A unit is a row, or with
        `segments` (packed scoring) a _Shared: rows that share more tokens, run once in their pack.

        Sorted rows with a common prefix are contiguous, and the prefixes nest like a tree: the
        shortest prefix shared by neighbours splits a range into sub-ranges that share more. A
        group's prefix KV extends the previous group's (`_score` keeps it), so in row order each
        tree level's tokens run once: a sub-range under a group's prefix pays only its own extra
        prefix tokens. Bottom-up, each sub-range of a group either runs as its own groups (one more
        forward each, counted as MIN_SHARED_TOKENS_SAVED tokens), or as a segment in the group's
        packs (if it fits one), or leaves its rows to the group, which re-reads them from its shorter
        prefix; whichever runs fewer tokens. A prefix never reaches a scored position.
        """
        if not rows:
            return []
        adjacent = [min(common_prefix(a.inputs, b.inputs), a.first_scored, b.first_scored)
                    for a, b in zip(rows, rows[1:])]
        upto = [0, *itertools.accumulate(len(r.inputs) for r in rows)]  # input tokens of rows[:i]
        # Groups as (prefix, [(lo, hi, ext)]): rows[lo:hi] loose (ext 0) or one segment of ext tokens.
        Groups = list[tuple[int, list[tuple[int, int, int]]]]
        # Per range below its parent's prefix: (its common prefix, tokens it runs as its own groups,
        # those groups in the order they run).
        done: dict[tuple[int, int], tuple[int, float, Groups]] = {}
        stack: list[tuple[int, int, int, list[tuple[int, int]] | None]] = [(0, len(rows), 0, None)]
        while stack:  # post-order walk without recursion: prefix trees can be deep
            lo, hi, above, parts = stack.pop()
            if hi - lo == 1:  # one row is never worth a forward of its own: it joins a group above
                done[(lo, hi)] = (0, math.inf, [])
                continue
            shared = min(adjacent[lo:hi - 1])
            if parts is None:
                cuts = [j + 1 for j in range(lo, hi - 1) if adjacent[j] == shared]
                parts = list(zip([lo, *cuts], [*cuts, hi]))
                stack.append((lo, hi, above, parts))
                stack.extend((a, b, shared, None) for a, b in parts)
                continue
            # Either every sub-range runs its own groups, or this range runs a group over its prefix
            # (one more forward) that holds the others: as segments, or as loose rows read in full.
            split = mixed = 0.0
            members: list[tuple[int, int, int]] = []
            subs: Groups = []  # every sub-range's own groups, if all run on their own
            own_groups: Groups = []  # those of the sub-ranges that run on their own beside this group
            for (a, b) in parts:
                common, own, sub = done.pop((a, b))
                split += own
                subs += sub
                reread = upto[b] - upto[a] - (b - a) * shared
                segment = common - shared + upto[b] - upto[a] - (b - a) * common
                if b - a == 1 or not segments or segment > PACKED_TOKENS:
                    segment = math.inf
                best = min(own, reread, segment)
                mixed += best
                if best == own:
                    own_groups += sub
                else:
                    members.append((a, b, common - shared if best == segment else 0))
            mixed += MIN_SHARED_TOKENS_SAVED
            done[(lo, hi)] = ((shared, shared - above + split, subs) if split <= mixed else
                              (shared, shared - above + mixed, [(shared, members), *own_groups]))
        _, own, groups = done.pop((0, len(rows)))
        if own >= upto[-1]:  # nothing saves enough: one unshared group
            return [(0, list(rows))]
        plan = [(prefix, [unit for a, b, ext in ranges
                          for unit in ([_Shared(ext, rows[a:b])] if ext else rows[a:b])])
                for prefix, ranges in groups]
        return [g for g in plan if g[0]] + [g for g in plan if not g[0]]  # a prefix-0 group shares nothing: last

    def _chunks(self, rows: list[_Row]) -> list[list[_Row]]:
        """Consecutive rows (longest first) in batches bounded by rows, tokens and logit rows."""
        chunks: list[list[_Row]] = []
        current: list[_Row] = []
        keep = 0
        for row in rows:
            row_keep = len(row.inputs) - row.first_scored
            if current and (len(current) >= self.batch_size
                            or (len(current) + 1) * len(current[0].inputs) > MAX_BATCH_TOKENS
                            or (len(current) + 1) * max(keep, row_keep) > MAX_LOGIT_ROWS):
                chunks.append(current)
                current, keep = [], 0
            current.append(row)
            keep = max(keep, row_keep)
        if current:
            chunks.append(current)
        return chunks

    @staticmethod
    def _packs(units: "Sequence[_Row | _Shared]", prefix_len: int, past: int) -> "list[list[_Row | _Shared]]":
        """Consecutive units whose tokens add up to at most PACKED_TOKENS (a longer unit goes alone),
        bounded by logit rows like _chunks and by the attention scores over the `past` cached positions."""
        packs: list[list[_Row | _Shared]] = []
        current: list[_Row | _Shared] = []
        tokens = logit_rows = longest = 0
        for unit in units:
            rows = _unit_rows(unit)
            length = _unit_tokens(unit, prefix_len)
            keep = sum(len(r.inputs) - r.first_scored for r in rows)
            widest = max(len(r.inputs) for r in rows) - prefix_len  # a row's keys: its segment, then its own
            if current and (tokens + length > PACKED_TOKENS or logit_rows + keep > MAX_LOGIT_ROWS
                            or (tokens + length) * (past + max(longest, widest)) > MAX_PACKED_SCORES):
                packs.append(current)
                current, tokens, logit_rows, longest = [], 0, 0, 0
            current.append(unit)
            tokens, logit_rows, longest = tokens + length, logit_rows + keep, max(longest, widest)
        if current:
            packs.append(current)
        return packs

    def _prefix_cache(self, prefix: tuple[int, ...],
                      reuse: "tuple[tuple[int, ...], list[tuple[torch.Tensor, torch.Tensor]]] | None" = None
                      ) -> list[tuple["torch.Tensor", "torch.Tensor"]]:
        """The KV of the soft prompt (if any) followed by `prefix`. `reuse` is an earlier prefix and its KV:
        the tokens both start with are not run again (a causal model's KV there depends on them alone)."""
        if not prefix:
            return cast("list[tuple[torch.Tensor, torch.Tensor]]", self._soft_kv)
        done = common_prefix(reuse[0], prefix) if reuse is not None else 0
        if done:
            past = self.soft_tokens + done
            kept = [(k[:, :, :past], v[:, :, :past]) for k, v in reuse[1]]  # type: ignore[index]
            if done == len(prefix):
                return kept
            cache: Any = DynamicCache(kept, config=self.model.config)
        else:
            past, cache = self.soft_tokens, DynamicCache(self._soft_kv, config=self.model.config) if self._soft_kv else None
        ids, mask, positions = self._padded([prefix[done:]], past)
        cache = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, past_key_values=cache,
                           use_cache=True, logits_to_keep=1).past_key_values
        return [(layer.keys, layer.values) for layer in cache.layers]

    def _padded(self, suffixes: Sequence[Sequence[int]], past: int
                ) -> tuple["torch.Tensor", "torch.Tensor", "torch.Tensor"]:
        """Left-padded ids of `suffixes` after `past` cached positions, the attention mask over cache and
        suffixes, and explicit position ids (a padded row's first token sits at position `past`)."""
        width = max(len(s) for s in suffixes)
        ids = torch.full((len(suffixes), width), self._pad_id, dtype=torch.long)
        mask = torch.zeros((len(suffixes), past + width), dtype=torch.long)
        mask[:, :past] = 1
        for b, suffix in enumerate(suffixes):
            ids[b, width - len(suffix):] = torch.tensor(suffix)
            mask[b, past + width - len(suffix):] = 1
        positions = (past + mask[:, past:].cumsum(-1) - 1).clamp(min=past)
        return ids.to(self.device), mask.to(self.device), positions.to(self.device)

    @staticmethod
    def _expanded(kv: list[tuple["torch.Tensor", "torch.Tensor"]], batch: int, config: Any) -> Any:
        return DynamicCache([(k.expand(batch, -1, -1, -1), v.expand(batch, -1, -1, -1)) for k, v in kv],
                            config=config)

    def _score_chunk(self, rows: list[_Row], prefix_len: int,
                     prefix_kv: list[tuple["torch.Tensor", "torch.Tensor"]] | None
                     ) -> dict[int, tuple[list[float], bool]]:
        # Left padding puts every row's last input at the same column, so the LM head can run
        # on the last `keep` columns only (logits_to_keep) for all rows at once.
        keep = max(len(r.inputs) - r.first_scored for r in rows)
        past = prefix_kv[0][0].shape[2] if prefix_kv is not None else 0  # soft prompt + shared tokens
        ids, mask, positions = self._padded([r.inputs[prefix_len:] for r in rows], past)
        cache = self._expanded(prefix_kv, len(rows), self.model.config) if prefix_kv is not None else None
        logits = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, past_key_values=cache,
                            use_cache=cache is not None, logits_to_keep=keep).logits
        # Gather the scored (row, column) pairs and their targets in one go: one transfer back.
        batch_rows, columns, targets, owners = [], [], [], []
        for b, row in enumerate(rows):
            first_col = len(row.inputs) - keep  # input position of logits column 0
            for req in row.requests:
                wanted = req.tokens[req.start + 1:]
                batch_rows += [b] * len(wanted)
                columns += range(req.start - first_col, req.start - first_col + len(wanted))
                targets += wanted
                owners.append((req.index, len(wanted)))
        picked = logits[torch.tensor(batch_rows, device=self.device), torch.tensor(columns, device=self.device)]
        return self._collect(picked, targets, owners)

    def _score_packed(self, units: "list[_Row | _Shared]", prefix_len: int,
                      prefix_kv: list[tuple["torch.Tensor", "torch.Tensor"]] | None
                      ) -> dict[int, tuple[list[float], bool]]:
        """Score units as one packed sequence: their tokens back to back (a segment's shared tokens once,
        then each of its rows' own), no padding, positions counted from the prefix, attention by
        _packed_attention over the prefix's KV (batch 1, not expanded). In attention's padded layout each
        row is a lane of its segment's tokens and then its own, and a segment a lane of its own tokens.
        The LM head runs only where a continuation token is predicted."""
        past = prefix_kv[0][0].shape[2] if prefix_kv is not None else 0
        ids: list[int] = []
        positions: list[int] = []
        lanes: list[list[int]] = []  # per lane, the packed positions of its keys in order
        queries: list[tuple[int, int]] = []  # per packed position: the (lane, offset) whose output it keeps
        columns: list[int] = []
        targets: list[int] = []
        owners: list[tuple[int, int]] = []
        for unit in units:
            ext = unit.ext if isinstance(unit, _Shared) else 0
            shared = list(range(len(ids), len(ids) + ext))
            if ext:
                ids += _unit_rows(unit)[0].inputs[prefix_len:prefix_len + ext]
                positions += range(past, past + ext)
                queries += [(len(lanes), i) for i in range(ext)]
                lanes.append(shared)
            for row in _unit_rows(unit):
                own = row.inputs[prefix_len + ext:]
                start = len(ids)
                ids += own
                positions += range(past + ext, past + ext + len(own))
                queries += [(len(lanes), ext + i) for i in range(len(own))]
                lanes.append(shared + list(range(start, start + len(own))))
                for req in row.requests:
                    wanted = req.tokens[req.start + 1:]
                    first = start + req.start - prefix_len - ext  # packed position of the output predicting wanted[0]
                    columns += range(first, first + len(wanted))
                    targets += wanted
                    owners.append((req.index, len(wanted)))
        width = max(len(lane) for lane in lanes)
        gather = torch.tensor([lane + [0] * (width - len(lane)) for lane in lanes]).flatten()
        slots = [lane * width + offset for lane, offset in queries]
        slot = torch.arange(width)
        packing = _Packing([(k[0], v[0]) for k, v in prefix_kv] if prefix_kv is not None else None,
                           gather.to(self.device), torch.tensor(slots, device=self.device),
                           (slot[None, :] > slot[:, None]).to(self.device), len(lanes), width)
        logits = self.model(input_ids=torch.tensor(ids, device=self.device)[None],
                            position_ids=torch.tensor(positions, device=self.device)[None], use_cache=False,
                            packing=packing, logits_to_keep=torch.tensor(columns, device=self.device)).logits
        return self._collect(logits[0], targets, owners)

    def _collect(self, picked: "torch.Tensor", targets: list[int], owners: list[tuple[int, int]]
                 ) -> dict[int, tuple[list[float], bool]]:
        """Per request, the log-probabilities of its targets from the logits `picked` (one row per
        target, in order) and whether each target was the argmax; `owners` is (index, targets)."""
        target_ids = torch.tensor(targets, device=self.device)
        logprobs = torch.log_softmax(picked.float(), dim=-1).gather(-1, target_ids[:, None])[:, 0]
        hits = (picked.argmax(-1) == target_ids).tolist()
        values = logprobs.tolist()
        out: dict[int, tuple[list[float], bool]] = {}
        at = 0
        for index, n in owners:
            out[index] = (values[at:at + n], all(hits[at:at + n]))
            at += n
        return out

    # ---- generation ----------------------------------------------------------------------------

    def generate(self, reqs: Sequence[GenRequest]) -> list[GenResult]:
        results: list[GenResult | None] = [None] * len(reqs)
        todo: list[tuple[int, list[int], int]] = []  # (index, prompt ids, token budget)
        for i, req in enumerate(reqs):
            ids = generation_prompt(req, self.tokenizer, backend="hf", model=self.model_name,
                                    chat=CHAT in self.capabilities, window=self.max_length - self.soft_tokens)
            if isinstance(ids, GenResult):
                results[i] = ids
            else:
                todo.append((i, ids, min(req.max_tokens, self.max_length - self.soft_tokens - len(ids))))
        todo.sort(key=lambda t: len(t[1]))
        prefixes: dict[tuple[int, ...], list[tuple["torch.Tensor", "torch.Tensor"]]] = {}
        with torch.inference_mode():
            for s in range(0, len(todo), self.batch_size):
                chunk = todo[s:s + self.batch_size]
                start = time.perf_counter()
                prompts = [p for _, p, _ in chunk]
                prefix = self._generation_prefix(prompts) if self.share_generation_prefix else ()
                shared = bool(prefix) or self._soft_kv is not None
                if shared and prefix not in prefixes:  # chunks of one call mostly share one prompt
                    prefixes.clear()
                    prefixes[prefix] = self._prefix_cache(prefix)
                texts = self._generate_chunk([reqs[i] for i, _, _ in chunk], prompts,
                                             [b for _, _, b in chunk], len(prefix),
                                             prefixes[prefix] if shared else None)
                share = (time.perf_counter() - start) / len(chunk)
                for (i, ids, _), (text, reason, n_new) in zip(chunk, texts):
                    results[i] = GenResult(text, reason, Usage(1, len(ids), n_new, share))
        return cast("list[GenResult]", results)  # every slot was filled above

    @staticmethod
    def _generation_prefix(prompts: list[list[int]]) -> tuple[int, ...]:
        """The token prefix all prompts of a chunk share, short of each one's last token (whose output
        starts the generation), or () when reusing it would save fewer than MIN_SHARED_TOKENS_SAVED."""
        if len(prompts) < 2:
            return ()
        first = prompts[0]
        n = min(min(len(p) for p in prompts) - 1, *(common_prefix(first, p) for p in prompts[1:]))
        return tuple(first[:n]) if n > 0 and (len(prompts) - 1) * n >= MIN_SHARED_TOKENS_SAVED else ()

    def _generate_chunk(self, reqs: list[GenRequest], prompts: list[list[int]], budgets: list[int],
                        prefix_len: int = 0,
                        prefix_kv: list[tuple["torch.Tensor", "torch.Tensor"]] | None = None
                        ) -> list[tuple[str, str, int]]:
        """Decode a batch of left-padded prompts. With `prefix_kv` (the KV of the soft prompt, if any, and
        the first `prefix_len` tokens, which every prompt shares) only the suffixes run, as in scoring:
        the prefix's KV is expanded over the batch and the suffixes are left-padded after it, with
        explicit positions."""
        batch = len(prompts)
        past = prefix_kv[0][0].shape[2] if prefix_kv is not None else 0
        ids, mask, positions = self._padded([p[prefix_len:] for p in prompts], past)
        rngs = [self._rng(r) for r in reqs]
        generated: list[list[int]] = [[] for _ in reqs]
        finished: list[tuple[str, str] | None] = [None] * batch
        active = list(range(batch))  # original row of each live cache row
        cache = self._expanded(prefix_kv, batch, self.model.config) if prefix_kv is not None \
            else DynamicCache(config=self.model.config)
        logits = self.model(input_ids=ids, attention_mask=mask, position_ids=positions,
                            past_key_values=cache, use_cache=True, logits_to_keep=1).logits[:, -1]
        next_pos = positions[:, -1:] + 1
        while True:
            next_ids = logits.argmax(-1).tolist()  # greedy rows; sampled rows are redrawn below
            for live, b in enumerate(active):
                rng = rngs[b]
                if rng is not None:
                    next_ids[live] = self._sample(logits[live], reqs[b].temperature, rng)
                generated[b].append(next_ids[live])
                finished[b] = self._check_finished(reqs[b], generated[b], budgets[b])
            keep = [live for live, b in enumerate(active) if finished[b] is None]
            if not keep:
                break
            if len(keep) < len(active):  # drop finished rows so they cost nothing more
                index = torch.tensor(keep, device=self.device)
                cache.batch_select_indices(index)
                mask, next_pos = mask[index], next_pos[index]
                next_ids = [next_ids[k] for k in keep]
                active = [active[k] for k in keep]
            mask = torch.cat([mask, mask.new_ones((len(active), 1))], dim=1)
            step = torch.tensor(next_ids, device=self.device)[:, None]
            logits = self.model(input_ids=step, attention_mask=mask, position_ids=next_pos,
                                past_key_values=cache, use_cache=True).logits[:, -1]
            next_pos = next_pos + 1
        return [(text, reason, len(generated[b])) for b, (text, reason) in enumerate(finished)]

    def _rng(self, req: GenRequest) -> "torch.Generator | None":
        if req.temperature <= 0:
            return None
        rng = torch.Generator(device=self.device)
        if req.seed is None:
            rng.seed()
        else:
            rng.manual_seed(req.seed)
        return rng

    @staticmethod
    def _sample(logits: "torch.Tensor", temperature: float, rng: "torch.Generator") -> int:
        probs = torch.softmax(logits.float() / temperature, dim=-1)
        return int(torch.multinomial(probs, 1, generator=rng))

    def _check_finished(self, req: GenRequest, tokens: list[int], budget: int) -> tuple[str, str] | None:
        """(text, finish_reason) once the request is done, else None."""
        hit_eos = tokens[-1] in self._eos_ids
        if not (hit_eos or req.stop or len(tokens) >= budget):
            return None  # nothing to check without decoding
        text = self.tokenizer.decode(tokens[:-1] if hit_eos else tokens, skip_special_tokens=True)
        cut = min((i for i in (text.find(s) for s in req.stop if s) if i >= 0), default=-1)
        if cut >= 0:
            return text[:cut], "stop"
        if hit_eos:
            return text, "stop"
        if len(tokens) >= budget:
            return text, "length"
        return None
