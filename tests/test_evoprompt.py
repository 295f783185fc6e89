"""EvoPrompt GA and DE: the evolutionary loop, and defensive reading of the optimizer's replies."""
import json

import pytest

from promptopt.backends.fake import FakeBackend
from promptopt.budget import Budget
from promptopt.errors import CapabilityError
from promptopt.strategies.blocks.evoprompt import EvolutionConfig, extract_prompt
from promptopt.loop import Run
from promptopt.resolved import ResolvedRun
from promptopt.strategies.evoprompt_de import EvoPromptDE
from promptopt.strategies.evoprompt_ga import EvoPromptGA
from promptopt.testing import StrategyContract, make_run, toy_task


class TestEvoPromptGA(StrategyContract):
    def make_strategy(self, **options):
        return EvoPromptGA(EvolutionConfig(**options))


class TestEvoPromptDE(StrategyContract):
    def make_strategy(self, **options):
        return EvoPromptDE(EvolutionConfig(**options))


def test_extract_prompt_reads_tags_defensively():
    reply = "Step 1: Decide if it is good.\nStep 2: <prompt>Decide carefully whether the text is good or bad.</prompt>"
    assert extract_prompt(reply) == ("Decide carefully whether the text is good or bad.", None)
    two = "<prompt>first one here</prompt> then <prompt>Second and final prompt.</prompt>"
    assert extract_prompt(two)[0] == "Second and final prompt."
    assert extract_prompt("Step 2: <prompt>Judge the text as good or bad\n\nNow")[0] == "Judge the text as good or bad"
    assert extract_prompt("Label the review as good or bad.") == ("Label the review as good or bad.", None)
    assert extract_prompt("Step 1: merge them.\nStep 2: make it better.")[1] == "no <prompt> tags"
    assert extract_prompt("<prompt>Restate the given hard passage plainly and simply, without losing any "
                          "information.</prompt>")[1] == "copy of the worked example"
    assert extract_prompt("<prompt>Classify the text.</prompt>", parents=["Classify the text."])[1] == \
        "copy of a parent prompt"
    assert extract_prompt("<prompt>Read {input} now please</prompt>")[1] == "contains template fields"
    assert extract_prompt("<prompt></prompt>")[1] == "empty or too short"
    assert extract_prompt("anything", error="timeout")[1].startswith("optimizer call failed")


def test_needs_an_optimizer():
    with pytest.raises(CapabilityError):
        Run(ResolvedRun(task=toy_task(), strategy=EvoPromptGA(EvolutionConfig())), target=FakeBackend(), optimizer=None)


REPLIES = [
    "",  # nothing
    "Step 1: combine.\nStep 2: mutate the prompt.",  # steps without tags
    "<prompt>Rewrite the following sentence in plain, simple words without changing its meaning.</prompt>",
    "<prompt>Is the text good or bad?</prompt>",  # a parent, verbatim
]


@pytest.mark.parametrize("cls", [EvoPromptGA, EvoPromptDE])
def test_unusable_replies_are_noted_and_never_adopted(cls, tmp_path):
    counter = iter(range(10_000))

    def reply(req):
        k = next(counter)
        if "new version of the instruction" in req.messages[0][1]:  # the initial paraphrases
            return f"Tell whether text {k} is good or bad."
        if k % 5 == 4:
            return f"Step 1: merged.\nStep 2: <prompt>Say whether text number {k} is good or bad.</prompt>"
        return REPLIES[k % 5] if k % 5 < 4 else ""

    run = make_run(cls(EvolutionConfig(population=4, generations=3)), optimizer=FakeBackend("opt", replies=reply),
                   run_dir=tmp_path, budget=Budget(max_examples=2000))
    report = run.run()
    run.log.close()
    events = [json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    reasons = {e["reason"] for e in events if e["type"] == "note" and e["kind"] == "proposal.rejected"}
    assert {"empty reply", "no <prompt> tags", "copy of the worked example", "copy of a parent prompt"} <= reasons
    texts = {c.text for c in run.history.candidates()}
    assert not any("plain, simple words" in t or "Step" in t for t in texts)
    children = [c for c in run.history.candidates() if c.origin in ("evoprompt.crossover", "evoprompt.de")]
    assert children and all(c.text.startswith("Say whether text number") for c in children)
    purpose = "evoprompt.crossover" if cls is EvoPromptGA else "evoprompt.de"
    assert all(c.meta["edit"]["op"] == purpose.split(".")[1] and c.parents for c in children)
    assert any(e["type"] == "optimizer_call" and e["purpose"] == purpose for e in events)
    assert report.stop_reason == "strategy finished: all 3 generations made (generations=3)"  # it says why


def test_ga_initial_population_and_elitist_survival():
    ga = EvoPromptGA(EvolutionConfig(population=6, generations=3))
    run = make_run(ga, budget=Budget(max_examples=5000))
    run.run()
    origins = [c.origin for c in run.history.candidates()]
    assert origins[:2] == ["seed", "seed"] and origins[2:6] == ["evoprompt.paraphrase"] * 4
    assert len(ga.population) == 6
    everyone = sorted((ga.fitness(run._ctx, c.id) for c in run.history.candidates()), reverse=True)
    assert [m.fitness for m in ga.population] == everyone[:6]  # top-N of all, parents and children


class RecordingDE(EvoPromptDE):
    def __init__(self, config):
        super().__init__(config)
        self.generations = []

    def survive(self, ctx, children):
        before = list(self.population)
        super().survive(ctx, children)
        self.generations.append((before, list(self.population), dict(zip(self._slots, children))))


def test_de_child_replaces_its_member_only_when_better():
    de = RecordingDE(EvolutionConfig(population=5, generations=4))
    run = make_run(de, budget=Budget(max_examples=5000))
    run.run()
    assert len(de.generations) == 4
    replaced = 0
    for before, after, children in de.generations:
        for j, (old, new) in enumerate(zip(before, after)):
            child = children.get(j)
            if child is not None and child.fitness > old.fitness:
                assert new == child
                replaced += 1
            else:
                assert new == old
    assert replaced
    assert de.best.fitness == max(de.fitness(run._ctx, c.id) for c in run.history.candidates())
