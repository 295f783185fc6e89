"""GEPA-style reflective evolution (Agrawal et al. 2025, "GEPA: Reflective Prompt Evolution Can
Outperform Reinforcement Learning"; ideas from gepa-ai/gepa, no code taken).

The seed prompts are scored on the Pareto set: the first `pareto_examples` dev examples, the same
for every candidate. Each iteration then
  1. draws a parent from the instance-level Pareto frontier: the candidates best (ties included) on
     at least one Pareto example, redundant ones dropped, each drawn with probability proportional
     to the number of examples it is best on (promptopt.strategies.gepa.pareto);
  2. scores it on a minibatch of `minibatch_size` train examples and builds a trace per example:
     the input, the model's output, the score, and feedback made from the gold answer vs the
     prediction (tasks carry no textual feedback of their own yet);
  3. skips the parent if it is perfect on the minibatch (GEPA's skip_perfect_score), else shows the
     traces to the optimizer in a reflection prompt that asks for a rewritten instruction;
  4. scores the child on the same minibatch and accepts it only if its sum beats the parent's
     (strict, as GEPA's default acceptance); an accepted child is scored on the whole Pareto set
     and joins the pool.
After an iteration that added a candidate, and at most `max_merge_invocations` times, the next
iteration tries a merge instead: two frontier candidates, neither an ancestor of the other, go to a
merge prompt; the result is scored on `merge_subsample` Pareto examples balanced between where each
parent wins and ties, and kept (scored on the rest of the Pareto set) if its sum there is at least
the better parent's, as in GEPA.

How the merge of single prompts differs from GEPA's: GEPA merges programs of several components
system-aware, taking each component from whichever descendant of a common ancestor changed it, and
needs no LLM. A single prompt has one instruction, so that rule has nothing to combine; instead the
optimizer LLM is asked to write one instruction from the two, and no common ancestor is required.
Programs of several components are merged system-aware (below).

Defaults from GEPA's code: minibatch 3, Pareto parent selection, skip_perfect_score on, strict
minibatch acceptance, 5 merge invocations, merge subsample 5. Merge is on (gepa.optimize defaults it
off, DSPy's GEPA on). Scaled down for CPU: `pareto_examples` (GEPA: the whole validation set) and
`iterations` (GEPA runs until its metric-call budget is spent; here the run's --budget is that cap
and `iterations` only bounds it). Replies are read defensively: a reply that is empty, cut off,
a copy, or not an instruction is noted as `proposal.rejected` and never scored.
Every optimizer prompt is an editable template: `promptopt templates --strategy gepa`.

A program (promptopt.harness.program): each reflection rewrites one component of the parent, and its
prompt (`gepa.reflect_component`) shows that component's name and role, the other components as
read-only context, and for each minibatch example the program's output, score, and the evaluator's
feedback and trace. Which component (`component_selection`):
  * `round_robin` (default): the components take turns (strategies/blocks/components.py);
  * `traces`: the reflection LM is shown the whole program and the traces and feedback of the
    minibatch's failing examples and asked which component is at fault (`gepa.blame`); the first
    component name its reply mentions is edited. A reply naming none falls back to the round-robin
    turn (noted as `gepa.blame`), so a small model that cannot answer still makes progress. The LM,
    not a fixed rule, since only it can read a free-form trace (which step's output went wrong).
The merge of two programs is GEPA's system-aware merge, with no LLM call: from their most recent
common ancestor, each component that one parent changed and the other kept comes from the one that
changed it; a component both changed comes from the parent with the higher Pareto-set sum (the sums
differ only on the examples where their scores differ; a tie goes to the first parent). A pair is
merged only if the result takes something from each parent and is new. A one-component program merges
through the LLM, as a single prompt does.
"""
from __future__ import annotations

import re
from typing import Generator, Iterator, Literal, Sequence

from pydantic import Field

from promptopt.backends.base import GenRequest, GenResult
from promptopt.registry import register_strategy
from promptopt.strategies.blocks.components import (ComponentChoice, clip, edited, program_fields, role_of, seeds,
                                                    show_results, text_of)
