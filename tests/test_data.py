"""promptopt.task.data: data dir resolution, file readers, hub fallback errors, seeded splits, options."""
from __future__ import annotations

import os
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest

from promptopt.task.data import (DATA_DIR_ENV, TaskOptions, carve, load_hub, local_file, parse_options, read_jsonl,
                            read_table, require_columns, resolve_data_dir, sample)
from promptopt.errors import ConfigError, DataNotFoundError, TaskError


# -- data dir --------------------------------------------------------------------------------

def test_explicit_data_dir_beats_env(tmp_path, monkeypatch):
    other = tmp_path / "env"
    other.mkdir()
    monkeypatch.setenv(DATA_DIR_ENV, str(other))
    assert resolve_data_dir(tmp_path) == tmp_path
    assert resolve_data_dir(None) == other


def test_no_data_dir_means_hub(monkeypatch):
    monkeypatch.delenv(DATA_DIR_ENV, raising=False)
    assert resolve_data_dir(None) is None


def test_missing_data_dir_names_its_origin(tmp_path, monkeypatch):
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path / "nope"))
    with pytest.raises(DataNotFoundError, match=DATA_DIR_ENV):
        resolve_data_dir(None)
    with pytest.raises(DataNotFoundError, match="--data-dir"):
        resolve_data_dir(tmp_path / "nope")


def test_local_file(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "b.jsonl").write_text("{}\n")
    assert local_file(tmp_path, "a/b.jsonl") == tmp_path / "a" / "b.jsonl"
    assert local_file(tmp_path, "a/c.jsonl") is None
    assert local_file(None, "a/b.jsonl") is None


# -- readers ---------------------------------------------------------------------------------

def test_read_jsonl_skips_blank_lines(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text('{"a": 1}\n\n{"a": "two"}\n', encoding="utf-8")
    assert read_jsonl(path) == [{"a": 1}, {"a": "two"}]


@pytest.mark.parametrize("bad, expected", [('{"a": 1', "not valid JSON"), ("[1, 2]", "expected a JSON object")])
def test_read_jsonl_names_file_and_line(tmp_path, bad, expected):
    path = tmp_path / "x.jsonl"
    path.write_text('{"a": 1}\n' + bad + "\n", encoding="utf-8")
    with pytest.raises(TaskError) as e:
        read_jsonl(path)
    assert f"{path}:2:" in str(e.value) and expected in str(e.value)


@pytest.mark.parametrize("name", ["x.jsonl", "x.tsv"])
def test_non_utf8_bytes_name_their_line(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(b'{"a": 1}\n{"a": 2}\n\xff\xfe\n' if name.endswith("jsonl") else b"a\tb\n1\t2\n\xff\t3\n")
    reader = read_jsonl if name.endswith("jsonl") else read_table
    with pytest.raises(TaskError, match=rf"{name}:3: not UTF-8 text"):
        reader(path)


def test_missing_file_is_a_task_error(tmp_path):
    with pytest.raises(TaskError, match="cannot read"):
        read_jsonl(tmp_path / "none.jsonl")


def test_read_table_honours_quotes(tmp_path):
    path = tmp_path / "x.tsv"
    path.write_text('sentence\tlabel\n"a ""quoted""\tfield"\t1\nplain\t0\n', encoding="utf-8")
    assert read_table(path) == [{"sentence": 'a "quoted"\tfield', "label": "1"}, {"sentence": "plain", "label": "0"}]


def test_read_table_rejects_ragged_rows(tmp_path):
    path = tmp_path / "x.csv"
    path.write_text("a,b\n1,2\n3,4,5\n", encoding="utf-8")
    with pytest.raises(TaskError, match="row does not match"):
        read_table(path, ",")


def test_read_table_rejects_empty_file(tmp_path):
    path = tmp_path / "x.tsv"
    path.write_text("", encoding="utf-8")
    with pytest.raises(TaskError, match="header"):
        read_table(path)


def test_real_dbpedia_row_with_a_tab_inside_quotes(shared_data):
    rows = read_table(shared_data / "rlprompt_fsc/16-shot/dbpedia/16-13/train.tsv")
    assert len(rows) == 224
    assert sum("\t" in r["sentence"] for r in rows) == 1
    assert all(r["label"].isdigit() for r in rows)


def test_real_quoted_rows_keep_their_quotes(shared_data):
    rows = read_table(shared_data / "rlprompt_fsc/16-shot/mr/test.tsv")
    assert len(rows) == 2000
    assert any('" the skulls "' in r["sentence"] for r in rows)


def test_require_columns_names_row_and_column():
    with pytest.raises(TaskError, match=r"src: row 2 has no column 'b'"):
        require_columns([{"a": 1, "b": 2}, {"a": 3}], ["a", "b"], "src")


# -- hub fallback ----------------------------------------------------------------------------

def _fake_datasets(monkeypatch, error: Exception) -> None:
    def load_dataset(*args, **kwargs):
        raise error
    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))


