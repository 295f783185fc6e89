"""A built-in task's prompt as named components (a system prompt and the instruction), or one system
prompt shared by several tasks (as SPRIG and MetaSPO optimize it).

`components=["system", "instruction"]` (CLI `--components system,instruction`): the seed candidate is a
two-component program, the system prompt (`SEED_SYSTEM`) and the task's instruction (or `--prompt`), in
the order given. Each proposal edits one component (round-robin, strategies/blocks/components.py), and
every candidate is scored by the task's own scorer on the run's target. How the system text reaches the
model is the rendering of a candidate's `system` everywhere in promptopt: on a chat route it is the
system message (`Task.messages`); on the log-likelihood and generation routes it stands before the
instruction, a blank line between them, where the template has `{prompt}` (`Task.prompt_text`).
`components=["system"]` on one task optimizes the system prompt alone; the instruction stays the seed's.

`task="sst2,trec,cr"` with `components=["system"]`: one system prompt shared by the tasks, each keeping
its own seed instruction. The run's task is their union (example ids `<task>/<id>`; `--test-limit`
caps each task's test split), each example is scored by its own task on the shared target, and a score
over examples is the mean of the per-task means (the corpus metric "task_mean",
promptopt.measure.metrics), so every task weighs the same whatever its dev size.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping, Sequence

from promptopt.backends.base import CHAT, GENERATE, Backend, canonical_hash
from promptopt.errors import CapabilityError, ConfigError
from promptopt.measure.metrics import TASK_MEAN, corpus_score
from promptopt.scoring.routes import check_choose, describe
from promptopt.scoring.scorer import Job, PromptParts, score_jobs
from promptopt.task import Task
from promptopt.task.data import test_sample
from promptopt.types import Candidate, Evaluation, Example, ExampleResult, Usage

SEED_SYSTEM = "You are a helpful assistant."
NAMES = ("system", "instruction")
ROLES = {"system": "the system prompt: who the model is and how it answers, before the task's instruction",
         "instruction": "the task's instruction, where the template puts the prompt"}
SEP = "/"  # a shared run's example ids: "<task>/<the task's own id>"


def task_list(spec: str) -> list[str]:
    """The task names of `--task a,b,c` (one name: a list of one)."""
    names = [n.strip() for n in spec.split(",")]
    if "," in spec and (any(not n for n in names) or len(set(names)) != len(names)):
        raise ConfigError(f"--task {spec!r}: a list of tasks is distinct names separated by commas (sst2,trec,cr)")
    return names


def check_components(names: Sequence[str], tasks: Sequence[str]) -> None:
    """What `components` may be: "system" and/or "instruction" (each once); several tasks share "system" only."""
    if len(tasks) > 1 and list(names) != ["system"]:
        raise ConfigError(f"--task {','.join(tasks)}: several tasks share one system prompt; pass --components "
                          "system (each task keeps its own instruction)")
    if not names:
        return
    bad = [n for n in names if n not in NAMES]
    if bad or len(set(names)) != len(names):
        raise ConfigError(f"--components {','.join(names)}: give system and/or instruction, each once "
                          "(e.g. system,instruction)")
    if list(names) == ["instruction"]:
        raise ConfigError("--components instruction is the default single prompt; drop it, or add system")


class TaskComponents:
    """The program a components run optimizes: its seed, the roles of its components, and the run's task
    (the task itself, or the union of several). Scored by `TaskScorer` on the run's target."""

    def __init__(self, tasks: Mapping[str, Task], names: Sequence[str], *, instruction: str | None = None,
                 test_limit: int | None = None):
        check_components(names, list(tasks))
        self.names = tuple(names)
        self.shared = len(tasks) > 1
        if self.shared:
            bad = [n for n in tasks if SEP in n]
            if bad:
                raise ConfigError(f"task names {bad} hold {SEP!r}; a shared run names its examples <task>{SEP}<id>")
            tasks = {n: _prefixed(t, n, test_limit) for n, t in tasks.items()}
        self.tasks = dict(tasks)
        first = next(iter(self.tasks))
        self.instructions = {n: t.seed_prompts[0] for n, t in self.tasks.items()}
        if instruction is not None:  # --prompt: the seed instruction (of the first task)
            self.instructions[first] = instruction
        texts = {"system": SEED_SYSTEM, "instruction": self.instructions[first]}
        self.components = {n: texts[n] for n in self.names}
        self.roles = {n: ROLES[n] for n in self.names}
        self.seed = Candidate.of_components(self.components, origin="seed")
        self.version = "task:" + canonical_hash(sorted(self.tasks))
        self.task = _union(self.tasks) if self.shared else self.tasks[first]
        self._train = {ex.id: ex for t in self.tasks.values() for ex in t.split("train")}

    def check(self, cand: Candidate) -> None:
        names = tuple(n for n, _ in cand.components)
        if names != self.names:
            raise ConfigError(f"candidate {cand.id} has components {list(names) or '(a single prompt)'}, but the "
                              f"run optimizes {list(self.names)}")

    def task_of(self, example_id: str) -> str:
        return example_id.split(SEP, 1)[0] if self.shared else next(iter(self.tasks))

    def parts(self, cand: Candidate, task: str) -> PromptParts:
        """The prompt of `cand` on `task`: its system text, and its (or the task's) instruction and demos."""
        have = dict(cand.components)
        return PromptParts(have.get("instruction", self.instructions[task]), have.get("system", ""),
                           tuple(self._train[d] for d in cand.demos), tuple(cand.demo_answers))

    def prefix(self, cand: Candidate) -> str:
        """What `cand` puts where the (one) task's template has `{prompt}`: system text, instruction, demos
        (the report's `best_prefix`, which `promptopt evaluate --run` scores)."""
        name = next(iter(self.tasks))
        p = self.parts(cand, name)
        return self.tasks[name].prompt_text(p.instruction, p.demos, p.answers, p.system)

    def check_target(self, target: Backend) -> None:
        """Each task's route on the target (a shared run's union is no task a model scores)."""
        for t in self.tasks.values():
            if t.output == "choose":
                check_choose(t, target)
            elif GENERATE not in target.capabilities and CHAT not in target.capabilities:
                raise CapabilityError(f"task {t.name} needs generate but the target model "
                                      f"({target.fingerprint()}) cannot provide it")

    def routes(self, target: Backend) -> dict[str, Any]:
        return {n: describe(t, target) for n, t in self.tasks.items()}

    def breakdown(self, history: Any, seed: Candidate, best: Candidate) -> dict[str, Any]:
        """Each task's dev and test, the seed's (before) and the best's (after), and their means: what a
        shared run's report gives beside the pooled score."""
        out: dict[str, Any] = {}
        for name, t in self.tasks.items():
            row: dict[str, Any] = {}
            for split in ("dev", "test"):
                for who, cand in (("seed", seed), ("best", best)):
                    got = [r for r in history.results(cand.id, split).values() if self.task_of(r.example_id) == name]
                    score = corpus_score(t.corpus_metric, got) if got else math.nan
                    row[f"{who}_{split}"] = None if math.isnan(score) else round(score, 6)
                row[f"{split}_examples"] = len(t.split(split))
            out[name] = row
        keys = ("seed_dev", "best_dev", "seed_test", "best_test")
        out["mean"] = {k: (round(sum(r[k] for r in out.values()) / len(self.tasks), 6)
                           if all(r[k] is not None for r in out.values()) else None) for k in keys}
        return out


