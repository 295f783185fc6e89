"""Optimize a whole program: components, the user's evaluator as the scoring target, resume by replay
(fast tier: a deterministic word-overlap evaluator, no model)."""
from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import promptopt
from promptopt import Candidate, Program, Result
from promptopt.errors import ConfigError, ResumeError
from promptopt.harness.program import EvaluatorError

WORDS = "the a answer number short step text carefully question facts".split()
ROWS = [{"id": f"r{i}", "key": w} for i, w in enumerate(WORDS * 3)]
SEED = {"extract": ("Extract the key facts.", "pulls what matters out of the input"),
        "answer": ("Answer the question.", "answers from the extracted facts")}


def overlap(components, examples):
    """Score 1 when the example's key word is in the program's text: a deterministic stand-in for a pipeline."""
    words = set(components["extract"].lower().split()) | set(components["answer"].lower().split())
    return [Result(score=float(ex["key"] in words), trace={"words": len(words)}, output=ex["key"]) for ex in examples]


def _program(evaluate=overlap, **kw):
    args = dict(dev=ROWS[:16], test=ROWS[16:], version="v1")
    args.update(kw)
    return Program(SEED, evaluate, **args)


def _opt(program, tmp_path: Path, **kw):
    args = dict(strategy="hill_climb", optimizer_model=None, budget={"max_examples": 120},
                run_dir=str(tmp_path / "runs"), cache=False)
    args.update(kw)
    return promptopt.optimize(program=program, **args)


def _events(run_dir: str) -> list[dict]:
    return [json.loads(line) for line in (Path(run_dir) / "events.jsonl").read_text().splitlines()]


def test_single_prompt_candidates_keep_their_ids():
    """Ids computed by main's code before components existed: old run logs resume unchanged."""
    assert Candidate("Classify the sentiment.").id == "9bb6a10638a9a306"
    assert Candidate("Answer: ", demos=("t1", "t2")).id == "92982b4c373029fa"
    assert Candidate("Be brief.", system="You are terse.").id == "27e76a013ffc91b2"
    assert Candidate("x", demos=("a",), demo_answers=("yes",)).id == "16dfd850e98eaa18"
    assert "components" not in Candidate("x").to_json()


def test_component_candidates_round_trip_and_edit_one_component():
    c = Candidate.of_components({"a": "one", "b": "two"}, origin="seed")
    assert Candidate.from_json(c.to_json()).id == c.id
    child = c.with_component("b", "three", origin="edit")
    assert child.component("a") == "one" and child.component("b") == "three" and child.parents == (c.id,)
    assert child.id != c.id and Candidate.of_components({"a": "one", "b": "three"}).id == child.id
    assert c.revise("uno", origin="x").component("a") == "uno"  # an instruction edit is the first component's


def test_program_run_logs_components_and_traces_and_budgets_examples(tmp_path):
    calls = []

    def counting(components, examples):
        calls.append(len(examples))
        return overlap(components, examples)
    report = _opt(_program(counting, batch_size=4), tmp_path)
    assert report.best_components.keys() == {"extract", "answer"}
    assert report.search["examples"] <= 120 and report.seed_test is not None
    events = _events(report.run_dir)
    cands = [e for e in events if e["type"] == "candidate"]
    assert all([n for n, _ in e["components"]] == ["extract", "answer"] for e in cands)
    evals = [e for e in events if e["type"] == "eval"]
    assert evals and all(r["trace"] == {"words": r["trace"]["words"]} for e in evals for r in e["results"])
    assert max(calls) == 4  # batched
    assert sum(calls) == sum(len(e["results"]) for e in evals)  # no cache: every result was one evaluation


def test_an_exception_fails_only_its_example_with_the_traceback_logged(tmp_path):
    def flaky(components, examples):
        if any(ex["id"] == "r3" for ex in examples):
            raise RuntimeError("the API said no for r3")
        return overlap(components, examples)
    report = _opt(_program(flaky, batch_size=4), tmp_path)
    evals = [e for e in _events(report.run_dir) if e["type"] == "eval"]
    failed = [r for e in evals for r in e["results"] if r.get("error")]
    assert failed and {r["example_id"] for r in failed} == {"r3"}
    assert "Traceback" in failed[0]["error"] and "the API said no for r3" in failed[0]["error"]
    assert all(e["state"] == "complete" for e in evals)  # the others in the batch were scored


