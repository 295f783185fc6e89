"""How a choose task is scored on a target: three routes, one per-example result shape.

- `loglikelihood`: each option's log-likelihood as a continuation of the rendered text (local models,
  vLLM's echo and one-token routes).
- `chat_logprobs`: one chat completion per example with the server's most `top_logprobs`; an option's
  score is the probability mass of the first-token strings that begin it (the whole option or at least its
  first 3 characters), renormalized over the options.
  An option missing from the top-k gets the lowest listed value (flag "floored"); an example whose most
  likely first token begins several options is answered by `generate` instead (flag "fallback").
- `generate`: the model answers in words; the reply is matched to an option (normalized exact match,
  then the one option it names). No match, several, a reply cut by max_tokens or one that is not
  readable text is wrong (flag "format_failure"): the run's format-failure rate.

The backend says which route it serves (`choose_route`, found by its start-up probe); the task renders
the prompt as chat messages on the chat routes (Task.messages). A strategy never sees the route.
"""
from __future__ import annotations

import math
import re
from typing import Any, Sequence

from promptopt.measure.answers import normalize_answer
from promptopt.backends.base import CHAT, GENERATE, LOGLIKELIHOOD, Backend, missing_reason
from promptopt.errors import CapabilityError, ConfigError
from promptopt.task import Task

ROUTES = ("loglikelihood", "chat_logprobs", "generate")
FLAGS = ("format_failure", "floored", "fallback", "format_line")


def _inner(backend: Backend) -> Any:
    return getattr(backend, "inner", backend)  # a CachedBackend wraps the model's backend


def choose_route(backend: Backend) -> str:
    """The route a choose task takes on `backend`: what it says (its probe), else loglikelihood."""
    route = getattr(_inner(backend), "choose_route", None)
    return route if route in ROUTES else "loglikelihood"


def top_logprobs(backend: Backend) -> int:
    return int(getattr(_inner(backend), "top_logprobs", 0) or 0)


def check_choose(task: Task, backend: Backend) -> str:
    """The route for `task` on `backend`, or one line (CapabilityError/ConfigError) before any example is
    scored: no route at all, or options that the route cannot tell apart."""
    route = choose_route(backend)
    need = LOGLIKELIHOOD if route == "loglikelihood" else GENERATE
    if need not in backend.capabilities and not (need == GENERATE and CHAT in backend.capabilities):
        reason = missing_reason(backend, need)
        raise CapabilityError(f"task {task.name} needs {need} but the target model ({backend.fingerprint()}) "
                              f"cannot provide it" + (f": {reason}" if reason else ""))
    keys = [option_key(o) for o in task.options] if route != "loglikelihood" else list(task.options)
    clash = next(((task.options[i], task.options[j]) for i in range(len(keys)) for j in range(i + 1, len(keys))
                  if keys[i] == keys[j]), None)
    if clash or not all(keys):
        shown = f"{clash[0]!r} and {clash[1]!r} read the same" if clash else "an option is empty"
        raise ConfigError(f"task {task.name}: the {route} route cannot tell its options apart ({shown}); "
                          "make the options distinct words")
    return route


def option_key(option: str) -> str:
    """What a reply or a first token is compared with: normalized, as answers are compared."""
    return normalize_answer(option)


def unreadable(text: str) -> bool:
    """A reply that was not UTF-8 (U+FFFD from decoding) or carries a lone surrogate."""
    return "\ufffd" in text or any(0xD800 <= ord(c) <= 0xDFFF for c in text)


def match_option(reply: str, options: Sequence[str]) -> int | None:
    """The option a reply gives: the one equal to it after normalization, else the one it names as words
    (several or none: None)."""
    said = normalize_answer(reply)
    keys = [option_key(o) for o in options]
    exact = [i for i, k in enumerate(keys) if k == said]
    if len(exact) == 1:
        return exact[0]
    named = [i for i, k in enumerate(keys) if re.search(rf"(?<!\w){re.escape(k)}(?!\w)", said)]
    return named[0] if len(named) == 1 else None


