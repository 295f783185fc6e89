"""PEZ (Hard Prompts Made Easy): gradient steps on a local model, projected prompts scored by the loop."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")

from promptopt.backends.base import CHAT, GENERATE, LLRequest  # noqa: E402
from promptopt.backends.fake import FakeBackend  # noqa: E402
from promptopt.budget import Budget  # noqa: E402
from promptopt.config import strategy_config  # noqa: E402
from promptopt.errors import CapabilityError  # noqa: E402
from promptopt.registry import get  # noqa: E402
from promptopt.testing import StrategyContract, events_of, make_run, toy_task  # noqa: E402
from promptopt.testing.contracts import TINY_LM_WORDS  # noqa: E402

from promptopt.strategies.pez import PEZ, PAPER, _Model  # noqa: E402

SMALL = {"prompt_length": 3, "steps": 6, "eval_every": 2, "batch_size": 4}


def make(tiny_lm_dir: Path, **options: Any) -> PEZ:
    return PEZ(strategy_config(PEZ, {**SMALL, "model": str(tiny_lm_dir), **options}))


class TestPEZContract(StrategyContract):
    @pytest.fixture(autouse=True)
    def _model(self, tiny_lm_dir: Path) -> None:
        self.tiny_lm_dir = tiny_lm_dir

    def make_strategy(self, **options: Any) -> PEZ:
        return make(self.tiny_lm_dir, **options)


def test_registered_by_name_and_paper_preset(tiny_lm_dir: Path) -> None:
    assert get("strategies", "pez") is PEZ
    paper = strategy_config(PEZ, {"preset": "paper"})
    assert (paper.prompt_length, paper.optimizer, paper.lr, paper.steps) == (10, "adafactor", 0.3, 5000) \
        == tuple(PAPER[k] for k in ("prompt_length", "optimizer", "lr", "steps"))


def test_a_target_without_loglikelihoods_is_refused_at_start(tiny_lm_dir: Path) -> None:
    class ChatOnly(FakeBackend):
        capabilities = frozenset({GENERATE, CHAT})

    with pytest.raises(CapabilityError, match="log-likelihoods"):
        make_run(make(tiny_lm_dir), task=toy_task(output="generate"), target=ChatOnly())


def test_candidates_are_projected_text_scored_on_dev_and_logged(tiny_lm_dir: Path, tmp_path: Path) -> None:
    run = make_run(make(tiny_lm_dir), task=toy_task(), budget=Budget(max_examples=400), run_dir=tmp_path)
    report = run.run()
    run.log.close()
    assert report.stop_reason == "strategy finished"
    pez = [c for c in run.history.candidates() if c.origin == "pez.projected"]
    assert pez and all(run.history.n_scored(c.id, "dev") == 12 for c in pez)
    assert all(len(c.text.split()) == 3 and set(c.text.split()) <= set(TINY_LM_WORDS) for c in pez)  # real tokens, as text
    events = events_of(tmp_path)
    steps = [e for e in events if e.get("kind") == "pez.step"]
    assert [e["pez_step"] for e in steps] == list(range(1, 7)) and all(e["loss"] > 0 for e in steps)
    assert {c.meta["pez_step"] for c in pez} <= {2, 4, 6}


def test_the_gradient_taken_at_the_projection_moves_the_continuous_prompt(tiny_lm_dir: Path) -> None:
    strategy = make(tiny_lm_dir, optimizer="adamw", lr=1e-3)
    run = make_run(strategy, task=toy_task())
    state = _Model(strategy.config, run._ctx)
    batch = list(run._ctx.task.split("train"))[:4]
    before = state.prompt.detach().clone()
    at = state.model.get_input_embeddings().weight[state.project()].detach().requires_grad_(True)
    state._loss(run._ctx, at, batch).backward()
    state.step(run._ctx, batch)
    # AdamW's first step moves each coordinate by lr against the sign of the gradient (plus no decay).
    moved = state.prompt.detach() - before
    assert torch.allclose(moved, -1e-3 * torch.sign(at.grad), atol=1e-5)


def test_loss_forward_matches_the_backend_scoring_the_projected_text(tiny_lm_dir: Path) -> None:
    from promptopt.backends.hf import HFBackend

    strategy = make(tiny_lm_dir)
    task = toy_task()
    run = make_run(strategy, task=task)
    state = _Model(strategy.config, run._ctx)
    text = state.text()
    examples = list(task.split("dev"))[:3]
    projected = state.model.get_input_embeddings().weight[state.project()].detach()
    with torch.no_grad():
        ours = state._logprobs(task, projected, [(ex, opt) for ex in examples for opt in task.options])
    hf = HFBackend(str(tiny_lm_dir), device="cpu", dtype="float32")
    theirs = hf.loglikelihood([LLRequest(task.render(text, ex), opt) for ex in examples for opt in task.options])
    assert [float(lp.sum()) for lp in ours] == pytest.approx([r.logprob for r in theirs], abs=1e-4)


def test_an_api_target_is_refused_in_one_line_before_any_request(tmp_path: Path, capsys: Any) -> None:
    from promptopt.cli.commands import main
    from promptopt.strategy import needs

    assert needs(PEZ).local_target
    # Nothing listens on port 1: a request (or a probe) would fail differently; the refusal comes first.
    argv = ["optimize", "--task", "demo", "--strategy", "pez", "--backend", "openai", "--model", "gpt-4o-mini",
            "--set", "backend.base_url=http://127.0.0.1:1/v1", "--optimizer-model", "none",
            "--run-dir", str(tmp_path / "runs")]
    for extra in ([], ["--dry-run"]):
        assert main([*argv, *extra]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "strategy pez computes gradients on a local model" in err
        assert "openai:gpt-4o-mini at http://127.0.0.1:1/v1 is an API" in err
    assert not (tmp_path / "runs").exists()
