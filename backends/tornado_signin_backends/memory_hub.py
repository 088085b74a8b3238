"""``memory`` hub: an in-process confirmation hub, correct for one server process only (the default)."""

from __future__ import annotations

import time
from collections.abc import Callable

from tornado_signin.hub import Callback, ConfirmationHub, LocalStates, Message, SessionRecord, Subscription, _in_process

__all__ = ["MemoryHub"]


#: A session's record as the hub keeps it: (expires, sid, sub, started_at, user_agent, address).
_SessionEntry = tuple[float, str, str, float, str, str]


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
        # sid -> (expires, sid, sub, started_at, user_agent, address): a tuple of strings and floats,
        # which the garbage collector stops tracking; a SessionRecord per signed-in session, kept for days,
        # was what the collector's generations filled with under load (see server.settle_collector).
        self._sessions: dict[str, _SessionEntry] = {}
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
        expires, message = self._records.get(channel, (0.0, None))
        return message if expires > self.clock() else None

    async def consume_once(self, key: str, ttl: float) -> bool:
        now = self.clock()
        expires = self._consumed.get(key)
        if expires is not None and expires > now:
            return False
        self._expire()
        self._consumed[key] = now + ttl
        return True

    def _live_entry(self, sid: str) -> _SessionEntry | None:
        entry = self._sessions.get(sid)
        if entry is None:
            return None
        expires, _, _, _, _, _ = entry
        if expires <= self.clock():
            self._forget_session(sid)
            return None
        return entry

    def _live_session(self, sid: str) -> SessionRecord | None:
        entry = self._live_entry(sid)
        if entry is None:
            return None
        _, sid, sub, started_at, user_agent, address = entry
        return SessionRecord(sid=sid, sub=sub, started_at=started_at, user_agent=user_agent, address=address)

    def _forget_session(self, sid: str) -> None:
        entry = self._sessions.pop(sid, None)
        if entry is None:
            return
        _, _, sub, _, _, _ = entry
        sids = self._sessions_by_sub.get(sub)
        if sids is not None:
            sids.discard(sid)
            if not sids:
                del self._sessions_by_sub[sub]

    async def start_session(self, record: SessionRecord, ttl: float) -> None:
        if len(self._sessions) > self._sessions_limit:  # amortised, as _expire
            now = self.clock()
            for sid in [sid for sid, (expires, _, _, _, _, _) in self._sessions.items() if expires <= now]:
                self._forget_session(sid)
            self._sessions_limit = max(1024, 2 * len(self._sessions))
        self._forget_session(record.sid)
        self._sessions[record.sid] = (self.clock() + ttl, record.sid, record.sub, record.started_at,
                                      record.user_agent, record.address)
        self._sessions_by_sub.setdefault(record.sub, set()).add(record.sid)

    async def session_active(self, sid: str) -> bool:
        return self._live_entry(sid) is not None

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

    # Budgets: the base class's in-process counters are this hub's own (one process).

    async def issue_state(self, sid: str, nonce: str, *, keep: int, ttl: float) -> None:
        self.states.issue(sid, nonce, keep, ttl)

    async def spend_state(self, sid: str, nonce: str, *, ttl: float) -> bool:
        return self.states.spend(sid, nonce)

    @property
    def states(self) -> LocalStates:
        """Return the outstanding states (at most ``keep`` per session; for measurements too)."""
        return _in_process(self, LocalStates)

    @property
    def subscriber_count(self) -> int:
        """Return the number of live subscriptions (a diagnostic: no metric reads it)."""
        return sum(len(s) for s in self._subscribers.values())
