"""Prometheus metrics in the text exposition format, without a dependency.

One :class:`Metrics` object per application; ``GET /metrics`` renders it.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable

__all__ = ["Metrics"]

_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def _labels(labels: tuple[tuple[str, str], ...]) -> str:
    if not labels:
        return ""
    inner = ",".join('%s="%s"' % (k, v.replace("\\", "\\\\").replace('"', '\\"')) for k, v in labels)
    return "{" + inner + "}"


class Metrics:
    """Counters, histograms and gauges of one process."""

    def __init__(self) -> None:
        self._help: dict[str, tuple[str, str]] = {}
        self._counters: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
        self._histograms: dict[str, tuple[list[int], list[float]]] = {}
        self._gauges: dict[str, Callable[[], float]] = {}
        self.counter("signin_logins_total", "Code POSTs by outcome.")
        self.counter("signin_refresh_total", "Access-token refreshes by outcome.")
        self.counter("signin_certs_cache_total", "Certs cache lookups: hit, fetched, error.")
        self.histogram("signin_exchange_seconds", "Code exchange latency at the token endpoint.")
        self.histogram("signin_verify_seconds", "ID token verification latency.")
        self.histogram("signin_store_seconds", "Token store save latency.")

    def counter(self, name: str, help_text: str) -> None:
        """Declare a counter."""
        self._help[name] = ("counter", help_text)
        self._counters.setdefault(name, {})

    def histogram(self, name: str, help_text: str) -> None:
        """Declare a histogram with the default latency buckets."""
        self._help[name] = ("histogram", help_text)
        self._histograms.setdefault(name, ([0] * (len(_BUCKETS) + 1), [0.0]))

    def gauge(self, name: str, help_text: str, read: Callable[[], float]) -> None:
        """Declare a gauge read from ``read()`` at scrape time."""
        self._help[name] = ("gauge", help_text)
        self._gauges[name] = read

    def inc(self, name: str, amount: float = 1.0, **labels: str) -> None:
        """Add ``amount`` to counter ``name`` with ``labels``."""
        series = self._counters[name]
        key = tuple(sorted(labels.items()))
        series[key] = series.get(key, 0.0) + amount

    def observe(self, name: str, seconds: float) -> None:
        """Record one observation in histogram ``name``."""
        counts, total = self._histograms[name]
        counts[bisect.bisect_left(_BUCKETS, seconds)] += 1
        total[0] += seconds

    def value(self, name: str, **labels: str) -> float:
        """Return a counter's current value (for tests and checks)."""
        return self._counters[name].get(tuple(sorted(labels.items())), 0.0)

    def render(self) -> str:
        """Return every metric in the Prometheus text format."""
        lines: list[str] = []
        for name, (kind, help_text) in sorted(self._help.items()):
            lines.append(f"# HELP {name} {help_text}")
            lines.append(f"# TYPE {name} {kind}")
            if kind == "counter":
                for labels, value in sorted(self._counters[name].items()):
                    lines.append(f"{name}{_labels(labels)} {value:g}")
            elif kind == "gauge":
                lines.append(f"{name} {self._gauges[name]():g}")
            else:
                counts, total = self._histograms[name]
                cumulative = 0
                for bound, count in zip((*_BUCKETS, float("inf")), counts):
                    cumulative += count
                    le = "+Inf" if bound == float("inf") else f"{bound:g}"
                    lines.append(f'{name}_bucket{{le="{le}"}} {cumulative}')
                lines.append(f"{name}_sum {total[0]:g}")
                lines.append(f"{name}_count {cumulative}")
        return "\n".join(lines) + "\n"
