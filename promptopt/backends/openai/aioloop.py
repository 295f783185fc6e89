"""A private asyncio loop on a daemon thread, so synchronous callers can run async batches.

The Backend protocol is synchronous. Running each batch with `asyncio.run` would fail inside a
thread that already runs a loop (a notebook, an async worker) and would throw away pooled
connections between batches. One long-lived loop on its own thread avoids both: any thread
submits a coroutine and blocks on its result.
"""
from __future__ import annotations

import asyncio
import threading
from typing import Awaitable, Callable, TypeVar

T = TypeVar("T")


class LoopThread:
    def __init__(self, name: str = "promptopt-openai"):
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=name, daemon=True)
        self._thread.start()

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def run(self, coro: Awaitable[T]) -> T:
        """Run `coro` on the private loop and wait for it from the calling thread."""
        if threading.current_thread() is self._thread:
            raise RuntimeError("LoopThread.run called from its own loop; await the coroutine instead")
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)  # type: ignore[arg-type]
        try:
            return future.result()
        except BaseException:
            future.cancel()  # e.g. Ctrl-C in the caller: stop the batch instead of leaving it running
            raise

    def stop(self, cleanup: Callable[[], Awaitable[None]] | None = None) -> None:
        """Run `cleanup` (e.g. closing HTTP clients) on the loop, then stop and join the thread."""
        if not self._thread.is_alive():
            return
        if cleanup is not None and threading.current_thread() is not self._thread:
            try:
                asyncio.run_coroutine_threadsafe(cleanup(), self._loop).result(timeout=5)
            except Exception:  # noqa: BLE001 - best effort at shutdown; the loop still stops below
                pass
        self._loop.call_soon_threadsafe(self._loop.stop)
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout=5)
            self._loop.close()
