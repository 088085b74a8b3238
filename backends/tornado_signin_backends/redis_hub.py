"""``redis``: a confirmation hub shared by every process and machine through Redis.

Config (``hub:`` section)::

    hub:
      backend: redis
      url: redis://redis.internal:6379/0     # rediss:// for TLS; password in the URL or {"$env": …}
      key_prefix: "tornado-signin:"          # optional: to share one Redis between deployments

How it maps the :class:`~tornado_signin.hub.ConfirmationHub` contract:

- ``publish``: one server-side script (``EVALSHA``) that runs ``SET
  <prefix>last:<channel> <message> EX <record_ttl>`` then ``PUBLISH
  <prefix>ch:<channel> <message>`` atomically, so the outcome is *recorded*
  before anybody can be told, and a socket that connects late (on any process)
  reads it with ``last``. A Redis that lost the script (restart, failover,
  ``SCRIPT FLUSH``) answers ``NOSCRIPT``: the hub then sends it with ``EVAL``,
  which caches it again. A Redis that refuses scripts (an ACL without
  ``@scripting``, a renamed command) gets the same two commands in one
  ``MULTI``/``EXEC`` instead.
  Once recorded, the message goes straight to this process's own subscribers
  (before ``publish`` returns); its echo from Redis is recognised by its id and
  dropped, so this process delivers its own messages exactly once, whatever
  an outage replays. Order: a process's subscribers get its own messages in
  publish order, and other processes' messages as they arrive; a message that
  Redis published just before one of ours may still be unread on the pub/sub
  connection and come second (a window of one loop turn).
- ``subscribe``: one pub/sub connection per hub (per process), the
  *listener*, subscribed to the channels that have local subscribers and
  dispatching the messages of other processes to their callbacks. A channel
  whose last local subscriber leaves is unsubscribed in the same write as the
  next ``SUBSCRIBE`` (a socket that follows its rotated session id costs one
  write, not two), or after a quiet second. After a quiet second the listener
  also sends ``PING``: a listener that does not answer within ``timeout`` is
  replaced, as after any error.
- ``consume_once``: ``SET <prefix>once:<key> 1 NX EX <ttl>``.
- leases: ``SET <prefix>lease:<key> <token> NX PX <ttl>`` to take one, a
  compare-and-delete script to release it (only while it holds the token).
- session records: ``<prefix>sess:<sid>`` holds the record (JSON) with the
  session's TTL and ``<prefix>user-sess:<sub>`` the set of the user's session
  ids; ``start_session`` writes both in one script (``MULTI``/``EXEC`` where
  scripts are refused),
  ``session_active`` is one ``EXISTS`` (the per-request check),
  ``sessions_of`` reads the set and the records (``MGET``) and drops ids whose
  record expired, ``end_session``/``end_sessions`` ``DEL`` the records and
  ``SREM`` the ids. While Redis is unreachable a session started or ended
  here is kept locally (valid, or ended, on this process) and written when
  Redis returns; ``session_active`` of any other session and ``sessions_of``
  raise HubUnavailableError: an end that cannot be checked is not taken as live.
- ``check``: ``PING``.

Single commands (the script, ``SET NX``, ``GET``, ``PING``) go out on
connections the hub keeps for itself, through redis-py's connection API, under
one deadline (``timeout``) per command: redis-py's client would check one out
of its pool, wrap the call in its retry helper and the write in a task of its
own each time, which cost more CPU than the rest of the call. A connection
that fails is closed; when one that was kept idle turns out dead (Redis
restarted), the command is sent once more, on a new connection.

Redis down. Logins must not depend on the hub, so no method raises for an
unreachable Redis: ``publish`` delivers to this process's subscribers at once
and keeps the message in a local outbox, ``last`` answers from that outbox,
``consume_once`` falls back to a per-process marker (a state can then be
replayed on *another* process during the outage only; it stays bound to its
session and its TTL). A background task reconnects with backoff (0.1 s to
2 s) and, once Redis answers, writes the outbox (``SET … EX`` with the
remaining TTL, then ``PUBLISH``), re-marks the locally consumed keys, re-subscribes,
and re-reads the recorded message of every subscribed channel so that a
message published by another process during the outage is still delivered.
Each message carries an id (the publishing hub's random origin and a
counter); a subscriber never gets the same one twice.
Only :meth:`RedisHub.check` (readiness) reports the outage.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import logging
import secrets
import sys
import time
import uuid
from collections.abc import Callable
from typing import Any, cast

from tornado_signin.errors import ConfigError, HubUnavailableError
from tornado_signin.hub import Callback, ConfirmationHub, Message, SessionRecord, Subscription

try:
    import redis.asyncio as aioredis
    from redis.backoff import NoBackoff
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import NoPermissionError, NoScriptError, RedisError, ResponseError
    from redis.retry import Retry
except ImportError as exc:  # pragma: no cover - exercised by the missing-extra path of load_hub
    raise ImportError("the redis hub needs redis-py: pip install 'tornado-signin[redis]'", name="redis") from exc

# As redis-py chooses: asyncio.timeout is broken before 3.11.3, where redis-py requires async-timeout.
if sys.version_info >= (3, 11, 3):
    from asyncio import timeout as _deadline
else:  # pragma: no cover - older Pythons
    # mypy cannot evaluate a three-part version check: it sees both branches.
    from async_timeout import timeout as _deadline  # type: ignore[import-not-found,no-redef]

__all__ = ["RedisHub", "DEFAULT_PREFIX"]

log = logging.getLogger(__name__)

DEFAULT_PREFIX = "tornado-signin:"
_FAILURES = (RedisError, OSError, asyncio.TimeoutError)

#: Release a lease only while it is ours: a holder whose lease expired must
#: not delete the next holder's.
_RELEASE_LEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
_BACKOFF_MIN, _BACKOFF_MAX = 0.1, 2.0
#: Connections kept open between commands (one per concurrent command is opened as needed).
_MAX_IDLE = 16
#: Seconds without a message after which the listener pings Redis and unsubscribes abandoned channels.
_QUIET = 1.0

#: ``publish`` with ``record``, in one command (one reply to parse instead of MULTI/EXEC's four).
#: KEYS[1] = last:<channel>; ARGV = envelope, seconds to keep it, ch:<channel> (a
#: pub/sub channel is not a key). SET first: the outcome is recorded before anyone is told.
_RECORD_AND_PUBLISH = """\
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
return redis.call('PUBLISH', ARGV[3], ARGV[1])
"""
_RECORD_AND_PUBLISH_SHA = hashlib.sha1(_RECORD_AND_PUBLISH.encode()).hexdigest()


#: ``start_session`` in one command: KEYS = sess:<sid>, user-sess:<sub>; ARGV = record, seconds, sid.
#: Every session gets the same TTL, so the newest one's is the longest: the index lives as long as it.
_START_SESSION = """\
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
redis.call('SADD', KEYS[2], ARGV[3])
return redis.call('EXPIRE', KEYS[2], ARGV[2])
"""
_START_SESSION_SHA = hashlib.sha1(_START_SESSION.encode()).hexdigest()


def _pack(*commands: tuple[str | int, ...]) -> bytes:
    """Encode ``commands`` in RESP, for one write.

    This hub sends str and int arguments only, str as UTF-8 (redis-py's default
    encoding); redis-py's general encoder cost three times as much CPU.
    """
    parts = []
    for command in commands:
        parts.append(b"*%d\r\n" % len(command))
        for arg in command:
            data = arg.encode() if isinstance(arg, str) else b"%d" % arg
            parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


def _refused(exc: ResponseError) -> bool:
    """Return whether ``exc`` says this Redis will never run the command (ACL, renamed command)."""
    return isinstance(exc, NoPermissionError) or "unknown command" in str(exc).lower()


class _RedisSubscription(Subscription):
    def __init__(self, hub: "RedisHub", channel: str, callback: Callback) -> None:
        self.hub, self.channel, self.callback = hub, channel, callback
        self.closed = False

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.hub._drop(self)


class RedisHub(ConfirmationHub):
    """A hub on the Redis at ``url``: per instance, the connections its commands
    need (kept idle between them) and one pub/sub connection, the listener."""

    def __init__(self, *, url: str | None, key_prefix: str = DEFAULT_PREFIX, timeout: float = 2.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        """Build the hub; connect lazily.

        ``timeout``: deadline of every Redis command and connection attempt, in
        seconds. Raise ConfigError naming ``hub.url`` for a URL redis-py refuses.
        """
        if not url:
            raise ConfigError("hub.url", "is required for the redis hub")
        try:
            # The client parses the URL and holds the connection settings
            # (_new_connection); it sends commands itself only for the
            # MULTI/EXEC fallback of a Redis that refuses scripts.
            self._client = aioredis.from_url(
                url, socket_timeout=timeout, socket_connect_timeout=timeout,
                # One immediate retry of a failed connection attempt; longer
                # outages are the reconnect loop's job.
                # decode_responses: replies are str (the set[str] casts rely on it).
                retry=Retry(NoBackoff(), 1), decode_responses=True,
                # RESP2: the listener reads pub/sub messages as plain replies.
                protocol=2)
        except ValueError as exc:
            raise ConfigError("hub.url", f"not a Redis URL redis-py accepts: {exc}") from exc
        if str(self._client.connection_pool.connection_kwargs.get("protocol", 2)) != "2":
            raise ConfigError("hub.url", "the redis hub speaks RESP2: drop protocol= from the URL")
        self.prefix = key_prefix
        self.clock = clock
        self.timeout = timeout
        self._subscribers: dict[str, set[_RedisSubscription]] = {}
        self._delivered: dict[str, str] = {}
        self._outbox: dict[str, tuple[float, str]] = {}
        self._consumed_locally: dict[str, float] = {}
        # Session records started / ended here while Redis was away (written on reconnect).
        self._sessions_started: dict[str, tuple[float, SessionRecord]] = {}
        self._sessions_ended: dict[str, float] = {}
        self._subs_ended: dict[str, float] = {}
        self._idle: list[Any] = []  # connected redis-py connections for _command, last used last
        self._listener: Any = None  # the pub/sub connection (RESP2), while connected
        self._listening: set[str] = set()  # channels SUBSCRIBEd on the listener
        self._abandoned: set[str] = set()  # of those, the ones left without a local subscriber
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._available = False
        self._closed = False
        self._use_script = True
        # Message ids: this hub's random origin and a counter (unique without a
        # uuid4 per message, and they tell this hub's own messages apart).
        self._origin = uuid.uuid4().hex
        self._sequence = itertools.count(1)
        # How _wrap begins each envelope of this hub: '{"id":"<origin>-'.
        self._own_prefix = f'{{"id":"{self._origin}-'

    def __repr__(self) -> str:
        return f"<RedisHub prefix={self.prefix!r}>"

    # -- keys and envelopes ----------------------------------------------

    def _channel_key(self, channel: str) -> str:
        return f"{self.prefix}ch:{channel}"

    def _last_key(self, channel: str) -> str:
        return f"{self.prefix}last:{channel}"

    def _once_key(self, key: str) -> str:
        return f"{self.prefix}once:{key}"

    def _session_key(self, sid: str) -> str:
        return f"{self.prefix}sess:{sid}"

    def _user_sessions_key(self, sub: str) -> str:
        return f"{self.prefix}user-sess:{sub}"

    @staticmethod
    def _wrap(message_id: str, message: Message) -> str:
        # The id comes first, so that _is_own can tell an envelope without parsing it.
        return f'{{"id":"{message_id}","message":{json.dumps(message, separators=(",", ":"))}}}'

    def _is_own(self, raw: str) -> bool:
        """Return whether ``raw`` was published by this hub (and so already delivered here)."""
        return raw.startswith(self._own_prefix)

    @staticmethod
    def _unwrap(raw: str | None) -> tuple[str, Message] | None:
        if raw is None:
            return None
        try:
            envelope = json.loads(raw)
            return str(envelope["id"]), dict(envelope["message"])
        except (ValueError, KeyError, TypeError):
            log.warning("redis hub: ignored a malformed message")
            return None

    # -- single commands -------------------------------------------------

    async def _command(self, *args: Any) -> Any:
        """Send one command and return its reply; raise RedisError/OSError as redis-py does.

        It goes out on an idle connection when there is one. If that connection
        died while idle (Redis restarted), the command is sent once more on a new
        one, as redis-py's single retry did; a timeout is not retried.
        """
        if self._idle:
            try:
                return await self._call(self._idle.pop(), args)
            except RedisConnectionError:
                if self._closed:
                    raise
        return await self._call(self._new_connection(), args)

    def _new_connection(self, **options: Any) -> Any:
        """Return a new (unconnected) redis-py connection to the hub's URL.

        Without a socket timeout: the callers put one deadline on each exchange
        (with one, redis-py would wrap every write in asyncio.wait_for, a task per command).
        """
        pool = self._client.connection_pool
        return pool.connection_class(**{**pool.connection_kwargs, "socket_timeout": None, **options})

    async def _call(self, connection: Any, args: tuple[Any, ...]) -> Any:
        """Run one command on ``connection`` (it connects when new), then keep it idle.

        A reply error (ResponseError) leaves the connection usable; any other
        failure, a timeout or a cancellation closes it: its state is unknown.
        """
        try:
            async with _deadline(self.timeout):
                await connection.send_packed_command(_pack(args), check_health=False)
                reply = await connection.read_response()
        except ResponseError:
            await self._keep(connection)
            raise
        except BaseException:
            await self._disconnect(connection)
            raise
        await self._keep(connection)
        return reply

    async def _keep(self, connection: Any) -> None:
        """Keep ``connection`` idle for a later command, unless the hub is closed or enough are idle
        already (a burst of concurrent commands opens one connection each; the surplus is closed)."""
        if self._closed or len(self._idle) >= _MAX_IDLE:
            await self._disconnect(connection)
        else:
            self._idle.append(connection)

    @staticmethod
    async def _disconnect(connection: Any) -> None:
        try:
            await connection.disconnect(nowait=True)  # nowait: a broken peer cannot hold the caller
        except Exception:
            pass  # being dropped anyway

    # -- the background loop ---------------------------------------------

    def _ensure_running(self) -> None:
        if self._task is None and not self._closed:
            self._task = asyncio.get_running_loop().create_task(self._run())

    @property
    def available(self) -> bool:
        """Return whether the last contact with Redis succeeded."""
        return self._available

    def _mark_down(self, exc: BaseException) -> None:
        if self._available:
            log.warning("redis hub: Redis unreachable (%s); logins go on, outcomes are kept locally",
                        type(exc).__name__)
        self._available = False
        self._wake.set()

    async def _run(self) -> None:
        backoff = _BACKOFF_MIN
        first = True
        while not self._closed:
            try:
                await self._connect(catch_up=not first)
                first = False
                backoff = _BACKOFF_MIN
                await self._listen()
            except asyncio.CancelledError:
                raise
            except _FAILURES as exc:
                self._mark_down(exc)
            except Exception:  # a bug must not end delivery for the whole process
                log.exception("redis hub: unexpected error in the pub/sub loop")
                self._available = False
            await self._reset_pubsub()
            if self._closed:
                return
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, _BACKOFF_MAX)

    async def _connect(self, *, catch_up: bool) -> None:
        await self._command("PING")
        listener = self._new_connection()
        async with _deadline(self.timeout):
            await listener.connect()
        self._listener = listener
        # No await between setting the listener and listing the channels: a
        # subscribe() from now on subscribes its channel itself.
        await self._write_subscriptions(list(self._subscribers))
        await self._flush()
        if not self._available:
            log.info("redis hub: connected")
        self._available = True
        self._wake.clear()
        if catch_up:
            for channel in list(self._subscribers):
                raw = await self._command("GET", self._last_key(channel))
                found = None if raw is None or self._is_own(raw) else self._unwrap(raw)
                if found is not None:
                    await self._dispatch(channel, *found)

    async def _flush(self) -> None:
        """Write what was kept locally while Redis was away."""
        now = self.clock()
        # Session ends first, then starts: a copied cookie of a session ended
        # during the outage must not come back to life on another process.
        for sub, at in list(self._subs_ended.items()):
            await self._end_sessions_in_redis(sub, started_before=at)
            self._subs_ended.pop(sub, None)
        for sid in list(self._sessions_ended):
            await self._end_session_in_redis(sid)
            self._sessions_ended.pop(sid, None)
        for sid, (expires, record) in list(self._sessions_started.items()):
            if expires > now:
                await self._start_session_in_redis(record, expires - now)
            self._sessions_started.pop(sid, None)
        for key, expires in list(self._consumed_locally.items()):
            if expires > now:
                await self._command("SET", self._once_key(key), "1", "NX", "EX", max(1, int(expires - now)))
            self._consumed_locally.pop(key, None)
        for channel, (expires, raw) in list(self._outbox.items()):
            if expires > now:
                await self._record_and_publish(channel, raw, max(1, int(expires - now)))
            if self._outbox.get(channel, (None, None))[1] == raw:
                del self._outbox[channel]
        if self._outbox or self._consumed_locally:
            log.info("redis hub: outcomes kept during the outage are recorded again")

    async def _listen(self) -> None:
        """Read the listener until the hub closes; raise (OSError/RedisError) to be reconnected."""
        listener = self._listener
        loop = asyncio.get_running_loop()
        pinged: float | None = None  # when the unanswered PING went out
        while not self._closed:
            if self._wake.is_set():
                raise ConnectionError("a command failed; reconnecting")
            reply = await listener.read_response(timeout=_QUIET)
            if reply is None:  # a quiet second
                if pinged is None:
                    pinged = loop.time()
                    await self._write_listener([("PING",)])
                elif loop.time() - pinged >= self.timeout:
                    raise ConnectionError("the pub/sub connection stopped answering")
                if self._abandoned:
                    await self._write_subscriptions([])
                continue
            pinged = None  # any reply shows the connection alive
            # ["message", channel, data]; the rest is "subscribe"/"unsubscribe"/"pong" confirmations.
            if not isinstance(reply, list) or reply[0] != "message":
                continue
            raw = reply[2]
            if self._is_own(raw):
                continue  # delivered when it was published
            found = self._unwrap(raw)
            if found is not None:
                await self._dispatch(reply[1][len(self.prefix) + 3:], *found)

    async def _write_subscriptions(self, channels: list[str]) -> None:
        """SUBSCRIBE ``channels`` on the listener, and UNSUBSCRIBE the abandoned ones, in one write.

        Skipped while the listener is down: the reconnect subscribes every local
        channel. Raise OSError/RedisError when the write fails (the listener is then reset).
        """
        if not self._listener_up():
            return
        commands: list[tuple[str, ...]] = []
        if self._abandoned:
            abandoned, self._abandoned = self._abandoned, set()
            self._listening -= abandoned
            commands.append(("UNSUBSCRIBE", *map(self._channel_key, abandoned)))
        channels = [c for c in channels if c not in self._listening]
        if channels:
            self._listening.update(channels)
            commands.append(("SUBSCRIBE", *map(self._channel_key, channels)))
        if commands:
            await self._write_listener(commands)

    def _listener_up(self) -> bool:
        # A listener that redis-py disconnected after an error is replaced by
        # _run; writing on it would only make redis-py open a new, bare one.
        return self._listener is not None and self._listener.is_connected

    async def _write_listener(self, commands: list[tuple[str, ...]]) -> None:
        """Write ``commands`` on the listener (their replies come to _listen), if it is up."""
        if self._listener_up():
            async with _deadline(self.timeout):
                await self._listener.send_packed_command(_pack(*commands), check_health=False)

    async def _reset_pubsub(self) -> None:
        listener, self._listener = self._listener, None
        self._listening, self._abandoned = set(), set()
        if listener is not None:
            await self._disconnect(listener)

    async def _dispatch(self, channel: str, message_id: str, message: Message) -> None:
        """Deliver another process's message, unless this channel's subscribers already had it.

        It can come twice: from pub/sub, and from the catch-up read after a reconnect.
        """
        if channel not in self._subscribers or self._delivered.get(channel) == message_id:
            return
        self._delivered[channel] = message_id
        await self._deliver(channel, message)

    async def _deliver(self, channel: str, message: Message) -> None:
        """Call this process's subscribers of ``channel``; a failing callback is logged, not raised."""
        for subscription in list(self._subscribers.get(channel, ())):
            if subscription.closed:
                continue
            try:
                result = subscription.callback(message)
                if result is not None:
                    await result
            except Exception:
                log.exception("redis hub: a subscriber callback failed")

    # -- ConfirmationHub -------------------------------------------------

    async def _record_and_publish(self, channel: str, raw: str, ttl: int) -> None:
        """SET last:<channel> with ``ttl`` seconds, then PUBLISH, atomically; raise a RedisError/OSError."""
        last_key, channel_key = self._last_key(channel), self._channel_key(channel)
        if self._use_script:
            try:
                try:
                    await self._command("EVALSHA", _RECORD_AND_PUBLISH_SHA, 1, last_key, raw, ttl, channel_key)
                except NoScriptError:
                    # Redis restarted, failed over or flushed its scripts: EVAL runs and caches it again.
                    await self._command("EVAL", _RECORD_AND_PUBLISH, 1, last_key, raw, ttl, channel_key)
                return
            except ResponseError as exc:
                if not _refused(exc):
                    raise
                log.warning("redis hub: Redis refuses scripts (%s); publishing with MULTI/EXEC", exc)
                self._use_script = False
        async with self._client.pipeline(transaction=True) as pipe:
            pipe.set(last_key, raw, ex=ttl)
            pipe.publish(channel_key, raw)
            await pipe.execute()

    async def publish(self, channel: str, message: Message, *, record: bool = True) -> None:
        self._ensure_running()
        message_id = f"{self._origin}-{next(self._sequence)}"
        raw = self._wrap(message_id, message)
        try:
            if record:
                await self._record_and_publish(channel, raw, int(self.record_ttl))
            else:
                await self._command("PUBLISH", self._channel_key(channel), raw)
        except _FAILURES as exc:
            self._mark_down(exc)
            if record:
                self._outbox[channel] = (self.clock() + self.record_ttl, raw)
        # Recorded (in Redis, or in the outbox while Redis is away): this
        # process's subscribers are told now; the echo from Redis is dropped.
        await self._deliver(channel, message)

    async def subscribe(self, channel: str, callback: Callback) -> Subscription:
        self._ensure_running()
        subscription = _RedisSubscription(self, channel, callback)
        subscribers = self._subscribers.setdefault(channel, set())
        subscribers.add(subscription)
        if len(subscribers) == 1:
            self._abandoned.discard(channel)  # still SUBSCRIBEd: nothing to write
            try:
                await self._write_subscriptions([channel])
            except _FAILURES as exc:
                self._mark_down(exc)  # the reconnect subscribes every local channel again
        return subscription

    def _drop(self, subscription: _RedisSubscription) -> None:
        subscribers = self._subscribers.get(subscription.channel)
        if subscribers is None:
            return
        subscribers.discard(subscription)
        if subscribers:
            return
        del self._subscribers[subscription.channel]
        self._delivered.pop(subscription.channel, None)
        if subscription.channel in self._listening:
            # Unsubscribed with the next SUBSCRIBE, or after a quiet second; a
            # message meanwhile finds no local subscriber and is dropped.
            self._abandoned.add(subscription.channel)

    async def last(self, channel: str) -> Message | None:
        self._ensure_running()
        kept = self._outbox.get(channel)
        if kept is not None and kept[0] > self.clock():
            found = self._unwrap(kept[1])
            return found[1] if found else None
        try:
            found = self._unwrap(await self._command("GET", self._last_key(channel)))
        except _FAILURES as exc:
            self._mark_down(exc)
            return None
        return found[1] if found else None

    async def consume_once(self, key: str, ttl: float) -> bool:
        self._ensure_running()
        now = self.clock()
        expires = self._consumed_locally.get(key)
        if expires is not None and expires > now:
            return False
        try:
            return await self._command("SET", self._once_key(key), "1", "NX", "EX", max(1, int(ttl))) is not None
        except _FAILURES as exc:
            self._mark_down(exc)
        if len(self._consumed_locally) > 4096:
            self._consumed_locally = {k: v for k, v in self._consumed_locally.items() if v > now}
        self._consumed_locally[key] = now + ttl
        return True

    # -- leases ----------------------------------------------------------

    def _lease_key(self, key: str) -> str:
        return f"{self.prefix}lease:{key}"

    async def acquire_lease(self, key: str, ttl: float) -> str | None:
        """``SET <prefix>lease:<key> <token> NX PX <ttl>``: one round trip, atomic in Redis."""
        self._ensure_running()
        token = secrets.token_urlsafe(16)
        try:
            taken = await self._command("SET", self._lease_key(key), token, "NX", "PX", max(1, int(ttl * 1000)))
        except _FAILURES as exc:
            self._mark_down(exc)
            raise HubUnavailableError(f"Redis hub: cannot take a lease ({type(exc).__name__})") from exc
        return token if taken is not None else None

    async def release_lease(self, key: str, token: str) -> bool:
        """Delete the lease key only if it still holds ``token`` (a script: compare and delete atomically)."""
        self._ensure_running()
        try:
            return bool(await self._command("EVAL", _RELEASE_LEASE, 1, self._lease_key(key), token))
        except _FAILURES as exc:
            self._mark_down(exc)
            raise HubUnavailableError(f"Redis hub: cannot release a lease ({type(exc).__name__})") from exc

    # -- session records -----------------------------------------------

    async def _start_session_in_redis(self, record: SessionRecord, ttl: float) -> None:
        seconds = max(1, int(ttl))
        index = self._user_sessions_key(record.sub)
        if self._use_script:
            # One script on the hub's own connections: a redis-py MULTI/EXEC pipeline cost ~160 us
            # of CPU per sign-in, the script ~25 (bench/session_check.py).
            keys_and_args = (2, self._session_key(record.sid), index, record.to_json(), seconds, record.sid)
            try:
                try:
                    await self._command("EVALSHA", _START_SESSION_SHA, *keys_and_args)
                except NoScriptError:
                    await self._command("EVAL", _START_SESSION, *keys_and_args)
                return
            except ResponseError as exc:
                if not _refused(exc):
                    raise
                log.warning("redis hub: Redis refuses scripts (%s); using MULTI/EXEC", exc)
                self._use_script = False
        async with self._client.pipeline(transaction=True) as pipe:
            pipe.set(self._session_key(record.sid), record.to_json(), ex=seconds)
            pipe.sadd(index, record.sid)
            # Every session gets the same TTL, so the newest one's is the
            # longest: the index lives as long as it (plain EXPIRE: Redis 6 too).
            pipe.expire(index, seconds)
            await pipe.execute()

    async def _end_session_in_redis(self, sid: str) -> str | None:
        key = self._session_key(sid)
        async with self._client.pipeline(transaction=True) as pipe:
            pipe.get(key)
            pipe.delete(key)
            raw, deleted = await pipe.execute()
        record = SessionRecord.from_json(raw)
        if record is not None:
            await self._client.srem(self._user_sessions_key(record.sub), sid)
        return record.sub if deleted and record is not None else None

    async def _end_sessions_in_redis(self, sub: str, started_before: float | None = None) -> list[str]:
        index = self._user_sessions_key(sub)
        sids = sorted(cast("set[str]", await self._client.smembers(index)))
        if not sids:
            return []
        keys = [self._session_key(sid) for sid in sids]
        raws = await self._client.mget(keys)
        doomed: list[tuple[str, str]] = []
        gone: list[str] = []
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

    async def start_session(self, record: SessionRecord, ttl: float) -> None:
        self._ensure_running()
        self._sessions_ended.pop(record.sid, None)
        try:
            await self._start_session_in_redis(record, ttl)
        except _FAILURES as exc:
            self._mark_down(exc)
            # Valid on this process now, on every process once Redis returns.
            self._sessions_started[record.sid] = (self.clock() + ttl, record)

    async def session_active(self, sid: str) -> bool:
        self._ensure_running()
        if sid in self._sessions_ended:
            return False
        try:
            return bool(await self._command("EXISTS", self._session_key(sid)))
        except _FAILURES as exc:
            self._mark_down(exc)
            kept = self._sessions_started.get(sid)
            if kept is not None and kept[0] > self.clock():
                return True
            raise HubUnavailableError("redis hub: cannot check the session") from exc

    async def sessions_of(self, sub: str) -> list[SessionRecord]:
        self._ensure_running()
        index = self._user_sessions_key(sub)
        try:
            sids = sorted(cast("set[str]", await self._client.smembers(index)))
            if not sids:
                return []
            raws = await self._client.mget([self._session_key(sid) for sid in sids])
            gone = [sid for sid, raw in zip(sids, raws, strict=True) if raw is None]
            if gone:
                await self._client.srem(index, *gone)
        except _FAILURES as exc:
            self._mark_down(exc)
            raise HubUnavailableError("redis hub: cannot list sessions") from exc
        records = [r for r in map(SessionRecord.from_json, raws) if r is not None and r.sub == sub]
        return sorted(records, key=lambda r: (r.started_at, r.sid))

    async def end_session(self, sid: str) -> str | None:
        self._ensure_running()
        kept = self._sessions_started.pop(sid, None)
        try:
            return await self._end_session_in_redis(sid)
        except _FAILURES as exc:
            self._mark_down(exc)
            # Ended here now, everywhere once Redis returns.
            self._sessions_ended[sid] = self.clock()
            return kept[1].sub if kept is not None else None

    async def end_sessions(self, sub: str) -> list[str]:
        self._ensure_running()
        local = [sid for sid, (_, record) in self._sessions_started.items() if record.sub == sub]
        for sid in local:
            del self._sessions_started[sid]
        try:
            return sorted({*local, *await self._end_sessions_in_redis(sub)})
        except _FAILURES as exc:
            self._mark_down(exc)
            self._subs_ended[sub] = time.time()
            for sid in local:
                self._sessions_ended[sid] = self.clock()
            return sorted(local)

    async def check(self) -> None:
        """Raise ConnectionError (or redis-py's error) unless Redis answers PING."""
        self._ensure_running()
        try:
            await self._command("PING")
        except _FAILURES as exc:
            self._mark_down(exc)
            raise

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._wake.set()
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass
        await self._reset_pubsub()
        idle, self._idle = self._idle, []
        for connection in idle:
            await self._disconnect(connection)
        await self._client.aclose()

    @property
    def subscriber_count(self) -> int:
        """Return the number of live local subscriptions (for metrics)."""
        return sum(len(s) for s in self._subscribers.values())
