"""Corpus-level metrics for choose tasks, and what the predictions of an evaluation look like.

Per-example scores stay correctness (1 or 0): paired tests, bandits and racing work on them. A choose
task may name a corpus metric (`Task.corpus_metric`: spec `metric = "balanced_accuracy"` or
`"macro_f1"`, or `make_task(metric=...)`); every task-objective Evaluation of it carries the name
(`Evaluation.metric`, logged in its eval event only when set), and the places where a score is taken
over examples (`Evaluation.score`, `History.score`, `RunView.score`) compute that metric instead of the
mean. Tasks without one keep mean accuracy.

The predicted and gold option of a logged choose result are read back from what the scorer records:
the prediction is the first argmax of `option_logprobs` (as the scorer picks it), the gold option is the
one whose log-probability is `logprob`; a score of 1 means gold = prediction, which settles ties.

`prediction_counts` and `dominance_warning` say when one answer dominates: a model that answers " A" to
everything scores that answer's frequency, whatever the prompt.
"""
from __future__ import annotations

from collections import Counter
from typing import Any, Callable, Iterable, Mapping, Sequence

CORPUS_METRICS = ("balanced_accuracy", "macro_f1")
# Several tasks' examples in one evaluation (ids "<task>/<id>", promptopt.harness.tasks): the mean of the
# per-task mean scores, so each task weighs the same. Set by a shared run's scorer, never by a task.
TASK_MEAN = "task_mean"
DOMINANCE = 0.6  # one answer on more than this share of the examples is worth a warning


def choice_pair(result: Any) -> tuple[int, int] | None:
    """(predicted option index, gold option index) of a choose result (an ExampleResult or its JSON), or None."""
    get = result.get if isinstance(result, Mapping) else lambda k, d=None: getattr(result, k, d)
    lps, gold_lp, score = get("option_logprobs"), get("logprob"), get("score")
    if not lps or gold_lp is None or get("error"):
        return None
    lps = list(lps)
    pred = max(range(len(lps)), key=lps.__getitem__)
    if score == 1:
        return pred, pred
    gold = next((i for i, lp in enumerate(lps) if lp == gold_lp and i != pred), None)
    return (pred, gold) if gold is not None else None


def balanced_accuracy(pairs: Sequence[tuple[int, int]]) -> float:
    """Mean recall over the gold classes present (so always answering the majority class scores 1/k)."""
    by_gold: dict[int, list[int]] = {}
    for pred, gold in pairs:
        by_gold.setdefault(gold, []).append(int(pred == gold))
    return sum(sum(v) / len(v) for v in by_gold.values()) / len(by_gold) if by_gold else float("nan")


def macro_f1(pairs: Sequence[tuple[int, int]]) -> float:
    """Unweighted mean F1 over the classes seen as gold or predicted (a class never predicted scores 0)."""
    classes = {c for pair in pairs for c in pair}
    if not classes:
        return float("nan")
    f1s = []
    for c in classes:
        tp = sum(1 for p, g in pairs if p == c and g == c)
        fp = sum(1 for p, g in pairs if p == c and g != c)
        fn = sum(1 for p, g in pairs if p != c and g == c)
        f1s.append(2 * tp / (2 * tp + fp + fn) if tp else 0.0)
    return sum(f1s) / len(f1s)


_FUNCS: dict[str, Callable[[Sequence[tuple[int, int]]], float]] = {
    "balanced_accuracy": balanced_accuracy, "macro_f1": macro_f1}


def check_metric(name: str | None) -> None:
    from promptopt.errors import ConfigError
    if name is not None and name not in _FUNCS:
        raise ConfigError(f"unknown corpus metric {name!r} (use accuracy, {', '.join(CORPUS_METRICS)})")


def corpus_score(name: str | None, results: Iterable[Any]) -> float:
    """The named corpus metric over choose results (ExampleResults or their JSON); the mean score when
    `name` is None; the mean of the per-task means for TASK_MEAN; NaN when there is nothing to score."""
    results = list(results)
    if not results:
        return float("nan")
    get = (lambda r, k: r[k]) if isinstance(results[0], Mapping) else getattr
    if name is None:
        return sum(get(r, "score") for r in results) / len(results)
    if name == TASK_MEAN:
        by_task: dict[str, list[float]] = {}
        for r in results:
            by_task.setdefault(get(r, "example_id").split("/", 1)[0], []).append(get(r, "score"))
        return sum(sum(s) / len(s) for s in by_task.values()) / len(by_task)
    pairs = [p for p in map(choice_pair, results) if p is not None]
    return _FUNCS[name](pairs) if pairs else float("nan")


