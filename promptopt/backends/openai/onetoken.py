"""Scoring one-token continuations on a vLLM server with its prefix cache on.

The echo recipe asks for prompt logprobs, which vLLM computes without reading its prefix cache: every
example recomputes the whole prompt. A class label or option letter is usually one token, and its
log-probability after the context is what the *next* token's distribution gives. So, on a server that
is vLLM (`GET /version`) and accepts its `logprob_token_ids` extension:

1. `/tokenize` context+continuation (with the special tokens the completions route would add). When the
   continuation is exactly its last token, the tokens before it are the context as the echo recipe reads
   it, and the request is planned as (those token ids, that one token id); otherwise it stays on echo.
2. Plans are sent many prompts per `/v1/completions` request as token ids (the options of one example
   share one prompt, which reads all their labels), `max_tokens=1`,
   `temperature=0`, `logprobs=1`, `logprob_token_ids=[the labels]`, `return_tokens_as_token_ids=true`;
   `choices[i].logprobs.top_logprobs[0]["token_id:N"]` is label N's log-probability.

Prompt tokens come from the prefix cache wherever an earlier prompt shares them (the instruction and
demos); `/metrics` counts the hits, and `prefix_cache_delta` reads them for the run's stats.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

MAX_LABEL_IDS = 128  # vLLM's cap on logprob_token_ids per request
PROMPTS_PER_REQUEST = 32
TIE = 1e-6
_METRIC = re.compile(r"^(vllm:prefix_cache_(?:queries|hits))(?:_total)?(?:\{[^}]*\})?\s+([0-9.eE+-]+)\s*$", re.M)


@dataclass(frozen=True)
class Plan:
    """How one LLRequest is scored: `prompt_ids` then `label_id`, or None to stay on echo (and why)."""

    prompt_ids: tuple[int, ...] | None
    label_id: int | None
    why_not: str = ""


def plan(context_ids: Sequence[int], continuation_ids: Sequence[int] | None) -> Plan:
    """`context_ids`: the tokens of context+continuation; `continuation_ids`: the continuation alone
    (no special tokens). One-token when the whole text ends in exactly that one token."""
    if not continuation_ids or len(continuation_ids) != 1:
        return Plan(None, None, "the continuation is more than one token")
    if len(context_ids) < 2 or context_ids[-1] != continuation_ids[0]:
        return Plan(None, None, "the continuation's token merges with the context's last one")
    return Plan(tuple(context_ids[:-1]), continuation_ids[0])


def tokenize_payload(model: str, text: str, special: bool) -> dict[str, Any]:
    return {"model": model, "prompt": text, "add_special_tokens": special}


def token_ids(data: Mapping[str, Any]) -> list[int]:
    """The ids of a `/tokenize` answer; ValueError when it has none."""
    tokens = data.get("tokens")
    if not isinstance(tokens, list) or not all(isinstance(t, int) for t in tokens):
        raise ValueError("/tokenize gave no list of token ids")
    return tokens


def completion_payload(model: str, prompts: Sequence[Sequence[int]], labels: Sequence[int]) -> dict[str, Any]:
    return {"model": model, "prompt": [list(p) for p in prompts], "max_tokens": 1, "temperature": 0.0,
            "logprobs": 1, "logprob_token_ids": sorted(set(labels)), "return_tokens_as_token_ids": True}


def label_logprobs(data: Mapping[str, Any], n_prompts: int) -> list[tuple[dict[int, float], int | None]]:
    """Per prompt (in order): label id -> logprob at the generated position, and the id generated
    (the greedy one, at temperature 0). ValueError when the layout is not vLLM's."""
    choices = data.get("choices")
    if not isinstance(choices, list) or len(choices) != n_prompts:
        raise ValueError(f"expected {n_prompts} choices, got {len(choices) if isinstance(choices, list) else 0}")
    out: list[tuple[dict[int, float], int | None] | None] = [None] * n_prompts
    for c in choices:
        try:
            i = int(c["index"])
            tops = c["logprobs"]["top_logprobs"][0]
            sampled = _id(c["logprobs"]["tokens"][0])
            values = {_id(k): float(v) for k, v in tops.items()}
        except (KeyError, IndexError, TypeError, ValueError) as e:
            raise ValueError(f"unexpected one-token logprobs layout ({type(e).__name__}: {e})") from None
        # Python would read index -1 as the last prompt: an index outside 0..n-1, or one given twice,
        # would silently pair answers with other prompts.
        if not 0 <= i < n_prompts or out[i] is not None:
            raise ValueError(f"choice index {i} is not one of 0..{n_prompts - 1} given once")
        if any(math.isnan(v) for v in values.values()):  # NaN compares False with everything: never a score
            raise ValueError("a label logprob is NaN")
        out[i] = (values, sampled)
    return [o for o in out if o is not None]


def _id(token: str) -> int:
    if not isinstance(token, str) or not token.startswith("token_id:"):
        raise ValueError(f"token {token!r} is not 'token_id:N' (return_tokens_as_token_ids ignored)")
    return int(token.removeprefix("token_id:"))


def scored(logprobs: Mapping[int, float], sampled: int | None, label: int) -> tuple[float, bool, tuple[float, ...]]:
    """(logprob, is_greedy, per-token logprobs) for one label, as the echo recipe reports them."""
    if label not in logprobs:
        raise ValueError(f"the answer has no logprob for label token {label}")
    lp = logprobs[label]
    best = max(logprobs.values())
    greedy = sampled == label or (math.isfinite(lp) and lp >= best - TIE)
    return lp, greedy, (lp,)


def batches(prompts: Sequence[Sequence[int]], labels: Sequence[int], servers: int = 1) -> list[list[int]]:
    """Indices of the plans (prompt, label) in groups of at most PROMPTS_PER_REQUEST distinct prompts (the
    options of one example share theirs: one prompt reads all its labels) and MAX_LABEL_IDS labels.

    The groups are of even size and their number a multiple of `servers` where the prompts allow it, so
    least-busy routing can give every server the same work (300 prompts on 2 servers: 10 x 30, not
    9 x 32 + 12)."""
    distinct = len({tuple(p) for p in prompts})
    if not distinct:
        return []
    requests = min(math.ceil(math.ceil(distinct / PROMPTS_PER_REQUEST) / servers) * servers, distinct)
    per_request = math.ceil(distinct / requests)
    groups: list[list[int]] = []
    current: list[int] = []
    seen_prompts: set[tuple[int, ...]] = set()
    seen: set[int] = set()
    for i, (prompt, label) in enumerate(zip(prompts, labels)):
        key = tuple(prompt)
        new_prompt = key not in seen_prompts and len(seen_prompts) >= per_request
        if current and (new_prompt or (label not in seen and len(seen) >= MAX_LABEL_IDS)):
            groups.append(current)
            current, seen_prompts, seen = [], set(), set()
        current.append(i)
        seen_prompts.add(key)
        seen.add(label)
    if current:
        groups.append(current)
    return groups


def prefix_cache_counters(text: str) -> dict[str, float]:
    """`vllm:prefix_cache_queries` and `..._hits` (tokens) summed over a Prometheus `/metrics` page."""
    out: dict[str, float] = {}
    for name, value in _METRIC.findall(text):
        key = name.removeprefix("vllm:prefix_cache_")
        out[key] = out.get(key, 0.0) + float(value)
    return out
