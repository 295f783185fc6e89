"""The CLI end to end on the fake backend: outputs on disk, cache re-runs, and one-line errors."""
import json
import os
from pathlib import Path

import pytest

from promptopt.cli import main


def run_cli(*args, capsys):
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def base(tmp_path):
    return ["optimize", "--task", "demo", "--strategy", "paraphrase", "--backend", "fake", "--model", "m",
            "--run-dir", str(tmp_path / "runs"), "--set", f"cache_path={tmp_path / 'cache.sqlite'}", "-q",
            "--budget", "300"]


def the_run(tmp_path) -> Path:
    (d,) = [p for p in (tmp_path / "runs").iterdir()]
    return d


def test_optimize_writes_config_events_summary(base, tmp_path, capsys):
    code, out, err = run_cli(*base, capsys=capsys)
    assert code == 0, err
    d = the_run(tmp_path)
    assert {p.name for p in d.iterdir()} >= {"config.json", "events.jsonl", "summary.json"}
    summary = json.loads((d / "summary.json").read_text())
    assert summary["best_dev"] >= summary["seed_dev"]
    assert "seed" in out and "best" in out
    types = {json.loads(l)["type"] for l in (d / "events.jsonl").read_text().splitlines()}
    assert {"run.start", "candidate", "eval", "optimizer_call", "run.end"} <= types


def test_rerun_makes_zero_model_calls(base, tmp_path, capsys):
    assert run_cli(*base, capsys=capsys)[0] == 0
    first = json.loads((the_run(tmp_path) / "summary.json").read_text())
    for d in (tmp_path / "runs").iterdir():
        d.rename(tmp_path / f"old-{d.name}")
    assert run_cli(*base, capsys=capsys)[0] == 0
    second = json.loads((the_run(tmp_path) / "summary.json").read_text())
    assert first["cache"]["model_batches"] > 0
    assert second["cache"]["model_batches"] == 0 and second["cache"]["hits"] > 0
    assert second["best_prompt"] == first["best_prompt"]


def test_show_and_list(base, tmp_path, capsys):
    assert run_cli(*base, capsys=capsys)[0] == 0
    code, out, _ = run_cli("show", str(the_run(tmp_path)), capsys=capsys)
    assert code == 0 and "lineage" in out and "best dev score by step" in out
    hint = next(line for line in out.splitlines() if line.startswith("score another on test: "))
    assert run_cli(*hint.split(": ", 1)[1].split()[1:], capsys=capsys)[0] == 0  # the command it prints runs
    code, out, _ = run_cli("list", "strategies", capsys=capsys)
    assert code == 0 and "paraphrase" in out.split()


