"""Best-arm selection under a budget of scored examples, for any strategy that ranks candidates.

A selector is a small state machine that a strategy drives from ask/tell:

    selector = SelectionConfig(method="ucb").make()
    selector.start(ctx, candidates, budget=2048, keep=4)
    # ask:   reqs = selector.requests()       -> [] once it has decided (selector.done)
    # tell:  selector.update(evals)
    best_first = selector.ranking()

Pulling an arm means asking the loop to score that candidate on `n` more *unseen* examples of the
split, so a (prompt, example) pair is never paid twice and what an arm was scored on before (an
earlier round, the cache) counts for it. Counts and means are read from the run's History; the
selector's own state is a deterministic function of those results and uses no randomness, so
replaying a run's log (resume) rebuilds it exactly.

Methods (those ProTeGi compares; Pryzant et al. 2023, §2.2):
  bf     brute force: every arm on the same share of the budget
  ucb    UCB1 on per-example rewards: each arm pulled once, then rounds of the
         `prompts_per_round` arms with the largest mean + c·sqrt(ln T / n)
  ucb-e  the same with UCB-E's index mean + sqrt(c / n) (Audibert et al. 2010)
  sr     successive rejects (Audibert et al. 2010): phases that top every survivor up to n_k
         examples and reject the single worst, until `keep` remain
  sh     successive halving (Karnin et al. 2013): rounds that top survivors up and keep the
         better half, until `keep` remain
  race   statistical racing (CAPO, Zehle et al. 2025): survivors are scored block by block on the
         same unseen examples; after each block an arm significantly worse than the current best on
         the examples they share (one-sided paired t-test at `alpha`) is dropped

Racing for every strategy. One option, the same in every population strategy (evoprompt_ga,
evoprompt_de, plum_ga, harmony, the other Plum searches, opro, gepa, apo), turns racing on:

    --set evoprompt_ga.racing=true                      (RacingConfig defaults)
    --set opro.racing.enabled=true --set opro.racing.block=16 --set opro.racing.alpha=0.1

  enabled     off by default: runs without it are exactly as before
  block       dev examples per block (CAPO: 30)
  alpha       significance level of the paired test (CAPO: 0.2)
  max_blocks  blocks a candidate is scored on at most (null: as many as the strategy's own
              evaluation size allows)

A population strategy then scores each round's new candidates block by block against its best
candidate so far (the incumbent) instead of on all `eval_examples` at once; a candidate dropped from
the race keeps the scores it has but never enters the population or beats the incumbent. APO races
its selection step instead of `selection.method`. GEPA races the full evaluation of a child that
passed its minibatch acceptance. The test compares per-example task scores, whatever fitness the
strategy ranks by; it uses no randomness, so resume rebuilds every decision. A block larger than the
dev split is a ConfigError before any model loads (`check_racing`).
"""
from __future__ import annotations

import math
from typing import ClassVar, Iterator, Literal, Sequence

from pydantic import Field, model_validator

from promptopt.errors import ConfigError
from promptopt.strategy import Context, History, ScoreRequest, StrictSettings
from promptopt.types import Candidate, Evaluation

Method = Literal["ucb", "ucb-e", "sr", "sh", "bf"]


class RacingConfig(StrictSettings):
    """The one racing option of every population strategy (`--set <strategy>.racing=true` or
    `racing.enabled=true`, `racing.block=...`); see the module docstring."""

    enabled: bool = Field(False, description="score new candidates in blocks and drop the clearly worse early")
    block: int = Field(30, ge=2, description="dev examples per block (CAPO: 30)")
    alpha: float = Field(0.2, gt=0.0, lt=1.0, description="one-sided paired t-test level (CAPO: 0.2)")
    max_blocks: int | None = Field(None, ge=1, description="blocks per candidate at most (null: the strategy's "
                                   "evaluation size)")

    @model_validator(mode="before")
    @classmethod
    def _from_bool(cls, data: object) -> object:
        if isinstance(data, bool):  # `racing=true` is short for `racing.enabled=true`
            return {"enabled": data}
        if isinstance(data, str) and data.strip().lower() in ("true", "false"):
            return {"enabled": data.strip().lower() == "true"}
        return data

    def target(self, wanted: int | None, dev_size: int) -> int:
        """Examples a candidate that is never dropped is scored on."""
        n = min(wanted or dev_size, dev_size)
        return min(n, self.max_blocks * self.block) if self.max_blocks else n

    def make(self, *, split: str = "dev", target: int | None = None) -> "Racing":
        return Racing(split=split, block=self.block, alpha=self.alpha, max_blocks=self.max_blocks, target=target)


