"""The confirmation hub: how "fully logged in" reaches the page (seed step 7).

A hub delivers messages to the websockets subscribed to a channel, and
*records* the last message of each channel for a while, so a socket that
connects after the login finished still learns the outcome. A channel is a
browser session's id: the websocket handler subscribes a socket only to its
own session's channel.

It also offers :meth:`ConfirmationHub.consume_once`, the shared single-use
marker that makes sign-in ``state`` values single-use across every server
process sharing the hub, and the *session records* that make a signed-in
session revocable: a signed-in cookie counts only while its session's record
exists in the hub (:meth:`ConfirmationHub.session_active`), so ending the
record (sign-out, "sign out everywhere", a security event) ends that session
in every process, copied cookies included. :mod:`tornado_signin.live_sessions`
builds sign-out on these methods.

Hubs are plugins in the ``tornado_signin.hubs`` entry-point group:
``memory`` (this module, one process) and ``redis`` (pub/sub, several
processes and machines).
"""

from __future__ import annotations

import abc
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from importlib import metadata
from typing import Any

from .errors import ConfigError, HubUnavailableError

__all__ = ["ConfirmationHub", "Subscription", "MemoryHub", "SessionRecord", "load_hub", "HUB_ENTRY_POINT_GROUP"]

HUB_ENTRY_POINT_GROUP = "tornado_signin.hubs"

Message = dict[str, Any]
Callback = Callable[[Message], Awaitable[None] | None]


@dataclass(frozen=True)
class SessionRecord:
    """One signed-in browser session, as the hub records it (no token, no cookie)."""

    sid: str
    sub: str
    #: POSIX seconds.
    started_at: float
    #: The browser's User-Agent at sign-in (at most 200 characters), for listings.
    user_agent: str = ""
    #: The client address at sign-in, for listings.
    address: str = ""

    def to_json(self) -> str:
        """Return the record as compact JSON (what shared hubs store)."""
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, raw: str | bytes | None) -> "SessionRecord | None":
        """Return the record encoded in ``raw``, or None when it is absent or malformed."""
        if not raw:
            return None
        try:
            data = json.loads(raw)
            return cls(sid=str(data["sid"]), sub=str(data["sub"]), started_at=float(data["started_at"]),
                       user_agent=str(data.get("user_agent", "")), address=str(data.get("address", "")))
        except (ValueError, KeyError, TypeError):
            return None


class Subscription(abc.ABC):
    """A live subscription; :meth:`close` stops delivery. Idempotent."""

    @abc.abstractmethod
    def close(self) -> None: ...


class ConfirmationHub(abc.ABC):
    """Publish/subscribe by channel, with the last message of each channel recorded.

    All methods are coroutines run on the IOLoop; none may block it.
    """

    #: How long a recorded outcome stays readable, in seconds.
    record_ttl: float = 600.0

    @abc.abstractmethod
    async def publish(self, channel: str, message: Message, *, record: bool = True) -> None:
        """Deliver ``message`` to every subscriber of ``channel`` in every process.

        With ``record`` the message also becomes the channel's last message for
        ``record_ttl`` seconds. Raise only for a hub failure (the caller logs it).
        """

    @abc.abstractmethod
    async def subscribe(self, channel: str, callback: Callback) -> Subscription:
        """Call ``callback(message)`` for each message later published to ``channel``."""

    @abc.abstractmethod
    async def last(self, channel: str) -> Message | None:
        """Return the channel's recorded message, or None when none is recorded (or it expired)."""

    @abc.abstractmethod
    async def consume_once(self, key: str, ttl: float) -> bool:
        """Return True the first time ``key`` is consumed within ``ttl`` seconds, False afterwards."""

    # -- session records ---------------------------------------------------------------
    #
    # A record is written at sign-in and read on every request that relies on
    # a signed-in cookie: these methods must be one round trip each where the
    # hub is remote. Unlike publish/last, they raise HubUnavailableError when
    # the hub cannot answer: a session whose end cannot be checked must not be
    # taken as live.

    @abc.abstractmethod
    async def start_session(self, record: SessionRecord, ttl: float) -> None:
        """Record ``record`` (a signed-in session of ``record.sub``) for ``ttl`` seconds, in every process.

        Starting a session id again replaces its record. Raise HubUnavailableError when it cannot be recorded.
        """

    @abc.abstractmethod
    async def session_active(self, sid: str) -> bool:
        """Return True while the record of session ``sid`` exists (started, not ended, not expired).

        One read. Raise HubUnavailableError when the hub cannot answer.
        """

    @abc.abstractmethod
    async def sessions_of(self, sub: str) -> list[SessionRecord]:
        """Return the live sessions of ``sub``, oldest first ([] when there are none).

        Raise HubUnavailableError when the hub cannot answer.
        """

    @abc.abstractmethod
    async def end_session(self, sid: str) -> str | None:
        """Delete the record of session ``sid``; return the ``sub`` it belonged to, or None when no such
        session was live. Idempotent. Raise HubUnavailableError when the hub cannot answer."""

    @abc.abstractmethod
    async def end_sessions(self, sub: str) -> list[str]:
        """Delete the record of every session of ``sub``; return the ended session ids ([] when none).

        A session started while this runs may survive it. Raise HubUnavailableError when the hub cannot answer.
        """

    async def check(self) -> None:
        """Raise unless the hub is usable (readiness)."""

    async def close(self) -> None:
        """Release connections. Idempotent."""


