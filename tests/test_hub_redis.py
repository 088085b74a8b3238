"""The ``redis`` confirmation hub against the machine's Redis (each test under its own key prefix)."""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aioredis

from procs import free_port, start_redis
from tornado_signin.hub import ConfirmationHub, load_hub
from tornado_signin_backends.redis_hub import _RECORD_AND_PUBLISH_SHA

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


@pytest.fixture
def private_redis(tmp_path):
    """A redis-server of this test's own (for SCRIPT FLUSH and ACL changes); yields its port."""
    port = free_port()
    proc = start_redis(port, tmp_path)
    yield port
    proc.stop()


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
    assert type(hub).__name__ == "RedisHub" and type(hub).__module__ == "tornado_signin_backends.redis_hub"
    await hub.check()


async def test_publish_on_one_process_reaches_subscribers_of_another_once_and_is_recorded(hubs):
    a, b = hubs(), hubs()
    got: list[dict] = []
    subscription = await a.subscribe("chan", got.append)
    await asyncio.sleep(0.2)  # the SUBSCRIBE reaches Redis
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
        with pytest.raises(Exception):
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
    url = f"redis://127.0.0.1:{private_redis}/0"
    a, b = hubs(url=url), hubs(url=url)
    admin = aioredis.from_url(url)
    try:
        got: list[dict] = []
        await b.subscribe("chan", got.append)
        await subscribed(admin, b, "chan")
        await a.publish("chan", {"n": 1})
        assert await admin.script_exists(_RECORD_AND_PUBLISH_SHA) == [True]  # published by the script
        await admin.script_flush()  # as after a restart or a failover
        await a.publish("chan", {"n": 2})  # NOSCRIPT: sent again with EVAL, which caches it
        assert await admin.script_exists(_RECORD_AND_PUBLISH_SHA) == [True]
        await until(lambda: len(got) == 2)
        assert got == [{"n": 1}, {"n": 2}]
        assert await b.last("chan") == {"n": 2}
        assert a.available  # NOSCRIPT is no outage: nothing went to the outbox
    finally:
        await admin.aclose()


async def test_a_redis_that_refuses_scripts_gets_multi_exec(hubs, private_redis):
    admin = aioredis.from_url(f"redis://127.0.0.1:{private_redis}/0")
    try:
        await admin.acl_setuser("hub", enabled=True, passwords=["+pw"], keys=["*"], channels=["*"],
                                commands=["+@all", "-@scripting"])
        url = f"redis://hub:pw@127.0.0.1:{private_redis}/0"
        a, b = hubs(url=url), hubs(url=url)
        got: list[dict] = []
        await b.subscribe("chan", got.append)
        await subscribed(admin, b, "chan")
        for n in (1, 2):
            await a.publish("chan", {"n": n})
        await until(lambda: len(got) == 2)
        assert got == [{"n": 1}, {"n": 2}]
        assert await b.last("chan") == {"n": 2}  # recorded
        assert a.available
        assert await admin.script_exists(_RECORD_AND_PUBLISH_SHA) == [False]
    finally:
        await admin.aclose()
