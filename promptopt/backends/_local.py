"""What the in-process backends (hf, vllm, and soft prompts) share: the context/continuation split of
a log-likelihood request, the start token, token-prefix arithmetic, and turning a generate request
into prompt token ids, or into its final result when there is nothing to run.

It imports neither torch nor vllm, so it loads wherever the core does.
"""
from __future__ import annotations

from typing import Any, Iterable, Sequence

from promptopt.backends.base import GenRequest, GenResult
from promptopt.types import Usage


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """How many leading tokens `a` and `b` share."""
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


def start_token(tokenizer: Any, eos_ids: Iterable[int] = ()) -> int:
    """The token that conditions an empty context (a model needs one input to predict the first
    token): BOS, else the smallest EOS id, else PAD, else 0."""
    if tokenizer.bos_token_id is not None:
        return tokenizer.bos_token_id
    eos = sorted({*eos_ids, *([tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else [])})
    if eos:
        return eos[0]
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0


def split_pairs(tokenizer: Any, pairs: Sequence[tuple[str, str]], start: int | None = None
                ) -> list[tuple[tuple[int, ...], int]]:
    """Token ids of each (context, continuation) pair and how many of them belong to the context.

    The pair is tokenized as one string, so the continuation is scored as the model would read it
    in place. Where a token straddles the boundary (e.g. "is " + "Paris" gives "is" + " Paris"), the
    context owns only the tokens it shares with its own tokenization; the straddling token counts as
    continuation. With `start`, a pair whose context owns no token gets `start` prepended as its
    one context token (a soft prompt passes None: its virtual tokens condition the first token).
    """
    wholes = tokenizer([c + x for c, x in pairs])["input_ids"] if pairs else []
    contexts = sorted({c for c, _ in pairs if c})
    context_ids = dict(zip(contexts, tokenizer(contexts)["input_ids"] if contexts else []))
    out = []
    for (context, _), whole in zip(pairs, wholes):
        n_ctx = common_prefix(whole, context_ids[context]) if context else 0
        if n_ctx == 0 and start is not None:
            whole, n_ctx = [start, *whole], 1
        out.append((tuple(whole), n_ctx))
    return out


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
