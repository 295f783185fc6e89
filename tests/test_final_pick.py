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
from promptopt.measure.selector import Selector, TfIdf, held_out_check
from promptopt.task.retrieval import RetrievalPolicy
from promptopt.strategy import ScoreRequest, StrategyConfig
from promptopt.testing import fake_optimizer
from promptopt.testing.contracts import toy_task
from promptopt.types import Candidate, Evaluation, ExampleResult

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


def test_the_shortlist_weighs_a_dev_score_by_the_examples_it_rests_on():
    right = {f"once-{i}": (1.0, [1.0]) for i in range(3)}  # successive halving's first round: one example each
    wrong = {f"out-{i}": (0.0, [0.0]) for i in range(6)}
    survivor = {"survivor": (27 / 32, [1.0] * 27 + [0.0] * 5)}
    seed = {"seed": (17 / 32, [1.0] * 17 + [0.0] * 15)}
    halves = {f"half-{i}": (0.6, [1.0] * 6 + [0.0] * 4) for i in range(2)}
    scored = {**right, **wrong, **halves, **seed, **survivor}
    assert sorted(scored, key=lambda c: -scored[c][0])[:3] == list(right)  # the raw mean's finalists
    assert final_pick.shortlist(scored, 13) == ["survivor", *right, *halves, "seed", *wrong]
    # Every candidate right on the one easy example all of them got: the survivors still come first.
    easy = {**{f"once-{i}": (1.0, [1.0]) for i in range(8)}, **survivor,
            "runner-up": (26 / 32, [1.0] * 26 + [0.0] * 6)}
    assert final_pick.shortlist(easy, 3) == ["survivor", "runner-up", "once-0"]
    # Candidates scored on equally many examples keep the raw order; ties keep the order they came in.
    even = {"a": (0.5, [1.0, 0.0]), "b": (1.0, [1.0, 1.0]), "c": (0.5, [0.0, 1.0]), "d": (0.0, [0.0, 0.0])}
    assert final_pick.shortlist(even, 4) == ["b", "a", "c", "d"]
    # No candidate on two examples (no noise estimate): the raw order; no results or no finite score: left out.
    assert final_pick.shortlist({"x": (0.0, [0.0]), "y": (1.0, [1.0]), "z": (float("nan"), [])}, 3) == ["y", "x"]
    macro = {"a": (0.5, [1.0, 0.0]), "b": (0.9, [1.0, 1.0]), "c": (float("nan"), [1.0, 1.0]), "d": (0.1, [0.0, 0.0])}
    assert final_pick.shortlist(macro, 4) == ["b", "a", "d"]
    # Every candidate alike on all its examples: the spread over all example scores still weighs n.
    flat = {"one": (1.0, [1.0]), "many": (1.0, [1.0] * 30), "none": (0.0, [0.0] * 10)}
    assert final_pick.shortlist(flat, 3) == ["many", "one", "none"]


def _dev_results(run, cand, scores):
    run.history._add_candidate(cand)
    ids = [ex.id for ex in run.task.split("dev")]
    run.history._add_evaluation(Evaluation(cand.id, "dev", tuple(ExampleResult(i, "", s) for i, s in zip(ids, scores))))


def test_the_run_scores_the_shortlist_as_its_finalists():
    run = make(Scripted([]), FinalConfig())  # final_top_k=2, 12 dev examples
    lucky = [Candidate(f"Say good or bad, take {i}.") for i in range(3)]
    for cand in lucky:
        _dev_results(run, cand, [1.0])
    steady = Candidate("Decide whether the text is good or bad.")
    _dev_results(run, steady, [1.0] * 10 + [0.0] * 2)
    assert [c for c, _ in run.history.ranked("dev")[:2]] == lucky[:2]  # the raw mean's choice
    assert [c.id for c in run.leaders(2)] == [steady.id, lucky[0].id]
    report = run.finish()  # the finalists (and the seed) are scored on the whole dev split, nothing else is
    scored_in_full = {c.id for c in run.history.candidates() if run.history.n_scored(c.id, "dev") == 12}
    seed = next(c for c in run.history.candidates() if c.origin == "seed")
    assert scored_in_full == {steady.id, lucky[0].id, seed.id} and report.best_id in scored_in_full


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


