import math

from promptopt.backends.fake import FakeBackend
from promptopt.scoring.scorer import Job, score_jobs
from promptopt.testing import toy_task


def test_choose_task_accuracy_and_loss_agree_on_prediction():
    task = toy_task()
    ex = tuple(task.split("dev"))
    acc, loss = score_jobs(task, FakeBackend(), [Job("c", "Prompt", "dev", ex), Job("c", "Prompt", "dev", ex, "loss")])
    assert acc.objective == "task" and loss.objective == "loss"
    for a, l in zip(acc.results, loss.results):
        assert a.output == l.output and a.option_logprobs == l.option_logprobs
        lp = a.option_logprobs
        gold = next(e for e in ex if e.id == a.example_id).label
        norm = lp[gold] - math.log(sum(math.exp(x) for x in lp))
        assert abs(l.score - norm) < 1e-9 and l.score < 0
        assert a.score == float(lp.index(max(lp)) == gold)


def test_generation_loss_uses_reference_tokens():
    task = toy_task(output="generate")
    ex = tuple(task.split("dev"))[:3]
    (ev,) = score_jobs(task, FakeBackend(), [Job("c", "Prompt", "dev", ex, "loss")])
    assert ev.state == "complete" and all(r.logprob is not None and r.score < 0 for r in ev.results)


def test_batch_failure_fails_every_job():
    task = toy_task()
    ex = tuple(task.split("dev"))
    evs = score_jobs(task, FakeBackend(fail_every=1), [Job("a", "P1", "dev", ex), Job("b", "P2", "dev", ex)])
    assert [e.state for e in evs] == ["failed", "failed"] and "injected" in evs[0].error
    assert all(math.isnan(e.score) for e in evs)
