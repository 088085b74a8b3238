"""The confirmation-hub contract kit (tornado_signin.testing.hub) on the memory hub and on Redis."""

from __future__ import annotations

import pytest

from tornado_signin.hub import load_hub
from tornado_signin.testing import ConfirmationHubContract


class TestMemoryHub(ConfirmationHubContract):
    @pytest.fixture
    def hub(self, io_loop):
        hub = load_hub("memory")
        yield hub
        io_loop.run_sync(hub.close)


class TestRedisHub(ConfirmationHubContract):
    subscribe_settle = 0  # subscribe() returns once Redis confirmed the SUBSCRIBE

    @pytest.fixture
    def hub(self, redis_url, unique_name, io_loop):
        hub = load_hub("redis", redis_url, key_prefix=f"{unique_name}:")
        yield hub
        io_loop.run_sync(hub.close)

    @pytest.fixture
    def peer(self, redis_url, unique_name, io_loop):
        hub = load_hub("redis", redis_url, key_prefix=f"{unique_name}:")
        yield hub
        io_loop.run_sync(hub.close)


@pytest.mark.gen_test(timeout=30)
async def test_the_kit_fails_a_hub_that_records_what_it_was_told_not_to():
    from tornado_signin_backends.memory_hub import MemoryHub

    class RecordsEverything(MemoryHub):
        async def publish(self, channel, message, *, record=True):
            await super().publish(channel, message, record=True)

    with pytest.raises(AssertionError):
        await ConfirmationHubContract().test_record_false_delivers_but_keeps_the_record(RecordsEverything())


@pytest.mark.gen_test(timeout=30)
async def test_the_kit_fails_a_hub_whose_single_use_keys_can_be_reused():
    from tornado_signin_backends.memory_hub import MemoryHub

    class Forgetful(MemoryHub):
        async def consume_once(self, key, ttl):
            return True

    with pytest.raises(AssertionError):
        await ConfirmationHubContract().test_consume_once_is_true_once_per_key(Forgetful(), None)


@pytest.mark.gen_test(timeout=30)
async def test_the_kit_fails_a_hub_that_replays_the_record_to_a_new_subscriber():
    from tornado_signin_backends.memory_hub import MemoryHub

    class Replays(MemoryHub):
        async def subscribe(self, channel, callback):
            subscription = await super().subscribe(channel, callback)
            recorded = await self.last(channel)
            if recorded is not None:
                callback(recorded)
            return subscription

    with pytest.raises(AssertionError):
        await ConfirmationHubContract().test_a_subscription_is_told_only_what_is_published_after_it(Replays(), None)


@pytest.mark.gen_test(timeout=30)
async def test_the_kit_fails_a_hub_that_delivers_out_of_order():
    from tornado_signin_backends.memory_hub import MemoryHub

    class Lifo(MemoryHub):
        held: list = []

        async def publish(self, channel, message, *, record=True):
            self.held.append((channel, message, record))
            if len(self.held) == 5:
                for args in reversed(self.held):
                    await super().publish(args[0], args[1], record=args[2])

    with pytest.raises(AssertionError):
        await ConfirmationHubContract().test_one_publishers_messages_arrive_in_publish_order(Lifo(), None)
