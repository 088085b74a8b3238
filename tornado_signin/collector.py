"""CPython's cyclic garbage collector tuned for this package's long runs (a process-wide setting).

- :func:`settle_collector` — for serving: once start-up is done, for the process's life
  (:func:`tornado_signin.server.serve` calls it).
- :func:`settled_collector` — the same for one block only, put back after: the script API's
  :func:`tornado_signin.wiring.run_offline` (the bulk job) runs inside a user's script.

Not hand-written internals: the standard library's :mod:`gc` settings, chosen by measurement
(the numbers are in each function's docstring).
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

__all__ = ["GC_YOUNG_THRESHOLD", "settle_collector", "settled_collector"]

#: Net allocations of container objects between two collections of the collector's youngest
#: generation while serving (CPython's default is 700); see :func:`settle_collector`.
GC_YOUNG_THRESHOLD = 10_000


def settle_collector(young: int = GC_YOUNG_THRESHOLD) -> None:
    """Tune CPython's cyclic garbage collector for serving; call once start-up is done (it is process-wide).

    What start-up made (modules, the app, the store's engine: ~64,000 objects) is collected once and
    then frozen out of the collector's generations (:func:`gc.freeze`), so a full collection no
    longer rescans it; and the youngest generation is collected after ``young`` net allocations
    instead of 700. A request's objects are freed by reference counting: what a young collection
    found was the requests in flight, and the records a memory hub keeps (a signed-in session's
    lives for days), whose growth set off a full collection every 2–3 s under load. Cyclic garbage
    now waits a little longer to be freed (``young`` allocations at most).

    Measured with the benchmark's ``signin`` (one server process on a core, 50 connections, this
    2-core machine): time in the collector 77–129 → 3–6 µs per login; full collections, each
    stopping every login in flight for 50–100 ms, 9–11 per run → 0; server CPU per login
    1.10 / 1.07 → 0.96 / 0.97 ms (two pairs, alternated). Not hand-written: the standard
    library's ``gc`` settings. Process-wide, so :func:`~tornado_signin.server.serve` calls it, not ``make_app`` (a host
    application decides for its own process).
    """
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(young, middle, old)


#: Guards the settling of :func:`settled_collector`: the blocks open now, and the settings to put back.
_SETTLED_LOCK = threading.Lock()
_settled: list[Any] = [0, None]


@contextmanager
def settled_collector(young: int = GC_YOUNG_THRESHOLD) -> Iterator[None]:
    """Settle the garbage collector as :func:`settle_collector` does for the ``with`` block only; put it back after.

    For work that owns the process for a while without owning the process:
    :func:`tornado_signin.wiring.run_offline` (the script API, the bulk job) runs inside a user's
    script, so it neither collects the script's objects nor keeps its settings. On entry what
    exists is frozen out of the collector's generations (unless something, ``serve`` for one,
    froze already) and the youngest generation's threshold raised to ``young`` (unless it is
    higher); on exit both are put back as they were. Blocks open at once in several threads
    share one settling, put back when the last ends. Cyclic garbage made meanwhile is freed
    later than by default (``young`` allocations at most), and what was frozen is collectable
    again after the block.

    Measured with the offline bulk job (10,000 refreshed users, ``bench`` ``offline_refresh``,
    collector time by ``gc.callbacks``): 100-140 ms of collections per run, four of them full
    (each rescanning everything the imports made: ~18 ms, every user in flight stopped) -> none
    during the job; the job's machinery alone (the encrypted SQLite store, a Google stub
    answering at once) 0.132-0.137 -> 0.122-0.132 ms of CPU per user (3 pairs); in the whole job
    the CPU per refresh is within the noise of a loaded machine (0.357 / 0.357 ms, medians of 3
    alternated pairs) and its p99 87-117 -> 55-70 ms (no full collection stops it).
    """
    with _SETTLED_LOCK:
        if not _settled[0]:
            threshold = gc.get_threshold()
            froze = gc.get_freeze_count() == 0
            if froze:
                gc.freeze()
            if threshold[0] < young:
                gc.set_threshold(young, *threshold[1:])
            _settled[1] = (threshold, froze)
        _settled[0] += 1
    try:
        yield
    finally:
        with _SETTLED_LOCK:
            _settled[0] -= 1
            if not _settled[0]:
                (threshold, froze), _settled[1] = _settled[1], None
                gc.set_threshold(*threshold)
                if froze:
                    gc.unfreeze()
