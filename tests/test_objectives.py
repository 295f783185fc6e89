"""Several objectives (promptopt/measure/objectives.py): the non-dominated sort, config validation, the front in
summary.json, `show` and `report`, and the scalarization, on the fake backend."""
import json
import math
from pathlib import Path

import pytest

from promptopt.cli import main
from promptopt.config import build_config
from promptopt.errors import ConfigError
from promptopt.measure.objectives import dominates, non_dominated_sort, pareto_front


def test_non_dominated_sort_fronts_and_directions():
    signs = [1, -1]  # maximize task, minimize tokens
    pts = [(0.9, 50), (0.8, 10), (0.9, 60), (0.7, 10), (0.8, 10), (0.95, 100)]
    fronts = non_dominated_sort(pts, signs)
    assert fronts[0] == [0, 1, 4, 5]  # equal points share a front; input order kept
    assert fronts[1] == [2, 3]
    assert sorted(i for f in fronts for i in f) == list(range(len(pts)))
    assert dominates((0.9, 50), (0.9, 60), signs) and not dominates((0.9, 50), (0.9, 50), signs)
    assert pareto_front([(math.nan, 1), (0.1, 1)], signs) == [1]  # unknown is worst
    assert pareto_front([], signs) == []


@pytest.mark.parametrize("data, msg", [
    ({"objectives": ["task", "bogus"]}, "unknown objective 'bogus'"),
    ({"objectives": ["prompt_tokens"]}, "must include task"),
    ({"objectives": ["task"], "objective_weights": {"usd": 1}}, "not among the objectives"),
    ({"objectives": ["task", "usd"], "objective_weights": {"usd": -1}}, ">= 0"),
])
def test_bad_objectives_are_a_config_error(data, msg):
    with pytest.raises(ConfigError, match=msg):
        build_config({"target": {"backend": "fake"}, **data})


def run_cli(*args, capsys):
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def base(tmp_path):
    return ["optimize", "--task", "demo", "--strategy", "paraphrase", "--backend", "fake", "--model", "m",
            "--run-dir", str(tmp_path / "runs"), "--set", f"cache_path={tmp_path / 'cache.sqlite'}", "-q",
            "--budget", "300", "--set", "final_top_k=6"]


def the_run(tmp_path) -> Path:
    (d,) = [p for p in (tmp_path / "runs").iterdir()]
    return d


def test_unknown_objective_on_the_cli_is_one_line_exit_2(base, tmp_path, capsys):
    code, out, err = run_cli(*base, "--objectives", "task,promt_tokens", capsys=capsys)
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and "unknown objective 'promt_tokens'" in err
    assert not (tmp_path / "runs").exists() or not list((tmp_path / "runs").iterdir())


def test_default_run_has_no_front(base, tmp_path, capsys):
    assert run_cli(*base, capsys=capsys)[0] == 0
    summary = json.loads((the_run(tmp_path) / "summary.json").read_text())
    assert "objectives" not in summary


def test_front_in_summary_show_and_report(base, tmp_path, capsys):
    code, out, err = run_cli(*base, "--objectives", "task,prompt_tokens", capsys=capsys)
    assert code == 0, err
    d = the_run(tmp_path)
    summary = json.loads((d / "summary.json").read_text())
    obj = summary["objectives"]
    assert obj["names"] == ["task", "prompt_tokens"] and obj["token_counter"] == "whitespace"
    points = {p["id"]: p for p in obj["points"]}
    front = [points[i] for i in obj["front"]]
    assert front and all(p["front"] and p["rank"] == 0 for p in front)
    for p in points.values():  # nothing on the front is dominated by a finalist
        if p["front"]:
            assert not any(q["task"] >= p["task"] and q["prompt_tokens"] <= p["prompt_tokens"]
                           and (q["task"], q["prompt_tokens"]) != (p["task"], p["prompt_tokens"]) for q in points.values())
    for p in points.values():  # whitespace tokens of the prompt text (no demos here)
        assert p["prompt_tokens"] == len(p["text"].split())
    # The rule: the front member with the best task score, which is the best task score overall.
    assert obj["chosen"] == summary["best_id"] == max(front, key=lambda p: p["task"])["id"]
    assert summary["best_dev"] == pytest.approx(max(p["task"] for p in points.values()))

    code, out, err = run_cli("show", str(d), capsys=capsys)
    assert code == 0, err
    assert "Pareto front of the finalists" in out and "prompt_tokens" in out and "chosen" in out

    pytest.importorskip("matplotlib")
    code, out, err = run_cli("report", str(d), capsys=capsys)
    assert code == 0, err
    html = (d / "report.html").read_text()
    assert 'id="pareto-front"' in html and "report_front.png" in html and "data:image/png;base64," in html
    assert (d / "report_front.png").stat().st_size > 1000


def test_weights_choose_by_the_scalarization(base, tmp_path, capsys):
    code, out, err = run_cli(*base, "--objectives", "task,prompt_tokens", "--set",
                             "objective_weights.prompt_tokens=1", capsys=capsys)
    assert code == 0, err
    summary = json.loads((the_run(tmp_path) / "summary.json").read_text())
    obj = summary["objectives"]
    assert obj["weights"] == {"prompt_tokens": 1.0} and obj["rule"].startswith("scalarization")
    best = max(obj["points"], key=lambda p: p["task"] - p["prompt_tokens"])
    assert summary["best_id"] == best["id"]
    assert best["prompt_tokens"] == min(p["prompt_tokens"] for p in obj["points"])  # 1 per token: the shortest


def test_population_strategy_ranks_by_the_scalarization(tmp_path, capsys):
    """With weights a population strategy's fitness is the scalarization (blocks.population)."""
    args = ["optimize", "--task", "demo", "--strategy", "hill_climb", "--optimizer-model", "none", "--backend", "fake",
            "--model", "m", "--run-dir", str(tmp_path / "runs"), "--set", f"cache_path={tmp_path / 'c.sqlite'}",
            "-q", "--budget", "200", "--objectives", "task,prompt_tokens,target_tokens",
            "--set", "objective_weights.prompt_tokens=0.01"]
    code, out, err = run_cli(*args, capsys=capsys)
    assert code == 0, err
    obj = json.loads((the_run(tmp_path) / "summary.json").read_text())["objectives"]
    assert all(p["target_tokens"] > p["prompt_tokens"] for p in obj["points"])
    assert obj["chosen"] == max(obj["points"], key=lambda p: p["scalar"])["id"]


def test_selector_ranking_scalarizes():
    from promptopt.measure.objectives import Measurer
    from promptopt.strategies.blocks.selection import BruteForce
    from promptopt.strategy import History
    from promptopt.types import Candidate, Evaluation, Example, ExampleResult

    long_, short = Candidate("a b c d e f g h i j"), Candidate("a b")
    h = History()
    for c, s in ((long_, 1.0), (short, 0.8)):
        h._add_candidate(c)
        h._add_evaluation(Evaluation(c.id, "dev", (ExampleResult("x", "y", s),)))
    m = Measurer(["task", "prompt_tokens"], {"prompt_tokens": 0.1}, prompt_text=lambda c: c.text,
                 render=lambda p, ex: p, example=lambda i: Example(i, "", ""))
    sel = BruteForce()
    sel._history, sel._objectives = h, m
    assert sel._sorted([long_, short]) == [short, long_]  # 1.0 - 1.0 < 0.8 - 0.2
    sel._objectives = None
    assert sel._sorted([long_, short]) == [long_, short]