def test_the_held_out_check_keeps_the_pick_unless_routing_beats_it_on_folds_it_did_not_learn_from():
    topics = [("movie", "actor", "film", "scene"), ("soup", "bread", "dish", "menu")]
    texts = [f"the {a} and the {b} were {c}" for t in topics for a in t for b in t for c in ("long", "cold")]
    films = [1.0 if any(w in t for w in topics[0]) else 0.0 for t in texts]
    folds = [list(range(f, len(texts), 4)) for f in range(4)]
    for method in ("centroid", "logistic"):
        # Each finalist right on its own topic: routing wins on every held-out fold.
        good = held_out_check(method, texts, {"films": films, "food": [1 - y for y in films]}, "films", folds)
        assert good["routes"] and good["routed"] == 1.0 and good["pick"] == 0.5
        # The pick right everywhere: nothing to gain, so the selector keeps it for every input.
        noise = [float(i % 3 == 0) for i in range(len(texts))]
        bad = held_out_check(method, texts, {"films": [1.0] * len(texts), "other": noise}, "films", folds)
        assert not bad["routes"] and bad["pick"] == 1.0 and bad["routed"] <= 1.0
        sel = Selector(method, texts, {"films": films, "food": [1 - y for y in films]}, default="films")
        sel.routes = False
        assert sel.choose("cold soup and stale bread") == "films"
        back = Selector.from_json(json.loads(json.dumps(sel.to_json())))
        assert not back.routes and back.choose("cold soup and stale bread") == "films"
        assert Selector.from_json({**sel.to_json(), "routes": True}).choose("cold soup and stale bread") == "food"


def _with_demos(run_ids):
    return [Candidate("Is the text good or bad?", demos=run_ids), Candidate("Classify the text.")]


def test_a_kfold_run_refits_each_finalist_per_fold_pays_from_the_budget_and_never_scores_a_prompt_on_its_demo():
    rule = FinalConfig(pick="kfold", folds=3, repeats=2, train_examples=10)
    strategy = Scripted([])
    run = make(strategy, rule, budget=300)
    pool_train = [ex.id for ex in run._order["train"][:10]]
    demo_cand = Candidate("Is the text good or bad?", demos=(pool_train[0], pool_train[1], "train-39"))
    strategy.batches = [[ScoreRequest(demo_cand), ScoreRequest(Candidate("Classify the text."))]]
    counted = 3 * (10 + 2 * 22)  # top 2 + the seed: 10 train examples, then refits on every fold of 2 repeats
    assert run.tracker.budget.max_examples == 300 - counted
    report = run.run()
    assert report.final_pick["rule"] == "kfold" and report.final_pick["examples"] == 12 + 10
    labels = {ex.id: ex.label for ex in run.task.split("train")}
    splits = final_pick.folds([ex.id for ex in run.task.split("dev")] + pool_train, 3, 2, run.seed)
    planned = final_pick.refits([demo_cand], splits, run.task.split("train"), run.seed)
    refits = {c.id: c for c in run.history.candidates() if c.origin == "kfold.refit"}
    # One refit for each fold that holds out one of its two pooled demos (train-39 is never in the pool).
    holding = {(r, f) for r, repeat in enumerate(splits) for f, fold in enumerate(repeat) if set(fold) & set(demo_cand.demos)}
    assert {k[1:] for k, c in planned.items() if c != demo_cand} == holding and len(holding) >= 2
    assert set(refits) == {c.id for c in planned.values() if c != demo_cand}
    for (_, r, f), cand in planned.items():
        fold = set(splits[r][f])
        if cand == demo_cand:
            continue
        assert cand.parents == (demo_cand.id,) and cand.meta["refit_of"] == demo_cand.id
        assert not fold & set(cand.demos) and cand.demos[2] == "train-39"  # kept demos keep their place
        for old, new in zip(demo_cand.demos, cand.demos):
            assert labels[old] == labels[new] and (new == old) == (old not in fold)  # redrawn with the same label
        scored = {**run.history.results(cand.id, "dev"), **run.history.results(cand.id, "train")}
        assert fold <= set(scored)  # scored on its held-out fold (or folds, where two draws agree)
    assert sum(len(run.history.results(c, s)) for c in refits for s in ("dev", "train")) <= \
        sum(len(splits[r][f]) for r, f in holding)
    for cand in run.history.candidates():  # no prompt is ever scored on one of its own demos
        assert not set(cand.demos) & set(run.history.results(cand.id, "train"))
    assert run.tracker.examples <= 300 and run.tracker.examples - 24 <= counted
    by_mean = max(report.final_pick["finalists"].items(), key=lambda kv: kv[1]["mean"])[0]
    assert report.best_id == by_mean and set(report.final_pick["finalists"]) == {c.id for c in run.history.candidates()
                                                                                  if c.origin != "kfold.refit"}
    assert json.loads(json.dumps(report.to_json()))["final_pick"]["folds"] == 3