def option_logprobs(tops: Sequence[tuple[str, float]], options: Sequence[str],
                    strict: bool = True) -> tuple[list[float], int] | None:
    """Log-probabilities over the options (renormalized) from a first token's top-k, and how many options
    got the floor; None (when `strict`) when the most likely first token that begins an option begins several."""
    keys = [option_key(o) for o in options]
    mass: list[list[float]] = [[] for _ in options]
    shared_best = -math.inf
    for token, lp in tops:
        t = normalize_answer(token)
        # A token begins an option when it is the whole option or at least its first 3 characters: a bare
        # "A" or "D" is an article or a stray letter far more often than the start of "abbreviation".
        starts = [i for i, k in enumerate(keys) if t and k.startswith(t) and (t == k or len(t) >= 3)]
        if len(starts) == 1:
            mass[starts[0]].append(lp)
        elif starts:
            shared_best = max(shared_best, lp)
    found = [_logsumexp(m) for m in mass if m]
    # A shared first token that is more likely than every option's own tokens decides the answer: the
    # first token cannot say which option the model meant.
    if strict and shared_best > max(found, default=-math.inf):
        return None
    floor = min(lp for _, lp in tops)
    lps = [_logsumexp(m) if m else floor for m in mass]
    total = _logsumexp(lps)
    return [x - total for x in lps], sum(1 for m in mass if not m)


def answer_format_line(options: Sequence[str]) -> str:
    """The line that asks for a bare option: chat models otherwise open with "The review is..." (measured on
    SmolLM2 behind vLLM's chat route: the option then is not the first token, and the reply runs on)."""
    names = [o.strip() for o in options]
    listed = ", ".join(names[:-1]) + " or " + names[-1]
    return f"Answer with one word: {listed}." if all(len(n.split()) == 1 for n in names) else \
        f"Answer with only one of: {listed}."


def names_all_options(text: str, options: Sequence[str]) -> bool:
    """Whether a prompt already says which answers are allowed (every option appears in it as words)."""
    said = normalize_answer(text)
    return all(re.search(rf"(?<!\w){re.escape(option_key(o))}(?!\w)", said) for o in options)


def planned(task: Task, options: Any) -> str | None:
    """The route a choose task would take, for --dry-run (no model loaded): the backend options' forced
    `choose_route`, the probe's pick for `auto`, or loglikelihood for a backend without chat routes."""
    if task.output != "choose":
        return None
    route = getattr(options, "choose_route", "loglikelihood")
    if route == "auto":
        return "auto: picked at start by the probe (loglikelihood, else chat_logprobs, else generate)"
    return f"{route}{' (forced)' if options is not None and 'choose_route' in options.model_fields_set else ''}"


def describe(task: Task, backend: Backend) -> dict[str, Any]:
    """The route facts a run records in config.json (`scoring`)."""
    route = choose_route(backend) if task.output == "choose" else "generate"
    out: dict[str, Any] = {"route": route}
    if task.output == "choose" and route == "chat_logprobs":
        out["top_logprobs"] = top_logprobs(backend)
    if task.output == "choose" and route != "loglikelihood":
        out["demos"] = task.chat_demos
        out["answer_format_line"] = "added where a prompt does not name every option"
    return out


def flag_counts(flags: Sequence[Sequence[str]]) -> dict[str, int]:
    """How many example results carry each route flag (ExampleResult.flags, one tuple per result)."""
    counts = {f: 0 for f in FLAGS}
    for fs in flags:
        for f in fs:
            counts[f] = counts.get(f, 0) + 1
    return counts


def _logsumexp(xs: Sequence[float]) -> float:
    m = max(xs)
    if m == -math.inf:
        return m
    return m + math.log(sum(math.exp(x - m) for x in xs))



def route_line(events: Sequence[dict[str, Any]]) -> str | None:
    """One line on how a logged run's choose examples were scored and what the chat routes counted (format-
    failure rate, floored options, generate fallbacks); None for a run on the loglikelihood route."""
    start = next((e for e in events if e.get("type") == "run.start"), {})
    fp = str((start.get("fingerprints") or {}).get("target") or "")
    route = fp.rsplit("|route:", 1)[1] if "|route:" in fp else None
    results = [r for e in events if e.get("type") == "eval" and e.get("objective", "task") == "task"
               for r in e.get("results") or ()]
    counts = flag_counts([r.get("flags") or () for r in results])
    if route is None and not any(counts.values()):
        return None
    n = len(results) or 1
    parts = [f"scoring route {route or 'loglikelihood'}",
             f"format failures {counts['format_failure']}/{len(results)} ({counts['format_failure'] / n:.1%})"]
    if route == "chat_logprobs":
        parts += [f"options floored in {counts['floored']}", f"generate fallbacks {counts['fallback']}"]
    if counts["format_line"]:
        parts.append(f"answer-format line added in {counts['format_line']}")
    return " · ".join(parts)

