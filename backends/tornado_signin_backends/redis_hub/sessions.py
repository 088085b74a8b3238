"""The Redis side of session records: ``<prefix>sess:<sid>`` and the user's index ``<prefix>user-sess:<sub>``."""

from __future__ import annotations

from typing import Any

from tornado_signin.hub import SessionRecord

from .scripts import Scripts

__all__ = ["SessionRecords"]


class SessionRecords:
    """Session records in Redis, through the hub's redis-py client; every method raises what redis-py raises.

    ``sess:<sid>`` holds the record (JSON) with the session's TTL;
    ``user-sess:<sub>`` is the set of the user's session ids, kept as long as
    the newest session (every session gets the same TTL). Ids whose record
    expired are dropped from the set when it is read.

    Example::

        sessions = SessionRecords(redis_client, Scripts(redis_client), "app:")
        await sessions.start(SessionRecord(sid="s1", sub="1234", started_at=time.time()), 3600)
        assert await sessions.exists("s1")
    """

    def __init__(self, client: Any, scripts: Scripts, prefix: str) -> None:
        self._client = client
        self._scripts = scripts
        self.prefix = prefix

    def _key(self, sid: str) -> str:
        return f"{self.prefix}sess:{sid}"

    def _index(self, sub: str) -> str:
        return f"{self.prefix}user-sess:{sub}"

    async def start(self, record: SessionRecord, ttl: float) -> None:
        """Write ``record`` for ``ttl`` seconds (at least 1) and add it to its user's index, atomically (a script)."""
        await self._scripts.start_session(self._key(record.sid), self._index(record.sub), record.to_json(),
                                          max(1, int(ttl)), record.sid)

    async def exists(self, sid: str) -> bool:
        """Return whether the record of ``sid`` exists (one EXISTS: the per-request check)."""
        return bool(await self._client.exists(self._key(sid)))

    async def of(self, sub: str) -> list[SessionRecord]:
        """Return the live records of ``sub``, oldest first."""
        index = self._index(sub)
        sids = sorted(await self._client.smembers(index))
        if not sids:
            return []
        raws = await self._client.mget([self._key(sid) for sid in sids])
        gone = [sid for sid, raw in zip(sids, raws, strict=True) if raw is None]
        if gone:
            await self._client.srem(index, *gone)
        records = [r for r in map(SessionRecord.from_json, raws) if r is not None and r.sub == sub]
        return sorted(records, key=lambda r: (r.started_at, r.sid))

    async def end(self, sid: str) -> str | None:
        """Delete the record of ``sid``; return its ``sub`` if this call deleted it, else None."""
        key = self._key(sid)
        async with self._client.pipeline(transaction=True) as pipe:
            pipe.get(key)
            pipe.delete(key)
            raw, deleted = await pipe.execute()
        record = SessionRecord.from_json(raw)
        if record is not None:
            await self._client.srem(self._index(record.sub), sid)
        return record.sub if deleted and record is not None else None

    async def end_all(self, sub: str, started_before: float | None = None) -> list[str]:
        """Delete the records of ``sub``'s sessions (only those started at or before ``started_before`` if given).

        Return the ended session ids.
        """
        index = self._index(sub)
        sids = sorted(await self._client.smembers(index))
        if not sids:
            return []
        keys = [self._key(sid) for sid in sids]
        raws = await self._client.mget(keys)
        doomed, gone = [], []
        for sid, key, raw in zip(sids, keys, raws, strict=True):
            record = SessionRecord.from_json(raw)
            if record is None:
                gone.append(sid)
            elif started_before is None or record.started_at <= started_before:
                doomed.append((sid, key))
        async with self._client.pipeline(transaction=True) as pipe:
            if doomed:
                pipe.delete(*(key for _, key in doomed))
            pipe.srem(index, *([sid for sid, _ in doomed] + gone))
            await pipe.execute()
        return [sid for sid, _ in doomed]
