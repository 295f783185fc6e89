"""The `seed` strategy: no search; the final report scores the seed prompt on dev and test like any run's."""
from __future__ import annotations

from typing import Any

from promptopt.registry import get
from promptopt.strategies.seed import Seed, SeedConfig
from promptopt.testing import StrategyContract, make_run, toy_task


class TestSeedContract(StrategyContract):
    def make_strategy(self, **options: Any) -> Seed:
        return Seed(SeedConfig(**options))


def test_spends_nothing_and_reports_the_seed_on_dev_and_test() -> None:
    assert get("strategies", "seed") is Seed
    run = make_run(Seed(SeedConfig()), task=toy_task())
    report = run.run()
    assert run.tracker.examples == 0 and report.candidates == 1
    assert report.stop_reason == "strategy finished: the seed prompt, no search"
    assert report.best_prompt == report.seed_prompt and report.best_test == report.seed_test is not None
    assert report.best_dev == report.seed_dev and report.significance is None
