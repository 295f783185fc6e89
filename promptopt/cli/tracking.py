"""`optimize --mlflow [URI]`: log the run to MLflow (promptopt/integrations/mlflow_tracking.py)."""
from __future__ import annotations

import argparse
from typing import Any, Callable, Sequence

DEFAULT_URI = "./mlruns"  # = mlflow_tracking.DEFAULT_URI; repeated so --help needs no import of it


def add_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--mlflow", nargs="?", const=DEFAULT_URI, default=None, metavar="URI",
                   help=f"log params, per-step metrics, the candidates table and the best prompt to MLflow "
                        f"(default URI {DEFAULT_URI}, a file store; or sqlite:///mlflow.db, http://host:5000); "
                        "needs the mlflow extra")


def tracker(args: argparse.Namespace) -> Any:
    """The MlflowTracker for --mlflow (its URI checked now, before the run starts: nothing is written
    until the first step), or None."""
    if getattr(args, "mlflow", None) is None:
        return None
    from promptopt.integrations.mlflow_tracking import MlflowTracker
    return MlflowTracker(args.mlflow)


def runner(tracker: Any, run_config: Callable[..., Any]) -> Callable[..., Any]:
    """`run_config`, or the same with `tracker` added to its callbacks."""
    if tracker is None:
        return run_config

    def run(cfg: Any, *, callbacks: Sequence[Any] = (), **kwargs: Any) -> Any:
        return run_config(cfg, callbacks=[*callbacks, tracker], **kwargs)
    return run
