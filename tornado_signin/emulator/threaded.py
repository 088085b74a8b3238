"""Run an emulator on its own IOLoop in a background thread.

For callers that block (google-auth's transport, ``requests``, a test body)
and must not block the loop that serves the emulator::

    with EmulatorThread(clients=[client]) as emulator:
        requests.post(emulator.base_url + "/token", ...)

Calling the emulator's Python methods from another thread is safe while no
request is being served (each test step waits for its reply); use
:meth:`EmulatorThread.call` to run something on the emulator's own thread.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import tornado.ioloop

from .app import Emulator, start_emulator

__all__ = ["EmulatorThread"]

log = logging.getLogger(__name__)

T = TypeVar("T")


class EmulatorThread:
    """An emulator served from a daemon thread; ``emulator_kwargs`` go to :func:`start_emulator`."""

    def __init__(self, *, start_timeout: float = 30.0, **emulator_kwargs: Any) -> None:
        self._kwargs = emulator_kwargs
        self._start_timeout = start_timeout
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None
        self._loop: tornado.ioloop.IOLoop | None = None
        self._stop: asyncio.Event | None = None
        self.emulator: Emulator | None = None

    def start(self) -> Emulator:
        """Start serving; return the emulator (its ``base_url`` set). Re-raise a startup error."""
        self._thread = threading.Thread(target=self._run, name="tornado-signin-emulator", daemon=True)
        self._thread.start()
        if not self._ready.wait(self._start_timeout):
            raise TimeoutError("the emulator thread did not start")
        if self._error is not None:
            raise self._error
        assert self.emulator is not None
        return self.emulator

    def _run(self) -> None:
        async def serve() -> None:
            try:
                self.emulator, server = start_emulator(**self._kwargs)
            except BaseException as exc:
                self._error = exc
                self._ready.set()
                return
            self._loop = tornado.ioloop.IOLoop.current()
            self._stop = asyncio.Event()
            self._ready.set()
            await self._stop.wait()
            server.stop()
            await server.close_all_connections()
            self.emulator.close()

        asyncio.run(serve())

    def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run ``fn(*args, **kwargs)`` on the emulator's thread and return its result."""
        assert self._loop is not None, "not started"
        future: concurrent.futures.Future[T] = concurrent.futures.Future()

        def run() -> None:
            try:
                future.set_result(fn(*args, **kwargs))
            except BaseException as exc:
                future.set_exception(exc)

        self._loop.add_callback(run)
        return future.result(timeout=30)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop serving, drop open connections and join the thread. Idempotent."""
        if self._loop is not None and self._stop is not None:
            self._loop.add_callback(self._stop.set)
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning("the emulator thread did not stop within %ss", timeout)
        self._loop = None

    def __enter__(self) -> Emulator:
        return self.start()

    def __exit__(self, *exc_info: Any) -> None:
        self.stop()
