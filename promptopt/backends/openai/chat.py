"""What a server's chat route accepts, found by the start-up probe, and how to read its top_logprobs.

Hosted chat APIs differ in what they refuse: reasoning models refuse `temperature` and want
`max_completion_tokens` instead of `max_tokens`, many refuse `logprobs`, and `top_logprobs` is capped
(20 on OpenAI and vLLM's default). The probe learns this from the server's own refusals (a 400 that
names the parameter), never from lists of model names.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace
from typing import Any, Mapping, Sequence

ROUTES = ("loglikelihood", "chat_logprobs", "generate")  # how a choose task is scored, in order of preference
TOP_LOGPROBS_TRIES = (20, 10, 5, 1)  # asked in turn while the server refuses the number by name


def names(detail: str, param: str) -> bool:
    """Whether a server's error message names `param` (as 'param', "param" or a bare word)."""
    return re.search(rf"(?<![\w.]){re.escape(param)}(?!\w)", detail) is not None


@dataclass(frozen=True)
class ChatParams:
    max_tokens_key: str = "max_tokens"  # or "max_completion_tokens" (reasoning models)
    temperature: bool = True  # False: the server refuses it, so it is left out (its default applies)
    top_logprobs: int = 0  # the most top_logprobs it gives on chat; 0: none
    logprobs_error: str | None = None  # why none

    def without(self, detail: str) -> "ChatParams | None":
        """These parameters less the one a refusal names; None when it names none we can leave out."""
        if self.max_tokens_key == "max_tokens" and names(detail, "max_tokens"):
            return replace(self, max_tokens_key="max_completion_tokens")
        if self.temperature and names(detail, "temperature"):
            return replace(self, temperature=False)
        return None

    def payload(self, model: str, messages: Sequence[Mapping[str, str]], max_tokens: int, temperature: float = 0.0,
                stop: Sequence[str] = (), seed: int | None = None, top_logprobs: int = 0) -> dict[str, Any]:
        body: dict[str, Any] = {"model": model, "messages": list(messages), self.max_tokens_key: max_tokens}
        if self.temperature:
            body["temperature"] = temperature
        if stop:
            body["stop"] = list(stop)
        if seed is not None:
            body["seed"] = seed
        if top_logprobs:
            body["logprobs"] = True
            body["top_logprobs"] = min(top_logprobs, self.top_logprobs) if self.top_logprobs else top_logprobs
        return body


def first_top_logprobs(choice: Mapping[str, Any]) -> tuple[tuple[str, float], ...]:
    """(token, logprob) of the first generated position's top_logprobs, best first. ValueError when the
    choice carries none (a server that dropped logprobs) or a value that is not a finite number or -inf."""
    lp = choice.get("logprobs") if isinstance(choice, Mapping) else None
    content = lp.get("content") if isinstance(lp, Mapping) else None
    if not isinstance(content, list) or not content or not isinstance(content[0], Mapping):
        raise ValueError("no logprobs.content in the chat reply")
    tops = content[0].get("top_logprobs")
    if not isinstance(tops, list) or not tops:
        raise ValueError("no top_logprobs at the first generated token")
    out = []
    for t in tops:
        try:
            token, value = str(t["token"]), float(t["logprob"])
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"unexpected top_logprobs entry ({type(e).__name__}: {e})") from None
        if math.isnan(value) or value > 0:
            raise ValueError(f"top_logprobs value {value} is not a log-probability")
        out.append((token, value))
    return tuple(sorted(out, key=lambda tv: -tv[1]))
