"""Per-client abuse limits: request budgets (deployment-wide, through the hub) and websocket quotas (per process).

A flood of bogus codes costs Google calls; one of cheap requests (``/state``,
``/signout``, the socket handshake) costs CPU and hub memory; open sockets
cost descriptors.

The client is the connection's peer address (``request.remote_ip``), which
honours ``X-Forwarded-For`` only when ``server.xheaders`` is on, i.e. only
behind a proxy that sets it: a spoofed header cannot buy a fresh budget.
"""

from __future__ import annotations

from collections.abc import Mapping

from .hub import ConfirmationHub

__all__ = ["RequestLimits", "SocketQuota"]


class RequestLimits:
    """Per-client request budgets (``limits.*_per_minute``), counted by the hub for the whole deployment.

    ``per_minute`` maps a budget's name (``code``, ``state``, ``signout``,
    ``disconnect``, ``socket``) to the requests a client may make a minute (0:
    unlimited). Each budget is a fixed one-minute window in the hub
    (:meth:`~tornado_signin.hub.ConfirmationHub.hit`), so with the Redis hub
    every process and machine counts into the same one.
    """

    WINDOW = 60.0

    def __init__(self, hub: ConfirmationHub, per_minute: Mapping[str, int]) -> None:
        self.hub = hub
        self.per_minute = dict(per_minute)

    async def allow(self, name: str, client: str) -> bool:
        """Count one request of budget ``name`` from ``client``; return False once the budget is spent."""
        limit = self.per_minute.get(name, 0)
        if limit <= 0:
            return True
        return await self.hub.hit(f"{name}:{client}", limit, self.WINDOW)


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
