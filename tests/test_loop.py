"""The loop's bookkeeping with fakes: budget, logging, failures, final report, test isolation."""
import math

import pytest

from promptopt.backends.fake import FakeBackend
from promptopt.budget import Budget
from promptopt.scoring.cache import CachedBackend
from promptopt.errors import CapabilityError, PromptOptError, ResumeError, RunStopped
from promptopt.runlog import RunLog, read_events
from promptopt.strategy import ScoreRequest, StrategyConfig
from promptopt.testing import events_of, make_run
from promptopt.task import Task
from promptopt.testing import toy_task
from promptopt.types import Candidate


class Scripted:
    """A strategy that asks for a fixed list of request batches."""

    Config = StrategyConfig
    needs_optimizer = False

    def __init__(self, batches):
        self.batches = list(batches)
        self.told = []
        self.seen_splits = set()

    def ask(self, ctx):
        self.seen_splits |= set(ctx.task.splits)
        return self.batches.pop(0) if self.batches else []

    def tell(self, ctx, evals):
        self.told.append(evals)


def test_ask_again_scores_unseen_examples_only():
    c = Candidate("Is the text good or bad?")
    s = Scripted([[ScoreRequest(c, n=5)], [ScoreRequest(c, n=5)], [ScoreRequest(c, n=5)]])
    run = make_run(s)
    run.run()
    ids = [ev.example_ids for (ev,) in s.told]
    assert [len(x) for x in ids] == [5, 5, 2]  # 12 dev examples in all
    assert len(set(sum(map(list, ids), []))) == 12
    assert run.history.n_scored(c.id) == 12


def test_budget_in_examples_stops_cleanly(tmp_path):
    cands = [Candidate(f"prompt number {i}") for i in range(10)]
    s = Scripted([[c] for c in cands])
    run = make_run(s, budget=Budget(max_examples=30), run_dir=tmp_path)
    report = run.run()
    assert run.tracker.examples == 30  # two full dev passes, then the third candidate on the 6 that are left
    assert [len(ev.results) for (ev,) in s.told] == [12, 12, 6]
    assert report.stop_reason == "budget: examples"
    assert not math.isnan(report.best_test)


def test_a_step_larger_than_the_budget_is_scored_as_far_as_it_goes(tmp_path, capsys):
    """Requests are filled in order: one is cut short (its Evaluation lists the ids scored), the ones
    after it come back "unscored", so tell() still gets one Evaluation per request; the log says what
    was left out, and a resume replays the same cut."""
    a, b, c = (Candidate(f"prompt {x}") for x in "abc")
    batches = lambda: [[ScoreRequest(a, n=8)], [ScoreRequest(b, n=8), ScoreRequest(c, n=8), ScoreRequest(a, n=2)]]
    s = Scripted(batches())
    run = make_run(s, budget=Budget(max_examples=11), run_dir=tmp_path)
    report = run.run()
    run.log.close()
    told = s.told[1]
    assert [ev.state for ev in told] == ["complete", "unscored", "unscored"]
    assert len(told[0].results) == 3
    assert [ev.candidate_id for ev in told] == [b.id, c.id, a.id]
    assert run.tracker.examples == 11 and report.stop_reason == "budget: examples"
    assert c.id in run.history and run.history.n_scored(c.id) == 0  # proposed, never scored
    (note,) = [e for e in events_of(tmp_path) if e["type"] == "note" and e["kind"] == "budget.unscored"]
    assert [(r["candidate_id"], r["scored"], len(r["unscored"])) for r in note["requests"]] == \
        [(b.id, 3, 5), (c.id, 0, 8), (a.id, 0, 2)]
    # Resume from the log cut after the partial step's first eval: the replay takes the same cut.
    lines = (tmp_path / "events.jsonl").read_bytes().splitlines(keepends=True)
    cut = next(i for i, line in enumerate(lines) if b'"budget.unscored"' in line) + 2
    (tmp_path / "events.jsonl").write_bytes(b"".join(lines[:cut]))
    again = Scripted(batches())
    resumed = make_run(again, budget=Budget(max_examples=11), run_dir=tmp_path, resume=True)
    assert resumed.run().best_prompt == report.best_prompt
    assert [[(ev.state, ev.example_ids) for ev in evs] for evs in again.told] == \
        [[(ev.state, ev.example_ids) for ev in evs] for evs in s.told]
    resumed.log.close()
    from promptopt.cli import main
    assert main(["show", str(tmp_path)]) == 0
    assert "examples the budget left unscored 15" in " ".join(capsys.readouterr().out.split())