from promptopt.strategies.gepa.pareto import frontier, merge_subsample, sample_parent
from promptopt.strategies.blocks.parsing import clean_prompt, extract_marked
from promptopt.strategies.blocks.selection import RacingConfig, check_racing, paired_t_pvalue
from promptopt.strategies.blocks.templates import Template, TemplateSettings
from promptopt.strategy import Context, ScoreRequest
from promptopt.task import Task
from promptopt.types import Candidate, Evaluation, Example, ExampleResult

Plan = Generator[list[ScoreRequest], None, bool]  # yields batches to score; returns whether the pool grew

FENCE = "```"

REFLECT = Template("gepa.reflect", """\
I gave an assistant the following instruction for a task:
```
{instruction}
```

Here are some task inputs, the assistant's responses and feedback on each response:
```
{traces}
```

Write a new instruction for the assistant. Read the inputs to work out what the task is and what \
format the answer takes. Read the feedback on every response: note what went wrong, and any general \
knowledge about the task that would help on new inputs, and put it in the instruction.

Reply with the new instruction only, between ``` marks.""", "reflection on per-example traces -> a new instruction")
TRACE = Template("gepa.trace", "# Example {n}\nInput: {input}\nResponse: {output}\nScore: {score}\nFeedback: {feedback}",
                 "one per-example trace in {traces}")
MERGE = Template("gepa.merge", """\
Two instructions for the same task each do best on different examples.

Instruction A:
```
{a}
```

Instruction B:
```
{b}
```

Write one instruction that keeps what makes each of them work. Reply with the new instruction only, \
between ``` marks.""", "merge of two Pareto candidates -> one instruction")

REFLECT_COMPONENT = Template("gepa.reflect_component", """\
I am improving one component of a program, "{name}": {role}. Its current text is:
```
{instruction}
```

The program's other components (context only, not to be changed):
{others}

Here are some inputs, the program's outputs, scores, and the feedback and trace of each run:
```
{traces}
```

Write a new text for "{name}". Read the inputs and traces to work out what this component must do \
for the program to succeed. Read the feedback on every run: note what went wrong, and any general \
knowledge that would help on new inputs, and put it in the text.

Reply with the new text only, between ``` marks.""", "a program: reflection on traces -> a new text for one component")
BLAME = Template("gepa.blame", """\
A program is made of these components:
{components}

It did badly on these examples (the program's input, output, score, and the feedback and trace of its run):
```
{traces}
```

Which one component is most to blame for the mistakes? Reply with its name only: one of {names}.""",
                 "a program, component_selection=traces: which component to edit, from the failing traces")

BLAME_MAX_TOKENS = 32  # a blame reply is a component's name: short, and greedy (temperature 0) so it is stable
MIN_ECHO_CHARS = 20  # a reply this long found verbatim in our request is parroting, not writing
MAX_FIELD_CHARS = 400


class GEPAConfig(TemplateSettings):
    TEMPLATES = (REFLECT, TRACE, MERGE, REFLECT_COMPONENT, BLAME)

    iterations: int = Field(50, ge=1, description="most reflection/merge iterations (GEPA: until the metric-call "
                            "budget is spent; the run's --budget caps this too)")
    minibatch_size: int = Field(3, ge=1, description="train examples per reflection and acceptance test (GEPA: 3)")
    pareto_examples: int | None = Field(32, ge=1, description="dev examples forming the Pareto set, the same for every "
                                        "candidate (GEPA: the whole validation set; scaled down for CPU; null: all of dev)")
    skip_perfect_score: bool = Field(True, description="skip a parent that is perfect on its minibatch (GEPA: on)")
    use_merge: bool = Field(True, description="try merges of two frontier candidates (gepa.optimize: off; DSPy: on)")
    max_merge_invocations: int = Field(5, ge=0, description="most merges tried in a run (GEPA: 5)")
    merge_subsample: int = Field(5, ge=1, description="Pareto examples a merge is judged on first (GEPA: 5)")
    temperature: float = Field(1.0, ge=0.0, le=2.0, description="optimizer sampling temperature (GEPA passes none, "
                               "so an API model's default of 1.0 applies)")
    max_tokens: int = Field(256, ge=16, description="longest optimizer reply")
    component_selection: Literal["round_robin", "traces"] = Field(
        "round_robin", description="a program: which component a reflection edits (round_robin: in turns; traces: "
        "the reflection LM names the one at fault from the failing examples' traces and feedback)")
    racing: RacingConfig = Field(default_factory=RacingConfig, description="score an accepted child on the Pareto "
                                 "set block by block and drop it when clearly worse than the pool's best "
                                 "(blocks.selection; max_blocks does not apply: admission needs the whole set)")


