"""The ask -> score -> tell loop. It owns all bookkeeping: steps, the run log, scoring through the
cache, the budget, failures as data, and the final dev/test report. Strategies only propose and update."""
from __future__ import annotations

import dataclasses
import functools
import logging
import math
import random
import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Sequence

from promptopt.backends.base import CHAT, GENERATE, LOGLIKELIHOOD, Backend, GenRequest, GenResult, missing_reason
from promptopt.budget import BudgetTracker
from promptopt.callbacks import Dispatcher
from promptopt.task.data import test_sample
from promptopt.task.demos import check_demo_ids, sample_demo_ids
from promptopt.errors import (BackendError, BudgetExhausted, CapabilityError, ConfigError, PromptOptError, ResumeError,
                              RunStopped)
from promptopt.measure import final_pick
from promptopt.measure.objectives import Measurer
from promptopt.measure.selector import RunSelector, Selector, held_out_check, selector_text
from promptopt.resolved import ResolvedRun
from promptopt.task.retrieval import Retriever, check_embedding, check_policy
from promptopt.runlog import RunLog
from promptopt.scoring.routes import check_choose
from promptopt.scoring import candidates
from promptopt.scoring.scorer import Job, score_jobs
from promptopt.measure.significance import compare_paired
from promptopt.strategy import OBJECTIVES, Context, History, ScoreRequest, check_task, needs
from promptopt.task import Task
from promptopt.timing import Timings, cache_seconds
from promptopt.types import Candidate, Evaluation, Example, Usage

log = logging.getLogger("promptopt")
TOO_LONG = "shorten the prompt"  # what every backend's error for a request over the model's window says


@dataclass
class Report:
    """What a finished (or stopped) run found."""

    run_dir: str | None
    seed_prompt: str
    best_prompt: str
    best_id: str
    seed_dev: float
    best_dev: float
    seed_test: float | None
    best_test: float | None
    steps: int
    candidates: int
    stop_reason: str
    search: dict[str, Any] = field(default_factory=dict)  # budget use during the search
    final: dict[str, Any] = field(default_factory=dict)  # what the final report scored (not in the budget)
    target_usage: Usage = field(default_factory=Usage)
    optimizer_usage: Usage = field(default_factory=Usage)
    failures: int = 0
    seconds: float = 0.0
    best_demos: tuple[str, ...] = ()  # train example ids of the best candidate's demos
    best_prefix: str = ""  # what the best candidate puts where {prompt} stands (instruction + demos)
    significance: dict[str, Any] | None = None  # seed vs best on the same test examples
    objectives: dict[str, Any] | None = None  # several objectives: the finalists' front (objectives.py)
    timings: dict[str, float] = field(default_factory=dict)  # this session's wall time by part (timing.py)
    partial: bool = False  # a second Ctrl-C skipped the final report: dev scores as they were, no test
    final_pick: dict[str, Any] | None = None  # a final.* rule other than the dev pick: what it saw and chose
    selector: dict[str, Any] | None = None  # final.selector: per-input choice vs the pick, on test
    best_retrieval: dict[str, Any] | None = None  # the best candidate's retrieval policy (demos per input)
    best_components: dict[str, str] = field(default_factory=dict)  # a program's best candidate (promptopt.harness.program)

    def to_json(self) -> dict[str, Any]:
        def num(x: float | None) -> float | None:
            return None if x is None or math.isnan(x) else round(x, 6)
        return {
            "run_dir": self.run_dir, "seed_prompt": self.seed_prompt, "best_prompt": self.best_prompt,
            "best_id": self.best_id, "seed_dev": num(self.seed_dev), "best_dev": num(self.best_dev),
            "seed_test": num(self.seed_test), "best_test": num(self.best_test), "steps": self.steps,
            "candidates": self.candidates, "stop_reason": self.stop_reason, "search": self.search,
            "final": self.final,
            "target_usage": self.target_usage.to_json(), "optimizer_usage": self.optimizer_usage.to_json(),
            "failures": self.failures, "seconds": round(self.seconds, 2),
            "best_demos": list(self.best_demos), "best_prefix": self.best_prefix,
            "significance": self.significance, **({"objectives": self.objectives} if self.objectives else {}),
            "timings": self.timings, **({"partial": True} if self.partial else {}),
            **({"final_pick": self.final_pick} if self.final_pick else {}),
            **({"selector": self.selector} if self.selector else {}),
            **({"best_retrieval": self.best_retrieval} if self.best_retrieval else {}),
            **({"best_components": self.best_components} if self.best_components else {}),
        }


