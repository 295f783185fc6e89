"""Demonstrations: structured candidates, rendering, the train-only contract, the demo strategies,
--demos seeding of instruction strategies, bad input, and the significance test of the final report."""
from __future__ import annotations

import json
import random

import pytest

from promptopt.backends.fake import FakeBackend
from promptopt.budget import Budget
from promptopt.cli import main
from promptopt.task.demos import sample_demo_ids
from promptopt.errors import ConfigError, PromptOptError
from promptopt.loop import Run
from promptopt.resolved import ResolvedRun
from promptopt.measure.significance import compare_paired, mcnemar_exact, paired_bootstrap
from promptopt.strategies.bootstrap import Bootstrap, BootstrapConfig
from promptopt.strategies.fewshot import FewShot, FewShotConfig
from promptopt.strategies.mipro import Mipro, MiproConfig
from promptopt.strategies.paraphrase import Paraphrase, ParaphraseConfig
from promptopt.strategies.promptquine import PromptQuine, PromptQuineConfig
from promptopt.testing import StrategyContract, make_run, toy_task
from promptopt.types import Candidate


class DemoAwareBackend(FakeBackend):
    """A target for toy_task() that answers right only when the context holds at least two demos
    (two 'Answer:' lines before the query) and otherwise always favours ' bad'."""

    def loglikelihood(self, reqs):
        from promptopt.backends.base import LLResult
        from promptopt.types import Usage
        self._tick(len(reqs))
        out = []
        for r in reqs:
            item = r.context.rsplit("Text: ", 1)[-1]
            shots = r.context.count("Answer: ")
            gold = "good" if " is good" in item else "bad"
            favoured = gold if shots >= 2 else "bad"
            out.append(LLResult(-0.2 if r.continuation.strip() == favoured else -2.5, usage=Usage(1, 1, 0)))
        return out


class TestFewShot(StrategyContract):
    def make_strategy(self, **options):
        return FewShot(FewShotConfig(**{"k": 2, "sets": 4, **options}))


class TestBootstrap(StrategyContract):
    def make_strategy(self, **options):
        return Bootstrap(BootstrapConfig(**{"k": 2, "sets": 3, "bootstrap_examples": 6, **options}))


class TestBootstrapGenerate(TestBootstrap):
    def make_task(self):
        return toy_task(output="generate")


class GoldWriter(FakeBackend):
    """Writes 'It is good.' / 'It is bad.' for the last item of a toy generate prompt, right every time
    when the prompt has a demo, and on every other example without one."""

    def generate(self, reqs):
        from promptopt.backends.base import GenResult
        from promptopt.types import Usage
        self._tick(len(reqs))
        out = []
        for r in reqs:
            text = r.prompt or r.messages[-1][1]
            item = text.rsplit("Text: ", 1)[-1]
            gold = "good" if " is good" in item else "bad"
            right = "\ngood" in text or "\nbad" in text or int(item.split()[2]) % 4 < 2
            out.append(GenResult(f"{gold if right else 'meh'}", usage=Usage(1, 1, 1)))
        return out


def test_bootstrap_keeps_the_targets_own_correct_outputs_as_demos():
    task = toy_task(output="generate")
    run = make_run(Bootstrap(BootstrapConfig(k=2, sets=3, bootstrap_examples=8)), task=task, target=GoldWriter(),
                   budget=Budget(max_examples=200))
    report = run.run()
    arms = [c for c in run.history.candidates() if c.origin == "bootstrap.sample"]
    assert arms and all(len(c.demos) == 2 == len(c.demo_answers) for c in arms)
    train = {ex.id: ex for ex in task.split("train")}
    assert all(ans == train[d].target for c in arms for d, ans in zip(c.demos, c.demo_answers))
    assert all(c.meta["bootstrapped"] == 2 for c in arms)  # 4 of 8 tried were right: enough for k=2
    assert report.best_dev == 1.0 and report.best_demos


class TestMipro(StrategyContract):
    def make_strategy(self, **options):
        return Mipro(MiproConfig(**{"k": 2, "instructions": 3, "demo_sets": 3, **options}))


class TestPromptQuine(StrategyContract):
    def make_strategy(self, **options):
        return PromptQuine(PromptQuineConfig(**{"k": 2, "population": 3, "offspring": 2, "min_tokens": 3, **options}))


class TestTAPruning(StrategyContract):
    def make_strategy(self, **options):
        return PromptQuine(PromptQuineConfig(**{"mode": "ta", "k": 1, "min_tokens": 3, **options}))


def test_candidate_id_hashes_every_part_and_keeps_instruction_only_ids():
    plain = Candidate("Classify.")
    assert plain.id == Candidate("Classify.", origin="x").id
    with_demos = Candidate("Classify.", demos=("train-1", "train-2"))
    assert len({plain.id, with_demos.id, Candidate("Classify.", demos=("train-2", "train-1")).id,
                Candidate("Classify.", system="Be brief.").id}) == 4
    child = with_demos.revise("Label it.", origin="edit")
    assert child.demos == with_demos.demos and child.parents == (with_demos.id,)
    assert Candidate.from_json(json.loads(json.dumps(with_demos.to_json()))) == with_demos
    assert "demos" not in plain.to_json()  # instruction-only runs log what they logged before


def test_demos_render_in_the_query_format_before_the_query():
    task = toy_task()
    train = task.split("train")
    text = task.render(task.prompt_text("Classify.", train[:2]), task.split("dev")[0])
    assert text == ("Classify.\n\nText: item train 0 is bad\nAnswer: bad\n\nText: item train 1 is good\n"
                    "Answer: good\n\nText: item dev 0 is bad\nAnswer:")
    assert task.prompt_text("Classify.") == "Classify."


