"""One task builder (promptopt/task/spec.py): spec files, make_task and the lm-eval bridge build the same Task
from the same rows and refuse the same bad input with one line (fast tier; the lm-eval leg needs the lmeval
extra, which CI installs)."""
from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path

import pytest

import promptopt
from promptopt.api import load_task
from promptopt.cli import main
from promptopt.errors import ConfigError, PromptOptError, RunStopped, TaskError
from promptopt.task import Task
from promptopt.task.from_examples import MetricError, make_task

ROWS = {split: [{"question": f"Is {i} even?", "answer": ["yes", "no"][i % 2], "idx": i % 2}
                for i in range(start, start + n)] for split, start, n in (("train", 0, 8), ("dev", 8, 6),
                                                                       ("test", 14, 6))}
PROMPT = "Answer yes or no."


def _files(root: Path) -> None:
    for split, rows in ROWS.items():
        (root / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def _spec_file(root: Path, output: str = "choose") -> Path:
    _files(root)
    body = ('name = "tiny"\ntemplate = "{prompt}\\n\\n{input}"\n'
            f'seed_prompts = ["{PROMPT}"]\n'
            + ('output = "choose"\noptions = ["yes", "no"]\n[columns]\ninput = "question"\nlabel = "idx"\n'
               if output == "choose" else
               'output = "generate"\nstop = ["\\n"]\nmax_tokens = 8\n'
               '[columns]\ninput = "question"\ntarget = "answer"\n')
            + '[data]\ntrain = "train.jsonl"\ndev = "dev.jsonl"\ntest = "test.jsonl"\n')
    path = root / "tiny.toml"
    path.write_text(body, encoding="utf-8")
    return path


def _lmeval_yaml(root: Path, output: str = "choose") -> Path:
    _files(root)
    body = ("task: tiny\ndataset_path: json\ndataset_kwargs:\n  data_files:\n"
            + "".join(f"    {s}: {root / f'{s}.jsonl'}\n" for s in ("train", "dev", "test"))
            + "training_split: train\nvalidation_split: dev\ntest_split: test\n"
            f"doc_to_text: \"{{{{question}}}}\"\ndescription: \"{PROMPT}\"\n"
            + ('output_type: multiple_choice\ndoc_to_target: idx\ndoc_to_choice: ["yes", "no"]\n'
               if output == "choose" else
               'output_type: generate_until\ndoc_to_target: "{{answer}}"\n'
               'generation_kwargs:\n  until: ["\\n"]\n  max_gen_toks: 8\n'))
    path = root / "tiny.yaml"
    path.write_text(body, encoding="utf-8")
    return path


def _make(output: str = "choose", **kw) -> Task:
    args = (dict(output="choose", options=["yes", "no"], label_key="idx") if output == "choose" else
            dict(output="generate", target_key="answer", stop=["\n"], max_tokens=8))
    splits = {s: kw.pop(s, ROWS[s]) for s in ("train", "dev", "test")}
    return make_task(**splits, template="{prompt}\n\n{question}", input_key="question", prompt=PROMPT, name="tiny",
                     **{**args, **kw})


def _same(task: Task) -> Task:
    """The task without what names where it came from."""
    return dataclasses.replace(task, name="tiny", description="", meta={})


def test_a_spec_file_and_make_task_build_the_same_task(tmp_path):
    from_file = load_task(str(_spec_file(tmp_path)))
    made = _make()
    assert _same(from_file) == _same(made)
    assert made.options == (" yes", " no")  # a leading space after a template that ends in none
    assert [e.id for e in made.split("dev")][:2] == ["tiny-dev-0", "tiny-dev-1"]
    assert from_file.meta["source"] == str(tmp_path / "tiny.toml") and made.meta["source"] == "python"


def test_all_three_builders_give_the_same_task(tmp_path, monkeypatch):
    try:
        import lm_eval  # noqa: F401
    except ImportError:  # pragma: no cover - the extra is missing
        if os.environ.get("CI") == "true":
            raise
        pytest.skip("lm_eval is not installed: pip install 'promptopt[lmeval]'")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    choose = [load_task(str(_spec_file(tmp_path))), _make(), load_task(f"lmeval:{_lmeval_yaml(tmp_path)}")]
    assert _same(choose[0]) == _same(choose[1]) == _same(choose[2])
    gen = [load_task(str(_spec_file(tmp_path, "generate"))), _make("generate"),
           load_task(f"lmeval:{_lmeval_yaml(tmp_path, 'generate')}")]
    # lm-eval's exact match rule is its own (ignore_case, ...), so the metric is the one field that differs
    a, b, c = (_same(dataclasses.replace(t, metric=None)) for t in gen)  # type: ignore[arg-type]
    assert a == b == c
    ex = gen[2].split("dev")[0]
    assert [t.metric(ex.target, ex) for t in gen] == [1.0, 1.0, 1.0]


def test_case_folded_targets_and_zero_test_rows_mean_the_same_everywhere(tmp_path):
    rows = [{"question": f"q{i}", "answer": ["YES", "No"][i % 2]} for i in range(10)]
    (tmp_path / "all.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    spec = tmp_path / "s.toml"
    spec.write_text('template = "{prompt} {input}"\noutput = "choose"\noptions = [" yes", " no"]\n'
                    'seed_prompts = ["p"]\n[columns]\ninput = "question"\ntarget = "answer"\n'
                    '[data]\nfile = "all.jsonl"\nsplit = { train = 0.5, dev = 0.5, test = 0 }\n', encoding="utf-8")
    from_file = load_task(str(spec))
    made = make_task(rows, template="{prompt} {question}", input_key="question", target_key="answer",
                     output="choose", options=[" yes", " no"], prompt="p", name="s", dev_size=0.5, test_size=0)
    assert _same(from_file) == _same(made)
    assert [e.label for e in made.split("dev")] and from_file.meta["sizes"] == {"train": 5, "dev": 5, "test": 0}
    ambiguous = [{"question": "q", "answer": "yes"}] * 5
    with pytest.raises(TaskError, match="matches several, ignoring case"):
        make_task(ambiguous, input_key="question", target_key="answer", output="choose",
                  options=[" Yes", " YES", " no"], prompt="p")


def test_duplicate_options_are_refused_in_python_and_in_spec_files(tmp_path):
    with pytest.raises(ConfigError, match=r"make_task: options 'yes' appear more than once"):
        _make(options=["yes", " yes", "no"])
    spec = _spec_file(tmp_path)
    spec.write_text(spec.read_text().replace('options = ["yes", "no"]', 'options = [" no", "yes", "no"]'))
    with pytest.raises(ConfigError, match=r"tiny.toml: options 'no' appear more than once"):
        load_task(str(spec))


def test_a_lone_surrogate_in_a_row_is_one_line_naming_it():
    rows = [dict(r) for r in ROWS["dev"]]
    rows[2]["question"] = "bad \ud800 text"
    with pytest.raises(TaskError, match=r"dev\[2\]: column 'question' holds text with a lone surrogate") as e:
        _make(dev=rows)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("size, match", [
    (math.nan, r"make_task: dev_size = nan must be a row count or a fraction in \[0, 1\)"),
    (1.5, r"dev_size = 1.5 must be"), (-2, "must not be negative"), ("a", "must be a row count"),
    (True, "must be a row count"), (0, "the dev split would be empty")])
def test_bad_split_sizes_are_one_clear_error(size, match):
    with pytest.raises(PromptOptError, match=match):
        make_task([{"input": str(i), "target": "x"} for i in range(10)], prompt="p", dev_size=size)


def test_make_task_needs_a_prompt_and_says_every_problem_at_once():
    with pytest.raises(ConfigError) as e:
        make_task([{"input": "a", "target": "b"}] * 5, template="{input}", metric="macro_f1")
    msg = str(e.value)
    assert msg.startswith("make_task: 3 problems") and "pass prompt=" in msg and "lacks {prompt}" in msg
    assert "for choose tasks" in msg and "\n" not in msg


def test_empty_cells_are_refused_not_read_as_the_text_none(tmp_path):
    rows = [dict(r) for r in ROWS["train"]]
    rows[1]["question"] = None
    with pytest.raises(TaskError, match=r"train\[1\]: column 'question' is empty"):
        _make(train=rows)
    spec = _spec_file(tmp_path)
    (tmp_path / "dev.jsonl").write_text('{"question": null, "idx": 0}\n', encoding="utf-8")
    with pytest.raises(TaskError, match=r"dev.jsonl row 1: column 'question' is empty"):
        load_task(str(spec))


def _gen_task(metric):
    rows = [{"q": f"what is {i} plus 1?", "a": str(i + 1)} for i in range(20)]
    return make_task(rows, template="{prompt}\n\nQ: {q}\nA:", input_key="q", target_key="a", metric=metric,
                     prompt="Answer with a number.")


def _optimize(task, tmp_path):
    return promptopt.optimize(task=task, strategy="hill_climb", backend="fake", model="fake", optimizer_model=None,
                              budget={"max_examples": 40}, run_dir=str(tmp_path / "runs"), cache=False)


@pytest.mark.parametrize("value", [1e308, -1e308, math.inf, math.nan])
def test_a_metric_must_return_a_finite_number_that_a_mean_cannot_overflow(value, tmp_path):
    with pytest.raises(MetricError, match=r"returned .* on example examples-\d+; expected a finite number"):
        _gen_task(lambda p, ex: value)
    calls = {"n": 0}

    def late(pred, ex):  # passes the build-time check, then returns the value mid-run
        calls["n"] += 1
        return 1.0 if calls["n"] == 1 else value
    with pytest.raises(RunStopped, match="expected a finite number"):
        _optimize(_gen_task(late), tmp_path)
    [run] = list((tmp_path / "runs").iterdir())
    assert not (run / "summary.json").exists()
    assert "Infinity" not in (run / "events.jsonl").read_text() and "NaN" not in (run / "events.jsonl").read_text()


def test_a_metric_that_calls_sys_exit_stops_the_run_with_a_clear_line(tmp_path):
    with pytest.raises(MetricError, match="metric bye raised SystemExit"):
        def bye(pred, ex):
            raise SystemExit(0)
        _gen_task(bye)
    calls = {"n": 0}

    def later(pred, ex):
        calls["n"] += 1
        if calls["n"] > 1:
            raise SystemExit(0)
        return 1.0
    with pytest.raises(RunStopped, match="metric later raised SystemExit: 0 on example"):
        _optimize(_gen_task(later), tmp_path)


def test_spec_file_errors_are_one_line_and_exit_2(tmp_path, capsys):
    spec = _spec_file(tmp_path)
    spec.write_text(spec.read_text().replace('options = ["yes", "no"]', 'options = ["yes", "yes"]'))
    assert main(["optimize", "--task", str(spec), "--strategy", "paraphrase", "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "appear more than once" in err and "Traceback" not in err


def test_make_task_carves_dev_from_train_when_no_dev_is_given():
    t = make_task(train=ROWS["train"] + ROWS["dev"], test=ROWS["test"], template="{prompt} {question}",
                  input_key="question", target_key="answer", prompt="p", dev_size=4, seed=1)
    assert {s: len(t.split(s)) for s in ("train", "dev", "test")} == {"train": 10, "dev": 4, "test": 6}
    assert not {e.id for e in t.split("dev")} & {e.id for e in t.split("train")}
    again = make_task(train=ROWS["train"] + ROWS["dev"], test=ROWS["test"], template="{prompt} {question}",
                      input_key="question", target_key="answer", prompt="p", dev_size=4, seed=2)
    assert [e.id for e in again.split("dev")] != [e.id for e in t.split("dev")]  # dev follows the seed
    with pytest.raises(ConfigError, match="or train=/dev=/test=, not both"):
        make_task(ROWS["train"], dev=ROWS["dev"], prompt="p")


def test_cli_run_whose_metric_calls_sys_exit_is_stopped_not_exit_0(tmp_path, capsys):
    (tmp_path / "harness_tasks.py").write_text(
        "import sys\nfrom promptopt import make_task\ncalls = {'n': 0}\n"
        "def metric(pred, row):\n    calls['n'] += 1\n    if calls['n'] > 3:\n        sys.exit(0)\n    return 1.0\n"
        "def factory(data_dir=None, seed=0):\n"
        "    rows = [{'q': f'what is {i} plus 1?', 'a': str(i + 1)} for i in range(20)]\n"
        "    return make_task(rows, input_key='q', target_key='a', metric=metric, prompt='Answer.')\n",
        encoding="utf-8")
    code = main(["optimize", "--task", f"{tmp_path / 'harness_tasks.py'}:factory", "--backend", "fake", "--model", "m",
                 "--optimizer-model", "none", "--strategy", "hill_climb", "--no-cache", "-q", "--budget", "60",
                 "--run-dir", str(tmp_path / "runs")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 3 and len(err) == 1 and "metric metric raised SystemExit: 0 on example" in err[0], (code, err)
    [run] = list((tmp_path / "runs").iterdir())
    assert not (run / "summary.json").exists()


def test_label_columns_take_indices_as_numbers_text_or_booleans(tmp_path):
    rows = [{"t": f"x{i}", "y": v} for i, v in enumerate([0, 1, "1", 1.0, True, False] * 2)]
    t = make_task(train=rows, dev=rows[:6], template="{prompt} {t}", input_key="t", label_key="y", output="choose",
                  options=["no", "yes"], prompt="p", name="b")
    assert [e.label for e in t.split("dev")] == [0, 1, 1, 1, 1, 0]
    for bad in (2, "1.5", "yes", -1):
        with pytest.raises(TaskError, match=r"dev\[0\]: label .* is not an option index 0\.\.1"):
            make_task(dev=[{"t": "x", "y": bad}], template="{prompt} {t}", input_key="t", label_key="y",
                      output="choose", options=["no", "yes"], prompt="p")


def test_an_id_column_names_examples_and_must_be_unique():
    rows = [{"input": f"q{i}", "target": "a", "key": f"k{i}"} for i in range(4)]
    t = make_task(dev=rows, id_key="key", prompt="p")
    assert [e.id for e in t.split("dev")] == ["k0", "k1", "k2", "k3"]
    with pytest.raises(TaskError, match="example id 'k0' appears twice; column 'key' must be unique"):
        make_task(dev=rows, test=rows[:1], id_key="key", prompt="p")
