"""Per-client rate limiting of code POSTs (a flood of bogus codes costs Google calls).

The client is the connection's peer address (``request.remote_ip``), which
honours ``X-Forwarded-For`` only when ``server.xheaders`` is on, i.e. only
behind a proxy that sets it: a spoofed header cannot buy a fresh budget.
"""

from __future__ import annotations

import time
from collections.abc import Callable

__all__ = ["RateLimiter"]


class RateLimiter:
    """A token bucket per key: ``per_minute`` requests a minute, bursts up to the same number."""

    def __init__(self, per_minute: int, *, clock: Callable[[], float] = time.monotonic, max_keys: int = 100_000) -> None:
        self.per_minute = per_minute
        self.clock = clock
        self.max_keys = max_keys
        self._buckets: dict[str, tuple[float, float]] = {}

    def allow(self, key: str) -> bool:
        """Return True and spend one token if ``key`` still has one; always True when disabled."""
        if self.per_minute <= 0:
            return True
        now = self.clock()
        tokens, last = self._buckets.get(key, (float(self.per_minute), now))
        tokens = min(float(self.per_minute), tokens + (now - last) * self.per_minute / 60.0)
        if len(self._buckets) >= self.max_keys:
            # Drop full buckets: they hold no information.
            self._buckets = {k: v for k, v in self._buckets.items() if v[0] < self.per_minute}
        if tokens < 1.0:
            self._buckets[key] = (tokens, now)
            return False
        self._buckets[key] = (tokens - 1.0, now)
        return True
