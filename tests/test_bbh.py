"""BIG-Bench Hard tasks (tasks/bbh.py): the 27 `bbh_<task>` names, the seeded carving (test fixed,
dev/train by the run seed), choose vs generate, option parsing and bad files, on fixture files this
module writes in the shared data's BBH format; plus the real files (skipped without the shared data,
a failure in CI)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from promptopt import registry
from promptopt.errors import ConfigError, DataNotFoundError, TaskError
from promptopt.task import Task
from promptopt.tasks.bbh import (SPECS, first_line, listed_options, number_match, symbols_match,
                                 words_match)
from promptopt.task.template import split_at_prompt
from promptopt.types import Example

GENERATE = {"dyck_languages", "multistep_arithmetic_two", "object_counting", "word_sorting"}
SIZES = {"causal_judgement": 187, "penguins_in_a_table": 146, "snarks": 178}  # else 250


def build(name: str, data_dir: Path | None, **kwargs) -> Task:
    return registry.get("tasks", name)(data_dir=data_dir, **kwargs)


def _rows(task: str, n: int) -> list[dict[str, str]]:
    spec = SPECS[task]
    if spec.kind == "letters":
        rows = [{"input": f"{task} question {i}?\nOptions:\n(A) one\n(B) two\n(C) three", "target": f"({'ABC'[i % 3]})"}
                for i in range(n)]
        rows[-1] = {"input": "Pick one.\nOptions:\n(A) Monsters\n(B) Inc", "target": "Monsters, Inc"}  # dropped
        return rows
    if spec.kind == "words":
        return [{"input": f"{task} statement {i}.", "target": spec.words[i % 2].strip()} for i in range(n)]
    return [{"input": f"{task} problem {i} =", "target": str(i)} for i in range(n)]


def _write(root: Path, task: str, rows: list) -> None:
    path = root / "bbh" / f"{task}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"canary": "fixture", "examples": rows}), encoding="utf-8")


@pytest.fixture(scope="module")
def bbh_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`bbh/<task>.json` for all 27 tasks, with the real files' example counts."""
    root = tmp_path_factory.mktemp("bbh-data")
    for task in SPECS:
        _write(root, task, _rows(task, SIZES.get(task, 250)))
    return root


def ids(task: Task, split: str) -> set[str]:
    return {ex.id for ex in task.split(split)}


def test_all_27_tasks_are_registered_and_build(bbh_data):
    names = {n for n in registry.names("tasks") if n.startswith("bbh_")}
    assert names == {f"bbh_{t}" for t in SPECS} and len(names) == 27
    for name in sorted(names):
        task = build(name, bbh_data)
        assert split_at_prompt(task.template)[0] == ""  # prompt first: its KV cache is reused
        assert task.name == name and task.seed_prompts[0]
        all_ids = [ex.id for s in ("train", "dev", "test") for ex in task.split(s)]
        assert len(all_ids) == len(set(all_ids)) == task.meta["examples"]
        assert task.meta["sizes"] == {s: len(task.split(s)) for s in ("train", "dev", "test")}


def test_choose_and_generate_kinds(bbh_data):
    kinds = {t: build(f"bbh_{t}", bbh_data).output for t in SPECS}
    assert {t for t, k in kinds.items() if k == "generate"} == GENERATE
    navigate = build("bbh_navigate", bbh_data)
    assert navigate.options == (" No", " Yes") and navigate.stop == ()
    assert build("bbh_boolean_expressions", bbh_data).options == (" False", " True")
    assert build("bbh_sports_understanding", bbh_data).options == (" no", " yes")
    assert build("bbh_formal_fallacies", bbh_data).options == (" valid", " invalid")
    mc = build("bbh_date_understanding", bbh_data)
    assert mc.options == (" (A)", " (B)", " (C)")  # the union of the letters the examples list
    for task in (navigate, mc):
        for ex in (e for s in ("train", "dev", "test") for e in task.split(s)):
            assert ex.target == task.options[ex.label].strip()
    ex = mc.split("dev")[0]
    assert mc.render("Pick.", ex) == f"Pick.\n\n{ex.input}\nAnswer:"
    counting = build("bbh_object_counting", bbh_data)
    assert counting.options == () and counting.stop == ("\n\n",) and counting.max_tokens == 64
    assert build("bbh_word_sorting", bbh_data, max_tokens=32).max_tokens == 32


def test_default_sizes_and_overrides(bbh_data):
    assert build("bbh_navigate", bbh_data).meta["sizes"] == {"train": 100, "dev": 50, "test": 100}
    assert build("bbh_causal_judgement", bbh_data).meta["sizes"] == {"train": 75, "dev": 37, "test": 75}
    assert build("bbh_snarks", bbh_data).meta["sizes"] == {"train": 71, "dev": 35, "test": 71}  # 1 dropped
    assert build("bbh_penguins_in_a_table", bbh_data).meta["sizes"] == {"train": 58, "dev": 29, "test": 58}
    task = build("bbh_web_of_lies", bbh_data, test_size=40, dev_size=60)
    assert task.meta["sizes"] == {"train": 150, "dev": 60, "test": 40}
    limited = build("bbh_web_of_lies", bbh_data, test_limit=10)
    assert len(limited.split("test")) == 10 and ids(limited, "test") <= ids(build("bbh_web_of_lies", bbh_data), "test")
    with pytest.raises(ConfigError, match="task bbh_navigate, option test_size: cannot carve 250 examples"):
        build("bbh_navigate", bbh_data, test_size=250)
    with pytest.raises(ConfigError, match="task bbh_navigate, option dev_size: cannot carve 150 examples from 150"):
        build("bbh_navigate", bbh_data, dev_size=150)
    with pytest.raises(ConfigError, match=r"task bbh_navigate: unknown option 'dev' \(valid options: test_size"):
        build("bbh_navigate", bbh_data, dev=3)