def check_racing(racing: RacingConfig, dev_size: int) -> None:
    """Refuse racing settings that cannot run on a dev split of `dev_size` examples."""
    if racing.enabled and racing.block > dev_size:
        raise ConfigError(f"racing.block={racing.block} is larger than the dev split ({dev_size} examples): "
                          "racing needs at least one full block; lower racing.block")


METHOD_NAMES = {"bf": "brute force", "ucb": "UCB", "ucb-e": "UCB-E", "sr": "successive rejects",
                "sh": "successive halving", "race": "racing"}


class SelectionConfig(StrictSettings):
    """Settings of one selection step; strategies embed it (e.g. `--set apo.selection.method=sr`)."""

    method: Method = Field("ucb", description="bf, ucb, ucb-e, sr (successive rejects), sh (successive halving)")
    split: Literal["dev", "train"] = Field("dev", description="split the arms are scored on")
    budget: int = Field(2048, ge=1, description="scored examples per selection step (ProTeGi: 32 x 8 x 8)")
    samples_per_eval: int = Field(32, ge=1, description="examples per pull (ucb, ucb-e)")
    prompts_per_round: int = Field(8, ge=1, description="arms pulled per round (ucb, ucb-e)")
    c: float = Field(1.0, gt=0, description="exploration constant of ucb and ucb-e")

    def make(self) -> "Selector":
        cls = SELECTORS[self.method]
        return cls(split=self.split, samples_per_eval=self.samples_per_eval,
                   prompts_per_round=self.prompts_per_round, c=self.c)


class Selector:
    """Base class: arm bookkeeping and budget-capped pulls. Subclasses write `_plan`, a generator
    that yields batches of requests; between two batches the loop has scored the previous one."""

    method: ClassVar[str] = ""

    def __init__(self, *, split: str = "dev", samples_per_eval: int = 32, prompts_per_round: int = 8,
                 c: float = 1.0):
        self.split = split
        self.samples_per_eval = samples_per_eval
        self.prompts_per_round = prompts_per_round
        self.c = c
        self.done = True  # until start()
        self.budget = 0
        self.keep = 1
        self.spent = 0  # examples requested so far in this selection step
        self._history = History()
        self._objectives = None
        self._size = 0  # examples in the split
        self._arms: list[Candidate] = []
        self._failed: set[str] = set()
        self._eliminated: list[Candidate] = []  # worst first
        self._steps: Iterator[list[ScoreRequest]] = iter(())

    def start(self, ctx: Context, candidates: Sequence[Candidate], budget: int, keep: int = 1) -> None:
        """Begin selecting among `candidates` (duplicates by id dropped) with at most `budget` examples;
        `keep` is how many the caller will take from the ranking (sr/sh stop at that many)."""
        self._history = ctx.history
        self._objectives = getattr(ctx, "objectives", None)  # objective_weights set: ranking() scalarizes
        self._size = len(ctx.task.split(self.split))
        arms: dict[str, Candidate] = {}
        for cand in candidates:
            arms.setdefault(cand.id, cand)  # a repeated prompt is one arm; its first listing wins
        self._arms = list(arms.values())
        self.budget = budget
        self.keep = max(1, keep)
        self.spent = 0
        self._failed = set()
        self._eliminated = []
        self._steps = self._plan_all()
        self.done = False

    def requests(self) -> list[ScoreRequest]:
        """The next batch to score; [] when the selection is over."""
        if self.done:
            return []
        for batch in self._steps:
            if batch:
                return batch
        self.done = True
        return []

    @property
    def done_reason(self) -> str:
        """Why the selection ended, for a strategy's done_reason (the budget is a cap the plan may not reach)."""
        if not self.done:
            return ""
        return (f"{METHOD_NAMES.get(self.method, self.method)} over {len(self._arms)} candidates ended after "
                f"{self.spent} of its {self.budget} examples")

    def update(self, evals: Sequence[Evaluation]) -> None:
        """Take note of the last batch's results (the means themselves are read from the history)."""
        for ev in evals:
            if ev.state == "failed":
                self._failed.add(ev.candidate_id)  # a broken arm is not pulled again

    def ranking(self) -> list[Candidate]:
        """All arms, best first: survivors by mean, then eliminated arms, last eliminated first."""
        return self._sorted(self._survivors()) + self._eliminated[::-1]

    # -- arm statistics, read from the run's history --
    def n(self, arm: Candidate) -> int:
        return self._history.n_scored(arm.id, self.split)

    def mean(self, arm: Candidate) -> float:
        return self._history.score(arm.id, self.split)

    def _room(self, arm: Candidate) -> int:
        """Unseen examples left for this arm; a failed arm gets none."""
        return 0 if arm.id in self._failed else self._size - self.n(arm)

    def _survivors(self) -> list[Candidate]:
        gone = {c.id for c in self._eliminated}
        return [a for a in self._arms if a.id not in gone]

    def _sorted(self, arms: Sequence[Candidate]) -> list[Candidate]:
        """Best mean first; never-scored arms last; ties go to the arm with more evidence, then to
        the earlier arm (callers list incumbents first)."""
        def key(a: Candidate) -> tuple[float, int]:
            m = self.mean(a)
            if self._objectives is not None:
                m = self._objectives.scalarize(m, a, self._history, self.split)
            return (-math.inf if math.isnan(m) else m, self.n(a))
        return sorted(arms, key=key, reverse=True)  # stable: equal keys keep their order

    # -- building requests within the budget --
    def _pull(self, wants: Sequence[tuple[Candidate, int]]) -> list[ScoreRequest]:
        """Requests for `n` more examples of each arm, cut to the arm's unseen examples and the budget."""
        reqs = []
        for arm, want in wants:
            n = min(want, self._room(arm), self.budget - self.spent)
            if n > 0:
                reqs.append(ScoreRequest(arm, self.split, n=n))
                self.spent += n
        return reqs

    def _top_up(self, arms: Sequence[Candidate], target: int) -> list[ScoreRequest]:
        """Bring every arm to `target` examples in all."""
        return self._pull([(a, target - self.n(a)) for a in arms])

    def _plan_all(self) -> Iterator[list[ScoreRequest]]:
        if len(self._arms) <= self.keep:
            # Every arm survives anyway: one pull each, enough to rank them and no more.
            yield self._top_up(self._arms, self.samples_per_eval)
            return
        yield from self._plan()

    def _plan(self) -> Iterator[list[ScoreRequest]]:
        raise NotImplementedError


