"""MLflow tracking (promptopt/integrations/mlflow_tracking.py), for real against a local file store: a short
optimize with the fake backend, read back with MLflow's own client. Skips without the mlflow extra,
except in CI, which installs it (Makefile EXTRAS) and must run these."""
from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from promptopt.cli import main
from promptopt.runlog import load_run

try:
    import mlflow  # noqa: F401
    from mlflow.tracking import MlflowClient
except ImportError:  # pragma: no cover - the extra is missing
    if os.environ.get("CI") == "true":
        raise
    pytest.skip("mlflow is not installed: pip install 'promptopt[mlflow]'", allow_module_level=True)

FAKE = ["optimize", "--backend", "fake", "--model", "m", "--optimizer-model", "none", "--strategy", "hill_climb",
        "--task", "demo", "--no-cache", "-q"]


def _client(store: Path) -> MlflowClient:
    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    return MlflowClient(store.resolve().as_uri())


def _runs(store: Path) -> list:
    client = _client(store)
    exp = client.get_experiment_by_name("promptopt")
    assert exp is not None, "no promptopt experiment in the store"
    return client.search_runs([exp.experiment_id])


def _only_run_dir(root: Path) -> Path:
    dirs = [p for p in root.iterdir() if p.is_dir()]
    assert len(dirs) == 1, dirs
    return dirs[0]


def test_cli_run_logged_to_a_file_store(tmp_path, capsys):
    store, runs = tmp_path / "mlruns", tmp_path / "runs"
    assert main([*FAKE, "--budget", "200", "--run-dir", str(runs), "--mlflow", str(store)]) == 0
    run_dir = _only_run_dir(runs)
    summary = json.loads((run_dir / "summary.json").read_text())
    view = load_run(run_dir)

    [mrun] = _runs(store)
    client = _client(store)
    assert mrun.info.status == "FINISHED"
    tags, params, metrics = mrun.data.tags, mrun.data.params, mrun.data.metrics
    assert tags["promptopt.run_dir"] == str(run_dir.resolve())
    assert tags["promptopt.best_id"] == summary["best_id"]
    # params: the resolved RunConfig, flattened
    assert params["task"] == "demo" and params["strategy"] == "hill_climb"
    assert params["target.backend"] == "fake" and params["target.model"] == "m"
    assert params["budget.max_examples"] == "200" and params["seed"] == "0" and params["optimizer"] == "None"
    # per-step metrics
    best = client.get_metric_history(mrun.info.run_id, "best_dev")
    scored = client.get_metric_history(mrun.info.run_id, "scored_examples")
    assert [m.step for m in best] == sorted(m.step for m in best) and len(best) >= 1
    assert all(a.value <= b.value for a, b in zip(best, best[1:]))  # best so far never falls
    assert [m.value for m in scored] == sorted(m.value for m in scored) and scored[-1].value <= 200
    assert client.get_metric_history(mrun.info.run_id, "optimizer_calls")[-1].value == 0
    assert metrics["final.best_dev"] == pytest.approx(summary["best_dev"])
    assert metrics["final.best_test"] == pytest.approx(summary["best_test"])
    # artifacts
    top = {a.path for a in client.list_artifacts(mrun.info.run_id)}
    assert {"candidates.csv", "candidates.json", "config.json", "best"} <= top
    assert {a.path for a in client.list_artifacts(mrun.info.run_id, "best")} == \
        {"best/prompt.txt", "best/prefix.txt", "best/summary.json"}
    dl = Path(client.download_artifacts(mrun.info.run_id, "", str(tmp_path / "dl")))
    rows = list(csv.DictReader(io.StringIO((dl / "candidates.csv").read_text())))
    assert {r["id"] for r in rows} == set(view.candidates)
    assert set(rows[0]) >= {"id", "origin", "dev", "n", "demos", "text"}
    assert rows[0]["id"] == summary["best_id"] or float(rows[0]["dev"]) >= summary["best_dev"] - 1e-6
    by_id = {r["id"]: r for r in rows}
    assert by_id[summary["best_id"]]["text"] == summary["best_prompt"]
    assert (dl / "best" / "prompt.txt").read_text() == summary["best_prompt"]
    assert json.loads((dl / "best" / "summary.json").read_text())["best_id"] == summary["best_id"]
    assert len(json.loads((dl / "candidates.json").read_text())["candidates"]) == len(view.candidates)