@pytest.mark.parametrize("name", ["bbh_navigate", "bbh_date_understanding", "bbh_word_sorting", "bbh_snarks"])
def test_test_is_fixed_dev_and_train_follow_the_seed(bbh_data, name):
    tasks = [build(name, bbh_data, seed=s) for s in (0, 1, 2)]
    assert ids(tasks[0], "test") == ids(tasks[1], "test") == ids(tasks[2], "test")
    assert ids(tasks[0], "dev") != ids(tasks[1], "dev") and ids(tasks[0], "train") != ids(tasks[1], "train")
    for task in tasks:
        train, dev, test = ids(task, "train"), ids(task, "dev"), ids(task, "test")
        assert not (train & dev or train & test or dev & test)
        assert train | dev == ids(tasks[0], "train") | ids(tasks[0], "dev")  # the same pool, re-carved
    again = build(name, bbh_data, seed=1)
    assert [e.id for s in ("train", "dev", "test") for e in again.split(s)] == \
           [e.id for s in ("train", "dev", "test") for e in tasks[1].split(s)]


def test_options_parsing_and_dropped_targets(bbh_data):
    text = "Which date?\nOptions:\n(A) 12/25/1937\n(B)  Monsters, Inc \n(C) x"
    assert listed_options(text) == [("A", "12/25/1937"), ("B", "Monsters, Inc"), ("C", "x")]
    assert listed_options("Is it?\nOptions:\n- Yes\n- No") == [("-", "Yes"), ("-", "No")]
    assert listed_options("2 + 2 =") == []
    task = build("bbh_movie_recommendation", bbh_data)
    assert task.meta["dropped"] == 1 and task.meta["examples"] == 249
    assert "bbh_movie_recommendation-249" not in {e.id for s in ("train", "dev", "test") for e in task.split(s)}


def test_generate_extractors_and_metrics():
    assert first_line("\n  ] ) >\nmore") == "] ) >" and first_line("") == ""
    ex = Example(id="x", input="", target="] ) >")
    assert symbols_match("]) >.", ex) == 1.0 and symbols_match("] )", ex) == 0.0
    words = Example(id="w", input="", target="apple banana cherry")
    assert words_match("Apple, banana,  cherry.", words) == 1.0 and words_match("banana apple cherry", words) == 0.0
    num = Example(id="n", input="", target="-24")
    assert number_match("-24", num) == 1.0 and number_match("", Example(id="e", input="", target="x")) == 0.0


def test_missing_and_bad_files_are_one_line(bbh_data, tmp_path):
    with pytest.raises(DataNotFoundError) as missing:
        build("bbh_navigate", tmp_path)
    msg = str(missing.value)
    assert "\n" not in msg and msg.startswith("task bbh_navigate: no local copy under") and "bbh/navigate.json" in msg
    (tmp_path / "bbh").mkdir()
    cases = {
        "{not json": r"navigate\.json:1: not valid JSON",
        json.dumps([1, 2]): r"expected a JSON object with a non-empty \"examples\" list",
        json.dumps({"examples": [{"input": "q"}]}): r"example 1 is not an object with text \"input\" and \"target\"",
        json.dumps({"examples": [{"input": "q", "target": "Maybe"}]}): r"example 1 has target 'Maybe', expected one of",
    }
    for content, pattern in cases.items():
        (tmp_path / "bbh" / "navigate.json").write_text(content, encoding="utf-8")
        with pytest.raises(TaskError, match=pattern) as bad:
            build("bbh_navigate", tmp_path)
        assert "\n" not in str(bad.value)


def test_the_real_bbh_files(shared_data):
    for t in SPECS:
        task = build(f"bbh_{t}", shared_data, seed=0)
        n = SIZES.get(t, 250)
        dropped = {"movie_recommendation": 1, "ruin_names": 2}.get(t, 0)
        assert task.meta["dropped"] == dropped and task.meta["examples"] == n - dropped
        test, dev = (100, 50) if n == 250 else (round(0.4 * n), round(0.2 * n))
        assert task.meta["sizes"] == {"train": n - dropped - test - dev, "dev": dev, "test": test}
        assert task.output == ("generate" if t in GENERATE else "choose")
        for ex in (e for s in ("train", "dev", "test") for e in task.split(s)):
            if task.output == "choose":
                assert ex.target == task.options[ex.label].strip()
    colored = build("bbh_reasoning_about_colored_objects", shared_data)
    assert colored.options == tuple(f" ({c})" for c in "ABCDEFGHIJKLMNOPQR")
    assert build("bbh_ruin_names", shared_data).options == (" (A)", " (B)", " (C)", " (D)")
    # The same test examples for every run seed.
    assert ids(build("bbh_navigate", shared_data), "test") == ids(build("bbh_navigate", shared_data, seed=7), "test")
