"""The confirmation-hub contract test kit, for the built-in hubs and for plugin authors.

Every hub proves it honours the :class:`~tornado_signin.hub.ConfirmationHub`
contract by subclassing :class:`ConfirmationHubContract` in its own tests and
providing ONE fixture, ``hub``: a fresh hub whose channels and keys no other
test sees (for a shared hub, a unique key prefix), closed at teardown::

    import pytest
    from tornado_signin.testing import ConfirmationHubContract
    from my_plugin import MyHub

    class TestMyHub(ConfirmationHubContract):
        @pytest.fixture
        def hub(self, io_loop):
            hub = MyHub(url="myhub://127.0.0.1", key_prefix="test-1:")
            yield hub
            io_loop.run_sync(hub.close)

A hub shared between processes should also give ``peer``: a second instance
on the same storage and prefix (another process's view); the cross-instance
tests skip without it. pytest then runs every ``test_*`` below: delivery
(to every subscriber of the channel once, in publish order, only what is
published after subscribing), records (read by a late subscriber of another
instance), ``record=False``, channels kept apart, a closed subscription, async
callbacks, single-use keys across instances, expiry, request budgets (a
fixed window counted across instances), outstanding states (spent once
anywhere, the newest kept, expiry), leases (one holder,
released by its token only, ended by their ttl), exchanges in flight (ordered
across instances, ended, lapsed with their ttl), and the session records.

The tests are coroutines run by pytest-tornado (``pip install 'tornado-signin[test]'``).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest

from ..hub import ConfirmationHub, SessionRecord

__all__ = ["ConfirmationHubContract", "until"]


async def until(condition: Callable[[], Any], within: float = 3.0) -> None:
    """Wait until ``condition()`` is true; fail the test after ``within`` seconds."""
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {within}s")
        await asyncio.sleep(0.01)


def _name(kind: str) -> str:
    return f"{kind}-{uuid.uuid4().hex}"


def _requires_outstanding_states(hub: ConfirmationHub) -> None:
    if type(hub).issue_state is ConfirmationHub.issue_state:
        pytest.skip("the hub keeps the default single-use markers, not outstanding states")


class ConfirmationHubContract:
    """The contract of :class:`~tornado_signin.hub.ConfirmationHub`; subclasses give the ``hub`` fixture."""

    # pytest-tornado runs each coroutine test on the test's IOLoop.
    pytestmark = pytest.mark.gen_test(timeout=30)

    #: Seconds a subscription may take to reach a shared backend before a peer's publish can find it.
    subscribe_settle = 0.2

    @pytest.fixture
    def peer(self) -> ConfirmationHub | None:
        """A second instance on the same storage (another process's view), or None for a one-process hub."""
        return None

    # -- publish / subscribe ---------------------------------------------------------

    async def test_is_a_confirmation_hub_and_checks_out(self, hub):
        assert isinstance(hub, ConfirmationHub)
        await hub.check()

    async def test_publish_reaches_the_channels_subscriber_once(self, hub):
        channel = _name("chan")
        got: list[Any] = []
        await hub.subscribe(channel, got.append)
        await hub.publish(channel, {"frame": {"type": "signed_in"}})
        await until(lambda: got)
        await asyncio.sleep(0.1)
        assert got == [{"frame": {"type": "signed_in"}}]

    async def test_another_channels_subscriber_gets_nothing(self, hub):
        mine, other = _name("chan"), _name("chan")
        got: list[Any] = []
        await hub.subscribe(other, got.append)
        seen: list[Any] = []
        await hub.subscribe(mine, seen.append)
        await hub.publish(mine, {"n": 1})
        await until(lambda: seen)
        await asyncio.sleep(0.1)
        assert got == []

    async def test_a_closed_subscription_gets_nothing_more_and_close_is_idempotent(self, hub):
        channel = _name("chan")
        got: list[Any] = []
        subscription = await hub.subscribe(channel, got.append)
        await hub.publish(channel, {"n": 1})
        await until(lambda: got)
        subscription.close()
        subscription.close()
        await hub.publish(channel, {"n": 2})
        await asyncio.sleep(0.2)
        assert got == [{"n": 1}]

    async def test_an_async_callback_is_awaited(self, hub):
        channel = _name("chan")
        got: list[Any] = []

        async def callback(message: dict[str, Any]) -> None:
            await asyncio.sleep(0)
            got.append(message)

        await hub.subscribe(channel, callback)
        await hub.publish(channel, {"n": 1})
        await until(lambda: got)
        assert got == [{"n": 1}]

    async def test_a_peers_publish_reaches_this_instances_subscriber(self, hub, peer):
        if peer is None:
            pytest.skip("a one-process hub")
        channel = _name("chan")
        got: list[Any] = []
        await hub.subscribe(channel, got.append)
        await asyncio.sleep(self.subscribe_settle)
        await peer.publish(channel, {"n": 1})
        await until(lambda: got)
        await asyncio.sleep(0.1)
        assert got == [{"n": 1}]
        assert await hub.last(channel) == {"n": 1}

    async def test_every_subscriber_of_the_channel_is_told_once(self, hub, peer):
        channel = _name("chan")
        first: list[dict[str, Any]] = []
        second: list[dict[str, Any]] = []
        await hub.subscribe(channel, first.append)
        await hub.subscribe(channel, second.append)
        await asyncio.sleep(self.subscribe_settle if peer is not None else 0)
        await (peer or hub).publish(channel, {"n": 1})
        await until(lambda: first and second)
        await asyncio.sleep(0.1)
        assert first == second == [{"n": 1}]

    async def test_one_publishers_messages_arrive_in_publish_order(self, hub, peer):
        channel = _name("chan")
        got: list[dict[str, Any]] = []
        await hub.subscribe(channel, got.append)
        await asyncio.sleep(self.subscribe_settle if peer is not None else 0)
        for n in range(5):
            await (peer or hub).publish(channel, {"n": n}, record=n % 2 == 0)
        await until(lambda: len(got) >= 5)
        assert got == [{"n": n} for n in range(5)]

    async def test_a_subscription_is_told_only_what_is_published_after_it(self, hub, peer):
        channel = _name("chan")
        got: list[dict[str, Any]] = []
        await (peer or hub).publish(channel, {"n": "before"})
        await hub.subscribe(channel, got.append)
        await asyncio.sleep(self.subscribe_settle if peer is not None else 0)
        await (peer or hub).publish(channel, {"n": "after"})
        await until(lambda: got)
        await asyncio.sleep(0.1)
        assert got == [{"n": "after"}]

    async def test_a_late_subscriber_of_another_instance_reads_the_recorded_outcome(self, hub, peer):
        if peer is None:
            pytest.skip("a one-process hub")
        channel = _name("chan")
        await peer.publish(channel, {"frame": {"type": "signed_in", "user": {"name": "Zoë 🎉"}}})  # nobody listens
        assert await hub.last(channel) == {"frame": {"type": "signed_in", "user": {"name": "Zoë 🎉"}}}
        assert await hub.last(_name("chan")) is None

    # -- records -----------------------------------------------------------------------

    async def test_the_last_recorded_message_is_readable_and_the_newest_wins(self, hub):
        channel = _name("chan")
        assert await hub.last(channel) is None
        await hub.publish(channel, {"n": 1})
        assert await hub.last(channel) == {"n": 1}
        await hub.publish(channel, {"n": 2})
        assert await hub.last(channel) == {"n": 2}

    async def test_record_false_delivers_but_keeps_the_record(self, hub):
        channel = _name("chan")
        got: list[Any] = []
        await hub.publish(channel, {"n": 1})
        await hub.subscribe(channel, got.append)
        await hub.publish(channel, {"n": 2}, record=False)
        await until(lambda: got)
        assert got == [{"n": 2}]
        assert await hub.last(channel) == {"n": 1}

    async def test_a_record_expires_after_record_ttl(self, hub):
        channel = _name("chan")
        hub.record_ttl = 1.0
        await hub.publish(channel, {"n": 1})
        await asyncio.sleep(1.3)
        assert await hub.last(channel) is None

    # -- single-use keys -----------------------------------------------------------------

    async def test_consume_once_is_true_once_per_key(self, hub, peer):
        key, other = _name("key"), _name("key")
        assert await hub.consume_once(key, 60) is True
        assert await hub.consume_once(key, 60) is False
        assert await hub.consume_once(other, 60) is True
        if peer is not None:
            assert await peer.consume_once(key, 60) is False

    async def test_consume_once_is_true_again_after_its_ttl(self, hub):
        key = _name("key")
        assert await hub.consume_once(key, 1)
        await asyncio.sleep(1.3)
        assert await hub.consume_once(key, 1)

    # -- request budgets ---------------------------------------------------------------

    async def test_hit_allows_limit_events_per_window_counted_across_instances(self, hub, peer):
        key, other = _name("rate"), _name("rate")
        counters = [hub, peer or hub]
        answers = [await counters[i % 2].hit(key, 5, 60) for i in range(8)]
        assert answers == [True] * 5 + [False] * 3
        assert await hub.hit(other, 5, 60) is True  # keys are counted apart

    async def test_hit_starts_again_after_its_window(self, hub):
        key = _name("rate")
        assert [await hub.hit(key, 2, 0.5) for _ in range(3)] == [True, True, False]
        await asyncio.sleep(0.7)
        assert await hub.hit(key, 2, 0.5) is True

    async def test_concurrent_hits_count_each_event_once(self, hub, peer):
        key = _name("rate")
        hits = [(hub if i % 2 else (peer or hub)).hit(key, 10, 60) for i in range(30)]
        assert sum(await asyncio.gather(*hits)) == 10

    # -- outstanding states ----------------------------------------------------------------

    async def test_an_issued_state_is_spent_once_in_any_instance(self, hub, peer):
        sid = _name("sid")
        await hub.issue_state(sid, "n1", keep=4, ttl=60)
        assert await (peer or hub).spend_state(sid, "n1", ttl=60) is True
        assert await hub.spend_state(sid, "n1", ttl=60) is False
        if peer is not None:
            assert await peer.spend_state(sid, "n1", ttl=60) is False

    async def test_a_state_never_issued_or_of_another_session_is_refused(self, hub):
        _requires_outstanding_states(hub)
        sid = _name("sid")
        await hub.issue_state(sid, "n1", keep=4, ttl=60)
        assert await hub.spend_state(sid, "n2", ttl=60) is False
        assert await hub.spend_state(_name("sid"), "n1", ttl=60) is False
        assert await hub.spend_state(sid, "n1", ttl=60) is True

    async def test_a_session_keeps_only_its_newest_states(self, hub):
        _requires_outstanding_states(hub)
        sid = _name("sid")
        for index in range(6):
            await hub.issue_state(sid, f"n{index}", keep=3, ttl=60)
        assert [await hub.spend_state(sid, f"n{index}", ttl=60) for index in range(6)] == [False] * 3 + [True] * 3

    async def test_a_state_expires_after_its_ttl(self, hub):
        _requires_outstanding_states(hub)
        sid = _name("sid")
        await hub.issue_state(sid, "n1", keep=3, ttl=0.5)
        await asyncio.sleep(0.8)
        assert await hub.spend_state(sid, "n1", ttl=60) is False

    async def test_concurrent_spends_of_one_state_give_it_to_one(self, hub, peer):
        sid = _name("sid")
        await hub.issue_state(sid, "n1", keep=3, ttl=60)
        spends = [(hub if i % 2 else (peer or hub)).spend_state(sid, "n1", ttl=60) for i in range(10)]
        assert sum(await asyncio.gather(*spends)) == 1

    # -- leases -------------------------------------------------------------------------

    async def test_a_lease_excludes_every_other_holder_until_released(self, hub, peer):
        key, other = _name("lease"), _name("lease")
        views = [hub] + ([peer] if peer is not None else [])
        token = await hub.acquire_lease(key, 30)
        assert isinstance(token, str) and token
        for view in views:
            assert await view.acquire_lease(key, 30) is None, "a held lease was given again"
        assert await views[-1].acquire_lease(other, 30), "leases of other keys are independent"
        assert await views[-1].release_lease(key, "not-the-token") is False
        assert await hub.acquire_lease(key, 30) is None, "a wrong token released the lease"
        assert await hub.release_lease(key, token) is True
        again = await views[-1].acquire_lease(key, 30)
        assert again and again != token
        assert await hub.release_lease(key, token) is False, "a spent token released the next holder's lease"
        assert await hub.acquire_lease(key, 30) is None

    async def test_a_lease_ends_with_its_ttl(self, hub, peer):
        key = _name("lease")
        token = await hub.acquire_lease(key, 0.3)
        assert token
        await asyncio.sleep(0.5)
        successor = await (peer or hub).acquire_lease(key, 30)
        assert successor, "an expired lease still excluded"
        assert await hub.release_lease(key, token) is False
        assert await hub.acquire_lease(key, 30) is None, "the expired holder released its successor's lease"
        assert await (peer or hub).release_lease(key, successor) is True

    async def test_concurrent_acquires_give_a_lease_to_one(self, hub, peer):
        key = _name("lease")
        attempts = [view.acquire_lease(key, 30) for view in [hub] + ([peer] if peer is not None else [])
                    for _ in range(10)]
        assert len([t for t in await asyncio.gather(*attempts) if t]) == 1

    # -- exchanges in flight ------------------------------------------------------------

    async def test_exchanges_before_counts_the_earlier_live_exchanges_of_every_instance(self, hub, peer):
        other = peer or hub
        first = await hub.begin_exchange(30)
        second = await other.begin_exchange(30)
        third = await hub.begin_exchange(30)
        assert len({first, second, third}) == 3 and all(isinstance(t, str) and t for t in (first, second, third))
        assert await hub.exchanges_before(first) == 0, "an exchange waited for itself or a later one"
        assert await other.exchanges_before(second) == 1
        assert await other.exchanges_before(third) == 2
        await other.end_exchange(first)
        await hub.end_exchange(first)  # idempotent
        assert await hub.exchanges_before(third) == 1, "an ended exchange still counted"
        await hub.end_exchange(second)
        assert await other.exchanges_before(third) == 0
        fourth = await other.begin_exchange(30)
        assert await hub.exchanges_before(third) == 0, "a later exchange counted as an earlier one"
        assert await hub.exchanges_before(fourth) == 1
        for ticket in (third, fourth):
            await hub.end_exchange(ticket)

    async def test_an_exchange_lapses_with_its_ttl(self, hub, peer):
        lapsing = await hub.begin_exchange(0.3)
        kept = await hub.begin_exchange(30)
        mine = await (peer or hub).begin_exchange(30)
        assert await hub.exchanges_before(mine) == 2
        await asyncio.sleep(0.5)
        assert await (peer or hub).exchanges_before(mine) == 1, "a lapsed exchange still counted"
        for ticket in (lapsing, kept, mine):
            await hub.end_exchange(ticket)

    # -- session records ----------------------------------------------------------------

    async def test_a_started_session_is_active_until_ended(self, hub, peer):
        sid, sub = uuid.uuid4().hex, _name("sub")
        assert not await hub.session_active(sid)
        await hub.start_session(SessionRecord(sid=sid, sub=sub, started_at=1.0, user_agent="UA"), 60)
        assert await hub.session_active(sid)
        if peer is not None:
            assert await peer.session_active(sid)
        [listed] = await hub.sessions_of(sub)
        assert (listed.sid, listed.sub, listed.user_agent) == (sid, sub, "UA")
        assert await hub.end_session(sid) == sub
        assert not await hub.session_active(sid)
        if peer is not None:
            assert not await peer.session_active(sid)
        assert await hub.end_session(sid) is None
        assert await hub.sessions_of(sub) == []

    async def test_end_sessions_ends_only_that_users_sessions_oldest_listed_first(self, hub):
        sub, other = _name("sub"), _name("sub")
        sids = [uuid.uuid4().hex for _ in range(3)]
        for i, sid in enumerate(sids):
            await hub.start_session(SessionRecord(sid=sid, sub=sub, started_at=float(i)), 60)
        kept = uuid.uuid4().hex
        await hub.start_session(SessionRecord(sid=kept, sub=other, started_at=0.0), 60)
        assert [r.sid for r in await hub.sessions_of(sub)] == sids
        assert sorted(await hub.end_sessions(sub)) == sorted(sids)
        assert not any([await hub.session_active(s) for s in sids])
        assert await hub.session_active(kept)
        assert await hub.end_sessions(sub) == []

    async def test_a_session_record_expires_after_its_ttl(self, hub):
        sid, sub = uuid.uuid4().hex, _name("sub")
        await hub.start_session(SessionRecord(sid=sid, sub=sub, started_at=0.0), 1)
        await asyncio.sleep(1.3)
        assert not await hub.session_active(sid)
        assert await hub.sessions_of(sub) == []

    async def test_close_is_idempotent(self, hub):
        await hub.close()
        await hub.close()