class _MemorySubscription(Subscription):
    def __init__(self, hub: "MemoryHub", channel: str, callback: Callback) -> None:
        self.hub, self.channel, self.callback = hub, channel, callback

    def close(self) -> None:
        subscribers = self.hub._subscribers.get(self.channel)
        if subscribers is not None:
            subscribers.discard(self)
            if not subscribers:
                del self.hub._subscribers[self.channel]


class MemoryHub(ConfirmationHub):
    """An in-process hub: correct for one server process only."""

    def __init__(self, *, url: str | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self._subscribers: dict[str, set[_MemorySubscription]] = {}
        self._records: dict[str, tuple[float, Message]] = {}
        self._consumed: dict[str, float] = {}
        self._sessions: dict[str, tuple[float, SessionRecord]] = {}
        self._sessions_by_sub: dict[str, set[str]] = {}
        # Sizes at which the next clean-up runs: twice what survived the last
        # one, so a map full of live entries is not rescanned on every call.
        self._records_limit = 1024
        self._consumed_limit = 4096
        self._sessions_limit = 1024
        self.clock = clock

    def _expire(self) -> None:
        now = self.clock()
        # Amortised clean-up: stale entries are dropped when the maps grow.
        if len(self._records) > self._records_limit:
            self._records = {k: v for k, v in self._records.items() if v[0] > now}
            self._records_limit = max(1024, 2 * len(self._records))
        if len(self._consumed) > self._consumed_limit:
            self._consumed = {k: v for k, v in self._consumed.items() if v > now}
            self._consumed_limit = max(4096, 2 * len(self._consumed))

    async def publish(self, channel: str, message: Message, *, record: bool = True) -> None:
        if record:
            self._expire()
            self._records[channel] = (self.clock() + self.record_ttl, message)
        for subscription in list(self._subscribers.get(channel, ())):
            result = subscription.callback(message)
            if result is not None:
                await result

    async def subscribe(self, channel: str, callback: Callback) -> Subscription:
        subscription = _MemorySubscription(self, channel, callback)
        self._subscribers.setdefault(channel, set()).add(subscription)
        return subscription

    async def last(self, channel: str) -> Message | None:
        entry = self._records.get(channel)
        if entry is None or entry[0] <= self.clock():
            return None
        return entry[1]

    async def consume_once(self, key: str, ttl: float) -> bool:
        now = self.clock()
        expires = self._consumed.get(key)
        if expires is not None and expires > now:
            return False
        self._expire()
        self._consumed[key] = now + ttl
        return True

    def _live_session(self, sid: str) -> SessionRecord | None:
        entry = self._sessions.get(sid)
        if entry is None:
            return None
        if entry[0] <= self.clock():
            self._forget_session(sid)
            return None
        return entry[1]

    def _forget_session(self, sid: str) -> SessionRecord | None:
        entry = self._sessions.pop(sid, None)
        if entry is None:
            return None
        sids = self._sessions_by_sub.get(entry[1].sub)
        if sids is not None:
            sids.discard(sid)
            if not sids:
                del self._sessions_by_sub[entry[1].sub]
        return entry[1]

    async def start_session(self, record: SessionRecord, ttl: float) -> None:
        if len(self._sessions) > self._sessions_limit:  # amortised, as _expire
            now = self.clock()
            for sid in [sid for sid, (expires, _) in self._sessions.items() if expires <= now]:
                self._forget_session(sid)
            self._sessions_limit = max(1024, 2 * len(self._sessions))
        self._forget_session(record.sid)
        self._sessions[record.sid] = (self.clock() + ttl, record)
        self._sessions_by_sub.setdefault(record.sub, set()).add(record.sid)

    async def session_active(self, sid: str) -> bool:
        return self._live_session(sid) is not None

    async def sessions_of(self, sub: str) -> list[SessionRecord]:
        live = [self._live_session(sid) for sid in list(self._sessions_by_sub.get(sub, ()))]
        return sorted((r for r in live if r is not None), key=lambda r: (r.started_at, r.sid))

    async def end_session(self, sid: str) -> str | None:
        record = self._live_session(sid)
        self._forget_session(sid)
        return record.sub if record is not None else None

    async def end_sessions(self, sub: str) -> list[str]:
        ended = [r.sid for r in await self.sessions_of(sub)]
        for sid in ended:
            self._forget_session(sid)
        return ended

    @property
    def subscriber_count(self) -> int:
        """Return the number of live subscriptions (for metrics)."""
        return sum(len(s) for s in self._subscribers.values())


def load_hub(name: str, url: str | None, *, key_prefix: str | None = None) -> ConfirmationHub:
    """Build the hub registered as ``name``; raise ConfigError naming ``hub.backend``.

    ``key_prefix`` (``hub.key_prefix``) is passed only when set, so hubs without one still load.
    """
    eps = {ep.name: ep for ep in metadata.entry_points(group=HUB_ENTRY_POINT_GROUP)}
    if name not in eps:
        raise ConfigError("hub.backend", f"no hub {name!r} in entry-point group {HUB_ENTRY_POINT_GROUP!r} "
                                         f"(installed: {', '.join(sorted(eps)) or 'none'})")
    try:
        factory = eps[name].load()
    except ImportError as exc:
        raise ConfigError("hub.backend", f"hub {name!r} needs a missing dependency ({exc.name}): "
                                         f"pip install 'tornado-signin[{name}]'") from exc
    return factory(url=url, **({"key_prefix": key_prefix} if key_prefix else {}))
