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