class _OptimizerChannel:
    """The optimizer LLM as a strategy sees it: budgeted, logged, replayed on resume, seeded."""

    def __init__(self, run: "Run", backend: Backend):
        self._run = run
        self._backend = backend

    def generate(self, reqs: Sequence[GenRequest], *, purpose: str = "") -> list[GenResult]:
        run = self._run
        if not reqs:
            return []
        run.tracker.check_optimizer_call(len(reqs))
        # Sampled calls get a seed derived from the run, so they are reproducible and cacheable.
        reqs = [r if r.temperature == 0 or r.seed is not None
                else replace(r, seed=run.seed * 1_000_003 + run.tracker.optimizer_calls + i)
                for i, r in enumerate(reqs)]
        recorded = run.log.peek() if run.log else None
        if recorded is not None and recorded["type"] == "optimizer_call":
            results = [GenResult(o["text"], o.get("finish_reason", "stop"), Usage.from_json(o.get("usage")),
                                 o.get("error")) for o in recorded["responses"]]
        else:
            t0, c0 = time.perf_counter(), cache_seconds(self._backend)
            try:
                results = [replace(r, text=_valid_text(r.text)) for r in self._backend.generate(reqs)]
            except PromptOptError as e:
                if isinstance(e, BackendError) and e.fatal:
                    raise
                results = [GenResult("", "error", Usage(), str(e)) for _ in reqs]
            finally:
                run.timings.add("optimizer_generation", time.perf_counter() - t0, cache_seconds(self._backend) - c0)
        run.tracker.record_optimizer_call(len(reqs), sum((r.usage for r in results), Usage()))
        if run.log:
            run.log.emit("optimizer_call", step=run.step, purpose=purpose,
                         requests=[_gen_req_json(r) for r in reqs],
                         responses=[{"text": r.text, "finish_reason": r.finish_reason,
                                     "usage": r.usage.to_json(), "error": r.error} for r in results])
        return results


def _valid_text(text: str) -> str:
    """A reply with any lone surrogate (a JSON "\\ud800" from a server) replaced, so it can be a prompt."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return "".join("\ufffd" if 0xD800 <= ord(c) <= 0xDFFF else c for c in text)


def _because(backend: Backend, capability: str) -> str:
    """': <the backend's reason>' for a missing capability, or '' when it gives none."""
    reason = missing_reason(backend, capability)
    return f": {reason}" if reason else ""


def _gen_req_json(r: GenRequest) -> dict[str, Any]:
    d: dict[str, Any] = {"max_tokens": r.max_tokens, "temperature": r.temperature, "seed": r.seed}
    if r.messages:
        d["messages"] = [{"role": role, "content": c} for role, c in r.messages]
    else:
        d["prompt"] = r.prompt
    if r.stop:
        d["stop"] = list(r.stop)
    return d


