"""Issue 29, reliability round three: the files a user names (promptopt/paths.py), a meta-prompt edited
before --resume, and strict numbers in every strategy's settings."""
from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from promptopt import registry
from promptopt.cli import main
from promptopt.config import build_config
from promptopt.errors import ConfigError
from promptopt.paths import read_text, write_text
from promptopt.runlog import SUMMARY

FAKE = ["optimize", "--task", "demo", "--strategy", "paraphrase", "--backend", "fake", "--model", "m",
        "--budget", "60", "--no-cache", "-q"]


def _finished_run(tmp_path: Path) -> Path:
    assert main([*FAKE, "--run-dir", str(tmp_path / "runs")]) == 0
    (d,) = (tmp_path / "runs").iterdir()
    return d


def _cli_bounded(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The CLI in a child with 3 GiB of address space and a deadline: a regression (reading /dev/zero
    for ever, waiting on a FIFO) fails this test instead of taking the machine down with it."""
    def limit() -> None:
        import resource
        resource.setrlimit(resource.RLIMIT_AS, (3 * 2**30, 3 * 2**30))
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run([sys.executable, "-m", "promptopt.cli", *args], capture_output=True, text=True,
                          timeout=60, preexec_fn=limit, env=env, cwd=tmp_path)


# -- class 1: export --out respects what is at the path ---------------------------------------------

def _device(tmp_path: Path) -> Path:
    if os.geteuid() != 0:
        pytest.skip("making a device node needs root")
    node = tmp_path / "null"
    os.mknod(node, 0o644 | stat.S_IFCHR, os.makedev(1, 3))  # /dev/null's numbers, in a scratch folder
    return node


@pytest.mark.parametrize("make", ["fifo", "device", "directory"])
def test_export_out_refuses_a_special_file_and_leaves_it(tmp_path, capsys, make):
    d = _finished_run(tmp_path)
    capsys.readouterr()
    out = tmp_path / "out"
    if make == "fifo":
        os.mkfifo(out)
    elif make == "device":
        out = _device(tmp_path)
    else:
        out.mkdir()
    before = os.lstat(out)
    proc = _cli_bounded(tmp_path, "export", str(d), "--out", str(out))  # a regression may block on a FIFO
    err = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(err) == 1 and f"--out {out}" in err[0], proc.stderr
    after = os.lstat(out)
    assert (after.st_mode, after.st_ino, after.st_rdev) == (before.st_mode, before.st_ino, before.st_rdev)
    assert sorted(p.name for p in out.parent.iterdir()) == sorted(["runs", out.name])  # no temp file left


def test_export_out_keeps_a_files_mode_and_writes_through_a_symlink(tmp_path, capsys):
    d = _finished_run(tmp_path)
    shared = tmp_path / "shared.json"
    shared.write_text("old")
    shared.chmod(0o644)
    assert main(["export", str(d), "--out", str(shared)]) == 0
    assert stat.S_IMODE(shared.stat().st_mode) == 0o644 and json.loads(shared.read_text())["best_id"]
    target, link = tmp_path / "target.json", tmp_path / "link.json"
    target.write_text("old")
    link.symlink_to(target)
    assert main(["export", str(d), "--out", str(link)]) == 0
    assert link.is_symlink() and json.loads(target.read_text())["best_id"]


def test_report_out_refuses_a_fifo_instead_of_hanging(tmp_path, capsys):
    d = _finished_run(tmp_path)
    fifo = tmp_path / "report.html"
    os.mkfifo(fifo)
    proc = _cli_bounded(tmp_path, "report", str(d), "--out", str(fifo))  # before: blocked for ever on open
    assert proc.returncode == 2 and f"--out {fifo} is a FIFO" in proc.stderr
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode) and not list(tmp_path.glob("*.png"))


def test_a_new_export_file_gets_the_umask_mode_not_0600(tmp_path):
    old = os.umask(0o022)
    try:
        write_text(tmp_path / "new.txt", "x", "--out")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "new.txt").stat().st_mode) == 0o644


# -- class 5: special files as --config or a prompt_files template --------------------------------

@pytest.mark.parametrize("special", ["/dev/zero", "fifo"])
@pytest.mark.parametrize("where", ["config", "prompt_files"])
def test_a_device_or_fifo_as_config_or_template_is_one_line(tmp_path, special, where):
    path = special
    if special == "fifo":
        path = str(tmp_path / "fifo")
        os.mkfifo(path)
    args = ["--config", path] if where == "config" else [*FAKE, "--set", f"paraphrase.prompt_files.rewrite={path}"]
    proc = _cli_bounded(tmp_path, *(["optimize", *args] if where == "config" else args),
                        "--run-dir", str(tmp_path / "runs"))
    kind = "a character device" if special == "/dev/zero" else "a FIFO"
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()] and f"{path} is {kind}, not a regular file" \
        in proc.stderr
    assert not (tmp_path / "runs").exists()


def test_read_text_refuses_an_oversized_file(tmp_path):
    big = tmp_path / "big.toml"
    big.write_bytes(b"#" * 2048)
    with pytest.raises(ConfigError, match="larger than"):
        read_text(big, "config file", max_bytes=1024)


# -- class 4: a prompt_files template edited between a stop and --resume ----------------------------

def test_resume_refuses_an_edited_prompt_files_template_unless_accepted(tmp_path, capsys):
    template = tmp_path / "rewrite.txt"
    template.write_text("Rewrite this instruction: {prompt}", encoding="utf-8")
    d = _finished_run_with(tmp_path, "--set", f"paraphrase.prompt_files.rewrite={template}")
    (d / SUMMARY).unlink()  # as if killed before the end
    assert main(["optimize", "--resume", str(d), "-q"]) == 0  # unchanged: resumes
    (d / SUMMARY).unlink()
    template.write_text("Make this instruction better: {prompt}", encoding="utf-8")
    capsys.readouterr()
    assert main(["optimize", "--resume", str(d), "-q"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "meta-prompt templates changed" in err[0] and "--accept-changed-inputs" in err[0]
    assert main(["optimize", "--resume", str(d), "--accept-changed-inputs", "-q"]) == 0
    resumes = [json.loads(line) for line in (d / "events.jsonl").read_text().splitlines() if '"run.resume"' in line]
    assert "meta-prompt templates changed" in resumes[-1]["accepted_changes"][0]


def _finished_run_with(tmp_path: Path, *extra: str) -> Path:
    assert main([*FAKE, "--run-dir", str(tmp_path / "runs"), *extra]) == 0
    (d,) = (tmp_path / "runs").iterdir()
    return d


# -- round two: strict numbers in every strategy's settings, and a finite budget -------------------

def _numeric_fields(kind: type) -> list[tuple[str, str]]:
    out = []
    for name in registry.names("strategies"):
        fields = registry.get("strategies", name).Config.model_fields
        field = next((f for f, info in fields.items() if info.annotation in (kind, kind | None)), None)
        if field is not None:
            out.append((name, field))
    return out


@pytest.mark.parametrize("strategy,field", _numeric_fields(int))
@pytest.mark.parametrize("value,reason", [(True, "a number, not true"), (1e20, "a whole number, not 1e+20"),
                                          (10**12, "at most 1,000,000")])
def test_every_strategys_counts_are_strict(strategy, field, value, reason):
    with pytest.raises(ConfigError, match=re.escape(f"{field}: {reason}")):
        build_config({"strategy": strategy, "strategy_options": {field: value}})


@pytest.mark.parametrize("strategy,field", _numeric_fields(float))
@pytest.mark.parametrize("value", [float("inf"), float("nan"), False])
def test_every_strategys_floats_are_finite_numbers(strategy, field, value):
    with pytest.raises(ConfigError, match=field):
        build_config({"strategy": strategy, "strategy_options": {field: value}})


def test_max_usd_inf_is_refused(capsys):
    assert main([*FAKE, "--max-usd", "inf", "--dry-run"]) == 2
    assert "max_usd: Input should be a finite number" in capsys.readouterr().err


# -- round two: a seed prompt over an API model's window is bad input, not a resumable stop ---------

def test_a_100k_character_prompt_on_an_api_model_is_exit_2_not_resumable(tmp_path, capsys, quick_thread_switches):
    from promptopt.testing.openai_server import FakeOpenAIServer

    with FakeOpenAIServer("test-model", max_lifetime=120) as server:
        code = main(["optimize", "--task", "demo", "--strategy", "hill_climb", "--backend", "openai", "--model",
                     "test-model", "--set", f"backend.base_url={server.url}", "--prompt", "word " * 20_000,
                     "--run-dir", str(tmp_path / "runs"), "--budget", "100", "--no-cache", "-q"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert "the seed prompt does not fit the model's window" in err[0] and "maximum context length" in err[0]
    assert "resumable" not in err[0] and "no resume can fix that" in err[0]
    (d,) = (tmp_path / "runs").iterdir()
    assert not (d / SUMMARY).exists()


# -- the URI checker every reader shares -------------------------------------------------------------

def test_check_uri_takes_driver_suffixes_and_never_shows_a_password():
    from promptopt.paths import check_uri, redact
    assert check_uri("postgresql+psycopg2://u@db/mlflow", "--mlflow", ("postgresql",)).hostname == "db"
    assert redact("http://bob:s3cret@host:5000/x") == "http://bob:***@host:5000/x"
    for bad, message in (("gopher://bob:s3cret@x", "unsupported scheme 'gopher'"), ("  ", "the URI is empty"),
                         ("http://bob:s3cret@host:99999", "not a valid URI")):
        with pytest.raises(ConfigError, match=message) as e:
            check_uri(bad, "--mlflow", ("http",))
        assert "s3cret" not in str(e.value)


@pytest.mark.parametrize("strategy,options,message", [
    ("hill_climb", {"racing": {"block": True}}, "racing.block: a number, not true"),
    ("apo", {"selection": {"budget": 1e20}}, "selection.budget: a whole number, not 1e+20"),
    ("hill_climb", {"racing": {"alpha": float("inf")}}, "racing.alpha: Input should be a finite number"),
])
def test_the_settings_blocks_a_strategy_embeds_are_strict_too(strategy, options, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        build_config({"strategy": strategy, "strategy_options": options})


def test_export_out_keeps_another_users_ownership_when_root(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("only root can write a file that keeps another user's ownership")
    shared = tmp_path / "theirs.json"
    shared.write_text("old")
    os.chown(shared, 4321, 4321)
    write_text(shared, "new", "--out")
    st = shared.stat()
    assert (st.st_uid, st.st_gid, shared.read_text()) == (4321, 4321, "new")
