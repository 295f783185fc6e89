"""USD prices per million tokens, for cost accounting of OpenAI-compatible calls and the estimate
`promptopt optimize --dry-run` shows.

The defaults are OpenAI's published list prices for a few common models at the time of writing;
prices change, so pass `prices={...}` (constructor or config) to override or extend them.
Self-hosted servers (vLLM, llama.cpp) cost nothing here: unknown models are priced at 0.
Prompt tokens a provider served from its prompt cache (`usage.prompt_tokens_details.cached_tokens`)
cost the cached-input price; a model listed without one pays the full input price for them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Mapping, Sequence

if TYPE_CHECKING:
    from promptopt.task import Task


@dataclass(frozen=True)
class Price:
    """USD per 1M tokens: input, output, and cached input (None: as input)."""

    input: float
    output: float
    cached_input: float | None = None

    @classmethod
    def of(cls, values: Sequence[float] | "Price") -> "Price":
        """From [input, output] or [input, output, cached input]."""
        if isinstance(values, Price):
            return values
        if len(values) not in (2, 3):
            raise ValueError("give [USD per 1M input tokens, per 1M output tokens(, per 1M cached input tokens)]")
        return cls(float(values[0]), float(values[1]), float(values[2]) if len(values) == 3 else None)


FREE = Price(0.0, 0.0)

# model -> USD per 1M (input, output, cached input) tokens
DEFAULT_PRICES: dict[str, Price] = {
    "gpt-4o": Price(2.50, 10.00, 1.25),
    "gpt-4o-mini": Price(0.15, 0.60, 0.075),
    "gpt-4.1": Price(2.00, 8.00, 0.50),
    "gpt-4.1-mini": Price(0.40, 1.60, 0.10),
    "gpt-4.1-nano": Price(0.10, 0.40, 0.025),
    "o4-mini": Price(1.10, 4.40, 0.275),
    "gpt-3.5-turbo": Price(0.50, 1.50),
    "gpt-3.5-turbo-instruct": Price(1.50, 2.00),
    "davinci-002": Price(2.00, 2.00),
    "babbage-002": Price(0.40, 0.40),
}


def price_table(overrides: Mapping[str, Sequence[float]] | None = None) -> dict[str, Price]:
    """The defaults, extended or overridden by `overrides` (model -> [input, output(, cached input)])."""
    return {**DEFAULT_PRICES, **{model: Price.of(v) for model, v in (overrides or {}).items()}}


def price_for(model: str, table: Mapping[str, Price | Sequence[float]]) -> Price:
    """Exact match first, else the longest listed prefix (dated snapshots such as
    `gpt-4o-mini-2024-07-18` cost what `gpt-4o-mini` costs); unknown models cost 0."""
    if model in table:
        return Price.of(table[model])
    prefixes = [name for name in table if model.startswith(name + "-")]
    return Price.of(table[max(prefixes, key=len)]) if prefixes else FREE


def usd(prompt_tokens: int, completion_tokens: int, price: Price | Sequence[float], cached_tokens: int = 0) -> float:
    """What a call cost; `cached_tokens` is the part of `prompt_tokens` read from the provider's cache."""
    p = Price.of(price)
    cached = min(max(cached_tokens, 0), prompt_tokens)
    cached_price = p.input if p.cached_input is None else p.cached_input
    return ((prompt_tokens - cached) * p.input + cached * cached_price + completion_tokens * p.output) / 1_000_000


def estimate_usd(model: str, prices: Mapping[str, Sequence[float]] | None, *, calls: int,
                 prompt_tokens_per_call: float, completion_tokens_per_call: float) -> dict[str, float]:
    """The most `calls` requests of about this size cost at list price (no cached-input discount, which
    depends on the provider), for a plan made before any request is sent."""
    p = price_for(model, price_table(prices))
    prompt, completion = round(calls * prompt_tokens_per_call), round(calls * completion_tokens_per_call)
    return {"calls": calls, "prompt_tokens": prompt, "completion_tokens": completion,
            "usd": usd(prompt, completion, p), "usd_per_1m_input": p.input, "usd_per_1m_output": p.output}


def estimate_task_usd(model: str, prices: Mapping[str, Sequence[float]] | None, task: "Task", prompt: str,
                      examples: int, route: str | None = None, sample: int = 64) -> dict[str, float]:
    """The most scoring `examples` (prompt, example) pairs of `task` with `prompt` costs on `model`, at
    list price: prompt size from the first `sample` dev examples (4 characters a token), a generated
    answer at the task's max_tokens. A choose task costs one request per option on the loglikelihood route
    (also the bound when the route is left to the start-up probe), one per example with a one-token reply
    on chat_logprobs, one with a reply of up to max_tokens on generate."""
    shown = [task.render(prompt, ex) for ex in list(task.split("dev"))[:sample]]
    chars = sum(map(len, shown)) / max(len(shown), 1)
    if task.output == "choose" and route == "chat_logprobs":
        return estimate_usd(model, prices, calls=examples, prompt_tokens_per_call=chars / 4 + 1,
                            completion_tokens_per_call=1)
    if task.output == "choose" and route != "generate":
        option_chars = sum(map(len, task.options)) / len(task.options)
        return estimate_usd(model, prices, calls=examples * len(task.options),
                            prompt_tokens_per_call=(chars + option_chars) / 4 + 1, completion_tokens_per_call=0)
    return estimate_usd(model, prices, calls=examples, prompt_tokens_per_call=chars / 4 + 1,
                        completion_tokens_per_call=task.max_tokens)
