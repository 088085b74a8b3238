"""The ``redis`` hub: redis-py's asyncio client and ``PubSub``, with the outbox for outages (see the package)."""

from __future__ import annotations

import asyncio
import logging
import secrets
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, cast

from tornado_signin.errors import ConfigError, HubUnavailableError
from tornado_signin.hub import Callback, ConfirmationHub, Message, SessionRecord, Subscription

try:
    import redis.asyncio as aioredis
    from redis.asyncio.client import PubSub
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import RedisError
    from redis.exceptions import TimeoutError as RedisTimeoutError
except ImportError as exc:  # pragma: no cover - exercised by the missing-extra path of load_hub
    raise ImportError("the redis hub needs redis-py: pip install 'tornado-signin[redis]'", name="redis") from exc

if sys.version_info >= (3, 11):
    from asyncio import timeout as _deadline
else:  # pragma: no cover - Python 3.10, where redis-py depends on async-timeout
    from async_timeout import timeout as _deadline

from .envelope import Envelopes
from .outbox import Outbox
from .quota import RedisQuota
from .scripts import Scripts
from .sessions import SessionRecords

__all__ = ["RedisHub", "DEFAULT_PREFIX", "MAX_CONNECTIONS"]

log = logging.getLogger(__name__)

DEFAULT_PREFIX = "tornado-signin:"
#: Command connections a hub opens at most (the pub/sub connection is apart).
MAX_CONNECTIONS = 16
#: What counts as Redis being unreachable (not a bug): redis-py's errors, the OS's, a deadline.
_FAILURES = (RedisError, OSError, asyncio.TimeoutError)
_BACKOFF_MIN, _BACKOFF_MAX = 0.1, 2.0
#: Seconds without a message after which the listener pings Redis and unsubscribes abandoned channels.
_QUIET = 1.0
#: A pooled command connection idle this long is pinged before it is used again.
_HEALTH_CHECK_INTERVAL = 30


T = TypeVar("T")


class _Turns:
    """At most ``size`` Redis commands of this hub at once, each under one deadline of ``timeout`` seconds.

    The command pool is redis-py's, bounded by this semaphore (so it never
    opens more than ``size`` connections, and a burst waits for a free one
    instead of failing); the deadline covers the wait, connect, write and read.
    Measured against redis-py's own ways: a ``BlockingConnectionPool`` with a
    ``socket_timeout`` (a Condition per checkout, and a task per write for
    ``asyncio.wait_for``) cost 72 us of CPU per command here, this 48 us.
    A cancelled command leaves redis-py's connection disconnected, not dirty.
    """

    def __init__(self, size: int, timeout: float) -> None:
        self._semaphore = asyncio.Semaphore(size)
        self.timeout = timeout

    async def run(self, command: Awaitable[T]) -> T:
        """Await ``command`` (a coroutine) in its turn; raise TimeoutError past the deadline, or what it raises."""
        try:
            async with _deadline(self.timeout):
                async with self._semaphore:
                    return await command
        finally:
            close = getattr(command, "close", None)
            if close is not None:
                close()  # never started if the deadline passed in the queue: no "never awaited" warning


class _RedisSubscription(Subscription):
    def __init__(self, hub: RedisHub, channel: str, callback: Callback) -> None:
        self.hub, self.channel, self.callback = hub, channel, callback
        self.closed = False

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.hub._drop(self)


class _Writes:
    """The Redis writes of the outbox's flush (an :class:`~.outbox.Writer`), straight to Redis."""

    def __init__(self, hub: RedisHub) -> None:
        self.hub = hub

    async def mark_consumed(self, key: str, ttl: int) -> object:
        return await self.hub._mark_consumed(key, ttl)

    async def record(self, channel: str, raw: str, ttl: int) -> None:
        await self.hub._record(channel, raw, ttl)

    async def start_session(self, record: SessionRecord, ttl: float) -> None:
        await self.hub._command(self.hub._sessions.start(record, ttl))

    async def end_session(self, sid: str) -> object:
        return await self.hub._command(self.hub._sessions.end(sid))

    async def end_sessions(self, sub: str, started_before: float) -> object:
        return await self.hub._command(self.hub._sessions.end_all(sub, started_before))


