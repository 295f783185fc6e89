"""MLflow tracking for promptopt runs (the `mlflow` extra: `pip install 'promptopt[mlflow]'`).

    promptopt optimize --task demo --strategy hill_climb --mlflow            # ./mlruns file store
    promptopt optimize ... --mlflow sqlite:///mlflow.db                      # or any tracking URI
    optimize(task="demo", strategy="hill_climb", mlflow="./mlruns")          # Python
    optimize(..., callbacks=[MlflowTracker("./mlruns")])                     # as a callback object

One MLflow run per promptopt run, in the experiment "promptopt" (or `experiment=`):

- params: the resolved RunConfig (`config.json`), flattened to dotted keys (`target.model`, `budget.max_examples`)
- metrics by step: `best_dev` (best dev score so far), `scored_examples`, `optimizer_calls`, `candidates`,
  `tokens`, `usd`; at the end `final.seed_dev`, `final.best_dev`, `final.seed_test`, `final.best_test`
- artifacts: `candidates.csv` and `candidates.json` (id, origin, step, dev score, n, test score, demos,
  parents, text), `best/prompt.txt` (the instruction), `best/prefix.txt` (what the model reads before the
  query: instruction + demos), `best/summary.json`, `config.json`
- tags: `promptopt.run_dir` (so `--resume RUN --mlflow` continues the same MLflow run), strategy, task,
  best candidate id, stop reason; status FINISHED, or KILLED when the run stopped resumably.

The tracking URI is checked before the run starts, each problem one ConfigError line with any password in
the URI shown as ***: an empty URI or an unknown scheme; a file store that cannot be written; a SQLite file
that is not new, empty or MLflow's own (a user's database is never touched); a server or database that does
not answer. The MLflow run is created only at the first step, so a run refused for bad input leaves
nothing behind.
mlflow is imported only here, when a tracker is made. MLflow 3 refuses plain file stores unless
MLFLOW_ALLOW_FILE_STORE is set; a tracker pointed at a file store sets it for this process.
"""
from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import sqlite3
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping
from urllib.parse import unquote, urlparse

from promptopt.callbacks import Callback, CallbackError
from promptopt.errors import ConfigError, RunStopped
from promptopt.paths import check_uri as check_uri_parts
from promptopt.paths import redact, regular_or_absent
from promptopt.runlog import CONFIG, SUMMARY, load_run

if TYPE_CHECKING:
    from promptopt.loop import Report, Run

log = logging.getLogger("promptopt")

DEFAULT_URI = "./mlruns"
EXPERIMENT = "promptopt"
RUN_DIR_TAG = "promptopt.run_dir"
MAX_PARAM = 6000  # mlflow.utils.validation.MAX_PARAM_VAL_LENGTH
INSTALL_HINT = "pip install 'promptopt[mlflow]' (or mlflow-skinny)"


def _mlflow() -> Any:
    try:
        import mlflow  # noqa: F401
        from mlflow.tracking import MlflowClient  # noqa: F401
    except ImportError as e:
        raise ConfigError(f"MLflow tracking needs the mlflow package ({e.name or e}): {INSTALL_HINT}") from None
    return mlflow


def _file_path(uri: str) -> Path | None:
    """The local directory of a file-store URI (a plain path or file:...), else None."""
    parsed = urlparse(uri)
    if parsed.scheme == "file":
        return Path(unquote(parsed.path))
    if parsed.scheme == "" or (len(parsed.scheme) == 1 and os.name == "nt"):
        return Path(uri)
    return None


def _sqlite_path(uri: str) -> Path | None:
    if not uri.startswith("sqlite:///"):
        return None
    rest = uri[len("sqlite:///"):]
    return None if rest in ("", ":memory:") else Path("/" + rest.lstrip("/") if uri.startswith("sqlite:////") else rest)


