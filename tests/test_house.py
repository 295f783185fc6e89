"""The house rules: one run-config reader, one run-log reader, one test sampler, a typed strategy
protocol, a time budget that spans resumes, and plugins named by file or module."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from promptopt import api, registry
from promptopt.task import data
from promptopt.cli import main
from promptopt.config import build_config
from promptopt.errors import PromptOptError, RegistryError
from promptopt.runlog import load_run, read_events
from promptopt.strategy import ScoreRequest, StrategyConfig, needs
from promptopt.testing import make_run
from promptopt.types import Candidate


class Once:
    """Asks for the given requests once, then stops."""

    Config = StrategyConfig

    def __init__(self, requests):
        self.requests = list(requests)

    def ask(self, ctx):
        out, self.requests = self.requests, []
        return out

    def tell(self, ctx, evals):
        pass


def fake_config(tmp_path: Path, **extra) -> dict:
    return {"task": "demo", "strategy": "paraphrase", "target": {"backend": "fake", "model": "m"},
            "optimizer": {"backend": "fake", "model": "m"}, "run_dir": str(tmp_path / "runs"),
            "cache_path": str(tmp_path / "cache.sqlite"), **extra}


# ---- 2. one run-config reader: evaluate --run scores as the run did ----------------------------

def test_evaluate_run_uses_the_runs_backend_model_and_seed(tmp_path, capsys):
    cache = f"cache_path={tmp_path / 'cache.sqlite'}"
    assert main(["optimize", "--task", "demo", "--strategy", "paraphrase", "--backend", "fake", "--model", "m",
                 "--seed", "3", "--run-dir", str(tmp_path / "runs"), "--set", cache, "-q", "--budget", "300"]) == 0
    (run,) = (tmp_path / "runs").iterdir()
    summary = json.loads((run / "summary.json").read_text())
    capsys.readouterr()
    assert main(["evaluate", "--run", str(run), "--split", "dev", "--no-cache"]) == 0
    assert capsys.readouterr().out.startswith(f"dev score {summary['best_dev']:.4f} ")
    assert main(["evaluate", "--run", str(run), "--split", "test", "--no-cache"]) == 0
    assert capsys.readouterr().out.startswith(f"test score {summary['best_test']:.4f} ")
    assert api.load_run_config(run).target.backend == "fake"


def test_load_run_config_refuses_a_non_run_in_one_line(tmp_path, capsys):
    assert main(["evaluate", "--run", str(tmp_path)]) == 2
    assert "not a run directory" in capsys.readouterr().err


# ---- 3. one run-log reader, objective-aware ----------------------------------------------------

def test_run_view_counts_only_task_objective_as_a_score(tmp_path):
    def ev(objective: str, score: float) -> dict:
        return {"type": "eval", "candidate_id": "c", "split": "dev", "objective": objective, "state": "complete",
                "results": [{"example_id": "e1", "score": score}], "time": 1.0}
    events = [{"type": "run.start", "time": 0.0}, {"type": "candidate", "candidate_id": "c", "text": "x", "step": 1},
              ev("loss", -7.5), ev("task", 1.0)]
    (tmp_path / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    view = load_run(tmp_path)
    assert view.score("c") == 1.0 and view.n("c") == 1
    assert len(view.evals) == 2 and view.started == 0.0


# ---- 4. one test sampler ------------------------------------------------------------------------

def test_test_limit_flag_and_task_option_score_the_same_examples(mini_data, tmp_path):
    def tested(task_limit: int | None, run_limit: int | None) -> list[str]:
        task = registry.get("tasks", "sst2")(data_dir=mini_data, test_limit=task_limit)
        run = make_run(Once([Candidate("Is the review positive?")]), task=task)
        run.test_limit = run_limit
        return sorted(run.history.results(run.run().best_id, "test"))

    by_flag, by_option = tested(None, 10), tested(10, None)
    assert len(by_flag) == 10 and by_flag == by_option


def test_the_test_sample_balances_labels_and_ignores_the_run_seed():
    from promptopt.testing import toy_task
    examples = toy_task(n_test=40).split("test")
    picked = data.test_sample(examples, 10)
    assert sum(ex.label for ex in picked) == 5 and picked == data.test_sample(examples, 10)


# ---- 5. typed protocol ----------------------------------------------------------------------------

def test_unknown_objective_is_a_loop_error_not_a_scoring_crash():
    run = make_run(Once([ScoreRequest(Candidate("a prompt"), objective="likelihood")]))
    with pytest.raises(PromptOptError, match="objective must be one of task, loss"):
        run.ask()


def test_capability_flags_read_through_one_helper():
    assert needs(registry.get("strategies", "pmpo")).loglikelihood
    assert needs(registry.get("strategies", "apo")).optimizer
    plum = needs(registry.get("strategies", "hill_climb"))
    assert plum.uses_optimizer and not plum.optimizer and not plum.loglikelihood
    assert needs(Once) == needs(object())  # undeclared flags are False


# ---- 6. the time budget spans resumes -------------------------------------------------------------

def _interrupted_run(tmp_path: Path, **budget) -> Path:
    run, _ = api.prepare(build_config(fake_config(tmp_path, budget={"max_examples": None, **budget})))
    assert run.step_once() and run.step_once()
    run.log.close()  # as if killed: no summary
    return run.log.dir


def _pretend_first_session_took(run_dir: Path, seconds: float) -> None:
    path = run_dir / "events.jsonl"
    events, _ = read_events(path)
    events[0]["time"] -= seconds  # run.start, earlier
    path.write_text("".join(json.dumps(e) + "\n" for e in events))


def test_time_spent_before_an_interruption_counts_after_resume(tmp_path):
    d = _interrupted_run(tmp_path, max_seconds=3600)
    _pretend_first_session_took(d, 7200)
    report = api.optimize(resume=d)
    assert report.stop_reason == "budget: seconds" and report.steps == 2  # the replayed steps, then stop
    assert (d / "summary.json").exists()


def test_replay_does_not_stop_on_time_the_recorded_run_had(tmp_path):
    d = _interrupted_run(tmp_path / "a", max_seconds=3600)
    _pretend_first_session_took(d, 600)  # well inside the limit: the run goes on live
    report = api.optimize(resume=d)
    assert report.stop_reason != "budget: seconds" and report.steps > 2


# ---- 7. plugins by location, duplicate names ------------------------------------------------------

STRATEGY_FILE = '''
from promptopt.strategy import StrategyConfig
from promptopt.types import Candidate


class Settings(StrategyConfig):
    rounds: int = 8


class Suffixer:
    """Appends a word to the best prompt so far, one candidate per step."""

    Config = Settings
    WORDS = ("Be brief.", "Think first.", "Answer with one word.", "Read carefully.")

    def __init__(self, config):
        self.config = config
        self.round = 0

    def ask(self, ctx):
        if self.round >= self.config.rounds:
            return []
        self.round += 1
        ranked = ctx.history.ranked()
        base = ranked[0][0] if ranked else Candidate(ctx.task.seed_prompts[0], origin="seed")
        word = self.WORDS[ctx.rng.randrange(len(self.WORDS))]
        return [base] if not ranked else [Candidate(f"{base.text} {word}", parents=(base.id,), origin="suffix")]

    def tell(self, ctx, evals):
        pass
'''


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "promptopt.cli", "optimize", *args]


def test_strategy_file_runs_without_install_and_resumes_after_a_kill(tmp_path):
    (tmp_path / "plugins").mkdir()
    (tmp_path / "plugins" / "my.py").write_text(STRATEGY_FILE)
    flags = ["--task", "demo", "--strategy", "plugins/my.py:Suffixer", "--backend", "fake", "--model", "m",
             "--optimizer-model", "none", "--set", "backend.delay=0.03", "--no-cache", "-q", "--seed", "5"]
    # An uninterrupted reference run (relative path: the config must record it absolute).
    subprocess.run(_cli(*flags, "--run-dir", "ref"), cwd=tmp_path, check=True, capture_output=True)
    (ref,) = (tmp_path / "ref").iterdir()
    recorded = json.loads((ref / "config.json").read_text())["config"]["strategy"]
    assert recorded == f"{tmp_path / 'plugins' / 'my.py'}:Suffixer"
    # The same run, killed once it has scored something, then resumed from another directory.
    proc = subprocess.Popen(_cli(*flags, "--run-dir", "cut"), cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        logs = list((tmp_path / "cut").glob("*/events.jsonl"))
        if logs and logs[0].read_text().count('"type":"eval"') >= 3:
            break
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    (cut,) = (tmp_path / "cut").iterdir()
    assert not (cut / "summary.json").exists(), "the run finished before the kill"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    out = subprocess.run(_cli("--resume", str(cut), "-q"), cwd=elsewhere, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    a, b = (json.loads((d / "summary.json").read_text()) for d in (ref, cut))
    assert (a["best_prompt"], a["best_dev"], a["best_test"]) == (b["best_prompt"], b["best_dev"], b["best_test"])


def test_module_colon_name_and_a_bad_location_are_one_line(tmp_path):
    assert registry.get("strategies", "promptopt.strategies.paraphrase:Paraphrase").__name__ == "Paraphrase"
    with pytest.raises(RegistryError, match="does not exist"):
        registry.get("strategies", f"{tmp_path / 'nope.py'}:X")
    (tmp_path / "broken.py").write_text("raise RuntimeError('boom')\n")
    with pytest.raises(RegistryError, match="RuntimeError: boom"):
        registry.get("strategies", f"{tmp_path / 'broken.py'}:X")
    (tmp_path / "empty.py").write_text("")
    with pytest.raises(RegistryError, match="defines no 'X'"):
        registry.get("strategies", f"{tmp_path / 'empty.py'}:X")


def test_a_duplicate_name_is_an_error_naming_both_sources(tmp_path):
    (tmp_path / "dup.py").write_text("from promptopt.registry import register_strategy\n\n"
                                     "@register_strategy('paraphrase')\nclass Mine:\n    pass\n")
    with pytest.raises(RegistryError, match=r"'paraphrase' is registered twice: by promptopt\.strategies\."
                                            r"paraphrase.*and by .*dup\.py:Mine"):
        registry.get("strategies", f"{tmp_path / 'dup.py'}:Mine")
    (tmp_path / "twice.py").write_text("from promptopt.registry import register_task\n\n"
                                       "@register_task('house_twice')\ndef a():\n    pass\n\n"
                                       "@register_task('house_twice')\ndef b():\n    pass\n")
    with pytest.raises(RegistryError, match=r"twice: by .*twice\.py:a and by .*twice\.py:b"):
        registry.get("tasks", f"{tmp_path / 'twice.py'}:a")


def test_evaluate_a_runs_candidate_scores_it_as_the_run_did(tmp_path, capsys):
    cache = f"cache_path={tmp_path / 'cache.sqlite'}"
    assert main(["optimize", "--task", "demo", "--strategy", "fewshot", "--backend", "fake", "--model", "m",
                 "--optimizer-model", "none", "--run-dir", str(tmp_path / "runs"), "--set", cache, "-q",
                 "--budget", "200", "--test-limit", "10"]) == 0
    (run,) = (tmp_path / "runs").iterdir()
    view = load_run(run)
    summary = view.summary
    capsys.readouterr()
    assert main(["evaluate", "--run", str(run), "--candidate", summary["best_id"][:8], "--split", "test", "--no-cache"]) == 0
    assert capsys.readouterr().out.startswith(f"test score {summary['best_test']:.4f} on 10 examples")
    dev_size = len(api.load_task("demo").split("dev"))
    whole = [cid for cid, c in view.candidates.items() if c.get("demos") and view.n(cid) == dev_size]
    assert whole, "the run scored no demo set on the whole dev split"
    for cid in whole:  # each one's dev score, from its instruction and demos rendered again
        assert main(["evaluate", "--run", str(run), "--candidate", cid, "--no-cache"]) == 0
        assert capsys.readouterr().out.startswith(f"dev score {view.score(cid):.4f} ")
    assert main(["evaluate", "--run", str(run), "--candidate", "zzzz"]) == 2
    assert capsys.readouterr().err.count("\n") == 1
    assert main(["evaluate", "--task", "demo", "--prompt", "Hi.", "--candidate", "ab"]) == 2
    assert "give the run with --run" in capsys.readouterr().err
