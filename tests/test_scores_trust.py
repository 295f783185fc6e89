"""Scores a user can trust: corpus metrics for choose tasks, the answer distribution and its warning,
and a split reused as another."""
import json
import logging
from pathlib import Path

import pytest

import promptopt
from promptopt.api import evaluate, warn_reused_splits
from promptopt.cli import main
from promptopt.errors import ConfigError
from promptopt.measure.metrics import balanced_accuracy, choice_pair, dominance_warning, macro_f1
from promptopt.runlog import load_run
from promptopt.strategy import History
from promptopt.testing import HARMFUL, HarmfulSentenceBackend
from promptopt.types import Evaluation, ExampleResult

BIASED = "promptopt.testing.contracts:HarmfulSentenceBackend"


def rows(n_bad: int = 16, n_good: int = 4, name: str = "item"):
    """Imbalanced: 80% of the gold answers are 'bad'."""
    return ([{"text": f"{name} {i} is bad", "label": "bad"} for i in range(n_bad)]
            + [{"text": f"{name} {i} is good", "label": "good"} for i in range(n_good)])


def task_of(metric=None, **kw):
    args = dict(template="{prompt}\nText: {text}\nAnswer:", input_key="text", target_key="label",
                output="choose", options=["bad", "good"], prompt="Is the text good or bad?")
    if metric is not None:
        args["metric"] = metric
    data = rows()
    return promptopt.make_task(train=data, dev=data, test=data, **{**args, **kw}) if kw.pop("same", False) else \
        promptopt.make_task(train=rows(8, 2, "train"), dev=data, test=rows(name="test"), **args)


def test_metric_functions():
    pairs = [(0, 0)] * 8 + [(0, 1)] * 2  # always class 0; gold 80/20
    assert balanced_accuracy(pairs) == pytest.approx(0.5)
    assert macro_f1(pairs) == pytest.approx((2 * 8 / (16 + 2) + 0) / 2)
    assert balanced_accuracy([(0, 0), (1, 1)]) == macro_f1([(0, 0), (1, 1)]) == 1.0


def test_choice_pair_reads_gold_back_from_the_logged_result_even_on_ties():
    right = ExampleResult("a", "bad", 1.0, logprob=-1.0, option_logprobs=(-1.0, -1.0))
    wrong = ExampleResult("b", "bad", 0.0, logprob=-1.0, option_logprobs=(-1.0, -1.0, -3.0))
    assert choice_pair(right) == (0, 0) and choice_pair(wrong) == (0, 1)
    assert choice_pair(wrong.to_json()) == (0, 1)
    assert choice_pair(ExampleResult("c", "x", 1.0)) is None  # a generation result has no options


def test_balanced_accuracy_from_python_is_what_evaluate_reports():
    prompt = f"Is the text good or bad? {HARMFUL}"  # the biased target answers ' bad' to everything
    plain = evaluate(prompt, task_of(), target=HarmfulSentenceBackend())
    balanced = evaluate(prompt, task_of("balanced_accuracy"), target=HarmfulSentenceBackend())
    f1 = evaluate(prompt, task_of("macro_f1"), target=HarmfulSentenceBackend())
    assert plain.score == pytest.approx(0.8) and plain.metric is None
    assert balanced.score == pytest.approx(0.5) and balanced.metric == "balanced_accuracy"
    assert f1.score == pytest.approx(macro_f1([(0, 0)] * 16 + [(0, 1)] * 4))
    # Per-example scores stay correctness; the logged form keeps the metric and replays the same score.
    assert [r.score for r in balanced.results] == [r.score for r in plain.results]
    assert "metric" not in plain.to_json()
    again = Evaluation.from_json(json.loads(json.dumps(balanced.to_json())))
    assert again.score == pytest.approx(0.5) and again.to_json()["score"] == pytest.approx(0.5)
    h = History()
    h._add_evaluation(balanced)
    assert h.score(balanced.candidate_id, "dev") == pytest.approx(0.5)
    # A good prompt: every class right, so both agree.
    assert evaluate("Is the text good or bad?", task_of("balanced_accuracy"), target=HarmfulSentenceBackend()).score == 1.0


def test_named_metric_errors():
    with pytest.raises(ConfigError, match="balanced_accuracy"):
        task_of("f1")
    with pytest.raises(ConfigError, match="choose"):
        promptopt.make_task(rows(), input_key="text", target_key="label", metric="macro_f1")


