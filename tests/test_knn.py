"""Demonstrations retrieved per input: the policy and index (promptopt/retrieval.py), scoring and logging
through the loop, the knn strategy, and bad input."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from promptopt.backends.base import LLResult
from promptopt.backends.fake import FakeBackend
from promptopt.budget import Budget
from promptopt.cli import main
from promptopt.errors import ConfigError
from promptopt.task.retrieval import RetrievalPolicy, Retriever, mmr_select
from promptopt.runlog import read_events
from promptopt.strategies.knn import Knn, KnnConfig
from promptopt.strategy import ScoreRequest
from promptopt.testing import StrategyContract, make_run, toy_task
from promptopt.types import Candidate, Example, Usage


class NearestDemoBackend(FakeBackend):
    """A target for toy_task() that answers right only when the demo just before the query carries the
    query's label (as retrieval by BM25 gives on the toy task), and favours ' bad' otherwise.
    Records every context it is asked about."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.contexts: list[str] = []

    def loglikelihood(self, reqs):
        self._tick(len(reqs))
        out = []
        for r in reqs:
            self.contexts.append(r.context)
            head, item = r.context.rsplit("Text: ", 1)
            gold = "good" if " is good" in item else "bad"
            last_demo = head.rstrip().rsplit("Answer:", 1)[-1].strip() if "Answer:" in head else ""
            favoured = gold if last_demo == gold else "bad"
            out.append(LLResult(-0.2 if r.continuation.strip() == favoured else -2.5, usage=Usage(1, 1, 0)))
        return out


class TestKnn(StrategyContract):
    def make_strategy(self, **options):
        return Knn(KnnConfig(**{"k": [2, 1], "instructions": 2, "minibatch": 4, **options}))


def _train(texts_labels):
    return [Example(f"t{i}", text, str(label), label=label) for i, (text, label) in enumerate(texts_labels)]


def test_bm25_retrieves_nearest_in_order_and_never_the_query_itself():
    train = _train([("the cat sat on the mat", 0), ("stocks fell sharply on wall street", 1),
                    ("a cat and a dog", 0), ("the market rallied as stocks rose", 1), ("a bird sang", 0),
                    ("rain fell today", 0)])
    r = Retriever(train)
    query = Example("q", "stocks wall street", "1", label=1)
    last, = r.retrieve(RetrievalPolicy(k=2, order="nearest_last"), [query])
    first, = r.retrieve(RetrievalPolicy(k=2, order="nearest_first"), [query])
    assert first == ("t1", "t3") and last == ("t3", "t1")  # t1 shares three words, t3 one
    own, = r.retrieve(RetrievalPolicy(k=1), [train[1]])  # a train example as query: not itself
    assert own != ("t1",)


def test_mmr_trades_relevance_for_diversity_and_balance_round_robins_labels():
    rel = [1.0, 0.95, 0.5, 0.1]
    sim = [[1, 0.99, 0.1, 0.0], [0.99, 1, 0.1, 0.0], [0.1, 0.1, 1, 0.0], [0.0, 0.0, 0.0, 1]]
    assert mmr_select(rel, sim, 2, 1.0) == [0, 1]
    assert mmr_select(rel, sim, 2, 0.5) == [0, 2]  # 1 is a near copy of 0
    assert mmr_select(rel, sim, 3, 1.0, labels=[0, 0, 0, 1]) == [0, 3, 1]
    assert mmr_select(rel, sim, 2, 1.0, exclude=[0]) == [1, 2]


def test_policy_is_part_of_the_candidate_id_and_round_trips():
    plain = Candidate("Classify.")
    a = Candidate("Classify.", retrieval=RetrievalPolicy(k=2))
    b = Candidate("Classify.", retrieval=RetrievalPolicy(k=2, mmr=0.5))
    assert len({plain.id, a.id, b.id, Candidate("Classify.", demos=("t1",)).id}) == 4
    assert plain.id == Candidate("Classify.", origin="x").id and "retrieval" not in plain.to_json()
    assert Candidate.from_json(json.loads(json.dumps(b.to_json()))) == b
    assert a.revise("Label it.", origin="edit").retrieval == a.retrieval


