"""Plum-style metaheuristics over phrase edits: hill climbing, simulated annealing, tabu, GA, harmony."""
import json

import pytest

from promptopt.backends.fake import FakeBackend
from promptopt.budget import Budget
from promptopt.loop import Run
from promptopt.resolved import ResolvedRun
from promptopt.strategies.harmony import Harmony, HarmonyConfig
from promptopt.strategies.hill_climb import HillClimb
from promptopt.strategies.plum_ga import PlumGA, PlumGAConfig
from promptopt.strategies.simulated_annealing import AnnealingConfig, SimulatedAnnealing
from promptopt.strategies.tabu import Tabu, TabuConfig
from promptopt.strategies.blocks.phrase_search import PhraseSearchConfig, clean_phrase
from promptopt.task import Task
from promptopt.testing import StrategyContract, make_run, toy_task

LONG_SEED = "Read the text carefully, then decide whether it is good or bad and answer with one word."


def long_seed_task(**kw) -> Task:
    """The toy task with a seed prompt that has enough phrases for a real neighbourhood."""
    task = toy_task(**kw)
    return Task(**{**task.__dict__, "seed_prompts": (LONG_SEED,)})


def run_without_optimizer(strategy, task=None, budget=300, seed=0) -> Run:
    resolved = ResolvedRun(task=task or long_seed_task(), strategy=strategy, budget=Budget(max_examples=budget), seed=seed)
    run = Run(resolved, target=FakeBackend(), optimizer=None)
    run.report = run.run()
    return run


class TestHillClimb(StrategyContract):
    def make_strategy(self, **options):
        return HillClimb(PhraseSearchConfig(**options))


class TestSimulatedAnnealing(StrategyContract):
    def make_strategy(self, **options):
        return SimulatedAnnealing(AnnealingConfig(**options))


class TestTabu(StrategyContract):
    def make_strategy(self, **options):
        return Tabu(TabuConfig(**options))


class TestHarmony(StrategyContract):
    def make_strategy(self, **options):
        return Harmony(HarmonyConfig(**options))


class TestPlumGAMutationOnly(StrategyContract):
    def make_strategy(self, **options):
        return PlumGA(PlumGAConfig(**options))


class TestPlumGAWithCrossover(StrategyContract):
    def make_task(self):
        return long_seed_task()

    def make_strategy(self, **options):
        return PlumGA(PlumGAConfig(crossover=True, **options))


ALL = [HillClimb(PhraseSearchConfig(patience=None)), SimulatedAnnealing(AnnealingConfig(patience=None)),
       Tabu(TabuConfig(patience=None)), Harmony(HarmonyConfig(patience=None)),
       PlumGA(PlumGAConfig(patience=None, crossover=True))]


@pytest.mark.parametrize("strategy", ALL, ids=lambda s: type(s).__name__)
def test_runs_without_an_optimizer_and_logs_lineage(strategy):
    assert not type(strategy).needs_optimizer
    run = run_without_optimizer(strategy)
    assert run.tracker.optimizer_calls == 0
    cands = run.history.candidates()
    assert len(cands) > 5
    for c in cands:
        if c.origin == "seed":
            continue
        assert c.origin.startswith("plum.") and c.origin != "plum.paraphrase"
        assert c.parents and all(p in run.history for p in c.parents)
        assert c.meta["edit"]["op"]
    assert strategy.best is not None and strategy.best.fitness >= run.history.score(
        next(c.id for c in cands if c.origin == "seed"))


def test_the_last_step_shrinks_to_spend_the_whole_budget():
    run = run_without_optimizer(HillClimb(PhraseSearchConfig(candidates=5, steps=50, patience=None)), budget=100)
    # 8 candidates of 12 dev examples (the 8th step had room for 2 of its 5 in full), then the next step's
    # first candidate on the 4 examples left.
    assert run.tracker.examples == 100
    assert run.report.stop_reason.startswith("budget")