def test_refit_keeps_what_the_fold_trains_on_and_redraws_the_rest_by_label():
    task = toy_task(n_train=10)
    train = task.split("train")
    cand = Candidate("x", demos=("train-0", "train-1", "train-2"), demo_answers=("a", "b", "c"))
    assert final_pick.refit(cand, ("dev-0", "train-5"), train, "k") is cand
    new = final_pick.refit(cand, ("train-1", "train-3", "train-5", "train-7"), train, "k")
    assert new.demos[0] == "train-0" and new.demos[2] == "train-2" and new.demos[1] == "train-9"  # odd = label 1
    assert new.demo_answers == ("a", "good", "c")  # a redrawn demo shows its gold answer
    assert new == final_pick.refit(cand, ("train-7", "train-5", "train-3", "train-1"), train, "k")
    every_odd = tuple(f"train-{i}" for i in range(1, 10, 2))
    assert final_pick.refit(cand, every_odd, train, "k").demos[1] in {"train-4", "train-6", "train-8"}  # no label 1 left
    policy = RetrievalPolicy(k=2)
    knn = final_pick.refit(Candidate("x", retrieval=policy), ("dev-1", "train-4", "train-2"), train, "k")
    assert knn.retrieval == RetrievalPolicy(k=2, exclude=("train-2", "train-4")) and knn.id != Candidate("x", retrieval=policy).id
    assert final_pick.refit(Candidate("x", retrieval=policy), ("dev-1",), train, "k").retrieval == policy
    assert final_pick.refit(Candidate("zero-shot"), ("train-1",), train, "k") == Candidate("zero-shot")
    program = Candidate.of_components({"a": "x", "b": "y"}, demos=("train-0", "train-1"))
    refit = final_pick.refit(program, ("train-1",), train, "k")
    assert refit.components == program.components and refit.demos[0] == "train-0" and refit.demos[1] != "train-1"