def test_hub_failure_is_one_clear_line(monkeypatch, tmp_path):
    _fake_datasets(monkeypatch, ConnectionError("Couldn't reach 'openai/gsm8k' on the Hub\nmore detail"))
    with pytest.raises(DataNotFoundError) as e:
        load_hub("openai/gsm8k", "train", config="main", task="gsm8k", looked_in=tmp_path,
                 layout="gsm8k/{train,test}.jsonl")
    msg = str(e.value)
    assert "\n" not in msg
    for part in ("gsm8k", "'openai/gsm8k'", "--data-dir", DATA_DIR_ENV, str(tmp_path), "ConnectionError"):
        assert part in msg


def test_hub_rows_are_returned(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(
        load_dataset=lambda name, config, split: [{"text": f"{name}/{split}", "label": 1}]))
    assert load_hub("x/y", "test", task="t", looked_in=None, layout="x") == [{"text": "x/y/test", "label": 1}]


def test_missing_datasets_package_is_data_not_found(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` fail
    with pytest.raises(DataNotFoundError, match="`datasets` package is not installed"):
        load_hub("openai/gsm8k", "train", task="gsm8k", looked_in=None, layout="gsm8k/")


def test_real_hub_offline_fails_fast():
    pytest.importorskip("datasets")
    code = ("from promptopt.task.data import load_hub\n"
            "load_hub('openai/gsm8k', 'train', config='main', task='gsm8k', looked_in=None, layout='gsm8k/')\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert time.monotonic() - started < 30
    assert proc.returncode != 0
    assert "DataNotFoundError: task gsm8k: no data dir given and the hub cannot provide 'openai/gsm8k'" in proc.stderr


def test_unreachable_hub_without_offline_flags_fails_at_once_pointing_at_the_docs(tmp_path):
    """No HF_HUB_OFFLINE and a hub host that does not answer (a closed local port): the probe switches
    `datasets` offline, so there are no retries, and the line names docs/data.md, which exists."""
    pytest.importorskip("datasets")
    import socket
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code = ("from promptopt.task.data import load_hub\n"
            "load_hub('openai/gsm8k', 'train', config='main', task='gsm8k', looked_in=None, layout='gsm8k/')\n")
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")}
    env.update(HF_ENDPOINT=f"http://127.0.0.1:{port}", HF_HOME=str(tmp_path / "hf"))
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert time.monotonic() - started < 20 and proc.returncode != 0
    assert "the hub's host did not answer and the local hub cache has no copy" in proc.stderr
    assert "Retrying" not in proc.stderr and "docs/data.md" in proc.stderr
    assert (Path(__file__).resolve().parents[1] / "docs" / "data.md").is_file()


# -- seeded sampling and carving -------------------------------------------------------------

def test_sample_is_seeded_ordered_and_balanced():
    items = [(i, i % 3 == 0) for i in range(30)]  # 10 True, 20 False
    picked = sample(items, 12, 7, balance_by=lambda x: x[1])
    assert picked == sample(items, 12, 7, balance_by=lambda x: x[1])
    assert picked != sample(items, 12, 8, balance_by=lambda x: x[1])
    assert picked == sorted(picked)
    assert sum(flag for _, flag in picked) == 6
    assert sample(items, None, 0) == items and sample(items, 99, 0) == items


def test_balance_gives_the_rest_to_larger_classes():
    items = [0] * 3 + [1] * 20
    assert sorted(sample(items, 10, 0, balance_by=lambda x: x)) == [0] * 3 + [1] * 7


def test_carve_is_a_seeded_partition():
    items = list(range(100))
    rest, dev = carve(items, 20, 3, "dev")
    assert len(dev) == 20 and len(rest) == 80
    assert sorted(rest + dev) == items and not set(rest) & set(dev)
    assert (rest, dev) == carve(items, 20, 3, "dev")
    assert dev != carve(items, 20, 4, "dev")[1]


@pytest.mark.parametrize("n", [0, 10, 11])
def test_carve_rejects_impossible_sizes(n):
    with pytest.raises(ConfigError, match="choose a size between 1 and 9"):
        carve(list(range(10)), n, 0, "dev")


# -- options ---------------------------------------------------------------------------------

class _Options(TaskOptions):
    dev_size: int = 5
    name: str = "x"


def test_parse_options_validates():
    assert parse_options(_Options, {"dev_size": "7"}, "t").dev_size == 7
    with pytest.raises(ConfigError, match=r"task t: unknown option 'size' \(valid options: dev_size, name\)"):
        parse_options(_Options, {"size": 3}, "t")
    with pytest.raises(ConfigError, match="task t: option 'dev_size'"):
        parse_options(_Options, {"dev_size": "many"}, "t")


def test_ci_fails_a_data_bound_test_without_the_data(tmp_path):
    """CI has the shared data: there a data-bound test that cannot find it fails instead of skipping."""
    env = {**os.environ, "PROMPTOPT_DATA_DIR": str(tmp_path / "none"), "CI": "true"}
    test = f"{Path(__file__).resolve()}::test_real_quoted_rows_keep_their_quotes"
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", test], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "1 error" in proc.stdout and "PROMPTOPT_DATA_DIR" in proc.stdout
