"""apo, opro, gepa, evoprompt_ga and evoprompt_de on a two-component program (fast tier): each proposal edits one
component, the meta-prompts carry the component's name and role, the other components and the examples' traces,
GEPA's trace-based component choice and system-aware merge, and the budget contract. The optimizer is the repo's
OpenAI-compatible test server, answering each meta-prompt in the format it asks for; the evaluator is a
deterministic word-overlap stand-in for a pipeline."""
from __future__ import annotations

import itertools
import json
import re
from pathlib import Path
from typing import Callable

import pytest

import promptopt
from promptopt import Program, Result
from promptopt.backends.fake import FakeBackend
from promptopt.budget import Budget
from promptopt.config import strategy_config
from promptopt.harness.program import ProgramScorer
from promptopt.registry import get
from promptopt.strategies.gepa import blamed
from promptopt.testing import check_every_budget
from promptopt.testing.openai_server import FakeOpenAIServer

WORDS = "the a answer number short step text carefully question facts".split()
ROWS = [{"id": f"r{i}", "key": w} for i, w in enumerate(WORDS * 3)]
ROLES = {"extract": "pulls what matters out of the input", "answer": "answers from the extracted facts"}
SEED = {"extract": ("Extract the key facts.", ROLES["extract"]), "answer": ("Answer the question.", ROLES["answer"])}

OPTIONS = {
    "apo": {"rounds": 2, "beam_width": 2, "minibatch_size": 4, "n_gradients": 2, "errors_per_gradient": 2,
            "paraphrases": 1, "max_expansion": 4},
    "opro": {"steps": 4, "proposals": 2, "eval_examples": 8, "exemplars": 2},
    "gepa": {"iterations": 8, "pareto_examples": 8},
    "evoprompt_ga": {"population": 4, "generations": 2, "eval_examples": 8},
    "evoprompt_de": {"population": 4, "generations": 2, "eval_examples": 8},
}


def overlap(components, examples):
    """Score 1 when the example's key word is in the program's text, with feedback and a trace saying why."""
    words = set(re.findall(r"\w+", " ".join(components.values()).lower()))
    return [Result(score=float(ex["key"] in words), output=ex["key"] if ex["key"] in words else "(missed)",
                   feedback=None if ex["key"] in words else f"the word {ex['key']!r} is missing",
                   trace={"words": len(words), "key": ex["key"]}) for ex in examples]


def program(evaluate=overlap) -> Program:
    return Program(SEED, evaluate, dev=ROWS[:16], test=ROWS[16:], version="v1")


def answer(blame: str = "the answer step is at fault") -> Callable[[str], str]:
    """An optimizer that answers each meta-prompt in the format it asks for, with a new text each time
    (one of WORDS in it, so some proposals score better); a blame question gets `blame`."""
    counter = itertools.count()

    def reply(ask: str) -> str:
        if "Reply with its name only" in ask:
            return blame
        n = next(counter)
        text = f"Mind the {WORDS[n % len(WORDS)]} word, take {n}."
        for marker, wrapped in (("<START>", f"<START>{text}<END>"), ("<INS>", f"<INS>{text}</INS>"),
                                ("<prompt>", f"<prompt>{text}</prompt>"), ("```", f"```\n{text}\n```")):
            if marker in ask:
                return wrapped
        return text
    return reply


def _make(strategy: str):
    cls = get("strategies", strategy)
    return cls(strategy_config(cls, OPTIONS[strategy]))


def _chat(reply: Callable[[str], str]) -> Callable[[list], str]:
    """`reply` as the test server's chat answer (to the last message)."""
    return lambda messages: reply(str(messages[-1]["content"]))


def _fake_optimizer() -> FakeBackend:
    """The same answers from an in-process backend, for the many short runs of the budget contract."""
    reply = answer()
    return FakeBackend("opt", replies=lambda r: reply(r.messages[-1][1]))


@pytest.fixture
def server(monkeypatch):
    """The test server as the optimizer (optimizer_backend="openai", model "test-model"); set .reply to change it."""
    with FakeOpenAIServer("test-model", max_lifetime=120) as s:
        s.reply = _chat(answer())
        monkeypatch.setenv("OPENAI_BASE_URL", s.url)
        yield s


