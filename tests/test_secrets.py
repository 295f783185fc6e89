"""API keys never reach any file a run writes, nor its output: a run on the openai backend, then grep."""

from promptopt.cli import main
from promptopt.testing.openai_server import FakeOpenAIServer

KEY = "sk-test-7c1f0e9a2b4d-DO-NOT-LEAK"


def test_key_is_in_no_file_and_no_output(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PROMPTOPT_TEST_KEY", KEY)
    cache = tmp_path / "cache"
    monkeypatch.setenv("PROMPTOPT_CACHE_DIR", str(cache))
    with FakeOpenAIServer("test-model", api_key=KEY) as server:
        code = main(["-v", "optimize", "--task", "demo", "--strategy", "paraphrase", "--backend", "openai",
                     "--model", "test-model", "--set", f"backend.base_url={server.url}",
                     "--set", "backend.api_key_env=PROMPTOPT_TEST_KEY", "--set", f"optimizer.options={{\"base_url\": \"{server.url}\", \"api_key_env\": \"PROMPTOPT_TEST_KEY\"}}",
                     "--run-dir", str(tmp_path / "runs"), "--budget", "200", "-q"])
        out, err = capsys.readouterr()
        assert code == 0, err
        # A wrong key: the error line names the variable, never the key.
        monkeypatch.setenv("PROMPTOPT_TEST_KEY", "sk-wrong-key-ALSO-SECRET")
        code = main(["optimize", "--task", "demo", "--strategy", "hill_climb", "--backend", "openai",
                     "--model", "test-model", "--set", f"backend.base_url={server.url}",
                     "--set", "backend.api_key_env=PROMPTOPT_TEST_KEY", "--optimizer-model", "none",
                     "--run-dir", str(tmp_path / "runs2"), "-q"])
        out2, err2 = capsys.readouterr()
    assert code == 2 and "sk-wrong-key" not in err2 + out2
    assert "PROMPTOPT_TEST_KEY" in err2 or "401" in err2, err2
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any(p.name == "events.jsonl" for p in files) and any(p.suffix == ".sqlite" for p in files)
    for p in files:
        assert KEY.encode() not in p.read_bytes(), f"key leaked into {p}"
    assert KEY not in out + err
