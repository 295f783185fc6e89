"""The OpenAI-compatible backend: client (backend), HTTP transport, retries, rate limits, logprobs, prices."""
from promptopt.backends.openai.backend import OpenAIBackend

__all__ = ["OpenAIBackend"]
