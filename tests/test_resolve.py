"""One resolution step (promptopt/resolved.py): a RunConfig resolves once; --dry-run prints that resolved
run and optimize runs it. The optimizer-defaults-to-the-target rule is written once, so every way in
(flags, a config file, the Python API) gets the same optimizer."""
import ast
import json
from pathlib import Path

import pytest

from promptopt import api
from promptopt.cli import main
from promptopt.cli.commands import parse_budget
from promptopt.cli.plan import describe, plan_lines
from promptopt.config import BUDGET_LIMITS, RunConfig, build_config
from promptopt.resolved import resolve

FAKE = ["--task", "demo", "--backend", "fake", "--model", "m"]


def dry_run(capsys, *args: str) -> dict[str, str]:
    """The dry run's plan as {label: value}."""
    code = main(["optimize", *args, "--dry-run"])
    out, err = capsys.readouterr()
    assert code == 0, err
    lines = out.splitlines()[1:]
    return {line[:10].strip(): line[11:] for line in lines}


def test_the_dry_run_prints_the_resolved_run_that_optimize_runs(tmp_path, capsys):
    data = {"task": "demo", "strategy": "apo", "target": {"backend": "fake", "model": "m"},
            "run_dir": str(tmp_path / "runs"), "cache_path": str(tmp_path / "c.sqlite"), "test_limit": 7,
            "budget": {"max_examples": 90, "max_optimizer_calls": 4}, "strategy_options": {"rounds": 2}}
    cfg = build_config(data)
    run, _ = api.prepare(cfg)
    run.log.close()
    planned = plan_lines(resolve(cfg))
    assert plan_lines(run.resolved) == planned  # the run is made of what the plan says
    assert run.tracker.budget == run.resolved.budget and run.test_limit == 7
    assert run.target.fingerprint() == "fake:m" == run.optimizer.fingerprint()
    plan = dict(planned)
    assert plan["budget"] == "search: examples 90, optimizer calls 4"
    assert plan["final"].startswith(f"at most {24 * 4 + 2 * 7} more")  # (3 finalists + seed) x 24 dev + 2 x 7 test
    assert plan["strategy"].startswith("apo: rounds=2,")
    # The CLI prints the same lines.
    toml = tmp_path / "run.toml"
    toml.write_text(f'task = "demo"\nstrategy = "apo"\ntest_limit = 7\nrun_dir = "{tmp_path / "runs"}"\n'
                    f'cache_path = "{tmp_path / "c.sqlite"}"\n[target]\nbackend = "fake"\nmodel = "m"\n'
                    '[budget]\nmax_examples = 90\nmax_optimizer_calls = 4\n[strategy_options]\nrounds = 2\n')
    assert main(["optimize", "--config", str(toml), "--dry-run"]) == 0
    assert capsys.readouterr().out.strip() == describe(planned)


@pytest.mark.parametrize("named, expected", [
    ({}, "fake:m"),
    ({"model": "o"}, "fake:o"),
    ({"backend": "hf"}, "hf:m"),
    ({"model": "o", "backend": "hf"}, "hf:o"),
])
def test_the_optimizer_is_the_target_unless_named_the_same_way_everywhere(tmp_path, capsys, named, expected):
    flags = [x for k, v in named.items() for x in (f"--optimizer-{k}", v)]
    assert dry_run(capsys, *FAKE, *flags)["optimizer"] == expected
    toml = tmp_path / "run.toml"
    toml.write_text('[target]\nbackend = "fake"\nmodel = "m"\n'
                    + ("[optimizer]\n" + "".join(f'{k} = "{v}"\n' for k, v in named.items()) if named else ""))
    assert dry_run(capsys, "--task", "demo", "--config", str(toml))["optimizer"] == expected
    cfg = RunConfig.model_validate({"target": {"backend": "fake", "model": "m"},
                                    **({"optimizer": named} if named else {})})
    assert f"{cfg.optimizer.backend}:{cfg.optimizer.model}" == expected