def test_paraphrase_edits_use_the_optimizer_and_bad_replies_are_noted(tmp_path):
    replies = ["", "{input} phrase", "carefully and slowly", "Phrase: \"with a single word\""] * 20
    run = make_run(HillClimb(PhraseSearchConfig(edits=("paraphrase",), candidates=4, steps=3, patience=None)),
                   task=long_seed_task(), optimizer=FakeBackend("opt", replies=replies), run_dir=tmp_path)
    run.run()
    run.log.close()
    events = [json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    calls = [e for e in events if e["type"] == "optimizer_call"]
    assert calls and all(c["purpose"] == "plum.paraphrase" for c in calls)
    reasons = {e["reason"] for e in events if e["type"] == "note" and e["kind"] == "proposal.rejected"}
    assert {"empty or no letters", "contains template braces"} <= reasons
    made = [c for c in run.history.candidates() if c.origin == "plum.paraphrase"]
    assert made and all("{" not in c.text for c in made)
    assert {c.meta["edit"]["new"] for c in made} <= {"carefully and slowly", "with a single word"}


def test_clean_phrase():
    assert clean_phrase("Sure! Here it is:\n\"read closely\".", "read carefully") == ("read closely", None)
    assert clean_phrase("Read Carefully", "read carefully")[1] == "copy of the phrase"
    assert clean_phrase("x" * 200, "read")[1].startswith("too long")


def test_annealing_reports_the_best_state_not_the_last():
    # Hot, with one candidate a step: a random walk, which leaves its best state behind.
    ended_below_best = 0
    for seed in range(4):
        sa = SimulatedAnnealing(AnnealingConfig(temperature=100.0, cooling=1000.0, patience=None, steps=12,
                                                candidates=1, objective="task"))
        run = run_without_optimizer(sa, budget=2000, seed=seed)
        assert sa.best.fitness == max(run.history.score(c.id) for c in run.history.candidates())
        assert run.report.best_dev == pytest.approx(sa.best.fitness)
        ended_below_best += sa.current.fitness < sa.best.fitness
    assert ended_below_best >= 3


class RecordingTabu(Tabu):
    """Tabu that records, at every move, the tabu list, the proposals and where it moved."""

    def __init__(self, config):
        super().__init__(config)
        self.trace = []

    def propose(self, ctx):
        proposals = super().propose(ctx)
        self.trace.append(("propose", list(self.tabu), [m.id for m in proposals]))
        return proposals

    def update(self, ctx, scored):
        before = list(self.tabu)
        super().update(ctx, scored)
        self.trace.append(("move", before, self.current.id))


def test_tabu_never_revisits_tabu_states():
    tabu = RecordingTabu(TabuConfig(patience=None, steps=25, candidates=3, edits=("delete", "swap", "add"),
                                    tabu_size=4, objective="task"))
    run_without_optimizer(tabu, task=long_seed_task(n_dev=4), budget=5000)
    moves = [t for t in tabu.trace if t[0] == "move"]
    assert len(moves) >= 20
    for kind, tabu_list, ids in tabu.trace:
        if kind == "propose":
            assert not set(ids) & set(tabu_list)
        else:
            assert ids not in tabu_list
    path = [m[2] for m in moves]
    # The classic rule moves even when worse, so without the list the walk would step straight back.
    assert all(j - i > 3 for i in range(len(path)) for j in range(i + 1, len(path)) if path[i] == path[j])


def test_genetic_algorithm_crossover_children_have_two_parents():
    ga = PlumGA(PlumGAConfig(crossover=True, offspring=4, patience=None, steps=6))
    run = run_without_optimizer(ga, budget=3000)
    children = [c for c in run.history.candidates() if c.origin == "plum.crossover"]
    assert children and all(len(c.parents) == 2 and "cut" in c.meta["edit"] for c in children)
    assert len(ga.population) <= 10
    assert [m.fitness for m in ga.population] == sorted((m.fitness for m in ga.population), reverse=True)


def test_harmony_memory_keeps_the_fittest_and_records_sources():
    hs = Harmony(HarmonyConfig(memory=4, patience=None, steps=6))
    run = run_without_optimizer(hs, budget=3000)
    made = [c for c in run.history.candidates() if c.origin == "plum.harmony"]
    assert made and all(len(c.meta["edit"]["sources"]) == 5 for c in made)
    assert len(hs.memory) <= 4
    assert hs.memory[0].fitness == max(hs.fitness(run._ctx, c.id) for c in run.history.candidates())


@pytest.mark.model
def test_hill_climb_with_the_embedded_target_and_no_optimizer(hf_embedded):
    from promptopt.api import load_task

    demo = load_task("demo")
    task = Task(**{**demo.__dict__, "seed_prompts": (
        "Read the customer message and decide whether it is a complaint about our company.",)})
    hc = HillClimb(PhraseSearchConfig(candidates=3, steps=2, patience=None, eval_examples=12, objective="task"))
    resolved = ResolvedRun(task=task, strategy=hc, budget=Budget(max_examples=7 * 12), final_top_k=1, test_limit=10)
    run = Run(resolved, target=hf_embedded, optimizer=None)
    report = run.run()
    assert run.tracker.optimizer_calls == 0
    cands = run.history.candidates()
    assert len(cands) == 7  # the seed and two steps of three edits
    assert {c.origin for c in cands} - {"seed"} <= {"plum.delete", "plum.swap", "plum.add"}
    assert len({run.history.score(c.id) for c in cands}) >= 2  # the real model tells prompts apart
    assert report.best_dev >= report.seed_dev and report.best_test is not None
