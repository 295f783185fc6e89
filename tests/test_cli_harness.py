"""CLI side of the harness issue on the fake backend: --stop conditions, --json, export, and the progress
line of the final report."""
import json

import pytest

from promptopt.cli import main


def run_cli(*args, capsys):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def base(tmp_path):
    return ["optimize", "--task", "demo", "--strategy", "paraphrase", "--backend", "fake", "--model", "m",
            "--run-dir", tmp_path / "runs", "--set", f"cache_path={tmp_path / 'cache.sqlite'}", "-q",
            "--budget", "2000"]


def runs(tmp_path):
    return sorted((tmp_path / "runs").iterdir()) if (tmp_path / "runs").exists() else []


def test_stop_no_improvement_and_json(base, tmp_path, capsys):
    code, out, err = run_cli(*base, "--stop", "no_improvement=1", "--json", capsys=capsys)
    assert code == 0, err
    summary = json.loads(out)
    assert summary["stop_reason"].startswith("stop: no_improvement=1") and "cache" in summary
    assert summary == json.loads((runs(tmp_path)[0] / "summary.json").read_text())


def test_stop_file_and_score(base, tmp_path, capsys):
    stop = tmp_path / "STOP"
    stop.write_text("")
    code, out, err = run_cli(*base, "--stop", f"file={stop}", "--json", capsys=capsys)
    assert code == 0, err
    assert json.loads(out)["steps"] == 1 and "file=" in json.loads(out)["stop_reason"]
    code, out, err = run_cli(*base, "--stop", "score=0", "--stop", "seconds=600", "--json", capsys=capsys)
    assert code == 0 and json.loads(out)["stop_reason"].startswith("stop: score=0")


@pytest.mark.parametrize("cond", ["no_improvement=x", "later=5", "score"])
def test_bad_stop_is_one_line_exit_2_and_writes_nothing(base, tmp_path, capsys, cond):
    code, out, err = run_cli(*base, "--stop", cond, capsys=capsys)
    assert code == 2 and err.count("\n") == 1 and "--stop" in err
    assert runs(tmp_path) == []


def test_export_formats_and_example(base, tmp_path, capsys):
    code, _, err = run_cli(*base, "--budget", "200", capsys=capsys)
    assert code == 0, err
    (run,) = runs(tmp_path)
    summary = json.loads((run / "summary.json").read_text())
    code, out, err = run_cli("export", run, capsys=capsys)
    assert code == 0, err
    data = json.loads(out)
    assert data["instruction"] == summary["best_prompt"] and data["prompt"] == summary["best_prefix"]
    assert data["rendered"].startswith(summary["best_prefix"]) and data["example"]["input"] in data["rendered"]
    dev_id = data["example"]["id"]
    code, out, _ = run_cli("export", run, "--format", "text", "--example-id", dev_id, capsys=capsys)
    assert code == 0 and summary["best_prefix"] in out and f"example {dev_id}" in out
    pytest.importorskip("yaml")
    target = tmp_path / "best.yaml"
    code, out, _ = run_cli("export", run, "--format", "yaml", "--out", target, capsys=capsys)
    import yaml
    assert code == 0 and yaml.safe_load(target.read_text())["best_id"] == summary["best_id"]
    code, out, err = run_cli("export", run, "--example-id", "nope", "--out", tmp_path / "x.json", capsys=capsys)
    assert code == 2 and "no such example" in err and not (tmp_path / "x.json").exists()
    code, out, err = run_cli("export", tmp_path, capsys=capsys)
    assert code == 2 and err.count("\n") == 1


def test_export_with_demos(base, tmp_path, capsys):
    code, _, err = run_cli(*base, "--budget", "200", "--demos", "2", capsys=capsys)
    assert code == 0, err
    (run,) = runs(tmp_path)
    data = json.loads(run_cli("export", run, capsys=capsys)[1])
    assert len(data["demo_ids"]) == 2 and all(d["text"] in data["prompt"] for d in data["demos"])


def test_export_a_named_candidate_renders_it_as_the_run_did(base, tmp_path, capsys):
    from promptopt.runlog import load_run
    code, _, err = run_cli(*base, "--budget", "200", "--demos", "2", capsys=capsys)
    assert code == 0, err
    (run,) = runs(tmp_path)
    best = json.loads(run_cli("export", run, capsys=capsys)[1])
    same = json.loads(run_cli("export", run, "--candidate", best["best_id"][:8], capsys=capsys)[1])
    assert same["candidate_id"] == best["best_id"] and same["prompt"] == best["prompt"]
    assert same["rendered"] == best["rendered"] and same["scores"] == best["scores"]
    view = load_run(run)
    other = next(cid for cid in view.ranked() if cid != best["best_id"] and view.candidates[cid].get("demos"))
    data = json.loads(run_cli("export", run, "--candidate", other, capsys=capsys)[1])
    assert data["demo_ids"] == view.candidates[other]["demos"] and all(d["text"] in data["prompt"] for d in data["demos"])
    assert data["scores"]["dev"] == round(view.score(other), 6) and data["prompt"].startswith(view.candidates[other]["text"])
    text = run_cli("export", run, "--candidate", other, "--format", "text", capsys=capsys)[1]
    assert text.startswith(f"# candidate {other} of ")
    code, _, err = run_cli("export", run, "--candidate", "nope", capsys=capsys)
    assert code == 2 and "matches no candidate" in err


