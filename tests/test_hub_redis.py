"""The ``redis`` confirmation hub against the machine's Redis (each test under its own key prefix)."""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aioredis
import redis.exceptions

from procs import free_port, start_redis
from tornado_signin.errors import ConfigError, HubUnavailableError
from tornado_signin.hub import ConfirmationHub, load_hub
from tornado_signin_backends.redis_hub import MAX_CONNECTIONS, RedisHub
from tornado_signin_backends.redis_hub.scripts import RECORD_AND_PUBLISH_SHA

pytestmark = pytest.mark.gen_test(timeout=30)


@pytest.fixture
def hubs(io_loop, redis_url, unique_name):
    made: list[ConfirmationHub] = []

    def make(prefix: str | None = None, url: str | None = None) -> ConfirmationHub:
        hub = load_hub("redis", url or redis_url, key_prefix=prefix or unique_name + ":")
        made.append(hub)
        return hub

    yield make

    async def close_all() -> None:
        for hub in made:
            await hub.close()

    io_loop.run_sync(close_all)


class PrivateRedis:
    """A redis-server of this test's own, on a free port: for SCRIPT FLUSH, ACLs, outages."""

    def __init__(self, tmp_path) -> None:
        self.tmp_path, self.port = tmp_path, free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc = start_redis(self.port, tmp_path)

    def stop(self) -> None:
        self.proc.stop()

    def restart(self) -> None:
        self.proc = start_redis(self.port, self.tmp_path)


@pytest.fixture
def private_redis(tmp_path):
    server = PrivateRedis(tmp_path)
    yield server
    server.stop()


async def until(predicate, timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.01)


async def subscribed(admin, hub, channel: str, count: int = 1) -> None:
    """Wait until Redis counts ``count`` subscribers of the hub's ``channel``."""
    key = f"{hub.prefix}ch:{channel}"
    for _ in range(500):
        if (await admin.pubsub_numsub(key))[0][1] == count:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{key} never had {count} subscriber(s)")


async def test_loaded_through_the_entry_point_group(hubs):
    hub = hubs()
    assert type(hub).__name__ == "RedisHub" and type(hub).__module__ == "tornado_signin_backends.redis_hub.hub"
    await hub.check()


async def test_publish_on_one_process_reaches_subscribers_of_another_once_and_is_recorded(hubs):
    a, b = hubs(), hubs()
    got: list[dict] = []
    subscription = await a.subscribe("chan", got.append)  # returns once Redis confirmed the SUBSCRIBE
    await b.publish("chan", {"frame": {"type": "signed_in"}})
    await until(lambda: got)
    await asyncio.sleep(0.2)
    assert got == [{"frame": {"type": "signed_in"}}]
    assert await a.last("chan") == {"frame": {"type": "signed_in"}}
    assert await b.last("other") is None
    subscription.close()
    await b.publish("chan", {"frame": {"type": "signed_out"}}, record=False)
    await asyncio.sleep(0.2)
    assert len(got) == 1
    assert await a.last("chan") == {"frame": {"type": "signed_in"}}  # record=False leaves the record


async def test_a_publish_right_after_subscribe_returns_reaches_the_subscriber(hubs):
    """subscribe() returns only once Redis confirmed the SUBSCRIBE: a peer's publish sent the moment it returns is
    delivered, on a hub whose listener is not connected yet (a process's first subscribe) and on one listening."""
    peer = hubs()
    got: dict[str, list[dict]] = {}
    for n in range(20):
        channel = f"first-{n}"
        await hubs().subscribe(channel, got.setdefault(channel, []).append)
        await peer.publish(channel, {"n": n}, record=False)  # pub/sub only: no record to catch up from
    listening = hubs()
    for n in range(200):
        channel = f"chan-{n}"
        await listening.subscribe(channel, got.setdefault(channel, []).append)
        await peer.publish(channel, {"n": n}, record=False)
    await until(lambda: all(got.values()))
    assert all(len(messages) == 1 for messages in got.values())