def test_label_balanced_draws():
    pool = toy_task(n_train=20).split("train")
    ids = sample_demo_ids(pool, 4, random.Random(0))
    labels = sorted(next(ex.label for ex in pool if ex.id == i) for i in ids)
    assert labels == [0, 0, 1, 1] and len(set(ids)) == 4
    with pytest.raises(ConfigError, match="train pool of 20"):
        sample_demo_ids(pool, 21, random.Random(0))


class _Fixed:
    """A strategy that asks for one given candidate once."""
    Config = FewShotConfig
    needs_optimizer = False

    def __init__(self, cand):
        self.cand, self.asked = cand, False

    def ask(self, ctx):
        if self.asked:
            return []
        self.asked = True
        return [self.cand]

    def tell(self, ctx, evals):
        pass


@pytest.mark.parametrize("bad", ["dev-0", "test-0", "nope"])
def test_demo_ids_outside_train_are_refused_before_any_model_call(bad):
    target = FakeBackend()
    run = make_run(_Fixed(Candidate("Classify.", demos=("train-0", bad))), target=target)
    with pytest.raises(PromptOptError, match="not train examples"):
        run.run()
    assert target.calls == 0


def test_a_demo_set_over_the_window_is_refused_with_its_token_count():
    class Windowed(FakeBackend):
        max_length = 40

        def count_tokens(self, text):
            return len(text.split())

    target = Windowed()
    run = make_run(_Fixed(Candidate("Classify.", demos=tuple(f"train-{i}" for i in range(8)))), target=target)
    with pytest.raises(PromptOptError, match=r"come to \d+ tokens, over the model's window of 40"):
        run.run()
    assert target.calls == 0


def test_fewshot_finds_demos_when_they_help():
    run = make_run(FewShot(FewShotConfig(k=2, sets=4)), target=DemoAwareBackend(), budget=Budget(max_examples=300))
    report = run.run()
    assert len(report.best_demos) == 2 and report.best_dev == 1.0 and report.seed_dev == 0.5
    assert all(d.startswith("train-") for d in report.best_demos)
    sig = report.significance
    assert sig["test"] == "mcnemar" and sig["only_best_right"] == 6 and sig["only_seed_right"] == 0
    assert report.best_prefix.startswith(report.best_prompt + "\n\nText: item train")


def test_demos_k_seeds_instruction_strategies_and_edits_keep_them():
    task = toy_task()
    resolved = ResolvedRun(task=task, strategy=Paraphrase(ParaphraseConfig(rounds=1, proposals=2)),
                           budget=Budget(max_examples=200), demos=2)
    run = Run(resolved, target=DemoAwareBackend(), optimizer=FakeBackend("opt"))
    report = run.run()
    searched = [c for c in run.history.candidates() if c.origin != "seed" or c.demos]
    assert searched and all(c.demos == run.seed_demos for c in searched)
    assert report.best_demos == run.seed_demos and report.best_dev == 1.0


def test_paired_tests_known_values():
    assert mcnemar_exact([1, 1, 0, 0], [1, 1, 0, 0]) == (0, 0, 1.0)
    only_a, only_b, p = mcnemar_exact([0] * 10, [1] * 10)
    assert (only_a, only_b) == (0, 10) and p == pytest.approx(2 / 2 ** 10)
    diff, low, high, p_boot = paired_bootstrap([0.0] * 50, [1.0] * 50)
    assert diff == 1.0 and low == high == 1.0 and p_boot == 0.0
    mixed = compare_paired([0.2, 0.4], [0.3, 0.5])
    assert mixed["test"] == "paired bootstrap" and mixed["diff"] == pytest.approx(0.1)


@pytest.mark.parametrize("args, message", [
    (["--strategy", "fewshot", "--set", "fewshot.k=500"], "larger than the train pool"),
    (["--strategy", "hill_climb", "--demos", "500"], "cannot draw 500 demos"),
    (["--strategy", "mipro", "--set", "mipro.k=99"], "larger than the train pool"),
])
def test_bad_demo_settings_are_one_line_and_leave_no_run_dir(tmp_path, capsys, args, message):
    rc = main(["optimize", "--task", "demo", "--backend", "fake", "--model", "m", "--optimizer-model", "none",
               "--run-dir", str(tmp_path / "runs"), "-q", *args])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


@pytest.mark.parametrize("make", [lambda: FewShot(FewShotConfig()), lambda: Mipro(MiproConfig()),
                                  lambda: PromptQuine(PromptQuineConfig())])
def test_a_task_without_train_split_is_refused_before_any_model_call(make):
    task = toy_task(n_train=0)
    target = FakeBackend()
    with pytest.raises(ConfigError, match="no train split"):
        make_run(make(), task=task, target=target)
    with pytest.raises(ConfigError, match="no train split"):
        Run(ResolvedRun(task=task, strategy=Paraphrase(ParaphraseConfig()), demos=2), target=target,
            optimizer=FakeBackend("o"))
    assert target.calls == 0


def test_a_demo_id_edited_into_the_log_is_refused_on_resume(tmp_path):
    d = tmp_path / "run"
    d.mkdir()
    run = make_run(FewShot(FewShotConfig(k=2, sets=2)), run_dir=d, budget=Budget(max_examples=100))
    run.run()
    run.log.close()
    events = (d / "events.jsonl").read_text().splitlines()
    edited = [json.loads(line) for line in events]
    victim = next(e for e in edited if e["type"] == "candidate" and e.get("demos"))
    victim["demos"][0] = "dev-0"
    (d / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in edited))
    from promptopt.errors import ResumeError
    resumed = make_run(FewShot(FewShotConfig(k=2, sets=2)), run_dir=d, resume=True, budget=Budget(max_examples=100))
    with pytest.raises(ResumeError, match="does not match its own content"):
        resumed.run()
