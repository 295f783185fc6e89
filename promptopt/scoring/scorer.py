"""Turn (prompt, examples) jobs into Evaluations with one backend call per batch.

"choose" tasks take the target's route (promptopt/scoring/routes.py): each option scored as a continuation by
log-likelihood, or, on chat models, the first token's top_logprobs or a generated answer matched to an
option; "generate" tasks let the model write, then extract and compare. A batch-wide BackendError makes every job in it a failed
Evaluation (data, not a crash); a per-request error fails that job only.
"""
from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass, replace
from typing import Sequence

from promptopt.scoring import routes
from promptopt.backends.base import Backend, GenRequest, GenResult, LLRequest
from promptopt.errors import BackendError
from promptopt.task import Task
from promptopt.types import Evaluation, Example, ExampleResult, Usage


@dataclass(frozen=True)
class PromptParts:
    """A candidate's pieces, which the chat routes send as separate messages."""

    instruction: str
    system: str = ""
    demos: tuple[Example, ...] = ()
    answers: tuple[str | None, ...] = ()


@dataclass(frozen=True)
class Job:
    candidate_id: str
    prompt: str  # the text where the template has {prompt}
    split: str
    examples: tuple[Example, ...]
    objective: str = "task"
    parts: PromptParts | None = None  # None: `prompt` is the whole instruction


def score_jobs(task: Task, backend: Backend, jobs: Sequence[Job]) -> list[Evaluation]:
    if not jobs:
        return []
    started = time.monotonic()
    unknown = {j.objective for j in jobs} - {"task", "loss"}
    if unknown:
        raise ValueError(f"unknown scoring objective(s) {sorted(unknown)}")
    try:
        if task.output == "choose":
            evals = _score_choose(task, backend, jobs)
        else:
            evals = _score_generate(task, backend, [j for j in jobs if j.objective == "task"])
            loss = iter(_score_reference_loss(task, backend, [j for j in jobs if j.objective == "loss"]))
            gen = iter(evals)
            evals = [next(loss) if j.objective == "loss" else next(gen) for j in jobs]
    except BackendError as e:
        if e.fatal:  # nothing later in the run can succeed: the loop stops (resumably)
            raise
        return [Evaluation(j.candidate_id, j.split, (), "failed", str(e), objective=j.objective) for j in jobs]
    # Spread the batch's wall time over jobs by size, so per-candidate cost is comparable.
    total = sum(len(j.examples) for j in jobs) or 1
    seconds = time.monotonic() - started
    return [Evaluation(e.candidate_id, e.split, e.results, e.state, e.error,
                       Usage(e.usage.calls, e.usage.prompt_tokens, e.usage.completion_tokens,
                             seconds * len(j.examples) / total, e.usage.usd, e.usage.cache_hits), j.objective,
                       task.corpus_metric if j.objective == "task" else None)
            for e, j in zip(evals, jobs)]


def _finish(job: Job, results: list[ExampleResult], usage: Usage) -> Evaluation:
    errors = [r for r in results if r.error]
    if errors:
        return Evaluation(job.candidate_id, job.split, tuple(results), "failed",
                          f"{len(errors)}/{len(results)} examples failed: {errors[0].error}", usage)
    return Evaluation(job.candidate_id, job.split, tuple(results), "complete", None, usage)


