"""What the in-process backends (hf, vllm) share: token-prefix arithmetic and turning a generate
request into prompt token ids, or into its final result when there is nothing to run.

It imports neither torch nor vllm, so it loads wherever the core does.
"""
from __future__ import annotations

from typing import Any, Sequence

from promptopt.backends.base import GenRequest, GenResult
from promptopt.types import Usage


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """How many leading tokens `a` and `b` share."""
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


def generation_prompt(req: GenRequest, tokenizer: Any, *, backend: str, model: str, chat: bool,
                      window: int, reader: str | None = None) -> list[int] | GenResult:
    """The prompt token ids of `req` for an HF `tokenizer`, or the request's result when it must not
    run: an error (messages without a chat template, a prompt that fills the `window`), or an empty
    completion for max_tokens <= 0. Errors name `backend`, and `reader` (default: `model`) as what
    reads at most `window` tokens.
    """
    if not req.messages:
        ids = tokenizer(req.prompt, add_special_tokens=True)["input_ids"]
    elif not chat:
        return GenResult("", "error", error=f"{backend} backend: {model} has no chat template; send a "
                                            f"plain `prompt` instead of `messages`")
    else:
        text = tokenizer.apply_chat_template(
            [{"role": role, "content": content} for role, content in req.messages],
            add_generation_prompt=True, tokenize=False)
        # The template already wrote the special tokens.
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if len(ids) >= window:
        return GenResult("", "error", error=(
            f"{backend} backend: prompt is {len(ids)} tokens but {reader or model} reads at most "
            f"{window}; shorten the prompt"))
    if req.max_tokens <= 0:
        return GenResult("", "length", Usage(calls=1, prompt_tokens=len(ids)))
    return ids
