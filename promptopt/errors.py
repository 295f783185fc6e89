"""One error hierarchy: the CLI turns any PromptOptError into one line on stderr and exit code 2."""
from __future__ import annotations


class PromptOptError(Exception):
    """Root of every error promptopt raises on purpose."""


class ConfigError(PromptOptError):
    """Bad configuration: raised before any model loads."""


class RegistryError(ConfigError):
    """Unknown strategy/task/backend name."""


class TaskError(PromptOptError):
    """A task, its data files or its template cannot be used."""


class DataNotFoundError(TaskError):
    """A dataset is neither in the local data dir nor reachable on the hub."""


class CapabilityError(PromptOptError):
    """A backend lacks what the run needs (e.g. log-likelihoods); raised at start."""


class ModelNotFoundError(PromptOptError):
    """A named model (or the embedded default) is not installed."""


class ResumeError(PromptOptError):
    """The run log cannot be resumed with this configuration."""


class BackendError(PromptOptError):
    """A model call failed. `retryable` tells the retry layer whether another try may succeed;

    `fatal` marks errors no retry or other request can fix (a revoked key, a removed model): the run stops.
    """

    def __init__(self, message: str, *, retryable: bool = False, retry_after: float | None = None,
                 fatal: bool = False):
        super().__init__(message)
        self.retryable = retryable
        self.retry_after = retry_after
        self.fatal = fatal


class RunStopped(PromptOptError):
    """A run stopped before its end (a fatal model error, too many failed evaluations, SIGTERM). Its log
    is intact and no summary is written, so `promptopt optimize --resume RUN` continues it."""


class Terminated(KeyboardInterrupt):
    """SIGTERM: a scheduler preempting the job. Unlike Ctrl-C the run is not finalized: it stays resumable."""


class SkipReport(KeyboardInterrupt):
    """A second Ctrl-C: write the result so far (a partial summary) without the final report's scoring."""


class BudgetExhausted(PromptOptError):
    """Internal signal: a budget limit was reached; the loop stops cleanly and still reports."""