@pytest.mark.parametrize("bad, match", [
    (lambda c, exs: overlap(c, exs)[:-1], r"returned 3 results for 4 examples \(r\d+"),
    (lambda c, exs: [Result(float("nan"))] * len(exs), r"example r\d+: the evaluator's score is nan"),
    (lambda c, exs: [Result("high")] * len(exs), r"example r\d+: the evaluator's score is 'high'"),
    (lambda c, exs: [c["extrct"]], r"reads component 'extrct', which the program does not have"),
])
def test_an_evaluator_that_breaks_its_contract_is_a_clear_error(tmp_path, bad, match):
    with pytest.raises(EvaluatorError, match=match):
        _opt(_program(bad, batch_size=4), tmp_path)


def test_unknown_component_and_unfingerprintable_evaluator_are_refused_before_any_call():
    @promptopt.evaluator(components=["extract", "solve"], version="1")
    def reads(components, examples):
        raise AssertionError("never called")
    with pytest.raises(ConfigError, match=r"\['answer'\] are not known to the evaluator"):
        _program(reads)
    with pytest.raises(ConfigError, match="cannot fingerprint the evaluator.*pass version="):
        _program(eval("lambda c, exs: []"), version=None)
    assert _program(overlap, version=None).version.startswith("src:")  # a function's source is its version
    with pytest.raises(ConfigError, match=r"evaluate=None\) needs version="):
        _program(None, version=None)
    with pytest.raises(ConfigError, match=r"example id 'r0' appears twice \(dev and test\)"):
        _program(test=ROWS[:2])


def test_async_evaluator_runs_with_bounded_concurrency(tmp_path):
    state = {"now": 0, "max": 0}

    async def slow(components, examples):
        state["now"] += 1
        state["max"] = max(state["max"], state["now"])
        for _ in range(5):
            await asyncio.sleep(0)  # yield to the others, as a network wait would
        state["now"] -= 1
        return overlap(components, examples)
    _opt(_program(slow, concurrency=3), tmp_path)
    assert state["max"] == 3


def test_a_resume_needs_the_same_program(tmp_path):
    report = _opt(_program(), tmp_path, budget={"max_examples": 40})
    (Path(report.run_dir) / "summary.json").unlink()
    with pytest.raises(ResumeError, match="not the one the run was made with"):
        _opt(_program(version="v2"), tmp_path, resume=report.run_dir)


SCRIPT = textwrap.dedent("""
    import json, os, signal, sys
    sys.path.insert(0, {here!r})
    import promptopt
    from test_program import _program, overlap
    kill_at, log = int(sys.argv[1]), sys.argv[2]
    def counting(components, examples):
        with open(log, "a") as f:
            for ex in examples:
                f.write(json.dumps([dict(components), ex["id"]]) + "\\n")
        if kill_at and sum(1 for _ in open(log)) >= kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        return overlap(components, examples)
    r = promptopt.optimize(program=_program(counting, batch_size=2), strategy="hill_climb", optimizer_model=None,
                           budget={{"max_examples": 120}}, run_dir=sys.argv[3], cache=False)
    print(json.dumps(r.to_json()))
""")


def test_sigkill_mid_run_then_resume_repeats_no_logged_evaluation_and_matches(tmp_path):
    script = tmp_path / "kill.py"
    script.write_text(SCRIPT.format(here=str(Path(__file__).parent)))
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent)}
    full = subprocess.run([sys.executable, str(script), "0", str(tmp_path / "full.log"), str(tmp_path / "a")],
                          capture_output=True, text=True, env=env, check=True)
    expected = json.loads(full.stdout.strip().splitlines()[-1])
    killed = subprocess.run([sys.executable, str(script), "61", str(tmp_path / "killed.log"), str(tmp_path / "b")],
                            capture_output=True, text=True, env=env)
    assert killed.returncode == -9
    run_dir = next((tmp_path / "b").iterdir())
    logged = {(json.dumps(next(e for e in _events(str(run_dir)) if e.get("candidate_id") == ev["candidate_id"]
                               and e["type"] == "candidate")["components"]), r["example_id"])
              for ev in _events(str(run_dir)) if ev["type"] == "eval" for r in ev["results"]}
    assert logged  # the kill came mid-run, after some evaluations were logged
    again: list = []

    def counting(components, examples):
        again.extend((json.dumps([list(c) for c in components.items()]), ex["id"]) for ex in examples)
        return overlap(components, examples)
    report = promptopt.optimize(program=_program(counting, batch_size=2), strategy="hill_climb",
                                optimizer_model=None, resume=str(run_dir))
    assert not (set(again) & logged)  # goal: 0 evaluator calls repeated for a logged result
    for k in ("best_id", "best_dev", "best_test", "seed_test", "steps", "candidates"):
        assert report.to_json()[k] == expected[k], k


