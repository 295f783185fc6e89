"""The final report's pick (promptopt/final_pick.py) and the per-input selector (promptopt/selector.py):
the rules on made-up scores, and whole runs on the fake backend."""
import json

import pytest

from promptopt.measure import final_pick
from promptopt.measure.final_pick import FinalConfig
from promptopt.backends.fake import FakeBackend
from promptopt.budget import Budget
from promptopt.cli import main
from promptopt.config import apply_set, build_config
from promptopt.errors import ConfigError
from promptopt.loop import Run
from promptopt.resolved import ResolvedRun
from promptopt.measure.selector import Selector, TfIdf
from promptopt.strategy import ScoreRequest, StrategyConfig
from promptopt.testing import fake_optimizer
from promptopt.testing.contracts import toy_task
from promptopt.types import Candidate

from test_resolve import FAKE, dry_run


class Scripted:
    """Asks for fixed batches, then stops."""

    Config = StrategyConfig
    needs_optimizer = False

    def __init__(self, batches):
        self.batches = list(batches)

    def ask(self, ctx):
        return self.batches.pop(0) if self.batches else []

    def tell(self, ctx, evals):
        pass


def make(strategy, rule: FinalConfig, *, budget: int = 400, task=None, target=None) -> Run:
    resolved = ResolvedRun(task=task or toy_task(n_train=40), strategy=strategy, budget=Budget(max_examples=budget),
                           final_top_k=2, final_rule=rule)
    return Run(resolved, target=target or FakeBackend(), optimizer=fake_optimizer())


def test_folds_hold_out_every_id_once_per_repeat_whatever_the_order():
    ids = [f"x{i}" for i in range(23)]
    splits = final_pick.folds(ids, 5, 3, seed=7)
    assert len(splits) == 3
    for repeat in splits:
        held = [i for fold in repeat for i in fold]
        assert sorted(held) == sorted(ids) and len(repeat) == 5
        assert max(map(len, repeat)) - min(map(len, repeat)) <= 1
    assert splits[0] != splits[1]  # each repeat its own shuffle
    assert final_pick.folds(list(reversed(ids)), 5, 3, seed=7) == splits
    assert final_pick.folds(ids, 5, 3, seed=8) != splits


def test_kfold_picks_by_the_pool_not_by_dev_and_ties_go_to_the_seed():
    seed, a, b = Candidate("seed"), Candidate("a"), Candidate("b")
    dev = [f"d{i}" for i in range(10)]
    train = [f"t{i}" for i in range(30)]
    # a wins dev (9/10) but is poor on train; b is steady.
    scores = {a.id: {**{i: 1.0 for i in dev[:9]}, dev[9]: 0.0, **{i: float(k % 3 == 0) for k, i in enumerate(train)}},
              b.id: {**{i: float(k < 7) for k, i in enumerate(dev)}, **{i: float(k % 4 != 0) for k, i in enumerate(train)}},
              seed.id: {i: 0.5 for i in dev + train}}
    rule = FinalConfig(pick="kfold", folds=4, repeats=2)
    best, info = final_pick.choose(rule, [a, b, seed], seed, a, scores, dev + train, 0)
    assert best == b and info["rule"] == "kfold" and info["examples"] == 40
    assert info["finalists"][b.id]["mean"] > info["finalists"][a.id]["mean"]
    assert info["finalists"][seed.id]["sd"] == 0.0
    tie = {c.id: {i: 1.0 for i in dev} for c in (a, seed)}
    assert final_pick.choose(FinalConfig(pick="kfold"), [a, seed], seed, a, tie, dev, 0)[0] == seed
    # dev rule: the loop's dev pick stands
    assert final_pick.choose(FinalConfig(), [a, b, seed], seed, a, scores, dev, 0)[0] == a


