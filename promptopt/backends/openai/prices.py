"""USD prices per million tokens, for cost accounting of OpenAI-compatible calls.

The defaults are OpenAI's published list prices for a few common models at the time of writing;
prices change, so pass `prices={...}` (constructor or config) to override or extend them.
Self-hosted servers (vLLM, llama.cpp) cost nothing here: unknown models are priced at 0.
"""
from __future__ import annotations

from typing import Mapping

# model -> (USD per 1M input tokens, USD per 1M output tokens)
DEFAULT_PRICES: dict[str, tuple[float, float]] = {
    "gpt-4o": (2.50, 10.00),
    "gpt-4o-mini": (0.15, 0.60),
    "gpt-4.1": (2.00, 8.00),
    "gpt-4.1-mini": (0.40, 1.60),
    "gpt-4.1-nano": (0.10, 0.40),
    "gpt-3.5-turbo": (0.50, 1.50),
    "gpt-3.5-turbo-instruct": (1.50, 2.00),
    "davinci-002": (2.00, 2.00),
    "babbage-002": (0.40, 0.40),
}


def price_for(model: str, table: Mapping[str, tuple[float, float]]) -> tuple[float, float]:
    """Exact match first, else the longest listed prefix (dated snapshots such as
    `gpt-4o-mini-2024-07-18` cost what `gpt-4o-mini` costs); unknown models cost 0."""
    if model in table:
        return table[model]
    prefixes = [name for name in table if model.startswith(name + "-")]
    return table[max(prefixes, key=len)] if prefixes else (0.0, 0.0)


def usd(prompt_tokens: int, completion_tokens: int, price: tuple[float, float]) -> float:
    return (prompt_tokens * price[0] + completion_tokens * price[1]) / 1_000_000