def _children(run_dir: str) -> list[dict]:
    events = _events(run_dir)
    by_id = {e["candidate_id"]: e for e in events if e["type"] == "candidate"}
    return [(by_id[e["parents"][0]], e) for e in by_id.values() if e["parents"] and e["parents"][0] in by_id]


@pytest.mark.parametrize("strategy, optimizer", [("hill_climb", None), ("paraphrase", "fake")])
def test_each_proposal_edits_one_component_taking_turns(tmp_path, strategy, optimizer):
    how = {"optimizer_model": optimizer, "optimizer_backend": optimizer} if optimizer else {"optimizer_model": None}
    report = _opt(_program(), tmp_path, strategy=strategy, **how)
    pairs = _children(report.run_dir)
    assert pairs
    for parent, child in pairs:
        changed = [n for (n, a), (_, b) in zip(parent["components"], child["components"]) if a != b]
        assert changed == [child["meta"]["component"]]  # one component, the one the proposal names
    assert {child["meta"]["component"] for _, child in pairs} == {"extract", "answer"}  # round-robin reaches both


@pytest.mark.parametrize("strategy", ["pmpo", "rlprompt"])
def test_strategies_without_components_refuse_a_program_in_one_line(tmp_path, strategy):
    with pytest.raises(ConfigError, match=f"strategy {strategy} cannot optimize a program: "):
        _opt(_program(), tmp_path, strategy=strategy, optimizer_model="fake", optimizer_backend="fake")
    assert not (tmp_path / "runs").exists()


LEGACY = Path(__file__).parent / "data" / "legacy_run"  # made by the code before components existed


def test_a_run_made_before_components_resumes_with_the_same_events_and_result(tmp_path):
    """tests/data/legacy_run: `promptopt optimize --task demo --strategy paraphrase --backend fake --model m
    --budget 200 --seed 3 --demos 2 --no-cache` by the code before this change (04fb257), cut as a SIGKILL would
    cut it (after step 2's evaluations) and resumed by today's code."""
    from promptopt.api import resume_config, run_config
    from promptopt.runlog import read_events
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.json").write_bytes((LEGACY / "config.json").read_bytes())
    lines = (LEGACY / "events.jsonl").read_bytes().splitlines(keepends=True)
    (run_dir / "events.jsonl").write_bytes(b"".join(lines[:13]))
    report = run_config(resume_config(run_dir), resume_dir=run_dir).to_json()
    recorded = json.loads((LEGACY / "summary.json").read_text())
    for k in ("best_id", "best_prompt", "best_dev", "best_test", "seed_test", "steps", "candidates", "best_demos"):
        assert report[k] == recorded[k], k

    def stream(path: Path) -> list:
        return [{k: v for k, v in e.items() if k not in ("time", "usage")}
                for e in read_events(path / "events.jsonl")[0] if "seq" in e]
    assert stream(run_dir) == stream(LEGACY)


def test_results_reach_the_cache_during_a_step_so_a_killed_step_is_not_redone(tmp_path, monkeypatch):
    """With the cache on, results are written while a step runs (here after every batch): what a process
    killed mid-step had evaluated is served from the cache when that step runs again (here in a new run of
    the same program, so that only the cache, not a log's replay, can spare it)."""
    monkeypatch.setattr("promptopt.harness.program.FLUSH_SECONDS", 0.0)
    seen: list = []

    def stops(components, examples):
        seen.extend(ex["id"] for ex in examples)
        if len(seen) > 20:
            raise KeyboardInterrupt  # stands in for the kill, mid-step
        return overlap(components, examples)
    cache = str(tmp_path / "cache.sqlite")
    from promptopt.api import prepare, program_config
    with pytest.raises(KeyboardInterrupt):
        run, _ = prepare(program_config(_program(stops, batch_size=2), "hill_climb", optimizer_model=None,
                                        budget=120, settings={"run_dir": str(tmp_path / "runs"), "cache_path": cache}),
                         program=_program(stops, batch_size=2))
        while run.step_once():
            pass
    again: list = []

    def counting(components, examples):
        again.extend(ex["id"] for ex in examples)
        return overlap(components, examples)
    report = _opt(_program(counting, batch_size=2), tmp_path / "b", cache=True, cache_path=cache)
    scored = sum(len(e["results"]) for e in _events(report.run_dir) if e["type"] == "eval")
    assert len(seen) == 22 and report.target_usage.cache_hits >= 20  # the 20 done before the kill
    assert len(again) + report.target_usage.cache_hits == scored
