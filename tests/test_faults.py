"""Faults survived, nothing lost (issue #6 §3), and the operations surface (§4), in-process.

The store faults use a switchable store; Redis faults use a redis-server
this test starts on a free port (the machine's Redis is never stopped);
PostgreSQL faults kill only this test's own server-side connections.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time

import pytest
from sqlalchemy import create_engine, text

from harness import LogCapture, json_body, start_stack, without_state
from procs import free_port, start_redis
from tornado_signin.errors import StorageError
from tornado_signin.logctx import RequestIdFilter
from tornado_signin.store import TokenStore
from tornado_signin_backends.memory import MemoryTokenStore

pytestmark = pytest.mark.gen_test(timeout=60)


class SwitchableStore(TokenStore):
    """A memory store that can be down (every call fails) or fail its next N saves only."""

    def __init__(self) -> None:
        self.inner = MemoryTokenStore()
        self.down = False
        self.failing_saves = 0
        self.save_attempts = 0

    def _gate(self) -> None:
        if self.down:
            raise StorageError("switchable store: down") from ConnectionRefusedError()

    def get(self, sub):
        self._gate()
        return self.inner.get(sub)

    def save(self, record):
        self.save_attempts += 1
        self._gate()
        if self.failing_saves:
            self.failing_saves -= 1
            raise StorageError("switchable store: write failed") from TimeoutError()
        return self.inner.save(record)

    def delete(self, sub):
        self._gate()
        return self.inner.delete(sub)

    def mark_revoked(self, sub, revoked_at, *, if_refresh_token):
        self._gate()
        return self.inner.mark_revoked(sub, revoked_at, if_refresh_token=if_refresh_token)

    def delete_if(self, sub, *, if_refresh_token):
        self._gate()
        return self.inner.delete_if(sub, if_refresh_token=if_refresh_token)

    def records(self):
        self._gate()
        return self.inner.records()

    def check(self):
        self._gate()


async def read_frame(socket, timeout: float = 10.0) -> dict:
    message = await asyncio.wait_for(socket.read_message(), timeout)
    assert message is not None, "socket closed"
    return json.loads(message)


@pytest.fixture
def switchable(io_loop):
    store = SwitchableStore()
    stack = io_loop.run_sync(lambda: start_stack(
        store_instance=store, limits={"store_check_interval": 0.2, "store_recheck_interval": 0.1}))
    yield stack, store
    io_loop.run_sync(stack.close)


async def test_store_down_before_exchange_is_503_and_the_code_stays_unspent(switchable):
    stack, store = switchable
    health = stack.ctx.store_health
    assert await health.ready()
    store.down = True
    started = time.monotonic()
    while health.up:  # the background probe notices, with no login involved
        await asyncio.sleep(0.02)
    detected = time.monotonic() - started
    print(f"store down detected by the background probe in {detected:.2f}s (interval 0.2s)")
    assert detected < 1.0
    page = stack.client()
    await page.fetch("/")
    code = stack.mint("alice@example.com")
    exchanges = stack.emulator.stats.get("token", 0)
    response = await page.post_code(code)
    assert response.code == 503 and without_state(json_body(response)) == {"error": "storage unavailable"}
    assert stack.emulator.stats.get("token", 0) == exchanges  # no outbound call: the code is unspent
    ready = await page.fetch("/healthz?ready=1")
    assert ready.code == 503 and json_body(ready)["failed"] == ["store"]
    assert (await page.fetch("/healthz")).code == 200  # liveness is not readiness
    store.down = False
    await asyncio.sleep(0.15)  # past store_recheck_interval: the next login re-probes
    response = await page.post_code(code)
    assert response.code == 200, response.body
    assert stack.store.get(json_body(response)["user"]["sub"]).refresh_token
    metrics = (await page.fetch("/metrics")).body.decode()
    assert 'signin_logins_total{outcome="store_unavailable"} 1' in metrics
    assert "signin_store_up 1" in metrics


async def test_store_write_failing_after_exchange_retries_then_fails_and_steers_to_consent(switchable):
    stack, store = switchable
    page = stack.client()
    await page.fetch("/")
    socket = await page.socket()
    store.failing_saves = 1000
    started = time.monotonic()
    response = await page.post_code(stack.mint("bob@gmail.com"))
    elapsed = time.monotonic() - started
    assert response.code == 503 and without_state(json_body(response)) == {"error": "storage unavailable"}
    assert store.save_attempts == 5, store.save_attempts  # first try + 4 retries with backoff
    assert elapsed >= 0.05 + 0.2 + 0.5 + 1.5
    frame = await read_frame(socket)
    assert frame["type"] == "failed" and frame["type"] != "signed_in"
    # The next sign-in is steered through consent, so a refresh token is obtained again.
    state = json_body(await page.fetch("/state"))
    assert state.get("prompt") == "consent"
    store.failing_saves = 0
    response = await page.post_code(stack.mint("bob@gmail.com", prompt="consent"))
    assert response.code == 200, response.body
    assert stack.store.get(json_body(response)["user"]["sub"]).refresh_token
    assert "prompt" not in json_body(await page.fetch("/state"))


async def test_transient_store_write_failure_is_retried_and_the_login_completes(switchable):
    stack, store = switchable
    page = stack.client()
    await page.fetch("/")
    socket = await page.socket()
    store.failing_saves = 2
    response = await page.post_code(stack.mint("carol@example.org"))
    assert response.code == 200, response.body
    assert store.save_attempts == 3
    assert (await read_frame(socket))["type"] == "signed_in"


@pytest.fixture
def own_redis(tmp_path, redis_url):
    """A redis-server of this test's own, on a free port (restartable)."""
    port = free_port()
    holder = {"proc": start_redis(port, tmp_path), "port": port}

    def restart() -> None:
        holder["proc"] = start_redis(port, tmp_path)

    holder["restart"] = restart
    yield holder
    holder["proc"].stop()