def _run(tmp_path: Path, strategy: str, budget: int = 400, **options):
    return promptopt.optimize(program=program(), strategy=strategy, optimizer_model="test-model",
                              optimizer_backend="openai", budget={"max_examples": budget},
                              strategy_options={**OPTIONS[strategy], **options}, run_dir=str(tmp_path / "runs"),
                              cache=False, seed=1)


def _events(run_dir: str) -> list[dict]:
    return [json.loads(line) for line in (Path(run_dir) / "events.jsonl").read_text().splitlines()]


def _candidates(events: list[dict]) -> dict[str, dict]:
    return {e["candidate_id"]: e for e in events if e["type"] == "candidate"}


def _asks(events: list[dict], purpose: str | None = None) -> list[str]:
    return [r["messages"][-1]["content"] for e in events if e["type"] == "optimizer_call"
            and (purpose is None or e["purpose"] == purpose) for r in e["requests"]]


def _changed(parent: dict, child: dict) -> list[str]:
    return [n for (n, a), (_, b) in zip(parent["components"], child["components"]) if a != b]


@pytest.mark.parametrize("strategy", list(OPTIONS))
def test_each_proposal_edits_one_component_and_sees_the_program(tmp_path, server, strategy):
    report = _run(tmp_path, strategy)
    events = _events(report.run_dir)
    cands = _candidates(events)
    children = [c for c in cands.values() if c["parents"] and c["origin"] != "gepa.merge"]
    assert children, "no proposal was made"
    for child in children:
        changed = _changed(cands[child["parents"][0]], child)
        assert changed == [child["meta"]["component"]], child  # one component, the one the proposal names
    assert {c["meta"]["component"] for c in children} == {"extract", "answer"}  # round-robin reaches both
    asks = _asks(events)
    program_asks = [a for a in asks if 'Extract the key facts.' in a or 'Answer the question.' in a]
    assert program_asks
    for name, other in (("extract", "answer"), ("answer", "extract")):
        about = [a for a in asks if f'"{name}"' in a and ROLES[name] in a]
        assert about, f"no meta-prompt names the component {name} with its role"
        # the other components ride along as read-only context, with their roles
        assert any(f"- {other} ({ROLES[other]}): " in a for a in about)
    if strategy.startswith("evoprompt"):
        return  # EvoPrompt's operators learn from parents, not from examples: no trace is shown
    learned = [a for a in asks if "Trace: " in a]
    assert learned and any("Feedback: the word" in a for a in learned)
    assert all('"key": ' in a for a in learned)  # the evaluator's trace, as logged
    assert report.best_dev >= report.seed_dev


def test_single_prompt_meta_prompts_are_unchanged(tmp_path):
    """A single prompt takes the old templates: no component template is used, and no proposal names one."""
    from promptopt.testing import make_run
    for strategy in OPTIONS:
        optimizer = _fake_optimizer()
        (tmp_path / strategy).mkdir()
        run = make_run(_make(strategy),
                       optimizer=optimizer, run_dir=tmp_path / strategy, budget=Budget(max_examples=300))
        run.run()
        run.log.close()
        events = _events(str(tmp_path / strategy))
        assert not any("component" in c["meta"] for c in _candidates(events).values())
        assert not any("Trace: " in a or "program" in a for a in _asks(events)), strategy


def test_gepa_traces_selection_edits_the_component_the_reflection_lm_blames(tmp_path, server):
    report = _run(tmp_path, "gepa", component_selection="traces", use_merge=False)
    events = _events(report.run_dir)
    blames = _asks(events, "gepa.blame")
    assert blames and all("the word" in a and "Trace: " in a and "Reply with its name only: one of extract, answer"
                          in a for a in blames)
    assert all("Score: 1" not in a for a in blames)  # only the failing examples are shown
    reflected = [c for c in _candidates(events).values() if c["origin"] == "gepa.reflect"]
    assert reflected and {c["meta"]["component"] for c in reflected} == {"answer"}
    notes = [e for e in events if e["type"] == "note" and e["kind"] == "gepa.blame"]
    assert len(notes) == len(blames) and all(n["component"] == "answer" for n in notes)


