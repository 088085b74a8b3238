"""The /confirm sockets are pinged by one timer of the application, not by a task per socket (issue 16)."""

from __future__ import annotations

import asyncio

import pytest

from security_oracle import stack_fixture

pytestmark = pytest.mark.gen_test(timeout=30)

stack = stack_fixture(limits={"websocket_ping_interval": 0.2, "websocket_ping_timeout": 0.2})


def per_socket_ping_tasks() -> list:
    return [task for task in asyncio.all_tasks() if "periodic_ping" in repr(task.get_coro())]


async def test_one_timer_pings_every_socket_and_their_pongs_keep_them(stack):
    clients = [stack.client() for _ in range(3)]
    sockets = []
    for client in clients:
        await client.fetch("/")
        sockets.append(await client.socket())
    await asyncio.sleep(0.05)
    handlers = list(stack.ctx.sockets)
    assert len(handlers) == 3
    assert not per_socket_ping_tasks()  # Tornado's own pinging (a task per socket) is off
    opened = {handler: handler.alive_at for handler in handlers}
    await asyncio.sleep(0.7)  # several intervals
    # Each socket was pinged and answered (its pong moved alive_at on), and is still open.
    assert len(stack.ctx.sockets) == 3
    assert all(handler.alive_at > opened[handler] for handler in handlers)
    for sock in sockets:
        sock.close()


async def test_pinging_off_with_a_zero_interval(io_loop):
    from harness import start_stack

    stack = await start_stack(limits={"websocket_ping_interval": 0, "websocket_ping_timeout": 0})
    try:
        client = stack.client()
        await client.fetch("/")
        sock = await client.socket()
        await asyncio.sleep(0.05)
        assert len(stack.ctx.sockets) == 1 and stack.ctx.pinger._timer is None
        sock.close()
    finally:
        await stack.close()


class FakeSocket:
    """What SocketPinger asks of a socket, recording what it was told."""

    def __init__(self, pinger, now):
        self.pinger, self.pings, self.closed = pinger, [], False
        self.ping_due, self.pinged_at = 0.0, None
        pinger.watch(self, now)

    def ping_now(self, now):
        if self.closed:
            return False
        self.pings.append(now)
        self.pinged_at = now
        return True

    def ping_timed_out(self):
        self.closed = True

    def pong(self, now):
        self.pinged_at = None
        self.pinger.watch(self, now)


def test_each_socket_is_pinged_when_due_and_closed_when_silent_only_those_touched(io_loop):
    from tornado_signin.web.confirm import SocketPinger

    pinger = SocketPinger(interval=10, timeout=5)
    first, second, third = (FakeSocket(pinger, at) for at in (0.0, 1.0, 2.0))
    pinger.tick(9.9)
    assert [first.pings, second.pings, third.pings] == [[], [], []]
    pinger.tick(10.5)  # only the one opened at 0 is due: sockets opened apart are pinged apart
    assert [first.pings, second.pings, third.pings] == [[10.5], [], []]
    pinger.tick(11.5)
    assert second.pings == [11.5] and third.pings == []
    first.pong(12.0)  # answered: next ping 10 s after the answer
    pinger.tick(12.5)
    assert third.pings == [12.5]
    pinger.tick(16.6)  # the second's ping (11.5) is 5.1 s old and unanswered: closed; the first is fine
    assert second.closed and not first.closed and not third.closed
    third.pong(13.0)
    pinger.tick(21.9)
    assert first.pings == [10.5] and not third.closed
    pinger.tick(22.0)
    assert first.pings == [10.5, 22.0]
    assert third.pings == [12.5]  # due at 23.0
    pinger.tick(23.0)
    assert third.pings == [12.5, 23.0]
    pinger.stop()


def test_a_closed_socket_is_not_kept_by_the_pinger(io_loop):
    import gc
    import weakref

    from tornado_signin.web.confirm import SocketPinger

    pinger = SocketPinger(interval=10, timeout=5)
    socket = FakeSocket(pinger, 0.0)
    ref = weakref.ref(socket)
    del socket
    gc.collect()
    assert ref() is None
    pinger.tick(11.0)  # its entry is dropped without a ping
    pinger.stop()
