"""lm-evaluation-harness bridge (promptopt/integrations/lmeval.py), offline: a tiny lm-eval task YAML over local
JSONL files becomes a promptopt task, a short fake-backend optimize runs on it, the best prompt is exported as
an lm-eval task config, and lm-eval's own TaskManager loads that config and renders the instruction. Skips
without the lmeval extra, except in CI, which installs it (.ci/run) and must run these."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from promptopt.cli import main

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
try:
    import lm_eval  # noqa: F401
    from lm_eval.tasks import TaskManager, get_task_dict
except ImportError:  # pragma: no cover - the extra is missing
    if os.environ.get("CI") == "true":
        raise
    pytest.skip("lm_eval is not installed: pip install 'promptopt[lmeval]'", allow_module_level=True)

FAKE = ["--backend", "fake", "--model", "m", "--optimizer-model", "none", "--strategy", "hill_climb",
        "--no-cache", "-q"]


def _write_task(root: Path, output_type: str = "multiple_choice", name: str = "tiny_parity") -> Path:
    rows = [{"question": f"Is {i} even?", "answer": "yes" if i % 2 == 0 else "no", "idx": i % 2} for i in range(40)]
    for split, part in (("train", rows[:16]), ("val", rows[16:28]), ("test", rows[28:])):
        (root / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in part), encoding="utf-8")
    common = (f"task: {name}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    train: train.jsonl\n"
              "    validation: val.jsonl\n    test: test.jsonl\n"
              "training_split: train\nvalidation_split: validation\ntest_split: test\n"
              "doc_to_text: \"Question: {{question}}\\nAnswer:\"\n")
    if output_type == "multiple_choice":
        body = ("output_type: multiple_choice\ndoc_to_target: idx\ndoc_to_choice: [\"yes\", \"no\"]\n"
                "metric_list:\n  - metric: acc\n")
    else:
        body = ("output_type: generate_until\ndoc_to_target: \"{{answer}}\"\n"
                "generation_kwargs:\n  until: [\"\\n\"]\n  max_gen_toks: 8\n"
                "metric_list:\n  - metric: exact_match\n    ignore_case: true\n    ignore_punctuation: true\n")
    path = root / f"{name}.yaml"
    path.write_text(common + body, encoding="utf-8")
    return path


@pytest.fixture()
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the YAML's data_files are relative, as users write them beside the config
    return tmp_path


def test_multiple_choice_task_optimized_and_exported_config_loads_in_lm_eval(in_tmp, capsys):
    from promptopt.api import load_task
    yaml_path = _write_task(in_tmp)
    task = load_task(f"lmeval:{yaml_path}")
    assert task.output == "choose" and task.options == (" yes", " no")
    assert [len(task.split(s)) for s in ("train", "dev", "test")] == [16, 12, 12]
    ex = task.split("dev")[0]
    assert ex.input == "Question: Is 16 even?\nAnswer:" and ex.label == 0 and ex.target == "yes"
    assert task.render("INSTR", ex) == "INSTR\n\nQuestion: Is 16 even?\nAnswer:"

    assert main(["lmeval", "import", str(yaml_path)]) == 0
    out = capsys.readouterr().out
    assert f"task: lmeval:{yaml_path}" in out and "train 16, dev 12, test 12" in out

    runs = in_tmp / "runs"
    assert main(["optimize", "--task", f"lmeval:{yaml_path}", *FAKE, "--budget", "150", "--run-dir", str(runs)]) == 0
    [run_dir] = [p for p in runs.iterdir() if p.is_dir()]
    summary = json.loads((run_dir / "summary.json").read_text())
    capsys.readouterr()

    assert main(["lmeval", "export", str(run_dir), "--out", str(in_tmp / "exported")]) == 0
    assert "tiny_parity_promptopt" in capsys.readouterr().out
    exported = in_tmp / "exported" / "tiny_parity_promptopt.yaml"
    assert exported.is_file()

    # lm-eval itself, from another folder (the data paths were made absolute), builds the exported task
    os.chdir(in_tmp / "exported")
    manager = TaskManager(include_path=str(in_tmp / "exported"), include_defaults=False)
    loaded = manager.load(["tiny_parity_promptopt"])["tasks"] if hasattr(manager, "load") else \
        get_task_dict(["tiny_parity_promptopt"], manager)
    lm_task = loaded["tiny_parity_promptopt"]
    doc = list(lm_task.validation_docs())[0]
    context = lm_task.fewshot_context(doc, 0)
    prefix = summary["best_prefix"] or summary["best_prompt"]
    assert context == task.render(prefix, ex)  # exactly what promptopt scored
    assert context.startswith(summary["best_prompt"])
    assert lm_task.doc_to_choice(doc) == ["yes", "no"] and lm_task.doc_to_target(doc) == 0


def test_generate_until_task_is_a_generate_task_with_lm_eval_exact_match(in_tmp):
    from promptopt.api import load_task
    task = load_task(f"lmeval:{_write_task(in_tmp, 'generate_until', 'tiny_gen')}")
    assert task.output == "generate" and task.stop == ("\n",) and task.max_tokens == 8
    ex = next(e for e in task.split("dev") if e.target == "yes")
    assert task.metric("Yes.", ex) == 1.0 and task.metric("yes it is", ex) == 0.0
    runs = in_tmp / "runs"
    assert main(["optimize", "--task", f"lmeval:{in_tmp / 'tiny_gen.yaml'}", *FAKE, "--budget", "60",
                 "--run-dir", str(runs)]) == 0


def test_missing_task_path_or_name_is_one_line_exit_2(in_tmp, capsys):
    for spec in (str(in_tmp / "nope.yaml"), "no_such_lmeval_task_xyz"):
        assert main(["lmeval", "import", spec]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("promptopt: error: lm-eval task"), err
    assert main(["optimize", "--task", f"lmeval:{in_tmp / 'nope.yaml'}", *FAKE, "--run-dir", str(in_tmp / "r")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "does not exist" in err[0]
    assert not (in_tmp / "r").exists()


def test_per_doc_choices_are_refused_with_the_doc(in_tmp):
    from promptopt.api import load_task
    from promptopt.errors import PromptOptError
    path = _write_task(in_tmp)
    path.write_text(path.read_text().replace('doc_to_choice: ["yes", "no"]', 'doc_to_choice: "{{[answer, question]}}"'))
    with pytest.raises(PromptOptError, match="one list of choices"):
        load_task(f"lmeval:{path}")


def test_export_of_a_non_lmeval_run_is_refused(tmp_path, capsys):
    runs = tmp_path / "runs"
    assert main(["optimize", "--task", "demo", *FAKE, "--budget", "50", "--run-dir", str(runs)]) == 0
    [run_dir] = list(runs.iterdir())
    assert main(["lmeval", "export", str(run_dir), "--out", str(tmp_path / "x")]) == 2
    assert "not an lm-eval task" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_importing_promptopt_does_not_import_lm_eval():
    code = ("import sys, promptopt, promptopt.api, promptopt.cli, promptopt.cli.commands; "
            "sys.exit(1 if 'lm_eval' in sys.modules else 0)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


# -- issue 29, class 8: each bad input is one line, exit 2, and nothing is written where it should not be --

def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("promptopt: error: "), err
    return err[0]


def test_another_config_with_the_same_task_name_is_refused_not_swapped_in(in_tmp, capsys):
    path = _write_task(in_tmp)
    # sorts before tiny_parity.yaml, so lm-eval's index keeps it under the name the user's file declares
    (in_tmp / "a_copy.yaml").write_text(path.read_text().replace("Question:", "Q:"), encoding="utf-8")
    assert main(["lmeval", "import", str(path)]) == 2
    line = _one_error_line(capsys)
    assert "a_copy.yaml" in line and "also names task 'tiny_parity'" in line


def test_a_config_without_output_type_or_doc_to_text_is_one_clear_line(in_tmp, capsys):
    path = _write_task(in_tmp)
    text = path.read_text()
    yml = path.rename(in_tmp / "tiny_parity.yml")
    assert main(["lmeval", "import", str(yml)]) == 2
    assert "lm-eval reads task configs named *.yaml only" in _one_error_line(capsys)
    yml.rename(path)
    path.write_text(text.replace("output_type: multiple_choice\n", ""), encoding="utf-8")
    assert main(["lmeval", "import", str(path)]) == 2
    assert "output_type is None; the bridge needs output_type: multiple_choice or generate_until" in \
        _one_error_line(capsys)
    path.write_text("\n".join(line for line in text.splitlines() if not line.startswith("doc_to_text")) + "\n",
                    encoding="utf-8")
    assert main(["lmeval", "import", str(path)]) == 2
    line = _one_error_line(capsys)
    assert not line.endswith(": ") and "TypeError with no message in lm-eval's doc_to_text()" in line


def test_export_writes_only_inside_out_and_only_its_own_files(in_tmp, capsys):
    yaml_path = _write_task(in_tmp)
    runs = in_tmp / "runs"
    assert main(["optimize", "--task", f"lmeval:{yaml_path}", *FAKE, "--budget", "60", "--run-dir", str(runs)]) == 0
    [run_dir] = [p for p in runs.iterdir() if p.is_dir()]
    out = in_tmp / "exported"
    out.mkdir()
    capsys.readouterr()
    for name in ("../../escaped", "a/b", ".hidden", ""):
        assert main(["lmeval", "export", str(run_dir), "--out", str(out), "--task-name", name]) == 2
        assert "--task-name" in _one_error_line(capsys)
    assert list(out.iterdir()) == [] and not (in_tmp.parent / "escaped.yaml").exists()

    missing = in_tmp / "no" / "such" / "dir"
    assert main(["lmeval", "export", str(run_dir), "--out", str(missing)]) == 2
    assert "its parent folder" in _one_error_line(capsys) and not (in_tmp / "no").exists()

    users = out / "tiny_parity_promptopt.yaml"
    users.write_text("task: tiny_parity_promptopt\n# the user's own file\n", encoding="utf-8")
    assert main(["lmeval", "export", str(run_dir), "--out", str(out)]) == 2
    assert "was not written by promptopt" in _one_error_line(capsys)
    assert users.read_text() == "task: tiny_parity_promptopt\n# the user's own file\n"

    (in_tmp / "hook.py").write_text("def f(doc):\n    return doc\n", encoding="utf-8")  # a !function file
    (out / "hook.py").symlink_to(in_tmp / "elsewhere.py")  # dangling: export must not write through it
    assert main(["lmeval", "export", str(run_dir), "--out", str(out), "--task-name", "mine"]) == 0
    assert main(["lmeval", "export", str(run_dir), "--out", str(out), "--task-name", "mine"]) == 0  # its own: replaced
    assert sorted(p.name for p in out.iterdir()) == ["hook.py", "mine.yaml", "tiny_parity_promptopt.yaml"]
    assert not (in_tmp / "elsewhere.py").exists()
    assert (out / "mine.yaml").stat().st_mode & 0o777 == 0o666 & ~_umask()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
