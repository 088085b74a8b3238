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

And *leases* (:meth:`ConfirmationHub.acquire_lease`,
:meth:`ConfirmationHub.release_lease`): a per-key lock with a time to live,
held across every process sharing the hub. :mod:`tornado_signin.grants` uses
one per user so that what Google answers late (a revoke, an exchange) is
never applied over a newer state written by another sign-in of that user.

Hubs are plugins in the ``tornado_signin.hubs`` entry-point group, loaded by
:func:`load_hub`: ``memory`` (one process) and ``redis`` (pub/sub, several
processes and machines), both in ``tornado_signin_backends``.
"""

from __future__ import annotations

import abc
import json
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from typing import Any

from .plugins import HUBS, load

__all__ = ["ConfirmationHub", "Subscription", "SessionRecord", "LocalLeases", "load_hub", "HUB_ENTRY_POINT_GROUP"]

HUB_ENTRY_POINT_GROUP = HUBS.name

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

    # -- leases ------------------------------------------------------------------------

    async def acquire_lease(self, key: str, ttl: float) -> str | None:
        """Try once to take the lease ``key`` for ``ttl`` seconds; return its token, or None while it is held.

        While a lease is held, no other caller in any process sharing the hub
        gets ``key``, until :meth:`release_lease` with the token or the end of
        ``ttl`` (so a holder that died blocks the others for at most ``ttl``).
        Waiting and retrying is the caller's business. Raise
        HubUnavailableError when the hub cannot answer: a lease that cannot be
        checked is not held.

        The default keeps leases in this process: right for a hub that serves
        one process (``memory``). A hub shared between processes must override
        this and :meth:`release_lease` with atomic operations of its store.
        """
        return _local_leases(self).acquire(key, ttl)

    async def release_lease(self, key: str, token: str) -> bool:
        """Release the lease ``key`` if ``token`` still holds it; return True if it did, False if it had
        expired or passed to another holder (nothing is changed then). Raise HubUnavailableError."""
        return _local_leases(self).release(key, token)

    async def check(self) -> None:
        """Raise unless the hub is usable (readiness)."""

    async def close(self) -> None:
        """Release connections. Idempotent."""


class LocalLeases:
    """Leases kept in one process (the default of :meth:`ConfirmationHub.acquire_lease`)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._held: dict[str, tuple[str, float]] = {}

    def acquire(self, key: str, ttl: float) -> str | None:
        """Return a new token for ``key`` unless a live lease holds it (then None)."""
        now = self.clock()
        held = self._held.get(key)
        if held is not None and held[1] > now:
            return None
        if len(self._held) > 1024:  # amortised clean-up of expired leases
            self._held = {k: v for k, v in self._held.items() if v[1] > now}
        token = secrets.token_urlsafe(16)
        self._held[key] = (token, now + ttl)
        return token

    def release(self, key: str, token: str) -> bool:
        """Drop ``key``'s lease if ``token`` holds it and it has not expired; return True if dropped."""
        held = self._held.get(key)
        if held is None or held[0] != token:
            return False
        del self._held[key]
        return held[1] > self.clock()


def _local_leases(hub: ConfirmationHub) -> LocalLeases:
    leases = hub.__dict__.get("_tornado_signin_leases")
    if leases is None:
        leases = hub.__dict__["_tornado_signin_leases"] = LocalLeases()
    return leases


def load_hub(name: str, url: str | None = None, *, key_prefix: str | None = None, **options: Any) -> ConfirmationHub:
    """Build the hub registered as ``name`` (see :func:`tornado_signin.plugins.load`).

    ``url`` (``hub.url``) and ``key_prefix`` (``hub.key_prefix``) are passed
    only when set, so a hub without them still loads; ``options`` are further
    keyword-only options. Raise ConfigError naming ``hub.backend`` for an
    unknown hub (listing the installed ones) or a missing extra (with the
    install command), and ``hub.<option>`` for an option the hub does not take.

    Example::

        hub = load_hub("redis", "redis://127.0.0.1:6379/0", key_prefix="myapp:")
    """
    given = {"url": url, "key_prefix": key_prefix, **options}
    return load(HUBS, name, {k: v for k, v in given.items() if v is not None}, base=ConfirmationHub)
