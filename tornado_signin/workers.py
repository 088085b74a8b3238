"""The one way blocking work leaves the IOLoop: a bounded worker pool.

Token stores and google-auth's transport are synchronous. Every call to them
from a coroutine goes through :meth:`WorkerPool.run`, which runs the function
in a fixed-size thread pool and refuses work at once (``OverloadedError``,
answered as 503) when too many calls are already queued, instead of letting
an unbounded queue grow under load.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from .errors import OverloadedError

__all__ = ["WorkerPool"]

T = TypeVar("T")


class WorkerPool:
    """A thread pool with ``threads`` workers and room for ``queue`` waiting calls."""

    def __init__(self, threads: int = 8, queue: int = 64, *, name: str = "tornado-signin") -> None:
        self._executor = ThreadPoolExecutor(max_workers=max(1, threads), thread_name_prefix=name)
        self._threads = max(1, threads)
        self._capacity = max(1, threads) + max(0, queue)
        self._in_flight = 0
        self._lock = threading.Lock()

    @property
    def in_flight(self) -> int:
        """Return how many calls are running or queued now."""
        return self._in_flight

    @property
    def threads(self) -> int:
        """Return how many calls run at once (the worker threads)."""
        return self._threads

    @property
    def capacity(self) -> int:
        """Return how many calls may be running or queued at once (threads plus queue slots)."""
        return self._capacity

    @property
    def saturated(self) -> bool:
        """Return True when a call now would be refused (every worker and queue slot taken)."""
        return self._in_flight >= self._capacity

    async def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run ``fn(*args, **kwargs)`` in the pool and return its result.

        Raise OverloadedError without queueing when the pool and its queue are full.
        """
        with self._lock:
            if self._in_flight >= self._capacity:
                raise OverloadedError("worker pool full")
            self._in_flight += 1
        try:
            loop = asyncio.get_running_loop()
            # The caller's context (its request id) follows the call into the thread.
            context = contextvars.copy_context()
            return await loop.run_in_executor(self._executor, context.run, functools.partial(fn, *args, **kwargs))
        finally:
            with self._lock:
                self._in_flight -= 1

    def shutdown(self, wait: bool = True) -> None:
        """Stop the threads; with ``wait`` finish the calls already started."""
        self._executor.shutdown(wait=wait, cancel_futures=not wait)