def _score_choose(task: Task, backend: Backend, jobs: Sequence[Job]) -> list[Evaluation]:
    route = routes.choose_route(backend)
    if route != "loglikelihood":
        return _score_choose_chat(task, backend, jobs, route)
    reqs = [LLRequest(task.render(j.prompt, ex), opt) for j in jobs for ex in j.examples for opt in task.options]
    out = backend.loglikelihood(reqs)
    k = len(task.options)
    evals, i = [], 0
    for j in jobs:
        results, usage = [], Usage()
        for ex in j.examples:
            chunk = out[i:i + k]
            i += k
            for r in chunk:
                usage = usage + r.usage
            err = next((r.error for r in chunk if r.error), None)
            if err:
                results.append(ExampleResult(ex.id, "", 0.0, error=err))
                continue
            lps = tuple(r.logprob for r in chunk)
            pred = max(range(k), key=lps.__getitem__)
            # "loss": log-probability of the gold option normalized over the options (-cross-entropy).
            score = float(pred == ex.label) if j.objective == "task" else lps[ex.label] - _logsumexp(lps)
            feedback = None
            if task.metric_on_choice and j.objective == "task":  # a user's metric scores the chosen option
                score, feedback = metric_value(task, task.options[pred].strip(), ex)
            results.append(ExampleResult(ex.id, task.options[pred].strip(), score,
                                         logprob=lps[ex.label], option_logprobs=lps, feedback=feedback))
        evals.append(_finish(j, results, usage))
    return evals


def _messages(task: Task, job: Job, example: Example, line: str) -> tuple[tuple[str, str], ...]:
    parts = job.parts or PromptParts(job.prompt)
    return task.messages(parts.instruction, example, parts.demos, parts.answers, parts.system, line)


def _answer_line(task: Task) -> str:
    """The answer-format line, where the template does not already name every option. The template, not the
    instruction, decides: every candidate of a run gets the same line, whatever a strategy writes."""
    template = re.sub(r"\{\w+\}", " ", task.template)
    return "" if routes.names_all_options(template, task.options) else routes.answer_format_line(task.options)


def _score_choose_chat(task: Task, backend: Backend, jobs: Sequence[Job], route: str) -> list[Evaluation]:
    """A choose task on a chat model: first-token top_logprobs (chat_logprobs) or a matched reply (generate)."""
    items = [(j, ex) for j in jobs for ex in j.examples]
    line = _answer_line(task)
    msgs = [_messages(task, j, ex, line) for j, ex in items]
    results: list[ExampleResult | None] = [None] * len(items)
    usage = [Usage() for _ in items]
    ask = list(range(len(items)))
    if route == "chat_logprobs":
        k = routes.top_logprobs(backend)
        out = backend.generate([GenRequest(messages=m, max_tokens=1, top_logprobs=k) for m in msgs])
        ask = []
        for i, ((j, ex), r) in enumerate(zip(items, out)):
            usage[i] = r.usage
            result = _from_top_logprobs(task, j, ex, r)
            if result is None:
                ask.append(i)
            else:
                results[i] = result
    if ask:  # the generate route, or the examples whose first token could not tell the options apart
        out = backend.generate([GenRequest(messages=msgs[i], max_tokens=task.max_tokens) for i in ask])
        for i, r in zip(ask, out):
            usage[i] = usage[i] + r.usage
            j, ex = items[i]
            result = _from_reply(task, j, ex, r)
            results[i] = replace(result, flags=result.flags + ("fallback",)) if route == "chat_logprobs" else result
    evals, at = [], 0
    for j in jobs:
        n = len(j.examples)
        own = [r for r in results[at:at + n] if r is not None]
        if line:
            own = [replace(r, flags=r.flags + ("format_line",)) for r in own]
        evals.append(_finish(j, own, sum(usage[at:at + n], Usage())))
        at += n
    return evals


def _from_top_logprobs(task: Task, job: Job, ex: Example, r: GenResult) -> ExampleResult | None:
    """An example's result from its first token's top_logprobs; None to ask for a generated answer instead."""
    if r.error or not r.top_logprobs:
        return ExampleResult(ex.id, "", 0.0, error=r.error or "the reply carries no top_logprobs")
    read = routes.option_logprobs(r.top_logprobs, task.options, strict=job.objective == "task")
    if read is None:
        return None
    lps, floored = read
    flags = ("floored",) if floored else ()
    if floored == len(task.options):  # no listed token begins any option: the model answered something else
        return ExampleResult(ex.id, r.top_logprobs[0][0], 0.0 if job.objective == "task" else lps[ex.label],
                             logprob=lps[ex.label], option_logprobs=tuple(lps), flags=("format_failure", *flags))
    pred = max(range(len(lps)), key=lps.__getitem__)
    score, feedback = float(pred == ex.label), None
    if job.objective != "task":
        score = lps[ex.label]  # already normalized over the options
    elif task.metric_on_choice:
        score, feedback = metric_value(task, task.options[pred].strip(), ex)
    return ExampleResult(ex.id, task.options[pred].strip(), score, logprob=lps[ex.label], option_logprobs=tuple(lps),
                         feedback=feedback, flags=flags)


