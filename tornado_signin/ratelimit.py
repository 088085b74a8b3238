"""Per-client abuse limits: rate limiting of code POSTs (a flood of bogus codes costs Google calls) and websocket quotas.

The client is the connection's peer address (``request.remote_ip``), which
honours ``X-Forwarded-For`` only when ``server.xheaders`` is on, i.e. only
behind a proxy that sets it: a spoofed header cannot buy a fresh budget.
"""

from __future__ import annotations

import time
from collections.abc import Callable

__all__ = ["RateLimiter", "SocketQuota"]


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


class SocketQuota:
    """Open websockets counted per session and per client address (in this process), each with a cap.

    Every open socket holds a descriptor and a subscription, so a script that
    forges ``Origin`` and reuses one cookie must not open them without end.
    A cap of 0 disables that count's check.
    """

    def __init__(self, per_session: int, per_address: int) -> None:
        self.per_session = per_session
        self.per_address = per_address
        self._sessions: dict[str, int] = {}
        self._addresses: dict[str, int] = {}

    def acquire(self, sid: str, address: str) -> str | None:
        """Take a slot for a socket of session ``sid`` from ``address``; return None, or the cap that is
        full (``"session"`` or ``"address"``) without taking anything."""
        if self.per_session and self._sessions.get(sid, 0) >= self.per_session:
            return "session"
        if self.per_address and self._addresses.get(address, 0) >= self.per_address:
            return "address"
        self._sessions[sid] = self._sessions.get(sid, 0) + 1
        self._addresses[address] = self._addresses.get(address, 0) + 1
        return None

    def release(self, sid: str, address: str) -> None:
        """Give back the slot :meth:`acquire` took for ``sid`` and ``address``."""
        for counts, key in ((self._sessions, sid), (self._addresses, address)):
            left = counts.get(key, 0) - 1
            if left > 0:
                counts[key] = left
            else:
                counts.pop(key, None)

    def held(self, sid: str | None = None, address: str | None = None) -> int:
        """Return the slots held by ``sid`` (or ``address``); with neither, the sessions holding any."""
        if sid is not None:
            return self._sessions.get(sid, 0)
        if address is not None:
            return self._addresses.get(address, 0)
        return len(self._sessions)