def test_each_input_gets_its_own_demos_logged_and_the_test_split_never_enters_the_index(tmp_path):
    task = toy_task()
    target = NearestDemoBackend()
    d = tmp_path / "run"
    d.mkdir()
    run = make_run(Knn(KnnConfig(k=[2], mmr=[1.0], order=["nearest_last"], instructions=1, trials=1, minibatch=4)),
                   task=task, target=target, run_dir=d, budget=Budget(max_examples=100))
    report = run.run()
    run.log.close()
    assert {ex.id for ex in run.retriever.train} == {ex.id for ex in task.split("train")}
    evals = [e for e in read_events(d / "events.jsonl")[0] if e["type"] == "eval" and "retrieved" in e]
    assert evals and {e["split"] for e in evals} >= {"dev", "test"}
    for e in evals:
        assert set(e["retrieved"]) == set(e["example_ids"])
        assert all(len(ids) == 2 and all(i.startswith("train-") for i in ids) for ids in e["retrieved"].values())
    # BM25 puts a same-label train item nearest on the toy task, so the recording target answers right.
    assert report.best_dev == 1.0 and report.best_test == 1.0 and report.best_retrieval["k"] == 2
    one = evals[0]
    ex_id, demo_ids = next(iter(one["retrieved"].items()))
    train = {ex.id: ex for ex in task.split("train")}
    item = next(ex for ex in task.split(one["split"]) if ex.id == ex_id)
    assert any(c.endswith(f"Text: {item.input}\nAnswer:") and f"Text: {train[demo_ids[-1]].input}\nAnswer:" in c
               for c in target.contexts)


def test_inputs_that_retrieved_the_same_demos_share_one_job():
    toy = toy_task()
    dev = [Example(f"dev-{i}", f"this one is {['bad', 'good'][i % 2]}", "", label=i % 2) for i in range(8)]
    task = dataclasses.replace(toy, splits={**toy.splits, "dev": dev})
    run = make_run(Knn(KnnConfig()), task=task, target=NearestDemoBackend())
    cand = Candidate(task.seed_prompts[0], retrieval=RetrievalPolicy(k=1))
    ids = tuple(ex.id for ex in task.split("dev"))
    jobs, owner, retrieved = run._jobs([ScoreRequest(cand, "dev", example_ids=ids)])
    sets = {tuple(v) for v in retrieved[0].values()}
    assert len(jobs) == len(sets) < len(ids) and set(owner) == {0}
    assert sum(len(j.examples) for j in jobs) == len(ids)
    ev, = run.score([ScoreRequest(cand, "dev", example_ids=ids)])
    assert ev.example_ids == ids  # merged back in the request's order
    # A request with no examples left (a used-up split) beside one split into several jobs: each its own result.
    empty, full = run.score([ScoreRequest(cand, "dev", example_ids=()), ScoreRequest(cand, "dev", example_ids=ids)])
    assert empty.results == () and empty.state == "complete" and full.example_ids == ids


def test_knn_beats_a_fixed_demo_seed_on_a_task_where_demos_must_match_the_input():
    run = make_run(Knn(KnnConfig(k=[1], instructions=1, minibatch=4)), task=toy_task(), target=NearestDemoBackend(),
                   budget=Budget(max_examples=60))
    report = run.run()
    assert report.seed_dev == 0.5 and report.best_dev == 1.0


def test_shared_demos_stand_before_the_retrieved_ones_in_every_prompt(tmp_path):
    task, target = toy_task(), NearestDemoBackend()
    d = tmp_path / "run"
    d.mkdir()
    run = make_run(Knn(KnnConfig(k=[1], shared=[2], instructions=1, minibatch=4)), task=task, target=target,
                   run_dir=d, budget=Budget(max_examples=60))
    report = run.run()
    run.log.close()
    shared = report.best_retrieval["shared"]
    labels = {ex.id: ex.label for ex in task.split("train")}
    assert len(shared) == 2 and {labels[i] for i in shared} == {0, 1}  # one label-balanced draw
    assert all(c.retrieval.shared == tuple(shared) for c in run.history.candidates() if c.retrieval)
    evals = [e for e in read_events(d / "events.jsonl")[0] if e["type"] == "eval" and "retrieved" in e]
    assert evals and all(ids[:2] == shared and len(ids) == 3 for e in evals for ids in e["retrieved"].values())
    # The retrieved demo stands last, next to the query, so the toy target still answers right.
    assert report.best_dev == 1.0


def test_mipro_can_choose_retrieved_demos_as_one_demo_set():
    from promptopt.strategies.mipro import Mipro, MiproConfig
    run = make_run(Mipro(MiproConfig(k=1, instructions=1, demo_sets=2, retrieval=True, minibatch=4)), task=toy_task(),
                   target=NearestDemoBackend(), budget=Budget(max_examples=80))
    report = run.run()
    assert any(c.retrieval is not None for c in run.history.candidates())
    assert report.best_dev == 1.0 and report.best_retrieval == RetrievalPolicy(k=1).to_json()