class RedisHub(RedisQuota, ConfirmationHub):
    """A hub on the Redis at ``url``: a bounded pool of command connections and one pub/sub connection.

    Example::

        hub = RedisHub(url="redis://127.0.0.1:6379/0", key_prefix="app:")
        assert await hub.consume_once("state:abc", 600)
        await hub.close()
    """

    def __init__(self, *, url: str | None, key_prefix: str = DEFAULT_PREFIX, timeout: float = 2.0,
                 max_connections: int = MAX_CONNECTIONS, clock: Callable[[], float] = time.monotonic) -> None:
        """Build the hub; connect lazily.

        ``timeout``: deadline of every Redis read, write and connection attempt,
        and of the wait for a free pooled connection, in seconds.
        ``max_connections``: command connections open at most. Raise
        ConfigError naming ``hub.url`` for a URL redis-py refuses.
        """
        if not url:
            raise ConfigError("hub.url", "is required for the redis hub")
        options: dict[str, Any] = {
            # No socket_timeout: the hub puts one deadline on each command (_Turns)
            # and on each pub/sub write; with one, redis-py runs every write in a task.
            "socket_timeout": None, "socket_connect_timeout": timeout, "decode_responses": True,
            # RESP2, what the hub is tested on: there the listener's PING comes
            # back as a pub/sub "pong" (PubSub misreads RESP3's plain PONG).
            "protocol": 2,
            # One immediate resend on a new connection when the pooled one was
            # closed (Redis restarted); a timeout is not retried (it would
            # double the wait); longer outages are the reconnect loop's job.
            "retry": Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
            "health_check_interval": _HEALTH_CHECK_INTERVAL,
        }
        try:
            commands = aioredis.ConnectionPool.from_url(url, max_connections=max_connections, **options)
            # The listener's own pool, without retries or health checks: a lost
            # pub/sub connection is the reconnect loop's (it catches up on the
            # records), and the loop pings it itself (redis-py's pub/sub health
            # check does not notice a PING left unanswered).
            listener = aioredis.ConnectionPool.from_url(
                url, max_connections=1, **{**options, "retry": Retry(NoBackoff(), 0), "health_check_interval": 0})
        except ValueError as exc:
            raise ConfigError("hub.url", f"not a Redis URL redis-py accepts: {exc}") from exc
        if str(commands.connection_kwargs.get("protocol", 2)) != "2":
            raise ConfigError("hub.url", "the redis hub speaks RESP2: drop protocol= from the URL")
        self.prefix = key_prefix
        self.clock = clock
        self.timeout = timeout
        self._redis = aioredis.Redis(connection_pool=commands)
        self._command = _Turns(max_connections, timeout).run
        self._listener_client = aioredis.Redis(connection_pool=listener)
        self._scripts = Scripts(self._redis)
        self._envelopes = Envelopes()
        self._outbox = Outbox(clock)
        self._sessions = SessionRecords(self._redis, self._scripts, key_prefix)
        self._subscribers: dict[str, set[_RedisSubscription]] = {}
        self._delivered: dict[str, str] = {}  # channel -> id of the last message of another process delivered
        self._pubsub: PubSub | None = None  # while the listener is connected
        self._listening: set[str] = set()  # channels SUBSCRIBEd on it
        self._abandoned: set[str] = set()  # of those, the ones left without a local subscriber
        self._confirmed: set[str] = set()  # of those, the ones whose every SUBSCRIBE Redis confirmed
        self._unconfirmed: dict[str, int] = {}  # channel -> SUBSCRIBEs written, not confirmed yet
        self._confirming: dict[str, list[asyncio.Future[bool]]] = {}  # subscribe()s waiting for a channel
        self._listener_down = False  # the listener failed and waits to reconnect (an outage)
        self._catch_up = False  # the next connection re-reads the records of every local channel
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._available = False
        self._closed = False

    def __repr__(self) -> str:
        return f"<RedisHub prefix={self.prefix!r}>"

    # -- keys ------------------------------------------------------------

    def _channel_key(self, channel: str) -> str:
        return f"{self.prefix}ch:{channel}"

    def _last_key(self, channel: str) -> str:
        return f"{self.prefix}last:{channel}"

    def _once_key(self, key: str) -> str:
        return f"{self.prefix}once:{key}"

    def _lease_key(self, key: str) -> str:
        return f"{self.prefix}lease:{key}"

    async def _record(self, channel: str, raw: str, ttl: int) -> None:
        await self._command(self._scripts.record_and_publish(self._last_key(channel), self._channel_key(channel), raw, ttl))

    async def _mark_consumed(self, key: str, ttl: int) -> object:
        return await self._command(self._redis.set(self._once_key(key), "1", nx=True, ex=ttl))

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

    async def _required(self, what: str, command: Awaitable[T]) -> T:
        """Return ``command``'s reply; when Redis fails, mark it down and raise HubUnavailableError
        "Redis hub: cannot <what>" (for the calls whose answer cannot be kept locally meanwhile)."""
        try:
            return await self._command(command)
        except _FAILURES as exc:
            self._mark_down(exc)
            raise HubUnavailableError(f"Redis hub: cannot {what} ({type(exc).__name__})") from exc

    async def _run(self) -> None:
        backoff = _BACKOFF_MIN
        while not self._closed:
            try:
                await self._connect()
                backoff = _BACKOFF_MIN
                await self._listen()
            except asyncio.CancelledError:
                raise
            except _FAILURES as exc:
                self._mark_down(exc)
            except Exception:  # a bug must not end delivery for the whole process
                log.exception("redis hub: unexpected error in the pub/sub loop")
                self._available = False
            # Whatever was published meanwhile is read from the records once connected again.
            self._listener_down = self._catch_up = True
            await self._reset_pubsub()
            if self._closed:
                return
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, _BACKOFF_MAX)

    async def _connect(self) -> None:
        await self._command(self._redis.ping())
        pubsub = self._listener_client.pubsub()
        try:
            async with _deadline(self.timeout):
                await pubsub.connect()  # before anyone else may use it: one connection, one connect
        except BaseException:
            await pubsub.aclose()
            raise
        # No await between publishing the listener and listing the channels: a
        # subscribe() from now on subscribes its channel itself.
        self._pubsub = pubsub
        self._listener_down = False
        channels = list(self._subscribers)
        if channels:
            self._listening.update(channels)
            self._subscribing(channels)
            async with _deadline(self.timeout):
                await pubsub.subscribe(*map(self._channel_key, channels))
        if await self._outbox.flush(_Writes(self)):
            log.info("redis hub: outcomes kept during the outage are recorded again")
        if not self._available:
            log.info("redis hub: connected")
        self._available = True
        self._wake.clear()
        catch_up, self._catch_up = self._catch_up, False
        channels = list(self._subscribers)
        if catch_up and channels:
            # decode_responses: replies are str.
            raws = cast("list[str | None]",
                        await self._command(self._redis.mget([self._last_key(channel) for channel in channels])))
            for channel, raw in zip(channels, raws, strict=True):
                found = None if raw is None or self._envelopes.is_own(raw) else self._envelopes.unwrap(raw)
                if found is not None:
                    await self._dispatch(channel, *found)

    async def _listen(self) -> None:
        """Read the pub/sub connection until the hub closes; raise (RedisError/OSError) to be reconnected."""
        pubsub = self._pubsub
        assert pubsub is not None
        loop = asyncio.get_running_loop()
        pinged: float | None = None  # when the unanswered PING went out
        skip = len(self.prefix) + 3  # "<prefix>ch:"
        while not self._closed:
            if self._wake.is_set():
                raise RedisConnectionError("a command failed; reconnecting")
            message = await pubsub.get_message(timeout=_QUIET)
            if message is None:  # a quiet second
                if pinged is None:
                    pinged = loop.time()
                    async with _deadline(self.timeout):
                        await pubsub.ping()
                elif loop.time() - pinged >= self.timeout:
                    raise RedisConnectionError("the pub/sub connection stopped answering")
                if self._abandoned:
                    await self._unsubscribe_abandoned(pubsub)
                continue
            pinged = None  # any reply shows the connection alive
            if message["type"] == "subscribe":
                self._subscribed(message["channel"][skip:])
            # The rest are "unsubscribe"/"pong" confirmations.
            if message["type"] != "message":
                continue
            raw = message["data"]
            if self._envelopes.is_own(raw):
                continue  # delivered when it was published
            found = self._envelopes.unwrap(raw)
            if found is not None:
                await self._dispatch(message["channel"][skip:], *found)

    async def _listen_to(self, channel: str) -> None:
        """SUBSCRIBE ``channel`` (after UNSUBSCRIBE of the abandoned ones), unless already subscribed.

        Skipped while the listener is down: the reconnect subscribes every local
        channel. Raise RedisError/OSError when the write fails.
        """
        pubsub = self._pubsub
        if pubsub is None or channel in self._listening:
            return
        if self._abandoned:
            await self._unsubscribe_abandoned(pubsub)
        self._listening.add(channel)
        self._subscribing([channel])
        async with _deadline(self.timeout):
            await pubsub.subscribe(self._channel_key(channel))

    async def _unsubscribe_abandoned(self, pubsub: PubSub) -> None:
        abandoned, self._abandoned = self._abandoned, set()
        self._listening -= abandoned
        self._confirmed -= abandoned  # a SUBSCRIBE written after this UNSUBSCRIBE is confirmed after it
        async with _deadline(self.timeout):
            await pubsub.unsubscribe(*map(self._channel_key, abandoned))

    def _subscribing(self, channels: list[str]) -> None:
        """Count a SUBSCRIBE of ``channels`` about to be written: each is unconfirmed until Redis answers it."""
        for channel in channels:
            self._unconfirmed[channel] = self._unconfirmed.get(channel, 0) + 1
            self._confirmed.discard(channel)

    def _subscribed(self, channel: str) -> None:
        """Take Redis's confirmation of one SUBSCRIBE of ``channel`` (they come in the order they were written)."""
        left = self._unconfirmed.get(channel, 0) - 1
        if left > 0:
            self._unconfirmed[channel] = left
            return
        self._unconfirmed.pop(channel, None)
        if channel in self._listening:
            self._confirmed.add(channel)
            self._tell_confirming(channel, True)

    def _tell_confirming(self, channel: str | None, confirmed: bool) -> None:
        """Wake the subscribe()s waiting for ``channel`` (None: for every channel) with ``confirmed``."""
        channels = list(self._confirming) if channel is None else [channel]
        for name in channels:
            for future in self._confirming.pop(name, ()):
                if not future.done():
                    future.set_result(confirmed)

    async def _until_confirmed(self, channel: str) -> bool:
        """Wait until Redis confirms the SUBSCRIBE of ``channel``; return False for an outage, True once confirmed.

        An outage (the listener failed, or has not reached Redis within the
        deadline) returns at once: the reconnect subscribes every local channel
        and re-reads their records, so nothing recorded meanwhile is missed.
        Raise HubUnavailableError when Redis took the connection but does not
        confirm within ``timeout``.
        """
        if channel in self._confirmed:
            return True
        if self._listener_down or self._closed:
            return False
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._confirming.setdefault(channel, []).append(future)
        try:
            async with _deadline(self.timeout):
                return await future
        except asyncio.TimeoutError:
            if self._pubsub is None:
                return False  # still connecting: its own deadline ends that as an outage
            raise HubUnavailableError(f"Redis hub: Redis did not confirm the subscription within {self.timeout} s") \
                from None
        finally:
            waiting = self._confirming.get(channel)
            if waiting is not None and future in waiting:
                waiting.remove(future)
                if not waiting:
                    del self._confirming[channel]

    async def _reset_pubsub(self) -> None:
        pubsub, self._pubsub = self._pubsub, None
        self._listening, self._abandoned = set(), set()
        self._confirmed, self._unconfirmed = set(), {}
        self._tell_confirming(None, False)
        if pubsub is not None:
            try:
                await pubsub.aclose()  # disconnects without waiting on a broken peer
            except Exception:
                pass  # being dropped anyway

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

    async def publish(self, channel: str, message: Message, *, record: bool = True) -> None:
        self._ensure_running()
        _, raw = self._envelopes.wrap(message)
        try:
            if record:
                await self._record(channel, raw, int(self.record_ttl))
            else:
                await self._command(self._redis.publish(self._channel_key(channel), raw))
        except _FAILURES as exc:
            self._mark_down(exc)
            if record:
                self._outbox.keep(channel, raw, self.record_ttl)
        # Recorded (in Redis, or in the outbox while Redis is away): this
        # process's subscribers are told now; the echo from Redis is dropped.
        await self._deliver(channel, message)

    async def subscribe(self, channel: str, callback: Callback) -> Subscription:
        """Return once Redis has confirmed the channel's SUBSCRIBE: a publish after that, by any process, reaches it.

        While Redis is unreachable it returns at once (see :meth:`_until_confirmed`);
        raise HubUnavailableError, the subscription dropped, when Redis took the
        connection but does not confirm within ``timeout``.
        """
        self._ensure_running()
        subscription = _RedisSubscription(self, channel, callback)
        subscribers = self._subscribers.setdefault(channel, set())
        subscribers.add(subscription)
        if len(subscribers) == 1:
            self._abandoned.discard(channel)  # still SUBSCRIBEd: nothing to write
            try:
                await self._listen_to(channel)
            except _FAILURES as exc:
                self._mark_down(exc)  # the reconnect subscribes every local channel again
                self._catch_up = True
                return subscription
        try:
            if not await self._until_confirmed(channel):
                self._catch_up = True
        except HubUnavailableError:
            subscription.close()
            raise
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
            # Unsubscribed before the next SUBSCRIBE, or after a quiet second; a
            # message meanwhile finds no local subscriber and is dropped.
            self._abandoned.add(subscription.channel)

    async def last(self, channel: str) -> Message | None:
        self._ensure_running()
        raw = self._outbox.record(channel)
        if raw is None:
            try:
                raw = cast("str | None", await self._command(self._redis.get(self._last_key(channel))))
            except _FAILURES as exc:
                self._mark_down(exc)
                return None
        found = self._envelopes.unwrap(raw)
        return found[1] if found else None

    async def consume_once(self, key: str, ttl: float) -> bool:
        self._ensure_running()
        if self._outbox.consumed(key):
            return False
        try:
            return await self._mark_consumed(key, max(1, int(ttl))) is not None
        except _FAILURES as exc:
            self._mark_down(exc)
        self._outbox.consume(key, ttl)
        return True

    # -- session records -----------------------------------------------

    async def start_session(self, record: SessionRecord, ttl: float) -> None:
        self._ensure_running()
        self._outbox.session_starting(record.sid)
        try:
            await self._command(self._sessions.start(record, ttl))
        except _FAILURES as exc:
            self._mark_down(exc)
            # Valid on this process now, on every process once Redis returns.
            self._outbox.start_session(record, ttl)

    async def session_active(self, sid: str) -> bool:
        self._ensure_running()
        if self._outbox.session_ended(sid):
            return False
        try:
            return await self._command(self._sessions.exists(sid))
        except _FAILURES as exc:
            self._mark_down(exc)
            if self._outbox.session_started(sid):
                return True
            raise HubUnavailableError("redis hub: cannot check the session") from exc

    async def sessions_of(self, sub: str) -> list[SessionRecord]:
        self._ensure_running()
        return await self._required("list sessions", self._sessions.of(sub))

    async def end_session(self, sid: str) -> str | None:
        self._ensure_running()
        local_sub = self._outbox.forget_session(sid)
        try:
            return await self._command(self._sessions.end(sid))
        except _FAILURES as exc:
            self._mark_down(exc)
            # Ended here now, everywhere once Redis returns.
            self._outbox.end_session(sid)
            return local_sub

    async def end_sessions(self, sub: str) -> list[str]:
        self._ensure_running()
        local = self._outbox.forget_sessions_of(sub)
        try:
            return sorted({*local, *await self._command(self._sessions.end_all(sub))})
        except _FAILURES as exc:
            self._mark_down(exc)
            self._outbox.end_sessions(sub, local)
            return sorted(local)

    # -- leases ----------------------------------------------------------

    async def acquire_lease(self, key: str, ttl: float) -> str | None:
        """``SET <prefix>lease:<key> <token> NX PX <ttl>``: one round trip, atomic in Redis."""
        self._ensure_running()
        token = secrets.token_urlsafe(16)
        taken = await self._required("take a lease", self._redis.set(self._lease_key(key), token, nx=True,
                                                                      px=max(1, int(ttl * 1000))))
        return token if taken is not None else None

    async def release_lease(self, key: str, token: str) -> bool:
        """Delete the lease key only if it still holds ``token`` (a script: compare and delete atomically)."""
        self._ensure_running()
        return await self._required("release a lease", self._scripts.release_lease(self._lease_key(key), token))

    # -- exchanges in flight -----------------------------------------------

    async def begin_exchange(self, ttl: float) -> str:
        """One script: a ticket from ``<prefix>exch-seq``, lapsing in the sorted set ``<prefix>exch``."""
        self._ensure_running()
        return await self._required("record an exchange", self._scripts.begin_exchange(
            f"{self.prefix}exch", f"{self.prefix}exch-seq", max(1, int(ttl * 1000))))

    async def end_exchange(self, ticket: str) -> None:
        """``ZREM <prefix>exch <ticket>``."""
        self._ensure_running()
        await self._required("end an exchange", self._redis.zrem(f"{self.prefix}exch", ticket))

    async def exchanges_before(self, ticket: str) -> int:
        """One script counting the live entries of ``<prefix>exch`` before ``ticket``."""
        self._ensure_running()
        return await self._required("read the exchanges", self._scripts.exchanges_before(f"{self.prefix}exch", ticket))

    async def check(self) -> None:
        """Raise redis-py's ConnectionError or TimeoutError unless Redis answers PING within the timeout."""
        self._ensure_running()
        try:
            await self._command(self._redis.ping())
        except asyncio.TimeoutError as exc:  # the hub's deadline: said as redis-py says its own
            self._mark_down(exc)
            raise RedisTimeoutError(f"Redis did not answer within {self.timeout} s") from exc
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
        await self._redis.aclose(close_connection_pool=True)
        await self._listener_client.aclose(close_connection_pool=True)

    @property
    def subscriber_count(self) -> int:
        """Return the number of live local subscriptions (a diagnostic: no metric reads it)."""
        return sum(len(s) for s in self._subscribers.values())
