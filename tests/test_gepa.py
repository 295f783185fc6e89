"""GEPA-style reflective evolution: Pareto frontier logic, traces, minibatch acceptance, merge, templates."""
import json
import random

import pytest

from promptopt.backends.base import GenResult
from promptopt.backends.fake import FakeBackend
from promptopt.budget import Budget
from promptopt.config import strategy_config
from promptopt.errors import ConfigError
from promptopt.strategies.gepa.pareto import frontier, instance_fronts, merge_subsample, sample_parent
from promptopt.strategies.gepa import GEPA, GEPAConfig, feedback, read_instruction
from promptopt.testing import StrategyContract, make_run, toy_task
from promptopt.types import ExampleResult


class TestGEPA(StrategyContract):
    def make_strategy(self, **options):
        return GEPA(GEPAConfig(**{"iterations": 12, "pareto_examples": 8, **options}))


def test_instance_fronts_keep_ties():
    scores = {"a": {"1": 1, "2": 0, "3": 0}, "b": {"1": 1, "2": 1, "3": 0}, "c": {"1": 0, "2": 0, "3": 1}}
    assert instance_fronts(scores) == {"1": {"a", "b"}, "2": {"b"}, "3": {"c"}}


def test_frontier_drops_candidates_whose_every_win_is_shared():
    # a wins only where b also wins: redundant. b and c each win somewhere alone. d never wins.
    scores = {"a": {"1": 1, "2": 0, "3": 0, "4": 0}, "b": {"1": 1, "2": 1, "3": 0, "4": 0},
              "c": {"1": 0, "2": 0, "3": 1, "4": 0}, "d": {"1": 0, "2": 0, "3": 0, "4": 0}}
    # Example 4: everyone ties at 0, so the front there holds all four; it counts for b and c.
    assert frontier(scores) == {"b": 3, "c": 2}


def test_frontier_keeps_one_of_identical_candidates():
    scores = {"a": {"1": 1, "2": 0}, "b": {"1": 1, "2": 0}, "c": {"1": 0, "2": 1}}
    front = frontier(scores)
    assert set(front) in ({"a", "c"}, {"b", "c"}) and len(front) == 2


def test_parents_are_sampled_by_frequency():
    scores = {"a": {str(i): 1 if i < 3 else 0 for i in range(4)}, "b": {str(i): 1 if i == 3 else 0 for i in range(4)}}
    rng = random.Random(0)
    draws = [sample_parent(rng, scores) for _ in range(4000)]
    assert abs(draws.count("a") / 4000 - 0.75) < 0.03


def test_merge_subsample_is_balanced():
    a = {"1": 1, "2": 1, "3": 0, "4": 0, "5": 1, "6": 0}
    b = {"1": 0, "2": 0, "3": 1, "4": 1, "5": 1, "6": 0}
    picked = merge_subsample(random.Random(1), a, b, 5)
    assert len(picked) == len(set(picked)) == 5
    assert {"1", "2"} & set(picked) and {"3", "4"} & set(picked) and {"5", "6"} & set(picked)


def test_feedback_from_gold_and_prediction():
    task = toy_task()
    ex = task.split("dev")[1]  # gold: good
    assert feedback(task, ex, ExampleResult(ex.id, " good", 1.0)) == "Correct: the answer is 'good'."
    assert feedback(task, ex, ExampleResult(ex.id, " bad", 0.0)) == \
        "Wrong: the expected answer is 'good', the model's answer was 'bad'."


def test_read_instruction_defensively():
    ok = GenResult("Here you go:\n```text\nLabel each text as good or bad.\n```\nThanks", "stop")
    assert read_instruction(ok, "ask", ["Old one."]) == ("Label each text as good or bad.", None)
    assert read_instruction(GenResult("```\nOld one here.\n```", "stop"), "", ["Old one here."])[1] == \
        "copy of a parent prompt"
    assert read_instruction(GenResult("Thinking.\n\nMore thinking.", "stop"), "", [])[1] == "no ``` block"
    assert read_instruction(GenResult("I think the instruction should", "length"), "", [])[1].startswith("truncated")
    echo = "Read the feedback on every response: note what went wrong"
    assert read_instruction(GenResult(echo, "stop"), "blah. " + echo + " blah", [])[1] == "echo of the request"