def test_a_harness_gets_only_the_part_of_a_step_that_fits():
    a, b = Candidate("prompt a"), Candidate("prompt b")
    s = Scripted([[ScoreRequest(a, n=4), ScoreRequest(b, n=4)]])
    run = make_run(s, budget=Budget(max_examples=2))
    reqs = run.ask()
    assert [(r.candidate.id, len(r.example_ids)) for r in reqs] == [(a.id, 2)]
    run.tell(run.score(reqs))
    assert [ev.state for ev in s.told[0]] == ["complete", "unscored"]
    assert run.ask() == [] and run.stop_reason == "budget: examples"


def test_budget_in_optimizer_calls(tmp_path):
    from promptopt.strategies.paraphrase import Paraphrase, ParaphraseConfig
    run = make_run(Paraphrase(ParaphraseConfig(rounds=50, proposals=2)), budget=Budget(max_examples=None, max_optimizer_calls=5))
    report = run.run()
    assert run.tracker.optimizer_calls <= 5
    assert report.stop_reason == "budget: optimizer_calls"


def test_every_candidate_and_eval_is_logged(tmp_path):
    a, b = Candidate("Alpha prompt"), Candidate("Beta prompt", parents=(Candidate("Alpha prompt").id,), origin="edit",
                                                meta={"edit": "renamed"})
    run = make_run(Scripted([[a, b]]), run_dir=tmp_path)
    run.run()
    run.log.close()
    ev = events_of(tmp_path)
    cands = {e["candidate_id"]: e for e in ev if e["type"] == "candidate"}
    assert cands[b.id]["parents"] == [a.id] and cands[b.id]["meta"] == {"edit": "renamed"}
    evals = [e for e in ev if e["type"] == "eval"]
    assert {e["phase"] for e in evals} == {"search", "final", "test"}
    assert all(len(e["results"]) == len(e["example_ids"]) for e in evals)
    assert [e["seq"] for e in ev if "seq" in e] == list(range(len([e for e in ev if "seq" in e])))


def test_failed_evaluations_are_data_and_capped():
    target = FakeBackend(fail_every=1)
    cands = [Candidate(f"prompt {i}") for i in range(30)]
    run = make_run(Scripted([[c] for c in cands]), target=target)
    run.max_failures = 4
    with pytest.raises(RunStopped, match=r"4 evaluations failed \(max_failures=4\)"):
        run.run()
    assert run.failures == 3  # the batch that reached the cap is not recorded: a resume redoes it
    assert run.history.failures(cands[0].id) == 1


def test_test_split_is_scored_once_for_best_and_seed_only(tmp_path):
    cands = [Candidate(f"prompt number {i}") for i in range(4)]
    s = Scripted([cands])
    run = make_run(s, run_dir=tmp_path)
    report = run.run()
    run.log.close()
    assert s.seen_splits == {"train", "dev"}
    test_evals = [e for e in events_of(tmp_path) if e["type"] == "eval" and e["split"] == "test"]
    assert {e["candidate_id"] for e in test_evals} <= {report.best_id, Candidate(report.seed_prompt).id}
    assert len(test_evals) == len({e["candidate_id"] for e in test_evals})
    assert all(e["phase"] == "test" for e in test_evals)


def test_test_limit_samples_the_same_examples_whatever_the_seed(tmp_path):
    def tested_ids(seed: int) -> set[str]:
        (tmp_path / str(seed)).mkdir()
        run = make_run(Scripted([[Candidate("a prompt")]]), seed=seed, run_dir=tmp_path / str(seed))
        run.test_limit = 5
        run.run()
        run.log.close()
        evals = [e for e in events_of(tmp_path / str(seed)) if e["type"] == "eval" and e["split"] == "test"]
        return {r["example_id"] for e in evals for r in e["results"]}

    first = tested_ids(0)
    assert len(first) == 5 and first == tested_ids(1) == tested_ids(7)


def test_strategy_cannot_request_test_examples():
    run = make_run(Scripted([[ScoreRequest(Candidate("x prompt"), split="test")]]))
    with pytest.raises(PromptOptError, match="only train or dev"):
        run.run()


def test_capability_checked_at_start():
    class NoLL(FakeBackend):
        capabilities = frozenset({"generate"})
    with pytest.raises(CapabilityError, match="loglikelihood .* cannot provide it$"):
        make_run(Scripted([]), target=NoLL())