def _prefixed(task: Task, name: str, test_limit: int | None) -> Task:
    splits = {s: [dataclasses.replace(ex, id=f"{name}{SEP}{ex.id}") for ex in
                  (test_sample(task.split(s), test_limit) if s == "test" else task.split(s))]
              for s in ("train", "dev", "test")}
    return dataclasses.replace(task, splits=splits)


def _union(tasks: Mapping[str, Task]) -> Task:
    """The run's task of a shared run: every task's examples; what a strategy reads of it (the template,
    the description) says that the prompt is a system prompt before each task's own instruction."""
    names = list(tasks)
    splits = {s: [ex for t in tasks.values() for ex in t.split(s)] for s in ("train", "dev", "test")}
    about = "; ".join(f"{n}: {t.description or n}" for n, t in tasks.items())
    return Task(name="+".join(names), splits=splits, template="{prompt}\n\n{input}", output="generate",
                seed_prompts=(SEED_SYSTEM,),
                description=f"one system prompt shared by {len(names)} tasks, each with its own instruction ({about})",
                meta={"program": True, "tasks": names})


class TaskScorer:
    """A components run's scoring target: each candidate's prompt per task, scored by that task's scorer
    on the target in one backend call per task (the response cache keys it as any prompt)."""

    def __init__(self, program: TaskComponents, target: Backend):
        self.program = program
        self.target = target

    def score(self, cands: Sequence[Candidate], jobs: Sequence[Job]) -> list[Evaluation]:
        p = self.program
        per_task: dict[str, list[tuple[int, Job]]] = {}
        for j, (cand, job) in enumerate(zip(cands, jobs)):
            groups: dict[str, list[Example]] = {}
            for ex in job.examples:
                groups.setdefault(p.task_of(ex.id), []).append(ex)
            for name, exs in groups.items():
                parts = p.parts(cand, name)
                prompt = p.tasks[name].prompt_text(parts.instruction, parts.demos, parts.answers, parts.system)
                per_task.setdefault(name, []).append(
                    (j, Job(cand.id, prompt, job.split, tuple(exs), job.objective, parts)))
        got: list[list[Evaluation]] = [[] for _ in jobs]
        for name, items in per_task.items():
            for (j, _), ev in zip(items, score_jobs(p.tasks[name], self.target, [jb for _, jb in items])):
                got[j].append(ev)
        if not p.shared:
            return [evs[0] if evs else Evaluation(job.candidate_id, job.split, (), objective=job.objective)
                    for evs, job in zip(got, jobs)]
        return [_joined(evs, job) for evs, job in zip(got, jobs)]


def _joined(evs: list[Evaluation], job: Job) -> Evaluation:
    """One evaluation of a job from its per-task parts, in the job's example order; a part that failed as a
    whole (a backend error) fails its examples."""
    by_id: dict[str, ExampleResult] = {}
    for ev in evs:
        by_id.update({r.example_id: r for r in ev.results})
    failed = [ev for ev in evs if ev.state == "failed"]
    results = tuple(by_id.get(ex.id) or ExampleResult(ex.id, "", 0.0, error=failed[0].error if failed else "not scored")
                    for ex in job.examples)
    usage = sum((ev.usage for ev in evs), Usage())
    return Evaluation(job.candidate_id, job.split, results, "failed" if failed else "complete",
                      failed[0].error if failed else None, usage, job.objective,
                      TASK_MEAN if job.objective == "task" else None)