def _from_reply(task: Task, job: Job, ex: Example, r: GenResult) -> ExampleResult:
    """An example's result from a generated answer; a reply that gives no single option is wrong."""
    if r.error:
        return ExampleResult(ex.id, r.text, 0.0, error=r.error)
    if job.objective != "task":
        return ExampleResult(ex.id, r.text, 0.0, error="the generate route gives no log-likelihood for a 'loss' "
                                                      "objective; use a target with logprobs")
    pred = None if r.finish_reason == "length" or routes.unreadable(r.text) else \
        routes.match_option(r.text, task.options)
    if pred is None:
        return ExampleResult(ex.id, r.text, 0.0, flags=("format_failure",))
    score, feedback = float(pred == ex.label), None
    if task.metric_on_choice:
        score, feedback = metric_value(task, task.options[pred].strip(), ex)
    return ExampleResult(ex.id, task.options[pred].strip(), score, feedback=feedback)


def metric_value(task: Task, prediction: str, example: Example) -> tuple[float, str | None]:
    """The task metric on one prediction: a number, or (number, feedback text)."""
    value = task.metric(prediction, example)
    if isinstance(value, tuple) and len(value) == 2:
        return float(value[0]), (None if value[1] is None else str(value[1]))
    return float(value), None


def _logsumexp(xs: Sequence[float]) -> float:
    m = max(xs)
    return m + math.log(sum(math.exp(x - m) for x in xs))


def reference_text(example: Example) -> str:
    """The gold output a loss is computed on: a full worked solution when the task has one."""
    return example.fields.get("reference", example.target)


def _score_reference_loss(task: Task, backend: Backend, jobs: Sequence[Job]) -> list[Evaluation]:
    """Generation tasks scored by the mean per-token log-likelihood of the reference output."""
    if not jobs:
        return []
    reqs = [LLRequest(task.render(j.prompt, ex), " " + reference_text(ex).strip()) for j in jobs for ex in j.examples]
    out = iter(backend.loglikelihood(reqs))
    evals = []
    for j in jobs:
        results, usage = [], Usage()
        for ex in j.examples:
            r = next(out)
            usage = usage + r.usage
            if r.error:
                results.append(ExampleResult(ex.id, "", 0.0, error=r.error))
                continue
            n_tokens = max(1, len(r.token_logprobs))
            results.append(ExampleResult(ex.id, "", r.logprob / n_tokens, logprob=r.logprob))
        evals.append(_finish(j, results, usage))
    return evals


def _gen_request(task: Task, text: str) -> GenRequest:
    if task.chat:
        return GenRequest(messages=(("user", text),), max_tokens=task.max_tokens, stop=task.stop)
    return GenRequest(prompt=text, max_tokens=task.max_tokens, stop=task.stop)


def _score_generate(task: Task, backend: Backend, jobs: Sequence[Job]) -> list[Evaluation]:
    reqs = [_gen_request(task, task.render(j.prompt, ex)) for j in jobs for ex in j.examples]
    out = backend.generate(reqs)
    evals, i = [], 0
    for j in jobs:
        results, usage = [], Usage()
        for ex in j.examples:
            r = out[i]
            i += 1
            usage = usage + r.usage
            if r.error:
                results.append(ExampleResult(ex.id, r.text, 0.0, error=r.error))
                continue
            score, feedback = metric_value(task, task.extract(r.text), ex)
            results.append(ExampleResult(ex.id, r.text, score, feedback=feedback))
        evals.append(_finish(j, results, usage))
    return evals