@register_strategy("gepa")
class GEPA:
    Config = GEPAConfig
    needs_optimizer = True

    def __init__(self, config: GEPAConfig):
        self.config = config
        self.prompts = config.templates()
        self.pool: list[Candidate] = []  # every candidate scored on the whole Pareto set, in order of arrival
        self.pareto_ids: tuple[str, ...] = ()
        self.iteration = 0
        self.merges_due = 0
        self.merges_tried = 0
        self.tried_pairs: set[frozenset[str]] = set()
        self._ctx: Context | None = None
        self._plan: Iterator[list[ScoreRequest]] | None = None
        self.choice = ComponentChoice()  # a program: the round-robin turn of the component to edit

    # -- the protocol: a generator plans the search; each yield is one batch for the loop to score --
    def ask(self, ctx: Context) -> Sequence[Candidate | ScoreRequest]:
        self._ctx = ctx
        if self._plan is None:
            self._plan = self._search()
        return next(self._plan, [])

    def tell(self, ctx: Context, evals: Sequence[Evaluation]) -> None:
        """Results are read back from ctx.history by the plan."""
        self._ctx = ctx

    @property
    def ctx(self) -> Context:
        assert self._ctx is not None
        return self._ctx

    def _search(self) -> Generator[list[ScoreRequest], None, None]:
        first = seeds(self.ctx)
        yield [ScoreRequest(c, "dev", n=self.config.pareto_examples) for c in first]
        scored = [c for c in first if self.ctx.history.n_scored(c.id, "dev")]
        if not scored:
            return
        self.pareto_ids = tuple(self.ctx.history.results(scored[0].id, "dev"))
        self.pool = scored
        found = False
        while self.iteration < self.config.iterations:
            self.iteration += 1
            merged = None
            if found and self.merges_due > 0:
                merged = yield from self._merge()
            if merged is None:
                found = yield from self._reflect()
                if found and self.merges_tried + self.merges_due < self.config.max_merge_invocations \
                        and self.config.use_merge:
                    self.merges_due += 1
            else:
                found = False  # as GEPA: a merge iteration is not followed by another merge

    # -- the pieces --
    def scores(self) -> dict[str, dict[str, float]]:
        """Pareto-set scores of every pool candidate."""
        return {c.id: {e: r.score for e, r in self.ctx.history.results(c.id, "dev").items() if e in self.pareto_ids}
                for c in self.pool}

    def _feedback_split(self) -> str:
        return "train" if self.ctx.task.split("train") else "dev"

    def _fits(self, n: int) -> bool:
        return self.ctx.budget.room(n) > 0

    def _reflect(self) -> Plan:
        """One reflective mutation; True when a child joined the pool."""
        ctx, cfg = self.ctx, self.config
        by_id = {c.id: c for c in self.pool}
        parent = by_id[sample_parent(ctx.rng, self.scores(), list(by_id))]
        split = self._feedback_split()
        examples = ctx.task.split(split)
        batch = [examples[i] for i in ctx.rng.sample(range(len(examples)), min(cfg.minibatch_size, len(examples)))]
        ids = tuple(ex.id for ex in batch)
        seen = ctx.history.results(parent.id, split)
        missing = tuple(i for i in ids if i not in seen)
        if not self._fits(len(missing) + len(ids)):
            self.iteration = cfg.iterations  # the budget cannot judge a child: stop before paying the optimizer
            return False
        if missing:
            yield [ScoreRequest(parent, split, example_ids=missing)]
        results = ctx.history.results(parent.id, split)
        if any(i not in results for i in ids):
            return False  # the parent's evaluation failed
        if cfg.skip_perfect_score and all(results[i].score >= 1 for i in ids):
            ctx.note("gepa.skip_perfect", parent=parent.id, examples=list(ids))
            return False
        name = self._component(parent, [(ex, results[ex.id]) for ex in batch])
        if name is None:
            traces = "\n\n".join(self.prompts["trace"].format(
                n=k + 1, input=_clip(ex.input), output=_clip(results[ex.id].output), score=_num(results[ex.id].score),
                feedback=feedback(ctx.task, ex, results[ex.id])) for k, ex in enumerate(batch))
            ask = self.prompts["reflect"].format(instruction=parent.text, traces=traces)
        else:
            ask = self.prompts["reflect_component"].format(
                instruction=text_of(parent, name), traces=show_results(ctx.task, [(ex, results[ex.id]) for ex in batch]),
                **program_fields(ctx, parent, name))
        child = self._propose(ask, "gepa.reflect", parent, [text_of(parent, name)], name=name,
                              meta={"iteration": self.iteration, "minibatch": list(ids)})
        if child is None:
            return False
        yield [ScoreRequest(child, split, example_ids=ids)]
        new = ctx.history.results(child.id, split)
        if any(i not in new for i in ids):
            return False
        before, after = sum(results[i].score for i in ids), sum(new[i].score for i in ids)
        if after <= before:
            ctx.note("gepa.rejected", candidate=child.id, parent=parent.id, minibatch=list(ids),
                     parent_sum=before, child_sum=after)
            return False
        return (yield from self._admit(child))

    def _component(self, parent: Candidate, shown: list[tuple[Example, ExampleResult]]) -> str | None:
        """The component a reflection on `parent` edits (None: a single prompt), by `component_selection`."""
        if not parent.components or self.config.component_selection == "round_robin" or len(parent.components) == 1:
            return self.choice.pick(parent)
        ctx = self.ctx
        failing = [(ex, r) for ex, r in shown if r.score < 1] or shown
        names = [n for n, _ in parent.components]
        ask = self.prompts["blame"].format(
            components="\n".join(f'- {n} ({role_of(ctx, n)}): "{clip(t)}"' for n, t in parent.components),
            traces=show_results(ctx.task, failing), names=", ".join(names))
        out = ctx.require_optimizer().generate(
            [GenRequest(messages=(("user", ask),), max_tokens=BLAME_MAX_TOKENS, temperature=0.0)], purpose="gepa.blame")[0]
        named = blamed(out.text if not out.error else "", names)
        if named is None:
            named = self.choice.pick(parent)
            ctx.note("gepa.blame", parent=parent.id, component=named, reason="the reply names no component: "
                     "round-robin turn", raw=out.text)
        else:
            ctx.note("gepa.blame", parent=parent.id, component=named, raw=out.text)
        return named

    def _merge(self) -> Generator[list[ScoreRequest], None, bool | None]:
        """One merge attempt; None when no pair can be merged (the iteration reflects instead),
        else True when the merged candidate joined the pool."""
        ctx = self.ctx
        by_id = {c.id: c for c in self.pool}
        scores = self.scores()
        front = list(frontier(scores, list(by_id)))
        pairs = [(a, b) for i, a in enumerate(front) for b in front[i + 1:]
                 if frozenset((a, b)) not in self.tried_pairs
                 and not self._related(by_id[a], by_id[b])]
        system = len(self.pool[0].components) > 1  # a program of several components: the system-aware merge
        if system:
            combined = {p: self._combine(by_id[p[0]], by_id[p[1]], scores) for p in pairs}
            pairs = [p for p in pairs if combined[p] is not None]
        if not pairs:
            return None
        pair = ctx.rng.choice(pairs)
        a, b = (by_id[x] for x in pair)
        self.tried_pairs.add(frozenset((a.id, b.id)))
        ids = merge_subsample(ctx.rng, scores[a.id], scores[b.id], self.config.merge_subsample)
        if not self._fits(len(ids)):
            return None
        self.merges_due -= 1
        self.merges_tried += 1
        meta = {"iteration": self.iteration, "subsample": ids}
        if system:
            items, took = combined[pair]  # type: ignore[misc]
            child = Candidate.of_components(items, origin="gepa.merge", parents=(a.id, b.id),
                                            meta={**meta, "components_from": took}, demos=a.demos)
        else:
            name = a.components[0][0] if a.components else None
            ask = self.prompts["merge"].format(a=a.text, b=b.text)
            # Demos and system prompt come from the first parent.
            child = self._propose(ask, "gepa.merge", a, [a.text, b.text], parents=(a.id, b.id), name=name, meta=meta)
        if child is None:
            return False
        yield [ScoreRequest(child, "dev", example_ids=tuple(ids))]
        new = ctx.history.results(child.id, "dev")
        if any(i not in new for i in ids):
            return False
        got = sum(new[i].score for i in ids)
        bar = max(sum(scores[a.id][i] for i in ids), sum(scores[b.id][i] for i in ids))
        if got < bar:
            ctx.note("gepa.rejected", candidate=child.id, parents=[a.id, b.id], subsample=ids,
                     child_sum=got, parents_best_sum=bar)
            return False
        return (yield from self._admit(child))

    def check_task(self, task: Task) -> None:
        check_racing(self.config.racing, len(task.split("dev")))

    def _admit(self, child: Candidate) -> Plan:
        """Score an accepted child on the rest of the Pareto set and add it to the pool (with racing:
        block by block, stopping when a paired test says it is worse than the pool's best)."""
        seen = self.ctx.history.results(child.id, "dev")
        missing = tuple(i for i in self.pareto_ids if i not in seen)
        step = self.config.racing.block if self.config.racing.enabled else len(missing)
        for start in range(0, len(missing), max(1, step)):
            yield [ScoreRequest(child, "dev", example_ids=missing[start:start + step])]
            if start + step < len(missing) and self._raced_out(child):
                return False
        if any(i not in self.ctx.history.results(child.id, "dev") for i in self.pareto_ids):
            return False
        self.pool.append(child)
        self.ctx.note("gepa.accepted", candidate=child.id, origin=child.origin, pool=len(self.pool),
                      frontier=len(frontier(self.scores(), [c.id for c in self.pool])))
        return True

    def _raced_out(self, child: Candidate) -> bool:
        """Whether the child is significantly worse than the pool's best on the Pareto examples it has."""
        mine = self.ctx.history.results(child.id, "dev")
        ids = [i for i in self.pareto_ids if i in mine]
        scores = self.scores()
        if len(ids) < 2 or not scores:
            return False
        leader = max(scores, key=lambda c: sum(scores[c][i] for i in ids))
        p = paired_t_pvalue([scores[leader][i] for i in ids], [mine[i].score for i in ids])
        if p < self.config.racing.alpha:
            self.ctx.note("gepa.raced_out", candidate=child.id, leader=leader, examples=len(ids), p=round(p, 4))
            return True
        return False

    def _combine(self, a: Candidate, b: Candidate, scores: dict[str, dict[str, float]]
                 ) -> tuple[list[tuple[str, str]], dict[str, str]] | None:
        """The system-aware merge of two programs (see the module docstring): the components, and for each
        component the parents differ on, which parent's id it came from; None if it would add nothing new."""
        common = self._ancestors(a) & self._ancestors(b)
        if not common:
            return None
        order = {c.id: i for i, c in enumerate(self.ctx.history.candidates())}
        anc = self.ctx.history.candidate(max(common, key=lambda c: order.get(c, -1)))
        ids = set(scores[a.id]) & set(scores[b.id])
        better = b if sum(scores[b.id][i] for i in ids) > sum(scores[a.id][i] for i in ids) else a
        items, took = [], {}
        for (n, ta), (_, tb) in zip(a.components, b.components):
            if ta == tb:
                items.append((n, ta))
                continue
            src = b if ta == anc.component(n) else a if tb == anc.component(n) else better
            items.append((n, text_of(src, n)))
            took[n] = src.id
        if len(set(took.values())) < 2:
            return None  # everything from one parent: that parent again
        if Candidate.of_components(items, demos=a.demos).id in self.ctx.history:
            return None
        return items, took

    def _related(self, a: Candidate, b: Candidate) -> bool:
        """Whether one is an ancestor of the other (a merge of those would add nothing new)."""
        return b.id in self._ancestors(a) or a.id in self._ancestors(b)

    def _ancestors(self, c: Candidate) -> set[str]:
        out: set[str] = set()
        todo = list(c.parents)
        while todo:
            p = todo.pop()
            if p not in out and p in self.ctx.history:
                out.add(p)
                todo += self.ctx.history.candidate(p).parents
        return out

    def _propose(self, ask: str, purpose: str, base: Candidate, sources: list[str],
                 parents: tuple[str, ...] | None = None, meta: dict | None = None,
                 name: str | None = None) -> Candidate | None:
        """Ask the optimizer once; the child (an edit of `base`'s instruction, or of a program's component
        `name`), or None if unusable."""
        cfg, ctx = self.config, self.ctx
        out = ctx.require_optimizer().generate(
            [GenRequest(messages=(("user", ask),), max_tokens=cfg.max_tokens, temperature=cfg.temperature)],
            purpose=purpose)[0]
        text, problem = read_instruction(out, ask, sources)
        child = edited(base, name, text, origin=purpose, parents=parents, meta=meta)
        if not problem and child.id in ctx.history:
            problem = "duplicate of an earlier candidate"
        if problem:
            ctx.note("proposal.rejected", stage=purpose, parents=list(parents or (base.id,)), reason=problem,
                     raw=out.text)
            return None
        return child


