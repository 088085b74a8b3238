"""Is the token store up? A cheap answer for every login, kept fresh in the background.

A login must not spend the user's one-time code when the store is down: Google
would issue tokens (perhaps the only refresh token this grant will ever get)
that could not be kept. Probing the store before every exchange would double
its load, so :class:`StoreHealth` keeps a flag instead:

- a background task probes the store (``TokenStore.check`` in the worker
  pool) every ``limits.store_check_interval`` seconds (default 5);
- every store failure seen by a login marks it down at once, every success up;
- while it is marked down, :meth:`StoreHealth.ready` re-probes at most every
  ``limits.store_recheck_interval`` seconds (default 1), so recovery is
  noticed by the next login rather than by the next background round; a
  mark from a failed call (not yet confirmed by a probe) is re-probed at once.

So an outage is noticed within one background interval (or at the first
failing save), and during that window a login may still be exchanged and then
fail to save: that case is handled by the save retry and the consent steering
of :mod:`tornado_signin.signin`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from .errors import OverloadedError
from .store import TokenStore
from .workers import WorkerPool

__all__ = ["StoreHealth"]

log = logging.getLogger(__name__)


class StoreHealth:
    """The store's up/down flag of one application."""

    def __init__(self, store: TokenStore, workers: WorkerPool, *, interval: float = 5.0, recheck: float = 1.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.store = store
        self.workers = workers
        self.interval = interval
        self.recheck = recheck
        self.clock = clock
        self.up = True
        self.last_probe = float("-inf")
        self.down_since: float | None = None
        #: Marked down by a failed call but not yet confirmed by a probe.
        self.unconfirmed = False
        self._task: asyncio.Task[None] | None = None
        self._stopped = False
        self._probing: asyncio.Future[bool] | None = None

    def report(self, ok: bool, problem: str = "", *, probed: bool = False) -> None:
        """Record the outcome of a store call (``probed``: of a probe, which confirms it)."""
        self.unconfirmed = not ok and not probed
        if ok and not self.up:
            log.info("token store is back (down for %.1fs)", self.clock() - (self.down_since or self.clock()))
            self.down_since = None
        elif not ok and self.up:
            log.error("token store marked down: %s", problem or "a call failed")
            self.down_since = self.clock()
        self.up = ok

    def mark_down(self) -> None:
        """Record the store as down, as a probe would, without a log line (the caller has logged why)."""
        if self.up:
            self.down_since = self.clock()
        self.up, self.unconfirmed, self.last_probe = False, False, self.clock()

    async def probe(self) -> bool:
        """Check the store now (one probe at a time); return and record whether it answered."""
        if self._probing is not None:
            return await asyncio.shield(self._probing)
        self._probing = asyncio.get_running_loop().create_future()
        ok, problem = False, ""
        try:
            await self.workers.run(self.store.check)
            ok = True
        except OverloadedError:
            ok, problem = self.up, "busy"  # a full pool says nothing about the store
        except Exception as exc:  # any failure means "not usable"; the type is enough for the log
            problem = type(exc).__name__
        finally:
            self.last_probe = self.clock()
            self.report(ok, problem, probed=True)
            future, self._probing = self._probing, None
            future.set_result(ok)
        return ok

    async def ready(self) -> bool:
        """Return whether a login may spend a code now (probing again if it was down a while)."""
        self.start()
        if not self.up and (self.unconfirmed or self.clock() - self.last_probe >= self.recheck):
            await self.probe()
        return self.up

    def start(self) -> None:
        """Start the background probe on the running loop (idempotent; never again once stopped)."""
        # A request still served after stop() (a late RISC push, a login during shutdown) calls ready(),
        # which starts the probe: it would then outlive the application, pending on a closed loop.
        if self._task is None and self.interval > 0 and not self._stopped:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.probe()
            except asyncio.CancelledError:
                raise
            except Exception:  # e.g. the pool is full: try again next round
                log.debug("store probe skipped", exc_info=True)

    async def stop(self) -> None:
        """Stop the background probe for good."""
        self._stopped = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