@pytest.mark.parametrize("args, message", [
    (["--set", "knn.k=[99]"], "retrieval k=99 is larger than the train split"),
    (["--set", 'knn.embedding=["st:all-MiniLM-L6-v2"]'], "needs sentence-transformers, which is not installed"),
    (["--set", 'knn.embedding=["hidden"]'], "'hidden' needs a local target model"),
    (["--set", 'knn.embedding=["glove"]'], "unknown embedding 'glove'"),
    (["--set", "knn.mmr=[1.5]"], "MMR lambda must be within 0..1"),
    (["--set", "knn.k=[2,2]"], "k: a choice is repeated"),
    (["--set", "knn.shared=[-1]"], "a number of shared demos cannot be negative"),
    (["--set", "knn.k=[4]", "--set", "knn.shared=[0,90]"], "shared=90 demos need 94 train examples"),
])
def test_bad_retrieval_settings_are_one_line_before_any_model_call(tmp_path, capsys, args, message):
    rc = main(["optimize", "--task", "demo", "--backend", "fake", "--model", "m", "--optimizer-model", "none",
               "--strategy", "knn", "--run-dir", str(tmp_path / "runs"), "-q", *args])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and message in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_a_retrieval_policy_on_a_task_without_train_split_is_refused_before_any_model_call():
    target = FakeBackend()
    with pytest.raises(ConfigError, match="needs a train split"):
        make_run(Knn(KnnConfig()), task=toy_task(n_train=0), target=target)
    assert target.calls == 0


@pytest.mark.model
def test_hidden_state_embeddings_of_the_target_are_cached_on_disk(tmp_path: Path):
    from promptopt.backends.hf import HFBackend
    hf = HFBackend()
    train = _train([("The stock market fell as investors sold shares.", 1),
                    ("The home team won the championship game last night.", 0),
                    ("Shares of the bank rose after strong earnings.", 1),
                    ("The striker scored twice in the final.", 0)])
    first = Retriever(train, hf, tmp_path)
    query = Example("q", "Investors bought shares as the market rallied.", "1", label=1)
    picked, = first.retrieve(RetrievalPolicy(k=2, embedding="hidden", order="nearest_first"), [query])
    assert first.embedded == 4 and len(list(tmp_path.glob("*.npy"))) == 1
    assert set(picked) == {"t0", "t2"}  # the two finance items
    again = Retriever(train, hf, tmp_path)
    assert again.retrieve(RetrievalPolicy(k=2, embedding="hidden", order="nearest_first"), [query]) == [picked]
    assert again.embedded == 0  # served from the disk cache
    calls = []
    again._indexes["hidden"].embed = lambda texts: calls.append(list(texts)) or hf.embed(texts)
    again.retrieve(RetrievalPolicy(k=1, embedding="hidden"), [query, Example("r", "Rain is due.", "0", label=0)])
    assert calls == [["Rain is due."]]  # queries are embedded once per run, in one batch


def test_export_shows_the_policy_and_the_demos_one_example_retrieves(tmp_path, capsys):
    args = ["optimize", "--task", "demo", "--backend", "fake", "--model", "m", "--optimizer-model", "none",
            "--strategy", "knn", "--run-dir", str(tmp_path / "runs"), "--no-cache", "-q", "--budget", "200"]
    assert main(args) == 0
    (run,) = sorted((tmp_path / "runs").iterdir())
    capsys.readouterr()
    summary = json.loads((run / "summary.json").read_text())
    assert summary["best_retrieval"]["embedding"] == "bm25"  # on this seed a retrieval candidate wins
    assert main(["export", str(run)]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["retrieval"] == summary["best_retrieval"] and len(data["demo_ids"]) == data["retrieval"]["k"]
    assert all(d["text"] in data["rendered"] for d in data["demos"])
    assert data["rendered"].endswith(f"Message: {data['example']['input']}\nAnswer:")
    assert main(["show", str(run)]) == 0
    shown = capsys.readouterr().out
    assert f"knn k={data['retrieval']['k']}" in shown and "demos retrieved per input" in shown


def test_evaluate_run_retrieves_the_best_policys_demos_for_each_input(tmp_path, capsys):
    args = ["optimize", "--task", "demo", "--backend", "fake", "--model", "m", "--optimizer-model", "none",
            "--strategy", "knn", "--run-dir", str(tmp_path / "runs"), "--no-cache", "-q", "--budget", "200"]
    assert main(args) == 0
    (run,) = sorted((tmp_path / "runs").iterdir())
    summary = json.loads((run / "summary.json").read_text())
    assert summary["best_retrieval"] is not None  # on this seed a retrieval candidate wins
    capsys.readouterr()
    for split in ("dev", "test"):  # as the final report scored it, not its instruction alone
        assert main(["evaluate", "--run", str(run), "--split", split, "--no-cache"]) == 0
        assert capsys.readouterr().out.startswith(f"{split} score {summary[f'best_{split}']:.4f} ")
