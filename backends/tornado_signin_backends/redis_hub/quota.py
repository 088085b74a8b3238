"""The Redis hub's request budgets and outstanding states (:class:`RedisQuota`, a base of :class:`~.hub.RedisHub`).

How it maps the :class:`~tornado_signin.hub.ConfirmationHub` contract:

- ``hit``: one script, ``INCR <prefix>rate:<key>`` and, on the window's first
  event, ``PEXPIRE`` it to the window: every process counts into the same
  key, so a per-client limit holds for the whole deployment; one key per
  client and window, gone with its window.
- ``issue_state``: one script on the sorted set ``<prefix>states:<sid>``
  (member: the nonce, score: its expiry in ms): ``ZADD``, ``ZREMRANGEBYRANK``
  down to the newest ``keep``, ``PEXPIRE`` to the state's TTL. At most
  ``keep`` members per session whatever the rate; a spent state leaves nothing.
- ``spend_state``: one script, ``ZSCORE`` then ``ZREM``: exactly one spender
  anywhere removes the member; an expired one is removed and refused.

A Redis that refuses scripts (an ACL without ``@scripting``, a renamed
command; :meth:`~.scripts.Scripts.run` tells, for every script of the hub)
gets the same commands in ``MULTI``/``EXEC`` (``spend_state``: a
bare ``ZREM``; the state's own signed expiry still holds). redis-py's
``register_script`` reloads a script Redis lost (``NOSCRIPT``).

Redis down: ``hit`` counts in this process and ``issue_state`` keeps the
state in this process, so logins go on; a
state issued meanwhile is spent here, and ``spend_state`` of any other
raises HubUnavailableError (a state that cannot be checked is not spent).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from redis.exceptions import RedisError

from tornado_signin.errors import HubUnavailableError
from tornado_signin.hub import ConfirmationHub, LocalCounters, LocalStates, _in_process

from .scripts import Scripts

__all__ = ["RedisQuota", "HIT", "ISSUE_STATE", "SPEND_STATE"]

_FAILURES = (RedisError, OSError, asyncio.TimeoutError)

#: KEYS[1] = rate:<key>; ARGV = window in ms. Return the window's count.
HIT = """\
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
return n
"""

#: KEYS[1] = states:<sid>; ARGV = nonce, its expiry (ms since the epoch), keep, ttl in ms.
ISSUE_STATE = """\
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
local extra = redis.call('ZCARD', KEYS[1]) - tonumber(ARGV[3])
if extra > 0 then redis.call('ZREMRANGEBYRANK', KEYS[1], 0, extra - 1) end
return redis.call('PEXPIRE', KEYS[1], ARGV[4])
"""

#: KEYS[1] = states:<sid>; ARGV = nonce, now (ms since the epoch). Return 1 when spent now.
SPEND_STATE = """\
local expires = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not expires then return 0 end
redis.call('ZREM', KEYS[1], ARGV[1])
if tonumber(expires) > tonumber(ARGV[2]) then return 1 end
return 0
"""


class RedisQuota(ConfirmationHub):
    """``hit``, ``issue_state`` and ``spend_state`` on Redis, for a hub with ``_redis`` (redis-py's
    asyncio client), ``_scripts`` (its :class:`~.scripts.Scripts`), ``_command(coroutine)`` (one command
    in its turn, under the hub's deadline), ``prefix`` and ``_mark_down(exc)``."""

    _redis: Any
    _scripts: Scripts
    _command: Callable[[Awaitable[Any]], Awaitable[Any]]
    prefix: str

    def _mark_down(self, exc: BaseException) -> None:  # pragma: no cover - the hub's own
        raise NotImplementedError

    def _quota_scripts(self) -> dict[str, Any]:
        scripts = self.__dict__.get("_quota_script_objects")
        if scripts is None:
            scripts = self.__dict__["_quota_script_objects"] = {
                "hit": self._redis.register_script(HIT),
                "issue": self._redis.register_script(ISSUE_STATE),
                "spend": self._redis.register_script(SPEND_STATE),
            }
        return scripts

    async def _quota_script(self, name: str, keys: list[str], args: list[Any]) -> tuple[bool, Any]:
        """Run script ``name``; return (True, its reply), or (False, None) when this Redis refuses scripts."""
        result: tuple[bool, Any] = await self._command(self._scripts.run(self._quota_scripts()[name], keys, args))
        return result

    async def _multi(self, queue: Callable[[Any], object]) -> list[Any]:
        """Run the commands ``queue(pipe)`` adds in one MULTI/EXEC; return their replies."""
        async with self._redis.pipeline(transaction=True) as pipe:
            queue(pipe)
            return list(await pipe.execute())

    def _states_key(self, sid: str) -> str:
        return f"{self.prefix}states:{sid}"

    async def hit(self, key: str, limit: int, window: float) -> bool:
        rate_key, window_ms = f"{self.prefix}rate:{key}", max(1, int(window * 1000))
        try:
            ran, count = await self._quota_script("hit", [rate_key], [window_ms])
            if not ran:
                _, count = await self._command(self._multi(
                    lambda pipe: (pipe.set(rate_key, 0, px=window_ms, nx=True), pipe.incr(rate_key))))
        except _FAILURES as exc:
            self._mark_down(exc)
            return _in_process(self, LocalCounters).hit(key, limit, window)
        return int(count) <= limit

    async def issue_state(self, sid: str, nonce: str, *, keep: int, ttl: float) -> None:
        key, ttl_ms = self._states_key(sid), max(1, int(ttl * 1000))
        expires_ms = int(time.time() * 1000) + ttl_ms
        keep = max(1, keep)
        try:
            ran, _ = await self._quota_script("issue", [key], [nonce, expires_ms, keep, ttl_ms])
            if not ran:
                await self._command(self._multi(lambda pipe: (
                    pipe.zadd(key, {nonce: expires_ms}), pipe.zremrangebyrank(key, 0, -(keep + 1)),
                    pipe.pexpire(key, ttl_ms))))
        except _FAILURES as exc:
            self._mark_down(exc)
            _in_process(self, LocalStates).issue(sid, nonce, keep, ttl)

    async def spend_state(self, sid: str, nonce: str, *, ttl: float) -> bool:
        local = _in_process(self, LocalStates)
        if local.knows(sid, nonce):  # issued here while Redis was away
            return local.spend(sid, nonce)
        key = self._states_key(sid)
        try:
            ran, spent = await self._quota_script("spend", [key], [nonce, int(time.time() * 1000)])
            if not ran:
                spent = await self._command(self._redis.zrem(key, nonce))
        except _FAILURES as exc:
            self._mark_down(exc)
            raise HubUnavailableError("redis hub: cannot check the state") from exc
        return bool(spent)
