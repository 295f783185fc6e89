"""Failure classes of issue 17 at the loop and CLI level: a fatal model error or a run of failures stops
the run resumably; a resume after the fix ends as a clean run does; SIGTERM leaves a run resumable."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Sequence

import pytest

from promptopt.backends.base import LLRequest, LLResult
from promptopt.backends.fake import FakeBackend
from promptopt.budget import Budget
from promptopt.cli import main
from promptopt.errors import BackendError, ResumeError, RunStopped
from promptopt.runlog import SUMMARY, RunLog
from promptopt.testing import make_run

from promptopt.strategies.paraphrase import Paraphrase, ParaphraseConfig


class RevokedAfter(FakeBackend):
    """A target whose key is revoked after `ok` calls: every later call raises a fatal error."""

    def __init__(self, ok: int):
        super().__init__()
        self.ok = ok

    def loglikelihood(self, reqs: Sequence[LLRequest]) -> list[LLResult]:
        if self.calls >= self.ok:
            self.calls += 1
            raise BackendError("openai backend: HTTP 401 invalid API key", fatal=True)
        return super().loglikelihood(reqs)


def _paraphrase() -> Paraphrase:
    return Paraphrase(ParaphraseConfig())


def _result(report) -> tuple:
    return report.best_prompt, report.best_dev, report.best_test, report.candidates


def test_fatal_error_stops_at_once_and_resumes_to_the_clean_result(tmp_path):
    clean_dir, cut_dir = tmp_path / "clean", tmp_path / "cut"
    clean_dir.mkdir(), cut_dir.mkdir()
    clean = make_run(_paraphrase(), run_dir=clean_dir, budget=Budget(max_examples=200))
    want = _result(clean.run())
    clean.log.close()
    target = RevokedAfter(ok=2)
    run = make_run(_paraphrase(), target=target, run_dir=cut_dir, budget=Budget(max_examples=200))
    with pytest.raises(BackendError, match="401"):
        run.run()
    assert target.calls == 3  # no call after the first fatal one
    assert run.failures == 0  # nothing recorded as a failed evaluation
    run.log.close()
    resumed = make_run(_paraphrase(), run_dir=cut_dir, resume=True, budget=Budget(max_examples=200))
    assert _result(resumed.run()) == want


def test_outage_stops_resumably_then_resume_finishes(tmp_path):
    run = make_run(_paraphrase(), target=FakeBackend(fail_every=1), run_dir=tmp_path, budget=Budget(max_examples=200))
    run.max_failures = 3
    with pytest.raises(RunStopped, match="evaluations failed"):
        run.run()
    run.log.close()
    assert not (tmp_path / SUMMARY).exists()
    resumed = make_run(_paraphrase(), run_dir=tmp_path, resume=True, budget=Budget(max_examples=200))
    report = resumed.run()
    assert report.best_test is not None and report.failures < 3


def _cli(tmp_path: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "promptopt.cli", "optimize", "--task", "demo", "--strategy", "paraphrase",
            "--backend", "fake", "--model", "m", "--run-dir", str(tmp_path / "runs"), "--budget", "400",
            "--no-cache", "-q", *extra]


def test_cli_fail_every_1_stops_with_one_line_and_stays_resumable(tmp_path):
    proc = subprocess.run(_cli(tmp_path, "--set", "backend.fail_every=1"), capture_output=True, text=True,
                          timeout=120)
    last = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode == 3 and "Traceback" not in proc.stderr
    assert last.startswith("promptopt: stopped:") and "--resume" in last
    (d,) = (tmp_path / "runs").iterdir()
    assert not (d / SUMMARY).exists()
    stop = [json.loads(line) for line in (d / "events.jsonl").read_text().splitlines()][-1]
    assert stop["type"] == "run.stop" and stop["failures"] > 0


def test_sigterm_leaves_the_run_resumable(tmp_path):
    proc = subprocess.Popen(_cli(tmp_path, "--set", "backend.delay=0.3"), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not any(
            b'"type":"eval"' in p.read_bytes() for p in (tmp_path / "runs").glob("*/events.jsonl")):
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 3 and "stopped by SIGTERM" in err and "Traceback" not in err
    (d,) = (tmp_path / "runs").iterdir()
    assert not (d / SUMMARY).exists()
    done = subprocess.run([sys.executable, "-m", "promptopt.cli", "optimize", "--resume", str(d), "-q"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads((d / SUMMARY).read_text())["best_test"] is not None


def test_already_finished_is_checked_under_the_lock(tmp_path):
    run = make_run(_paraphrase(), run_dir=tmp_path, budget=Budget(max_examples=100))
    run.run()
    run.log.close()
    (tmp_path / SUMMARY).write_text("{}")  # what a racing resumer finished while this one waited
    with pytest.raises(ResumeError, match="already finished"):
        RunLog(tmp_path, resume=True)


def test_unwritable_lock_is_one_clear_error(tmp_path):
    (tmp_path / ".lock").mkdir()  # a directory where the lock file should be
    with pytest.raises(ResumeError, match="cannot lock"):
        RunLog(tmp_path)


# -- connection options, credentials, backend options (classes 3, 11, 14) ------------------------

def _config(**data):
    from promptopt.config import build_config
    return build_config({"task": "demo", "strategy": "paraphrase", **data})


def test_optimizer_inherits_the_targets_connection():
    target = {"backend": "openai", "model": "m", "options": {"base_url": "http://127.0.0.1:9/v1",
                                                              "api_key_env": "LOCAL_KEY", "concurrency": 4}}
    cfg = _config(target=target, optimizer={"backend": "openai", "model": "opt"})
    assert cfg.optimizer.options == {"base_url": "http://127.0.0.1:9/v1", "api_key_env": "LOCAL_KEY"}
    own = _config(target=target, optimizer={"backend": "openai", "model": "o", "options": {"base_url": "http://h:1/v1"}})
    assert own.optimizer.options["base_url"] == "http://h:1/v1" and own.optimizer.options["api_key_env"] == "LOCAL_KEY"
    fake = _config(target={"backend": "fake", "model": "m", "options": {"fail_every": 1}},
                   optimizer={"backend": "fake", "model": "m"})
    assert fake.optimizer.options == {}  # not a connection option


def test_dry_run_shows_where_each_model_is_served(capsys):
    code = main(["optimize", "--task", "demo", "--backend", "openai", "--model", "m", "--set",
                 "backend.base_url=http://127.0.0.1:9/v1", "--dry-run"])
    out = capsys.readouterr().out
    assert code == 0
    assert "target     openai:m at http://127.0.0.1:9/v1" in out
    assert "optimizer  openai:m at http://127.0.0.1:9/v1" in out


def test_a_password_in_a_url_is_refused_and_never_printed(capsys):
    code = main(["optimize", "--task", "demo", "--backend", "openai", "--model", "m", "--set",
                 "backend.base_url=http://user:sekrit@127.0.0.1:9/v1", "--dry-run"])
    err = capsys.readouterr().err
    assert code == 2 and "sekrit" not in err and "http://user:***@127.0.0.1:9/v1" in err


@pytest.mark.parametrize("backend, option, value, match", [
    ("openai", "timeout", "abc", "timeout: Input should be a valid number"),
    ("openai", "concurrency", "8", "concurrency: Input should be a valid integer"),
    ("openai", "max_retries", -1, "max_retries"),
    ("openai", "rpm", "fast", "rpm"),
    ("openai", "base_url", 5, "base_url"),
    ("openai", "prices", {"m": [1.0]}, "give \\[USD per 1M input tokens"),
    ("openai", "timeoutt", 5, "timeoutt: unknown setting"),
    ("hf", "batch_size", "abc", "batch_size"),
    ("hf", "device", "tpu", "device"),
    ("fake", "delay", "slow", "delay"),
    ("vllm", "gpu_memory_utilization", 2, "gpu_memory_utilization"),
])
def test_backend_options_are_validated_before_any_model_loads(backend, option, value, match):
    from promptopt.errors import ConfigError
    with pytest.raises(ConfigError, match=f"target backend {backend} option .*{match}"):
        _config(target={"backend": backend, "model": "m", "options": {option: value}}, optimizer=None)


def test_seed_true_is_not_seed_1():
    from promptopt.errors import ConfigError
    with pytest.raises(ConfigError, match="seed"):
        _config(seed=True)


def test_startup_probe_has_its_own_deadline_and_says_what_it_waits_for():
    """A server that accepts connections but never answers fails start-up in probe_timeout seconds."""
    import socket
    import threading

    from promptopt.backends.openai import OpenAIBackend

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    held: list[socket.socket] = []
    threading.Thread(target=lambda: held.append(listener.accept()[0]), daemon=True).start()
    backend = OpenAIBackend("m", base_url=f"http://127.0.0.1:{listener.getsockname()[1]}/v1", probe_timeout=0.5)
    try:
        # Only the probe's own deadline says this; without it the request would wait out timeout (60 s).
        with pytest.raises(BackendError, match=r"no answer within 0.5s to the start-up probe \(a 1-token chat") as e:
            backend.check()
        assert e.value.fatal
    finally:
        backend.close()
        listener.close()


# -- the run log: checksums, bad lines, disk full, temp files, run names (classes 4, 7, 10, 12) -----

def _finished(tmp_path: Path) -> Path:
    run = make_run(_paraphrase(), run_dir=tmp_path, budget=Budget(max_examples=100))
    run.run()
    run.log.close()
    return tmp_path


def test_an_edited_event_is_a_clear_resume_error(tmp_path):
    from promptopt.runlog import EVENTS, read_events
    d = _finished(tmp_path)
    lines = (d / EVENTS).read_bytes().splitlines(keepends=True)
    i = next(i for i, line in enumerate(lines) if b'"score":0.0' in line)
    lines[i] = lines[i].replace(b'"score":0.0', b'"score":1.0', 1)  # one per-example score edited
    (d / EVENTS).write_bytes(b"".join(lines))
    with pytest.raises(ResumeError, match=f"line {i + 1} fails its checksum"):
        read_events(d / EVENTS)


@pytest.mark.parametrize("line", [b"[1, 2]", b'"x"', b"{}", b'{"seq": 3}'])
def test_a_line_that_is_not_an_event_is_a_clear_error(tmp_path, line):
    from promptopt.runlog import EVENTS, read_events
    (tmp_path / EVENTS).write_bytes(line + b"\n" + b'{"type":"run.start"}\n')
    with pytest.raises(ResumeError, match="line 1 is not an event"):
        read_events(tmp_path / EVENTS)


def test_show_of_a_damaged_log_is_one_line(tmp_path, capsys):
    from promptopt.runlog import EVENTS
    d = _finished(tmp_path)
    (d / EVENTS).write_bytes(b"[1]\n" + (d / EVENTS).read_bytes())
    assert main(["show", str(d)]) == 2
    assert "not an event" in capsys.readouterr().err


def test_a_full_disk_stops_the_run_resumably_and_loses_nothing(tmp_path, monkeypatch):
    import errno

    from promptopt import runlog
    from promptopt.runlog import EVENTS, read_events
    run = make_run(_paraphrase(), run_dir=tmp_path, budget=Budget(max_examples=200))
    real_write, calls = os.write, [0]

    def write(fd, data):
        calls[0] += 1
        if calls[0] == 6:
            real_write(fd, data[:10])  # a short write, then the disk is full
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(runlog.os, "write", write)
    with pytest.raises(RunStopped, match="No space left on device"):
        run.run()
    monkeypatch.setattr(runlog.os, "write", real_write)
    run.log.close()
    events, good = read_events(tmp_path / EVENTS)
    assert good == (tmp_path / EVENTS).stat().st_size and len(events) == 5  # the torn line was dropped
    resumed = make_run(_paraphrase(), run_dir=tmp_path, resume=True, budget=Budget(max_examples=200))
    assert resumed.run().best_test is not None


def test_a_failed_summary_write_leaves_no_temp_file_and_stays_resumable(tmp_path, monkeypatch):
    import errno

    from promptopt import runlog
    from promptopt.runlog import write_json_atomic

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(runlog.os, "fsync", no_space)
    with pytest.raises(RunStopped, match=r"cannot write .*summary.json: No space left"):
        write_json_atomic(tmp_path / SUMMARY, {"a": 1})
    assert list(tmp_path.iterdir()) == []


def test_orphan_temp_files_are_cleaned_on_the_next_start(tmp_path):
    d = _finished(tmp_path)
    assert not (d / SUMMARY).exists()  # make_run writes no summary: the run is resumable
    (d / "summary.json.tmp4242").write_text("{")  # what a kill during the summary write leaves
    (d / "notes.json.tmp1").write_text("mine")  # not a name promptopt writes: left alone
    RunLog(d, resume=True).close()
    assert not (d / "summary.json.tmp4242").exists() and (d / "notes.json.tmp1").exists()


@pytest.mark.parametrize("name", ["../../x", "a/b", ".hidden", "x" * 101, ""])
def test_run_names_cannot_escape_the_run_dir(tmp_path, name, capsys):
    code = main(["optimize", "--task", "demo", "--backend", "fake", "--model", "m", "--run-dir",
                 str(tmp_path / "runs"), "--set", f"run_name={name}", "--no-cache", "-q"])
    assert code == 2 and "run_name" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists() or not list((tmp_path / "runs").iterdir())
    assert sorted(p.name for p in tmp_path.iterdir()) in ([], ["runs"])


def test_a_failed_run_dir_creation_leaves_no_staging_dir(tmp_path, monkeypatch):
    from promptopt import runlog
    from promptopt.errors import ConfigError

    def refuse(*args):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(runlog.os, "rename", refuse)
    with pytest.raises(ConfigError, match="Permission denied"):
        runlog.new_run_dir(tmp_path, {"a": 1}, "ok-name")
    assert list(tmp_path.iterdir()) == []


# -- hostile data (class 9) ---------------------------------------------------------------------

def test_duplicate_csv_header_names_are_refused(tmp_path):
    from promptopt.task.data import read_table
    from promptopt.errors import TaskError
    (tmp_path / "x.csv").write_text("text,label,label\na,1,0\n", encoding="utf-8")
    with pytest.raises(TaskError, match=r"x.csv:1: the header names 'label' more than once"):
        read_table(tmp_path / "x.csv", ",")


def test_a_utf8_bom_csv_reads_its_first_column(tmp_path):
    from promptopt.task.data import read_table
    (tmp_path / "x.csv").write_bytes("\ufeffquestion,answer\nq,a\n".encode("utf-8"))
    assert read_table(tmp_path / "x.csv", ",") == [{"question": "q", "answer": "a"}]


def test_a_lone_surrogate_in_jsonl_is_refused_with_its_line(tmp_path):
    from promptopt.task.data import read_jsonl
    from promptopt.errors import TaskError
    (tmp_path / "x.jsonl").write_text('{"q": "ok"}\n{"q": "bad \\ud800"}\n', encoding="utf-8")
    with pytest.raises(TaskError, match=r"x.jsonl:2: text with a lone surrogate"):
        read_jsonl(tmp_path / "x.jsonl")


def test_a_lone_surrogate_prompt_is_refused_up_front(tmp_path, capsys):
    code = main(["optimize", "--task", "demo", "--backend", "fake", "--model", "m", "--run-dir",
                 str(tmp_path / "runs"), "--set", 'prompt="Is it \\ud800 ok?"', "--no-cache", "-q"])
    assert code == 2 and "lone surrogate" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_a_lone_surrogate_from_a_model_is_replaced_and_the_run_goes_on(tmp_path):
    from promptopt.runlog import EVENTS, read_events
    run = make_run(_paraphrase(), optimizer=FakeBackend(replies=lambda r: "Rewrite \ud800 this."), run_dir=tmp_path,
                   budget=Budget(max_examples=60))
    assert run.run().best_test is not None
    run.log.close()
    events, _ = read_events(tmp_path / EVENTS)
    assert "Rewrite \ufffd this." in {e.get("text") for e in events if e["type"] == "candidate"}


def test_the_log_writes_and_reads_back_a_lone_surrogate(tmp_path):
    from promptopt.runlog import EVENTS, read_events
    log = RunLog(tmp_path)
    log.emit("note", step=1, kind="x", raw="model said \ud800")
    log.close()
    events, _ = read_events(tmp_path / EVENTS)
    assert events[0]["raw"] == "model said \ud800"


# -- wrong counts (class 12) ----------------------------------------------------------------------

@pytest.mark.parametrize("argv", [
    ["evaluate", "--task", "demo", "--prompt", "Hi.", "--backend", "fake", "--limit", "-3"],
    ["evaluate", "--task", "demo", "--prompt", "Hi.", "--backend", "fake", "--limit", "0"],
    ["show", "runs/none", "--top", "-5"],
    ["report", "runs/none", "--top", "0"],
])
def test_counts_below_one_are_refused(argv, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "expected a whole number >= 1" in err and len(err.strip().splitlines()) == 1


def test_api_evaluate_refuses_a_negative_limit():
    from promptopt.api import evaluate
    from promptopt.errors import ConfigError
    with pytest.raises(ConfigError, match="limit must be at least 1"):
        evaluate("Hi.", "demo", backend="fake", model="m", limit=-3, cache=False)


def test_a_seed_prompt_longer_than_the_window_is_refused_before_any_model_call():
    from promptopt.errors import ConfigError
    from promptopt.loop import Run
    from promptopt.resolved import ResolvedRun
    from promptopt.testing import toy_task

    class Windowed(FakeBackend):
        max_length = 50

        def count_tokens(self, text: str) -> int:
            return len(text.split())

    target = Windowed()
    with pytest.raises(ConfigError, match=r"comes to \d+ tokens, over the model's window of 50"):
        Run(ResolvedRun(task=toy_task(), strategy=_paraphrase(), prompt="word " * 60), target=target,
            optimizer=FakeBackend())
    assert target.calls == 0


def test_two_backends_with_one_fingerprint_keep_separate_stats():
    from promptopt.api import Backends, backend_stats
    from promptopt.scoring.cache import CachedBackend

    class Counting(FakeBackend):
        def __init__(self, n: int):
            super().__init__("same")
            self.stats = {"requests": n}

    backends = Backends(None)
    backends.cached = [CachedBackend(Counting(3), None), CachedBackend(Counting(5), None)]
    assert backend_stats(backends) == {"fake:same": {"requests": 3}, "fake:same #2": {"requests": 5}}


# -- resume refuses changed inputs (class 5) ------------------------------------------------------

def _spec_run(tmp_path: Path) -> tuple[Path, list[str]]:
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps({"q": f"is {i} odd?", "a": "yes" if i % 2 else "no"}) + "\n"
                            for i in range(24)), encoding="utf-8")
    spec = tmp_path / "spec.toml"
    spec.write_text('template = "{prompt}\\n\\nQ: {input}\\nA:"\noutput = "choose"\noptions = [" no", " yes"]\n'
                    'seed_prompts = ["Answer yes or no."]\n[columns]\ninput = "q"\ntarget = "a"\n'
                    '[data]\nfile = "data.jsonl"\nsplit = {train = 8, dev = 8, test = 8}\n', encoding="utf-8")
    argv = ["optimize", "--task", str(spec), "--strategy", "paraphrase", "--backend", "fake", "--model", "m",
            "--run-dir", str(tmp_path / "runs"), "--budget", "60", "--no-cache", "-q"]
    return data, argv


def _interrupted_run(tmp_path: Path) -> Path:
    data, argv = _spec_run(tmp_path)
    assert main(argv) == 0
    (d,) = (tmp_path / "runs").iterdir()
    (d / SUMMARY).unlink()  # as if killed before the end
    return d


def test_resume_refuses_changed_task_data_unless_accepted(tmp_path, capsys):
    d = _interrupted_run(tmp_path)
    data = tmp_path / "data.jsonl"
    data.write_text(data.read_text().replace("is 3 odd?", "is 33 odd?"), encoding="utf-8")
    assert main(["optimize", "--resume", str(d), "-q"]) == 2
    err = capsys.readouterr().err
    assert "task data changed" in err and "--accept-changed-inputs" in err
    assert main(["optimize", "--resume", str(d), "--accept-changed-inputs", "-q"]) == 0
    resumes = [json.loads(line) for line in (d / "events.jsonl").read_text().splitlines()
               if '"run.resume"' in line]
    assert "task data changed" in resumes[-1]["accepted_changes"][0]


def test_resume_refuses_an_edited_config_json(tmp_path, capsys):
    d = _interrupted_run(tmp_path)
    meta = json.loads((d / "config.json").read_text())
    meta["config"]["seed"] = 7
    (d / "config.json").write_text(json.dumps(meta))
    assert main(["optimize", "--resume", str(d), "-q"]) == 2
    assert "config.json differs from the config recorded at start" in capsys.readouterr().err


def test_resume_accepts_a_run_from_before_a_nested_setting_was_added(tmp_path, capsys):
    """A run written before `final.selector_check` existed (its recorded config lacks the key): the setting
    is at its default, so the resume goes on; at another value it is a changed config."""
    from promptopt.runlog import _line_sum
    d = _interrupted_run(tmp_path)
    lines = []
    for line in (d / "events.jsonl").read_text().splitlines():
        event = json.loads(line)
        if event["type"] == "run.start":
            event.pop("sum")
            del event["config"]["final"]["selector_check"]
            body = json.dumps(event, separators=(",", ":"))
            line = body[:-1] + f',"sum":"{_line_sum(body.encode())}"}}'
        lines.append(line)
    (d / "events.jsonl").write_text("\n".join(lines) + "\n")
    meta = json.loads((d / "config.json").read_text())
    del meta["config"]["final"]["selector_check"]
    (d / "config.json").write_text(json.dumps(meta))
    assert main(["optimize", "--resume", str(d), "-q"]) == 0
    (d / SUMMARY).unlink()
    meta["config"]["final"]["selector_check"] = False
    (d / "config.json").write_text(json.dumps(meta))
    assert main(["optimize", "--resume", str(d), "-q"]) == 2
    assert "config.json differs from the config recorded at start" in capsys.readouterr().err


# -- a 401 injected mid-run by the fault proxy, then a resume after the key is fixed (class 1) -------

def test_401_mid_run_stops_at_once_then_resume_after_the_fix_matches_a_clean_run(tmp_path, capsys,
                                                                                   quick_thread_switches):
    from promptopt.testing.faultproxy import FaultProxy
    from promptopt.testing.openai_server import FakeOpenAIServer

    def argv(url: str, runs: str) -> list[str]:
        return ["optimize", "--task", "demo", "--strategy", "paraphrase", "--backend", "openai", "--model",
                "test-model", "--set", f"backend.base_url={url}", "--set", "backend.concurrency=4",
                "--run-dir", str(tmp_path / runs), "--budget", "150", "--seed", "3", "--no-cache", "-q"]

    with FakeOpenAIServer("test-model", max_lifetime=120) as server:
        assert main(argv(server.url, "clean")) == 0
        (clean,) = (tmp_path / "clean").iterdir()
        with FaultProxy(server.url, max_lifetime=120) as proxy:
            proxy.queue(*[None] * 40, *["401"] * 10_000)  # the key is revoked after 40 requests
            assert main(argv(proxy.url, "cut")) == 3
            err = capsys.readouterr().err.strip().splitlines()
            assert len(err) == 1 and "401" in err[0] and "--resume" in err[0]
            assert proxy.injected["401"] <= 8  # at most the requests in flight, then no more calls
            (cut,) = (tmp_path / "cut").iterdir()
            assert not (cut / SUMMARY).exists()
            stop = [json.loads(line) for line in (cut / "events.jsonl").read_text().splitlines()][-1]
            assert stop["type"] == "run.stop" and any(s["failures_by_kind"].get("http_401")
                                                      for s in stop["backend_stats"].values())
            with proxy._lock:
                proxy._planned.clear()  # the key is fixed
            assert main(["optimize", "--resume", str(cut), "-q"]) == 0
    want, got = (json.loads((d / SUMMARY).read_text()) for d in (clean, cut))
    assert (got["best_prompt"], got["best_dev"], got["best_test"]) == \
        (want["best_prompt"], want["best_dev"], want["best_test"])


def test_a_long_503_outage_stops_resumably_instead_of_finishing(tmp_path, capsys, quick_thread_switches):
    from promptopt.testing.faultproxy import FaultProxy
    from promptopt.testing.openai_server import FakeOpenAIServer

    with FakeOpenAIServer("test-model", max_lifetime=120) as server, FaultProxy(server.url, max_lifetime=120) as proxy:
        proxy.queue(*[None] * 40, *["503"] * 100_000)
        code = main(["optimize", "--task", "demo", "--strategy", "paraphrase", "--backend", "openai", "--model",
                     "test-model", "--set", f"backend.base_url={proxy.url}", "--set", "backend.max_retries=0",
                     "--run-dir", str(tmp_path / "runs"), "--budget", "400", "--no-cache", "-q"])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 3 and "failed" in err[-1] and "the run is resumable" in err[-1]  # search or final report
        (d,) = (tmp_path / "runs").iterdir()
        assert not (d / SUMMARY).exists()
        with proxy._lock:
            proxy._planned.clear()  # the outage ends
        assert main(["optimize", "--resume", str(d), "-q"]) == 0
    assert json.loads((d / SUMMARY).read_text())["best_test"] is not None


def test_some_failing_examples_in_the_final_report_stop_the_run_resumably(tmp_path):
    """Issue 29 class 3: a final report in which some examples failed is no result (its scores would be
    None): the run stops before logging that batch, and a resume once the model answers finishes it."""
    run = make_run(_paraphrase(), target=FakeBackend(fail_rate=0.1), run_dir=tmp_path, budget=Budget(max_examples=200))
    run.max_failures = 10**6  # the search's failures are data; only the report's stop the run
    with pytest.raises(RunStopped, match=r"^\d+ of \d+ examples failed in the final (dev|test) report") as e:
        run.run()
    bad, total = (int(x) for x in str(e.value).split(" examples")[0].split(" of "))
    assert 0 < bad < total  # a partial failure, not a batch-wide one
    run.log.close()
    assert not (tmp_path / SUMMARY).exists()
    resumed = make_run(_paraphrase(), run_dir=tmp_path, resume=True, budget=Budget(max_examples=200))
    report = resumed.run()
    assert report.best_test is not None and report.seed_test is not None and report.best_dev == report.best_dev


def test_half_the_api_calls_failing_ends_in_exit_3_not_null_scores(tmp_path, capsys, quick_thread_switches):
    """Issue 29 class 3 through the CLI and the fault proxy: 50% HTTP 500s, retries off. Before, the run
    ended with exit 0 and `best_test: None`; now it stops (exit 3, one line, resumable) and a resume after
    the faults end writes every score."""
    from promptopt.testing.faultproxy import FaultProxy
    from promptopt.testing.openai_server import FakeOpenAIServer

    with FakeOpenAIServer("test-model", max_lifetime=120) as server, \
            FaultProxy(server.url, {"500": 0.5}, max_lifetime=120) as proxy:
        code = main(["optimize", "--task", "demo", "--strategy", "hill_climb", "--backend", "openai", "--model",
                     "test-model", "--set", f"backend.base_url={proxy.url}", "--set", "backend.max_retries=0",
                     "--set", "max_failures=100000", "--run-dir", str(tmp_path / "runs"), "--budget", "60",
                     "--no-cache", "-q"])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 3 and len(err) == 1, err
        assert re.search(r": \d+ of \d+ examples failed in the final (dev|test) report", err[0]) and "the run is resumable" in err[0]
        (d,) = (tmp_path / "runs").iterdir()
        assert not (d / SUMMARY).exists()
        proxy.rates = {}  # the faults end
        assert main(["optimize", "--resume", str(d), "-q"]) == 0
    summary = json.loads((d / SUMMARY).read_text())
    assert None not in (summary["best_test"], summary["seed_test"], summary["best_dev"], summary["seed_dev"])


@pytest.mark.parametrize("text", ["{}", "[1]", '"x"'])
def test_a_config_json_without_a_config_is_one_clear_line(tmp_path, text, capsys):
    (tmp_path / "config.json").write_text(text)
    assert main(["optimize", "--resume", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert 'has no "config" object' in err and len(err.strip().splitlines()) == 1