def test_capability_error_carries_the_backends_reason():
    class EchoRefused(FakeBackend):
        capabilities = frozenset({"generate"})

        def check(self, needs=()):
            if "loglikelihood" in needs:
                raise CapabilityError("fake backend: the server refused echo")
    for target in (EchoRefused(), CachedBackend(EchoRefused(), None)):  # the cache wrapper passes it on
        with pytest.raises(CapabilityError, match="cannot provide it: fake backend: the server refused echo$"):
            make_run(Scripted([]), target=target)


def test_torn_last_line_is_dropped_and_log_is_locked(tmp_path):
    log = RunLog(tmp_path)
    log.emit("note", kind="a")
    log.emit("note", kind="b")
    with pytest.raises(ResumeError, match="in use"):
        RunLog(tmp_path, resume=True)
    log.close()
    with open(tmp_path / "events.jsonl", "ab") as f:
        f.write(b'{"seq": 2, "type": "no')
    events, good = read_events(tmp_path / "events.jsonl")
    assert [e["kind"] for e in events] == ["a", "b"]
    log = RunLog(tmp_path, resume=True)
    assert len(log.recorded) == 2 and (tmp_path / "events.jsonl").stat().st_size == good
    log.close()


def test_resume_with_other_config_is_refused(tmp_path):
    run = make_run(Scripted([[Candidate("first prompt")]]), run_dir=tmp_path)
    run.run()
    run.log.close()
    other = make_run(Scripted([[Candidate("a different prompt")]]), run_dir=tmp_path, resume=True)
    with pytest.raises(ResumeError, match="original configuration"):
        other.run()


def test_the_strategy_rng_is_its_own_stream_and_old_logs_replay_with_theirs(tmp_path):
    """ctx.rng is Random(f"{seed}:strategy"). A log written before that (ctx.rng was Random(seed), a step
    that did not fit ended the search, and no "run.streams" note opens the log) resumes as it was made,
    here from a cut in its final report."""
    import random
    from promptopt.strategies.hill_climb import HillClimb
    from promptopt.strategies.blocks.phrase_search import PhraseSearchConfig
    task = toy_task()
    task = Task(**{**task.__dict__, "seed_prompts": ("Read the text carefully, then decide whether it is good "
                                                     "or bad and answer with one word.",)})
    make = lambda d, resume=False: make_run(HillClimb(PhraseSearchConfig(candidates=5, steps=50, patience=None)),
                                            task=task, budget=Budget(max_examples=100), seed=7, run_dir=d,
                                            resume=resume)
    assert make(None)._ctx.rng.random() == random.Random("7:strategy").random()
    old = make(tmp_path)

    def as_before() -> None:  # what the loop did before the streams were split
        old._rng.seed(7)
        old._legacy_log = True
    old._choose_streams = as_before
    full = old.run()
    old.log.close()
    assert full.stop_reason.startswith("budget: examples (step") and old.tracker.examples == 96
    events = events_of(tmp_path)
    assert not any(e.get("kind") == "run.streams" for e in events)
    final = next(i for i, e in enumerate(events) if e.get("phase") in ("final", "test"))
    lines = (tmp_path / "events.jsonl").read_bytes().splitlines(keepends=True)
    (tmp_path / "events.jsonl").write_bytes(b"".join(lines[:final + 1]))
    again = make(tmp_path, resume=True)
    resumed = again.run()
    assert (resumed.best_prompt, resumed.best_dev, resumed.stop_reason) == (full.best_prompt, full.best_dev, full.stop_reason)
    assert again.tracker.examples == 96


def test_only_the_seed_itself_over_the_window_stops_the_run():
    from promptopt.errors import ConfigError
    from promptopt.loop import TOO_LONG
    from promptopt.types import Evaluation, ExampleResult

    run = make_run(Scripted([]))
    too_long = (ExampleResult("dev-0", "", 0.0, error=f"4,000 tokens over 2,048; {TOO_LONG} or the input"),)
    fewshot_set = Candidate(run.seed_prompt, demos=("train-0", "train-1"))  # the seed's text, demos of its own
    req = ScoreRequest(fewshot_set, "dev", example_ids=("dev-0",))
    run._refuse_a_seed_too_long([Evaluation(fewshot_set.id, "dev", too_long, state="failed")], [req])  # no raise
    seed = Candidate(run.seed_prompt)
    with pytest.raises(ConfigError, match="the seed prompt does not fit"):
        run._refuse_a_seed_too_long([Evaluation(seed.id, "dev", too_long, state="failed")],
                                    [ScoreRequest(seed, "dev", example_ids=("dev-0",))])
