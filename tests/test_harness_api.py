"""Inside a user's harness: a task from in-memory examples and a metric, resume with the same task object,
callbacks and stop conditions (fake backend, fast tier)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

import promptopt
from promptopt.callbacks import Callback, NoImprovement, ScoreReached, StopFile, parse_stop
from promptopt.errors import ConfigError, ResumeError, RunStopped, TaskError
from promptopt.task.from_examples import MetricError, make_task

ROWS = [{"text": f"item {i} is {'good' if i % 2 else 'bad'}", "label": "good" if i % 2 else "bad"}
        for i in range(30)]


def _choose(metric=None, rows=ROWS, **kw):
    return make_task(rows, template="{prompt}\n\nText: {text}\nLabel:", input_key="text", target_key="label",
                     output="choose", options=["good", "bad"], metric=metric, prompt="Is it good or bad?", **kw)


def _gen(metric=None, **kw):
    rows = [{"q": f"what is {i} plus 1?", "a": str(i + 1)} for i in range(20)]
    return make_task(rows, template="{prompt}\n\nQ: {q}\nA:", input_key="q", target_key="a", metric=metric,
                     prompt="Answer with a number.", **kw)


def _opt(task, tmp_path: Path, **kw):
    args = dict(strategy="hill_climb", backend="fake", model="fake", optimizer_model=None,
                budget={"max_examples": 60}, run_dir=str(tmp_path / "runs"), cache=False)
    args.update(kw)
    return promptopt.optimize(task=task, **args)


def test_make_task_from_list_dataframe_and_dataset():
    t = _choose()
    assert t.options == (" good", " bad") and {k: len(v) for k, v in t.splits.items()} == {"train": 18, "dev": 6, "test": 6}
    assert "{input}" in t.template and t.split("dev")[0].target in ("good", "bad")
    pd = pytest.importorskip("pandas")
    t2 = _choose(rows=pd.DataFrame(ROWS))
    assert [e.input for e in t2.split("test")] == [e.input for e in t.split("test")]
    datasets = pytest.importorskip("datasets")
    t3 = _choose(rows=datasets.Dataset.from_list(ROWS))
    assert [e.id for e in t3.split("dev")] == [e.id for e in t.split("dev")]


def test_make_task_bad_input_is_one_clear_error():
    pd = pytest.importorskip("pandas")
    with pytest.raises(TaskError, match="no column.*'text'"):
        _choose(rows=pd.DataFrame([{"body": "x", "label": "good"}] * 5))
    with pytest.raises(TaskError, match="target 'meh' is not one of the options"):
        _choose(rows=ROWS + [{"text": "x", "label": "meh"}])
    with pytest.raises(MetricError, match="metric boom raised KeyError.*on example examples-"):
        def boom(pred, ex):
            return ex["missing"]
        _choose(metric=boom)
    with pytest.raises(MetricError, match="returned 'yes' on example"):
        _gen(metric=lambda p, ex: "yes")
    with pytest.raises(ConfigError, match="unknown extractor"):
        _gen(extract="second_word")
    with pytest.raises(ConfigError, match=r"make_task\(examples, \.\.\.\)\), not list"):
        promptopt.optimize(task=ROWS, backend="fake")  # type: ignore[arg-type]


def test_optimize_with_a_task_object_and_own_metric(tmp_path: Path):
    seen = []

    def metric(pred, ex):
        seen.append(pred)
        return float(pred == ex["label"]), f"gold {ex['label']}"
    rep = _opt(_choose(metric=metric), tmp_path)
    cfg = json.loads((Path(rep.run_dir) / "config.json").read_text())["config"]
    assert cfg["task"] == "python:examples" and cfg["task_options"]["fingerprint"].startswith("sha256:")
    assert set(seen) <= {"good", "bad"} and rep.best_test is not None
    evs = [json.loads(l) for l in (Path(rep.run_dir) / "events.jsonl").read_text().splitlines()]
    results = [r for e in evs if e.get("type") == "eval" and e.get("results") for r in e["results"]]
    assert results and all(r["feedback"].startswith("gold ") for r in results)
    ev = promptopt.evaluate(rep.best_prompt, _choose(metric=metric), split="test", backend="fake", model="fake",
                            cache=False)
    assert ev.score == pytest.approx(rep.best_test)


def test_generate_metric_error_mid_run_stops_resumably(tmp_path: Path):
    calls = {"n": 0}

    def flaky(pred, ex):
        calls["n"] += 1
        if calls["n"] > 1:  # the build-time check passes; the first scored example fails
            raise ValueError("bad row")
        return 1.0
    with pytest.raises(RunStopped, match="metric flaky raised ValueError: bad row on example .*resumable"):
        _opt(_gen(metric=flaky), tmp_path)
    run = next((tmp_path / "runs").iterdir())
    assert not (run / "summary.json").exists()
    rep = _opt(_gen(metric=lambda p, ex: 1.0), tmp_path, resume=str(run))
    assert rep.best_dev == 1.0


class _StopAt(Callback):
    def __init__(self, step):
        self.step = step

    def on_step_end(self, run):
        if run.step == self.step and not run.replaying:
            raise RuntimeError("harness says stop")


def test_resume_needs_the_same_task_object(tmp_path: Path):
    task = _choose()
    with pytest.raises(RunStopped, match=r"callback _StopAt.on_step_end raised RuntimeError: harness says stop"):
        _opt(task, tmp_path, callbacks=[_StopAt(1)])
    run = next((tmp_path / "runs").iterdir())
    assert not (run / "summary.json").exists()
    with pytest.raises(ResumeError, match="built in Python"):
        promptopt.optimize(resume=str(run))
    other = _choose(rows=ROWS[:-1])
    with pytest.raises(ResumeError, match="not the one the run was made with"):
        _opt(other, tmp_path, resume=str(run))
    resumed = _opt(_choose(), tmp_path, resume=str(run))
    fresh = _opt(_choose(), tmp_path / "b")
    assert (resumed.best_prompt, resumed.best_dev, resumed.steps) == (fresh.best_prompt, fresh.best_dev, fresh.steps)


class _Recorder(Callback):
    def __init__(self):
        self.events = []

    def on_candidate(self, run, candidate, accepted=True, reason="", data=None):
        self.events.append("candidate")

    def on_evaluation(self, run, evaluation, phase="search"):
        self.events.append(f"eval:{phase}")

    def on_new_best(self, run, candidate, score):
        self.events.append("best")

    def on_step_end(self, run):
        self.events.append("step")

    def on_run_end(self, run, report):
        self.events.append("end" if report is not None else "stopped")


def test_callback_events_in_order(tmp_path: Path):
    rec = _Recorder()
    _opt(_choose(), tmp_path, callbacks=[rec])
    ev = rec.events
    assert ev[0] == "candidate" and ev[-1] == "end" and "best" in ev and "eval:test" in ev
    assert ev.index("eval:search") < ev.index("step") < ev.index("eval:test")


def test_stop_conditions(tmp_path: Path):
    rep = _opt(_choose(), tmp_path, strategy="simulated_annealing", budget={"max_examples": 600},
               callbacks=[ScoreReached(0.0)])
    assert rep.stop_reason.startswith("stop: score=0") and rep.steps == 1 and rep.best_test is not None
    rep = _opt(_choose(), tmp_path / "n", strategy="paraphrase", optimizer_model="fake",
               budget={"max_examples": 6000}, callbacks=[NoImprovement(2)])
    assert rep.stop_reason.startswith("stop: no_improvement=2") and rep.steps == 4
    stop = tmp_path / "STOP"
    stop.write_text("")
    rep = _opt(_choose(), tmp_path / "f", strategy="simulated_annealing", budget={"max_examples": 600},
               callbacks=[StopFile(stop)])
    assert rep.stop_reason.startswith("stop: file=") and rep.steps == 1
    assert parse_stop("seconds=600").seconds == 600
    for bad in ("no_improvement=2.5", "score", "later=3", "seconds=-1"):
        with pytest.raises(ConfigError, match="--stop"):
            parse_stop(bad)
    with pytest.raises(ConfigError, match="has none of the methods"):
        _opt(_choose(), tmp_path / "x", callbacks=[object()])


@pytest.mark.parametrize("stop", ["score", "no_improvement", "file", "seconds"])
def test_a_stopped_run_resumes_to_what_an_unstopped_run_finds(tmp_path: Path, stop: str):
    """Each stop condition ends the search with a report; --resume then goes on from where it stopped, and
    the finished run equals one that was never stopped (same steps, candidates, best and test score)."""
    from promptopt.callbacks import WallTime
    from promptopt.runlog import SUMMARY, load_run
    task = _choose()
    kw = dict(strategy="paraphrase", optimizer_model="fake", budget={"max_examples": 600})
    whole = _opt(task, tmp_path / "whole", **kw)
    flag = tmp_path / "STOP"
    flag.write_text("")
    cond = {"score": ScoreReached(0.0), "no_improvement": NoImprovement(1), "file": StopFile(flag),
            "seconds": WallTime(1e-9)}[stop]
    first = _opt(task, tmp_path / "stopped", callbacks=[cond], **kw)
    assert first.stop_reason.startswith(f"stop: {stop}") and first.steps < whole.steps
    run_dir = Path(first.run_dir)
    resumed = promptopt.optimize(task=task, resume=run_dir)
    assert (resumed.steps, resumed.candidates, resumed.best_id, resumed.best_test, resumed.search["examples"]) == \
        (whole.steps, whole.candidates, whole.best_id, whole.best_test, whole.search["examples"])
    assert json.loads((run_dir / "summary.stopped-1.json").read_text())["stop_reason"] == first.stop_reason
    assert json.loads((run_dir / SUMMARY).read_text())["stop_reason"] == whole.stop_reason
    assert load_run(run_dir).summary["best_id"] == whole.best_id
    with pytest.raises(ResumeError, match="already finished"):  # a run that ran to its end stays finished
        promptopt.optimize(task=task, resume=run_dir)


def test_a_run_stopped_twice_and_killed_while_going_on_still_resumes(tmp_path: Path):
    """Stop, go on, stop again, then a crash right after the resume event: the next resume still replays
    the search alone and ends where an unstopped run does."""
    from promptopt.runlog import SUMMARY
    task = _choose()
    kw = dict(strategy="paraphrase", optimizer_model="fake", budget={"max_examples": 600})
    whole = _opt(task, tmp_path / "whole", **kw)
    first = _opt(task, tmp_path / "s", callbacks=[ScoreReached(0.0)], **kw)
    run_dir = Path(first.run_dir)

    class StopAt(Callback):
        def on_step_end(self, run):
            if run.step == 3 and not run.replaying:
                from promptopt.callbacks import StopSearch
                raise StopSearch("step 3")
    second = promptopt.optimize(task=task, resume=run_dir, callbacks=[StopAt()])
    assert second.steps == 3 and second.stop_reason == "stop: step 3"
    summary = (run_dir / SUMMARY).read_text()
    from promptopt.runlog import RunLog
    log = RunLog(run_dir, resume=True)  # a resume that dies after recording itself, before any search event
    log.session("run.resume", recorded_events=len(log.recorded))
    log.close()
    (run_dir / SUMMARY).write_text(summary)  # and before it set the summary aside
    done = promptopt.optimize(task=task, resume=run_dir)
    assert (done.steps, done.best_id, done.best_test) == (whole.steps, whole.best_id, whole.best_test)
    assert sorted(p.name for p in run_dir.glob("summary*.json")) == [
        "summary.json", "summary.stopped-1.json", "summary.stopped-2.json", "summary.stopped-3.json"]


# -- answer extraction and matching --

def test_exact_match_normalizes_by_default_and_strict_keeps_the_old_rule():
    from promptopt.measure.answers import exact_match, exact_match_strict, normalize_answer
    from promptopt.types import Example
    gold = Example("x", "q", "s")
    assert exact_match(" S.", gold) == 1.0 and exact_match_strict(" S.", gold) == 0.0
    assert exact_match('"Yes!"', Example("y", "q", "yes")) == 1.0
    assert normalize_answer("(-5)") == "-5" and exact_match("5", Example("n", "q", "-5")) == 0.0
    assert normalize_answer(") ] >") == ") ] >"  # an answer made of punctuation is kept
    # the case: the model keeps talking; first_line + normalized match gets it
    from promptopt.measure.answers import first_line
    assert exact_match(first_line(" S\n\nThe answer is: S"), gold) == 1.0


def test_extractors_by_name():
    from promptopt.measure.answers import get_extractor
    assert get_extractor("first_line")("\n A \nB") == "A"
    assert get_extractor("first_number")("1,200.0 then 3") == "1200"
    assert get_extractor("last_number")("1,200.0 then 3") == "3"
    assert get_extractor("option_letter")("I think the answer is (c).") == "C"
    assert get_extractor("option_letter")("Answer: b") == "B"
    assert get_extractor(r"regex:answer: (\w+)")("so answer: Paris.") == "Paris"
    with pytest.raises(ConfigError, match="not a valid regular expression"):
        get_extractor("regex:(")


def test_spec_file_extract_and_strict(tmp_path: Path):
    from promptopt.api import load_task
    rows = "".join(json.dumps({"q": f"q{i}", "a": f"Ans{i}"}) + "\n" for i in range(10))
    (tmp_path / "d.jsonl").write_text(rows)
    base = ('template = "{prompt}\\nQ: {input}\\nA:"\noutput = "generate"\nseed_prompts = ["Answer."]\n'
            '[columns]\ninput = "q"\ntarget = "a"\n[data]\nfile = "d.jsonl"\n'
            'split = { train = 4, dev = 3, test = 3 }\n')
    spec = tmp_path / "s.toml"
    spec.write_text('extract = "regex:is (\\\\w+)"\n' + base)
    t = load_task(str(spec))
    ex = t.split("dev")[0]
    assert t.metric(t.extract(f"it is {ex.target.lower()}."), ex) == 1.0
    spec.write_text('strict = true\n' + base)
    t = load_task(str(spec))
    assert t.metric(ex.target.lower(), ex) == 0.0 and t.metric(f" {ex.target}\n", ex) == 1.0
    spec.write_text('extract = "second_word"\n' + base)
    with pytest.raises(ConfigError, match="unknown extractor 'second_word'"):
        load_task(str(spec))


def test_make_task_extract_and_strict():
    t = _gen(extract="last_number")
    ex = t.split("dev")[0]
    assert t.metric(t.extract(f"The answer is {ex.target}."), ex) == 1.0
    t = _gen(strict=True)
    assert t.metric(f"{ex.target}.", ex) == 0.0