@pytest.mark.slow
async def test_a_subscribe_redis_does_not_confirm_raises_within_the_deadline(private_redis):
    hub = RedisHub(url=private_redis.url, key_prefix="unconfirmed:", timeout=0.5)
    admin = aioredis.from_url(private_redis.url)
    try:
        await hub.subscribe("first", lambda message: None)  # the listener is connected
        await admin.client_pause(3000)  # Redis reads no client's commands meanwhile
        started = asyncio.get_running_loop().time()
        with pytest.raises(HubUnavailableError, match="did not confirm the subscription"):
            await hub.subscribe("second", lambda message: None)
        assert asyncio.get_running_loop().time() - started < 2
        assert hub.subscriber_count == 1  # the unconfirmed subscription was dropped
    finally:
        await admin.aclose()
        await hub.close()


async def test_consume_once_is_shared_and_prefixes_isolate(hubs, unique_name):
    a, b, other = hubs(), hubs(), hubs(unique_name + "-other:")
    assert await a.consume_once("state:x", 60)
    assert not await b.consume_once("state:x", 60)
    assert await other.consume_once("state:x", 60)
    await a.publish("chan", {"n": 1})
    assert await other.last("chan") is None


async def test_unreachable_redis_fails_check_but_not_the_other_methods(io_loop):
    hub = load_hub("redis", f"redis://127.0.0.1:{free_port()}/0")
    try:
        with pytest.raises(redis.exceptions.ConnectionError):
            await hub.check()
        got: list[dict] = []
        await hub.subscribe("chan", got.append)
        await hub.publish("chan", {"n": 1})  # no exception: kept locally, delivered locally
        assert got == [{"n": 1}]
        assert await hub.last("chan") == {"n": 1}
        assert await hub.consume_once("k", 60) and not await hub.consume_once("k", 60)
    finally:
        await hub.close()


async def test_publish_runs_its_script_again_after_redis_forgot_it(hubs, private_redis):
    url = private_redis.url
    a, b = hubs(url=url), hubs(url=url)
    admin = aioredis.from_url(url)
    try:
        got: list[dict] = []
        await b.subscribe("chan", got.append)
        await subscribed(admin, b, "chan")
        await a.check()
        await until(lambda: a.available)  # connected: an outage below would turn it False
        await a.publish("chan", {"n": 1})
        assert await admin.script_exists(RECORD_AND_PUBLISH_SHA) == [True]  # published by the script
        await admin.script_flush()  # as after a restart or a failover
        await a.publish("chan", {"n": 2})  # NOSCRIPT: sent again with EVAL, which caches it
        assert await admin.script_exists(RECORD_AND_PUBLISH_SHA) == [True]
        await until(lambda: len(got) == 2)
        assert got == [{"n": 1}, {"n": 2}]
        assert await b.last("chan") == {"n": 2}
        assert a.available  # NOSCRIPT is no outage: nothing went to the outbox
    finally:
        await admin.aclose()


async def test_a_redis_that_refuses_scripts_gets_multi_exec(hubs, private_redis):
    admin = aioredis.from_url(private_redis.url)
    try:
        await admin.acl_setuser("hub", enabled=True, passwords=["+pw"], keys=["*"], channels=["*"],
                                commands=["+@all", "-@scripting"])
        url = f"redis://hub:pw@127.0.0.1:{private_redis.port}/0"
        a, b = hubs(url=url), hubs(url=url)
        got: list[dict] = []
        await b.subscribe("chan", got.append)
        await subscribed(admin, b, "chan")
        await a.check()
        await until(lambda: a.available)  # connected: an outage below would turn it False
        for n in (1, 2):
            await a.publish("chan", {"n": n})
        await until(lambda: len(got) == 2)
        assert got == [{"n": 1}, {"n": 2}]
        assert await b.last("chan") == {"n": 2}  # recorded
        # The budgets and states too, for the deployment (b counts into a's key, spends a's state once).
        assert await a.hit("code:x", 2, 60) and await b.hit("code:x", 2, 60) and not await a.hit("code:x", 2, 60)
        await a.issue_state("sid", "n1", keep=2, ttl=60)
        assert await b.spend_state("sid", "n1", ttl=60) and not await a.spend_state("sid", "n1", ttl=60)
        assert a.available and b.available
        assert await admin.script_exists(RECORD_AND_PUBLISH_SHA) == [False]
    finally:
        await admin.aclose()