@pytest.mark.parametrize("args,needle", [
    (["--task", "nosuchtask"], "unknown task 'nosuchtask'"),
    (["--strategy", "paraphrse"], "did you mean 'paraphrase'"),
    (["--budget", "0"], "must be a positive"),
    (["--budget", "dollars=3"], "unknown limit"),
    (["--set", "paraphrase.rounds=0"], "rounds"),
    (["--set", "paraphrase.nope=1"], "unknown setting"),
    (["--set", "bogus.x=1"], "unknown section"),
    (["--backend", "nosuch"], "unknown backend"),
    (["--set", "seed=notanint"], "seed"),
])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(base, tmp_path, capsys, args, needle):
    code, _, err = run_cli(*base, *args, capsys=capsys)
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("promptopt: error:") and needle in err, err
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_unwritable_run_dir(base, tmp_path, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    os.chmod(ro, 0o500)
    args = [a if a != str(tmp_path / "runs") else str(ro / "runs") for a in base]
    code, _, err = run_cli(*args, capsys=capsys)
    if os.geteuid() == 0:  # root ignores permission bits; use a path under a regular file instead
        args = [a if a != str(ro / "runs") else str(tmp_path / "cache.sqlite" / "runs") for a in args]
        (tmp_path / "cache.sqlite").touch()
        code, _, err = run_cli(*args, capsys=capsys)
    assert code == 2 and "run directory" in err and err.count("\n") == 1


def test_bad_config_file(base, tmp_path, capsys):
    cfg = tmp_path / "c.toml"
    cfg.write_text("task = [unclosed")
    code, _, err = run_cli(*base, "--config", str(cfg), capsys=capsys)
    assert code == 2 and "not valid TOML" in err
    code, _, err = run_cli(*base, "--config", str(tmp_path / "missing.toml"), capsys=capsys)
    assert code == 2 and "does not exist" in err


def test_config_precedence(base, tmp_path, capsys):
    cfg = tmp_path / "c.toml"
    cfg.write_text('seed = 7\nstrategy = "paraphrase"\n[strategy_options]\nrounds = 1\nproposals = 2\n')
    code, _, err = run_cli(*base, "--config", str(cfg), "--seed", "9", "--set", "paraphrase.proposals=3", capsys=capsys)
    assert code == 0, err
    c = json.loads((the_run(tmp_path) / "config.json").read_text())["config"]
    assert c["seed"] == 9 and c["strategy_options"] == {"rounds": 1, "proposals": 3}


def test_resume_errors(tmp_path, capsys):
    code, _, err = run_cli("optimize", "--resume", str(tmp_path / "nope"), capsys=capsys)
    assert code == 2 and "not a run directory" in err


def test_evaluate_prompt(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PROMPTOPT_CACHE_DIR", str(tmp_path))
    code, out, err = run_cli("evaluate", "--task", "demo", "--prompt", "Is it a complaint?", "--backend", "fake",
                             "--model", "m", "--split", "dev", capsys=capsys)
    assert code == 0 and "dev score" in out, err


def test_secret_in_options_is_refused(base, tmp_path, capsys):
    code, _, err = run_cli(*base, "--set", "backend.api_key=sk-live-123", capsys=capsys)
    assert code == 2 and "environment variable" in err and "sk-live-123" not in err


def test_dry_run_prints_the_plan_and_loads_and_writes_nothing(tmp_path, capsys):
    # A model path that does not exist: a real run would fail loading it, a dry run never loads it.
    args = ["optimize", "--task", "demo", "--strategy", "apo", "--backend", "hf", "--model", str(tmp_path / "no-model"),
            "--run-dir", str(tmp_path / "runs"), "--set", f"cache_path={tmp_path / 'cache.sqlite'}",
            "--set", "apo.rounds=2", "--budget", "examples=300,usd=1.5", "--test-limit", "10", "--dry-run"]
    code, out, err = run_cli(*args, capsys=capsys)
    assert code == 0, err
    assert "task       demo (choose: ' other', ' complaint'); train 24, dev 24, test 10 of 30" in out
    assert "strategy   apo: rounds=2, beam_width=4," in out
    assert f"optimizer  hf:{tmp_path / 'no-model'}" in out
    assert "budget     search: examples 300, USD 1.5" in out
    assert "at most 116 more scored examples" in out  # (3 finalists + seed) x 24 dev + 2 x 10 test
    assert list(tmp_path.iterdir()) == []


# Each of these passes build_config: only loading the task, the strategy class or the run dir refuses it.
@pytest.mark.parametrize("extra, message", [
    (["--strategy", "apo", "--optimizer-model", "none"], "strategy APO needs an optimizer model"),
    (["--task", "nope"], "unknown task 'nope'"),
    (["--set", "task.dev_size=3"], "task demo: unknown option 'dev_size'"),
    (["--run-dir", "{tmp}/file/runs"], "cannot create run directory"),
])
def test_dry_run_refuses_what_a_run_would_refuse(base, tmp_path, capsys, extra, message):
    (tmp_path / "file").write_text("not a directory")
    for a in ([], ["--dry-run"]):  # the real run refuses it the same way
        code, out, err = run_cli(*base, *a, *[x.format(tmp=tmp_path) for x in extra], capsys=capsys)
        assert code == 2 and out == ""
        assert err.startswith(f"promptopt: error: {message}") and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "runs").exists()


def test_dry_run_does_not_combine_with_resume(base, tmp_path, capsys):
    assert run_cli(*base, capsys=capsys)[0] == 0
    code, out, err = run_cli("optimize", "--resume", str(the_run(tmp_path)), "--dry-run", capsys=capsys)
    assert code == 2 and err.startswith("promptopt: error: --dry-run plans a new run")


@pytest.mark.parametrize("flags", [["--budget", "5"], ["--set", "paraphrase.rounds=1", "--seed", "3"], ["--no-cache"]])
def test_resume_refuses_flags_it_would_ignore(base, tmp_path, capsys, flags):
    assert run_cli(*base, capsys=capsys)[0] == 0
    d = the_run(tmp_path)
    (d / "summary.json").unlink()  # as if cut off before the final report
    before = (d / "events.jsonl").read_bytes()
    code, out, err = run_cli("optimize", "--resume", str(d), *flags, capsys=capsys)
    assert code == 2 and err.startswith("promptopt: error: --resume continues a run with its recorded config; drop")
    assert all(f in err for f in flags if f.startswith("--"))
    assert (d / "events.jsonl").read_bytes() == before and not (d / "summary.json").exists()
    assert run_cli("optimize", "--resume", str(d), "-q", capsys=capsys)[0] == 0


def test_an_empty_prompt_starts_the_search_from_no_instruction(tmp_path, capsys):
    args = ["optimize", "--task", "demo", "--strategy", "fewshot", "--backend", "fake", "--model", "m", "--prompt", "",
            "--run-dir", str(tmp_path / "runs"), "--set", f"cache_path={tmp_path / 'cache.sqlite'}", "-q",
            "--budget", "200", "--optimizer-model", "none"]
    code, out, err = run_cli(*args, "--dry-run", capsys=capsys)
    assert code == 0 and "seed       ''" in out, err
    code, out, err = run_cli(*args, capsys=capsys)
    assert code == 0, err
    summary = json.loads((the_run(tmp_path) / "summary.json").read_text())
    assert summary["seed_prompt"] == "" and summary["seed_test"] is not None
    assert summary["best_prompt"] == ""  # fewshot searches demos only: the instruction stays empty
