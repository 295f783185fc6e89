"""The public ask/tell Study: the user's loop scores; log, budget, resume and report are optimize's (fast tier)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

import promptopt
from promptopt import Result
from promptopt.errors import PromptOptError
from promptopt.harness.program import EvaluatorError

from test_program import _events, _opt, _program, overlap

SETTINGS = dict(optimizer_model=None, budget={"max_examples": 120}, cache=False)


def _drive(study, scored: list, stop_after: int | None = None):
    while (trial := study.ask()) is not None:
        scored.extend((json.dumps(sorted(i.components.items())), x) for i in trial.items for x in i.example_ids)
        study.tell(trial, [overlap(i.components, i.examples) for i in trial.items])
        if stop_after is not None and trial.number >= stop_after:
            study.close()
            return None
    return study.report


def test_a_study_driven_by_hand_finds_what_optimize_finds(tmp_path):
    expected = _opt(_program(), tmp_path / "a")
    study = promptopt.Study(_program(None), "hill_climb", run_dir=str(tmp_path / "b"), **SETTINGS)
    report = _drive(study, [])
    for k in ("best_id", "best_dev", "best_test", "seed_test", "steps", "candidates", "best_components"):
        assert getattr(report, k) == getattr(expected, k), k
    assert (Path(study.run_dir) / "summary.json").is_file()
    assert [e["type"] for e in _events(study.run_dir) if e["type"] in ("candidate", "eval")] == \
        [e["type"] for e in _events(expected.run_dir) if e["type"] in ("candidate", "eval")]


def test_a_closed_study_resumes_without_asking_again_for_logged_results(tmp_path):
    full = _drive(promptopt.Study(_program(None), "hill_climb", run_dir=str(tmp_path / "a"), **SETTINGS), [])
    first: list = []
    study = promptopt.Study(_program(None), "hill_climb", run_dir=str(tmp_path / "b"), **SETTINGS)
    assert _drive(study, first, stop_after=2) is None
    again: list = []
    resumed = promptopt.Study(_program(None), "hill_climb", resume=study.run_dir)
    report = _drive(resumed, again)
    assert first and not set(first) & set(again)
    assert (report.best_id, report.best_dev, report.best_test) == (full.best_id, full.best_dev, full.best_test)


def test_bad_results_are_refused_naming_the_example_and_the_trial_stays_open(tmp_path):
    study = promptopt.Study(_program(None), "hill_climb", run_dir=str(tmp_path), **SETTINGS)
    trial = study.ask()
    item = trial.items[0]
    with pytest.raises(EvaluatorError, match=f"example {item.example_ids[0]}: the evaluator's score is nan"):
        study.tell(trial, [[Result(float("nan"))] * len(item.examples)])
    with pytest.raises(EvaluatorError, match="returned 1 results for 16 examples"):
        study.tell(trial, [[Result(1.0)]])
    with pytest.raises(PromptOptError, match="tell\\(\\) the results of trial 1 first"):
        study.ask()
    study.tell(trial, [overlap(i.components, i.examples) for i in trial.items])
    assert study.ask().number == 2
    study.close()


def test_optimize_refuses_a_program_without_an_evaluator_before_any_run_dir(tmp_path):
    with pytest.raises(promptopt.PromptOptError, match="no evaluator: pass evaluate=.*promptopt.Study"):
        _opt(_program(None), tmp_path)
    assert not (tmp_path / "runs").exists()
