"""The built-in tasks (demo, RLPrompt few-shot, gsm8k, liar, custom): the loaders on small fixture
files in the shared data's formats (any clone), and the real shared data's sizes and rows (skipped
without PROMPTOPT_DATA_DIR, a failure in CI)."""
from __future__ import annotations

import json
import shutil
import sys
import types
from collections import Counter
from pathlib import Path

import pytest

from promptopt import registry
from promptopt.task.data import DATA_DIR_ENV
from promptopt.errors import ConfigError, TaskError
from promptopt.task import Task, last_number
from promptopt.task.template import split_at_prompt
from promptopt.types import Example

REPO = Path(__file__).resolve().parents[1]
EXAMPLE_SPEC = REPO / "examples" / "custom_task" / "spec.toml"


def build(name: str, data_dir: Path | None = None, **kwargs) -> Task:
    """Through the registry, as the CLI does (entry point -> module -> factory)."""
    return registry.get("tasks", name)(data_dir=data_dir, **kwargs)


@pytest.fixture(params=["mini_data", "shared_data"])
def data_root(request: pytest.FixtureRequest) -> Path:
    """Checks that hold for any data in the shared formats run on the fixture files and on the real data."""
    return request.getfixturevalue(request.param)


def ids(task: Task) -> list[str]:
    return [ex.id for split in ("train", "dev", "test") for ex in task.split(split)]


def check_common(task: Task) -> None:
    assert split_at_prompt(task.template)[0] == ""  # prompt first: its KV cache is reused
    assert len(set(ids(task))) == len(ids(task))
    assert task.meta["sizes"] == {s: len(task.split(s)) for s in ("train", "dev", "test")}
    if task.output == "choose":
        for ex in (e for s in ("train", "dev", "test") for e in task.split(s)):
            assert ex.target == task.options[ex.label].strip()


def test_every_builtin_task_is_registered():
    assert {"demo", "sst2", "mr", "cr", "sst5", "agnews", "trec", "gsm8k", "liar", "custom"} <= set(
        registry.names("tasks"))


# -- demo ------------------------------------------------------------------------------------

