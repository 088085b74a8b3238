"""The server-side scripts of the Redis hub, through redis-py's ``register_script``.

redis-py sends ``EVALSHA`` and, on ``NOSCRIPT`` (a Redis that restarted,
failed over or flushed its scripts), loads the script and runs it again. A
Redis that refuses scripts (an ACL without ``@scripting``, a renamed command)
gets the same commands in one ``MULTI``/``EXEC`` from then on, where that is
equivalent; releasing a lease and the exchanges in flight have no such fallback (compare-and-delete needs
the script).
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any

from redis.exceptions import NoPermissionError, ResponseError

__all__ = ["RECORD_AND_PUBLISH", "RECORD_AND_PUBLISH_SHA", "START_SESSION", "RELEASE_LEASE", "BEGIN_EXCHANGE", "EXCHANGES_BEFORE", "Scripts"]

log = logging.getLogger(__name__)

#: ``publish`` with ``record``. KEYS[1] = last:<channel>; ARGV = envelope, seconds to keep it,
#: ch:<channel> (a pub/sub channel is not a key). SET first: the outcome is recorded before anyone is told.
RECORD_AND_PUBLISH = """\
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
return redis.call('PUBLISH', ARGV[3], ARGV[1])
"""
RECORD_AND_PUBLISH_SHA = hashlib.sha1(RECORD_AND_PUBLISH.encode()).hexdigest()

#: ``start_session``. KEYS = sess:<sid>, user-sess:<sub>; ARGV = record, seconds, sid.
#: Every session gets the same TTL, so the newest one's is the longest: the index lives as long as it.
START_SESSION = """\
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
redis.call('SADD', KEYS[2], ARGV[3])
return redis.call('EXPIRE', KEYS[2], ARGV[2])
"""

#: Release a lease only while it is ours: a holder whose lease expired must not delete the next holder's.
RELEASE_LEASE = """\
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


#: ``begin_exchange``. KEYS = exch (a sorted set: ticket -> when it lapses, in Redis's own milliseconds),
#: exch-seq (the ticket counter); ARGV = milliseconds to keep it. Redis's clock, not the callers': the
#: processes of a deployment then agree on when an exchange lapses. Both keys expire with the newest entry
#: (every entry gets the same ttl), so nothing is left behind once exchanges stop; lapsed entries are dropped.
BEGIN_EXCHANGE = """\
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[1])
local ticket = redis.call('INCR', KEYS[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
redis.call('ZADD', KEYS[1], now + ttl, ticket)
redis.call('PEXPIRE', KEYS[1], ttl)
redis.call('PEXPIRE', KEYS[2], ttl)
return ticket
"""

#: ``exchanges_before``. KEYS = exch; ARGV = ticket. Counts the live entries with a smaller ticket.
EXCHANGES_BEFORE = """\
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local mine = tonumber(ARGV[1])
local n = 0
for _, ticket in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. now, '+inf')) do
  if tonumber(ticket) < mine then n = n + 1 end
end
return n
"""


def _refused(exc: ResponseError) -> bool:
    """Return whether ``exc`` says this Redis will never run scripts (an ACL without @scripting, a renamed command)."""
    return isinstance(exc, NoPermissionError) or "unknown command" in str(exc).lower()


class Scripts:
    """The hub's scripts on ``client`` (a redis-py asyncio client); each method raises what redis-py raises.

    Example::

        scripts = Scripts(redis_client)
        await scripts.record_and_publish("app:last:sid", "app:ch:sid", envelope, 600)
    """

    def __init__(self, client: Any) -> None:
        self._client = client
        self._record_and_publish = client.register_script(RECORD_AND_PUBLISH)
        self._start_session = client.register_script(START_SESSION)
        self._release_lease = client.register_script(RELEASE_LEASE)
        self._begin_exchange = client.register_script(BEGIN_EXCHANGE)
        self._exchanges_before = client.register_script(EXCHANGES_BEFORE)
        self._use_scripts = True

    async def run(self, script: Any, keys: list[str], args: list[Any]) -> tuple[bool, Any]:
        """Run ``script`` (registered on this client); return (True, its reply), or (False, None) once this Redis
        refuses scripts (from then on without asking it: the caller sends the MULTI/EXEC equivalent)."""
        if not self._use_scripts:
            return False, None
        try:
            return True, await script(keys=keys, args=args)
        except ResponseError as exc:
            if not _refused(exc):
                raise
            log.warning("redis hub: Redis refuses scripts (%s); using MULTI/EXEC", exc)
            self._use_scripts = False
            return False, None

    async def record_and_publish(self, last_key: str, channel_key: str, raw: str, ttl: int) -> None:
        """``SET <last_key> <raw> EX <ttl>`` then ``PUBLISH <channel_key> <raw>``, atomically."""
        if (await self.run(self._record_and_publish, [last_key], [raw, ttl, channel_key]))[0]:
            return
        async with self._client.pipeline(transaction=True) as pipe:
            pipe.set(last_key, raw, ex=ttl)
            pipe.publish(channel_key, raw)
            await pipe.execute()

    async def start_session(self, session_key: str, index_key: str, record: str, seconds: int, sid: str) -> None:
        """``SET <session_key> <record> EX <seconds>``, ``SADD <index_key> <sid>``, ``EXPIRE <index_key>``, atomically.

        One script: a redis-py MULTI/EXEC pipeline cost ~160 us of CPU per
        sign-in, the script ~25 (bench/session_check.py).
        """
        if (await self.run(self._start_session, [session_key, index_key], [record, seconds, sid]))[0]:
            return
        async with self._client.pipeline(transaction=True) as pipe:
            pipe.set(session_key, record, ex=seconds)
            pipe.sadd(index_key, sid)
            pipe.expire(index_key, seconds)
            await pipe.execute()

    async def release_lease(self, key: str, token: str) -> bool:
        """Delete ``key`` if it holds ``token``; return whether it did."""
        return bool(await self._release_lease(keys=[key], args=[token]))

    async def begin_exchange(self, key: str, counter_key: str, ttl_ms: int) -> str:
        """Add an exchange lapsing in ``ttl_ms`` to ``key``; return its ticket (from ``counter_key``)."""
        return str(await self._begin_exchange(keys=[key, counter_key], args=[ttl_ms]))

    async def exchanges_before(self, key: str, ticket: str) -> int:
        """Return how many live exchanges of ``key`` have a smaller ticket than ``ticket``."""
        return int(await self._exchanges_before(keys=[key], args=[ticket]))
