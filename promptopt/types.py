"""Frozen data types shared by every part of promptopt."""
from __future__ import annotations

import hashlib
import json
import math
import unicodedata
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Mapping, Sequence, get_args

if TYPE_CHECKING:
    from promptopt.task.retrieval import RetrievalPolicy


def normalize_prompt(text: str) -> str:
    """Canonical form used for identity: NFC, unified newlines, stripped outer whitespace."""
    return unicodedata.normalize("NFC", text.replace("\r\n", "\n")).strip()


def prompt_id(text: str) -> str:
    return hashlib.sha256(normalize_prompt(text).encode("utf-8")).hexdigest()[:16]


@dataclass(frozen=True)
class Example:
    """One task example. `input` is the text put into the template; `target` the gold answer.

    For classification `label` is the gold option index; `fields` holds extra template fields.
    """

    id: str
    input: str
    target: str
    label: int | None = None
    fields: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Candidate:
    """A structured prompt with lineage: an instruction (`text`), an ordered tuple of demonstrations
    (ids of train examples, rendered by the task before the query) and an optional system prompt.
    Identical prompts (after normalization) share one id; an instruction-only candidate keeps the id
    of its text, so runs without demos log the same ids as before demos existed."""

    text: str
    parents: tuple[str, ...] = ()
    origin: str = ""
    meta: Mapping[str, Any] = field(default_factory=dict)
    demos: tuple[str, ...] = ()
    system: str = ""
    demo_answers: tuple[str, ...] = ()  # bootstrapped outputs, one per demo; empty = the gold answers
    # Demos retrieved for each input (promptopt.task.retrieval) instead of the fixed `demos`; None: fixed demos.
    retrieval: "RetrievalPolicy | None" = None
    # A program's named text components, in order (promptopt.harness.program); empty for a single prompt, whose
    # one component is `text`. A program candidate's `text` is its first component's, so a strategy that
    # knows nothing of components edits that one (strategies/blocks/components.py picks among them).
    components: tuple[tuple[str, str], ...] = ()

    @property
    def id(self) -> str:
        if self.components:
            parts = json.dumps(["components", [[n, normalize_prompt(t)] for n, t in self.components],
                                list(self.demos), normalize_prompt(self.system), list(self.demo_answers)],
                               ensure_ascii=False)
            return hashlib.sha256(parts.encode("utf-8")).hexdigest()[:16]
        if not self.demos and not self.system and self.retrieval is None:
            return prompt_id(self.text)
        fields: list[Any] = [normalize_prompt(self.text), list(self.demos), normalize_prompt(self.system),
                             list(self.demo_answers)]
        if self.retrieval is not None:  # appended only when set, so fixed-demo ids stay as they were
            fields.append(self.retrieval.to_json())
        parts = json.dumps(fields, ensure_ascii=False)
        return hashlib.sha256(parts.encode("utf-8")).hexdigest()[:16]

    def revise(self, text: str, *, origin: str, parents: tuple[str, ...] | None = None,
               meta: Mapping[str, Any] | None = None) -> "Candidate":
        """A child with a new instruction and the same demos and system prompt (what every
        instruction-editing strategy proposes)."""
        if self.components:  # a program: `text` is the first component's
            return self.with_component(self.components[0][0], text, origin=origin, parents=parents, meta=meta)
        return Candidate(text, (self.id,) if parents is None else parents, origin, dict(meta or {}),
                         self.demos, self.system, self.demo_answers, self.retrieval)

    @classmethod
    def of_components(cls, components: Mapping[str, str] | Sequence[tuple[str, str]], *, origin: str = "",
                      parents: tuple[str, ...] = (), meta: Mapping[str, Any] | None = None,
                      demos: tuple[str, ...] = ()) -> "Candidate":
        """A program candidate from its named components (in the program's order)."""
        items = tuple((str(n), str(t)) for n, t in (components.items() if isinstance(components, Mapping)
                                                    else components))
        if not items:
            raise ValueError("a program candidate needs at least one component")
        return cls(items[0][1], parents, origin, dict(meta or {}), demos, components=items)

    def component(self, name: str) -> str:
        """The text of one component; a single prompt's one component is its text, whatever the name."""
        if not self.components:
            return self.text
        return dict(self.components)[name]

    def with_component(self, name: str, text: str, *, origin: str, parents: tuple[str, ...] | None = None,
                       meta: Mapping[str, Any] | None = None) -> "Candidate":
        """A child with one component's text replaced (what a strategy proposes for a program)."""
        if not self.components:
            return self.revise(text, origin=origin, parents=parents, meta=meta)
        items = [(n, text if n == name else t) for n, t in self.components]
        return Candidate.of_components(items, origin=origin, parents=(self.id,) if parents is None else parents,
                                       meta=meta, demos=self.demos)

    def to_json(self) -> dict[str, Any]:
        d = {"id": self.id, "text": self.text, "parents": list(self.parents),
             "origin": self.origin, "meta": dict(self.meta)}
        if self.demos:
            d["demos"] = list(self.demos)
        if self.system:
            d["system"] = self.system
        if self.demo_answers:
            d["demo_answers"] = list(self.demo_answers)
        if self.retrieval is not None:
            d["retrieval"] = self.retrieval.to_json()
        if self.components:
            d["components"] = [list(c) for c in self.components]
        return d

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "Candidate":
        if d.get("components"):
            return cls.of_components([tuple(c) for c in d["components"]], origin=d.get("origin", ""),
                                     parents=tuple(d.get("parents", ())), meta=dict(d.get("meta", {})),
                                     demos=tuple(d.get("demos", ())))
        policy = None
        if d.get("retrieval") is not None:
            from promptopt.task.retrieval import RetrievalPolicy  # lazy: retrieval imports this module
            policy = RetrievalPolicy.from_json(d["retrieval"])
        return cls(text=d["text"], parents=tuple(d.get("parents", ())),
                   origin=d.get("origin", ""), meta=dict(d.get("meta", {})),
                   demos=tuple(d.get("demos", ())), system=d.get("system", ""),
                   demo_answers=tuple(d.get("demo_answers", ())), retrieval=policy)


