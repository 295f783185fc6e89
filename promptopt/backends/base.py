"""The Backend protocol: a language model behind a batch API (lists in, lists out, same order)."""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar, Protocol, Sequence, runtime_checkable

from pydantic import BaseModel, ConfigDict

from promptopt.errors import CapabilityError
from promptopt.types import Usage

GENERATE = "generate"
LOGLIKELIHOOD = "loglikelihood"
CHAT = "chat"
PROMPT_EMBEDS = "prompt_embeds"


@dataclass(frozen=True)
class GenRequest:
    """One generation. `prompt` is raw text, or chat messages when `messages` is given.

    Sampled requests (temperature > 0) are cached only when they carry a `seed`.
    """

    prompt: str = ""
    messages: tuple[tuple[str, str], ...] = ()  # (role, content) pairs; used when non-empty
    max_tokens: int = 256
    temperature: float = 0.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    top_logprobs: int = 0  # > 0: also return the first generated token's most likely alternatives

    def key(self) -> str:
        d = asdict(self)
        if not self.top_logprobs:  # requests without it keep the keys they had before it existed
            del d["top_logprobs"]
        return canonical_hash({"kind": "gen", **d})

    @property
    def cacheable(self) -> bool:
        return self.temperature == 0.0 or self.seed is not None


@dataclass(frozen=True)
class GenResult:
    text: str
    finish_reason: str = "stop"  # "stop" | "length" | "error"
    usage: Usage = field(default_factory=Usage)
    error: str | None = None
    # With GenRequest.top_logprobs: (token, logprob) of the first generated position, best first.
    top_logprobs: tuple[tuple[str, float], ...] = ()


@dataclass(frozen=True)
class LLRequest:
    """Log-probability of `continuation` given `context` (teacher forced)."""

    context: str
    continuation: str

    def key(self) -> str:
        return canonical_hash({"kind": "ll", "context": self.context, "continuation": self.continuation})


@dataclass(frozen=True)
class LLResult:
    logprob: float
    is_greedy: bool = False
    token_logprobs: tuple[float, ...] = ()
    usage: Usage = field(default_factory=Usage)
    error: str | None = None


def canonical_hash(obj: Any) -> str:
    data = json.dumps(obj, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(data.encode("utf-8")).hexdigest()


@runtime_checkable
class Backend(Protocol):
    """A language model. Implementations may reorder internally but must return results in order.

    A per-request failure is returned as a result with `error` set (finish_reason "error" for
    generation); an error that sinks the whole batch is raised as BackendError.

    Optional: `check(needs=())` probes the model once and raises CapabilityError, saying why, when a
    capability in `needs` is missing (the openai backend knows, e.g., that a server refused echo).
    """

    capabilities: frozenset[str]

    def fingerprint(self) -> str:
        """Identity for caching: model id + revision + dtype + template hash."""
        ...

    def generate(self, reqs: Sequence[GenRequest]) -> list[GenResult]: ...

    def loglikelihood(self, reqs: Sequence[LLRequest]) -> list[LLResult]: ...


def missing_reason(backend: Backend, capability: str) -> str | None:
    """The backend's own words on why it lacks `capability`, if it has a `check` that says so."""
    check = getattr(backend, "check", None)
    if not callable(check):
        return None
    try:
        check(needs=[capability])
    except CapabilityError as e:
        return str(e)
    return None


class BackendOptions(BaseModel):
    """A backend's options (`--set backend.x=...`), validated before any model loads. Strict: "5" is not
    a number and true is not 1. `inherited` names the options an optimizer on the same backend takes
    from the target unless it sets them (where the server is and how to reach it)."""

    model_config = ConfigDict(extra="forbid", strict=True)
    inherited: ClassVar[frozenset[str]] = frozenset()

    def urls(self) -> list[str]:
        """Where the model is served (credential-free, for --dry-run); [] for an in-process model."""
        return []
