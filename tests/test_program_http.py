"""examples/program_http.py for real: a pipeline making its own HTTP calls through the `openai` client to the
repo's test server, optimized with optimize(program=...) (fast tier)."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from promptopt.testing.openai_server import FakeOpenAIServer

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "program_http.py"


def _example():
    spec = importlib.util.spec_from_file_location("program_http_example", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_http_pipeline_is_optimized_against_the_test_server(tmp_path):
    example = _example()
    with FakeOpenAIServer("test-model", chat_only=True, max_lifetime=60) as server:
        report = example.main(server.url, "test-model", run_dir=str(tmp_path / "runs"), cache=False)
        chats = [b for b in server.bodies if "messages" in b]
    assert report.stop_reason == "budget: examples" and report.failures == 0
    assert set(report.best_components) == {"system", "ask", "retry"}
    assert report.seed_test is not None and report.best_test is not None
    events = [json.loads(line) for line in (Path(report.run_dir) / "events.jsonl").read_text().splitlines()]
    results = [r for e in events if e["type"] == "eval" for r in e["results"]]
    # one AsyncOpenAI client serves every step: the scorer keeps one event loop for the run
    assert results and not [r["error"] for r in results if r.get("error")]
    replies = [r["trace"]["replies"] for r in results]
    # every HTTP call the pipeline made is in a logged trace, once: nothing is called twice for one result
    assert sum(len(rs) for rs in replies) == len(chats)
    assert any(len(rs) == 2 for rs in replies)  # the fallback call ran where the first reply named no answer
    # the candidates' texts reached the server: the system component as the system message
    systems = {dict(map(tuple, e["components"]))["system"] for e in events if e["type"] == "candidate"}
    sent = {b["messages"][0]["content"] for b in chats}
    assert "You sort customer messages for a support team." in sent and sent <= systems