def test_dominance_warning_text():
    prompt = f"Is the text good or bad? {HARMFUL}"
    ev = evaluate(prompt, task_of(), target=HarmfulSentenceBackend())
    line = dominance_warning(ev.results)
    assert line == "the model answered 'bad' on 100% of examples; accuracy is close to that answer's frequency (80%)"
    fair = evaluate("Is the text good or bad?", task_of(), target=HarmfulSentenceBackend())
    # A model that is right everywhere answers 'bad' 80% of the time too: that is the data, no warning.
    assert dominance_warning(fair.results) is None
    generated = [ExampleResult(str(i), " S\n\nThe answer is: S", 0.0) for i in range(5)]
    assert dominance_warning(generated) == ("the model answered 'S' on 100% of examples; "
                                            "the score mostly measures that one answer")


def spec(tmp_path: Path, metric: str = "accuracy", dev_file: str = "dev.jsonl") -> Path:
    for split in ("train", "dev", "test"):
        (tmp_path / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows()), encoding="utf-8")
    path = tmp_path / "spec.toml"
    path.write_text(f'''template = "{{prompt}}\\nText: {{input}}\\nAnswer:"
output = "choose"
options = [" bad", " good"]
seed_prompts = ["Is the text good or bad? {HARMFUL}"]
metric = "{metric}"
[columns]
input = "text"
target = "label"
[data]
train = "train.jsonl"
dev = "{dev_file}"
test = "test.jsonl"
''', encoding="utf-8")
    return path


def test_spec_metric_and_cli_evaluate_warns(tmp_path, capsys, caplog):
    path = spec(tmp_path, "balanced_accuracy")
    task = promptopt.api.load_task(str(path))
    assert task.corpus_metric == "balanced_accuracy"
    code = main(["evaluate", "--task", str(path), "--prompt", f"Is the text good or bad? {HARMFUL}",
                 "--backend", BIASED, "--model", "fake", "--no-cache", "--split", "dev"])
    out, err = capsys.readouterr()
    assert code == 0
    assert "dev balanced_accuracy 0.5000 on 20 examples" in out
    assert "predictions: 'bad' 100%" in out
    assert "warning: the model answered 'bad' on 100% of examples; accuracy is close to that answer's frequency (80%)" in err
    assert "share 20 of the 20" in caplog.text  # train, dev and test hold the same rows here


def test_spec_refuses_a_corpus_metric_for_generation(tmp_path):
    path = spec(tmp_path, "macro_f1")
    text = path.read_text().replace('output = "choose"\noptions = [" bad", " good"]', 'output = "generate"')
    path.write_text(text)
    with pytest.raises(ConfigError, match="for choose tasks"):
        promptopt.api.load_task(str(path))


def test_reused_split_warning(caplog):
    same = task_of(same=True)
    with caplog.at_level(logging.WARNING, logger="promptopt"):
        found = warn_reused_splits(same)
    assert any("train and dev splits share 20 of the 20" in line for line in found)
    assert "not held out" in caplog.text
    assert warn_reused_splits(promptopt.testing.toy_task()) == []


def test_run_show_and_report_use_the_metric_and_warn(tmp_path, capsys):
    task = task_of("balanced_accuracy")
    report = promptopt.optimize(task=task, strategy="hill_climb", backend=BIASED, model="fake",
                                optimizer_model=None, budget={"max_examples": 60}, run_dir=str(tmp_path / "runs"),
                                cache=False, prompt=f"Is the text good or bad? {HARMFUL}")
    view = load_run(Path(report.run_dir))
    assert view.score(report.best_id) == pytest.approx(report.best_dev)
    seed_id = next(c for c, e in view.candidates.items() if e["text"] == report.seed_prompt)
    assert view.score(seed_id) == pytest.approx(0.5) and report.seed_dev == pytest.approx(0.5)
    assert report.seed_test == pytest.approx(0.5)
    assert main(["show", report.run_dir]) == 0
    out = capsys.readouterr().out
    assert "answers of the best prompt on test" in out
    if report.best_prompt == report.seed_prompt:
        assert "warning: the model answered 'bad' on 100% of examples" in out
    pytest.importorskip("matplotlib")
    assert main(["report", report.run_dir]) == 0
    html = (Path(report.run_dir) / "report.html").read_text(encoding="utf-8")
    assert 'id="answers"' in html


def test_misspelled_strategy_setting_suggests_the_valid_keys(tmp_path, capsys):
    code = main(["optimize", "--task", "demo", "--strategy", "apo", "--set", "apo.beam_widht=2", "--dry-run",
                 "--run-dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and "did you mean 'beam_width'?" in err and "valid settings:" in err and "rounds" in err


def test_cli_evaluate_defaults_to_dev_like_the_api(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PROMPTOPT_CACHE_DIR", str(tmp_path))
    assert main(["evaluate", "--task", "demo", "--prompt", "Is it a complaint?", "--backend", "fake",
                 "--model", "m"]) == 0
    assert capsys.readouterr().out.startswith("dev score")