def test_the_python_api_runs_the_target_as_optimizer_unless_told(tmp_path):
    common = dict(task="demo", strategy="paraphrase", backend="fake", model="m", budget={"max_examples": 60},
                  run_dir=str(tmp_path / "runs"), cache_path=str(tmp_path / "c.sqlite"))
    first = api.optimize(**common)
    other = api.optimize(**common, optimizer_model="o")
    none = api.optimize(**{**common, "strategy": "hill_climb"}, optimizer_model=None)
    optimizers = [json.loads((Path(r.run_dir) / "config.json").read_text())["config"]["optimizer"]
                  for r in (first, other, none)]
    assert optimizers == [{"backend": "fake", "model": "m", "options": {}},
                          {"backend": "fake", "model": "o", "options": {}}, None]


def test_no_optimizer_and_an_unneeded_one(capsys):
    assert dry_run(capsys, *FAKE, "--strategy", "hill_climb", "--optimizer-model", "none")["optimizer"] == "none"
    # fewshot uses no optimizer LLM: the resolved run has none although the config names one.
    assert dry_run(capsys, *FAKE, "--strategy", "fewshot")["optimizer"] == "none"


def test_a_resumed_run_resolves_its_recorded_config(tmp_path):
    cfg = build_config({"task": "demo", "strategy": "paraphrase", "target": {"backend": "fake", "model": "m"},
                        "run_dir": str(tmp_path / "runs"), "cache_path": str(tmp_path / "c.sqlite"),
                        "budget": {"max_examples": 60}})
    run, _ = api.prepare(cfg)
    run.log.close()
    again, _ = api.prepare(api.resume_config(run.log.dir), resume_dir=run.log.dir)
    again.log.close()
    assert plan_lines(again.resolved) == plan_lines(run.resolved)


def test_the_budget_keys_are_one_table():
    limits = parse_budget(",".join(f"{key}={n + 1}" for n, key in enumerate(BUDGET_LIMITS)))
    assert sorted(limits.values()) == [1, 2, 3, 4, 5]  # every flag key parses to its own field
    resolved = resolve(build_config({"target": {"backend": "fake", "model": "m"}, "budget": limits}))
    line = dict(plan_lines(resolved))["budget"]
    assert line == "search: " + ", ".join(f"{label} {limits[field]}" for field, label in BUDGET_LIMITS.values())


def test_an_lmeval_task_without_a_config_is_one_line(capsys):
    code = main(["optimize", "--task", "lmeval", "--strategy", "hill_climb", *FAKE[2:], "--dry-run"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err == ("promptopt: error: task lmeval needs an lm-eval task config or name: "
                                 "--task lmeval:PATH_OR_NAME")


def test_each_cli_command_function_reads_in_one_screen():
    import promptopt.cli.commands as commands
    tree = ast.parse(Path(commands.__file__).read_text(encoding="utf-8"))
    long = {f.name: f.end_lineno - f.lineno + 1 for f in ast.walk(tree)
            if isinstance(f, ast.FunctionDef) and f.end_lineno - f.lineno + 1 > 45}
    assert not long


def test_the_final_report_scores_what_the_plan_says_at_most(tmp_path, capsys):
    args = [*FAKE, "--strategy", "paraphrase", "--budget", "120", "--test-limit", "9", "--run-dir",
            str(tmp_path / "runs"), "--set", f"cache_path={tmp_path / 'c.sqlite'}", "--set", "final_top_k=2"]
    plan = dry_run(capsys, *args)
    assert plan["task"].endswith("dev 24, test 9 of 30") and plan["final"].startswith(f"at most {24 * 3 + 2 * 9} ")
    assert main(["optimize", *args, "-q"]) == 0
    capsys.readouterr()
    (run,) = (tmp_path / "runs").iterdir()
    events = [json.loads(line) for line in (run / "events.jsonl").read_text().splitlines()]
    scored = {phase: [len(e["example_ids"]) for e in events if e["type"] == "eval" and e.get("phase") == phase]
              for phase in ("final", "test")}
    assert scored["test"] and all(n == 9 for n in scored["test"])  # the planned test sample, per candidate
    assert sum(scored["final"]) + sum(scored["test"]) <= 24 * 3 + 2 * 9
