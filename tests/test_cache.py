"""The persistent response cache and the caching backend wrapper (fast tier: FakeBackend only)."""
from __future__ import annotations

import multiprocessing
import os
import re
import sqlite3
import threading
import time
from multiprocessing.synchronize import Barrier
from pathlib import Path
from typing import Iterator, Sequence

import pytest

from promptopt.backends.base import Backend, GenRequest, LLRequest, LLResult
from promptopt.backends.fake import FakeBackend
from promptopt.scoring.cache import (SCHEMA_VERSION, CacheError, CachedBackend, CacheWarning, ResponseCache,
                             cache_key, default_cache_path)
from promptopt.errors import BackendError
from promptopt.types import Usage

HIT = Usage(cache_hits=1)


def ll(context: str) -> LLRequest:
    return LLRequest(context, " positive")


class RecordingBackend(FakeBackend):
    """FakeBackend that records each batch, adds token log-probabilities and fails 'bad' requests."""

    def __init__(self, model: str = "fake", **kw: object):
        super().__init__(model, **kw)
        self.batches: list[list[str]] = []

    def loglikelihood(self, reqs: Sequence[LLRequest]) -> list[LLResult]:
        self.batches.append([r.context for r in reqs])
        out = super().loglikelihood(reqs)
        return [LLResult(0.0, error="boom") if r.context.startswith("bad") else
                LLResult(res.logprob, True, (res.logprob / 2, res.logprob / 2), res.usage)
                for r, res in zip(reqs, out)]


@pytest.fixture
def cache(tmp_path: Path) -> Iterator[ResponseCache]:
    with ResponseCache(tmp_path / "responses.sqlite") as c:
        yield c


def test_cached_backend_satisfies_backend_protocol(cache: ResponseCache) -> None:
    backend = CachedBackend(FakeBackend(model="m"), cache)
    assert isinstance(backend, Backend)
    assert backend.fingerprint() == "fake:m"
    assert backend.capabilities == FakeBackend.capabilities


def test_second_identical_batch_makes_zero_model_calls(tmp_path: Path) -> None:
    path = tmp_path / "responses.sqlite"
    reqs = [ll(f"review {i}") for i in range(5)]
    inner = RecordingBackend()
    with ResponseCache(path) as c:
        backend = CachedBackend(inner, c)
        first = backend.loglikelihood(reqs)
        second = backend.loglikelihood(reqs)
    assert (inner.calls, backend.inner_calls, backend.misses, backend.hits) == (1, 1, 5, 5)
    assert all(r.usage.calls == 1 for r in first)
    assert [r.usage for r in second] == [HIT] * 5
    assert [(r.logprob, r.is_greedy, r.token_logprobs) for r in second] == \
           [(r.logprob, r.is_greedy, r.token_logprobs) for r in first]

    # The file outlives the process-local objects: a new backend on the same path is served from it.
    fresh_inner = RecordingBackend()
    with ResponseCache(path) as c:
        assert CachedBackend(fresh_inner, c).loglikelihood(reqs) == second
    assert fresh_inner.calls == 0


def test_generation_round_trips_through_the_cache(cache: ResponseCache) -> None:
    inner = FakeBackend(replies=["Positive.", "Negative!"])
    backend = CachedBackend(inner, cache)
    reqs = [GenRequest("Classify: great"), GenRequest(messages=(("user", "Classify: awful"),), stop=("\n",))]
    first = backend.generate(reqs)
    second = backend.generate(reqs)
    assert inner.calls == 1
    assert [(r.text, r.finish_reason) for r in second] == [("Positive.", "stop"), ("Negative!", "stop")]
    assert [r.usage for r in second] == [HIT, HIT]
    assert first[0].usage.calls == 1


def test_order_is_kept_with_mixed_hits_misses_and_duplicates(cache: ResponseCache) -> None:
    inner = RecordingBackend()
    backend = CachedBackend(inner, cache)
    backend.loglikelihood([ll("a"), ll("c")])
    batch = [ll(x) for x in "badcab"]
    got = backend.loglikelihood(batch)
    assert inner.batches[-1] == ["b", "d"]  # only the misses, once each, in first-seen order
    expected = RecordingBackend().loglikelihood(batch)
    assert [r.logprob for r in got] == [r.logprob for r in expected]
    assert [r.usage.cache_hits for r in got] == [0, 1, 0, 1, 1, 1]
    assert (backend.inner_calls, backend.misses, backend.hits) == (2, 4, 4)


