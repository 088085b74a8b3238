"""What the hub keeps in its own process while Redis is away, and writes to Redis when it is back."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol

from tornado_signin.hub import SessionRecord

__all__ = ["Outbox", "Writer"]

#: Size at which expired consumed markers are dropped (amortised: only when the map grows).
_CONSUMED_CLEANUP = 4096


class Writer(Protocol):
    """The Redis writes :meth:`Outbox.flush` needs (the hub's); each raises what redis-py raises."""

    async def mark_consumed(self, key: str, ttl: int) -> object: ...

    async def record(self, channel: str, raw: str, ttl: int) -> None: ...

    async def start_session(self, record: SessionRecord, ttl: float) -> None: ...

    async def end_session(self, sid: str) -> object: ...

    async def end_sessions(self, sub: str, started_before: float) -> object: ...


class Outbox:
    """Records, single-use markers and session changes kept locally during an outage.

    Records and markers live until they would have expired in Redis; a
    session started here is valid on this process until its TTL, one ended
    here is ended on this process. ``clock`` is the hub's (monotonic seconds).

    Example::

        outbox = Outbox(time.monotonic)
        outbox.keep("sid", envelope, 600)       # publish() could not record it
        assert outbox.record("sid") == envelope  # last() answers from it meanwhile
        await outbox.flush(hub_writer)           # Redis is back
    """

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self._records: dict[str, tuple[float, str]] = {}  # channel -> (expires, envelope)
        self._consumed: dict[str, float] = {}  # key -> expires
        self._sessions_started: dict[str, tuple[float, SessionRecord]] = {}  # sid -> (expires, record)
        self._sessions_ended: set[str] = set()
        self._subs_ended: dict[str, float] = {}  # sub -> POSIX time of the "end every session"

    def __bool__(self) -> bool:
        return bool(self._records or self._consumed or self._sessions_started or self._sessions_ended
                    or self._subs_ended)

    # -- records and markers --------------------------------------------

    def keep(self, channel: str, raw: str, ttl: float) -> None:
        """Keep ``raw`` as ``channel``'s record for ``ttl`` seconds (replacing an older one)."""
        self._records[channel] = (self.clock() + ttl, raw)

    def record(self, channel: str) -> str | None:
        """Return ``channel``'s kept record, or None when none is kept (or it expired)."""
        kept = self._records.get(channel)
        return kept[1] if kept is not None and kept[0] > self.clock() else None

    def consumed(self, key: str) -> bool:
        """Return whether ``key`` was consumed locally and has not expired."""
        expires = self._consumed.get(key)
        return expires is not None and expires > self.clock()

    def consume(self, key: str, ttl: float) -> None:
        """Mark ``key`` consumed here for ``ttl`` seconds."""
        now = self.clock()
        if len(self._consumed) > _CONSUMED_CLEANUP:
            self._consumed = {k: v for k, v in self._consumed.items() if v > now}
        self._consumed[key] = now + ttl

    # -- sessions --------------------------------------------------------

    def session_starting(self, sid: str) -> None:
        """Forget a local end of ``sid``: it is being started again."""
        self._sessions_ended.discard(sid)

    def start_session(self, record: SessionRecord, ttl: float) -> None:
        """Keep ``record`` as started here for ``ttl`` seconds."""
        self._sessions_started[record.sid] = (self.clock() + ttl, record)

    def session_started(self, sid: str) -> bool:
        """Return whether ``sid`` was started here (and has not expired)."""
        kept = self._sessions_started.get(sid)
        return kept is not None and kept[0] > self.clock()

    def session_ended(self, sid: str) -> bool:
        """Return whether ``sid`` was ended here during the outage."""
        return sid in self._sessions_ended

    def forget_session(self, sid: str) -> str | None:
        """Drop ``sid`` from the sessions started here; return its ``sub`` if it was one of them."""
        kept = self._sessions_started.pop(sid, None)
        return kept[1].sub if kept is not None else None

    def end_session(self, sid: str) -> None:
        """Keep ``sid`` as ended here (written to Redis when it is back)."""
        self._sessions_ended.add(sid)

    def forget_sessions_of(self, sub: str) -> list[str]:
        """Drop every session of ``sub`` started here; return their ids."""
        local = [sid for sid, (_, record) in self._sessions_started.items() if record.sub == sub]
        for sid in local:
            del self._sessions_started[sid]
        return local

    def end_sessions(self, sub: str, sids: list[str]) -> None:
        """Keep "every session of ``sub`` started until now is ended", and ``sids`` as ended here."""
        self._subs_ended[sub] = time.time()
        self._sessions_ended.update(sids)

    # -- back to Redis ---------------------------------------------------

    async def flush(self, writer: Writer) -> bool:
        """Write everything still alive through ``writer``, then forget it; return whether anything was kept.

        Session ends go first, then starts: a copied cookie of a session ended
        during the outage must not come back to life on another process. TTLs
        are the remaining whole seconds (at least 1). A record replaced while
        its write was in flight stays for the next flush. Raise what the writes
        raise (what was not written yet stays kept).
        """
        kept = bool(self)
        for sub, at in list(self._subs_ended.items()):
            await writer.end_sessions(sub, at)
            self._subs_ended.pop(sub, None)
        for sid in list(self._sessions_ended):
            await writer.end_session(sid)
            self._sessions_ended.discard(sid)
        for sid, (expires, record) in list(self._sessions_started.items()):
            remaining = expires - self.clock()
            if remaining > 0:
                await writer.start_session(record, remaining)
            self._sessions_started.pop(sid, None)
        for key, expires in list(self._consumed.items()):
            remaining = expires - self.clock()
            if remaining > 0:
                await writer.mark_consumed(key, max(1, int(remaining)))
            self._consumed.pop(key, None)
        for channel, (expires, raw) in list(self._records.items()):
            remaining = expires - self.clock()
            if remaining > 0:
                await writer.record(channel, raw, max(1, int(remaining)))
            if self._records.get(channel, (None, None))[1] == raw:
                del self._records[channel]
        return kept
