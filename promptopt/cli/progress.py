"""The CLI's progress bar is the core's (promptopt/progress.py), which `optimize()` shows too."""
from promptopt.progress import PHASES, ProgressBar

__all__ = ["PHASES", "ProgressBar"]