# ---- what the predictions look like --------------------------------------------------------------

def prediction_label(result: Any, options: Sequence[str] = ()) -> str:
    """The answer an example's result gave: the chosen option (with its leading space when the task's
    options are known), else the first line of the generated text, normalized for counting."""
    get = result.get if isinstance(result, Mapping) else lambda k, d=None: getattr(result, k, d)
    lps = get("option_logprobs")
    if lps:
        pred = max(range(len(lps)), key=list(lps).__getitem__)
        return options[pred] if pred < len(options) else str(get("output", ""))
    text = str(get("output", "") or "")
    line = next((ln.strip() for ln in text.strip().splitlines() if ln.strip()), "")
    return line[:40]


def prediction_counts(results: Iterable[Any], options: Sequence[str] = ()) -> Counter[str]:
    return Counter(prediction_label(r, options) for r in results
                   if not (r.get("error") if isinstance(r, Mapping) else getattr(r, "error", None)))


def gold_frequency(results: Iterable[Any], answer_index: int) -> float | None:
    """Share of the examples whose gold option is `answer_index` (choose results only), or None."""
    pairs = [p for p in map(choice_pair, results) if p is not None]
    return sum(1 for _, g in pairs if g == answer_index) / len(pairs) if pairs else None


def distribution_line(counts: Counter[str], top: int = 5) -> str:
    """`' A' 83% · ' B' 10% · ...` for the most frequent answers."""
    total = sum(counts.values())
    if not total:
        return "no predictions"
    parts = [f"{a!r} {n / total:.0%}" for a, n in counts.most_common(top)]
    rest = len(counts) - top
    return " · ".join(parts) + (f" · {rest} other answers" if rest > 0 else "")


def dominance_warning(results: Sequence[Any], options: Sequence[str] = (), *,
                      threshold: float = DOMINANCE, score_name: str = "accuracy") -> str | None:
    """One line when one answer is more than `threshold` of the predictions, else None. For a choose
    task it adds how often that answer is the gold one, which is what accuracy is then close to (and says
    nothing when accuracy is more than 0.1 above that frequency: skewed data, answered right)."""
    results = list(results)
    counts = prediction_counts(results, options)
    total = sum(counts.values())
    if total < 2:
        return None
    answer, n = counts.most_common(1)[0]
    share = n / total
    if share <= threshold:
        return None
    line = f"the model answered {answer!r} on {share:.0%} of examples"
    index = next((i for r in results for i in [_pred_index(r)] if i is not None
                  and prediction_label(r, options) == answer), None)
    freq = gold_frequency(results, index) if index is not None else None
    pairs = [p for p in map(choice_pair, results) if p is not None]
    if freq is not None and pairs and sum(p == g for p, g in pairs) / len(pairs) > freq + 0.1:
        return None  # the data is that skewed and the model is right well beyond it: nothing to warn about
    if freq is not None:
        line += f"; {score_name} is close to that answer's frequency ({freq:.0%})"
    else:
        line += "; the score mostly measures that one answer"
    return line


def _pred_index(result: Any) -> int | None:
    get = result.get if isinstance(result, Mapping) else lambda k, d=None: getattr(result, k, d)
    lps = get("option_logprobs")
    return max(range(len(lps)), key=list(lps).__getitem__) if lps else None


# ---- a split reused as another -------------------------------------------------------------------

def reused_splits(splits: Mapping[str, Sequence[Any]], share: float = 0.5) -> list[str]:
    """'train and dev share 40 of 40 dev examples'-style lines for splits whose examples (by input,
    target and fields) overlap on at least `share` of the smaller one: a split reused as another."""
    def key(ex: Any) -> tuple[Any, ...]:
        return (ex.input, ex.target, tuple(sorted(dict(ex.fields).items())))

    names = [s for s in ("train", "dev", "test") if splits.get(s)]
    keys = {s: {key(ex) for ex in splits[s]} for s in names}
    out = []
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            shared = len(keys[a] & keys[b])
            small = min((a, b), key=lambda s: len(keys[s]))
            if shared and shared >= share * len(keys[small]):
                out.append(f"the {a} and {b} splits share {shared} of the {len(keys[small])} {small} examples "
                           f"(is one split file or column used as another?); scores on {b} are not held out")
    return out
