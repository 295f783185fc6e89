"""The answer distribution of an evaluation and the warnings when one answer dominates or many answers are
empty (evaluate, show, report, and optimize's final table)."""
from __future__ import annotations

from typing import Any, Mapping, Sequence

from promptopt.measure.metrics import distribution_line, dominance_warning, prediction_counts


EMPTY_SHARE = 0.2  # warn when at least this share of generated answers is empty


def empty_warning(results: Sequence[Any]) -> str | None:
    """One line when many generated answers (not chosen options, not failed ones) are empty, else None:
    an empty answer scores 0 without any error, e.g. when a stop string matches at the reply's start."""
    def get(r: Any, key: str) -> Any:
        return r.get(key) if isinstance(r, Mapping) else getattr(r, key, None)
    made = [r for r in results if not get(r, "error") and not get(r, "option_logprobs")]
    if len(made) < 2:
        return None
    empty = sum(1 for r in made if not str(get(r, "output") or "").strip())
    if empty / len(made) < EMPTY_SHARE:
        return None
    return (f"{empty / len(made):.0%} of the answers ({empty} of {len(made)}) are empty (''), and score 0: a stop "
            "string that matches at the start of the reply (the task's `stop`) or too few max_tokens does this")


def prediction_lines(results: Sequence[Any], what: str = "predictions") -> tuple[str, str | None]:
    """(`predictions: 'A' 83% · 'B' 10% ...`, the warnings joined in one line, or None) for results or
    their JSON."""
    results = list(results)
    found = [w for w in (dominance_warning(results), empty_warning(results)) if w]
    return f"{what}: {distribution_line(prediction_counts(results))}", "; ".join(found) or None


def best_results(view: Any) -> tuple[str, list[dict[str, Any]]] | None:
    """The logged results of a run's chosen (else best so far) prompt: on test when scored there, else dev."""
    best = view.best_id()
    if not best:
        return None
    for split in ("test", "dev"):
        found = view.results.get((best, split))
        if found:
            return split, list(found.values())
    return None