def test_gepa_blame_that_names_no_component_falls_back_to_round_robin(tmp_path, server):
    server.reply = _chat(answer(blame="I cannot tell."))
    report = _run(tmp_path, "gepa", component_selection="traces", use_merge=False)
    events = _events(report.run_dir)
    notes = [e for e in events if e["type"] == "note" and e["kind"] == "gepa.blame"]
    assert notes and all("round-robin" in n["reason"] for n in notes)
    assert {n["component"] for n in notes} == {"extract", "answer"}


def test_blamed_reads_the_first_component_named():
    names = ["extract", "answer"]
    assert blamed("Answer. Not extract.", names) == "answer"
    assert blamed("the `extract` step, then answer", names) == "extract"
    assert blamed("the answers were wrong", names) is None  # whole words only
    assert blamed("", names) is None


def test_gepa_merge_takes_each_component_from_the_parent_that_changed_it(tmp_path, server):
    report = _run(tmp_path, "gepa", budget=3000, iterations=30, pareto_examples=16)
    events = _events(report.run_dir)
    cands = _candidates(events)
    merges = [c for c in cands.values() if c["origin"] == "gepa.merge"]
    assert merges, "no merge was tried"
    assert not _asks(events, "gepa.merge")  # the system-aware merge asks no LLM
    for m in merges:
        a, b = (cands[p] for p in m["parents"])
        took = m["meta"]["components_from"]
        assert set(took.values()) == {a["candidate_id"], b["candidate_id"]}  # something from each parent
        for (name, text), (_, ta), (_, tb) in zip(m["components"], a["components"], b["components"]):
            src = {a["candidate_id"]: ta, b["candidate_id"]: tb}
            assert text == (src[took[name]] if name in took else ta == tb and ta)
        # a component one parent changed since their most recent common ancestor, and the other kept, comes
        # from the one that changed it
        order = list(cands)
        common = _lineage(cands, a["candidate_id"]) & _lineage(cands, b["candidate_id"])
        anc = dict(cands[max(common, key=order.index)]["components"])
        for name in took:
            kept = [p["candidate_id"] for p in (a, b) if dict(p["components"])[name] == anc[name]]
            if len(kept) == 1:
                assert took[name] != kept[0]


def _lineage(cands: dict[str, dict], cid: str) -> set[str]:
    out, todo = set(), list(cands[cid]["parents"])
    while todo:
        p = todo.pop()
        if p not in out:
            out.add(p)
            todo += cands[p]["parents"]
    return out


@pytest.mark.parametrize("strategy", list(OPTIONS))
def test_every_budget_fits_on_a_program(strategy):
    prog = program()
    optimizer = _fake_optimizer()
    check_every_budget(lambda: _make(strategy),
                       prog.task, Budget(max_examples=150), program=ProgramScorer(prog), optimizer=optimizer)


@pytest.mark.parametrize("strategy", list(OPTIONS))
def test_a_one_component_program_is_edited_as_a_component(tmp_path, strategy):
    from promptopt.testing import make_run
    prog = Program({"answer": SEED["answer"]}, overlap, dev=ROWS[:16], test=ROWS[16:], version="v1")
    optimizer = _fake_optimizer()
    run = make_run(_make(strategy), task=prog.task, program=ProgramScorer(prog), optimizer=optimizer,
                   run_dir=tmp_path, budget=Budget(max_examples=300))
    run.run()
    run.log.close()
    events = _events(str(tmp_path))
    children = [c for c in _candidates(events).values() if c["parents"]]
    assert children and all(c["meta"]["component"] == "answer" and len(c["components"]) == 1 for c in children)
    merges = set(_asks(events, "gepa.merge"))  # one component: the LLM merges two texts, as for a single prompt
    assert all("(none: this is the program's only component)" in a for a in _asks(events) if a not in merges)
