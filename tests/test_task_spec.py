"""Spec files documented and forgiving: data read by content, per-split limits, every error at once."""
import json
from pathlib import Path

import pytest

from promptopt.api import load_task
from promptopt.cli import main
from promptopt.errors import ConfigError, TaskError

REPO = Path(__file__).resolve().parents[1]
ROWS = [{"q": f"question {i}?", "a": ["no", "yes"][i % 2]} for i in range(10)]
SPEC = '''template = "{prompt}\\n\\nQ: {input}\\nA:"
output = "choose"
options = [" no", " yes"]
seed_prompts = ["Answer yes or no."]
[columns]
input = "q"
target = "a"
[data]
train = "%s"
dev = "%s"
test = "%s"
'''


def write_spec(tmp_path: Path, files=("train.json", "dev.json", "test.json"), extra: str = "") -> Path:
    path = tmp_path / "spec.toml"
    path.write_text(SPEC % files + extra, encoding="utf-8")
    return path


def test_jsonl_in_a_json_file_and_a_json_array_and_csv_without_extension(tmp_path):
    (tmp_path / "train.json").write_text("".join(json.dumps(r) + "\n" for r in ROWS), encoding="utf-8")
    (tmp_path / "dev.json").write_text(json.dumps(ROWS, indent=2), encoding="utf-8")
    (tmp_path / "test.data").write_text("q\ta\n" + "".join(f"{r['q']}\t{r['a']}\n" for r in ROWS), encoding="utf-8")
    task = load_task(str(write_spec(tmp_path, ("train.json", "dev.json", "test.data"))))
    assert task.meta["sizes"] == {"train": 10, "dev": 10, "test": 10}
    assert task.split("test")[1].input == "question 1?" and task.split("dev")[1].label == 1


def test_one_json_object_is_a_clear_error(tmp_path):
    for name in ("train.json", "dev.json", "test.json"):
        (tmp_path / name).write_text(json.dumps({"rows": ROWS}, indent=2), encoding="utf-8")
    with pytest.raises(TaskError, match="holds one JSON object"):
        load_task(str(write_spec(tmp_path)))


def test_per_split_limits_for_separate_files(tmp_path):
    for name in ("train.json", "dev.json", "test.json"):
        (tmp_path / name).write_text(json.dumps(ROWS), encoding="utf-8")
    spec = write_spec(tmp_path, extra="limit = { train = 4, test = 6 }\n")
    task = load_task(str(spec))
    assert {s: len(task.split(s)) for s in ("train", "dev", "test")} == {"train": 4, "dev": 10, "test": 6}
    assert [e.id for e in load_task(str(spec), seed=3).split("test")] == [e.id for e in task.split("test")]
    with pytest.raises(ConfigError, match="data.limit.train: Input should be greater than 0"):
        load_task(str(write_spec(tmp_path, extra="limit = { train = 0 }\n")))


def test_every_spec_error_at_once_in_dry_run(tmp_path, capsys):
    path = tmp_path / "bad.toml"
    path.write_text('template = "{prompt} {input}"\noutput = "pick"\ncolour = "red"\nmax_tokens = 0\n'
                    'seed_prompts = ["x"]\n[columns]\ninput = "q"\n[data]\nfile = "x.csv"\n', encoding="utf-8")
    code = main(["optimize", "--task", str(path), "--strategy", "paraphrase", "--dry-run"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    for needle in ("problems", "output: Input should be 'generate' or 'choose'", "max_tokens: Input should be greater",
                   "colour: unknown setting", "data: Value error" if False else "data:"):
        assert needle in err, (needle, err)
    # The model-level checks are listed together too.
    path.write_text('template = "{input}"\noutput = "choose"\noptions = [" a"]\nseed_prompts = ["x"]\n'
                    '[columns]\ninput = "q"\n[data]\nfile = "x.csv"\nsplit = { train = 1, dev = 1, test = 1 }\n',
                    encoding="utf-8")
    with pytest.raises(ConfigError) as e:
        load_task(str(path))
    assert "3 problems" in str(e.value) and "lacks {prompt}" in str(e.value) and "two `options`" in str(e.value)


def test_the_docs_page_names_every_spec_key():
    from promptopt.tasks.custom import Columns, DataFiles, SpecFile
    page = (REPO / "docs" / "task-spec.md").read_text(encoding="utf-8")
    for model in (SpecFile, Columns, DataFiles):
        for key in model.model_fields:
            assert f"`{key}`" in page, key
    for name in ("balanced_accuracy", "macro_f1", "first_line", "regex:"):
        assert name in page


def test_save_to_disk_folders_and_a_dataset_dict(tmp_path):
    datasets = pytest.importorskip("datasets")
    saved = tmp_path / "saved"
    datasets.DatasetDict({s: datasets.Dataset.from_list(ROWS[i * 3:i * 3 + 4])
                          for i, s in enumerate(("train", "validation", "test"))}).save_to_disk(str(saved))
    t = load_task(str(write_spec(tmp_path, ("saved/train", "saved/validation", "saved/test"))))
    assert [len(t.split(s)) for s in ("train", "dev", "test")] == [4, 4, 4]
    assert t.split("dev")[0].input == ROWS[3]["q"] and t.split("test")[-1].target == ROWS[9]["a"]
    with pytest.raises(TaskError, match=r"is a DatasetDict saved with save_to_disk \(splits: train, validation, "
                                        r"test\); name one of its split folders per split"):
        load_task(str(write_spec(tmp_path, ("saved", "saved/validation", "saved/test"))))
    (tmp_path / "plain").mkdir()
    with pytest.raises(TaskError, match="not one written by datasets' save_to_disk"):
        load_task(str(write_spec(tmp_path, ("plain", "saved/validation", "saved/test"))))


def test_hub_dataset_by_name(tmp_path, monkeypatch):
    import sys
    import types
    calls = []

    def load_dataset(name, config, split):
        calls.append((name, config, split))
        if name != "org/qa":
            raise FileNotFoundError(f"Dataset '{name}' doesn't exist on the Hub")
        return [{"q": f"{split} {i}?", "a": "yes"} for i in range(5)]
    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    spec = write_spec(tmp_path, ("train", "validation", "test"), '\nhub = "org/qa"\nconfig = "main"\n'
                                                                  'limit = { test = 3 }\n')
    t = load_task(str(spec))
    assert calls == [("org/qa", "main", "train"), ("org/qa", "main", "validation"), ("org/qa", "main", "test")]
    assert t.split("dev")[0].input == "validation 0?" and len(t.split("test")) == 3
    spec.write_text(spec.read_text().replace("org/qa", "org/none"))
    with pytest.raises(TaskError, match=r"data.hub: the hub cannot provide 'org/none' \(FileNotFoundError"):
        load_task(str(spec))
    spec.write_text(SPEC % ("a", "b", "c") + 'config = "main"\n')
    with pytest.raises(ConfigError, match="`config` names a hub dataset's configuration"):
        load_task(str(spec))
