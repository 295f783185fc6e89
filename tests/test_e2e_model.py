"""`promptopt optimize` end to end on the embedded SmolLM2 (CPU): files on disk, a real result,
and a re-run served entirely from the cache."""
import json

import pytest

from promptopt.cli import main

pytestmark = pytest.mark.model


def test_optimize_demo_on_embedded_model_then_rerun_from_cache(tmp_path, capsys):
    args = ["optimize", "--task", "demo", "--strategy", "paraphrase", "--run-dir", str(tmp_path / "runs"),
            "--set", "paraphrase.rounds=1", "--set", "paraphrase.proposals=2", "--set", "paraphrase.max_tokens=48",
            "--set", f"cache_path={tmp_path / 'responses.sqlite'}", "-q"]
    assert main(args) == 0, capsys.readouterr().err
    (run,) = list((tmp_path / "runs").iterdir())
    first = json.loads((run / "summary.json").read_text())
    events = [json.loads(l) for l in (run / "events.jsonl").read_text().splitlines()]
    assert sum(e["type"] == "optimizer_call" for e in events) == 1
    assert all(0.0 <= first[k] <= 1.0 for k in ("seed_dev", "best_dev", "seed_test", "best_test"))
    assert first["best_dev"] >= first["seed_dev"] and first["cache"]["model_batches"] > 0
    run.rename(tmp_path / "first")
    assert main(args) == 0
    (again,) = list((tmp_path / "runs").iterdir())
    second = json.loads((again / "summary.json").read_text())
    assert second["cache"]["model_batches"] == 0 and second["cache"]["hits"] > 0
    assert second["best_prompt"] == first["best_prompt"] and second["best_test"] == first["best_test"]
