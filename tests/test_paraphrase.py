from promptopt.strategies.paraphrase import Paraphrase, ParaphraseConfig
from promptopt.testing import StrategyContract, make_run
from promptopt.budget import Budget
from promptopt.backends.fake import FakeBackend


class TestParaphrase(StrategyContract):
    def make_strategy(self, **options):
        return Paraphrase(ParaphraseConfig(**options))


def test_bad_proposals_are_logged_not_adopted(tmp_path):
    replies = ["", "Is the text good or bad?", "Instruction: {input} says", "Sure! Here is the new instruction:\n\"Label the text as good or bad, carefully.\""]
    opt = FakeBackend("opt", replies=replies * 10)
    run = make_run(Paraphrase(ParaphraseConfig(rounds=1, proposals=4, parents=1)), optimizer=opt,
                   run_dir=tmp_path, budget=Budget(max_examples=500))
    report = run.run()
    run.log.close()
    texts = [c.text for c in run.history.candidates()]
    assert "Label the text as good or bad, carefully." in texts  # chatter and quotes stripped
    assert not any("{input}" in t for t in texts)
    import json
    notes = [n for l in (tmp_path / "events.jsonl").read_text().splitlines()
             if (n := json.loads(l))["type"] == "note" and n["kind"] == "proposal.rejected"]
    reasons = sorted(n["reason"] for n in notes)
    # The seed-prompt copy is either a copy of the parent or of the other seed, depending on ranking.
    assert reasons[0] == "contains template fields" and reasons[2] == "empty or too short"
    assert reasons[1] in ("copy of the parent prompt", "duplicate of an earlier candidate")
    assert report.candidates == 3
