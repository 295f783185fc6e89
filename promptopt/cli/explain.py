"""`promptopt explain`: how much each sentence (or phrase) of a prompt raises or lowers the loss
and the accuracy, measured by deleting it (or masking it) and re-scoring.

The full prompt and every masked variant go to the target model in one scorer call, so the
backend can share work across them (the hf backend reuses the common token prefix).
"""
from __future__ import annotations

import math
import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, get_args

from rich.console import Console
from rich.table import Table

from promptopt import registry
from promptopt.api import load_task
from promptopt.measure.attribution import (Granularity, LossKind, SegmentImpact, default_loss, impacts, mask, split_prompt,
                          summarize, worst_first)
from promptopt.backends.base import LOGLIKELIHOOD, Backend
from promptopt.scoring.cache import CachedBackend, ResponseCache, default_cache_path
from promptopt.task.data import sample
from promptopt.errors import CapabilityError, ConfigError, PromptOptError
from promptopt.paths import regular_or_absent
from promptopt.runlog import write_json_atomic
from promptopt.scoring.scorer import Job, score_jobs
from promptopt.task import Task
from promptopt.types import prompt_id


@dataclass(frozen=True)
class Explanation:
    """A prompt's loss and accuracy on some examples, and each segment's effect when removed."""

    task: str
    split: str
    examples: int
    prompt: str
    loss_kind: LossKind
    mask_token: str
    loss: float
    accuracy: float
    segments: tuple[SegmentImpact, ...]  # in prompt order

    def ranked(self) -> list[SegmentImpact]:
        """Most harmful first."""
        return worst_first(self.segments)

    def ranks(self) -> list[int]:
        """Each segment's rank in prompt order (1 = most harmful)."""
        order = {id(s): i + 1 for i, s in enumerate(self.ranked())}
        return [order[id(s)] for s in self.segments]

    def to_json(self) -> dict[str, Any]:
        def num(x: float | None) -> float | None:
            return None if x is None or math.isnan(x) else round(x, 6)
        return {
            "task": self.task, "split": self.split, "examples": self.examples, "prompt": self.prompt,
            "prompt_id": prompt_id(self.prompt), "loss_kind": self.loss_kind, "mask_token": self.mask_token,
            "loss": num(self.loss), "accuracy": num(self.accuracy),
            "segments": [{"text": s.segment.text, "start": s.segment.start, "end": s.segment.end,
                          "rank": rank, "verdict": s.verdict, "loss_without": num(s.loss_without),
                          "delta_loss": num(s.delta_loss), "delta_accuracy": num(s.delta_accuracy),
                          "masked_prompt": s.masked_prompt} for s, rank in zip(self.segments, self.ranks())],
        }


def explain_prompt(task: Task, backend: Backend, prompt: str, *, split: str = "dev", limit: int | None = None,
                   by: Granularity = "sentence", mask_token: str = "", loss: str = "auto",
                   beta: float = 1.0) -> Explanation:
    """Score `prompt` and each of its segment-masked variants on `split` (`limit` examples at most)."""
    _check_inputs(prompt, by, loss)
    if LOGLIKELIHOOD not in backend.capabilities:
        raise CapabilityError(f"explain needs log-likelihoods but the target model ({backend.fingerprint()}) "
                              "cannot give them")
    # A seeded, class-balanced sample: split files are often sorted by label, so the first N may be one class.
    balance = (lambda ex: ex.label) if task.output == "choose" else None
    examples = tuple(sample(task.split(split), limit, f"explain:{split}", balance_by=balance))
    if not examples:
        raise ConfigError(f"explain: task {task.name} has no {split} examples")
    kind: LossKind = default_loss(task) if loss == "auto" else loss  # type: ignore[assignment]
    segments = split_prompt(prompt, by)
    variants = [prompt, *(mask(prompt, s, mask_token) for s in segments)]
    jobs = [Job(prompt_id(v), v, split, examples, objective) for objective in ("loss", "task") for v in variants]
    evals = score_jobs(task, backend, jobs)
    failed = next((e for e in evals if e.state == "failed"), None)
    if failed is not None:
        raise PromptOptError(f"explain: scoring failed: {failed.error}")
    by_id = {ex.id: ex for ex in examples}
    # Accuracy comes from the task metric, so it also covers generation tasks.
    full, *masked = [replace(summarize(lo.results, by_id, kind, beta), accuracy=acc.score)
                     for lo, acc in zip(evals[:len(variants)], evals[len(variants):])]
    found = impacts(full, [(seg, v, s) for seg, v, s in zip(segments, variants[1:], masked)])
    return Explanation(task.name, split, len(examples), prompt, kind, mask_token, full.loss,
                       evals[len(variants)].score, tuple(found))


