"""The answer distribution of an evaluation and the warning when one answer dominates (evaluate, show, report)."""
from __future__ import annotations

from typing import Any, Sequence

from promptopt.measure.metrics import distribution_line, dominance_warning, prediction_counts


def prediction_lines(results: Sequence[Any], what: str = "predictions") -> tuple[str, str | None]:
    """(`predictions: 'A' 83% · 'B' 10% ...`, the dominance warning or None) for results or their JSON."""
    results = list(results)
    return f"{what}: {distribution_line(prediction_counts(results))}", dominance_warning(results)


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
