"""Soft methods as sweep cells: a soft cell trains on the budget's train examples, is scored through the hf
backend beside the seed prompt and its projection, skips when finished, resumes from its saved adapter,
and its row carries trainable parameters, prompt tokens and the projection's keep share. The `seed`
method is the seed row. Bad soft settings are one line with nothing started."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("peft")

from promptopt.cli.commands import main  # noqa: E402
from promptopt.cli.sweep.soft import SOFT_METHODS  # noqa: E402


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A 2-layer, 64-wide random Llama with the embedded model's tokenizer (the demo task's text tokenizes)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from promptopt.backends.models import embedded_hf_dir

    path = tmp_path_factory.mktemp("tiny-llama")
    tokenizer = AutoTokenizer.from_pretrained(embedded_hf_dir())
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128,
                                             num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                             max_position_embeddings=512))
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


@pytest.fixture
def grid(tiny_model: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    monkeypatch.setenv("PROMPTOPT_CACHE_DIR", str(tmp_path / "cache"))
    return ["--tasks", "demo", "--strategies", "seed,prompt_tuning", "--seeds", "0", "--budget", "8",
            "--test-limit", "6", "--backend", "hf", "--model", tiny_model, "--optimizer-model", "none",
            "--set", "prompt_tuning.batch_size=4", "--set", "prompt_tuning.dev_checks=1"]


def soft_summary(out: Path) -> dict:
    return json.loads(next(out.glob("cells/demo__prompt_tuning__seed0/*-soft/summary.json")).read_text())


def test_the_soft_names_are_the_methods_soft_prompt_trains() -> None:
    from promptopt.soft_prompt import METHODS

    assert SOFT_METHODS == METHODS


def test_a_soft_cell_finishes_skips_on_rerun_and_resumes_from_its_adapter(grid, tmp_path, capsys):
    out = tmp_path / "sw"
    assert main(["sweep", *grid, "--out", str(out)]) == 0
    table = capsys.readouterr().out
    assert "prompt_tuning" in table and "keeps" in table
    rows = {r["method"]: r for r in json.loads((out / "results.json").read_text())}
    assert list(rows) == ["seed", "prompt_tuning"]  # the seed method is the seed row; none is added
    seed_run = json.loads(next(out.glob("cells/demo__seed__seed0/*/summary.json")).read_text())
    s = soft_summary(out)
    # Equal budgets: 8 train examples through the gradient (2 steps of 4); dev checks at steps 0 and 2.
    assert (s["search"]["examples"], s["soft"]["steps"], s["soft"]["dev_checks"]) == (8, 2, 2)
    assert s["soft"]["dev_examples"] == 2 * 24
    # The same scorer and test sample as the discrete cells: the seed prompt scores the same in both.
    assert s["seed_test"] == seed_run["best_test"] == rows["seed"]["test_mean"]
    assert s["significance"]["n"] == 6
    row = rows["prompt_tuning"]
    assert (row["trainable_params"], row["prompt_tokens"]) == (8 * 64, 8)  # 8 virtual tokens of width 64
    assert rows["seed"]["trainable_params"] == 0 and rows["seed"]["prompt_tokens"] > 0
    assert row["test_mean"] == s["best_test"] and row["projected_test"] == s["projection"]["test"]
    proj = s["projection"]
    assert proj["text"] and proj["metric"] == "cosine"
    gain = s["best_test"] - s["seed_test"]
    assert row["projection_keeps"] == (None if gain <= 0 else pytest.approx((proj["test"] - s["seed_test"]) / gain))
    for name in ("results.json", "results.csv", "results.html"):
        assert "projection_keeps" in (out / name).read_text()

    # A rerun skips both finished cells.
    summary = next(out.glob("cells/demo__prompt_tuning__seed0/*-soft/summary.json"))
    mtime = summary.stat().st_mtime_ns
    assert main(["sweep", *grid, "--out", str(out)]) == 0
    assert "0 of 2 cells to run" in capsys.readouterr().err
    assert summary.stat().st_mtime_ns == mtime

    # Cut off after training (its summary lost): the rerun keeps the saved adapter and only scores it.
    summary.unlink()
    assert main(["sweep", *grid, "--out", str(out)]) == 0
    assert "1 of 2 cells to run" in capsys.readouterr().err
    log = (summary.parent.parent / "cell.log").read_text()
    assert log.count("training 2 steps of 4") == 1 and log.count("== exit 0") == 2
    again = soft_summary(out)
    assert {k: again[k] for k in ("best_test", "seed_test", "projection")} == \
        {k: s[k] for k in ("best_test", "seed_test", "projection")}
    assert again["target_usage"]["cache_hits"] > 0  # its scores came back from the response cache

    # A cell cut off under an earlier promptopt, whose run config had one setting fewer, resumes too.
    record_path = summary.parent / "soft.json"
    record = json.loads(record_path.read_text())
    del record["run_config"]["components"]
    record_path.write_text(json.dumps(record))
    summary.unlink()
    assert main(["sweep", *grid, "--out", str(out)]) == 0
    assert soft_summary(out)["best_test"] == s["best_test"]
    assert (summary.parent.parent / "cell.log").read_text().count("training 2 steps of 4") == 1


def test_a_recorded_soft_cell_with_other_settings_is_another_cell() -> None:
    from promptopt.cli.sweep.soft import _same_cell
    from promptopt.config import RunConfig
    cfg = RunConfig(task="demo").model_dump(mode="json")
    record = {"method": "cpt", "settings": {}, "plan": {"steps": 2}, "run_config": cfg}
    older = {**record, "run_config": {k: v for k, v in cfg.items() if k != "components"}}
    assert _same_cell(older, record, RunConfig)
    assert not _same_cell({**record, "method": "prompt_tuning"}, record, RunConfig)
    assert not _same_cell({**record, "run_config": {**cfg, "seed": 1}}, record, RunConfig)
    assert not _same_cell({**record, "run_config": {"task": 3}}, record, RunConfig)


@pytest.mark.parametrize("args, message", [
    (["--backend", "fake", "--model", "m"], "the target must use the hf backend, not 'fake'"),
    (["--set", "prompt_tuning.steps=3"], "steps follow from --budget"),
    (["--set", "prompt_tuning.bogus=1"], "prompt_tuning.bogus: Extra inputs are not permitted"),
    (["--set", "prompt_tuning.batch_size=16"], "--budget 8 is under one batch of 16"),
    (["--set", "prompt_tuning.init=text", "--set", "prompt="], "the seed prompt, which is empty here"),
])
def test_bad_soft_settings_are_one_line_and_start_nothing(grid, tmp_path, capsys, args, message):
    out = tmp_path / "sw"
    assert main(["sweep", *grid, *args, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not out.exists()


def test_a_dry_run_says_what_each_soft_cell_trains_and_starts_nothing(grid, tmp_path, capsys):
    out = tmp_path / "sw"
    assert main(["sweep", *grid, "--out", str(out), "--dry-run"]) == 0
    printed = capsys.readouterr().out
    assert "sweep: demo prompt_tuning: 2 steps of 4 train examples, the whole dev split scored at step 0 " \
           "and 1 more times" in printed
    assert "2 cells (1 tasks x 2 strategies x 1 seeds), 2 to run" in printed
    assert not out.exists()
