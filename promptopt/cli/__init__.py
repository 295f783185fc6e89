"""The terminal wing: the only place that parses flags or prints (main, show, report, plan, plots, ...)."""
from promptopt.cli.commands import main

__all__ = ["main"]
