"""`promptopt compare`: the table, the soft prompt artifacts, the search curve and the plot."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("peft")
pytest.importorskip("matplotlib")

from promptopt.cli import main  # noqa: E402
from promptopt.cli.compare import compare, format_table, search_curve  # noqa: E402

DEV = [f"demo-dev-{i}" for i in range(24)]


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A 2-layer randomly initialised Llama saved with the embedded model's tokenizer."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from promptopt.backends.models import embedded_hf_dir

    path = tmp_path_factory.mktemp("tiny-llama")
    tokenizer = AutoTokenizer.from_pretrained(embedded_hf_dir())
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128,
                                 num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                 max_position_embeddings=512)).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def _eval(candidate: str, ids: list[str], score: float, time: float, calls: int) -> dict:
    return {"type": "eval", "candidate_id": candidate, "split": "dev", "objective": "task", "time": time,
            "usage": {"calls": calls}, "results": [{"example_id": i, "score": score} for i in ids]}


def _finished_run(root: Path, model: str) -> Path:
    run = root / "run"
    run.mkdir()
    config = {"task": "demo", "seed": 0, "target": {"backend": "hf", "model": model}}
    (run / "config.json").write_text(json.dumps({"config": config}))
    summary = {"seed_prompt": "Classify this customer message.", "best_prompt": "Is this message a complaint?",
               "seconds": 12.5, "target_usage": {"calls": 96}, "optimizer_usage": {"calls": 4}}
    (run / "summary.json").write_text(json.dumps(summary))
    events = [{"type": "run.start", "time": 100.0},
              _eval("a", DEV, 0.5, 101.0, 48),
              _eval("b", DEV[:4], 1.0, 102.0, 8),  # covers 4 of 24 dev examples: must not set the curve
              {"type": "optimizer_call", "requests": [{}, {}], "time": 103.0},
              _eval("c", DEV, 0.75, 104.0, 48)]
    (run / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    return run


def test_search_curve_counts_only_full_dev_coverage_and_all_calls(tmp_path):
    run = _finished_run(tmp_path, "unused")
    assert search_curve(run, 24) == [{"model_calls": 48, "seconds": 1.0, "dev": 0.5},
                                     {"model_calls": 106, "seconds": 4.0, "dev": 0.75}]


def test_compare_with_soft_prompts_writes_table_plot_and_loadable_artifacts(tmp_path, tiny_model_dir, monkeypatch):
    monkeypatch.setenv("PROMPTOPT_CACHE_DIR", str(tmp_path / "cache"))
    run = _finished_run(tmp_path, str(tiny_model_dir))
    result = compare(run, soft=True, virtual_tokens=3, seeds=(0, 1), test_limit=4, device="cpu",
                     soft_options={"steps": 2, "batch_size": 4, "eval_every": 1, "lr": 0.3})
    methods = [r.method for r in result.rows]
    assert methods == ["seed prompt", "best discrete", "empty prompt",
                       "prompt_tuning (seed 0)", "prompt_tuning (seed 0) -> nearest tokens (cosine)",
                       "prompt_tuning (seed 1)", "prompt_tuning (seed 1) -> nearest tokens (cosine)",
                       "prompt_tuning (mean of 2 seeds, test sd " + methods[-1].split("test sd ")[1]]
    seed_row, best_row, soft_row = result.rows[0], result.rows[1], result.rows[3]
    assert (seed_row.trainable_parameters, soft_row.trainable_parameters) == (0, 3 * 64)
    assert soft_row.prompt_tokens == 3 and soft_row.transfer.startswith("no: same model")
    assert best_row.seconds == 12.5 and best_row.model_calls == 100
    assert soft_row.model_calls > 2 * 4 * 2  # training rows plus dev checks
    assert all(r.dev is not None and 0 <= r.dev <= 1 for r in result.rows)
    assert result.test_examples == 4
    assert [p["step"] for p in result.curves["prompt_tuning (seed 0)"]] == [0, 1, 2]
    assert (run / "compare.png").stat().st_size > 1000
    assert json.loads((run / "compare.json").read_text())["rows"][3]["method"] == "prompt_tuning (seed 0)"
    # The artifact, given to the hf backend as its soft_prompt option, scores again to the table's figure.
    from promptopt.api import evaluate

    again = evaluate("", "demo", split="dev", model=str(tiny_model_dir), backend="hf", cache=False,
                     backend_options={"device": "cpu", "dtype": "float32",
                                      "soft_prompt": str(run / "soft_prompt" / "prompt_tuning-seed-0")})
    assert again.score == pytest.approx(soft_row.dev)
    assert "| prompt_tuning (seed 0) |" in format_table(result)


def test_compare_trains_each_peft_method_through_the_backend_seam(tmp_path, tiny_model_dir, monkeypatch):
    monkeypatch.setenv("PROMPTOPT_CACHE_DIR", str(tmp_path / "cache"))
    run = _finished_run(tmp_path, str(tiny_model_dir))
    result = compare(run, soft=True, virtual_tokens=2, test_limit=4, device="cpu",
                     methods=("p_tuning", "prefix_tuning", "cpt"),
                     soft_options={"steps": 1, "batch_size": 2, "eval_every": 0})
    rows = {r.method: r for r in result.rows}
    # Prefix tuning's prompt is keys and values at every layer: no input embeddings to project.
    assert "prefix_tuning (seed 0) -> nearest tokens (cosine)" not in rows
    assert rows["prefix_tuning (seed 0)"].trainable_parameters == 2 * 2 * 2 * 32  # tokens x layers x (k, v) x kv width
    assert rows["cpt (seed 0)"].prompt_tokens > 2  # its prompt is two rendered train examples
    # CPT's projection reads back the training examples it started from (its deltas are bounded).
    assert "\n" in rows["cpt (seed 0) -> nearest tokens (cosine)"].prompt
    assert all(rows[f"{m} (seed 0)"].test is not None for m in ("p_tuning", "prefix_tuning", "cpt"))
    for m in ("p_tuning", "prefix_tuning", "cpt"):
        assert (run / "soft_prompt" / f"{m}-seed-0" / "adapter_model.safetensors").is_file()


def test_kept_share_of_the_gain():
    from promptopt.cli.compare import _kept_share

    assert _kept_share(0.5, 0.9, 0.7) == pytest.approx(0.5)
    assert _kept_share(0.5, 0.9, 0.4) == pytest.approx(-0.25)
    assert _kept_share(0.5, 0.5, 0.7) is None and _kept_share(None, 0.9, 0.7) is None


def test_cli_compare_without_soft_and_bad_flags(tmp_path, tiny_model_dir, monkeypatch, capsys):
    monkeypatch.setenv("PROMPTOPT_CACHE_DIR", str(tmp_path / "cache"))
    run = _finished_run(tmp_path, str(tiny_model_dir))
    assert main(["compare", "--run", str(run), "--test-limit", "2", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "| best discrete |" in out and "soft prompt" not in out
    assert main(["compare", "--run", str(run), "--seeds", "0,x"]) == 2
    assert main(["compare", "--run", str(run), "--soft", "--soft-method", "lora"]) == 2
    assert "unknown soft method lora" in capsys.readouterr().err
    assert main(["compare", "--run", str(tmp_path / "missing")]) == 2
    assert "not a run directory" in capsys.readouterr().err