async def test_own_subscribers_have_a_message_when_publish_returns_and_get_it_once(hubs, redis_url):
    a, b = hubs(), hubs()
    admin = aioredis.from_url(redis_url)
    try:
        got_a: list[dict] = []
        got_b: list[dict] = []
        await a.subscribe("chan", got_a.append)
        await b.subscribe("chan", got_b.append)
        await subscribed(admin, a, "chan", 2)
        await a.publish("chan", {"n": 1})
        assert got_a == [{"n": 1}]  # no wait for the echo from Redis
        await a.publish("chan", {"n": 2}, record=False)
        assert got_a == [{"n": 1}, {"n": 2}]
        # a's connection carries the echoes of 1 and 2 before b's message 3: once 3
        # is in, the echoes were read, and dropped.
        await b.publish("chan", {"n": 3})
        await until(lambda: len(got_a) >= 3 and len(got_b) >= 3)
        assert got_a == [{"n": 1}, {"n": 2}, {"n": 3}]
        assert sorted(m["n"] for m in got_b) == [1, 2, 3]
    finally:
        await admin.aclose()


@pytest.mark.slow
async def test_an_outcome_kept_during_an_outage_reaches_each_subscriber_once(hubs, private_redis):
    a, b = hubs(url=private_redis.url), hubs(url=private_redis.url)
    got_a: list[dict] = []
    got_b: list[dict] = []
    await a.subscribe("chan", got_a.append)
    await b.subscribe("chan", got_b.append)
    admin = aioredis.from_url(private_redis.url)
    await subscribed(admin, a, "chan", 2)
    await admin.aclose()
    private_redis.stop()
    await a.publish("chan", {"n": 1})  # kept in a's outbox, delivered on a now
    assert got_a == [{"n": 1}] and not a.available
    private_redis.restart()  # empty: a writes its outbox again, b catches up
    admin = aioredis.from_url(private_redis.url)
    try:
        await until(lambda: a.available and b.available and got_b, timeout=15)
        await subscribed(admin, a, "chan", 2)
        await b.publish("chan", {"n": 2})  # behind any replayed copy of 1 on every connection
        await until(lambda: len(got_a) >= 2 and len(got_b) >= 2)
        assert got_a == [{"n": 1}, {"n": 2}]
        assert got_b == [{"n": 1}, {"n": 2}]
        assert await b.last("chan") == {"n": 2}
    finally:
        await admin.aclose()