def _writable_dir(path: Path, what: str) -> None:
    """`path` is, or can be made as, a writable directory; nothing is created here."""
    if path.exists():
        if not path.is_dir():
            raise ConfigError(f"--mlflow {what}: {path} exists and is not a directory")
        if not os.access(path, os.W_OK | os.X_OK):
            raise ConfigError(f"--mlflow {what}: directory {path} is not writable")
        return
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise ConfigError(f"--mlflow {what}: cannot create {path}: {parent} is not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(f"--mlflow {what}: cannot create {path}: {parent} is not writable")


# Stores MLflow can track to ("" = a plain path, a file store); postgresql+psycopg2 and such count as postgresql.
SCHEMES = ("", "file", "sqlite", "http", "https", "databricks", "databricks-uc", "uc", "postgresql", "mysql", "mssql")
_MLFLOW_TABLES = {"alembic_version", "experiments", "runs"}  # what MLflow's SQL store has from its first migration


def _mlflow_db(db: Path, shown: str) -> None:
    """An existing SQLite file is used only when it is empty or already MLflow's: MLflow would otherwise
    add its tables to a user's own database (or fail on a file that is no database, after the run began)."""
    regular_or_absent(db, f"--mlflow {shown}:")
    if not db.exists() or db.stat().st_size == 0:
        return
    if not os.access(db, os.R_OK | os.W_OK):
        raise ConfigError(f"--mlflow {shown}: {db} is not a writable file")
    try:
        conn = sqlite3.connect(f"{db.as_uri()}?mode=ro", uri=True)
        try:
            tables = {name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        finally:
            conn.close()
    except sqlite3.Error:
        tables = set()
    if not _MLFLOW_TABLES <= tables:
        raise ConfigError(f"--mlflow {shown}: {db} is not an MLflow database, so it is left alone; "
                          "name a new file (e.g. sqlite:///mlflow.db)")


def _probe(text: str, shown: str, password: str | None) -> None:
    """A tracking server or database must answer one read before the run starts."""
    from mlflow.tracking import MlflowClient
    saved = {k: os.environ.get(k) for k in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT")}
    os.environ.update({"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"})
    mlflow_log = logging.getLogger("mlflow")
    level = mlflow_log.level
    mlflow_log.setLevel(logging.CRITICAL)  # its warnings would come before our one line; the error says it all
    try:
        MlflowClient(text).search_experiments(max_results=1)
    except Exception as e:  # noqa: BLE001 - any failure to reach the store is one line
        first = str(e).splitlines()[0] if str(e) else ""
        raise ConfigError(_scrub(f"--mlflow {shown}: the tracking store does not answer: "
                                 f"{type(e).__name__}: {first}", text, shown, password)) from None
    finally:
        mlflow_log.setLevel(level)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _scrub(message: str, text: str, shown: str, password: str | None) -> str:
    """`message` with the URI's password nowhere in it (MLflow's errors quote the URL they called)."""
    message = message.replace(text, shown)
    if password:
        for secret in {password, unquote(password)}:
            message = message.replace(secret, "***")
    return message


def check_uri(uri: str | os.PathLike[str] | None) -> str:
    """The tracking URI to use (None: ./mlruns), checked before the run starts, one ConfigError line
    otherwise: a supported scheme; a file store that can be created and written; a SQLite file that is
    new, empty or MLflow's own; a server or database that answers. A password in it is never shown."""
    text = DEFAULT_URI if uri is None else os.fspath(uri)
    if not str(text).strip():  # not silently ./mlruns: an empty variable in a script is a mistake
        raise ConfigError(f"--mlflow: the URI is empty; give --mlflow alone for {DEFAULT_URI}, or a URI")
    shown = redact(text)
    parts = check_uri_parts(text, "--mlflow", SCHEMES)
    _mlflow()
    if text in ("databricks", "databricks-uc", "uc"):  # MLflow's names for Databricks, not folders
        _probe(text, shown, None)
        return text
    path = _file_path(text)
    if path is not None:
        path = path.expanduser().resolve()
        _writable_dir(path, shown)
        if path.is_dir() and any(path.iterdir()) and not (path / "0").exists() and not any(
                (p / "meta.yaml").exists() for p in path.iterdir() if p.is_dir()):
            raise ConfigError(f"--mlflow {shown}: {path} is a non-empty directory that is not an MLflow file store")
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 refuses file stores without it
        return path.as_uri()
    db = _sqlite_path(text)
    if db is not None:
        db = db.expanduser().resolve()
        _mlflow_db(db, shown)
        _writable_dir(db.parent, shown)
        return f"sqlite:///{db}"
    if parts.scheme == "sqlite":
        raise ConfigError(f"--mlflow {shown}: name a database file, as in sqlite:///mlflow.db (three slashes; "
                          "an in-memory database would lose the run)")
    _probe(text, shown, parts.password)
    return text


def flatten(obj: Any, prefix: str = "") -> dict[str, str]:
    """Nested config dicts as dotted MLflow params; lists as JSON; values cut to MLflow's length limit."""
    out: dict[str, str] = {}
    if isinstance(obj, Mapping):
        if not obj and prefix:
            out[prefix] = "{}"
        for k, v in obj.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    if isinstance(obj, (list, tuple)):
        text = json.dumps(list(obj), ensure_ascii=False)
    elif obj is None:
        text = "None"
    else:
        text = str(obj)
    out[prefix] = text if len(text) <= MAX_PARAM else text[:MAX_PARAM - 3] + "..."
    return out


def _num(x: Any) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)


def candidates_table(run_dir: str | Path) -> list[dict[str, Any]]:
    """Every logged candidate of a run, best dev score first: id, origin, step, dev, n, test, demos, parents, text."""
    view = load_run(Path(run_dir))
    rows = []
    for cid, c in view.candidates.items():
        rows.append({"id": cid, "origin": c.get("origin", ""), "step": view.first_step.get(cid),
                     "dev": _num(view.score(cid, "dev")), "n": view.n(cid, "dev"),
                     "test": _num(view.score(cid, "test")), "n_test": view.n(cid, "test"),
                     "demos": list(c.get("demos") or ()), "system": c.get("system", ""),
                     "parents": list(c.get("parents") or ()), "text": c.get("text", "")})
    rows.sort(key=lambda r: (r["dev"] is None, -(r["dev"] or 0.0), r["step"] or 0))
    return rows


def _csv(rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    cols = ["id", "origin", "step", "dev", "n", "test", "n_test", "demos", "system", "parents", "text"]
    w = csv.DictWriter(buf, fieldnames=cols)
    w.writeheader()
    for r in rows:
        w.writerow({**r, "demos": " ".join(r["demos"]), "parents": " ".join(r["parents"]),
                    "dev": "" if r["dev"] is None else f"{r['dev']:.6f}",
                    "test": "" if r["test"] is None else f"{r['test']:.6f}"})
    return buf.getvalue()


class MlflowTracker(Callback):
    """Logs one promptopt run to MLflow. Use as a callback (`optimize(..., callbacks=[tracker])`) or
    through `optimize(..., mlflow=URI)` / `--mlflow [URI]`. Failing to write to MLflow mid-run stops the
    run resumably (CallbackError), like any failing callback; failing at the very end is a warning (the
    run's own result is already written)."""

    def __init__(self, tracking_uri: str | os.PathLike[str] | None = None, *, experiment: str = EXPERIMENT,
                 run_name: str | None = None, tags: Mapping[str, str] | None = None):
        self.tracking_uri = check_uri(tracking_uri)
        self.client: Any = None  # made at the first step: a file store's client creates its directory
        self.experiment, self.run_name, self.tags = experiment, run_name, dict(tags or {})
        self.run_id: str | None = None
        self.run_dir: Path | None = None
        self._last_step = 0
        self._ended = False

    # -- MLflow calls, each failure one CallbackError --
    def _call(self, what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except RunStopped:
            raise
        except Exception as e:  # noqa: BLE001 - MLflow raises many kinds (OSError, MlflowException, ...)
            first = str(e).splitlines()[0] if str(e) else ""
            uri, shown = self.tracking_uri, redact(self.tracking_uri)
            raise CallbackError(_scrub(f"mlflow ({shown}): {what} failed: {type(e).__name__}: {first}", uri, shown,
                                       urlparse(uri).password)) from e

    def _start(self, run: "Run") -> None:
        if self.run_id is not None or run.log is None:
            return
        self.run_dir = Path(run.log.dir).resolve()
        self._call("start", self._start_run, run)

    def _start_run(self, run: "Run") -> None:
        from mlflow.entities import Param, RunTag
        from mlflow.tracking import MlflowClient
        self.client = MlflowClient(self.tracking_uri)
        exp = self.client.get_experiment_by_name(self.experiment)
        exp_id = exp.experiment_id if exp else self.client.create_experiment(self.experiment)
        existing = None
        if "'" not in str(self.run_dir):
            found = self.client.search_runs([exp_id], f"tags.`{RUN_DIR_TAG}` = '{self.run_dir}'", max_results=1)
            existing = found[0] if found else None
        if existing is not None:  # a resumed promptopt run continues its MLflow run
            self.run_id = existing.info.run_id
            hist = self.client.get_metric_history(self.run_id, "best_dev")
            self._last_step = max((m.step for m in hist), default=0)
            self.client.update_run(self.run_id, status="RUNNING")
            return
        meta = json.loads((self.run_dir / CONFIG).read_text(encoding="utf-8"))
        config = meta.get("config", {})
        tags = {RUN_DIR_TAG: str(self.run_dir), "promptopt.strategy": str(config.get("strategy", "")),
                "promptopt.task": str(config.get("task", "")), **self.tags}
        name = self.run_name or f"{config.get('strategy', 'run')}-{config.get('task', '')}-{self.run_dir.name}"
        mrun = self.client.create_run(exp_id, run_name=name, tags=tags)
        self.run_id = mrun.info.run_id
        params = [Param(k, v) for k, v in flatten(config).items()]
        for i in range(0, len(params), 100):
            self.client.log_batch(self.run_id, params=params[i:i + 100])
        self.client.log_batch(self.run_id, tags=[RunTag("promptopt.git_sha", str(meta.get("git_sha")))])
        self.client.log_dict(self.run_id, meta, CONFIG)

    def on_step_end(self, run: "Run") -> None:
        self._start(run)
        if self.run_id is None or run.step <= self._last_step:
            return  # no run log, or a step already logged (a resumed run replaying it)
        self._last_step = run.step
        from mlflow.entities import Metric
        ranked = run.history.ranked("dev")
        t, tr = int(time.time() * 1000), run.tracker
        values = {"scored_examples": tr.examples, "optimizer_calls": tr.optimizer_calls, "candidates": len(run.history),
                  "tokens": tr.tokens, "usd": tr.usd}
        if ranked:
            values["best_dev"] = ranked[0][1]
        metrics = [Metric(k, float(v), t, run.step) for k, v in values.items() if _num(v) is not None]
        self._call("log metrics", self.client.log_batch, self.run_id, metrics=metrics)

    def on_run_end(self, run: "Run", report: "Report | None") -> None:
        try:
            self._start(run)
            self.end(report)
        except CallbackError as e:
            if report is None:
                raise
            # The run finished and wrote its summary: a failed upload must not turn it into a stopped run.
            log.warning("%s; the run itself finished (%s)", e, report.run_dir)

    def end(self, report: "Report | None", reason: str = "") -> None:
        """Log the final scores, the candidates table and the best prompt, and close the MLflow run
        (FINISHED; KILLED when `report` is None: the run stopped resumably)."""
        if self.run_id is None or self._ended:
            return
        self._ended = True
        self._call("log the result", self._end, report, reason)

    def _end(self, report: "Report | None", reason: str) -> None:
        from mlflow.entities import Metric, RunTag
        rows = candidates_table(self.run_dir)
        self.client.log_text(self.run_id, _csv(rows), "candidates.csv")
        self.client.log_dict(self.run_id, {"candidates": rows}, "candidates.json")
        if report is None:
            if not reason:  # the loop's on_run_end(run, None) comes after the run.stop event that says why
                stops = [e for e in load_run(self.run_dir).events if e["type"] == "run.stop"]
                reason = str(stops[-1].get("reason", "")) if stops else ""
            self.client.log_batch(self.run_id, tags=[RunTag("promptopt.stop", (reason or "stopped")[:5000])])
            self.client.set_terminated(self.run_id, status="KILLED")
            return
        summary = report.to_json()
        if (self.run_dir / SUMMARY).exists():  # api.finish_run writes it after the loop's on_run_end
            summary = {**summary, **json.loads((self.run_dir / SUMMARY).read_text(encoding="utf-8"))}
        t = int(time.time() * 1000)
        final = {f"final.{k}": summary.get(k) for k in ("seed_dev", "best_dev", "seed_test", "best_test")}
        metrics = [Metric(k, float(v), t, max(self._last_step, 0)) for k, v in final.items() if _num(v) is not None]
        tags = [RunTag("promptopt.best_id", str(report.best_id)),
                RunTag("promptopt.stop_reason", (report.stop_reason or "")[:5000])]
        self.client.log_batch(self.run_id, metrics=metrics, tags=tags)
        self.client.log_text(self.run_id, report.best_prompt, "best/prompt.txt")
        self.client.log_text(self.run_id, report.best_prefix or report.best_prompt, "best/prefix.txt")
        self.client.log_dict(self.run_id, summary, "best/summary.json")
        self.client.set_terminated(self.run_id, status="FINISHED")


__all__ = ["DEFAULT_URI", "MlflowTracker", "candidates_table", "check_uri", "flatten"]
