"""`promptopt report`: the HTML page on fake-backend runs, its escaping, and a headless Chromium render."""
import html
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from promptopt.budget import Budget
from promptopt.cli import main
from promptopt.config import strategy_config
from promptopt.registry import get
from promptopt.cli.report import write_report
from promptopt.testing import make_run

SCRIPT = "<script>alert(1)</script>"
SCRIPT_PROMPT = f"{SCRIPT} Is it a complaint?"


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """An APO run on the fake backend (so the lineage has critiques) seeded with a prompt holding a script tag."""
    tmp = tmp_path_factory.mktemp("report")
    code = main(["optimize", "--task", "demo", "--strategy", "apo", "--backend", "fake", "--model", "m",
                 "--run-dir", str(tmp / "runs"), "--set", f"cache_path={tmp / 'cache.sqlite'}", "-q",
                 "--budget", "300", "--prompt", SCRIPT_PROMPT])
    assert code == 0
    (run,) = (tmp / "runs").iterdir()
    return run


def test_report_has_best_prompt_top_candidates_and_costs_all_escaped(finished_run, tmp_path, capsys):
    out = tmp_path / "r" / "page.html"
    assert main(["report", str(finished_run), "--out", str(out), "--top", "50"]) == 0
    assert str(out) in capsys.readouterr().out
    page = out.read_text(encoding="utf-8")
    summary = json.loads((finished_run / "summary.json").read_text())
    assert html.escape(summary["best_prompt"]) in page
    events = [json.loads(line) for line in (finished_run / "events.jsonl").read_text().splitlines()]
    scored = {e["candidate_id"] for e in events if e["type"] == "eval" and e["split"] == "dev"}
    assert all(cid[:8] in page for cid in scored)  # --top 50 lists every scored candidate
    assert html.escape(SCRIPT_PROMPT) in page
    assert "<script" not in page.lower()
    assert "critique / edit that made it" in page and "Cost" in page and "finished:" in page
    png = out.with_name("page_dev_by_step.png")
    assert png.read_bytes().startswith(b"\x89PNG")
    assert page.count('src="data:image/png;base64,') == 1


def test_report_of_a_partial_run(tmp_path):
    cls = get("strategies", "paraphrase")
    run = make_run(cls(strategy_config(cls, {})), budget=Budget(max_examples=400), run_dir=tmp_path)
    for _ in range(3):
        run.step_once()
    run.log.close()  # stopped mid-search: no summary.json
    page = write_report(tmp_path).read_text(encoding="utf-8")
    assert "partial: no summary.json" in page
    assert "Lineage of the best prompt" in page and "data:image/png;base64," in page
    assert (tmp_path / "report_dev_by_step.png").exists()


def test_report_of_a_bad_path_is_one_line_exit_2(tmp_path, capsys):
    assert main(["report", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("promptopt: error:") and "not a run directory" in err


def _chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path:
        return path
    msg = "chromium is not installed (apt-get install chromium); the report render test needs it"
    if os.environ.get("PROMPTOPT_REQUIRE_CHROMIUM") == "1":  # CI sets this: a missing browser must not pass
        pytest.fail(msg)
    pytest.skip(msg)


def test_report_renders_in_headless_chromium(finished_run, tmp_path):
    import numpy as np
    from PIL import Image

    chromium = _chromium()
    page = write_report(finished_run, tmp_path / "report.html")
    shot = tmp_path / "shot.png"
    base = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
            f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1200,2000"]
    dom = subprocess.run([*base, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=180).stdout
    assert "<title>promptopt report" in dom and "Top " in dom and "<table" in dom
    assert "<script" not in dom.lower()  # the prompt's tag stayed text: no element was made from it
    assert html.escape(SCRIPT) in dom
    assert dom.count('<img src="data:image/png;base64,') == 1
    subprocess.run([*base, f"--screenshot={shot}", page.as_uri()], capture_output=True, timeout=180)
    assert shot.exists(), "chromium wrote no screenshot"
    rgb = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    assert len(np.unique(rgb.reshape(-1, 3), axis=0)) > 20, "the screenshot is blank"
    # The plot's best-so-far line is matplotlib's tab:red (214, 39, 40); nothing else on the page is red,
    # so finding it means the inlined PNG decoded and was painted.
    red = int(((abs(rgb[..., 0] - 214) < 25) & (rgb[..., 1] < 80) & (rgb[..., 2] < 80)).sum())
    assert red > 200, f"no plot pixels in the screenshot ({red} red pixels)"