def test_duplicates_are_sent_once_even_without_a_cache() -> None:
    inner = RecordingBackend()
    backend = CachedBackend(inner, None)
    got = backend.loglikelihood([ll("x"), ll("x"), ll("y")])
    assert inner.batches == [["x", "y"]]
    assert got[0].logprob == got[1].logprob and got[1].usage == HIT
    backend.loglikelihood([ll("x")])
    assert inner.calls == 2  # no cache: asked again


def test_empty_batch_calls_nothing(cache: ResponseCache) -> None:
    inner = FakeBackend()
    assert CachedBackend(inner, cache).loglikelihood([]) == []
    assert inner.calls == 0


def test_errors_are_not_cached(cache: ResponseCache) -> None:
    inner = RecordingBackend()
    backend = CachedBackend(inner, cache)
    first = backend.loglikelihood([ll("bad one"), ll("good one")])
    assert first[0].error == "boom" and first[1].error is None
    second = backend.loglikelihood([ll("bad one"), ll("good one")])
    assert inner.batches == [["bad one", "good one"], ["bad one"]]
    assert second[0].error == "boom" and second[1].usage == HIT
    assert len(cache) == 1


def test_batch_failure_propagates_and_stores_nothing(cache: ResponseCache) -> None:
    backend = CachedBackend(FakeBackend(fail_every=1), cache)
    with pytest.raises(BackendError):
        backend.loglikelihood([ll("a")])
    assert len(cache) == 0


def test_only_seeded_or_greedy_generation_is_cached(cache: ResponseCache) -> None:
    inner = FakeBackend(replies=lambda r: f"sample for seed {r.seed}")
    backend = CachedBackend(inner, cache)
    unseeded = GenRequest("Write a prompt", temperature=0.8)
    seeded = GenRequest("Write a prompt", temperature=0.8, seed=7)
    greedy = GenRequest("Write a prompt")
    backend.generate([unseeded, unseeded, seeded, greedy])
    assert inner.requests == 4  # unseeded duplicates are independent samples: both are drawn
    backend.generate([unseeded, seeded, greedy])
    assert (inner.calls, inner.requests) == (2, 5)
    assert len(cache) == 2


def test_different_fingerprints_do_not_collide(cache: ResponseCache) -> None:
    req = ll("same request")
    assert cache_key("fake:a", req) != cache_key("fake:b", req)
    model_a, model_b = FakeBackend(model="a"), FakeBackend(model="b")
    CachedBackend(model_a, cache).loglikelihood([req])
    CachedBackend(model_b, cache).loglikelihood([req])
    assert (model_a.calls, model_b.calls, len(cache)) == (1, 1, 2)
    assert cache_key("fake:a", GenRequest("x")) != cache_key("fake:a", LLRequest("x", ""))


def test_a_thousand_requests_are_one_read_and_one_transaction(cache: ResponseCache) -> None:
    items = {f"key{i}": {"n": i} for i in range(1000)}  # more than SQLite's old 999-variable limit
    statements: list[str] = []
    cache._conn.set_trace_callback(statements.append)
    cache.put_many(items)
    assert [s for s in statements if not s.startswith("INSERT")] == ["BEGIN IMMEDIATE", "COMMIT"]
    statements.clear()
    assert cache.get_many(list(items) + ["absent"]) == items
    assert len(statements) == 1


def test_unreadable_value_is_a_miss_and_is_replaced(cache: ResponseCache) -> None:
    inner = FakeBackend()
    backend = CachedBackend(inner, cache)
    req = ll("x")
    expected = backend.loglikelihood([req])[0].logprob
    with sqlite3.connect(cache.path) as raw:
        raw.execute("UPDATE responses SET value = ?", (b"\xff{not json",))
        raw.execute("INSERT INTO responses VALUES (?, ?)", (cache_key("fake:fake", ll("y")), '{"text": 1}'))
    with pytest.warns(CacheWarning, match="2 damaged value"):  # said, not escaping into the test run's output
        got = backend.loglikelihood([req, ll("y")])
    assert inner.calls == 2 and got[0].logprob == expected
    assert backend.loglikelihood([req])[0].usage == HIT


def test_wrong_result_count_from_inner_is_an_error(cache: ResponseCache) -> None:
    class Short(FakeBackend):
        def loglikelihood(self, reqs: Sequence[LLRequest]) -> list[LLResult]:
            return super().loglikelihood(reqs)[:-1]

    with pytest.raises(BackendError, match="returned 1 results for 2 requests"):
        CachedBackend(Short(), cache).loglikelihood([ll("a"), ll("b")])