@pytest.mark.slow
async def test_redis_down_logins_complete_and_a_socket_learns_the_outcome_when_it_returns(own_redis, unique_name):
    hub = {"backend": "redis", "url": f"redis://127.0.0.1:{own_redis['port']}/0", "key_prefix": unique_name + ":"}
    stack_a = await start_stack(hub=hub)
    stack_b = await start_stack(hub=hub)
    try:
        page_a = stack_a.client()
        await page_a.fetch("/")
        socket_a = await page_a.socket()
        own_redis["proc"].stop()  # Redis goes away
        page_b = stack_b.client()
        page_b.cookies = dict(page_a.cookies)
        response = await page_b.post_code(stack_b.mint("alice@example.com"))
        assert response.code == 200, response.body  # the login completes (the page learns it from this answer)
        user = json_body(response)["user"]
        assert stack_b.store.get(user["sub"]).refresh_token  # and is stored
        ready = await page_b.fetch("/healthz?ready=1")
        assert ready.code == 503 and json_body(ready)["failed"] == ["hub"]
        # A socket on the process that took the POST learns it even while Redis is down.
        late_b = stack_b.client()
        late_b.cookies = dict(page_b.cookies)
        socket_b = await late_b.socket()
        assert (await read_frame(socket_b))["type"] == "signed_in"
        # Redis comes back (empty): the outcome is recorded again and reaches A's open socket.
        restarted = time.monotonic()
        own_redis["restart"]()
        frame = await read_frame(socket_a, 15)
        print(f"outcome reached the other process's socket {time.monotonic() - restarted:.2f}s after Redis restarted")
        assert without_state(frame) == {"type": "signed_in", "user": user}
        # And a socket that reconnects on A now learns it from the record.
        late_a = stack_a.client()
        late_a.cookies = dict(page_b.cookies)
        socket = await late_a.socket()
        assert without_state(await read_frame(socket)) == {"type": "signed_in", "user": user}
        assert (await page_a.fetch("/healthz?ready=1")).code == 200
        for s in (socket_a, socket_b, socket):
            s.close()
    finally:
        await stack_a.close()
        await stack_b.close()