@dataclass(frozen=True)
class Usage:
    """Resources one model call (or a sum of calls) consumed."""

    calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0
    usd: float = 0.0
    cache_hits: int = 0

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def __add__(self, other: "Usage") -> "Usage":
        return Usage(self.calls + other.calls, self.prompt_tokens + other.prompt_tokens,
                     self.completion_tokens + other.completion_tokens,
                     self.seconds + other.seconds, self.usd + other.usd,
                     self.cache_hits + other.cache_hits)

    def to_json(self) -> dict[str, Any]:
        return {"calls": self.calls, "prompt_tokens": self.prompt_tokens,
                "completion_tokens": self.completion_tokens, "seconds": round(self.seconds, 4),
                "usd": self.usd, "cache_hits": self.cache_hits}

    @classmethod
    def from_json(cls, d: Mapping[str, Any] | None) -> "Usage":
        return cls(**d) if d else cls()


@dataclass(frozen=True)
class ExampleResult:
    """The outcome of one prompt on one example. `score` is higher-is-better."""

    example_id: str
    output: str
    score: float
    logprob: float | None = None  # log-probability of the gold answer, when known
    option_logprobs: tuple[float, ...] | None = None  # classification: one per option
    error: str | None = None
    feedback: str | None = None  # textual feedback from the task's metric, when it gives any
    # How a chat route scored it (promptopt/scoring/routes.py): "format_failure", "floored", "fallback", "format_line"
    flags: tuple[str, ...] = ()
    trace: Any = None  # a program evaluator's trace of this example (JSON-able), logged with the result

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"example_id": self.example_id, "output": self.output, "score": self.score}
        if self.feedback is not None:
            d["feedback"] = self.feedback
        if self.trace is not None:
            d["trace"] = self.trace
        if self.logprob is not None:
            d["logprob"] = self.logprob
        if self.option_logprobs is not None:
            d["option_logprobs"] = list(self.option_logprobs)
        if self.error is not None:
            d["error"] = self.error
        if self.flags:
            d["flags"] = list(self.flags)
        return d

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "ExampleResult":
        opts = d.get("option_logprobs")
        return cls(d["example_id"], d["output"], d["score"], d.get("logprob"),
                   tuple(opts) if opts is not None else None, d.get("error"), d.get("feedback"),
                   tuple(d.get("flags") or ()), d.get("trace"))


Split = Literal["train", "dev", "test"]
# What an evaluation measures: "task" scores with the task metric; "loss" scores each example by the
# gold answer's log-likelihood (higher is better; see promptopt.scoring.scorer), for loss-driven strategies.
Objective = Literal["task", "loss"]
OBJECTIVES: tuple[Objective, ...] = get_args(Objective)


@dataclass(frozen=True)
class Evaluation:
    """Per-example results of scoring one candidate on some examples of one split."""

    candidate_id: str
    split: str
    results: tuple[ExampleResult, ...]
    # "unscored": the budget ran out before this request (see Run.ask); no results, no information.
    state: Literal["complete", "failed", "unscored"] = "complete"
    error: str | None = None
    usage: Usage = Usage()
    objective: Objective = "task"
    metric: str | None = None  # a corpus metric of a choose task (promptopt.measure.metrics); None: the mean score

    @property
    def score(self) -> float:
        """Mean score (or the corpus `metric` over the results); NaN for a failed or empty evaluation."""
        if self.state != "complete" or not self.results:
            return math.nan
        if self.metric is not None:
            from promptopt.measure.metrics import corpus_score
            return corpus_score(self.metric, self.results)
        return sum(r.score for r in self.results) / len(self.results)

    @property
    def example_ids(self) -> tuple[str, ...]:
        return tuple(r.example_id for r in self.results)

    def to_json(self) -> dict[str, Any]:
        d = {"candidate_id": self.candidate_id, "split": self.split, "objective": self.objective,
             "state": self.state,
             "error": self.error, "score": None if math.isnan(self.score) else self.score,
             "usage": self.usage.to_json(), "results": [r.to_json() for r in self.results]}
        if self.metric is not None:
            d["metric"] = self.metric
        return d

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "Evaluation":
        return cls(d["candidate_id"], d["split"],
                   tuple(ExampleResult.from_json(r) for r in d["results"]),
                   d.get("state", "complete"), d.get("error"), Usage.from_json(d.get("usage")),
                   d.get("objective", "task"), d.get("metric"))