def test_a_retrieval_finalist_is_refit_with_an_index_without_the_held_out_fold(tmp_path):
    from promptopt.runlog import RunLog, load_run
    rule = FinalConfig(pick="kfold", folds=2, repeats=1, train_examples=6)
    knn = Candidate("Is the text good or bad?", retrieval=RetrievalPolicy(k=2))

    def run_with(target, resume):
        resolved = ResolvedRun(task=toy_task(n_train=10), strategy=Scripted([[ScoreRequest(knn)]]),
                               budget=Budget(max_examples=200), final_top_k=1, final_rule=rule)
        run = Run(resolved, target=target, optimizer=fake_optimizer(), log=RunLog(tmp_path, resume=resume))
        report = run.run()
        run.log.close()
        return run, report

    run, report = run_with(FakeBackend(), False)
    again_target = FakeBackend()
    _, again = run_with(again_target, True)  # a resume replays the refit prompts and their retrieved demos
    assert again_target.calls == 0 and again.final_pick == report.final_pick and again.best_id == report.best_id
    assert knn.id in report.final_pick["finalists"]
    refits = [c for c in run.history.candidates() if c.origin == "kfold.refit"]
    assert len(refits) == 2 and all(c.retrieval.exclude for c in refits)
    view = load_run(tmp_path)
    for cand in refits:
        evals = [e for e in view.evals if e["candidate_id"] == cand.id]
        scored = {i for e in evals for i in e["example_ids"]}
        assert set(cand.retrieval.exclude) <= scored  # the fold's own train examples are scored too
        for e in evals:
            assert set(e["retrieved"]) == set(e["example_ids"])  # each held-out example's demos are logged
            assert not {d for ids in e["retrieved"].values() for d in ids} & set(cand.retrieval.exclude)


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
    check = sel["check"]  # made on the 12 dev examples' scores, 5 folds
    assert check["routes"] == (check["routed"] > check["pick"])
    if not check["routes"]:
        assert sel["choices"] == {report.best_id: 12} and sel["test"] == sel["pick_test"]
    unchecked = make(Scripted([[ScoreRequest(c) for c in _with_demos(("train-0", "train-3"))]]),
                     FinalConfig(selector="centroid", selector_check=False), budget=100).run()
    assert "check" not in unchecked.selector


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
    args = [*FAKE, "--strategy", "paraphrase", "--budget", "1000", "--set", "final.pick=kfold", "--set",
            "final.train_examples=20", "--set", "final.keep_seed_alpha=0.05", "--set", "final_top_k=2"]
    plan = dry_run(capsys, *args)
    assert "3x repeated 5-fold over dev 24 + train 20, each finalist's demos refit on the training folds" in plan["final"]
    assert "keep the seed unless beaten with p < 0.05" in plan["final"]
    counted = 3 * (20 + 3 * 44)  # 3 finalists: 20 train examples, and refit prompts on 3 repeats of the pool
    assert f"{counted} of its scored examples, at most, come out of the example budget" in plan["final"]
    assert plan["budget"].endswith(f"examples 1000 ({counted} of the examples kept for the final pick)")
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
    code = main(["optimize", *FAKE, "--strategy", "paraphrase", "--budget", "400", "--test-limit", "10",
                 "--run-dir", str(tmp_path), "--set", f"cache_path={tmp_path / 'c.sqlite'}",
                 "--set", "final.pick=kfold", "--set", "final.train_examples=12", "--set", "final.repeats=1", "--set", "final.keep_seed_alpha=0.05",
                 "--set", "final.selector=centroid"])
    out = " ".join(capsys.readouterr().out.split())
    assert code == 0
    assert "final pick: 1x 5-fold over 36 dev + train examples" in out
    assert "keep-seed rule" in out and "alpha 0.05" in out
    assert "selector (centroid, learned on 36 examples): test" in out and "on 10 examples" in out
    assert "selector check, held out over the folds of its examples: routed" in out


def test_a_selector_run_writes_a_selector_that_routes_new_inputs_as_the_report_did(tmp_path, capsys):
    import promptopt
    from promptopt.api import load_task
    from promptopt.task.data import test_sample
    code = main(["optimize", *FAKE, "--strategy", "paraphrase", "--budget", "300", "--test-limit", "10",
                 "--run-dir", str(tmp_path), "--set", f"cache_path={tmp_path / 'c.sqlite'}",
                 "--set", "final.selector=logistic", "--set", "final.selector_check=false", "-q"])
    assert code == 0
    run_dir, = (p for p in tmp_path.iterdir() if (p / "summary.json").is_file())
    summary = json.loads((run_dir / "summary.json").read_text())
    selector = promptopt.load_selector(run_dir)
    test = test_sample(list(load_task("demo").split("test")), 10)
    routed: dict[str, int] = {}
    for ex in test:
        cid = selector.choose(ex.input, **ex.fields)
        routed[cid] = routed.get(cid, 0) + 1
        assert selector.prompt(ex.input, **ex.fields) == selector.prompts[cid]
    assert routed == summary["selector"]["choices"]
    assert summary["best_id"] in selector.prompts and selector.prompts[summary["best_id"]] == summary["best_prefix"]
    (run_dir / "selector.json").write_text("{")
    with pytest.raises(ConfigError, match="not a readable selector"):
        promptopt.load_selector(run_dir)
    with pytest.raises(ConfigError, match="no selector.json"):
        promptopt.load_selector(tmp_path)