def read_instruction(out: GenResult, ask: str, sources: Sequence[str]) -> tuple[str, str | None]:
    """The instruction in one reply, or (text, why it was rejected). Prefers a ``` block, as asked;
    a reply without one is accepted only as a single complete paragraph."""
    if out.error:
        return "", f"optimizer call failed: {out.error}"
    marked = extract_marked(out.text, FENCE, FENCE)
    if marked is None:
        if out.finish_reason == "length":
            return out.text, "truncated: the reply hit max_tokens"
        if len([p for p in re.split(r"\n\s*\n", out.text.strip()) if p.strip()]) > 1:
            return out.text, "no ``` block"
        marked = out.text
    else:
        marked = re.sub(r"^[A-Za-z]*\n", "", marked)  # a fence's language tag ("```text")
    text, problem = clean_prompt(marked)
    if problem:
        return text, problem
    if any(_squash(text) == _squash(s) for s in sources):
        return text, "copy of a parent prompt"
    body = _squash(ask)
    for s in sources:
        body = body.replace(_squash(s), " ")
    if len(_squash(text)) >= MIN_ECHO_CHARS and _squash(text) in body:
        return text, "echo of the request"
    return text, None


def blamed(reply: str, names: Sequence[str]) -> str | None:
    """The component a blame reply names: the one mentioned first (whole words, any case), or None."""
    found = [(m.start(), n) for n in names
             if (m := re.search(rf"(?<![\w]){re.escape(n)}(?![\w])", reply, re.I)) is not None]
    return min(found)[1] if found else None


def feedback(task: Task, ex: Example, res: ExampleResult) -> str:
    """Textual feedback on one response, from the gold answer vs the prediction."""
    if res.error:
        return f"The model failed to answer: {res.error}"
    if res.feedback:  # the task's own metric said why
        return res.feedback
    if task.output == "choose" and ex.label is not None:
        gold, said = task.options[ex.label].strip(), res.output.strip()
    else:
        gold, said = ex.target.strip(), (task.extract(res.output) or "").strip() or "(none)"
    if res.score >= 1:
        return f"Correct: the answer is {gold!r}."
    if res.score > 0:
        return f"Partly correct (score {_num(res.score)}): the expected answer is {gold!r}, the model's answer was {said!r}."
    return f"Wrong: the expected answer is {gold!r}, the model's answer was {said!r}."


def _squash(text: str) -> str:
    return " ".join(text.split()).lower()


def _num(x: float) -> str:
    return f"{x:g}"


def _clip(text: str) -> str:
    """Keep both ends of a long text: a worked solution ends with its answer."""
    text = text.strip()
    if len(text) <= MAX_FIELD_CHARS:
        return text
    half = MAX_FIELD_CHARS // 2
    return f"{text[:half].rstrip()} ... {text[-half:].lstrip()}"
