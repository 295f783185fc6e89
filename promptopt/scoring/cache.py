"""A persistent response cache (SQLite, WAL) and a Backend wrapper that serves hits from it.

Several processes may share one cache file: writes are short `BEGIN IMMEDIATE` transactions and a
lock that outlasts SQLite's own busy timeout is retried. A cache file that is corrupt, or that another
schema version wrote, is moved aside and replaced by a fresh one with a warning: a cache can
always be rebuilt, so it must never crash a run nor serve a wrong answer. A file promptopt did not
create is never moved: it is refused. Every value carries a checksum of its key and text, verified on
read: a damaged row is a miss (with one warning), never a wrong score.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import sqlite3
import threading
import time
import warnings
from contextlib import contextmanager, suppress
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence, TypeVar

from promptopt.backends.base import Backend, GenRequest, GenResult, LLRequest, LLResult
from promptopt.errors import BackendError, ConfigError, PromptOptError
from promptopt.paths import regular_or_absent
from promptopt.types import Usage

SCHEMA_VERSION = 2  # 2: values carry a checksum
_MARK = "promptopt response cache\n"  # written into <cache>.lock when promptopt creates the cache file
_SUM = 16  # hex digits of the per-value checksum
T = TypeVar("T")
R = TypeVar("R", GenResult, LLResult)
_HIT = Usage(cache_hits=1)  # what a result served without a model call reports


class CacheError(PromptOptError):
    """The response cache file cannot be read or written."""


class CacheWarning(UserWarning):
    """The cache had to be rebuilt, or a cache read/write failed and the run went on without it."""


def default_cache_path() -> Path:
    """`$PROMPTOPT_CACHE_DIR/responses.sqlite`, else under `$XDG_CACHE_HOME` or `~/.cache/promptopt`."""
    if os.environ.get("PROMPTOPT_CACHE_DIR"):
        return Path(os.environ["PROMPTOPT_CACHE_DIR"]).expanduser() / "responses.sqlite"
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "promptopt" / "responses.sqlite"


def cache_key(fingerprint: str, request: GenRequest | LLRequest) -> str:
    """Key of one request to one model: the same request to another model never collides."""
    return hashlib.sha256(f"{fingerprint}\x00{request.key()}".encode("utf-8")).hexdigest()


def _is_busy(e: sqlite3.Error) -> bool:
    # Matched by message because `sqlite_errorcode` only exists from Python 3.11.
    return "locked" in str(e) or "busy" in str(e)


def _is_corruption(e: sqlite3.Error) -> bool:
    return "malformed" in str(e) or "not a database" in str(e)


@contextmanager
def _exclusive(lock_path: Path) -> Iterator[None]:
    """Serialize open/check/rebuild across processes, so none moves aside a file another just rebuilt."""
    try:
        import fcntl
    except ImportError:  # Windows: no cross-process guard; two rebuilds at once stay merely possible
        yield
        return
    with open(lock_path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _problem(conn: sqlite3.Connection) -> str | None:
    """Why this file cannot serve as our cache, or None when it can (an empty file can)."""
    rows = conn.execute("PRAGMA quick_check").fetchall()
    if rows != [("ok",)]:
        return f"failed its integrity check ({' '.join(str(rows[0][0]).split())[:160]})"
    tables = {name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if not tables:
        return None
    if "schema_version" not in tables or "responses" not in tables:
        return "is not a promptopt response cache"
    version = conn.execute("SELECT version FROM schema_version").fetchone()
    if version != (SCHEMA_VERSION,):
        return f"has schema version {version and version[0]}, expected {SCHEMA_VERSION}"
    return None


def _move_aside(path: Path) -> Path:
    aside = path.with_name(f"{path.name}.corrupt-{datetime.now():%Y%m%dT%H%M%S%f}")
    for suffix in ("", "-wal", "-shm"):  # a stale WAL must not be replayed onto the new file
        try:
            os.replace(f"{path}{suffix}", f"{aside}{suffix}")
        except FileNotFoundError:
            pass
    return aside


def _checksum(key: str, text: str) -> str:
    return hashlib.sha256(f"{key}\x00{text}".encode("utf-8", "surrogatepass")).hexdigest()[:_SUM]


def _verified(row: tuple[str, bytes]) -> Any:
    """A stored value, checked against its checksum (ValueError when damaged)."""
    key, value = row
    text = value.decode("utf-8")
    if text[:_SUM] != _checksum(key, text[_SUM:]):
        raise ValueError("checksum mismatch")
    return json.loads(text[_SUM:])


def _decode_all(rows: Iterable[tuple[str, Any]], decode: Callable[[Any], Any], errors: Any, where: str, what: str,
                stacklevel: int) -> dict[str, Any]:
    """`decode` each (key, raw) pair; one that raises `errors` is left out, and all are counted in one warning."""
    found, bad = {}, 0
    for key, raw in rows:
        try:
            found[key] = decode((key, raw))
        except errors:
            bad += 1
    if bad:
        warnings.warn(f"{where}: {bad} {what} ignored; asking the model instead", CacheWarning,
                      stacklevel=stacklevel)
    return found


class ResponseCache:
    """Key -> JSON object store in one SQLite file; batch reads and writes are one statement each.

    `busy_timeout` is how long SQLite itself waits for a lock; a lock still held after that is
    retried with backoff until `retry_for` seconds have passed, then CacheError is raised.
    """

    def __init__(self, path: str | os.PathLike[str], *, busy_timeout: float = 5.0, retry_for: float = 60.0):
        self.path = Path(path)
        self.busy_timeout = busy_timeout
        self.retry_for = retry_for
        self._lock = threading.Lock()  # one connection, possibly shared by a caller's threads
        try:
            regular_or_absent(self.path, "cache_path")  # a directory, device or FIFO is no cache file
        except ConfigError as e:
            raise CacheError(str(e)) from None
        lock_was_there = self._lock_path().exists()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with _exclusive(self._lock_path()):
                self._conn = self._retrying(self._open)
        except (OSError, CacheError) as e:  # e.g. a read-only or non-directory location, a user's own file
            if not lock_was_there:  # a refused file keeps no <file>.lock beside it
                with suppress(OSError):
                    self._lock_path().unlink()
            if isinstance(e, CacheError):
                raise
            raise CacheError(f"cannot open the response cache {self.path}: {e}") from e

    def _connect(self) -> sqlite3.Connection:
        # isolation_level=None: we issue BEGIN/COMMIT ourselves to keep transactions explicit and short.
        return sqlite3.connect(self.path, timeout=self.busy_timeout, isolation_level=None,
                               check_same_thread=False)

    def _open(self) -> sqlite3.Connection:
        conn = self._connect()
        try:
            problem = _problem(conn)
        except sqlite3.DatabaseError as e:
            if not _is_corruption(e):
                conn.close()
                raise
            problem = f"is unreadable ({e})"
        if problem:
            conn.close()
            if not (self._created_by_us() or "schema version" in problem):
                raise CacheError(f"{self.path} {problem}, and promptopt did not create it, so it is left alone; "
                                 "set cache_path to another file (or --no-cache)")
            aside = _move_aside(self.path)
            warnings.warn(f"response cache {self.path} {problem}; moved it to {aside.name} and "
                          f"started a new one", CacheWarning, stacklevel=4)
            conn = self._connect()
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")  # WAL stays consistent; only speed is at stake
            if not conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'responses'").fetchone():
                self._create_schema(conn)
        except BaseException:
            conn.close()
            raise
        return conn

    def _lock_path(self) -> Path:
        return self.path.with_name(self.path.name + ".lock")

    def _created_by_us(self) -> bool:
        try:
            return self._lock_path().read_text(encoding="utf-8") == _MARK
        except (OSError, UnicodeDecodeError):
            return False

    def _create_schema(self, conn: sqlite3.Connection) -> None:
        self._lock_path().write_text(_MARK, encoding="utf-8")  # provenance: this file may be rebuilt later
        # Only a new file takes the write lock on open, so opening never waits behind a writer.
        with self._transaction(conn):
            conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            conn.execute("CREATE TABLE IF NOT EXISTS responses "
                         "(key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID")
            conn.execute("INSERT INTO schema_version SELECT ? "
                         "WHERE NOT EXISTS (SELECT 1 FROM schema_version)", (SCHEMA_VERSION,))

    @staticmethod
    @contextmanager
    def _transaction(conn: sqlite3.Connection) -> Iterator[None]:
        # IMMEDIATE takes the write lock up front, so a reader never has to upgrade (which would fail
        # at once with "database is locked" instead of waiting).
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield
            conn.execute("COMMIT")
        finally:
            if conn.in_transaction:
                conn.execute("ROLLBACK")

    def _retrying(self, op: Callable[[], T]) -> T:
        deadline = time.monotonic() + self.retry_for
        delay = 0.01
        while True:
            try:
                return op()
            except sqlite3.Error as e:
                if not (_is_busy(e) and time.monotonic() < deadline):
                    raise CacheError(f"response cache {self.path}: {e}") from e
            time.sleep(delay)
            delay = min(2 * delay, 0.5)

    def _locked(self, op: Callable[[], T]) -> T:
        with self._lock:
            return self._retrying(op)

    def get_many(self, keys: Sequence[str]) -> dict[str, Any]:
        """The stored values of those keys that are present (one query whatever the batch size)."""
        if not keys:
            return {}
        # json_each passes the whole batch as one parameter, so no SQLite variable limit applies;
        # values come back as bytes so that one damaged value cannot fail the whole query.
        query = ("SELECT key, CAST(value AS BLOB) FROM responses "
                 "WHERE key IN (SELECT value FROM json_each(?))")
        rows = self._locked(lambda: self._conn.execute(query, (json.dumps(list(keys)),)).fetchall())
        # damaged (bad UTF-8, checksum or JSON): treated as absent, and overwritten by the next put
        return _decode_all(rows, _verified, ValueError, f"response cache {self.path}", "damaged value(s) (checksum mismatch)", 4)

    def put_many(self, items: Mapping[str, Any]) -> None:
        """Store JSON-serializable values under their keys in one transaction."""
        if not items:
            return
        rows = []
        for key, value in items.items():
            text = json.dumps(value, ensure_ascii=False)
            rows.append((key, _checksum(key, text) + text))

        def write() -> None:
            with self._transaction(self._conn):
                self._conn.executemany("INSERT OR REPLACE INTO responses (key, value) VALUES (?, ?)", rows)

        self._locked(write)

    def __len__(self) -> int:
        return self._locked(lambda: self._conn.execute("SELECT COUNT(*) FROM responses").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> "ResponseCache":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# Explicit encoders rather than dataclasses.asdict, which was most of the cost of a 1000-miss batch.
def _gen_to_json(r: GenResult) -> dict[str, Any]:
    d: dict[str, Any] = {"text": r.text, "finish_reason": r.finish_reason, "usage": r.usage.to_json()}
    if r.top_logprobs:
        d["top_logprobs"] = [list(t) for t in r.top_logprobs]
    return d


def _ll_to_json(r: LLResult) -> dict[str, Any]:
    return {"logprob": r.logprob, "is_greedy": r.is_greedy, "token_logprobs": r.token_logprobs,
            "usage": r.usage.to_json()}


def _gen_from_json(d: Mapping[str, Any]) -> GenResult:
    if not isinstance(d["text"], str) or not isinstance(d["finish_reason"], str):
        raise TypeError("not a generation")
    tops = tuple((str(t), _number(lp)) for t, lp in d.get("top_logprobs") or ())
    return GenResult(d["text"], d["finish_reason"], usage=_HIT, top_logprobs=tops)


def _number(x: Any) -> float:
    """A stored log-probability: a number, never NaN (what a failed request gives, and never stored)."""
    if isinstance(x, bool) or not isinstance(x, (int, float)) or math.isnan(x):
        raise TypeError(f"not a log-probability: {x!r}")
    return float(x)


def _ll_from_json(d: Mapping[str, Any]) -> LLResult:
    if not isinstance(d["is_greedy"], bool):
        raise TypeError("is_greedy is not a bool")
    return LLResult(_number(d["logprob"]), d["is_greedy"], tuple(_number(x) for x in d["token_logprobs"]), usage=_HIT)


class CachedBackend:
    """A Backend that answers from `cache` when it can and sends only the misses to `inner`.

    Misses go to `inner` in one call, in their original order, each distinct request once.
    Counters: `hits` (results given without a model call: stored ones and in-batch duplicates),
    `misses` (requests sent to `inner`) and `inner_calls` (batches sent to `inner`).
    With `cache=None` it only removes in-batch duplicates.
    """

    def __init__(self, inner: Backend, cache: ResponseCache | None):
        self.inner = inner
        self.cache = cache
        self.capabilities = inner.capabilities
        self.hits = 0
        self.misses = 0
        self.inner_calls = 0
        self.cache_seconds = 0.0  # perf_counter seconds spent on keys, lookups and writes (promptopt/timing.py)

    def fingerprint(self) -> str:
        return self.inner.fingerprint()

    def check(self, needs: Iterable[str] = ()) -> None:
        """The inner backend's optional check(), so its reasons for a missing capability show through."""
        check = getattr(self.inner, "check", None)
        if callable(check):
            check(needs=needs)

    def generate(self, reqs: Sequence[GenRequest]) -> list[GenResult]:
        fp, t0 = self.inner.fingerprint(), time.perf_counter()
        keys = [cache_key(fp, r) if r.cacheable else None for r in reqs]
        self.cache_seconds += time.perf_counter() - t0
        return self._serve(reqs, keys, self.inner.generate, _gen_to_json, _gen_from_json)

    def loglikelihood(self, reqs: Sequence[LLRequest]) -> list[LLResult]:
        fp, t0 = self.inner.fingerprint(), time.perf_counter()
        keys = [cache_key(fp, r) for r in reqs]
        self.cache_seconds += time.perf_counter() - t0
        return self._serve(reqs, keys, self.inner.loglikelihood, _ll_to_json, _ll_from_json)

    def _serve(self, reqs: Sequence[Any], keys: Sequence[str | None],
               call: Callable[[list[Any]], list[R]], encode: Callable[[R], dict[str, Any]],
               decode: Callable[[Mapping[str, Any]], R]) -> list[R]:
        """Fill results from the cache, send the rest once each; `None` keys are never cached or merged."""
        results: list[R | None] = [None] * len(reqs)
        t0 = time.perf_counter()
        stored = self._lookup([k for k in keys if k is not None], decode)
        self.cache_seconds += time.perf_counter() - t0
        sent: list[Any] = []
        owners: list[int] = []  # owners[j]: position of the request sent j-th
        first_sent: dict[str, int] = {}
        copies: list[tuple[int, int]] = []  # (position, j) of in-batch duplicates
        for i, (req, key) in enumerate(zip(reqs, keys)):
            if key is not None and key in stored:
                results[i] = stored[key]
            elif key is not None and key in first_sent:
                copies.append((i, first_sent[key]))
            else:
                if key is not None:
                    first_sent[key] = len(sent)
                sent.append(req)
                owners.append(i)
        self.hits += len(reqs) - len(sent)
        if sent:
            fresh = self._call_inner(call, sent)
            for i, res in zip(owners, fresh):
                results[i] = res
            for i, j in copies:
                results[i] = replace(fresh[j], usage=_HIT)
            t0 = time.perf_counter()
            self._store({keys[i]: encode(res) for i, res in zip(owners, fresh)
                         if keys[i] is not None and res.error is None})
            self.cache_seconds += time.perf_counter() - t0
        return results  # type: ignore[return-value]  # every slot is filled above

    def _call_inner(self, call: Callable[[list[Any]], list[R]], sent: list[Any]) -> list[R]:
        self.inner_calls += 1
        self.misses += len(sent)
        fresh = call(sent)
        if len(fresh) != len(sent):  # results are matched by position, so a short list would misalign
            raise BackendError(f"backend {self.inner.fingerprint()} returned {len(fresh)} results "
                               f"for {len(sent)} requests")
        return fresh

    def _lookup(self, keys: list[str], decode: Callable[[Mapping[str, Any]], R]) -> dict[str, R]:
        if self.cache is None or not keys:
            return {}
        try:
            stored = self.cache.get_many(keys)
        except CacheError as e:
            warnings.warn(f"{e}; asking the model instead", CacheWarning, stacklevel=4)
            return {}
        # a record we cannot read is a miss; the model's answer replaces it
        return _decode_all(stored.items(), lambda kv: decode(kv[1]), (KeyError, TypeError),
                           f"response cache {self.cache.path}", "value(s) of the wrong shape", 5)

    def _store(self, items: dict[str, Any]) -> None:
        if self.cache is None or not items:
            return
        try:
            self.cache.put_many(items)
        except CacheError as e:  # the results are in hand; losing them to a cache failure would be worse
            warnings.warn(f"{e}; results were not cached", CacheWarning, stacklevel=4)