class BruteForce(Selector):
    """Every arm scored on the same number of examples: budget / arms."""

    method = "bf"

    def _plan(self) -> Iterator[list[ScoreRequest]]:
        yield self._top_up(self._arms, max(1, self.budget // len(self._arms)))


class UCB(Selector):
    """UCB1 over per-example 0/1 rewards (n and T count examples). ProTeGi's code uses the round
    index for T instead; counting examples is the textbook form and needs no extra constant."""

    method = "ucb"

    def _plan(self) -> Iterator[list[ScoreRequest]]:
        first = min(self.samples_per_eval, max(1, self.budget // len(self._arms)))
        yield self._top_up(self._arms, first)
        while True:
            live = [a for a in self._arms if self._room(a) > 0]
            if not live or self.spent >= self.budget:
                return
            total = sum(self.n(a) for a in self._arms)
            chosen = sorted(live, key=lambda a: self._index(a, total), reverse=True)[: self.prompts_per_round]
            yield self._pull([(a, self.samples_per_eval) for a in chosen])

    def _index(self, arm: Candidate, total: int) -> float:
        n = self.n(arm)
        if n == 0:
            return math.inf
        return self.mean(arm) + self.c * math.sqrt(math.log(max(total, 1)) / n)


class UCBE(UCB):
    """UCB-E: the exploration bonus sqrt(a / n) does not grow with time, suited to a fixed budget."""

    method = "ucb-e"

    def _index(self, arm: Candidate, total: int) -> float:
        n = self.n(arm)
        return math.inf if n == 0 else self.mean(arm) + math.sqrt(self.c / n)


class SuccessiveRejects(Selector):
    """Phase k tops every survivor up to n_k = (B - K) / (logbar(K) (K + 1 - k)) examples and
    rejects the worst, where logbar(K) = 1/2 + sum_{i=2..K} 1/i."""

    method = "sr"

    def _plan(self) -> Iterator[list[ScoreRequest]]:
        k_arms = len(self._arms)
        logbar = 0.5 + sum(1 / i for i in range(2, k_arms + 1))
        target = 1
        for phase in range(1, k_arms - self.keep + 1):
            # The target never shrinks, and the first phase scores every arm at least once.
            target = max(target, math.floor((self.budget - k_arms) / (logbar * (k_arms + 1 - phase))))
            yield self._top_up(self._survivors(), target)
            self._eliminated.append(self._sorted(self._survivors())[-1])


class SuccessiveHalving(Selector):
    """Each of ceil(log2(K / keep)) rounds adds budget / (survivors x rounds) examples to every
    survivor, then keeps the better half (never fewer than `keep`). ProTeGi's code keeps the arms
    at or above the mean instead; the paper describes halving, as here."""

    method = "sh"

    def _plan(self) -> Iterator[list[ScoreRequest]]:
        rounds = max(1, math.ceil(math.log2(len(self._arms) / self.keep)))
        target = 0
        for _ in range(rounds):
            alive = self._survivors()
            if len(alive) <= self.keep:
                return
            target += max(1, self.budget // (len(alive) * rounds))
            yield self._top_up(alive, target)
            ranked = self._sorted(alive)
            for arm in reversed(ranked[max(self.keep, math.ceil(len(alive) / 2)):]):
                self._eliminated.append(arm)


class Racing(Selector):
    """CAPO-style racing: every survivor is topped up block by block to the same examples (the
    loop's fixed dev order), and after each block an arm is dropped when a one-sided paired t-test
    on the examples it shares with the current best (the survivor with the highest mean on the
    shared examples) says it is worse at `alpha`. Arms already scored past a block (incumbents)
    take part in every test at no cost. The race ends when no survivor needs more examples (each
    reached `target`, or `max_blocks` blocks), the budget is spent, or `keep` arms remain (only
    when racing a selection step: `stop_at_keep`)."""

    method = "race"

    def __init__(self, *, split: str = "dev", block: int = 30, alpha: float = 0.2, max_blocks: int | None = None,
                 target: int | None = None, stop_at_keep: bool = True, **_: object):
        super().__init__(split=split, samples_per_eval=block)
        self.block = block
        self.alpha = alpha
        self.max_blocks = max_blocks
        self.target = target
        self.stop_at_keep = stop_at_keep
        self.incumbent = ""  # id of an arm the caller keeps whatever the race says (optional)

    @property
    def dropped(self) -> set[str]:
        return {c.id for c in self._eliminated}

    def _plan_all(self) -> Iterator[list[ScoreRequest]]:
        yield from self._plan()  # a race is run even for few arms: it saves examples, not rankings

    def _plan(self) -> Iterator[list[ScoreRequest]]:
        target = self.target if self.target is not None else max(1, self.budget // max(1, len(self._arms)))
        target = min(target, self._size)
        if self.max_blocks:
            target = min(target, self.max_blocks * self.block)
        k = 0
        while True:
            k += 1
            alive = [a for a in self._survivors() if a.id not in self._failed]
            reqs = self._top_up(alive, min(k * self.block, target))
            if not reqs:
                return
            yield reqs
            self._race(alive)
            if self.stop_at_keep and len(self._survivors()) <= self.keep:
                return

    def _race(self, alive: Sequence[Candidate]) -> None:
        live = [a for a in alive if a.id not in self._failed and self.n(a) > 0]
        if len(live) < 2:
            return
        results = {a.id: self._history.results(a.id, self.split) for a in live}
        shared = set.intersection(*(set(r) for r in results.values()))
        if len(shared) < 2:
            return
        ids = sorted(shared)
        scores = {a.id: [results[a.id][i].score for i in ids] for a in live}
        leader = max(live, key=lambda a: sum(scores[a.id]))  # ties: the earlier arm (incumbents first)
        worse = [a for a in live if a.id != leader.id
                 and paired_t_pvalue(scores[leader.id], scores[a.id]) < self.alpha]
        for arm in sorted(worse, key=lambda a: sum(scores[a.id])):  # worst first
            self._eliminated.append(arm)


def paired_t_pvalue(best: Sequence[float], other: Sequence[float]) -> float:
    """One-sided p-value of a paired t-test that `best` scores higher than `other` on the same
    examples (H0: mean difference <= 0). All differences equal: 0 if positive, else 1."""
    d = [b - o for b, o in zip(best, other)]
    n = len(d)
    if n < 2:
        return 1.0
    mean = sum(d) / n
    var = sum((x - mean) ** 2 for x in d) / (n - 1)
    if var <= 0:
        return 0.0 if mean > 0 else 1.0
    t = mean / math.sqrt(var / n)
    return student_t_sf(t, n - 1)


def student_t_sf(t: float, df: float) -> float:
    """P(T > t) for Student's t with `df` degrees of freedom."""
    tail = 0.5 * _betainc(df / 2, 0.5, df / (df + t * t))
    return tail if t > 0 else 1.0 - tail


def _betainc(a: float, b: float, x: float) -> float:
    """Regularized incomplete beta I_x(a, b), by its continued fraction (Lentz's method)."""
    if x <= 0:
        return 0.0
    if x >= 1:
        return 1.0
    if x > (a + 1) / (a + b + 2):
        return 1.0 - _betainc(b, a, 1 - x)
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log(1 - x)) / a
    tiny = 1e-300
    f, c, d = 1.0, 1.0, 0.0
    for i in range(400):
        m = i // 2
        if i == 0:
            num = 1.0
        elif i % 2 == 0:
            num = m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m))
        else:
            num = -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))
        d = 1.0 + num * d
        d = tiny if abs(d) < tiny else d
        d = 1.0 / d
        c = 1.0 + num / c
        c = tiny if abs(c) < tiny else c
        f *= c * d
        if abs(1.0 - c * d) < 1e-12:
            break
    return front * (f - 1.0)


SELECTORS: dict[str, type[Selector]] = {
    cls.method: cls for cls in (BruteForce, UCB, UCBE, SuccessiveRejects, SuccessiveHalving)
}
