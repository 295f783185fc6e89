"""How a candidate becomes scoring jobs: its system prompt, instruction and demos rendered (or given apart, for
chat models), and for a retrieval policy one job per distinct demo set its inputs retrieved. The run and
`evaluate` both score candidates through here, so a candidate scores the same wherever it is scored."""
from __future__ import annotations

from typing import Any, Mapping, Sequence

from promptopt.errors import ConfigError
from promptopt.scoring.scorer import Job, PromptParts
from promptopt.task import Task
from promptopt.types import Candidate, Evaluation, Example, Usage


def check_shape(cand: Candidate) -> None:
    """Refuse a candidate whose parts do not fit together (before any model call)."""
    if cand.retrieval is not None and cand.demos:
        raise ConfigError(f"candidate {cand.id}: fixed demos and a retrieval policy; give one of them")
    if cand.demo_answers and len(cand.demo_answers) != len(cand.demos):
        raise ConfigError(f"candidate {cand.id}: {len(cand.demo_answers)} demo answers for {len(cand.demos)} demos")


def prompt_text(task: Task, cand: Candidate, demos_by_id: Mapping[str, Example]) -> str:
    """What stands where the template has `{prompt}`: system prompt, instruction, fixed demos (none for a
    retrieval policy: its demos differ per input)."""
    if not cand.demos and not cand.system:
        return cand.text
    return task.prompt_text(cand.text, [demos_by_id[d] for d in cand.demos], cand.demo_answers, cand.system)


def jobs(task: Task, cand: Candidate, split: str, examples: Sequence[Example], demos_by_id: Mapping[str, Example],
         retriever: Any = None, objective: str = "task") -> tuple[list[Job], dict[str, list[str]] | None]:
    """The jobs that score `cand` on `examples`, and for a retrieval policy each example's retrieved demo ids
    (inputs that retrieved the same demos share a job, and so a prompt)."""
    policy = cand.retrieval
    if policy is None or not examples:  # no inputs: one empty job, as for fixed demos (its evaluation has no results)
        parts = PromptParts(cand.text, cand.system, tuple(demos_by_id[d] for d in cand.demos), tuple(cand.demo_answers))
        return [Job(cand.id, prompt_text(task, cand, demos_by_id), split, tuple(examples), objective, parts)], \
            None if policy is None else {}
    sets = retriever.retrieve(policy, examples)
    groups: dict[tuple[str, ...], list[Example]] = {}
    for ex, ids in zip(examples, sets):
        groups.setdefault(ids, []).append(ex)
    out = []
    for ids, group in groups.items():
        demos = [demos_by_id[d] for d in ids]
        out.append(Job(cand.id, task.prompt_text(cand.text, demos, (), cand.system), split, tuple(group), objective,
                       PromptParts(cand.text, cand.system, tuple(demos))))
    return out, {ex.id: list(ids) for ex, ids in zip(examples, sets)}


def merged(evals: Sequence[Evaluation], example_ids: Sequence[str]) -> Evaluation:
    """One evaluation from a candidate's jobs' evaluations, its results in `example_ids` order; failed if any
    part failed."""
    if len(evals) == 1:
        return evals[0]
    first = evals[0]
    by_id = {res.example_id: res for ev in evals for res in ev.results}
    failed = [ev for ev in evals if ev.state == "failed"]
    return Evaluation(first.candidate_id, first.split, tuple(by_id[x] for x in example_ids if x in by_id),
                      "failed" if failed else "complete", failed[0].error if failed else None,
                      sum((ev.usage for ev in evals), Usage()), first.objective, first.metric)
