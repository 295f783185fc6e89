"""Racing (blocks.selection.Racing, the `racing` option of every population strategy): a clearly worse
arm is dropped after its first block, racing off changes nothing, contracts hold with racing on, and
settings the dev split cannot carry are one ConfigError before any model loads."""
from typing import Sequence

import pytest

from promptopt.backends.base import GenRequest
from promptopt.backends.fake import FakeBackend
from promptopt.budget import Budget
from promptopt.cli import main
from promptopt.errors import ConfigError
from promptopt.strategies.apo import APO, APOConfig
from promptopt.strategies.blocks.evoprompt import EvolutionConfig
from promptopt.strategies.blocks.selection import RacingConfig, paired_t_pvalue, student_t_sf
from promptopt.strategies.evoprompt_ga import EvoPromptGA
from promptopt.strategies.gepa import GEPA, GEPAConfig
from promptopt.strategies.harmony import Harmony, HarmonyConfig
from promptopt.strategies.opro import OPRO, OPROConfig
from promptopt.strategies.plum_ga import PlumGA, PlumGAConfig
from promptopt.strategy import Context, ScoreRequest
from promptopt.testing import StrategyContract, make_run, toy_task
from promptopt.testing.contracts import HARMFUL, HarmfulSentenceBackend
from promptopt.types import Candidate, Evaluation

FAST = {"enabled": True, "block": 4, "alpha": 0.2}
GOOD = "Is the text good or bad?"


def test_t_distribution_tail():
    assert student_t_sf(0.0, 5) == pytest.approx(0.5)
    assert student_t_sf(1.0, 5) == pytest.approx(0.18161, abs=1e-5)
    assert student_t_sf(2.0, 10) == pytest.approx(0.036694, abs=1e-6)
    assert student_t_sf(-1.5, 3) == pytest.approx(1 - 0.115292, abs=1e-5)
    assert paired_t_pvalue([1, 1, 1], [0, 0, 0]) == 0.0  # every difference the same and positive
    assert paired_t_pvalue([1, 0, 1], [1, 0, 1]) == 1.0


def test_racing_accepts_true_as_shorthand():
    assert RacingConfig.model_validate(True).enabled
    assert OPROConfig(racing=True).racing == RacingConfig(enabled=True)
    assert OPROConfig(racing={"block": 8}).racing.block == 8 and not OPROConfig().racing.enabled


class _RaceThree:
    """A strategy that races three fixed prompts: two good, one that makes the target always answer bad."""

    def __init__(self, racing: RacingConfig):
        self.racing, self.race, self.ranking = racing, None, []

    def ask(self, ctx: Context) -> Sequence[ScoreRequest]:
        if self.race is None:
            self.race = self.racing.make(target=60)
            self.race.stop_at_keep = False
            self.race.start(ctx, [Candidate(GOOD), Candidate(f"{GOOD} {HARMFUL}"), Candidate("Classify the text.")],
                            budget=10**6)
        reqs = self.race.requests()
        if not reqs:  # what the search paid for (the final report then completes the finalists)
            self.ranking = self.race.ranking()
            self.n = {c.text: ctx.history.n_scored(c.id, "dev") for c in self.ranking}
        return reqs

    def tell(self, ctx: Context, evals: Sequence[Evaluation]) -> None:
        self.race.update(evals)


def test_racing_drops_a_clearly_worse_arm_after_one_block():
    strategy = _RaceThree(RacingConfig(enabled=True, block=10))
    run = make_run(strategy, task=toy_task(n_dev=60), target=HarmfulSentenceBackend(), budget=Budget(max_examples=10**6))
    run.run()
    assert strategy.n == {GOOD: 60, "Classify the text.": 60, f"{GOOD} {HARMFUL}": 10}
    assert strategy.ranking[-1].text == f"{GOOD} {HARMFUL}"  # the dropped arm ranks last
    assert strategy.race.dropped == {Candidate(f"{GOOD} {HARMFUL}").id}


def _children(req: GenRequest) -> str:
    """Optimizer replies: every other child carries the harmful sentence."""
    text = "\n".join(c for _, c in req.messages)
    k = sum(map(ord, text)) % 1000
    bad = HARMFUL if k % 2 else ""
    return f"<prompt>Decide whether text {k} is good or bad. {bad}</prompt>"