async def test_a_redis_that_never_answers_costs_one_deadline_not_a_hang(io_loop):
    held: list[asyncio.StreamWriter] = []

    async def black_hole(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)  # accepts the connection, reads nothing, answers nothing

    server = await asyncio.start_server(black_hole, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    hub = RedisHub(url=f"redis://127.0.0.1:{port}/0", key_prefix="hole:", timeout=0.3)
    try:
        got: list[dict] = []
        await hub.subscribe("chan", got.append)
        assert await hub.consume_once("state:x", 60)  # the local marker, after the deadline
        await hub.publish("chan", {"n": 1})
        assert got == [{"n": 1}] and not hub.available
        assert await hub.last("chan") == {"n": 1}
        with pytest.raises(redis.exceptions.TimeoutError):
            await hub.check()
    finally:
        await hub.close()
        server.close()
        for writer in held:
            writer.close()


@pytest.mark.slow
async def test_a_redis_restart_between_two_calls_costs_no_outage(hubs, private_redis):
    hub = hubs(url=private_redis.url)
    assert await hub.consume_once("state:a", 60)  # leaves an idle connection behind
    private_redis.stop()
    private_redis.restart()
    await hub.check()  # the idle connection died with the old server: sent again on a new one
    assert await hub.consume_once("state:b", 60)
    admin = aioredis.from_url(private_redis.url)
    try:
        assert await admin.exists(f"{hub.prefix}once:state:b") == 1
    finally:
        await admin.aclose()
    # (The listener saw its connection close and reconnects by itself: `available`
    # may blink meanwhile; what matters is that no command failed.)


async def test_a_channel_left_behind_is_unsubscribed_with_the_next_subscribe_or_after_a_quiet_second(hubs, redis_url):
    a, b = hubs(), hubs()
    admin = aioredis.from_url(redis_url)
    try:
        got_old: list[dict] = []
        old = await a.subscribe("old", got_old.append)
        await subscribed(admin, a, "old")
        # A socket following its rotated session id: close the old channel, subscribe the new one.
        old.close()
        await b.publish("old", {"n": 1})  # may still reach a's listener: nobody there takes it
        got_new: list[dict] = []
        await a.subscribe("new", got_new.append)
        await subscribed(admin, a, "new")
        assert (await admin.pubsub_numsub(f"{a.prefix}ch:old"))[0][1] == 0  # written before SUBSCRIBE new
        await b.publish("new", {"n": 2})
        await until(lambda: got_new)
        assert got_new == [{"n": 2}] and got_old == []
        lonely = await a.subscribe("lonely", got_old.append)
        await subscribed(admin, a, "lonely")
        lonely.close()
        await subscribed(admin, a, "lonely", 0)  # no SUBSCRIBE follows: gone after a quiet second
        resubscribed: list[dict] = []
        await a.subscribe("new", resubscribed.append)  # a second subscriber: no write needed
        await b.publish("new", {"n": 3})
        await until(lambda: resubscribed)
        assert resubscribed == [{"n": 3}] and got_new == [{"n": 2}, {"n": 3}]
    finally:
        await admin.aclose()


@pytest.mark.slow
async def test_a_listener_that_stops_answering_is_noticed_and_replaced(hubs, private_redis):
    hub = RedisHub(url=private_redis.url, key_prefix="paused:", timeout=0.5)
    publisher = hubs(url=private_redis.url, prefix="paused:")
    try:
        got: list[dict] = []
        await hub.subscribe("chan", got.append)
        await until(lambda: hub.available)
        admin = aioredis.from_url(private_redis.url)
        await subscribed(admin, hub, "chan")
        await admin.client_pause(5000)  # every client waits: the listener's PING goes unanswered
        await admin.aclose()
        await until(lambda: not hub.available, timeout=10)  # no command was sent: the listener noticed
        await until(lambda: hub.available, timeout=20)  # the pause ends: reconnected
        await publisher.publish("chan", {"n": 1})
        await until(lambda: got)
        assert got == [{"n": 1}]
    finally:
        await hub.close()


def test_a_url_asking_for_resp3_is_refused():
    with pytest.raises(ConfigError) as refused:
        load_hub("redis", "redis://127.0.0.1:6379/0?protocol=3")
    assert refused.value.key == "hub.url"


async def test_non_ascii_prefix_channel_and_content_round_trip(hubs, redis_url, unique_name):
    prefix = f"{unique_name}-é:"
    a, b = hubs(prefix), hubs(prefix)
    admin = aioredis.from_url(redis_url)
    try:
        got: list[dict] = []
        await b.subscribe("chan-ü", got.append)
        await subscribed(admin, b, "chan-ü")
        await a.publish("chan-ü", {"frame": {"name": "Zoë 🎉"}})
        await until(lambda: got)
        assert got == [{"frame": {"name": "Zoë 🎉"}}]
        assert await b.last("chan-ü") == {"frame": {"name": "Zoë 🎉"}}
        assert await a.consume_once("state:ñ", 60) and not await b.consume_once("state:ñ", 60)
        assert await admin.exists(f"{prefix}once:state:ñ".encode()) == 1  # the UTF-8 key name
    finally:
        await admin.aclose()


async def test_a_burst_of_commands_leaves_a_bounded_number_of_connections_open(hubs, private_redis):
    import redis as sync_redis

    hub = hubs(url=private_redis.url)
    results = await asyncio.gather(*(hub.consume_once(f"state:burst-{i}", 60) for i in range(4 * MAX_CONNECTIONS)))
    assert all(results)  # one connection per concurrent command while they ran
    await asyncio.sleep(0.1)
    with sync_redis.Redis.from_url(private_redis.url) as admin:
        others = [c for c in admin.client_list() if c["cmd"] != "client|list"]
    # At most MAX_CONNECTIONS for commands, plus the pub/sub listener.
    assert len(others) <= MAX_CONNECTIONS + 1, len(others)