def test_cache_failure_warns_and_the_run_goes_on(cache: ResponseCache) -> None:
    inner = FakeBackend()
    backend = CachedBackend(inner, cache)
    cache.close()
    with pytest.warns(CacheWarning) as caught:
        got = backend.loglikelihood([ll("a")])
    assert got[0].error is None and inner.calls == 1
    assert {str(w.message).split("; ")[-1] for w in caught} == {"asking the model instead",
                                                                 "results were not cached"}


def test_a_held_lock_is_waited_out_then_reported(tmp_path: Path) -> None:
    path = tmp_path / "responses.sqlite"
    ResponseCache(path).close()
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN IMMEDIATE")
    try:
        impatient = ResponseCache(path, busy_timeout=0.02, retry_for=0.1)
        with pytest.raises(CacheError, match="database is locked"):
            impatient.put_many({"k": 1})
        patient = ResponseCache(path, busy_timeout=0.02, retry_for=10)
        threading.Timer(0.3, holder.execute, ("COMMIT",)).start()
        started = time.monotonic()
        patient.put_many({"k": 2})  # outlasts several busy timeouts thanks to the retry loop
        assert time.monotonic() - started >= 0.25
        assert patient.get_many(["k"]) == {"k": 2}
    finally:
        holder.close()


def _write_distinct(path: str, worker: int, n: int, barrier: Barrier) -> None:
    backend = CachedBackend(FakeBackend(), ResponseCache(path))
    barrier.wait()  # both processes start writing at the same moment
    for start in range(0, n, 25):
        backend.loglikelihood([ll(f"w{worker} r{i}") for i in range(start, start + 25)])
    assert backend.inner_calls == n // 25


def test_two_processes_writing_at_once_lose_nothing(tmp_path: Path) -> None:
    path, n = tmp_path / "responses.sqlite", 3000
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(2)
    procs = [ctx.Process(target=_write_distinct, args=(str(path), w, n, barrier)) for w in range(2)]
    try:
        for p in procs:
            p.start()
        for p in procs:
            p.join(timeout=60)
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
    assert [p.exitcode for p in procs] == [0, 0]

    reqs = [ll(f"w{w} r{i}") for w in range(2) for i in range(n)]
    inner = FakeBackend()
    with ResponseCache(path) as c:
        assert len(c) == 2 * n
        got = CachedBackend(inner, c).loglikelihood(reqs)
    assert inner.calls == 0
    assert [r.logprob for r in got] == [r.logprob for r in FakeBackend().loglikelihood(reqs)]


def _garbage(path: Path) -> None:
    path.write_bytes(os.urandom(path.stat().st_size))


def _truncate(path: Path) -> None:
    os.truncate(path, path.stat().st_size // 2)


def _damage_a_page(path: Path) -> None:
    with open(path, "r+b") as f:  # header intact, one b-tree page overwritten
        f.seek(path.stat().st_size // 2)
        f.write(os.urandom(4096))


@pytest.mark.parametrize("damage", [_garbage, _truncate, _damage_a_page])
def test_corrupted_file_is_moved_aside_and_rebuilt(tmp_path: Path, damage) -> None:
    path = tmp_path / "responses.sqlite"
    reqs = [ll(f"review {i} " + "words " * 30) for i in range(2000)]
    with ResponseCache(path) as c:
        CachedBackend(FakeBackend(), c).loglikelihood(reqs)
    damage(path)

    with pytest.warns(CacheWarning, match="moved it to responses.sqlite.corrupt-"):
        c = ResponseCache(path)
    with c:
        assert len(c) == 0
        inner = FakeBackend()
        backend = CachedBackend(inner, c)
        got = backend.loglikelihood(reqs[:10])
        assert backend.loglikelihood(reqs[:10]) == [LLResult(r.logprob, usage=HIT) for r in got]
        assert inner.calls == 1
        assert [r.logprob for r in got] == [r.logprob for r in FakeBackend().loglikelihood(reqs[:10])]
    assert len(list(tmp_path.glob("responses.sqlite.corrupt-*"))) == 1


def test_other_schema_version_is_rebuilt(tmp_path: Path) -> None:
    path = tmp_path / "responses.sqlite"
    with ResponseCache(path) as c:
        c.put_many({"k": 1})
    with sqlite3.connect(path) as raw:
        raw.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION + 1,))
    with pytest.warns(CacheWarning, match=f"schema version {SCHEMA_VERSION + 1}, expected {SCHEMA_VERSION}"):
        c = ResponseCache(path)
    with c:
        assert c.get_many(["k"]) == {}
        c.put_many({"k": 2})
    with ResponseCache(path) as c:  # the rebuilt file opens cleanly
        assert c.get_many(["k"]) == {"k": 2}


