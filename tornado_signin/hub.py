"""The confirmation hub: how "fully logged in" reaches the page (seed step 7).

A hub delivers messages to the websockets subscribed to a channel, and
*records* the last message of each channel for a while, so a socket that
connects after the login finished still learns the outcome. A channel is a
browser session's id: the websocket handler subscribes a socket only to its
own session's channel.

It also offers the *outstanding states* (:meth:`ConfirmationHub.issue_state`,
:meth:`ConfirmationHub.spend_state`) that make sign-in ``state`` values
single-use across every server process sharing the hub, at most a few per
session (memory bounded whatever the request rate); the per-client request
budgets (:meth:`ConfirmationHub.hit`) that hold for the whole deployment;
:meth:`ConfirmationHub.consume_once`, a shared single-use marker; and the
*session records* that make a signed-in
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

And *exchanges in flight* (:meth:`ConfirmationHub.begin_exchange`,
:meth:`ConfirmationHub.end_exchange`, :meth:`ConfirmationHub.exchanges_before`):
the code exchanges under way in the whole deployment, in the order they
began. The user of an exchange is unknown until Google answers it, so a
sign-in about to revoke a grant (the consent workaround) first waits for the
exchanges that began before its own: one of them may be bringing that grant's
refresh token, from another browser of the same user.

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
from typing import Any, TypeVar

from .plugins import HUBS, load

__all__ = ["ConfirmationHub", "Subscription", "SessionRecord", "LocalLeases", "LocalCounters", "LocalStates",
           "LocalExchanges", "load_hub", "HUB_ENTRY_POINT_GROUP"]

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
        """Call ``callback(message)`` for each message published to ``channel`` after this returns, by any process.

        Return once the subscription is in place (the Redis hub: once Redis has
        confirmed it), so a publish that follows the return is delivered. May
        raise HubUnavailableError when the hub answers but cannot set it up in
        time (the Redis hub while Redis is unreachable returns at once instead,
        and re-reads the channel's last record when it reconnects).
        """

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
        return _in_process(self, LocalLeases).acquire(key, ttl)

    async def release_lease(self, key: str, token: str) -> bool:
        """Release the lease ``key`` if ``token`` still holds it; return True if it did, False if it had
        expired or passed to another holder (nothing is changed then). Raise HubUnavailableError."""
        return _in_process(self, LocalLeases).release(key, token)

    # -- request budgets and outstanding states ---------------------------------------
    #
    # The built-in hubs override all three (``memory`` in its process, ``redis``
    # with atomic scripts, so that a limit holds for the whole deployment and a
    # state issued by one process is spent on any). The defaults keep a hub
    # written before these methods working as before: budgets counted in this
    # process, states made single-use by :meth:`consume_once` markers.

    async def hit(self, key: str, limit: int, window: float) -> bool:
        """Count one event of ``key``; return True while at most ``limit`` events of it were counted in the
        current window, False past that.

        Windows are fixed: the first event of ``key`` starts one of ``window``
        seconds, after which the count starts again. Every process sharing the
        hub counts into the same window. The memory used is one counter per
        key seen in the last ``window`` seconds. Never raises: a hub that
        cannot count (its store down) counts in this process meanwhile.

        The default counts in this process only.
        """
        return _in_process(self, LocalCounters).hit(key, limit, window)

    async def issue_state(self, sid: str, nonce: str, *, keep: int, ttl: float) -> None:
        """Record ``nonce`` as an outstanding sign-in state of session ``sid`` for ``ttl`` seconds.

        A session keeps at most ``keep`` outstanding states: issuing one more
        forgets its oldest. So the memory used is bounded by the sessions that
        were issued a state in the last ``ttl`` seconds times ``keep``, whatever
        the request rate, and a spent state costs nothing. Never raises: a hub
        that cannot record it keeps it in this process (where it can be spent).

        The default records nothing (:meth:`spend_state` then spends any state once).
        """

    async def spend_state(self, sid: str, nonce: str, *, ttl: float) -> bool:
        """Forget ``nonce`` as an outstanding state of ``sid``; return True if it was one (issued, not yet
        spent, not forgotten, not expired), else False.

        ``ttl`` is the state's lifetime. Exactly one of concurrent spenders, in
        any process sharing the hub, gets True. Raise HubUnavailableError when
        the hub cannot answer for a state it did not keep in this process: a
        state that cannot be checked is not spent.

        The default takes any nonce once, through ``consume_once("state:<nonce>", ttl)``:
        single-use, but the markers' memory grows with the rate of spends.
        """
        return await self.consume_once(f"state:{nonce}", ttl)

    # -- exchanges in flight --------------------------------------------------------------

    async def begin_exchange(self, ttl: float) -> str:
        """Record that a code exchange begins now, for at most ``ttl`` seconds; return its ticket.

        Tickets are ordered across every process sharing the hub: an exchange
        that began later gets a later ticket. One round trip where the hub is
        remote (it runs on every sign-in). Raise HubUnavailableError.

        The default keeps the exchanges of this process (right for
        ``memory``); a hub shared between processes overrides the three
        exchange methods with atomic operations of its store.
        """
        return _in_process(self, LocalExchanges).begin(ttl)

    async def end_exchange(self, ticket: str) -> None:
        """Record that the exchange of ``ticket`` is resolved (its tokens stored, or it failed). Idempotent.

        One round trip where the hub is remote. Raise HubUnavailableError.
        """
        _in_process(self, LocalExchanges).end(ticket)

    async def exchanges_before(self, ticket: str) -> int:
        """Return how many exchanges that began before ``ticket``'s are neither ended nor past their ttl.

        Raise HubUnavailableError when the hub cannot answer.
        """
        return _in_process(self, LocalExchanges).before(ticket)

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


class LocalExchanges:
    """Exchanges in flight kept in one process (the default of :meth:`ConfirmationHub.begin_exchange`)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._next = 0
        self._live: dict[int, float] = {}  # ticket -> when it lapses

    def begin(self, ttl: float) -> str:
        """Return the ticket of an exchange beginning now, live for ``ttl`` seconds."""
        now = self.clock()
        if len(self._live) > 1024:  # amortised clean-up of lapsed exchanges
            self._live = {k: until for k, until in self._live.items() if until > now}
        self._next += 1
        self._live[self._next] = now + ttl
        return str(self._next)

    def end(self, ticket: str) -> None:
        """Forget the exchange of ``ticket`` (a ticket this object did not give is ignored)."""
        self._live.pop(_ticket_number(ticket), None)

    def before(self, ticket: str) -> int:
        """Return how many live exchanges began before ``ticket``'s."""
        mine, now = _ticket_number(ticket), self.clock()
        return sum(1 for k, until in self._live.items() if k < mine and until > now)


def _ticket_number(ticket: str) -> int:
    return int(ticket) if ticket.isdecimal() and ticket.isascii() else -1




class LocalCounters:
    """Fixed-window event counters kept in one process (the default of :meth:`ConfirmationHub.hit`)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._windows: dict[str, tuple[float, int]] = {}
        self._limit = 1024  # size at which expired windows are dropped (twice what survived)

    def hit(self, key: str, limit: int, window: float) -> bool:
        """Count one event of ``key``; return whether the window's count is still at most ``limit``."""
        now = self.clock()
        ends, count = self._windows.get(key, (0.0, 0))
        if ends <= now:
            if len(self._windows) >= self._limit:
                self._windows = {k: v for k, v in self._windows.items() if v[0] > now}
                self._limit = max(1024, 2 * len(self._windows))
            ends, count = now + window, 0
        self._windows[key] = (ends, count + 1)
        return count + 1 <= limit

    def __len__(self) -> int:
        return len(self._windows)


class LocalStates:
    """Outstanding states per session kept in one process (the default of :meth:`ConfirmationHub.issue_state`)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        #: sid -> (when the newest state expires, {nonce: its expiry}) in issue order.
        self._sessions: dict[str, tuple[float, dict[str, float]]] = {}
        self._limit = 1024

    def issue(self, sid: str, nonce: str, keep: int, ttl: float) -> None:
        now = self.clock()
        if len(self._sessions) >= self._limit:  # amortised: drop sessions whose every state expired
            self._sessions = {k: v for k, v in self._sessions.items() if v[0] > now}
            self._limit = max(1024, 2 * len(self._sessions))
        _, nonces = self._sessions.get(sid, (0.0, {}))
        nonces[nonce] = now + ttl
        while len(nonces) > max(1, keep):
            del nonces[next(iter(nonces))]
        self._sessions[sid] = (now + ttl, nonces)

    def spend(self, sid: str, nonce: str) -> bool:
        entry = self._sessions.get(sid)
        if entry is None:
            return False
        expires = entry[1].pop(nonce, None)
        if not entry[1]:
            del self._sessions[sid]
        return expires is not None and expires > self.clock()

    def knows(self, sid: str, nonce: str) -> bool:
        """Return whether ``nonce`` is outstanding for ``sid`` here (expired or not)."""
        entry = self._sessions.get(sid)
        return entry is not None and nonce in entry[1]

    def __len__(self) -> int:
        """Return the outstanding states kept (for measurements)."""
        return sum(len(nonces) for _, nonces in self._sessions.values())


_Kept = TypeVar("_Kept", LocalLeases, LocalExchanges, LocalCounters, LocalStates)


def _in_process(hub: ConfirmationHub, kind: type[_Kept]) -> _Kept:
    """Return ``hub``'s own ``kind`` (made on first use): what the defaults keep in this process.

    Kept on the instance, not in ``__init__``: a third-party hub need not call ``super().__init__()``.
    """
    key = "_tornado_signin_" + kind.__name__
    kept = hub.__dict__.get(key)
    if kept is None:
        kept = hub.__dict__[key] = kind()
    return kept


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
