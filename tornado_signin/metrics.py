"""Prometheus metrics for ``GET /metrics``, kept by prometheus_client.

One :class:`Metrics` object per application, with a registry of its own (so
several applications can live in one process: tests, embedding). Counters
and histograms are declared by name; a counter's label names are those of
its first :meth:`Metrics.inc` (every later one must use the same names).
Gauges are read from a function.

**Several processes** (``serve --processes N``): the supervisor calls
:func:`prepare_multiprocess` before it forks, which points
``PROMETHEUS_MULTIPROC_DIR`` at a fresh folder (its own temporary one, or the
operator's, emptied). Every worker then keeps its values in files there
(prometheus_client's multiprocess mode), and a scrape answered by any worker
reports the whole server: counters and histograms summed over every worker
that ever ran (a dead worker's counts stay, so totals never go backwards),
gauges summed over the live workers (``signin_store_up``: their minimum).
The supervisor calls :func:`worker_exited` for each worker it reaps. Gauges
are written to the files every :data:`GAUGE_REFRESH_SECONDS` by each worker
(:meth:`Metrics.refresh_gauges`) and by the one answering the scrape.

Cost, measured on this machine: an :meth:`~Metrics.inc` of a series seen
before ~1.9 us and an :meth:`~Metrics.observe` ~1.6 us (the hand-written
predecessor: 1.8 and 0.5 us); in multiprocess mode ~3.4 and ~4.7 us (an mmap
write under a lock). A login makes one of the first and three of the second.
"""

from __future__ import annotations

import glob
import logging
import os
import shutil
import tempfile
import threading
from collections.abc import Callable
from typing import Any, Literal

__all__ = ["Metrics", "MULTIPROC_ENV", "GAUGE_REFRESH_SECONDS", "prepare_multiprocess", "worker_exited"]

log = logging.getLogger(__name__)

#: prometheus_client's switch to multiprocess mode: the folder of the value files.
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
#: How often each worker writes its gauges to the shared files (multiprocess mode).
GAUGE_REFRESH_SECONDS = 1.0

_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_GAUGE_MODES: dict[str, Literal["livesum", "livemin", "livemax"]] = {
    "sum": "livesum", "min": "livemin", "max": "livemax"}


def prepare_multiprocess() -> Callable[[], None]:
    """Point ``PROMETHEUS_MULTIPROC_DIR`` at an empty folder for the workers about to be forked; return the clean-up.

    An operator's ``PROMETHEUS_MULTIPROC_DIR`` is kept (created if missing)
    and emptied of value files, as prometheus_client requires between runs;
    otherwise a private temporary folder is made, and removed by the returned
    function. Call it before prometheus_client is imported in this process:
    it picks its mode at import.
    """
    existing = os.environ.get(MULTIPROC_ENV)
    if existing:
        os.makedirs(existing, exist_ok=True)
        for path in glob.glob(os.path.join(existing, "*.db")):
            os.remove(path)
        return lambda: None
    folder = tempfile.mkdtemp(prefix="tornado-signin-metrics-")
    os.environ[MULTIPROC_ENV] = folder

    def clean_up() -> None:
        shutil.rmtree(folder, ignore_errors=True)
        if os.environ.get(MULTIPROC_ENV) == folder:
            del os.environ[MULTIPROC_ENV]

    return clean_up


def worker_exited(pid: int) -> None:
    """Drop the live gauges of the dead worker ``pid`` (its counters and histograms stay in the totals)."""
    if os.environ.get(MULTIPROC_ENV):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)