class Run:
    """One optimization run. Use `run()` for the whole loop, or `step()` / `ask()` + `tell()` to drive it
    from an evaluation harness that scores prompts itself."""

    def __init__(self, resolved: ResolvedRun, *, target: Backend | None, optimizer: Backend | None,
                 log: RunLog | None = None, on_step: Callable[["Run"], None] | None = None,
                 callbacks: Sequence[Any] = (), program: Any = None):
        """`resolved`: what to run (promptopt.resolved: from a RunConfig, or built in Python); `target` and
        `optimizer`: the backends built from its specs (or the caller's own). `program`: a
        promptopt.harness.program.ProgramScorer that scores candidates instead of a target backend."""
        task, strategy, seed, seed_prompt, demos = (resolved.task, resolved.strategy, resolved.seed,
                                                    resolved.prompt, resolved.demos)
        self.resolved = resolved
        self.task = task
        self.strategy = strategy
        self.target = target
        self.program = program
        self.optimizer = optimizer
        self.seed = seed
        self.log = log
        # Wall time is not replayable: the recorded run passed its time checks, so replay skips them.
        # The search gets the budget less what the final pick is paid from it (final_pick.py).
        self.tracker = BudgetTracker(resolved.budget.model_copy(update={"max_examples": final_pick.search_examples(
            resolved.budget.max_examples, resolved.final.counted)}), replaying=lambda: self.log is not None and self.log.replaying)
        self.history = History()
        self.step = 0
        self.seed_prompt = resolved.seed_prompt
        self.final_top_k = resolved.final_top_k
        self.final_rule = resolved.final_rule
        self.max_failures = resolved.max_failures
        self.test_limit = resolved.test_limit
        self.on_step = on_step
        self.callbacks = Dispatcher(callbacks)  # promptopt/callbacks.py: events and stop conditions
        self._best_dev = -math.inf
        self.failures = 0
        self.target_usage = Usage()  # search + final report; the tracker holds the search part
        self.final_examples = 0  # (prompt, example) pairs the final report scored: outside the budget
        self.timings = Timings()  # wall time by part, this session only; never logged as events
        self.stop_reason = ""
        self.learned_selector: RunSelector | None = None  # final.selector's, for selector.json
        # The strategy's own stream, apart from the seed's other jobs (docs/architecture.md, "The run seed's
        # jobs"); a log from before the split replays with the old one (see _choose_streams).
        self._rng = random.Random(f"{seed}:strategy")
        # A fixed per-run order of each split: "n more unseen examples" walks it.
        self._order = {s: _shuffled(task.split(s), random.Random(f"{seed}:{s}")) for s in ("train", "dev")}
        self._by_id = {ex.id: ex for s in ("train", "dev") for ex in task.split(s)}
        self._train_ids = {ex.id for ex in task.split("train")}
        # `demos=K`: every strategy starts from the seed prompt with K train demos (drawn once, label-balanced).
        self.seed_demos = self._seed_demos(task, demos, seed)
        self._window_checked: set[str] = set()
        # Demos retrieved per input (promptopt.task.retrieval): indexes only the train split, built on first use.
        self.retriever = Retriever(task.split("train"), target,
                                   resolved.cache_path.parent / "embeddings" if resolved.cache_path else None)
        self._pending: list[ScoreRequest] = []  # what the last ask() returned: the part of the step that fits
        self._asked: list[ScoreRequest] = []  # the strategy's requests of that step, whole
        self._kept: list[bool] = []  # per asked request: whether any of it is in _pending
        self._legacy_log = False  # resuming a log made before the loop took in what fits (see _choose_streams)
        view = task.without_test()
        if seed_prompt is not None:  # a user's seed prompt ("" too) is where every strategy starts
            view = dataclasses.replace(view, seed_prompts=(seed_prompt, *[p for p in view.seed_prompts if p != seed_prompt]))
        self._ctx = Context(task=view,
                            optimizer=_OptimizerChannel(self, optimizer) if optimizer is not None else None,
                            history=self.history, rng=self._rng, step=0, budget=self.tracker.view(),
                            notes=self._note, seed_demos=self.seed_demos)
        if program is not None:  # strategies start from the program's seed components
            self._ctx.seed_program = program.program.seed
            self._ctx.component_roles = dict(program.program.roles)
        self.objectives = self._measurer(resolved.objectives, resolved.objective_weights)  # None: the task metric only
        self._ctx.objectives = self.objectives if self.objectives is not None and self.objectives.weighted else None
        self._check_capabilities()
        n, window = self._tokens(self.seed_prompt)
        if n > window:  # every evaluation would fail: refuse before any model call
            raise ConfigError(f"the seed prompt with the longest example comes to {n} tokens, over the model's "
                              f"window of {window}; shorten the prompt")
        check_task(strategy, self._ctx.task)  # a strategy may refuse a task it cannot search
        for name in getattr(strategy, "retrieval_embeddings", ()):  # a strategy that retrieves demos: usable here?
            check_embedding(name, target)

    # -- setup --
    @staticmethod
    def _seed_demos(task: Task, k: int, seed: int) -> tuple[str, ...]:
        if k <= 0:
            return ()
        train = task.split("train")
        if not train:
            raise ConfigError(f"--demos {k}: task {task.name} has no train split to draw demos from")
        return sample_demo_ids(train, k, random.Random(f"{seed}:demos"))

    def _check_capabilities(self) -> None:
        if self.target is not None and self.task.output == "choose":
            check_choose(self.task, self.target)  # a route for it (loglikelihood or a chat route), or one line
        elif self.target is not None:
            need = GENERATE
            if need not in self.target.capabilities:
                raise CapabilityError(f"task {self.task.name} needs {need} but the target model "
                                      f"({self.target.fingerprint()}) cannot provide it"
                                      f"{_because(self.target, need)}")
        wants = needs(self.strategy)
        if wants.optimizer:
            if self.optimizer is None:
                raise CapabilityError(f"strategy {type(self.strategy).__name__} needs an optimizer model; "
                                      "pass --optimizer-model")
            if GENERATE not in self.optimizer.capabilities and CHAT not in self.optimizer.capabilities:
                raise CapabilityError(f"the optimizer model cannot generate text{_because(self.optimizer, GENERATE)}")
        if wants.loglikelihood and self.target is not None \
                and LOGLIKELIHOOD not in self.target.capabilities:
            raise CapabilityError(f"strategy {type(self.strategy).__name__} needs log-likelihoods but the target "
                                  f"model ({self.target.fingerprint()}) cannot give them"
                                  f"{_because(self.target, LOGLIKELIHOOD)}")

    def _measurer(self, names: Sequence[str], weights: Any) -> Measurer | None:
        if list(names) == ["task"] and not weights:
            return None
        inner = getattr(self.target, "inner", self.target)
        count = getattr(inner, "count_tokens", None)
        return Measurer(names, weights, prompt_text=self.prompt_of, render=self.task.render,
                        example=self._by_id.__getitem__, count=count if callable(count) else None)

    def _note(self, kind: str, **data: Any) -> None:
        if self.log:
            self.log.emit("note", step=self.step, kind=kind, **data)
        if kind == "proposal.rejected":
            self.callbacks.emit("on_candidate", self, None, accepted=False, reason=str(data.get("reason", "")),
                                data=data)

    @property
    def replaying(self) -> bool:
        """True while a resumed run serves recorded events from its log."""
        return self.log is not None and self.log.replaying

    # -- ask / tell --
    def ask(self) -> list[ScoreRequest]:
        """The strategy's next requests, with examples resolved. Empty when the search is over."""
        if self._pending:
            raise PromptOptError("tell() the results of the previous ask() first")
        spent = self.tracker.exhausted()
        if spent:
            self.stop_reason = f"budget: {spent}"
            return []
        if self.step == 0:
            self._choose_streams()
        self.step += 1
        self._ctx.step = self.step
        try:
            raw = list(self.strategy.ask(self._ctx))
        except BudgetExhausted as e:
            self.stop_reason = f"budget: {e}"
            return []
        if not raw:
            why = getattr(self.strategy, "done_reason", "")  # optional: see Strategy
            self.stop_reason = f"strategy finished: {why}" if isinstance(why, str) and why else "strategy finished"
            return []
        reqs = [self._resolve(r if isinstance(r, ScoreRequest) else ScoreRequest(r)) for r in raw]
        need, left = sum(len(r.example_ids or ()) for r in reqs), self.tracker.examples_left()
        if self._legacy_log and left is not None and need > left:  # as that run did: a step that does not fit ends it
            self.stop_reason = f"budget: examples (step {self.step} needs {need}, {left} left)"
            return []
        for r in reqs:
            self._check_prompt(r.candidate)
        for r in reqs:
            if self.history._add_candidate(r.candidate) and self.log:
                rec = self.log.emit("candidate", step=self.step, candidate_id=r.candidate.id, **r.candidate.to_json())
                _check_recorded_candidate(rec, self.log.path)
                self.callbacks.emit("on_candidate", self, r.candidate, accepted=True)
        self._asked = reqs
        self._pending = self._fitting(reqs)
        return self._pending

    def _fitting(self, reqs: list[ScoreRequest]) -> list[ScoreRequest]:
        """The part of a step the example budget pays for. Requests are filled in order, each with a prefix
        of its example ids, so one request may be scored in part (its Evaluation lists the ids that were
        scored) and the ones after it not at all (tell() hands the strategy an "unscored" Evaluation for
        each). Partial scoring uses the last examples of a budget rather than leaving them; the cut depends
        only on the requests and the examples spent, so a resumed run replays the same one."""
        sizes = [len(r.example_ids or ()) for r in reqs]
        fit = self.tracker.fit(sizes)
        self._kept = [k > 0 or n == 0 for k, n in zip(fit, sizes)]
        if fit == sizes:
            return reqs
        cut = [{"candidate_id": r.candidate.id, "split": r.split, "objective": r.objective, "scored": k,
                "unscored": list((r.example_ids or ())[k:])} for r, k, n in zip(reqs, fit, sizes) if k < n]
        self._note("budget.unscored", requests=cut)  # what the budget left out, for `show` and resume
        return [replace(r, example_ids=(r.example_ids or ())[:k]) for r, k, kept in zip(reqs, fit, self._kept) if kept]

    def _choose_streams(self) -> None:
        """Before the first step: logs written since the run seed's jobs got separate streams (and the loop
        took in what fits) open with a "run.streams" note; a resumed log without one is replayed, and goes
        on, as it was made: with the strategy stream Random(seed), and a step that does not fit ending it."""
        rec = self.log.peek() if self.log else None
        if rec is not None and not (rec["type"] == "note" and rec.get("kind") == "run.streams"):
            self._rng.seed(self.seed)
            self._legacy_log = True
            return
        self._note("run.streams", strategy=f"{self.seed}:strategy")

    def _check_prompt(self, cand: Candidate) -> None:
        """Demos come from train only, and a demo set that overflows the model's window is refused
        before any model call (with its token count)."""
        if self.program is not None and cand.id not in self._window_checked:
            self.program.program.check(cand)
        if cand.id in self._window_checked or not (cand.demos or cand.system or cand.retrieval):
            return
        candidates.check_shape(cand)
        if cand.retrieval is not None:
            check_policy(cand.retrieval, self.task.split("train"), self.target, f"candidate {cand.id}")
            # The window check assumes the k longest other train examples are retrieved after the shared ones.
            policy = cand.retrieval
            shared = [self._by_id[d] for d in policy.shared]
            longest = sorted((ex for ex in self.task.split("train") if ex.id not in policy.shared),
                             key=lambda ex: -len(self.task.demo_text(ex)))[:policy.k]
            n, window = self._tokens(self.task.prompt_text(cand.text, [*shared, *longest], (), cand.system))
            if n > window:
                what = f"{len(shared)} shared and {policy.k} retrieved" if shared else f"{policy.k} retrieved"
                raise PromptOptError(f"candidate {cand.id}: its instruction and {what} demos can come to {n} tokens, "
                                     f"over the model's window of {window}; use a smaller k")
            self._window_checked.add(cand.id)
            return
        check_demo_ids(cand.demos, self._train_ids, f"candidate {cand.id}")
        n, window = self._tokens(self.prompt_of(cand))
        if n > window:
            raise PromptOptError(f"candidate {cand.id}: its instruction and {len(cand.demos)} demos with the "
                                 f"longest example come to {n} tokens, over the model's window of {window}; "
                                 "use fewer or shorter demos")
        self._window_checked.add(cand.id)

    def _tokens(self, prompt: str) -> tuple[int, int]:
        """Tokens of `prompt` rendered with the longest example, and the target's window; (0, 0) when
        the target cannot count (an API model)."""
        inner = getattr(self.target, "inner", self.target)
        count, window = getattr(inner, "count_tokens", None), getattr(inner, "max_length", None)
        if not (callable(count) and window and self._longest is not None):
            return 0, 0
        return count(self.task.render(prompt, self._longest)), window

    def leaders(self, k: int) -> list[Candidate]:
        """The k candidates the final report takes as finalists now: dev scores less one standard error, so that
        a score on a few examples counts for less (final_pick.shortlist)."""
        scored = {c.id: (self.history.score(c.id, "dev"), [r.score for r in self.history.results(c.id, "dev").values()])
                  for c in self.history.candidates() if self.history.n_scored(c.id, "dev")}
        return [self.history.candidate(cid) for cid in final_pick.shortlist(scored, k)]

    def prompt_of(self, cand: Candidate) -> str:
        """The text that stands where the template has `{prompt}`: system prompt, instruction, demos (none
        for a retrieval policy: its demos differ per input, see `_jobs`)."""
        return candidates.prompt_text(self.task, cand, self._by_id)

    @functools.cached_property
    def _longest(self) -> Example | None:
        pool = [ex for s in ("dev", "test") for ex in self.task.split(s)]
        return max(pool, key=lambda ex: len(ex.input) + sum(len(v) for v in ex.fields.values()), default=None)

    def _resolve(self, r: ScoreRequest) -> ScoreRequest:
        if r.objective not in OBJECTIVES:
            raise PromptOptError(f"a score request's objective must be one of {', '.join(OBJECTIVES)}, "
                                 f"not {r.objective!r}")
        if r.split not in ("train", "dev"):
            raise PromptOptError(f"strategies may score only train or dev examples, not {r.split!r}")
        if r.example_ids is not None:
            unknown = [i for i in r.example_ids if i not in self._by_id]
            if unknown:
                raise PromptOptError(f"unknown example id(s) {unknown[:3]} in a score request")
            return r
        pending = {i for p in self._pending for i in (p.example_ids or ())}
        seen = self.history.results(r.candidate.id, r.split, r.objective)
        fresh = [ex.id for ex in self._order[r.split] if ex.id not in seen and ex.id not in pending]
        return replace(r, example_ids=tuple(fresh if r.n is None else fresh[:r.n]))

    def tell(self, evals: Sequence[Evaluation]) -> None:
        """Record the results of the last ask() (same order) and pass them to the strategy."""
        if len(evals) != len(self._pending):
            raise PromptOptError(f"tell() got {len(evals)} evaluations for {len(self._pending)} requests")
        for ev in evals:
            self._record(ev, search=True)
        # One Evaluation per request the strategy made: those the budget left out come back "unscored".
        scored = iter(evals)
        whole = [next(scored) if kept else
                 Evaluation(r.candidate.id, r.split, (), state="unscored", objective=r.objective)
                 for r, kept in zip(self._asked, self._kept)]
        self._pending, self._asked, self._kept = [], [], []
        self.strategy.tell(self._ctx, whole)
        if self.callbacks:
            ranked = self.history.ranked("dev")
            if ranked and ranked[0][1] > self._best_dev:
                self._best_dev = ranked[0][1]
                self.callbacks.emit("on_new_best", self, ranked[0][0], ranked[0][1])

    def _record(self, ev: Evaluation, *, search: bool) -> None:
        self.history._add_evaluation(ev)
        self.target_usage = self.target_usage + ev.usage
        if self.objectives is not None:
            self.objectives.record(ev)
        if search:
            self.tracker.record_evaluation(ev)
        else:
            self.final_examples += len(ev.results)
        if ev.state == "failed":
            self.failures += 1
            log.warning("evaluation of %s failed: %s", ev.candidate_id, ev.error)

    # -- scoring through the log (replay) and the backend --
    def score(self, reqs: Sequence[ScoreRequest], phase: str = "search") -> list[Evaluation]:
        """Score requests with one backend call, serving recorded evaluations while replaying."""
        if self.target is None and self.program is None:
            raise PromptOptError("this run has no target backend: score prompts yourself and call tell()")
        out: list[Evaluation | None] = [None] * len(reqs)
        live = []
        for i, r in enumerate(reqs):
            rec = self.log.peek() if self.log else None
            if rec is not None and rec["type"] == "eval" and rec["candidate_id"] == r.candidate.id and not live:
                out[i] = Evaluation.from_json(rec)
                self.log.emit("eval", step=self.step, candidate_id=r.candidate.id, split=r.split)
            else:
                live.append(i)
        t0, c0 = time.perf_counter(), cache_seconds(self.target)
        try:
            jobs, owner, by_live = self._jobs([reqs[i] for i in live])
            scored = (self.program.score([reqs[i].candidate for i in live], jobs) if self.program is not None
                      else score_jobs(self.task, self.target, jobs))  # a program's candidates retrieve no demos
            evals = _merge(scored, owner, [reqs[i] for i in live])
            retrieved = {live[n]: ids for n, ids in by_live.items()}
        finally:
            self.timings.add("target_scoring", time.perf_counter() - t0, cache_seconds(self.target) - c0)
        done_reqs = [r for r, e in zip(reqs, out) if e is not None] + [reqs[i] for i in live]
        self._stop_if_failing([e for e in out if e is not None] + evals, phase, done_reqs)
        for i, ev in zip(live, evals):
            out[i] = ev
            if self.log:
                extra = {"retrieved": retrieved[i]} if i in retrieved else {}
                self.log.emit("eval", step=self.step, phase=phase, **ev.to_json(),
                              example_ids=list(reqs[i].example_ids or ()), **extra)
        done = [e for e in out if e is not None]
        for ev in done:
            self.callbacks.emit("on_evaluation", self, ev, phase=phase)
        return done

    def _jobs(self, reqs: Sequence[ScoreRequest]) -> tuple[list[Job], list[int], dict[int, dict[str, list[str]]]]:
        """Scoring jobs for requests (scoring/candidates.py: one per distinct retrieved demo set for a retrieval
        policy), and which request each job belongs to; all go to the backend in one call, whose prefix sharing
        keeps the instruction computed once. Also each retrieval request's demo ids per example, for the run log."""
        jobs, owner, retrieved = [], [], {}
        for n, r in enumerate(reqs):
            examples = tuple(self._example(r.split, x) for x in (r.example_ids or ()))
            made, ids = candidates.jobs(self.task, r.candidate, r.split, examples, self._by_id, self.retriever,
                                        r.objective)
            jobs += made
            owner += [n] * len(made)
            if ids is not None:
                retrieved[n] = ids
        return jobs, owner, retrieved

    def _stop_if_failing(self, batch: Sequence[Evaluation], phase: str, reqs: Sequence[ScoreRequest]) -> None:
        """Failed evaluations are data during the search, but a run mostly made of them is no result: stop
        before logging the batch that reaches max_failures. In the final dev or test report any failed example
        stops the run (a report with missing scores is no result), so a resume redoes that batch live."""
        failed = [ev for ev in batch if ev.state == "failed"]
        self._refuse_a_seed_too_long(batch, reqs)
        if failed and phase != "search":
            # A batch-wide error leaves no per-example results: all of that request's examples failed.
            bad = sum(sum(1 for r in ev.results if r.error) if ev.results else len(req.example_ids or ())
                      for ev, req in zip(batch, reqs) if ev.state == "failed")
            total = sum(len(req.example_ids or ()) for req in reqs)
            where = {"final": "final dev report", "test": "final test report"}.get(phase, f"{phase} report")
            raise RunStopped(f"{bad} of {total} examples failed in the {where}, which needs a score for every "
                             f"one; the last error: {failed[-1].error}")
        total = self.failures + len(failed)
        if failed and total >= self.max_failures:
            raise RunStopped(f"{total} evaluations failed (max_failures={self.max_failures}); "
                             f"the last: {failed[-1].error}")

    def _refuse_a_seed_too_long(self, batch: Sequence[Evaluation], reqs: Sequence[ScoreRequest]) -> None:
        """The seed prompt over the model's window with a dev or test example (on an API model, which cannot
        count tokens before the run, the server says so at its first evaluation) makes the final report
        impossible, and no retry or resume can change that: bad input (exit 2), not a resumable stop."""
        for ev, req in zip(batch, reqs):
            cand = req.candidate  # the seed itself: a fewshot set carries the seed's text with demos of its own
            if ev.state != "failed" or req.split == "train" or cand.text != self.seed_prompt or \
                    cand.demos not in ((), self.seed_demos) or cand.retrieval is not None:
                continue
            errors = [r.error for r in ev.results if r.error] or [ev.error or ""]
            if all(TOO_LONG in e for e in errors):
                raise ConfigError(f"the seed prompt does not fit the model's window with {len(errors)} of the "
                                  f"{len(req.example_ids or ())} {req.split} examples it was scored on: "
                                  f"{errors[0]}; no resume can fix that: shorten the prompt and start a new run")

    def _example(self, split: str, example_id: str) -> Example:
        if split == "test":
            return self._test_by_id[example_id]
        return self._by_id[example_id]

    def step_once(self) -> bool:
        """One ask -> score -> tell round. False when the search is over."""
        reqs = self.ask()
        if not reqs:
            return False
        self.tell(self.score(reqs))
        if self.on_step:
            self.on_step(self)
        self.callbacks.emit("on_step_end", self)
        # A stop asked for while a resumed run replays its log takes effect once it is past the log: the
        # recorded run went on from here, and the replay must match it.
        if self.callbacks.stop_reason and not self.stop_reason and not self.replaying:
            self.stop_reason = f"stop: {self.callbacks.stop_reason}"
        return not self.stop_reason

    # -- the whole run --
    def run(self) -> Report:
        started = time.monotonic()
        while self.step_once():
            pass
        report = self.finish(started)
        self.callbacks.emit("on_run_end", self, report)
        return report

    def finish(self, started: float | None = None, *, partial: bool = False) -> Report:
        """Final report: top candidates and the seed prompt on the full dev split, then the chosen
        prompt (and the seed, as the baseline) once on the test split. `partial` (a second Ctrl-C):
        no more scoring; the best so far by dev score less one standard error (`leaders`)."""
        seed = self.program.program.seed if self.program is not None else Candidate(self.seed_prompt, origin="seed")
        scoring = self.target is not None or self.program is not None
        if partial:
            leader = self.leaders(1)
            best = leader[0] if leader else seed
            report = self._report(seed, best, None, None, None, None, started)
            report.partial = True
            return report
        if self.history._add_candidate(seed) and self.log:
            self.log.emit("candidate", step=self.step, candidate_id=seed.id, **seed.to_json())
        finalists = self.leaders(self.final_top_k)
        if seed.id not in {c.id for c in finalists}:
            finalists.append(seed)
        if scoring:
            reqs = [self._resolve(ScoreRequest(c, "dev")) for c in finalists]
            todo = [r for r in reqs if r.example_ids]
            if todo:
                self.callbacks.emit("on_phase", self, "final", sum(len(r.example_ids or ()) for r in todo))
            for ev in self.score(todo, phase="final"):  # a selector learns from these: the budget pays
                self._record(ev, search=self.final_rule.selector != "none")
        full = len(self.task.split("dev"))
        ranked = [(c, self.history.score(c.id, "dev")) for c in finalists
                  if self.history.n_scored(c.id, "dev") == full] or [(seed, math.nan)]
        best = max(ranked, key=lambda cs: -math.inf if math.isnan(cs[1]) else cs[1])[0]
        front = pick = None
        if not self.final_rule.default and scoring and not math.isnan(ranked[0][1]):
            pool, held_out = self._final_pool([c for c, _ in ranked])
            # The keep-seed test and a selector read one score per pool example: with k-fold, the first repeat's.
            learned = {cid: reps[0] for cid, reps in held_out.items()} if held_out else \
                self._scores_on([c for c, _ in ranked], pool)
            best, pick = final_pick.choose(self.final_rule, [c for c, _ in ranked], seed, best, learned, pool,
                                           self.seed, held_out)
        if self.objectives is not None and not math.isnan(ranked[0][1]):  # several objectives: by the stated rule
            best, front = self.objectives.choose([c for c, _ in ranked], self.history, best)
        seed_test = best_test = significance = selection = None
        if scoring and self.task.split("test"):
            test = list(self.task.split("test"))
            test = test_sample(test, self.test_limit)
            self._test_by_id = {ex.id: ex for ex in test}
            ids = tuple(ex.id for ex in test)
            cands = [best] if best.id == seed.id else [best, seed]
            self.callbacks.emit("on_phase", self, "test", len(ids) * len(cands))
            evs = self.score([ScoreRequest(c, "test", example_ids=ids) for c in cands], phase="test")
            scores = {c.id: ev.score for c, ev in zip(cands, evs)}
            for ev in evs:
                self._record(ev, search=False)
            best_test, seed_test = scores[best.id], scores[seed.id]
            if best.id != seed.id and all(ev.state == "complete" for ev in evs):
                by_ex = [{r.example_id: r.score for r in ev.results} for ev in evs]
                shared = [i for i in ids if i in by_ex[0] and i in by_ex[1]]
                significance = compare_paired([by_ex[1][i] for i in shared], [by_ex[0][i] for i in shared])
            if pick is not None and self.final_rule.selector != "none" and all(ev.state == "complete" for ev in evs):
                selection = self._select([c for c, _ in ranked], best, pool, learned, ids)
        report = self._report(seed, best, seed_test, best_test, significance, front, started)
        report.final_pick, report.selector = pick, selection
        return report

    def _final_pool(self, finalists: list[Candidate]) -> tuple[list[str], dict[str, list[dict[str, float]]] | None]:
        """The examples the final rule chooses by: dev, and with pick=kfold also train examples; then, per
        finalist and repeat, each pool example's score under the finalist refit on the fold that holds it
        out (final_pick.refit). The refit prompts are logged as candidates and scored (paid from the budget)
        on their held-out folds."""
        pool = [ex.id for ex in self.task.split("dev")]
        n = final_pick.pool_train_size(self.final_rule, len(pool), len(self.task.split("train")))
        if not n:
            return pool, None
        pool += final_pick.train_pool([ex.id for ex in self._order["train"]], n)
        dev = set(pool[:len(self.task.split("dev"))])
        splits = final_pick.folds(pool, self.final_rule.folds, self.final_rule.repeats, self.seed)
        refit = final_pick.refits(finalists, splits, self.task.split("train"), self.seed)
        wanted: dict[tuple[str, str], list[str]] = {}  # (prompt id, split) -> held-out ids it is scored on
        for (_, r, f), cand in refit.items():
            if self.history._add_candidate(cand) and self.log:
                self.log.emit("candidate", step=self.step, candidate_id=cand.id, **cand.to_json())
            for i in splits[r][f]:
                split = "dev" if i in dev else "train"
                if i not in self.history.results(cand.id, split):
                    wanted.setdefault((cand.id, split), []).append(i)
        reqs = [ScoreRequest(self.history.candidate(cid), split, example_ids=tuple(dict.fromkeys(ids)))
                for (cid, split), ids in wanted.items()]
        if reqs:
            self.callbacks.emit("on_phase", self, "final", sum(len(r.example_ids or ()) for r in reqs))
        for ev in self.score(reqs, phase="final"):
            self._record(ev, search=True)
        held_out: dict[str, list[dict[str, float]]] = {c.id: [{} for _ in splits] for c in finalists}
        for (cid, r, f), cand in refit.items():
            for i in splits[r][f]:
                result = self.history.results(cand.id, "dev" if i in dev else "train").get(i)
                held_out[cid][r][i] = result.score if result is not None else 0.0  # a failed example scores 0
        return pool, held_out

    def _scores_on(self, cands: list[Candidate], ids: list[str], split: str | None = None) -> dict[str, dict[str, float]]:
        """Each candidate's per-example scores on `ids` (dev or train; or all from `split`)."""
        out = {}
        for c in cands:
            got = {i: r.score for s in ((split,) if split else ("dev", "train"))
                   for i, r in self.history.results(c.id, s).items()}
            out[c.id] = {i: got[i] for i in ids if i in got}
        return out

    def _select(self, finalists: list[Candidate], best: Candidate, pool: list[str],
                learned: dict[str, dict[str, float]], test_ids: tuple[str, ...]) -> dict[str, Any]:
        """final.selector: learned on the pool's scores, each test input routed to one finalist (the inputs
        routed away from `best` are scored now), reported against `best` on the same test examples."""
        texts = [_text(self._by_id[i]) for i in pool]
        scores = {c.id: [learned[c.id][i] for i in pool] for c in finalists}
        selector = Selector(self.final_rule.selector, texts, scores, default=best.id)
        check = None
        if self.final_rule.selector_check:
            where = {i: n for n, i in enumerate(pool)}
            folds = final_pick.folds(pool, self.final_rule.folds, 1, self.seed)[0]
            check = held_out_check(self.final_rule.selector, texts, scores, best.id,
                                   [[where[i] for i in fold] for fold in folds])
            selector.routes = bool(check["routes"])
        choice = {i: selector.choose(_text(self._test_by_id[i])) for i in test_ids}
        self.learned_selector = RunSelector(selector, {c.id: self.prompt_of(c) for c in finalists},
                                    {c.id: c.retrieval.to_json() for c in finalists if c.retrieval})
        missing: dict[str, list[str]] = {}
        for i, cid in choice.items():
            if i not in self.history.results(cid, "test"):
                missing.setdefault(cid, []).append(i)
        reqs = [ScoreRequest(self.history.candidate(cid), "test", example_ids=tuple(ids)) for cid, ids in missing.items()]
        if reqs:
            self.callbacks.emit("on_phase", self, "test", sum(len(ids) for ids in missing.values()))
            for ev in self.score(reqs, phase="test"):
                self._record(ev, search=False)
        on_test = self._scores_on(finalists, list(test_ids), "test")
        chosen = [on_test[choice[i]][i] for i in test_ids]
        base = [on_test[best.id][i] for i in test_ids]
        counts: dict[str, int] = {}
        for cid in choice.values():
            counts[cid] = counts.get(cid, 0) + 1
        return {"method": self.final_rule.selector, "learned_on": len(pool), "test": sum(chosen) / len(chosen),
                "pick_test": sum(base) / len(base), "choices": counts, "significance": compare_paired(base, chosen),
                **({"check": check} if check is not None else {})}

    def _report(self, seed: Candidate, best: Candidate, seed_test: float | None, best_test: float | None,
                significance: dict[str, Any] | None, front: Any, started: float | None) -> Report:
        report = Report(
            run_dir=str(self.log.dir) if self.log else None, seed_prompt=seed.text, best_prompt=best.text,
            best_id=best.id, seed_dev=self.history.score(seed.id, "dev"),
            best_dev=self.history.score(best.id, "dev"), seed_test=seed_test, best_test=best_test,
            steps=self.step, candidates=len(self.history), stop_reason=self.stop_reason or "done",
            search={"examples": self.tracker.examples, "optimizer_calls": self.tracker.optimizer_calls},
            final={"examples": self.final_examples},
            target_usage=self.target_usage, optimizer_usage=self.tracker.optimizer,
            failures=self.failures, best_demos=best.demos, best_prefix=self.prompt_of(best),
            best_retrieval=best.retrieval.to_json() if best.retrieval else None,
            significance=significance, objectives=front, best_components=dict(best.components),
            seconds=(time.monotonic() - started) if started is not None else self.tracker.seconds)
        # This session's wall time (not earlier sessions'), split by part.
        report.timings = self.timings.to_json(time.monotonic() - (started if started is not None
                                                                   else self.tracker.started))
        return report


def _check_recorded_candidate(rec: dict[str, Any], path: Any) -> None:
    """A replayed candidate event must hash to its id: an edited text or demo id is caught here."""
    if Candidate.from_json(rec).id != rec["candidate_id"]:
        raise ResumeError(f"{path}: event {rec.get('seq')} (candidate {rec['candidate_id']}) does not match its "
                          "own content; the log was edited. Resume from an unedited log")


def _text(ex: Example) -> str:
    return selector_text(ex.input, ex.fields)


def _merge(evals: Sequence[Evaluation], owner: Sequence[int], reqs: Sequence[ScoreRequest]) -> list[Evaluation]:
    """One evaluation per request from its jobs' evaluations (several for a retrieval policy)."""
    parts: list[list[Evaluation]] = [[] for _ in reqs]
    for ev, n in zip(evals, owner):
        parts[n].append(ev)
    return [candidates.merged(evs, r.example_ids or ()) for r, evs in zip(reqs, parts)]


def _shuffled(items: Sequence[Example], rng: random.Random) -> list[Example]:
    out = list(items)
    rng.shuffle(out)
    return out
