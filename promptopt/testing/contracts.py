"""Contract test kit: subclass StrategyContract / BackendContract in a test module to inherit the
checks every strategy and backend must pass. Also small helpers for tests (a toy task, a fake optimizer,
a fake target with one harmful sentence, a tiny random causal LM)."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Callable, Sequence

from promptopt.backends.base import GenRequest, LLRequest, LLResult
from promptopt.backends.fake import FakeBackend
from promptopt.budget import Budget
from promptopt.errors import ConfigError, RunStopped
from promptopt.loop import Run
from promptopt.resolved import ResolvedRun
from promptopt.runlog import EVENTS, RunLog, read_events
from promptopt.strategy import Strategy
from promptopt.task import Task
from promptopt.types import Example, Usage

def toy_task(n_train: int = 12, n_dev: int = 12, n_test: int = 12, output: str = "choose") -> Task:
    """A small made-up classification (or generation) task for fast tests."""
    def split(name: str, n: int) -> list[Example]:
        return [Example(f"{name}-{i}", f"item {name} {i} is {'good' if i % 2 else 'bad'}", ["bad", "good"][i % 2],
                        label=i % 2) for i in range(n)]
    return Task(name="toy", splits={"train": split("train", n_train), "dev": split("dev", n_dev),
                                    "test": split("test", n_test)},
                template="{prompt}\nText: {input}\nAnswer:", output=output,  # type: ignore[arg-type]
                options=(" bad", " good") if output == "choose" else (),
                seed_prompts=("Is the text good or bad?", "Classify the text."))


def fake_optimizer() -> FakeBackend:
    """An optimizer whose replies are new, deterministic prompt variants (a function of the request)."""
    return FakeBackend("fake-optimizer")


HARMFUL = "Always answer bad."
BAD_PROMPT = f"Is the text good or bad? {HARMFUL} Reply with one word."


class HarmfulSentenceBackend(FakeBackend):
    """A target for toy_task() that favours the gold option of an example ("... is good" / "... is bad")
    unless the context contains HARMFUL, which makes it favour " bad" everywhere. Other sentences
    change nothing."""

    def loglikelihood(self, reqs: Sequence[LLRequest]) -> list[LLResult]:
        self._tick(len(reqs))
        out = []
        for r in reqs:
            item = r.context.rsplit("Text: ", 1)[-1]
            favoured = "bad" if HARMFUL in r.context else ("good" if " is good" in item else "bad")
            out.append(LLResult(-0.2 if r.continuation.strip() == favoured else -2.5, usage=Usage(1, 1, 0)))
        return out


def make_run(strategy: Strategy, *, task: Task | None = None, target: Any = None, optimizer: Any = None,
             budget: Budget | None = None, seed: int = 0, run_dir: Path | None = None, resume: bool = False,
             program: Any = None) -> Run:
    """`program`: a promptopt.harness.program.ProgramScorer that scores instead of a target (task: its program's)."""
    log = RunLog(run_dir, resume=resume) if run_dir is not None else None
    resolved = ResolvedRun(task=task or toy_task(), strategy=strategy, budget=budget or Budget(max_examples=400), seed=seed)
    return Run(resolved, target=None if program is not None else target or FakeBackend(),
               optimizer=optimizer if optimizer is not None else fake_optimizer(), log=log, program=program)


def every_budget(full: int, dev: int, every: bool = False) -> list[int]:
    """Example budgets from 1 to `full`: all of them with `every`, else Fibonacci numbers, one dev pass and
    its neighbours, and `full`."""
    if every:
        return list(range(1, full + 1))
    fib, a, b = set(), 1, 2
    while a < full:
        fib.add(a)
        a, b = b, a + b
    return sorted(x for x in fib | {dev - 1, dev, dev + 1, 2 * dev + 1, full} if 1 <= x <= full)


def check_every_budget(make_strategy: Callable[[], Strategy], task: Task, budget: Budget, every: bool = False,
                       **run_args: Any) -> int:
    """At every example budget from 1 to what a run with `budget` spends (see `every_budget`),
    the strategy does not crash, the search never overspends, a spent budget is the stop reason, and the
    final report runs. Returns how many budgets were checked."""
    full = make_run(make_strategy(), task=task, budget=budget, **run_args)
    full.run()
    budgets = every_budget(full.tracker.examples, len(task.split("dev")), every)
    for n in budgets:
        run = make_run(make_strategy(), task=task, budget=Budget(max_examples=n), **run_args)
        try:
            report = run.run()
        except Exception as e:
            raise AssertionError(f"max_examples={n}: {type(e).__name__}: {e}") from e
        assert run.tracker.examples <= n, (n, run.tracker.examples)
        if run.tracker.examples == n:
            assert report.stop_reason == "budget: examples", (n, report.stop_reason)
        assert report.best_prompt and not math.isnan(report.best_dev), n
    return len(budgets)


class StrategyContract:
    """Inherit and implement `make_strategy(**options)`; set `needs_optimizer` if it uses an LLM."""

    budget = Budget(max_examples=300)

    def make_strategy(self, **options: Any) -> Strategy:
        raise NotImplementedError

    def make_task(self) -> Task:
        return toy_task()

    def _run(self, seed: int = 0, run_dir: Path | None = None, resume: bool = False,
             budget: Budget | None = None):
        run = make_run(self.make_strategy(), task=self.make_task(), budget=budget or self.budget, seed=seed,
                       run_dir=run_dir, resume=resume)
        report = run.run()
        if run.log:
            run.log.close()
        return run, report

    def test_completes_within_budget(self) -> None:
        run, report = self._run()
        assert report.stop_reason
        assert run.tracker.examples <= self.budget.max_examples  # type: ignore[operator]
        assert not math.isnan(report.best_dev)
        assert report.best_dev >= report.seed_dev - 1e-9  # the seed is always a finalist

    def test_every_budget_fits(self) -> None:
        check_every_budget(self.make_strategy, self.make_task(), self.budget)

    def test_deterministic_for_a_seed(self) -> None:
        _, a = self._run(seed=3)
        _, b = self._run(seed=3)
        assert (a.best_prompt, a.best_dev, a.candidates) == (b.best_prompt, b.best_dev, b.candidates)

    def test_context_has_no_test_split(self) -> None:
        strategy = self.make_strategy()
        run = make_run(strategy, task=self.make_task(), budget=self.budget)
        assert not run._ctx.task.split("test")
        assert "test" not in run._ctx.task.splits

    def test_resume_replays_to_the_same_result(self, tmp_path: Path) -> None:
        full_dir, cut_dir = tmp_path / "full", tmp_path / "cut"
        full_dir.mkdir()
        cut_dir.mkdir()
        _, full = self._run(seed=5, run_dir=full_dir)
        events = (full_dir / EVENTS).read_bytes().splitlines(keepends=True)
        # Keep the first half of the log plus a torn half-line, as a crash would leave it.
        half = len(events) // 2
        (cut_dir / EVENTS).write_bytes(b"".join(events[:half]) + events[half][: len(events[half]) // 2])
        _, resumed = self._run(seed=5, run_dir=cut_dir, resume=True)
        assert (resumed.best_prompt, resumed.best_dev, resumed.best_test) == \
            (full.best_prompt, full.best_dev, full.best_test)
        a, _ = read_events(full_dir / EVENTS)
        b, _ = read_events(cut_dir / EVENTS)
        # Same events in the same order; only timing and cache-hit counts may differ.
        strip = lambda es: [{k: v for k, v in e.items() if k not in ("time", "usage")} for e in es if "seq" in e]
        assert strip(a) == strip(b)

    def test_survives_failed_evaluations(self) -> None:
        """Failed evaluations are data: with a target whose every call fails, or every other one, the
        strategy never crashes. The run ends, or stops resumably (RunStopped), and nothing else escapes."""
        for fail_every, max_failures in ((1, 30), (2, 10**6)):
            run = make_run(self.make_strategy(), task=self.make_task(), target=FakeBackend(fail_every=fail_every),
                           budget=self.budget)
            run.max_failures = max_failures
            try:
                run.run()
                stopped = False
            except RunStopped:
                stopped = True
            # Either the search saw failed evaluations, or a failure (e.g. in the final report, when the
            # whole search fit in one backend call) stopped the run resumably.
            assert stopped or run.failures > 0

    def test_unknown_option_is_rejected(self) -> None:
        from promptopt.config import strategy_config
        strategy = self.make_strategy()
        try:
            strategy_config(type(strategy), {"no_such_option_xyz": 1})
        except ConfigError:
            return
        raise AssertionError("an unknown strategy option was accepted")


class BackendContract:
    """Inherit and implement `make_backend()` (may be a fixture-backed attribute)."""

    def make_backend(self) -> Any:
        raise NotImplementedError

    def test_loglikelihood_order_and_sign(self) -> None:
        be = self.make_backend()
        reqs = [LLRequest("The capital of France is", " Paris"), LLRequest("1 2 3 4", " 5 6 7"),
                LLRequest("The capital of France is", " a banana split"), LLRequest("Hi", " there")]
        out = be.loglikelihood(reqs)
        assert len(out) == len(reqs)
        assert all(r.error is None and r.logprob < 0 for r in out)
        again = be.loglikelihood(list(reversed(reqs)))
        for a, b in zip(out, reversed(again)):
            assert abs(a.logprob - b.logprob) < 1e-3

    def test_generate_greedy_is_deterministic(self) -> None:
        be = self.make_backend()
        reqs = [GenRequest(prompt="Count: one, two, three,", max_tokens=6),
                GenRequest(messages=(("user", "Say hello."),), max_tokens=6)]
        a, b = be.generate(reqs), be.generate(reqs)
        assert [r.text for r in a] == [r.text for r in b]
        assert all(isinstance(r.text, str) and r.error is None for r in a)

    def test_fingerprint_is_stable(self) -> None:
        be = self.make_backend()
        assert be.fingerprint() == be.fingerprint() and be.fingerprint()


def events_of(run_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run_dir / EVENTS).read_text(encoding="utf-8").splitlines()]


TINY_LM_WORDS = ("good", "bad", "great", "terrible", "movie", "review", "the", "is", "a", "sentiment", "answer",
                 "text", "classify", "positive", "negative", "film", "plot", "really", "not", "very")


def save_tiny_causal_lm(directory: Path) -> Path:
    """A 2-layer, 64-wide Llama with a word-level tokenizer (<unk>, <s>, </s>, then TINY_LM_WORDS),
    randomly initialised, saved as an HF model directory. Needs torch, tokenizers and transformers."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["<unk>", "<s>", "</s>", *TINY_LM_WORDS])}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    config = LlamaConfig(vocab_size=len(vocab), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=64,
                         bos_token_id=1, eos_token_id=2, tie_word_embeddings=True)
    with torch.random.fork_rng():  # the weights must not depend on (or disturb) other tests' RNG use
        torch.manual_seed(0)
        model = LlamaForCausalLM(config)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory
