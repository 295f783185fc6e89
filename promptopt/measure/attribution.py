"""Which parts of a prompt help? Split a prompt into segments, mask each one, and compare losses.

Shared by the PMPO strategy (mask analysis that guides its rewrites) and `promptopt explain`.
A segment's effect is measured as "what changes when it is removed":
  delta_loss > 0      removing it raises the loss, so the segment helps;
  delta_loss < 0      removing it lowers the loss, so the segment hurts.
Losses are computed from the scorer's "loss" objective (promptopt.scoring.scorer): lower is better.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Literal, Mapping, Sequence

from promptopt.task import Task
from promptopt.types import Example, ExampleResult

LossKind = Literal["cross_entropy", "margin"]
Granularity = Literal["sentence", "phrase"]
# |delta_loss| below this is reported as "neutral": float noise, not an effect.
NEUTRAL_LOSS = 1e-3

# A sentence ends at . ! ? (optionally followed by a closing quote or bracket) before whitespace,
# or at a line break; a phrase also ends at , ; : before whitespace.
_BOUNDARIES = {"sentence": re.compile(r"(?<=[.!?])[\"')\]]*\s+|\n+"),
               "phrase": re.compile(r"(?<=[.!?,;:])[\"')\]]*\s+|\n+")}
_MASK_TAG = re.compile(r"<mask>(.*?)</mask>", re.I | re.S)


@dataclass(frozen=True)
class Segment:
    """A span of a prompt: `text == prompt[start:end]`."""

    text: str
    start: int
    end: int


# ---- segmentation ------------------------------------------------------------------------------

def split_prompt(prompt: str, by: Granularity = "sentence") -> list[Segment]:
    """Sentences (or phrases) of a prompt with their offsets; whitespace between them is left out."""
    boundary = _BOUNDARIES[by]
    segments, start = [], 0
    for m in [*boundary.finditer(prompt), None]:
        end = m.start() if m else len(prompt)
        # Keep a closing quote/bracket that the boundary regex matched with the sentence.
        if m:
            end += len(m.group()) - len(m.group().lstrip("\"')]"))
        piece = prompt[start:end]
        if piece.strip():
            lead = len(piece) - len(piece.lstrip())
            segments.append(Segment(piece.strip(), start + lead, start + lead + len(piece.strip())))
        start = m.end() if m else len(prompt)
    return segments


def merge_segments(prompt: str, segments: Sequence[Segment], limit: int) -> list[Segment]:
    """At most `limit` segments: repeatedly join the adjacent pair that is shortest together,
    so a long prompt is cut into a few comparable chunks rather than dropping its tail."""
    merged = list(segments)
    while len(merged) > max(limit, 1):
        i = min(range(len(merged) - 1), key=lambda j: merged[j + 1].end - merged[j].start)
        start, end = merged[i].start, merged[i + 1].end
        merged[i:i + 2] = [Segment(prompt[start:end], start, end)]
    return merged


def marked_segments(prompt: str, reply: str, limit: int) -> list[Segment]:
    """Segments an LLM marked with <mask>...</mask> in its copy of `prompt`.

    Only spans found verbatim in the prompt, in order and without overlap, are kept: the model may
    have altered the surrounding text, and a span we cannot locate cannot be masked. A span that
    covers the whole prompt is not a removable piece of it.
    """
    found: list[Segment] = []
    cursor = 0
    for m in _MASK_TAG.finditer(reply):
        text = m.group(1).strip()
        if not text or "<mask>" in text.lower():
            continue
        at = prompt.find(text, cursor)
        if at < 0 or text == prompt.strip():
            continue
        found.append(Segment(text, at, at + len(text)))
        cursor = at + len(text)
        if len(found) == limit:
            break
    return found


def mask(prompt: str, segment: Segment, token: str = "") -> str:
    """The prompt with `segment` replaced by `token`; with no token the segment is deleted and the
    whitespace around it collapsed (a line break survives if there was one)."""
    left, right = prompt[:segment.start], prompt[segment.end:]
    if token:
        return (left + token + right).strip()
    gap = left[len(left.rstrip()):] + right[:len(right) - len(right.lstrip())]
    sep = ("\n" if "\n" in gap else " ") if left.strip() and right.strip() else ""
    return (left.rstrip() + sep + right.lstrip()).strip()


# ---- losses ------------------------------------------------------------------------------------

def default_loss(task: Task) -> LossKind:
    """PMPO's choice: classification uses the preference (margin) form, generation the reference CE."""
    return "margin" if task.output == "choose" else "cross_entropy"


def preference_loss(chosen_logprob: float, rejected_logprob: float, beta: float = 1.0) -> float:
    """-log sigmoid(beta * (log p(chosen) - log p(rejected))): small when chosen is far more likely."""
    z = beta * (chosen_logprob - rejected_logprob)
    # softplus(-z), computed without overflow for large |z|
    return math.log1p(math.exp(-z)) if z > 0 else -z + math.log1p(math.exp(z))


def margin_loss(option_logprobs: Sequence[float], gold: int, beta: float = 1.0) -> float:
    """Mean preference loss of the gold option against each wrong option."""
    wrong = [lp for j, lp in enumerate(option_logprobs) if j != gold]
    return sum(preference_loss(option_logprobs[gold], lp, beta) for lp in wrong) / len(wrong)


def example_loss(result: ExampleResult, example: Example, kind: LossKind, beta: float = 1.0) -> float:
    """Loss of one "loss"-objective result (lower is better).

    cross_entropy: minus the scorer's score, i.e. -log p(gold option | options) for classification
    and the mean per-token negative log-likelihood of the reference for generation.
    margin: the preference form over the options (falls back to cross-entropy without options).
    """
    if kind == "margin" and result.option_logprobs is not None and example.label is not None:
        return margin_loss(result.option_logprobs, example.label, beta)
    return -result.score


def is_correct(result: ExampleResult, example: Example) -> bool | None:
    """Whether the gold option has the highest log-likelihood; None when there are no options."""
    lps = result.option_logprobs
    if lps is None or example.label is None:
        return None
    return max(range(len(lps)), key=lps.__getitem__) == example.label


@dataclass(frozen=True)
class LossSummary:
    """A prompt's loss on some examples, with accuracy when it can be read off the same results."""

    loss: float
    accuracy: float | None
    per_example: Mapping[str, float]


def summarize(results: Sequence[ExampleResult], examples: Mapping[str, Example], kind: LossKind,
              beta: float = 1.0) -> LossSummary:
    """Mean loss (NaN when empty) and option accuracy of "loss"-objective results."""
    per_example = {r.example_id: example_loss(r, examples[r.example_id], kind, beta) for r in results}
    hits = [is_correct(r, examples[r.example_id]) for r in results]
    known = [h for h in hits if h is not None]
    loss = sum(per_example.values()) / len(per_example) if per_example else math.nan
    return LossSummary(loss, sum(known) / len(known) if known else None, per_example)


# ---- attribution -------------------------------------------------------------------------------

@dataclass(frozen=True)
class SegmentImpact:
    """What removing one segment does to the loss (and accuracy, when known)."""

    segment: Segment
    masked_prompt: str
    loss_without: float
    delta_loss: float  # loss without the segment - loss with it; > 0: the segment helps
    delta_accuracy: float | None  # accuracy without - accuracy with; < 0: the segment helps

    @property
    def verdict(self) -> str:
        if math.isnan(self.delta_loss) or abs(self.delta_loss) < NEUTRAL_LOSS:
            return "neutral"
        return "helps" if self.delta_loss > 0 else "hurts"


def impacts(full: LossSummary, masked: Sequence[tuple[Segment, str, LossSummary]]) -> list[SegmentImpact]:
    """One SegmentImpact per (segment, masked prompt, its summary), in prompt order."""
    out = []
    for segment, masked_prompt, summary in masked:
        acc = None
        if summary.accuracy is not None and full.accuracy is not None:
            acc = summary.accuracy - full.accuracy
        out.append(SegmentImpact(segment, masked_prompt, summary.loss, summary.loss - full.loss, acc))
    return out


def worst_first(found: Sequence[SegmentImpact]) -> list[SegmentImpact]:
    """Most harmful segment first (its removal lowers the loss most); unknown effects last."""
    return sorted(found, key=lambda s: math.inf if math.isnan(s.delta_loss) else s.delta_loss)
