"""A built-in task's prompt as components (--components system,instruction), and one system prompt shared by
several tasks (--task sst2,trec,cr --components system). Fast tier: the fake backend and the test server."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

import promptopt
from promptopt.cli import main
from promptopt.harness.tasks import SEED_SYSTEM
from promptopt.testing.openai_server import FakeOpenAIServer

SEED_INSTRUCTION = "Does the customer sound upset?"  # the demo task's


def _events(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "events.jsonl").read_text().splitlines()]


def _only(runs: Path) -> Path:
    (d,) = list(runs.iterdir())
    return d


def _fake(tmp_path: Path, *extra: str, runs: str = "runs") -> list[str]:
    return ["optimize", "--backend", "fake", "--model", "m", "--run-dir", str(tmp_path / runs),
            "--set", f"cache_path={tmp_path / 'cache.sqlite'}", "-q", *extra]


def test_system_and_instruction_are_optimized_apart_one_component_per_proposal(tmp_path, capsys):
    assert main(_fake(tmp_path, "--task", "demo", "--strategy", "paraphrase", "--components", "system,instruction",
                      "--budget", "200")) == 0
    out = capsys.readouterr().out
    run = _only(tmp_path / "runs")
    assert json.loads((run / "config.json").read_text())["config"]["components"] == ["system", "instruction"]
    cands = {e["candidate_id"]: e for e in _events(run) if e["type"] == "candidate"}
    seed = next(c for c in cands.values() if c["origin"] == "seed")
    assert seed["components"] == [["system", SEED_SYSTEM], ["instruction", SEED_INSTRUCTION]]
    children = [c for c in cands.values() if c["parents"]]
    assert len(children) >= 4
    edited = []
    for child in children:
        parent = dict(map(tuple, cands[child["parents"][0]]["components"]))
        mine = dict(map(tuple, child["components"]))
        changed = [n for n in mine if mine[n] != parent[n]]
        assert changed == [child["meta"]["component"]]  # each proposal edits exactly the one it names
        edited.append(changed[0])
    assert {"system", "instruction"} <= set(edited)  # round-robin: both get turns
    summary = json.loads((run / "summary.json").read_text())
    assert set(summary["best_components"]) == {"system", "instruction"}
    assert "best system:" in out and "best instruction:" in out


def test_the_system_text_is_the_system_message_on_a_chat_route_and_precedes_the_instruction_otherwise(tmp_path):
    def run(server: FakeOpenAIServer, runs: str) -> list[dict]:
        assert main(["optimize", "--task", "demo", "--strategy", "hill_climb", "--optimizer-model", "none",
                     "--backend", "openai", "--model", "test-model", "--set", f"backend.base_url={server.url}",
                     "--components", "system,instruction", "--budget", "24", "--test-limit", "4",
                     "--run-dir", str(tmp_path / runs), "--no-cache", "-q"]) == 0
        return server.bodies
    with FakeOpenAIServer("test-model", chat_only=True, max_lifetime=60) as chat:
        bodies = [b for b in run(chat, "chat") if b.get("messages") and b.get("logprobs")]
    systems = {b["messages"][0]["content"] for b in bodies if b["messages"][0]["role"] == "system"}
    assert SEED_SYSTEM in systems
    assert all(b["messages"][0]["role"] == "system" for b in bodies[1:])  # [0]: the route probe
    with FakeOpenAIServer("test-model", max_lifetime=60) as plain:  # echo: the log-likelihood route
        prompts = [b["prompt"] for b in run(plain, "ll") if isinstance(b.get("prompt"), str)]
    assert any(p.startswith(f"{SEED_SYSTEM}\n\n{SEED_INSTRUCTION}\n\nMessage: ") for p in prompts)


def test_a_components_run_cut_midway_resumes_to_the_same_result(tmp_path, capsys):
    args = ["--task", "demo", "--strategy", "paraphrase", "--components", "system,instruction", "--budget", "200",
            "--no-cache", "--json"]
    assert main(_fake(tmp_path, *args, runs="a")) == 0
    expected = json.loads(capsys.readouterr().out)
    assert main(_fake(tmp_path, *args, runs="b")) == 0
    capsys.readouterr()
    run = _only(tmp_path / "b")
    lines = (run / "events.jsonl").read_text().splitlines(keepends=True)
    evals = [i for i, line in enumerate(lines) if json.loads(line)["type"] == "eval"]
    (run / "events.jsonl").write_text("".join(lines[:evals[len(evals) // 2] + 1]))  # what a kill leaves
    (run / "summary.json").unlink()
    assert main(["optimize", "--resume", str(run), "-q", "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    for k in ("best_id", "best_dev", "best_test", "seed_test", "steps", "candidates", "best_components"):
        assert got[k] == expected[k], k


def test_one_system_prompt_across_tasks_reports_each_task_and_their_mean(tmp_path, mini_data, capsys):
    assert main(_fake(tmp_path, "--task", "sst2,trec,cr", "--components", "system", "--strategy", "paraphrase",
                      "--data-dir", str(mini_data), "--budget", "300", "--test-limit", "30", "--json")) == 0
    summary = json.loads(capsys.readouterr().out)
    run = _only(tmp_path / "runs")
    tasks = summary["final"]["tasks"]
    assert list(tasks) == ["sst2", "trec", "cr", "mean"]
    for name in ("sst2", "trec", "cr"):
        assert tasks[name]["dev_examples"] == (96 if name == "trec" else 32) and tasks[name]["test_examples"] == 30
        assert all(tasks[name][k] is not None for k in ("seed_dev", "best_dev", "seed_test", "best_test"))
    for k in ("seed_dev", "best_dev", "seed_test", "best_test"):  # equal weight per task, whatever its size
        assert tasks["mean"][k] == pytest.approx(sum(tasks[n][k] for n in ("sst2", "trec", "cr")) / 3, abs=1e-5)
    assert summary["best_dev"] == pytest.approx(tasks["mean"]["best_dev"], abs=1e-5)
    assert summary["seed_dev"] == pytest.approx(tasks["mean"]["seed_dev"], abs=1e-5)
    assert summary["search"]["examples"] <= 300  # the budget counts every scored example, of every task
    events = _events(run)
    search = [r for e in events if e["type"] == "eval" and e.get("phase") == "search" for r in e["results"]]
    assert sum(1 for _ in search) == summary["search"]["examples"]
    assert {r["example_id"].split("/")[0] for r in search} == {"sst2", "trec", "cr"}
    # each example is scored by its own task: a choose result with one logprob per option of that task
    assert all(len(r["option_logprobs"]) == (6 if r["example_id"].startswith("trec/") else 2) for r in search)
    cands = [e for e in events if e["type"] == "candidate"]
    assert all([c[0] for c in e["components"]] == ["system"] for e in cands)


@pytest.mark.parametrize("task, components, says", [
    ("sst2,nope", "system", "unknown task 'nope'"),
    ("sst2,trec", None, "several tasks share one system prompt; pass --components system"),
    ("sst2,trec", "system,instruction", "several tasks share one system prompt"),
    ("sst2,,trec", "system", "distinct names separated by commas"),
    ("sst2,sst2", "system", "distinct names separated by commas"),
    ("demo", "system,foo", "give system and/or instruction, each once"),
    ("demo", "instruction", "is the default single prompt"),
])
def test_a_bad_task_list_or_components_is_one_line_and_exit_2(tmp_path, mini_data, capsys, task, components, says):
    extra = ["--components", components] if components else []
    code = main(_fake(tmp_path, "--task", task, "--data-dir", str(mini_data), *extra))
    err = capsys.readouterr().err
    assert code == 2 and says in err and err.count("\n") == 1, err
    assert not (tmp_path / "runs").exists()


def test_the_python_api_takes_components_and_a_task_list(tmp_path, mini_data):
    common = dict(backend="fake", model="m", optimizer_model=None, run_dir=str(tmp_path / "runs"), cache=False)
    one = promptopt.optimize("demo", "hill_climb", components=["system", "instruction"], budget=60, **common)
    assert set(one.best_components) == {"system", "instruction"}
    shared = promptopt.optimize("sst2,trec,cr", "hill_climb", components="system", budget=120,
                                data_dir=str(mini_data), test_limit=10, **common)
    assert set(shared.final["tasks"]) == {"sst2", "trec", "cr", "mean"}
    assert list(shared.best_components) == ["system"]


def test_evaluate_run_scores_the_whole_components_prompt_and_refuses_a_shared_run(tmp_path, mini_data, capsys):
    assert main(_fake(tmp_path, "--task", "demo", "--strategy", "hill_climb", "--optimizer-model", "none",
                      "--components", "system,instruction", "--budget", "60", "--json")) == 0
    summary = json.loads(capsys.readouterr().out)
    best = summary["best_components"]
    assert summary["best_prefix"] == f"{best['system']}\n\n{best['instruction']}"  # what the scorer put at {prompt}
    run = _only(tmp_path / "runs")
    assert main(["evaluate", "--run", str(run), "--split", "test"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"test score {summary['best_test']:.4f} on 30 examples")  # the run's own test score
    for split in ("dev", "test"):  # a candidate named by id: its system text and instruction, not the first alone
        assert main(["evaluate", "--run", str(run), "--candidate", summary["best_id"][:8], "--split", split]) == 0
        assert capsys.readouterr().out.startswith(f"{split} score {summary[f'best_{split}']:.4f} ")
    assert main(_fake(tmp_path, "--task", "demo", "--strategy", "hill_climb", "--optimizer-model", "none",
                      "--components", "system", "--budget", "60", "--json", runs="system")) == 0
    summary = json.loads(capsys.readouterr().out)
    assert main(["evaluate", "--run", str(_only(tmp_path / "system")), "--split", "test"]) == 0  # + the seed instruction
    assert capsys.readouterr().out.startswith(f"test score {summary['best_test']:.4f} ")
    with pytest.raises(promptopt.PromptOptError, match="its own evaluator"):
        promptopt.evaluate_candidate(promptopt.Candidate.of_components({"system": "Be brief."}), "demo",
                                     backend="fake", model="m", cache=False)
    assert main(_fake(tmp_path, "--task", "sst2,cr", "--components", "system", "--strategy", "hill_climb",
                      "--optimizer-model", "none", "--data-dir", str(mini_data), "--budget", "40",
                      "--test-limit", "4", runs="shared")) == 0
    capsys.readouterr()
    assert main(["evaluate", "--run", str(_only(tmp_path / "shared"))]) == 2
    assert "several tasks" in capsys.readouterr().err
    assert main(["show", str(_only(tmp_path / "shared"))]) == 0
    assert "score another on test" not in capsys.readouterr().out  # show offers no command that would be refused


def test_task_mean_weighs_each_task_the_same_whatever_its_size():
    from promptopt.measure.metrics import TASK_MEAN, corpus_score
    from promptopt.types import ExampleResult
    results = [ExampleResult(f"a/{i}", "", 1.0) for i in range(3)] + [ExampleResult("b/0", "", 0.0)]
    assert corpus_score(TASK_MEAN, results) == 0.5  # (1 + 0) / 2, not 3 / 4
    assert corpus_score(TASK_MEAN, [r.to_json() for r in results]) == 0.5  # as the run log reads it back
