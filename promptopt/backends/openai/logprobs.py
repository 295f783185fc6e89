"""Read a continuation's log-likelihood out of an echoed `/v1/completions` response.

The server echoes context+continuation as tokens with `text_offset`s. The continuation's tokens
are located by counting characters back from the end of the echoed prompt, not forward from its
start: a BOS token (`<s>`) or a multi-byte character split across tokens shifts offsets near the
start, while the tail (usually a short answer) lines up. A token that straddles the boundary
(e.g. " positive" after "Answer:") belongs to the continuation.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

_TIE = 1e-6  # logprobs within this of the best count as the greedy choice


@dataclass(frozen=True)
class EchoedPrompt:
    tokens: Sequence[str]
    offsets: Sequence[int]
    logprobs: Sequence[float | None]
    top: Sequence[Mapping[str, float] | None]

    @property
    def text_length(self) -> int:
        return self.offsets[-1] + len(self.tokens[-1]) if self.tokens else 0


def echoed_prompt(choice: Mapping[str, Any], prompt_tokens: int | None) -> EchoedPrompt:
    """The prompt's part of an echoed choice. `prompt_tokens` (from usage) cuts off tokens the
    server generated after the prompt when it needed max_tokens >= 1; None keeps all.
    Raises ValueError when the response lacks the fields."""
    lp = choice.get("logprobs")
    if not isinstance(lp, Mapping):
        raise ValueError("no logprobs in the choice")
    tokens, offsets, values = lp.get("tokens"), lp.get("text_offset"), lp.get("token_logprobs")
    if not (isinstance(tokens, list) and isinstance(offsets, list) and isinstance(values, list)):
        raise ValueError("logprobs lack tokens, text_offset or token_logprobs")
    if not len(tokens) == len(offsets) == len(values):
        raise ValueError("logprobs lists differ in length")
    top = lp.get("top_logprobs") or [None] * len(tokens)
    n = len(tokens) if prompt_tokens is None else min(prompt_tokens, len(tokens))
    return EchoedPrompt(tokens[:n], offsets[:n], values[:n], list(top)[:n])


def continuation_logprob(echo: EchoedPrompt, continuation: str) -> tuple[float, bool, tuple[float, ...]]:
    """(sum of logprobs, greedy?, per-token logprobs) of the last `continuation` characters."""
    if not continuation:
        return 0.0, True, ()
    if not echo.tokens:
        raise ValueError("the server echoed no prompt tokens")
    boundary = echo.text_length - len(continuation)
    start = next(i for i, (tok, off) in enumerate(zip(echo.tokens, echo.offsets)) if off + len(tok) > boundary)
    values = echo.logprobs[start:]
    if any(v is None for v in values):
        raise ValueError("the continuation reaches the first token, which has no logprob")
    chosen = tuple(float(v) for v in values)  # type: ignore[arg-type]
    greedy = all(top and v >= max(top.values()) - _TIE for v, top in zip(chosen, echo.top[start:]))
    return sum(chosen), bool(greedy), chosen