def _run(tmp_path, reply, budget=4000, **options):
    strategy = GEPA(GEPAConfig(**{"iterations": 10, "pareto_examples": 8, **options}))
    run = make_run(strategy, optimizer=FakeBackend("opt", replies=reply), run_dir=tmp_path,
                   budget=Budget(max_examples=budget))
    report = run.run()
    run.log.close()
    events = [json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    return strategy, run, report, events


def _numbered():
    counter = iter(range(100_000))
    return lambda req: f"```\nDecide whether text number {next(counter)} is good or bad.\n```"


def test_reflection_sees_traces_and_children_pass_the_minibatch_first(tmp_path):
    strategy, run, report, events = _run(tmp_path, _numbered())
    calls = [e for e in events if e["type"] == "optimizer_call"]
    reflect = [c for c in calls if c["purpose"] == "gepa.reflect"]
    assert reflect
    ask = reflect[0]["requests"][0]["messages"][0]["content"]
    assert ask.count("# Example ") == 3 and "Feedback: " in ask and "Score: " in ask and "Input: item train" in ask
    evals = [e for e in events if e["type"] == "eval" and e.get("phase") == "search"]
    children = {c.id: c for c in run.history.candidates() if c.origin == "gepa.reflect"}
    for cid, child in children.items():
        mine = [e for e in evals if e["candidate_id"] == cid]
        assert mine[0]["split"] == "train" and len(mine[0]["example_ids"]) == 3  # the minibatch first
        assert mine[0]["example_ids"] == child.meta["minibatch"]
    accepted = [e for e in events if e["type"] == "note" and e["kind"] == "gepa.accepted"]
    rejected = [e for e in events if e["type"] == "note" and e["kind"] == "gepa.rejected"]
    def dev_ids(cid):
        return {i for e in evals if e["candidate_id"] == cid and e["split"] == "dev" for i in e["example_ids"]}
    for note in rejected:
        if "parent_sum" in note:
            assert note["child_sum"] <= note["parent_sum"]
            assert not dev_ids(note["candidate"])  # never scored on the Pareto set
    assert accepted
    for note in accepted:
        assert dev_ids(note["candidate"]) == set(strategy.pareto_ids) and len(strategy.pareto_ids) == 8
    assert len(strategy.pool) == len(run.task.seed_prompts) + len(accepted)


def test_merge_combines_two_frontier_candidates(tmp_path):
    strategy, run, report, events = _run(tmp_path, _numbered(), budget=20000, iterations=40)
    merges = [e for e in events if e["type"] == "optimizer_call" and e["purpose"] == "gepa.merge"]
    assert merges and strategy.merges_tried <= 5
    ask = merges[0]["requests"][0]["messages"][0]["content"]
    assert "Instruction A:" in ask and "Instruction B:" in ask
    merged = [c for c in run.history.candidates() if c.origin == "gepa.merge"]
    assert merged and all(len(c.parents) == 2 for c in merged)
    first = [e for e in events if e["type"] == "eval" and e.get("phase") == "search" and e["candidate_id"] == merged[0].id]
    assert first[0]["split"] == "dev" and len(first[0]["example_ids"]) == 5  # the merge subsample first


def test_unusable_replies_are_noted_not_scored(tmp_path):
    replies = iter(["", "Hmm.\n\nLet me think.", "```\nIs the text good or bad?\n```"] * 50)
    _, run, _, events = _run(tmp_path, lambda req: next(replies), iterations=6)
    reasons = {e["reason"] for e in events if e["type"] == "note" and e["kind"] == "proposal.rejected"}
    assert {"empty or too short", "no ``` block"} <= reasons
    assert reasons & {"copy of a parent prompt", "duplicate of an earlier candidate"}
    assert all(c.origin == "seed" for c in run.history.candidates())


def test_reflect_template_override_and_errors(tmp_path):
    good = tmp_path / "reflect.txt"
    good.write_text("Instruction: {instruction}\nWhat happened:\n{traces}\nBetter instruction in ``` marks:")
    strategy = GEPA(strategy_config(GEPA, {"prompt_files": {"reflect": str(good)}, "iterations": 2,
                                           "pareto_examples": 4}))
    run = make_run(strategy, run_dir=tmp_path, budget=Budget(max_examples=2000))
    run.run()
    run.log.close()
    asks = [e["requests"][0]["messages"][0]["content"] for e in map(json.loads, (tmp_path / "events.jsonl").read_text()
            .splitlines()) if e["type"] == "optimizer_call" and e["purpose"] == "gepa.reflect"]
    assert asks and all(a.startswith("Instruction: ") for a in asks)
    bad = tmp_path / "bad.txt"
    bad.write_text("Only {instruction}")
    with pytest.raises(ConfigError, match=r"template gepa.reflect from .*missing placeholder\(s\) \{traces\}"):
        strategy_config(GEPA, {"prompt_files": {"reflect": str(bad)}})
    with pytest.raises(ConfigError, match="unknown template name 'reflection'.*gepa.reflect, gepa.trace, gepa.merge"):
        strategy_config(GEPA, {"prompt_files": {"reflection": str(good)}})
    brace = tmp_path / "brace.txt"
    brace.write_text("{instruction} {traces} a lone { brace")
    with pytest.raises(ConfigError, match="malformed braces"):
        strategy_config(GEPA, {"prompt_files": {"reflect": str(brace)}})
