"""OPRO: the meta-prompt (ascending scored trajectory, exemplars), dedupe, defensive reading, rejected feedback."""
import json

import pytest

from promptopt.backends.base import GenResult
from promptopt.backends.fake import FakeBackend
from promptopt.budget import Budget
from promptopt.config import strategy_config
from promptopt.errors import ConfigError
from promptopt.strategies.opro import OPRO, OPROConfig, read_proposal
from promptopt.testing import StrategyContract, make_run


class TestOPRO(StrategyContract):
    def make_strategy(self, **options):
        return OPRO(OPROConfig(**{"steps": 4, "proposals": 4, **options}))


def _ins(k: int) -> str:
    return f"<INS>Decide whether text number {k} is good or bad.</INS>"


def _run(tmp_path, replies, **options):
    strategy = OPRO(OPROConfig(**{"steps": 3, "proposals": 4, **options}))
    opt = FakeBackend("opt", replies=replies)
    run = make_run(strategy, optimizer=opt, run_dir=tmp_path, budget=Budget(max_examples=5000))
    report = run.run()
    run.log.close()
    events = [json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    return run, report, events


def test_meta_prompt_shows_scores_ascending_and_exemplars():
    strategy = OPRO(OPROConfig(steps=2, proposals=3, max_instructions=3))
    run = make_run(strategy, budget=Budget(max_examples=5000))
    run.run()
    ctx = run._ctx
    trajectory = strategy.trajectory(ctx)
    assert len(trajectory) == 3
    scores = [s for _, s in trajectory]
    assert scores == sorted(scores)  # ascending: the best instruction is shown last
    best = run.history.ranked("dev")[0]
    assert trajectory[-1][0].id == best[0].id
    meta = strategy.meta_prompt(ctx, trajectory)
    positions = [meta.index(f"text:\n{c.text}\nscore:\n{round(100 * s)}") for c, s in trajectory]
    assert positions == sorted(positions)
    assert meta.count("Problem:\n<INS>\nText: item train") == 3  # exemplars with the <INS> slot, from train
    assert "Ground truth answer:\ngood" in meta or "Ground truth answer:\nbad" in meta
    assert "rejected" not in meta  # feedback is off by default
    assert "\n\n\n" not in meta


def test_proposals_are_sampled_with_distinct_seeds_at_the_paper_temperature(tmp_path):
    strategy = OPRO(OPROConfig(steps=1))
    run = make_run(strategy, run_dir=tmp_path, budget=Budget(max_examples=5000))
    run.run()
    run.log.close()
    calls = [e for e in map(json.loads, (tmp_path / "events.jsonl").read_text().splitlines())
             if e["type"] == "optimizer_call"]
    assert len(calls) == 1 and calls[0]["purpose"] == "opro.propose"
    reqs = calls[0]["requests"]
    assert len(reqs) == 8 and {r["temperature"] for r in reqs} == {1.0}
    assert len({r["seed"] for r in reqs}) == 8 and len({r["messages"][0]["content"] for r in reqs}) == 1


def test_duplicates_and_unreadable_replies_are_rejected_and_noted(tmp_path):
    replies = [_ins(1), _ins(1), "<INS>Is the text good or bad?</INS>", "First idea.\n\nSecond idea.",
               _ins(2), "", "<INS>Below are some problems. <INS> marks where the instruction goes.</INS>",
               "Just one line: label the text as good or bad please."] * 5
    run, report, events = _run(tmp_path, replies)
    texts = [c.text for c in run.history.candidates()]
    assert len(texts) == len(set(texts))
    assert "Decide whether text number 1 is good or bad." in texts
    assert "Just one line: label the text as good or bad please." in texts  # a lone paragraph without tags
    reasons = [e["reason"] for e in events if e["type"] == "note" and e["kind"] == "proposal.rejected"]
    assert {"duplicate of an earlier instruction", "no <INS> tags", "empty or too short",
            "copy of the meta-prompt"} <= set(reasons)
    children = [c for c in run.history.candidates() if c.origin == "opro"]
    assert all(c.parents and c.meta["step"] >= 1 for c in children)


def test_read_proposal_edge_cases():
    ok = GenResult("Sure! <INS>Label each text as good or bad.</INS> Hope it helps.", "stop")
    assert read_proposal(ok, "") == ("Label each text as good or bad.", None)
    unclosed = GenResult("<INS>Label each text as good or bad.\n\nMore chatter here", "length")
    assert read_proposal(unclosed, "") == ("Label each text as good or bad.", None)
    cut = GenResult("Here is my thinking about the instructions and what", "length")
    assert read_proposal(cut, "")[1] == "truncated: the reply hit max_tokens"
    assert read_proposal(GenResult("", "stop", error="boom"), "")[1].startswith("optimizer call failed")
    assert read_proposal(GenResult("<INS>Read {input} now please</INS>", "stop"), "")[1] == "contains template fields"


def test_rejected_feedback_reaches_the_next_meta_prompt(tmp_path):
    replies = ["<INS>Is the text good or bad?</INS>", "one\n\ntwo", _ins(3), _ins(4)] * 10
    _, _, events = _run(tmp_path, replies, feedback_rejected=True)
    metas = [e["requests"][0]["messages"][0]["content"] for e in events if e["type"] == "optimizer_call"]
    assert "rejected" not in metas[0]
    assert 'These recent proposals were rejected and not scored:\n- "Is the text good or bad?": ' \
           "duplicate of an earlier instruction" in metas[1]
    assert '- "one two": no <INS> tags' in metas[1]
    (tmp_path / "off").mkdir()
    _, _, off = _run(tmp_path / "off", replies)
    assert not any("rejected" in e["requests"][0]["messages"][0]["content"] for e in off if e["type"] == "optimizer_call")


def test_stops_before_paying_the_optimizer_when_the_budget_cannot_score_a_proposal(tmp_path):
    strategy = OPRO(OPROConfig(steps=50, proposals=8))
    opt = FakeBackend("opt")
    run = make_run(strategy, optimizer=opt, budget=Budget(max_examples=12 * 2 + 12 * 3))
    report = run.run()
    assert run.tracker.examples <= 60
    assert opt.calls == 1  # one step's proposals, trimmed to the 3 the budget pays for
    assert report.stop_reason == "budget: examples"


def test_meta_prompt_file_override_and_its_errors(tmp_path):
    good = tmp_path / "meta.txt"
    good.write_text("Scores so far:\n{instructions}\nExamples:\n{exemplars}\n{rejected}\nA better one in <INS></INS>, "
                    "please {{really}}.")
    cfg = strategy_config(OPRO, {"prompt_files": {"meta": str(good)}})
    strategy = OPRO(cfg)
    run = make_run(strategy, budget=Budget(max_examples=5000))
    run.run()
    assert strategy.meta_prompt(run._ctx, strategy.trajectory(run._ctx)).startswith("Scores so far:\ntext:\n")
    missing = tmp_path / "missing.txt"
    missing.write_text("Only {instructions} here.")
    unknown = tmp_path / "unknown.txt"
    unknown.write_text("{instructions} {exemplars} {rejected} {colour}")
    cases = [({"meta": str(missing)}, "missing placeholder(s) {exemplars}, {rejected}"),
             ({"meta": str(unknown)}, "unknown placeholder(s) {colour}"),
             ({"metta": str(good)}, "unknown template name 'metta' (this strategy has: opro.meta, opro.pair"),
             ({"meta": str(tmp_path / "nope.txt")}, "nope.txt does not exist"),
             ({"pair": str(good)}, "template opro.pair from")]
    for files, message in cases:
        with pytest.raises(ConfigError) as e:
            strategy_config(OPRO, {"prompt_files": files})
        assert message in str(e.value) and "\n" not in str(e.value)


def test_templates_command_prints_the_templates_in_use(tmp_path, capsys):
    from promptopt.cli import main
    meta = tmp_path / "meta.txt"
    meta.write_text("Mine: {instructions} {exemplars} {rejected}")
    assert main(["templates", "--strategy", "opro", "--set", f"opro.prompt_files.meta={meta}"]) == 0
    out = capsys.readouterr().out
    assert f"== opro.meta  ({meta}; placeholders: {{exemplars}}, {{instructions}}, {{rejected}})" in out
    assert "Mine: {instructions}" in out and "== opro.pair  (default;" in out
    assert main(["templates", "--strategy", "opro", "--set", f"opro.prompt_files.nope={meta}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("promptopt: error: strategy options: ") and "unknown template name 'nope'" in err
    assert "Value error" not in err and "\n" not in err
