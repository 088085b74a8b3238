"""Issue #5 §6: transport and load - slowloris cannot hold connections, overflow gets a fast 503.

References: OWASP ASVS 5.0 V13/V15 (resource limits, timeouts), RFC 9700
§4.x (availability of the token exchange). Timeouts are configured short
(``limits.header_timeout`` / ``body_timeout``) so the suite stays fast.
"""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from harness import json_body, without_state
from security_oracle import assert_rejected, close_stack, open_stack, stack_fixture

pytestmark = pytest.mark.gen_test(timeout=30)

LIMITS = {"header_timeout": 0.5, "body_timeout": 0.5}


stack = stack_fixture(limits=LIMITS)


async def connect(stack):
    host, port = stack.app_url.split("://")[1].split(":")
    return await asyncio.open_connection(host, int(port))


async def closed_within(reader, seconds):
    """Return the seconds until the server closed the connection (reading whatever it sent)."""
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        try:
            data = await asyncio.wait_for(reader.read(1024), seconds)
        except (ConnectionError, OSError):
            return time.monotonic() - started
        if data == b"":
            return time.monotonic() - started
    raise AssertionError("the server kept a slow connection open")


async def drip(writer, data, interval):
    try:
        for byte in data:
            writer.write(bytes([byte]))
            await writer.drain()
            await asyncio.sleep(interval)
    except (ConnectionError, OSError):
        pass


async def test_slowloris_headers_are_cut_by_the_header_timeout(stack):
    reader, writer = await connect(stack)
    request = b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + b"X-Slow: " + b"a" * 200
    task = asyncio.ensure_future(drip(writer, request, 0.05))
    took = await closed_within(reader, 3)
    task.cancel()
    writer.close()
    assert took < 0.5 + 0.6, took


async def test_idle_connection_without_a_request_is_closed(stack):
    reader, writer = await connect(stack)
    took = await closed_within(reader, 3)
    writer.close()
    assert took < 0.5 + 0.6


async def test_slow_body_is_cut_by_the_body_timeout(stack):
    client = stack.client()
    await client.fetch("/")
    state = await client.state()
    reader, writer = await connect(stack)
    head = "".join(f"{k}: {v}\r\n" for k, v in {**client.gate_headers(state), "Cookie": client.cookie_header(),
                                                    "Host": "x", "Content-Length": "200"}.items())
    writer.write(f"POST /storeauthcode HTTP/1.1\r\n{head}\r\n".encode())
    task = asyncio.ensure_future(drip(writer, b"A" * 200, 0.05))
    took = await closed_within(reader, 3)
    task.cancel()
    writer.close()
    assert took < 0.5 + 0.6, took
    assert stack.emulator.stats["token"] == 0


async def test_many_slow_clients_do_not_starve_healthz(stack):
    slow = [await connect(stack) for _ in range(50)]
    tasks = [asyncio.ensure_future(drip(w, b"GET / HTTP/1.1\r\nHost: x\r\nX: " + b"a" * 100, 0.05)) for _, w in slow]
    probe = stack.client()
    for _ in range(5):
        started = time.monotonic()
        assert json_body(await probe.fetch("/healthz")) == {"status": "ok"}
        assert time.monotonic() - started < 0.3
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.8)
    assert all(task.done() for task in tasks) or all(r.at_eof() for r, _ in slow)
    for task in tasks:
        task.cancel()
    for _, writer in slow:
        writer.close()


class BlockingStore:
    """A memory store whose ``save`` blocks until released: it holds the only worker."""

    def __init__(self):
        from tornado_signin.store import load_store

        self.inner = load_store("memory", {})
        self.release = threading.Event()
        self.entered = threading.Event()

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def save(self, record):
        self.entered.set()
        self.release.wait(10)
        return self.inner.save(record)


async def test_a_full_worker_pool_answers_a_fast_503_before_spending_the_code(io_loop):
    store = BlockingStore()
    from tornado_signin.store import TokenStore

    TokenStore.register(BlockingStore)
    stack = await open_stack(limits={"worker_threads": 1, "worker_queue": 0}, store_instance=store)
    try:
        ctx = stack.ctx
        if ctx.store_health is not None:
            ctx.store_health.report(True)
        first = stack.client()
        login = asyncio.ensure_future(first.post_code(stack.mint("alice@example.com")))
        for _ in range(100):
            if store.entered.is_set():
                break
            await asyncio.sleep(0.02)
        assert store.entered.is_set() and ctx.workers.saturated
        page = stack.client()
        await page.fetch("/")
        socket = await page.socket()
        code = stack.mint("bob@gmail.com")
        started = time.monotonic()
        response = await page.post_code(code)
        assert time.monotonic() - started < 0.3
        assert without_state(json_body(response)) == {"error": "server busy"}
        await assert_rejected(stack, response, client=page, socket=socket, statuses={503}, token_requests=1,
                              secrets=[code])
        store.release.set()
        assert (await login).code == 200
        # The refused code was never spent: it still signs in.
        assert (await page.post_code(code)).code == 200
    finally:
        store.release.set()
        await close_stack(stack)