def _check_inputs(prompt: str, by: str, loss: str) -> None:
    if not prompt.strip():
        raise ConfigError("explain: the prompt is empty")
    if by not in get_args(Granularity):
        raise ConfigError(f"explain: unknown segment size {by!r}; use {', '.join(get_args(Granularity))}")
    if loss not in ("auto", *get_args(LossKind)):
        raise ConfigError(f"explain: unknown loss {loss!r}; use auto, {', '.join(get_args(LossKind))}")


def explain(prompt: str, task: str | Task = "demo", *, split: str = "dev", limit: int | None = None,
            by: Granularity = "sentence", mask_token: str = "", loss: str = "auto", beta: float = 1.0,
            model: str = "embedded", backend: str = "hf", data_dir: str | None = None,
            cache: bool = True, target: Backend | None = None) -> Explanation:
    """Load the task and the target model (through the response cache) and explain `prompt`.

    Cheap checks run before the model loads: an unknown task or an empty prompt fails at once."""
    _check_inputs(prompt, by, loss)
    t = task if isinstance(task, Task) else load_task(task, data_dir=data_dir)
    if target is None:
        inner = registry.get("backends", backend)(model=model)
        target = CachedBackend(inner, ResponseCache(default_cache_path()) if cache else None)
    return explain_prompt(t, target, prompt, split=split, limit=limit, by=by, mask_token=mask_token,
                          loss=loss, beta=beta)


def default_json_path(expl: Explanation, root: Path = Path("runs")) -> Path:
    return root / "explain" / f"{expl.task}-{prompt_id(expl.prompt)}.json"


def write_explanation(expl: Explanation, path: Path) -> None:
    regular_or_absent(path, "explain: --out")  # a device or FIFO there is refused, not replaced
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(path, expl.to_json())
    except OSError as e:
        raise ConfigError(f"explain: cannot write {path}: {e.strerror or e}") from None


def _signed(x: float | None, digits: int = 3) -> str:
    return "-" if x is None or math.isnan(x) else f"{x:+.{digits}f}"


def print_explanation(expl: Explanation, console: Console | None = None) -> None:
    console = console or Console(width=max(100, shutil.get_terminal_size().columns))
    t = Table(title=f"{expl.task} · {expl.split} · {expl.examples} examples · loss ({expl.loss_kind}) "
                    f"{expl.loss:.4f} · accuracy {expl.accuracy:.3f}")
    t.add_column("#", justify="right")
    t.add_column("segment", overflow="fold")
    t.add_column("Δloss if removed", justify="right")
    t.add_column("Δacc if removed", justify="right")
    t.add_column("verdict")
    t.add_column("rank", justify="right")
    styles = {"helps": "green", "hurts": "red", "neutral": "dim"}
    for i, (s, rank) in enumerate(zip(expl.segments, expl.ranks()), 1):
        t.add_row(str(i), s.segment.text, _signed(s.delta_loss, 4), _signed(s.delta_accuracy),
                  f"[{styles[s.verdict]}]{s.verdict}[/]", str(rank))
    console.print(t)
    console.print("Δ = score without the segment − score with it: Δloss > 0 means the segment lowers the "
                  "loss (helps); rank 1 is the most harmful segment.")