def test_demo_needs_no_data_dir(monkeypatch):
    monkeypatch.delenv(DATA_DIR_ENV, raising=False)
    task = build("demo", data_dir=None)
    check_common(task)
    assert task.meta["sizes"] == {"train": 24, "dev": 24, "test": 30}
    assert task.options == (" other", " complaint") and task.output == "choose"
    for split in ("train", "dev", "test"):
        assert Counter(ex.label for ex in task.split(split)) == {0: len(task.split(split)) // 2,
                                                                1: len(task.split(split)) // 2}
    assert task.split("test")[0].id == "demo-test-0"
    assert task.render(task.seed_prompts[0], task.split("dev")[0]) == (
        "Does the customer sound upset?\n\nMessage: The pizza was cold and the box was crushed when it got "
        "here.\nAnswer:")


def test_demo_rejects_options():
    with pytest.raises(ConfigError, match="valid options: none"):
        build("demo", data_dir=None, dev_size=3)


# -- RLPrompt few-shot -----------------------------------------------------------------------

def test_sst2_matches_the_readme(shared_data):
    task = build("sst2", shared_data)
    check_common(task)
    assert task.meta["sizes"] == {"train": 32, "dev": 32, "test": 1821}
    assert task.meta["source"] == "local"
    assert Counter(ex.label for ex in task.split("train")) == {0: 16, 1: 16}
    assert Counter(ex.target for ex in task.split("test")) == {"negative": 912, "positive": 909}
    assert task.options == (" negative", " positive")
    first = task.split("train")[0]
    assert (first.id, first.input, first.label) == ("sst2-train-0", "too silly to take seriously .", 0)
    assert task.render("Is it good?", first) == "Is it good?\n\nReview: too silly to take seriously .\nAnswer:"


def test_sst2_is_stable_and_k_seed_selects_the_draw(data_root):
    a, b = build("sst2", data_root), build("sst2", data_root, seed=5)
    assert [(e.id, e.input) for e in a.split("dev")] == [(e.id, e.input) for e in b.split("dev")]
    other = build("sst2", data_root, k_seed="16-13")
    assert {e.input for e in other.split("train")} != {e.input for e in a.split("train")}
    assert [e.input for e in other.split("test")] == [e.input for e in a.split("test")]


def test_sst2_test_limit_is_balanced_and_fixed(data_root):
    full = build("sst2", data_root)
    small = build("sst2", data_root, test_limit=100, seed=3)
    assert len(small.split("test")) == 100
    assert Counter(ex.label for ex in small.split("test")) == {0: 50, 1: 50}
    assert [e.id for e in small.split("test")] == [e.id for e in build("sst2", data_root, test_limit=100).split("test")]
    full_by_id = {e.id: e for e in full.split("test")}
    assert all(full_by_id[e.id] == e for e in small.split("test"))


def test_sst2_verbalizers_option(mini_data):
    task = build("sst2", mini_data, verbalizers=[" terrible", " great"])
    assert task.options == (" terrible", " great")
    assert task.split("dev")[0].target in ("terrible", "great")
    with pytest.raises(ConfigError, match="needs 2 texts"):
        build("sst2", mini_data, verbalizers=[" bad"])


@pytest.mark.parametrize("bad, match", [({"k_seed": "16-1"}, "k_seed"), ({"kseed": "16-13"}, "unknown option 'kseed'"),
                                        ({"test_limit": 0}, "test_limit")])
def test_sst2_rejects_bad_options(bad, match, mini_data):
    with pytest.raises(ConfigError, match=match):
        build("sst2", mini_data, **bad)


@pytest.mark.parametrize("name, sizes, n_options", [
    ("mr", (32, 32, 2000), 2), ("cr", (32, 32, 2000), 2), ("sst5", (80, 80, 2210), 5),
    ("agnews", (64, 64, 7600), 4), ("trec", (96, 96, 500), 6)])
def test_other_fewshot_datasets(name, sizes, n_options, shared_data):
    task = build(name, shared_data)
    check_common(task)
    assert tuple(task.meta["sizes"].values()) == sizes
    assert len(task.options) == n_options
    assert set(Counter(ex.label for ex in task.split("train")).values()) == {16}


@pytest.mark.parametrize("name, n_options", [("mr", 2), ("cr", 2), ("sst5", 5), ("agnews", 4), ("trec", 6)])
def test_fewshot_loaders_on_fixture_files(name, n_options, mini_data):
    task = build(name, mini_data)
    check_common(task)
    assert task.meta["sizes"] == {"train": 16 * n_options, "dev": 16 * n_options, "test": 60 * n_options}
    assert set(Counter(ex.label for ex in task.split("train")).values()) == {16}
    assert task.split("dev")[0].input.endswith('dev 0 "quoted"')  # quotes inside a field are kept


def test_agnews_reads_text_column_in_train_and_sentence_in_test(mini_data):
    task = build("agnews", mini_data)
    assert task.split("train")[0].input.startswith("agnews 16-100 train 0")
    assert task.split("test")[0].input == "agnews test 0"


def test_real_agnews_first_train_row(shared_data):
    task = build("agnews", shared_data)
    assert task.split("train")[0].input.startswith("Wilkinson to raise the bar")
    assert all(ex.input for ex in task.split("test"))


def test_fewshot_without_local_files_has_a_clear_error(tmp_path):
    with pytest.raises(TaskError, match=r"task mr: no local copy under .* \(this task has no hub fallback\)"):
        build("mr", data_dir=tmp_path)


def test_sst2_hub_fallback_draws_16_per_class(tmp_path, monkeypatch):
    """With no local copy, SetFit/sst2 rows are drawn 16 per class into disjoint train and dev."""
    calls = []

    def load_dataset(name, config, split):
        calls.append((name, split))
        n = 200 if split == "train" else 50
        return [{"text": f"{split} review {i}", "label": i % 2} for i in range(n)]

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    task = build("sst2", data_dir=tmp_path)
    assert calls == [("SetFit/sst2", "train"), ("SetFit/sst2", "test")]
    assert task.meta["source"] == "hub" and task.meta["sizes"] == {"train": 32, "dev": 32, "test": 50}
    assert Counter(e.label for e in task.split("dev")) == {0: 16, 1: 16}
    assert not {e.input for e in task.split("train")} & {e.input for e in task.split("dev")}
    assert [e.input for e in build("sst2", data_dir=tmp_path, k_seed="16-13").split("train")] != [
        e.input for e in task.split("train")]


# -- gsm8k -----------------------------------------------------------------------------------

def test_gsm8k_splits_and_targets(shared_data):
    task = build("gsm8k", shared_data)
    check_common(task)
    assert task.meta["sizes"] == {"train": 7273, "dev": 200, "test": 1319}
    assert task.output == "generate" and task.chat and task.max_tokens == 256
    assert task.extract is last_number
    assert task.seed_prompts[0].startswith("Solve the math word problem")
    train_ids = {e.id for e in task.split("train")}
    assert not train_ids & {e.id for e in task.split("dev")}
    assert all(e.id.startswith("gsm8k-train-") for e in task.split("dev"))  # carved from train
    by_id = {e.id: e for e in task.split("train") + list(task.split("dev"))}
    assert by_id["gsm8k-train-0"].target == "72"
    assert by_id["gsm8k-train-345"].target == "1080"  # "#### 1,080"
    assert by_id["gsm8k-train-5715"].target == "-7"


def test_gsm8k_on_fixture_files(mini_data):
    task = build("gsm8k", mini_data)
    check_common(task)
    assert task.meta["sizes"] == {"train": 1100, "dev": 200, "test": 60}
    by_id = {e.id: e for e in task.split("train") + list(task.split("dev"))}
    assert by_id["gsm8k-train-0"].target == "-1"
    assert by_id["gsm8k-train-1081"].target == "1080"  # "#### 1,080"


def test_gsm8k_extraction_on_worked_solutions(data_root):
    """The extractor applied to each worked solution gives that problem's target."""
    task = build("gsm8k", data_root)
    rows = [json.loads(line) for line in (data_root / "gsm8k" / "test.jsonl").read_text().splitlines()]
    assert [task.extract(r["answer"]) for r in rows] == [e.target for e in task.split("test")]
    ex = task.split("test")[0]
    assert task.metric(task.extract(f"She makes $18.00 a day.\nThe answer is {ex.target}.00."), ex) == 1.0
    assert task.metric(task.extract("The answer is 17."), Example("x", "q", "18")) == 0.0


def test_gsm8k_dev_follows_the_seed_and_options_cap(mini_data):
    a, b = build("gsm8k", mini_data, seed=1), build("gsm8k", mini_data, seed=2)
    assert [e.id for e in a.split("dev")] == [e.id for e in build("gsm8k", mini_data, seed=1).split("dev")]
    assert [e.id for e in a.split("dev")] != [e.id for e in b.split("dev")]
    small = build("gsm8k", mini_data, dev_size=50, train_size=100, test_limit=30, max_tokens=128)
    assert small.meta["sizes"] == {"train": 100, "dev": 50, "test": 30}
    assert small.max_tokens == 128
    assert [e.id for e in small.split("test")] == [e.id for e in build("gsm8k", mini_data, test_limit=30, seed=9).split("test")]


def test_gsm8k_rejects_bad_options(mini_data):
    with pytest.raises(ConfigError, match="unknown option 'dev'"):
        build("gsm8k", mini_data, dev=10)
    with pytest.raises(ConfigError, match="dev_size"):
        build("gsm8k", mini_data, dev_size=10**6)


# -- liar ------------------------------------------------------------------------------------

def test_real_liar_sizes(shared_data):
    task = build("liar", shared_data)
    assert task.meta["sizes"] == {"train": 3481, "dev": 200, "test": 461}
    assert Counter(ex.target for ex in task.split("test")) == {"Yes": 250, "No": 211}


def test_liar_label_mapping(data_root):
    task = build("liar", data_root)
    check_common(task)
    assert task.options == (" No", " Yes")
    raw = [json.loads(line) for line in (data_root / "protegi/liar/test.jsonl").read_text().splitlines()]
    for ex, row in zip(task.split("test"), raw):
        assert ex.input == row["text"]
        assert ex.target == ("Yes" if row["label"] == 1 else "No")  # 1 = PolitiFact "false" = a lie
    rendered = task.render("Is it a lie?", task.split("test")[0])
    assert rendered.startswith("Is it a lie?\n\nStatement: ") and rendered.endswith("\nAnswer:")


def test_liar_dev_is_carved_from_train(mini_data):
    task = build("liar", mini_data, dev_size=50, test_limit=40)
    assert task.meta["sizes"] == {"train": 350, "dev": 50, "test": 40}
    assert Counter(ex.label for ex in task.split("test")) == {0: 20, 1: 20}
    assert not {e.id for e in task.split("dev")} & {e.id for e in task.split("train")}


# -- custom ----------------------------------------------------------------------------------

def test_example_custom_spec():
    task = build("custom", spec=EXAMPLE_SPEC, data_dir=None)
    check_common(task)
    assert task.name == "intents"
    assert task.meta["sizes"] == {"train": 8, "dev": 8, "test": 10}
    assert task.options == (" billing", " technical", " other")
    again = build("custom", spec=EXAMPLE_SPEC, seed=4)
    assert {e.id for e in task.split("test")} == {e.id for e in again.split("test")}
    assert {e.id for e in task.split("dev")} != {e.id for e in again.split("dev")}  # dev follows the run seed
    [quoted] = [e for s in ("train", "dev", "test") for e in task.split(s) if e.id == "intents-3"]  # 26 rows, all used
    assert quoted.input == 'The app crashes as soon as I tap "settings".' and quoted.target == "technical"


def _spec(tmp_path: Path, body: str, name: str = "spec.toml") -> Path:
    path = tmp_path / name
    path.write_text(body, encoding="utf-8")
    return path


BASE = """
template = "{prompt}\\n\\nQ: {input}\\nA:"
output = "choose"
options = [" no", " yes"]
seed_prompts = ["Answer yes or no."]
[columns]
input = "q"
target = "a"
[data]
train = "train.jsonl"
dev = "dev.jsonl"
test = "test.jsonl"
"""


def _jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


@pytest.fixture
def files(tmp_path: Path) -> Path:
    for split in ("train", "dev", "test"):
        _jsonl(tmp_path / f"{split}.jsonl", [{"q": f"{split} {i}?", "a": "yes" if i % 2 else "no", "n": str(i)}
                                            for i in range(4)])
    return tmp_path


def test_custom_with_explicit_files(files):
    task = build("custom", spec=_spec(files, BASE))
    assert task.name == "spec" and task.meta["sizes"] == {"train": 4, "dev": 4, "test": 4}
    ex = task.split("dev")[1]
    assert (ex.id, ex.input, ex.target, ex.label) == ("spec-dev-1", "dev 1?", "yes", 1)


def test_custom_yaml_generate_numeric(tmp_path):
    (tmp_path / "data.csv").write_text("question,answer,unit\n" + "".join(f"q{i},{i}.50,kg\n" for i in range(10)))
    spec = _spec(tmp_path, """
template: "{prompt}\\nQuestion: {input} ({unit})"
output: generate
seed_prompts: ["Answer with a number."]
metric: numeric
columns: {input: question, target: answer}
data: {file: data.csv, split: {train: 0.4, dev: 0.3, test: 0.3}}
""", "spec.yaml")
    task = build("custom", spec=spec)
    assert task.meta["sizes"] == {"train": 4, "dev": 3, "test": 3}
    ex = task.split("dev")[0]
    assert task.render("P", ex) == f"P\nQuestion: {ex.input} (kg)"
    assert task.metric(task.extract(f"so it is {ex.target}0 in total"), ex) == 1.0
    assert task.metric(task.extract("about 99"), ex) == 0.0


def test_custom_label_column(files):
    for split in ("train", "dev", "test"):
        _jsonl(files / f"{split}.jsonl", [{"q": "x", "y": 1}, {"q": "z", "y": 0}])
    task = build("custom", spec=_spec(files, BASE.replace('target = "a"', 'label = "y"')))
    assert [(e.label, e.target) for e in task.split("test")] == [(1, "yes"), (0, "no")]


@pytest.mark.parametrize("edit, error, match", [
    (lambda s: s.replace('"dev.jsonl"', '"missing.jsonl"'), TaskError, "missing.jsonl' does not exist"),
    (lambda s: s.replace('input = "q"', 'input = "question"'), TaskError, "has no column 'question'"),
    (lambda s: s.replace("{input}", "{text}"), ConfigError, r"the template lacks \{input\}"),
    (lambda s: s.replace("{prompt}", ""), ConfigError, r"the template lacks \{prompt\}"),
    (lambda s: s.replace('options = [" no", " yes"]', 'options = [" no", " maybe"]'), TaskError,
     "target 'yes' is not one of the options"),
    (lambda s: 'metric = "f1"\n' + s, ConfigError, "metric: 'f1' is not a metric: use accuracy, exact_match"),
    (lambda s: 'metric = "numeric"\n' + s, ConfigError, "scored by accuracy"),
    (lambda s: 'temperature = 0.5\n' + s, ConfigError, "temperature: unknown setting"),
    (lambda s: s.replace('seed_prompts = ["Answer yes or no."]', ""), ConfigError, "seed_prompts: Field required"),
    (lambda s: s.replace('test = "test.jsonl"', 'test = "test.jsonl"\nfile = "train.jsonl"'), ConfigError,
     "not both"),
    (lambda s: s.replace("[columns]", "[columns"), ConfigError, "not valid TOML"),
])
def test_custom_bad_input_is_one_clear_line(files, edit, error, match):
    with pytest.raises(error, match=match) as e:
        build("custom", spec=_spec(files, edit(BASE)))
    assert "\n" not in str(e.value)


def test_custom_malformed_jsonl_names_file_and_line(files):
    (files / "dev.jsonl").write_text('{"q": "a", "a": "no"}\n{"q": "b", "a": \n', encoding="utf-8")
    with pytest.raises(TaskError, match=r"dev\.jsonl:2: not valid JSON"):
        build("custom", spec=_spec(files, BASE))


def test_custom_empty_split(files):
    # One rule for every builder (promptopt/task/spec.py): dev needs a row; train and test may be empty.
    (files / "test.jsonl").write_text("", encoding="utf-8")
    assert build("custom", spec=_spec(files, BASE)).meta["sizes"] == {"train": 4, "dev": 4, "test": 0}
    (files / "dev.jsonl").write_text("", encoding="utf-8")
    with pytest.raises(TaskError, match="the dev split is empty"):
        build("custom", spec=_spec(files, BASE))


def test_custom_label_index_out_of_range(files):
    for split in ("train", "dev", "test"):
        _jsonl(files / f"{split}.jsonl", [{"q": "x", "y": 1}, {"q": "z", "y": 2 if split == "test" else 0}])
    with pytest.raises(TaskError, match=r"test\.jsonl row 2: label 2 is not an option index 0\.\.1"):
        build("custom", spec=_spec(files, BASE.replace('target = "a"', 'label = "y"')))


def test_custom_split_sizes_are_checked(tmp_path):
    shutil.copy(REPO / "examples/custom_task/intents.csv", tmp_path / "intents.csv")
    text = EXAMPLE_SPEC.read_text()
    with pytest.raises(TaskError, match=r"the splits ask for 46 rows \(test 10, dev 8, train 28\) but there are 26"):
        build("custom", spec=_spec(tmp_path, text.replace("train = 8", "train = 28")))
    # a positive fraction is at least one row, as in make_task
    assert build("custom", spec=_spec(tmp_path, text.replace("dev = 8", "dev = 0.01"))).meta["sizes"]["dev"] == 1
    with pytest.raises(TaskError, match="the dev split would be empty"):
        build("custom", spec=_spec(tmp_path, text.replace("dev = 8", "dev = 0")))
    with pytest.raises(ConfigError, match=r"data.split: dev = 1.5 must be a row count or a fraction in \[0, 1\)"):
        build("custom", spec=_spec(tmp_path, text.replace("dev = 8", "dev = 1.5")))


def test_custom_missing_spec_and_missing_option(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        build("custom", spec=tmp_path / "nope.toml")
    with pytest.raises(ConfigError, match="option 'spec': Field required"):
        build("custom")
