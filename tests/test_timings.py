"""Where the time goes: a run's wall time split into target scoring, optimizer generation, cache and
overhead, in the Report, summary.json, the terminal table and the HTML report; never in the events."""
import json

from promptopt.backends.fake import FakeBackend
from promptopt.budget import Budget
from promptopt.scoring.cache import CachedBackend, ResponseCache
from promptopt.cli import main
from promptopt.config import strategy_config
from promptopt.registry import get
from promptopt.testing import fake_optimizer, make_run
from promptopt.timing import PARTS, Timings

DELAY = 0.03


def _strategy(name: str = "apo"):
    cls = get("strategies", name)
    return cls(strategy_config(cls, {}))


def test_a_sleeping_target_shows_its_time_under_target_scoring(tmp_path):
    inner = FakeBackend(delay=DELAY)
    target = CachedBackend(inner, ResponseCache(tmp_path / "cache.sqlite"))
    run = make_run(_strategy(), target=target, optimizer=CachedBackend(fake_optimizer(), None),
                   budget=Budget(max_examples=120))
    report = run.run()
    t = report.timings
    assert inner.calls >= 2
    slept = DELAY * inner.calls
    assert t["target_scoring"] >= slept  # every sleep happened inside the loop's score()
    assert t["target_scoring"] < slept + t["wall"]  # and nothing was counted twice
    assert t["cache"] > 0 and t["optimizer_generation"] > 0
    parts = sum(t[p] for p in PARTS)
    assert parts <= t["wall"] + 1e-9 and abs(parts + t["overhead"] - t["wall"]) < 1e-3
    assert report.to_json()["timings"] == t


def test_cache_time_is_subtracted_from_the_call_it_happened_in():
    t = Timings()
    t.add("target_scoring", 2.0, cache=0.5)
    t.add("optimizer_generation", 1.0, cache=3.0)  # a cache delta is never more than the call around it
    out = t.to_json(wall=5.0)
    assert out == {"wall": 5.0, "target_scoring": 1.5, "optimizer_generation": 0.0, "cache": 1.5, "overhead": 2.0}


def test_summary_terminal_and_html_report_split_the_time_and_events_do_not(tmp_path, capsys):
    runs = tmp_path / "runs"
    code = main(["optimize", "--task", "demo", "--strategy", "apo", "--backend", "fake", "--model", "m",
                 "--run-dir", str(runs), "--set", f"cache_path={tmp_path / 'cache.sqlite'}",
                 "--set", f"backend.delay={DELAY}", "--budget", "120"])
    assert code == 0
    out = capsys.readouterr().out
    assert "target scoring" in out and "optimizer generation" in out and "overhead" in out
    (run,) = runs.iterdir()
    summary = json.loads((run / "summary.json").read_text())
    t = summary["timings"]
    assert set(t) == {"wall", *PARTS, "overhead"}
    assert t["target_scoring"] >= DELAY and sum(t[p] for p in PARTS) <= t["wall"] + 1e-9
    assert t["wall"] <= summary["seconds"] + 0.05
    events = (run / "events.jsonl").read_text()
    assert "timings" not in events and "target_scoring" not in events  # not part of replay identity
    assert main(["report", str(run)]) == 0
    page = (run / "report.html").read_text(encoding="utf-8")
    assert "Where the time goes" in page and "target scoring" in page and "overhead" in page
