"""A new user's first hour (issue 29's frictions): what a run says about its budget, its stop and its counters,
`show` without a run, progress bars, the answer warnings in optimize's table, the plan (fake backend, fast tier)."""
from __future__ import annotations

import io
import json
import os
import re
import threading
from pathlib import Path

import pytest
from rich.console import Console

import promptopt
from promptopt.cli import main
from promptopt.backends.fake import FakeBackend
from promptopt.errors import ConfigError
from promptopt.loop import Report
from promptopt.registry import register_backend

FAKE = dict(backend="fake", model="m", optimizer_model=None, cache=False)


def run_cli(*args: str, capsys) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def printed(report: Report) -> str:
    from promptopt.cli.render import print_report
    buf = io.StringIO()
    print_report(report, Console(file=buf, width=400))
    return buf.getvalue()


# -- friction 2: optimize(budget=...) in Python takes what the CLI takes --

def test_budget_as_an_int_or_the_clis_names(tmp_path: Path) -> None:
    rep = promptopt.optimize("demo", "hill_climb", budget=40, run_dir=str(tmp_path / "a"), progress=False, **FAKE)
    assert 0 < rep.search["examples"] <= 40
    config = json.loads((Path(rep.run_dir) / "config.json").read_text())["config"]
    assert config["budget"]["max_examples"] == 40
    rep = promptopt.optimize("demo", "hill_climb", budget={"examples": 30, "calls": 5}, run_dir=str(tmp_path / "b"),
                             progress=False, **FAKE)
    config = json.loads((Path(rep.run_dir) / "config.json").read_text())["config"]
    assert config["budget"]["max_examples"] == 30 and config["budget"]["max_optimizer_calls"] == 5


@pytest.mark.parametrize("budget, says", [({"exampels": 5}, "use examples, calls, tokens, seconds, usd, or max_examples"),
                                          ({"examples": 5, "max_examples": 6}, "the same limit"),
                                          ("100", "a number of scored examples"), (True, "not bool")])
def test_a_wrong_budget_is_one_line_that_names_the_right_keys(tmp_path: Path, budget, says) -> None:
    with pytest.raises(ConfigError, match=re.escape(says)):
        promptopt.optimize("demo", "hill_climb", budget=budget, run_dir=str(tmp_path), progress=False, **FAKE)
    assert not (tmp_path / "x").exists() and not list(tmp_path.iterdir())  # refused before a run dir


# -- frictions 3, 4, 5, 6: the final table says what the budget capped, why the search ended, one name a counter --

def test_the_table_and_summary_keep_search_and_final_report_apart(tmp_path: Path, capsys) -> None:
    code, out, err = run_cli("optimize", "--task", "demo", "--strategy", "hill_climb", "--backend", "fake", "--model",
                             "m", "--optimizer-model", "none", "--budget", "100", "--no-cache", "-q",
                             "--run-dir", str(tmp_path / "runs"), capsys=capsys)
    assert code == 0, err
    (run,) = (tmp_path / "runs").iterdir()
    summary = json.loads((run / "summary.json").read_text())
    search, final = summary["search"]["examples"], summary["final"]["examples"]
    assert 0 < search <= 100 < search + final  # the final report scores on top of the budget, and says how much
    assert f"scored examples: search {search} (what --budget caps) + final report {final}" in " ".join(out.split())
    # the short seed prompt has few phrases to edit: the stop reason says so instead of "strategy finished"
    assert summary["stop_reason"].startswith("strategy finished: no new best for 2 steps in a row (patience=2)")
    assert "the edits ran out" in summary["stop_reason"]
    # one name per counter: model requests (sequences computed), model batches (this session), optimizer calls
    assert summary["cache"]["model_batches"] > 0 and "model_calls" not in summary["cache"]
    requests = summary["target_usage"]["calls"] + summary["optimizer_usage"]["calls"]
    flat = " ".join(out.split())
    assert f"model requests {requests:,} · model batches {summary['cache']['model_batches']} (this session)" in flat
    assert "model calls" not in flat


def test_fewshot_says_its_selection_ended_before_the_budget(tmp_path: Path) -> None:
    rep = promptopt.optimize("demo", "fewshot", budget=200, run_dir=str(tmp_path), progress=False, **FAKE)
    found = re.fullmatch(r"strategy finished: successive halving over (\d+) candidates ended after (\d+) of its "
                         r"200 examples", rep.stop_reason)
    assert found and int(found[2]) == rep.search["examples"] < 200, rep.stop_reason


def test_a_stop_reason_is_printed_with_one_stop(tmp_path: Path) -> None:
    from promptopt.callbacks import NoImprovement
    rep = promptopt.optimize("demo", "hill_climb", budget=400, run_dir=str(tmp_path), progress=False,
                             callbacks=[NoImprovement(1)], **FAKE)
    assert rep.stop_reason.startswith("stop: no_improvement=1")  # as recorded: --resume reads the prefix
    text = printed(rep)
    assert "stop: no_improvement=1" in text and "stop: stop:" not in text