def test_progress_final_phase_has_its_own_line(base, tmp_path, capsys):
    from promptopt.cli.progress import ProgressBar
    from promptopt.api import optimize
    bar = ProgressBar(2000)
    phases = []
    orig = bar.on_phase

    def spy(run, phase, n):
        phases.append((phase, n))
        orig(run, phase, n)
    bar.on_phase = spy
    optimize(task="demo", strategy="paraphrase", backend="fake", model="m", optimizer_model="m",
             budget={"max_examples": 200}, run_dir=str(tmp_path / "runs"), cache=False, callbacks=[bar])
    bar.close()
    assert phases[-1][0] == "test" and {p for p, _ in phases} <= {"final", "test"} and all(n > 0 for _, n in phases)
    assert bar._bar.total == bar._bar.n == phases[-1][1]  # the test line counts what it scores


def test_help_and_dry_run_say_what_the_final_report_costs(base, tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["optimize", "--help"])
    out = capsys.readouterr().out
    assert "final report" in " ".join(out.split()) and "--stop" in out and "--json" in out
    code, out, _ = run_cli(*base, "--dry-run", capsys=capsys)
    assert code == 0 and "more scored examples" in out


def test_list_describes_and_says_who_needs_an_optimizer(capsys):
    code, out, _ = run_cli("list", "strategies", capsys=capsys)
    lines = {line.split()[0]: line for line in out.splitlines()}
    assert code == 0 and "optimizer LLM" in lines["apo"] and "no optimizer LLM" in lines["fewshot"]
    assert "ProTeGi" in lines["apo"]
    code, out, _ = run_cli("list", "tasks", capsys=capsys)
    assert code == 0 and any(line.startswith("demo ") and len(line.split()) > 1 for line in out.splitlines())


def test_optimize_without_task_or_strategy_says_what_it_chose(tmp_path, capsys):
    code, out, err = run_cli("optimize", "--backend", "fake", "--model", "m", "--run-dir", tmp_path / "runs",
                             "--dry-run", capsys=capsys)
    assert code == 0 and "used the defaults --task demo and --strategy paraphrase" in err


def _ctrl_c_run(tmp_path, presses_at):
    """`promptopt optimize` on a slow fake backend with SIGINT sent to this process at the given times."""
    import os
    import signal
    import threading
    from promptopt.cli import main
    timers = [threading.Timer(t, os.kill, (os.getpid(), signal.SIGINT)) for t in presses_at]
    for t in timers:
        t.start()
    try:
        code = main(["optimize", "--task", "demo", "--strategy", "paraphrase", "--backend", "fake", "--model", "m",
                     "--set", "backend.delay=0.3", "--budget", "examples=100000", "--run-dir", str(tmp_path),
                     "--no-cache", "-q"])
    finally:
        for t in timers:
            t.cancel()
    (run_dir,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    return code, run_dir


def test_first_ctrl_c_ends_the_search_with_the_report_and_says_so(tmp_path, capsys):
    import json
    code, run_dir = _ctrl_c_run(tmp_path, [1.0])
    err = capsys.readouterr().err
    assert code == 130 and "the search ends when this step does; then the final report" in err
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["stop_reason"] == "stop: Ctrl-C" and summary["best_test"] is not None and "partial" not in summary


def test_second_ctrl_c_writes_a_partial_summary_that_show_marks_and_resume_goes_on(tmp_path, capsys):
    import json
    from promptopt.cli import main
    code, run_dir = _ctrl_c_run(tmp_path, [1.0, 1.2])
    err = capsys.readouterr().err
    assert code == 130 and "writing a partial summary" in err and "Traceback" not in err
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["partial"] is True and summary["best_test"] is None and summary["stop_reason"] == "interrupted"
    assert main(["show", str(run_dir)]) == 0
    assert "partial: Ctrl-C skipped the final report" in capsys.readouterr().out
    # the interrupted run goes on: stopped again at once by a score condition, it reports in full
    assert main(["optimize", "--resume", str(run_dir), "--stop", "score=0", "-q"]) == 0
    again = json.loads((run_dir / "summary.json").read_text())
    assert "partial" not in again and again["best_test"] is not None and (run_dir / "summary.stopped-1.json").exists()
