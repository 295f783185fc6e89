"""Selection (bf, ucb, ucb-e, sr, sh) driven through the real loop on synthetic Bernoulli arms."""
import hashlib

import pytest

from promptopt.backends.base import LOGLIKELIHOOD, LLResult
from promptopt.budget import Budget
from promptopt.strategies.blocks.selection import SELECTORS, SelectionConfig
from promptopt.strategy import ScoreRequest, StrategyConfig
from promptopt.testing import make_run, toy_task
from promptopt.types import Candidate

METHODS = sorted(SELECTORS)


class BernoulliTarget:
    """A target model on which prompt "arm i" answers each example correctly with probability
    means[i], independently per example (a stable hash of salt, prompt and example)."""

    capabilities = frozenset({LOGLIKELIHOOD})

    def __init__(self, means, salt=0, broken=()):
        self.means = means
        self.salt = salt
        self.broken = broken  # arms whose every request fails

    def fingerprint(self):
        return f"bernoulli:{self.salt}"

    def loglikelihood(self, reqs):
        out = []
        for r in reqs:
            prompt, _, rest = r.context.partition("\n")
            arm = int(prompt.split()[-1])
            gold = " good" if rest.split("\n")[0].endswith("good") else " bad"
            u = int.from_bytes(hashlib.sha256(f"{self.salt}|{prompt}|{rest}".encode()).digest()[:8], "big") / 2**64
            right = u < self.means[arm]
            out.append(LLResult(-1.0 if (r.continuation == gold) == right else -2.0,
                                error="broken arm" if arm in self.broken else None))
        return out


class SelectOnly:
    """A strategy that only runs one selector over fixed arms, optionally after a warm-up request."""

    Config = StrategyConfig
    needs_optimizer = False

    def __init__(self, selector, arms, budget, keep=1, warmup=()):
        self.selector, self.arms, self.budget, self.keep = selector, arms, budget, keep
        self.warmup = list(warmup)
        self.started = False

    def ask(self, ctx):
        if self.warmup:
            return [self.warmup.pop(0)]
        if not self.started:
            self.started = True
            self.selector.start(ctx, self.arms, self.budget, keep=self.keep)
        return self.selector.requests()

    def tell(self, ctx, evals):
        if self.started:
            self.selector.update(evals)


def select(method, means, budget, keep=1, salt=0, warmup=(), broken=(), **options):
    arms = [Candidate(f"arm {i}") for i in range(len(means))]
    selector = SelectionConfig(method=method, budget=budget, **options).make()
    strategy = SelectOnly(selector, arms, budget, keep, warmup)
    run = make_run(strategy, task=toy_task(n_dev=3000), target=BernoulliTarget(means, salt, broken),
                   budget=Budget(max_examples=10 * budget))
    while run.step_once():
        pass
    return selector, run, [int(c.text.split()[-1]) for c in selector.ranking()]


MEANS = [0.55, 0.6, 0.5, 0.8, 0.62, 0.58, 0.65, 0.45]  # arm 3 is best by 0.15


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("salt", range(3))
def test_picks_the_best_arm_within_budget(method, salt):
    selector, run, ranking = select(method, MEANS, budget=1600, keep=1, salt=salt, prompts_per_round=2)
    assert ranking[0] == 3
    if method.startswith("ucb"):  # the bandit spends most on the arm that looks best
        counts = [run.history.n_scored(Candidate(f"arm {i}").id) for i in range(len(MEANS))]
        assert max(counts) == counts[3]
    assert sorted(ranking) == list(range(len(MEANS)))  # every arm is ranked
    assert selector.done and selector.spent <= 1600
    assert run.tracker.examples == selector.spent  # what it asked for is what the loop scored
    assert selector.spent >= 0.75 * 1600  # and it uses most of what it was given


@pytest.mark.parametrize("method", ["sr", "sh"])
def test_eliminating_methods_keep_the_top_k(method):
    means = [0.5, 0.78, 0.45, 0.8, 0.5, 0.55, 0.4, 0.52]
    selector, _, ranking = select(method, means, budget=2400, keep=2)
    assert set(ranking[:2]) == {1, 3}
    assert len(selector._survivors()) == 2


@pytest.mark.parametrize("method", METHODS)
def test_small_budget_is_respected_and_every_arm_pulled(method):
    selector, run, ranking = select(method, MEANS, budget=40, keep=2)
    assert run.tracker.examples <= 40
    assert all(run.history.n_scored(Candidate(f"arm {i}").id) >= 1 for i in range(len(MEANS)))


def test_earlier_results_count_and_are_not_paid_again():
    # Arm 0 was scored on 60 dev examples before; brute force tops every arm up to 100.
    warm = ScoreRequest(Candidate("arm 0"), n=60)
    selector, run, _ = select("bf", [0.5, 0.6], budget=200, keep=1, warmup=[warm])
    assert [run.history.n_scored(Candidate(f"arm {i}").id) for i in range(2)] == [100, 100]
    assert selector.spent == 140


def test_arms_exhaust_the_split_then_stop():
    # 12 dev examples in the toy task: nothing more to learn after 12 per arm, whatever the budget.
    selector = SelectionConfig(method="ucb", budget=1000, samples_per_eval=5).make()
    arms = [Candidate("Is the text good or bad?"), Candidate("Classify the text.")]
    run = make_run(SelectOnly(selector, arms, 1000), budget=Budget(max_examples=1000))
    while run.step_once():
        pass
    assert selector.done and selector.spent == 24
    assert all(run.history.n_scored(a.id) == 12 for a in arms)


def test_one_arm_per_prompt_and_keep_larger_than_arms():
    selector = SelectionConfig(method="sr", budget=500, samples_per_eval=4).make()
    arms = [Candidate("Is the text good or bad?"), Candidate("Is the text good or bad?  "), Candidate("Classify the text.")]
    run = make_run(SelectOnly(selector, arms, 500, keep=3), budget=Budget(max_examples=1000))
    while run.step_once():
        pass
    assert [c.text for c in selector.ranking()].count("Is the text good or bad?") == 1
    assert selector.spent == 8  # two arms, one pull of samples_per_eval each: all survive anyway


@pytest.mark.parametrize("method", METHODS)
def test_a_failing_arm_is_not_pulled_again_and_ranks_last(method):
    selector, run, ranking = select(method, MEANS, budget=800, keep=2, broken=(3,))
    assert run.history.failures(Candidate("arm 3").id) == 1
    assert ranking[-1] == 3  # the best arm on paper, but it never produced a result
    assert selector.done and run.tracker.examples <= 800