async def test_postgres_connections_killed_mid_run_the_pool_recovers(io_loop, postgres_url, unique_name):
    store = {"backend": "sql", "url": postgres_url, "table": unique_name,
             "engine_options": {"connect_args": {"application_name": unique_name}, "pool_size": 2}}
    stack = await start_stack(store=store)
    admin = create_engine(postgres_url)
    try:
        emails = ("alice@example.com", "bob@gmail.com", "carol@example.org")
        for round_ in range(3):
            for email in emails:
                page = stack.client()
                await page.fetch("/")
                response = await page.post_code(stack.mint(email, prompt="consent"))
                assert response.code == 200, (round_, response.body)
            with admin.begin() as conn:
                killed = conn.execute(text(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE application_name = :name AND pid <> pg_backend_pid()"), {"name": unique_name}).scalar()
            assert killed >= 1
            assert (await stack.client().fetch("/healthz?ready=1")).code == 200
        assert len(list(stack.store.records())) == 3
    finally:
        await stack.close()
        with admin.begin() as conn:
            conn.execute(text(f'DROP TABLE IF EXISTS "{unique_name}"'))
        admin.dispose()


async def test_metrics_request_ids_and_readiness(io_loop):
    stack = await start_stack()
    capture = LogCapture()
    capture.addFilter(RequestIdFilter())
    capture.setFormatter(logging.Formatter("%(request_id)s %(name)s %(message)s"))
    logging.getLogger().addHandler(capture)
    old_level = logging.getLogger().level
    logging.getLogger().setLevel(logging.INFO)
    try:
        page = stack.client()
        await page.fetch("/")
        socket = await page.socket()
        response = await page.post_code(stack.mint("alice@example.com"), headers={"X-Request-Id": "lb-1234567890"})
        assert response.code == 200 and response.headers["X-Request-Id"] == "lb-1234567890"
        # A bogus incoming id is replaced, errors carry one too.
        bad = await page.post_code(b"not a code!", headers={"X-Request-Id": "bad id <script>"})
        assert bad.code in (400, 403) and len(bad.headers["X-Request-Id"]) == 16
        lines = [line for line in capture.lines if line.startswith("lb-1234567890 ")]
        assert any("user signed in" in line for line in lines), capture.lines
        assert any("tornado.access" in line for line in lines)
        assert (await page.fetch("/healthz")).code == 200
        ready = await page.fetch("/healthz?ready=1")
        assert ready.code == 200 and json_body(ready) == {"status": "ready"}
        metrics = await page.fetch("/metrics")
        assert metrics.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        body = metrics.body.decode()
        for needle in ('signin_logins_total{outcome="signed_in"} 1', "signin_exchange_seconds_bucket",
                       "signin_verify_seconds_count 1", "# TYPE signin_refresh_total counter",
                       "signin_certs_cache_total{result=", "signin_open_sockets 1", "signin_logins_in_flight 0"):
            assert needle in body, needle
        # Draining (SIGTERM): readiness fails at once, new logins get 503 before any exchange.
        stack.ctx.draining = True
        assert (await page.fetch("/healthz?ready=1")).code == 503
        assert (await page.post_code(stack.mint("bob@gmail.com"))).code == 503
        socket.close()
    finally:
        logging.getLogger().removeHandler(capture)
        logging.getLogger().setLevel(old_level)
        await stack.close()


def test_json_log_lines_carry_the_request_id():
    from tornado_signin.logctx import JsonFormatter, request_id

    token = request_id.set("rid-12345678")
    try:
        record = logging.LogRecord("tornado_signin.handlers", logging.INFO, __file__, 1, "user %s", ("x",), None)
        RequestIdFilter().filter(record)
    finally:
        request_id.reset(token)
    line = json.loads(JsonFormatter().format(record))
    assert line["request_id"] == "rid-12345678" and line["message"] == "user x" and line["level"] == "INFO"
    assert line["logger"] == "tornado_signin.handlers" and line["time"].endswith("Z")


async def test_the_store_probe_never_starts_again_once_stopped():
    # A request still served during shutdown calls ready(), which starts the probe: after stop() it must
    # not, or the probe outlives the application, pending on a loop about to close.
    from tornado_signin.health import StoreHealth
    from tornado_signin.workers import WorkerPool

    workers = WorkerPool(1, 4)
    health = StoreHealth(MemoryTokenStore(), workers, interval=0.05)
    try:
        assert await health.ready()
        running = health._task
        assert running is not None and not running.done()
        await health.stop()
        assert running.done()
        assert await health.ready() and health._task is None
        health.start()
        assert health._task is None
    finally:
        await health.stop()
        workers.shutdown()