def test_keep_seed_unless_beaten_with_p_below_alpha():
    seed, a = Candidate("seed"), Candidate("a")
    ids = [f"d{i}" for i in range(30)]
    close = {seed.id: {i: float(k % 2) for k, i in enumerate(ids)}, a.id: {i: float(k % 2 or k < 4) for k, i in enumerate(ids)}}
    best, info = final_pick.choose(FinalConfig(keep_seed_alpha=0.05), [a, seed], seed, a, close, ids, 0)
    assert best == seed and info["keep_seed"]["kept"] and info["keep_seed"]["p"] >= 0.05  # 2 discordant examples
    far = {seed.id: {i: 0.0 for i in ids}, a.id: {i: 1.0 for i in ids}}
    best, info = final_pick.choose(FinalConfig(keep_seed_alpha=0.05), [a, seed], seed, a, far, ids, 0)
    assert best == a and not info["keep_seed"]["kept"] and info["keep_seed"]["p"] < 1e-6


def test_selectors_route_inputs_to_the_finalist_that_gets_them_right():
    texts = [f"the movie {w} was long" for w in ("plot", "actor", "scene", "film")] + \
            [f"the soup {w} was cold" for w in ("bread", "waiter", "menu", "dish")]
    scores = {"films": [1.0] * 4 + [0.0] * 4, "food": [0.0] * 4 + [1.0] * 4}
    for method in ("centroid", "logistic"):
        sel = Selector(method, texts, scores, default="films")
        assert sel.choose("a movie with a great actor") == "films"
        assert sel.choose("cold soup and stale bread") == "food"
        assert sel.choose("zzz qqq") == "films"  # no known word: the default
    with pytest.raises(ValueError):
        Selector("knn", texts, scores, default="films")
    v = TfIdf(texts)("movie movie soup")
    assert v["movie"] > v["soup"] > 0 and abs(sum(x * x for x in v.values()) - 1) < 1e-9


def _with_demos(run_ids):
    return [Candidate("Is the text good or bad?", demos=run_ids), Candidate("Classify the text.")]


def test_a_kfold_run_scores_the_pool_pays_from_the_budget_and_never_holds_out_a_demo():
    demo_cand, other = _with_demos(("train-0", "train-1"))
    strategy = Scripted([[ScoreRequest(demo_cand), ScoreRequest(other)]])
    rule = FinalConfig(pick="kfold", folds=3, repeats=2, train_examples=10)
    run = make(strategy, rule, budget=100)
    counted = 3 * 10  # top 2 + the seed, on 10 train examples
    assert run.tracker.budget.max_examples == 100 - counted
    report = run.run()
    assert report.final_pick["rule"] == "kfold" and report.final_pick["examples"] == 12 + 10
    scored_train = run.history.results(demo_cand.id, "train")
    assert len(scored_train) == 10 and not {"train-0", "train-1"} & set(scored_train)
    assert run.tracker.examples == 24 + counted <= 100  # the search's two dev passes, then the pool
    by_mean = max(report.final_pick["finalists"].items(), key=lambda kv: kv[1]["mean"])[0]
    assert report.best_id == by_mean
    assert json.loads(json.dumps(report.to_json()))["final_pick"]["folds"] == 3


def test_a_selector_run_reports_against_the_pick_on_the_same_test_examples():
    strategy = Scripted([[ScoreRequest(c) for c in _with_demos(("train-0", "train-3"))]])
    run = make(strategy, FinalConfig(selector="centroid"), budget=100)
    assert run.tracker.budget.max_examples == 100 - 3 * 12  # the finalists' dev scoring is paid
    report = run.run()
    sel = report.selector
    assert sel["method"] == "centroid" and sel["learned_on"] == 12
    assert sum(sel["choices"].values()) == 12 and sel["pick_test"] == pytest.approx(report.best_test)
    assert sel["significance"]["n"] == 12
    for cid, n in sel["choices"].items():  # each routed input was scored for its finalist
        assert len(run.history.results(cid, "test")) >= n
    assert report.to_json()["selector"]["method"] == "centroid"