def test_old_runs_summary_names_still_read() -> None:
    from promptopt.cli.render import cache_batches, stop_text
    assert cache_batches({"model_calls": 7}) == 7 and cache_batches({"model_batches": 3, "model_calls": 7}) == 3
    assert stop_text("stop: Ctrl-C") == "Ctrl-C" and stop_text("budget: examples") == "budget: examples"


# -- friction 7: show (and report) without a run read the latest --

def test_show_without_a_run_shows_the_latest(tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli("show", capsys=capsys)
    assert code == 2 and err.count("\n") == 1 and "no run under runs/" in err
    old = promptopt.optimize("demo", "hill_climb", budget=40, run_dir="runs", progress=False, **FAKE)
    new = promptopt.optimize("demo", "hill_climb", budget=50, run_dir="runs", progress=False, **FAKE)
    os.utime(Path(old.run_dir) / "config.json", (1, 1))  # started long ago
    code, out, err = run_cli("show", capsys=capsys)
    assert code == 0 and "(the latest run" in err and Path(new.run_dir).name in err and "top candidates" in out
    flat = " ".join(out.split())
    assert f"scored examples: search {new.search['examples']} (what --budget caps) + final report " \
           f"{new.final['examples']}" in flat and f"stop: {new.stop_reason}" in flat
    with pytest.raises(SystemExit):
        main(["show", "--help"])
    helptext = " ".join(capsys.readouterr().out.split())
    assert "default: the latest run under runs/" in helptext and "how many top candidates" in helptext


# -- friction 9 and the Python API's progress: bars are closed, not cleared --

def test_progress_bars_end_on_their_final_count(tmp_path: Path) -> None:
    from promptopt.progress import ProgressBar
    buf = io.StringIO()
    bar = ProgressBar(100, file=buf)
    rep = promptopt.optimize("demo", "hill_climb", budget=100, run_dir=str(tmp_path), progress=False,
                             callbacks=[bar], **FAKE)
    bar.close()
    # what a captured log shows last on each line: every bar, with its final count (not cleared at 30/60)
    lines = [seg for line in buf.getvalue().split("\n") for seg in [line.split("\r")[-1]] if seg.strip()]
    assert lines[0].startswith("optimizing") and f"{rep.search['examples']}ex" in lines[0].replace(" ", "")
    assert lines[-1].startswith("final: best and seed on test")
    for line in lines[1:]:
        done, total = re.search(r"(\d+)/(\d+)", line).groups()
        assert done == total, line


def test_optimize_shows_progress_when_asked(tmp_path: Path, capsys) -> None:
    promptopt.optimize("demo", "hill_climb", budget=40, run_dir=str(tmp_path / "a"), progress=True, **FAKE)
    assert "optimizing" in capsys.readouterr().err
    promptopt.optimize("demo", "hill_climb", budget=40, run_dir=str(tmp_path / "b"), **FAKE)  # not a terminal
    assert "optimizing" not in capsys.readouterr().err


def test_the_dev_by_step_legend_covers_no_point() -> None:
    pytest.importorskip("matplotlib")
    from promptopt.cli.plots import dev_by_step_figure
    # points in every corner of the axes, where a legend inside them would sit
    scores = [(s, y) for s in range(1, 11) for y in (0.0, 0.5, 1.0)]
    fig = dev_by_step_figure(scores, [(1, 0.5), (4, 1.0)])
    fig.canvas.draw()
    (legend,) = fig.legends
    box = legend.get_window_extent()
    ax = fig.axes[0]
    corners = ax.transData.transform(scores)
    assert not any(box.contains(x, y) for x, y in corners)
    assert not box.overlaps(ax.get_window_extent())
    import matplotlib.pyplot as plt
    plt.close(fig)


# -- frictions 11 and 12: optimize's table warns about one answer and empty answers --

def test_empty_answers_are_warned_about() -> None:
    from promptopt.cli.predictions import empty_warning, prediction_lines
    answers = [{"example_id": str(i), "output": "" if i < 4 else str(i), "score": 0.0} for i in range(11)]
    line = empty_warning(answers)
    assert line is not None and line.startswith("36% of the answers (4 of 11) are empty ('')") and "stop" in line
    assert prediction_lines(answers)[1] == line
    assert empty_warning(answers[3:]) is None  # 1 of 8: not many
    chose = [{"example_id": "a", "output": "", "score": 1.0, "option_logprobs": [-1.0, -2.0]}] * 5
    assert empty_warning(chose) is None  # a chosen option is never "empty"


@register_backend("first_hour_empty")
class EmptyReplies(FakeBackend):
    """What a stop string that matches at the start of every reply gives: '' (friction 11's spec file)."""

    def __init__(self, model: str = "fake", **options: object):
        super().__init__(model, replies=lambda req: "", **options)


def test_the_final_table_carries_the_answer_warnings(tmp_path: Path) -> None:
    from promptopt.task.from_examples import make_task
    rows = [{"q": f"what is {i} plus 1?", "a": str(i + 1)} for i in range(30)]
    task = make_task(rows, template="{prompt}\n\nQ: {q}\nA:", input_key="q", target_key="a", stop=["\n"],
                     prompt="Answer with a number.")
    rep = promptopt.optimize(task, "hill_climb", budget=40, run_dir=str(tmp_path), progress=False,
                             **{**FAKE, "backend": "first_hour_empty"})
    text = " ".join(printed(rep).split())
    # friction 12: the one-answer warning, and friction 11: the empty-answer one, both in optimize's table
    assert "warning: the best prompt's answers: the model answered '' on 100% of examples" in text
    assert "100% of the answers" in text and "are empty ('')" in text


# -- friction 10 --

def test_list_strategies_prints_whole_first_sentences(capsys) -> None:
    code, out, _ = run_cli("list", "strategies", capsys=capsys)
    assert code == 0
    for line in out.splitlines():
        assert line.rstrip().endswith((".", ")")), line  # never cut where the docstring's first line wraps


def test_the_hub_probe_gives_up_after_its_timeout_even_in_a_name_lookup(monkeypatch) -> None:
    import socket

    from promptopt.task import data
    release = threading.Event()

    def hung_lookup(*args, **kwargs):  # a resolver that does not answer: socket timeouts do not bound it
        release.wait()
        raise OSError("gave up")
    monkeypatch.setattr(socket, "create_connection", hung_lookup)
    monkeypatch.setattr(data, "_hub_up", None)
    try:
        assert data.hub_reachable(timeout=0.05) is False
    finally:
        release.set()


def test_the_plan_says_the_budget_is_a_cap_and_the_final_report_is_outside_it(capsys) -> None:
    code, out, _ = run_cli("optimize", "--task", "demo", "--strategy", "hill_climb", "--optimizer-model", "none",
                           "--budget", "100", "--dry-run", capsys=capsys)
    assert code == 0
    assert "budget     search: examples 100\n" in out
    assert "ends       at the first budget limit spent, or sooner when the strategy finishes (its own steps=10, " \
           "patience=2)" in out
    final = int(re.search(r"final      at most (\d+) more scored examples, outside the budget", out)[1])
    assert f"total      at most {100 + final} scored examples" in out
    with pytest.raises(SystemExit):
        main(["optimize", "--help"])
    assert "caps the search, not the final report" in " ".join(capsys.readouterr().out.split())


# -- friction 14: mipro without an optimizer model --

def test_mipro_without_a_model_says_it_edits_words_or_keeps_the_instruction(tmp_path: Path, caplog) -> None:
    with caplog.at_level("WARNING", logger="promptopt"):
        promptopt.optimize("demo", "mipro", budget=60, run_dir=str(tmp_path / "a"), progress=False, **FAKE)
    assert "words deleted or swapped" in caplog.text and "mipro.instruction_edits=false" in caplog.text
    caplog.clear()
    rep = promptopt.optimize("demo", "mipro", budget=400, run_dir=str(tmp_path / "b"), progress=False,
                             strategy_options={"instruction_edits": False, "trials": 3}, **FAKE)
    from promptopt.runlog import load_run
    texts = {c["text"] for c in load_run(Path(rep.run_dir)).candidates.values()}
    assert texts == {rep.seed_prompt} and "words deleted" not in caplog.text
    assert rep.stop_reason == "strategy finished: all 3 trials made (trials=3)"


def test_an_unknown_budget_setting_names_the_limits(capsys) -> None:
    code, _, err = run_cli("optimize", "--task", "demo", "--strategy", "hill_climb", "--optimizer-model", "none",
                           "--set", "budget.examples=100", "--dry-run", capsys=capsys)
    assert code == 2 and err.count("\n") == 1
    assert "budget.examples: unknown setting (budget limits: max_examples, max_optimizer_calls" in err


def test_a_config_without_backend_options_loads_no_backend_module() -> None:
    """So a dry run without data gives its error line at once, not after importing torch (5-20 s)."""
    import subprocess
    import sys
    code = ("import sys; from promptopt.config import build_config; "
            "build_config({'task': 'demo', 'strategy': 'hill_climb', 'optimizer': None}); "
            "build_config({'task': 'demo', 'strategy': 'paraphrase'}); "
            "print(sorted(m for m in ('torch', 'transformers', 'promptopt.backends.hf') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stderr
    from promptopt.config import build_config
    with pytest.raises(ConfigError, match="target backend hf option batch_size: Input should be greater than 0"):
        build_config({"task": "demo", "strategy": "hill_climb", "target": {"options": {"batch_size": -4}}})
    with pytest.raises(ConfigError, match="unknown backend 'hff'"):  # a wrong name is still caught at once
        build_config({"task": "demo", "strategy": "hill_climb", "target": {"backend": "hff"}})