@pytest.mark.parametrize("content", ["sqlite", b"my notes\n" * 100])
def test_a_file_promptopt_did_not_create_is_refused_and_left_alone(tmp_path: Path, content) -> None:
    path = tmp_path / "responses.sqlite"
    if content == "sqlite":
        with sqlite3.connect(path) as raw:
            raw.execute("CREATE TABLE notes (body TEXT)")
    else:
        path.write_bytes(content)
    before = path.read_bytes()
    with pytest.raises(CacheError, match="promptopt did not create it, so it is left alone"):
        ResponseCache(path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["responses.sqlite"]  # no stray responses.sqlite.lock


@pytest.mark.parametrize("make", [os.mkfifo, os.mkdir])
def test_a_cache_path_that_is_no_regular_file_is_refused_before_anything_is_made(tmp_path: Path, make) -> None:
    path = tmp_path / "responses.sqlite"
    make(path)
    with pytest.raises(CacheError, match=r"cache_path .* is a (FIFO|directory); name a regular file"):
        ResponseCache(path)
    assert [p.name for p in tmp_path.iterdir()] == ["responses.sqlite"]


def _rows(path: Path) -> list[tuple[str, str]]:
    with sqlite3.connect(path) as raw:
        return raw.execute("SELECT key, value FROM responses").fetchall()


@pytest.mark.parametrize("edit", [
    lambda v: re.sub(r'("logprob": -\d\.\d)(\d)', lambda m: m[1] + str((int(m[2]) + 1) % 10), v, count=1),  # one digit
    lambda v: v[:16] + '"x"', lambda v: v[:16] + "null", lambda v: v[:16] + '{"logprob": NaN}',
])
def test_a_damaged_value_is_a_miss_with_one_warning(tmp_path: Path, edit) -> None:
    path = tmp_path / "responses.sqlite"
    reqs = [ll(f"review {i}") for i in range(5)]
    with ResponseCache(path) as c:
        want = CachedBackend(FakeBackend(), c).loglikelihood(reqs)
    (key, value), *_ = _rows(path)
    assert edit(value) != value
    with sqlite3.connect(path) as raw:
        raw.execute("UPDATE responses SET value = ? WHERE key = ?", (edit(value), key))
    with ResponseCache(path) as c, pytest.warns(CacheWarning, match="1 damaged value") as warned:
        inner = FakeBackend()
        got = CachedBackend(inner, c).loglikelihood(reqs)
    assert [r.logprob for r in got] == [r.logprob for r in want] and inner.requests == 1
    assert len([w for w in warned if issubclass(w.category, CacheWarning)]) == 1


def test_a_wrong_shaped_value_with_a_valid_checksum_is_a_miss(tmp_path: Path) -> None:
    with ResponseCache(tmp_path / "r.sqlite") as c:
        backend = CachedBackend(FakeBackend(), c)
        key = cache_key(backend.fingerprint(), ll("a"))
        c.put_many({key: {"logprob": "x", "is_greedy": False, "token_logprobs": []}})
        with pytest.warns(CacheWarning, match="wrong shape"):
            assert backend.loglikelihood([ll("a")])[0].logprob == FakeBackend().loglikelihood([ll("a")])[0].logprob


def test_an_empty_file_is_a_fresh_cache_without_warning(tmp_path: Path, recwarn) -> None:
    path = tmp_path / "responses.sqlite"
    path.touch()
    with ResponseCache(path) as c:
        c.put_many({"k": 1})
        assert len(c) == 1
    assert not [w for w in recwarn if issubclass(w.category, CacheWarning)]


def test_default_cache_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PROMPTOPT_CACHE_DIR", str(tmp_path / "c"))
    assert default_cache_path() == tmp_path / "c" / "responses.sqlite"
    monkeypatch.delenv("PROMPTOPT_CACHE_DIR")
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert default_cache_path() == tmp_path / ".cache" / "promptopt" / "responses.sqlite"


def test_unusable_directory_is_one_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(CacheError, match="cannot open the response cache"):
        ResponseCache(blocker / "responses.sqlite")