@pytest.mark.parametrize("make", ["file", "under_file", "foreign_dir"])
def test_unwritable_uri_is_one_line_exit_2_before_the_run(tmp_path, capsys, make):
    runs = tmp_path / "runs"
    if make == "file":
        target = tmp_path / "store.txt"
        target.write_text("not a store")
    elif make == "under_file":
        (tmp_path / "plain").write_text("x")
        target = tmp_path / "plain" / "mlruns"
    else:
        target = tmp_path / "mydocs"
        target.mkdir()
        (target / "notes.txt").write_text("mine")
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    assert main([*FAKE, "--budget", "50", "--run-dir", str(runs), "--mlflow", str(target)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("promptopt: error: --mlflow"), err
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before  # nothing written, no run dir


def _user_sqlite(path: Path) -> Path:
    import sqlite3
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE notes (body TEXT)")
        db.execute("INSERT INTO notes VALUES ('mine')")
    return path


@pytest.mark.parametrize("uri,message", [
    (lambda t: f"sqlite:///{_user_sqlite(t / 'mine.db')}", "is not an MLflow database, so it is left alone"),
    (lambda t: f"sqlite:///{t / 'notes.txt'}", "is not an MLflow database, so it is left alone"),
    (lambda t: "sqlite:///:memory:", "an in-memory database would lose the run"),
    (lambda t: "sqlite://mlflow.db", "name a database file, as in sqlite:///mlflow.db (three slashes"),
    (lambda t: "gopher://x", "unsupported scheme 'gopher'"),
    (lambda t: "", "the URI is empty"),
    (lambda t: "databricks", "--mlflow databricks: the tracking store does not answer"),  # not a ./databricks folder
    (lambda t: "http://bob:s3cret@127.0.0.1:9/", "http://bob:***@127.0.0.1:9/: the tracking store does not answer"),
])
def test_every_uri_is_checked_before_the_run_and_no_password_is_shown(tmp_path, capsys, monkeypatch, uri, message):
    """Issue 29 class 6: a user's own SQLite file or a text file, an unknown scheme, an empty URI and an
    unreachable server are each one line, exit 2, before any run dir (and nothing is written to the
    user's file, nor to ./mlruns); a password in the URI is never printed."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes.txt").write_text("my notes\n")
    text = uri(tmp_path)
    before = {p.relative_to(tmp_path): p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    assert main([*FAKE, "--budget", "50", "--run-dir", str(tmp_path / "runs"), "--mlflow", text]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0] and "s3cret" not in err[0], err
    after = {p.relative_to(tmp_path): p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    assert after == before and not (tmp_path / "runs").exists() and not (tmp_path / "mlruns").exists()


def test_an_existing_mlflow_sqlite_store_is_used(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # MLflow puts a SQLite store's artifacts in ./mlruns
    db = tmp_path / "mlflow.db"
    assert main([*FAKE, "--budget", "50", "--run-dir", str(tmp_path / "runs"), "--mlflow", f"sqlite:///{db}"]) == 0
    assert main([*FAKE, "--budget", "50", "--run-dir", str(tmp_path / "runs"), "--mlflow", f"sqlite:///{db}"]) == 0
    client = MlflowClient(f"sqlite:///{db}")
    assert len(client.search_runs([client.get_experiment_by_name("promptopt").experiment_id])) == 2


def test_dry_run_names_the_store_and_writes_nothing(tmp_path, capsys):
    store = tmp_path / "mlruns"
    assert main([*FAKE, "--run-dir", str(tmp_path / "runs"), "--dry-run", "--mlflow", str(store)]) == 0
    assert f"mlflow: {store.resolve().as_uri()}" in capsys.readouterr().out
    assert not store.exists() and not (tmp_path / "runs").exists()


def test_bad_task_leaves_no_mlflow_run(tmp_path, capsys):
    store = tmp_path / "mlruns"
    args = [*FAKE, "--run-dir", str(tmp_path / "runs"), "--mlflow", str(store)]
    args[args.index("demo")] = "no_such_task"
    assert main(args) == 2
    assert not store.exists()


def test_callback_object_from_python(tmp_path):
    from promptopt import optimize
    from promptopt.integrations.mlflow_tracking import MlflowTracker
    store = tmp_path / "store"
    report = optimize(task="demo", strategy="hill_climb", backend="fake", model="m", optimizer_model=None,
                      budget={"max_examples": 120}, run_dir=str(tmp_path / "runs"), cache=False,
                      callbacks=[MlflowTracker(store, experiment="from-python", run_name="py")])
    client = _client(store)
    [mrun] = client.search_runs([client.get_experiment_by_name("from-python").experiment_id])
    assert mrun.info.run_name == "py" and mrun.info.status == "FINISHED"
    assert mrun.data.metrics["final.best_dev"] == pytest.approx(round(report.best_dev, 6))
    prompt = Path(client.download_artifacts(mrun.info.run_id, "best/prompt.txt", str(tmp_path / "dl")))
    assert prompt.read_text() == report.best_prompt


def test_importing_promptopt_does_not_import_mlflow():
    code = ("import sys, promptopt, promptopt.api, promptopt.cli, promptopt.cli.commands, promptopt.callbacks; "
            "sys.exit(1 if 'mlflow' in sys.modules else 0)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_python_mlflow_uri_stopped_run_is_killed_and_resume_continues_it(tmp_path):
    from promptopt import optimize
    from promptopt.callbacks import Callback
    from promptopt.errors import RunStopped

    class Boom(Callback):
        def on_step_end(self, run):
            if run.step == 2 and not run.replaying:
                raise RuntimeError("harness lost its GPU")

    store, runs = tmp_path / "mlruns", tmp_path / "runs"
    common = dict(task="demo", strategy="hill_climb", backend="fake", model="m", optimizer_model=None,
                  budget={"max_examples": 200}, run_dir=str(runs), cache=False)
    with pytest.raises(RunStopped, match="harness lost its GPU"):
        optimize(**common, callbacks=[Boom()], mlflow=str(store))
    [mrun] = _runs(store)
    assert mrun.info.status == "KILLED" and "harness lost its GPU" in mrun.data.tags["promptopt.stop"]
    client = _client(store)
    steps_before = [m.step for m in client.get_metric_history(mrun.info.run_id, "best_dev")]
    assert steps_before  # the steps before the failure are logged

    report = optimize(resume=str(_only_run_dir(runs)), mlflow=str(store))
    [again] = _runs(store)  # the same MLflow run, continued
    assert again.info.run_id == mrun.info.run_id and again.info.status == "FINISHED"
    steps = [m.step for m in client.get_metric_history(mrun.info.run_id, "best_dev")]
    assert len(steps) == len(set(steps)) and steps[:len(steps_before)] == steps_before  # replay logs nothing twice
    assert again.data.metrics["final.best_dev"] == pytest.approx(round(report.best_dev, 6))