class Metrics:
    """Counters, histograms and gauges of one application (of every worker, in multiprocess mode)."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, values

        self.registry = CollectorRegistry(auto_describe=True)
        self.multiprocess_dir: str | None = os.environ.get(MULTIPROC_ENV) or None
        if self.multiprocess_dir and values.ValueClass is values.MutexValue:
            # prometheus_client chose its mode when it was imported, before the variable was set.
            log.warning("%s is set but prometheus_client was imported before: /metrics reports this process only",
                        MULTIPROC_ENV)
            self.multiprocess_dir = None
        self._lock = threading.Lock()
        self._counter_help: dict[str, str] = {}
        self._counters: dict[str, Any] = {}
        self._children: dict[tuple[Any, ...], Any] = {}
        self._histograms: dict[str, Any] = {}
        self._gauges: dict[str, tuple[Any, Callable[[], float]]] = {}
        self.counter("signin_logins_total", "Code POSTs by outcome.", labelnames=("outcome",))
        self.counter("signin_refresh_total", "Access-token refreshes by outcome.", labelnames=("outcome",))
        self.counter("signin_certs_cache_total", "Certs cache lookups: hit, fetched, error.", labelnames=("result",))
        self.histogram("signin_exchange_seconds", "Code exchange latency at the token endpoint.")
        self.histogram("signin_verify_seconds", "ID token verification latency.")
        self.histogram("signin_store_seconds", "Token store save latency.")

    def counter(self, name: str, help_text: str, *, labelnames: tuple[str, ...] | None = None) -> None:
        """Declare a counter (a name ending in ``_total``).

        With ``labelnames`` it is listed at once; without, it is created at its
        first :meth:`inc`, with the label names of that call.
        """
        self._counter_help[name] = help_text
        if labelnames is not None:
            self._counter(name, tuple(sorted(labelnames)))

    def histogram(self, name: str, help_text: str) -> None:
        """Declare a histogram with the default latency buckets."""
        from prometheus_client import Histogram

        with self._lock:
            if name not in self._histograms:
                self._histograms[name] = Histogram(name, help_text, buckets=_BUCKETS, registry=self.registry)

    def gauge(self, name: str, help_text: str, read: Callable[[], float], *, aggregate: str = "sum") -> None:
        """Declare a gauge read from ``read()``; across workers, the ``aggregate`` (sum, min, max) of the live ones."""
        from prometheus_client import Gauge

        gauge = Gauge(name, help_text, registry=self.registry, multiprocess_mode=_GAUGE_MODES[aggregate])
        if self.multiprocess_dir is None:
            gauge.set_function(read)
        else:
            gauge.set(read())
        self._gauges[name] = (gauge, read)

    def _counter(self, name: str, labelnames: tuple[str, ...]) -> Any:
        counter = self._counters.get(name)
        if counter is None:
            from prometheus_client import Counter

            with self._lock:
                counter = self._counters.get(name)
                if counter is None:
                    counter = Counter(name, self._counter_help[name], labelnames=labelnames, registry=self.registry)
                    self._counters[name] = counter
        return counter

    def inc(self, name: str, amount: float = 1.0, **labels: str) -> None:
        """Add ``amount`` to counter ``name`` with ``labels``; raise KeyError for an undeclared counter."""
        key = (name, *labels.items())
        child = self._children.get(key)
        if child is None:
            # prometheus_client's labels() validates on every call (~7 us): each series is looked up once.
            if name not in self._counter_help:
                raise KeyError(name)
            counter = self._counter(name, tuple(sorted(labels)))
            child = counter.labels(**labels) if labels else counter
            self._children[key] = child
        child.inc(amount)

    def observe(self, name: str, seconds: float) -> None:
        """Record one observation in histogram ``name``."""
        self._histograms[name].observe(seconds)

    def value(self, name: str, **labels: str) -> float:
        """Return a counter's current value in this process (for tests and checks); 0 when never incremented."""
        found = self.registry.get_sample_value(name, labels)
        return float(found) if found is not None else 0.0

    def refresh_gauges(self) -> None:
        """Write every gauge's current value to this worker's file (multiprocess mode; otherwise read at scrape)."""
        if self.multiprocess_dir is None:
            return
        for gauge, read in self._gauges.values():
            try:
                gauge.set(read())
            except Exception:  # a gauge must never break a scrape or the refresh loop
                log.exception("metrics: reading a gauge failed")

    def render(self) -> str:
        """Return every metric in the Prometheus text format (of every worker, in multiprocess mode)."""
        from prometheus_client import CollectorRegistry, generate_latest
        from prometheus_client.multiprocess import MultiProcessCollector

        if self.multiprocess_dir is None:
            return generate_latest(self.registry).decode()
        self.refresh_gauges()
        merged = CollectorRegistry()
        MultiProcessCollector(merged, path=self.multiprocess_dir)
        return generate_latest(merged).decode()