def test_a_final_pick_that_leaves_no_search_is_refused():
    with pytest.raises(ConfigError, match="leaves none for the search"):
        make(Scripted([]), FinalConfig(pick="kfold", train_examples=30), budget=60)


def test_final_settings_by_set_and_their_refusals():
    data = {"task": "demo"}
    for a in ("final.pick=kfold", "final.folds=4", "final.keep_seed_alpha=0.05", "final.selector=logistic"):
        apply_set(data, a)
    cfg = build_config(data)
    assert cfg.final == FinalConfig(pick="kfold", folds=4, keep_seed_alpha=0.05, selector="logistic")
    for bad in ({"final": {"pick": "test"}}, {"final": {"folds": 1}}, {"final": {"keep_seed_alpha": 1}},
                {"final": {"fold": 3}}, {"final": {"pick": "kfold"}, "objectives": ["task", "length"]}):
        with pytest.raises(ConfigError):
            build_config({"task": "demo", **bad})


def test_the_dry_run_states_the_rule_and_its_cost(capsys, tmp_path):
    args = [*FAKE, "--strategy", "paraphrase", "--budget", "300", "--set", "final.pick=kfold", "--set",
            "final.train_examples=20", "--set", "final.keep_seed_alpha=0.05", "--set", "final_top_k=2"]
    plan = dry_run(capsys, *args)
    assert "3x repeated 5-fold over dev 24 + train 20" in plan["final"]
    assert "keep the seed unless beaten with p < 0.05" in plan["final"]
    assert "60 of its scored examples, at most, come out of the example budget" in plan["final"]
    assert plan["budget"].endswith("examples 300 (60 of the examples kept for the final pick)")
    code = main(["optimize", *FAKE, "--budget", "50", "--set", "final.pick=kfold", "--dry-run"])
    assert code == 2 and "leaves none for the search" in capsys.readouterr().err


def test_a_resumed_run_replays_the_final_pick_and_the_selector_without_a_model_call(tmp_path):
    from promptopt.runlog import RunLog
    rule = FinalConfig(pick="kfold", folds=3, repeats=2, train_examples=8, keep_seed_alpha=0.5, selector="logistic")

    def run_with(target, resume):
        strategy = Scripted([[ScoreRequest(c) for c in _with_demos(("train-2",))]])
        resolved = ResolvedRun(task=toy_task(n_train=40), strategy=strategy, budget=Budget(max_examples=200),
                               final_top_k=2, final_rule=rule)
        run = Run(resolved, target=target, optimizer=fake_optimizer(), log=RunLog(tmp_path, resume=resume))
        report = run.run()
        run.log.close()
        return report

    first = run_with(FakeBackend(), False)
    again_target = FakeBackend()
    again = run_with(again_target, True)
    assert again_target.calls == 0
    assert {k: v for k, v in again.to_json().items() if k not in ("seconds", "timings", "target_usage")} == \
           {k: v for k, v in first.to_json().items() if k not in ("seconds", "timings", "target_usage")}
    assert first.final_pick["keep_seed"]["alpha"] == 0.5 and first.selector["method"] == "logistic"


def test_the_cli_prints_the_pick_and_the_selector(tmp_path, capsys):
    code = main(["optimize", *FAKE, "--strategy", "paraphrase", "--budget", "200", "--test-limit", "10",
                 "--run-dir", str(tmp_path), "--set", f"cache_path={tmp_path / 'c.sqlite'}",
                 "--set", "final.pick=kfold", "--set", "final.train_examples=12", "--set", "final.keep_seed_alpha=0.05",
                 "--set", "final.selector=centroid"])
    out = " ".join(capsys.readouterr().out.split())
    assert code == 0
    assert "final pick: 3x 5-fold over 36 dev + train examples" in out
    assert "keep-seed rule" in out and "alpha 0.05" in out
    assert "selector (centroid, learned on 36 examples): test" in out and "on 10 examples" in out