def _ga(racing):
    return EvoPromptGA(EvolutionConfig(population=4, generations=3, eval_examples=40, racing=racing))


def test_racing_saves_scored_examples_in_evoprompt_ga():
    # The saving varies by seed (18-30% on seeds 0-5), so it is summed over six.
    spent = {False: 0, True: 0}
    for seed in range(6):
        runs = {}
        for on in (False, True):
            run = make_run(_ga({"enabled": on, "block": 8}), task=toy_task(n_dev=40), target=HarmfulSentenceBackend(),
                           optimizer=FakeBackend("opt", replies=_children), budget=Budget(max_examples=10**6), seed=seed)
            runs[on] = (run, run.run())
            spent[on] += run.tracker.examples
        (off, r_off), (on, r_on) = runs[False], runs[True]
        assert r_on.best_dev == r_off.best_dev == 1.0
    assert spent[True] < 0.8 * spent[False], spent
    assert not [m for m in on.strategy.population if m.dropped]  # raced-out children never enter the population
    harmful = [c for c in on.history.candidates() if HARMFUL in c.text]
    assert harmful and any(on.history.n_scored(c.id, "dev") < 40 for c in harmful)


@pytest.mark.parametrize("make", [
    lambda r: _ga(r),
    lambda r: OPRO(OPROConfig(steps=3, proposals=4, racing=r)),
    lambda r: PlumGA(PlumGAConfig(racing=r)),
])
def test_racing_off_is_the_default_run(make):
    a, b = (make_run(make(r), budget=Budget(max_examples=400)).run() for r in (RacingConfig(), {"enabled": False}))
    assert (a.best_prompt, a.best_dev, a.candidates) == (b.best_prompt, b.best_dev, b.candidates)


@pytest.mark.parametrize("make", [
    lambda: _ga({"enabled": True, "block": 30}),
    lambda: OPRO(OPROConfig(racing={"enabled": True, "block": 30})),
    lambda: Harmony(HarmonyConfig(racing=True)),
    lambda: GEPA(GEPAConfig(racing=True)),
    lambda: APO(APOConfig(racing=True)),
])
def test_block_larger_than_dev_is_a_config_error(make):
    with pytest.raises(ConfigError, match=r"racing.block=30 is larger than the dev split \(12 examples\)"):
        make_run(make())


@pytest.mark.parametrize("dry", [False, True])
def test_cli_refuses_racing_that_cannot_run_before_any_model_loads(tmp_path, capsys, monkeypatch, dry):
    import promptopt.api as api

    def no_model(*a, **k):
        raise AssertionError("a model was loaded")
    monkeypatch.setattr(api.Backends, "get", no_model)
    code = main(["optimize", "--task", "demo", "--strategy", "harmony", "--backend", "fake", "--model", "m",
                 "--optimizer-model", "none", "--run-dir", str(tmp_path / "runs"), "-q", "--budget", "300",
                 "--set", "harmony.racing.enabled=true", "--set", "harmony.racing.block=100000"]
                + (["--dry-run"] if dry else []))
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "racing.block=100000 is larger than the dev split" in err, err


class TestEvoPromptGARacing(StrategyContract):
    def make_strategy(self, **options):
        return EvoPromptGA(EvolutionConfig(**{"racing": FAST, **options}))


class TestOPRORacing(StrategyContract):
    def make_strategy(self, **options):
        return OPRO(OPROConfig(**{"steps": 4, "proposals": 4, "racing": FAST, **options}))


class TestHarmonyRacing(StrategyContract):
    def make_strategy(self, **options):
        return Harmony(HarmonyConfig(**{"racing": FAST, **options}))


class TestGEPARacing(StrategyContract):
    def make_strategy(self, **options):
        return GEPA(GEPAConfig(**{"racing": FAST, "iterations": 6, **options}))


class TestAPORacing(StrategyContract):
    def make_strategy(self, **options):
        return APO(APOConfig(**{"racing": FAST, "rounds": 2, **options}))


class TestPlumGARacing(StrategyContract):
    def make_strategy(self, **options):
        return PlumGA(PlumGAConfig(**{"racing": FAST, **options}))


class TestAnnealingRacing(StrategyContract):
    def make_strategy(self, **options):
        from promptopt.strategies.simulated_annealing import AnnealingConfig, SimulatedAnnealing
        return SimulatedAnnealing(AnnealingConfig(**{"racing": FAST, **options}))
