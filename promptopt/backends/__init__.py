"""Backends: hf (transformers), vllm (offline engine), openai (any compatible server), fake (tests)."""
