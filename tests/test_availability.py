"""Availability under floods (issue 12.1): a `tornado-signin serve` process whose descriptor limit is lowered.

The server runs as a subprocess with ``RLIMIT_NOFILE`` lowered to
:data:`NOFILE`; the test floods it from one cookie with more sockets than
that, and measures what an operator would: ``/healthz`` answering in time,
the server's own CPU time over the flood window, the size of its log, and a
real sign-in afterwards.
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import time
from pathlib import Path

import pytest

from harness import PageClient, json_body
from procs import Proc, free_port, get, mint, start_emulator, start_server, write_config

pytestmark = [pytest.mark.gen_test(timeout=120), pytest.mark.slow]

NOFILE = 256
HEADROOM = 64
PER_SESSION = 8
CLOCK_TICK = os.sysconf("SC_CLK_TCK")


def lower_nofile() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (NOFILE, NOFILE))


def cpu_seconds(pid: int) -> float:
    """Return the user + system CPU time process ``pid`` has used, in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICK


class Server:
    """The emulator and one app instance with a lowered descriptor limit, on a SQLite store."""

    def __init__(self, tmp: Path, **limits: object) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.emulator_url = f"http://127.0.0.1:{free_port()}"
        self.config = write_config(
            tmp, name="flood", emulator_url=self.emulator_url, origins=[self.url],
            store={"backend": "sql", "url": f"sqlite:///{tmp}/flood.sqlite3", "create_table": True},
            limits={"descriptor_reserve": HEADROOM, "sockets_per_session": PER_SESSION, "header_timeout": 10.0,
                    **limits})
        self.procs: list[Proc] = [start_emulator(tmp, self.config, int(self.emulator_url.rsplit(":", 1)[1]))]
        self.app = start_server(tmp, self.config, self.port, preexec_fn=lower_nofile)
        self.procs.append(self.app)

    def log_bytes(self) -> int:
        self.app.log_file.flush()
        return self.app.log_path.stat().st_size

    def close(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()


@pytest.fixture
def server(tmp_path):
    made: list[Server] = []

    def make(**limits: object) -> Server:
        made.append(Server(tmp_path, **limits))
        return made[-1]

    yield make
    for each in made:
        each.close()


async def first_line(reader: asyncio.StreamReader, timeout: float) -> str:
    return (await asyncio.wait_for(reader.readline(), timeout)).decode("latin1").strip()


#: The health checker is another client than the flood: it connects from another loopback address.
CHECKER = "127.0.0.2"


async def healthz(port: int, timeout: float = 2.0, source: str = CHECKER) -> tuple[int, float]:
    """GET /healthz on a fresh connection from ``source``; return (status, seconds); status 0 when it did
    not answer in time."""
    started = time.monotonic()
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0)), timeout)
        try:
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            line = await first_line(reader, timeout)
        finally:
            writer.close()
        return int(line.split()[1]), time.monotonic() - started
    except (OSError, asyncio.TimeoutError, IndexError, ValueError):
        return 0, time.monotonic() - started


async def poll_healthz(port: int, stop: asyncio.Event, results: list[tuple[int, float]]) -> None:
    while not stop.is_set():
        results.append(await healthz(port))
        await asyncio.sleep(0.2)


async def handshake(port: int, cookie: str, origin: str, hold: asyncio.Event) -> str:
    """Open a /confirm handshake with ``cookie`` and a script-set ``origin``; hold the connection until ``hold``.

    Return the status code the server answered ("101", "429", "503"...), or what went wrong.
    """
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 15)
    except (OSError, asyncio.TimeoutError) as exc:
        return type(exc).__name__
    try:
        writer.write((f"GET /confirm HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                      "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                      f"Sec-WebSocket-Version: 13\r\nOrigin: {origin}\r\nCookie: {cookie}\r\n\r\n").encode())
        line = await first_line(reader, 15)
        await hold.wait()
        return line.split()[1] if line else "closed"
    except (OSError, asyncio.TimeoutError, IndexError) as exc:
        return type(exc).__name__
    finally:
        writer.close()


async def idle(port: int, hold: asyncio.Event) -> str:
    """Open a connection that sends nothing; return what the server said ("503", "closed"...)."""
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 15)
    except (OSError, asyncio.TimeoutError) as exc:
        return type(exc).__name__
    try:
        reading = asyncio.ensure_future(reader.readline())
        await asyncio.wait([reading, asyncio.ensure_future(hold.wait())], return_when=asyncio.FIRST_COMPLETED)
        if not reading.done():
            reading.cancel()
            return "held"
        line = reading.result().decode("latin1").strip()
        return line.split()[1] if line else "closed"
    except (OSError, IndexError) as exc:
        return type(exc).__name__
    finally:
        writer.close()


async def sign_in(page: PageClient, emulator_url: str) -> dict:
    response = await page.post_code(mint(emulator_url))
    assert response.code == 200, response.body
    return json_body(response)


async def test_socket_flood_from_one_cookie_at_the_descriptor_limit(server):
    srv = server()
    page = PageClient(srv.url, srv.url)
    await page.fetch("/")
    cookie = page.cookie_header()
    cpu_before, log_before = cpu_seconds(srv.app.pid), srv.log_bytes()
    started = time.monotonic()

    # 1. Twice the descriptor limit in /confirm handshakes, one cookie, Origin set by script.
    hold, stop, health = asyncio.Event(), asyncio.Event(), []
    poller = asyncio.ensure_future(poll_healthz(srv.port, stop, health))
    flood = [asyncio.ensure_future(handshake(srv.port, cookie, srv.url, hold)) for _ in range(2 * NOFILE)]
    await asyncio.sleep(4.0)
    hold.set()
    answers = await asyncio.gather(*flood)
    stop.set()
    await poller
    window = time.monotonic() - started
    cpu = cpu_seconds(srv.app.pid) - cpu_before

    accepted = answers.count("101")
    assert accepted == PER_SESSION, sorted(set(answers))
    assert answers.count("429") + answers.count("503") >= 2 * NOFILE - PER_SESSION - 8, sorted(set(answers))
    assert health and all(status == 200 and seconds < 2.0 for status, seconds in health), health
    assert cpu < 0.5 * window, f"server used {cpu:.2f} s of CPU in {window:.2f} s"

    # 2. More idle connections than the process has descriptors: the excess gets a fast 503, not EMFILE.
    cpu_before, started = cpu_seconds(srv.app.pid), time.monotonic()
    hold = asyncio.Event()
    idlers = [asyncio.ensure_future(idle(srv.port, hold)) for _ in range(NOFILE + 64)]
    await asyncio.sleep(3.0)  # idle connections stay (header_timeout 10 s); the excess is refused
    # limits.connections_per_address (128) keeps the flooding address below the connection cap (192):
    # another client is still served; the flooding address itself gets a fast 503, never a hang.
    status, seconds = await healthz(srv.port)
    assert status == 200 and seconds < 2.0, (status, seconds)
    status, seconds = await healthz(srv.port, source="127.0.0.1")
    assert status == 503 and seconds < 2.0, (status, seconds)
    hold.set()
    idled = await asyncio.gather(*idlers)
    window = time.monotonic() - started
    cpu = cpu_seconds(srv.app.pid) - cpu_before
    assert idled.count("503") >= 64, sorted(set(idled))
    assert cpu < 0.5 * window, f"server used {cpu:.2f} s of CPU in {window:.2f} s"
    assert srv.app.proc.poll() is None

    # Afterwards (once the server has seen the idle connections go): healthy, ready, and a real sign-in
    # works; the log stayed small.
    deadline = time.monotonic() + 5
    while (await healthz(srv.port))[0] != 200:
        assert time.monotonic() < deadline, "/healthz did not come back"
        await asyncio.sleep(0.1)
    assert get(srv.url + "/healthz?ready=1")[0] == 200
    body = await sign_in(page, srv.emulator_url)
    assert body["status"] == "signed_in"
    grown = srv.log_bytes() - log_before
    assert grown < 32 * 1024, f"the log grew {grown} bytes"
    assert "Traceback" not in srv.app.log()
    metrics = get(srv.url + "/metrics")[1].decode()
    assert 'signin_sockets_refused_total{cap="session"}' in metrics
    assert 'signin_connections_refused_total{reason="address"}' in metrics
    assert json.loads(get(srv.url + "/healthz")[1]) == {"status": "ok"}


async def test_accept_errors_at_the_descriptor_limit_are_backed_off_and_logged_once(server):
    """No headroom (limits.descriptor_reserve: 0): accept() itself fails with EMFILE. It must pause, not spin."""
    srv = server(descriptor_reserve=0, connections_per_address=0, header_timeout=2.0)
    cpu_before, log_before, started = cpu_seconds(srv.app.pid), srv.log_bytes(), time.monotonic()
    hold = asyncio.Event()
    idlers = [asyncio.ensure_future(idle(srv.port, hold)) for _ in range(NOFILE + 64)]
    await asyncio.sleep(3.0)
    hold.set()
    await asyncio.gather(*idlers)
    window = time.monotonic() - started
    cpu = cpu_seconds(srv.app.pid) - cpu_before
    assert cpu < 0.5 * window, f"server used {cpu:.2f} s of CPU in {window:.2f} s"
    log = srv.app.log()
    assert 1 <= log.count("accept() failed: Too many open files (EMFILE)") <= 2, log[-2000:]
    assert "Traceback" not in log and "Exception in callback" not in log
    assert srv.log_bytes() - log_before < 64 * 1024
    deadline = time.monotonic() + 10
    while (await healthz(srv.port))[0] != 200:
        assert time.monotonic() < deadline, "/healthz did not come back"
        await asyncio.sleep(0.2)
    assert srv.app.proc.poll() is None


# -- 12.2 in one process (the memory hub) ---------------------------------------------------------------

@pytest.fixture
def stack(io_loop):
    from harness import start_stack

    made = []

    async def make(**overrides):
        made.append(await start_stack(**overrides))
        return made[-1]

    yield make
    for each in made:
        io_loop.run_sync(each.close)


async def test_cheap_requests_have_per_client_budgets(stack):
    app = await stack(limits={"state_requests_per_minute": 10, "signout_posts_per_minute": 3,
                        "disconnect_posts_per_minute": 2, "socket_handshakes_per_minute": 4})
    page = app.client()
    codes = [(await page.fetch("/state")).code for _ in range(12)]
    assert codes == [200] * 10 + [429] * 2
    assert (await page.fetch("/")).code == 429  # the page issues a state too: same budget
    other = app.client()
    other.http = page.http
    assert (await other.fetch("/state")).code == 429  # the budget is the address's, not the cookie's
    for path, budget in (("/signout", 3), ("/disconnect", 2)):
        answers = [(await page.fetch(path, method="POST", body=b"", headers=page.gate_headers("x.1.y"))).code
                   for _ in range(budget + 2)]
        assert answers == [403] * budget + [429] * 2, (path, answers)
    sockets = []
    for _ in range(6):
        try:
            sockets.append(await page.socket())
        except Exception as exc:
            sockets.append(getattr(exc, "code", 0))
    assert [s for s in sockets if isinstance(s, int)] == [429, 429]
    metrics = (await page.fetch("/metrics")).body.decode()
    assert 'signin_rate_limited_total{budget="state"} 4.0' in metrics


async def test_state_and_signout_pairs_leave_the_memory_hub_bounded(stack):
    app = await stack(limits={"state_requests_per_minute": 0, "signout_posts_per_minute": 0})
    hub = app.ctx.hub
    pages = [app.client() for _ in range(4)]

    async def pairs(page, count):
        for _ in range(count):
            state = await page.state()
            response = await page.fetch("/signout", method="POST", body=b"", headers=page.gate_headers(state))
            assert response.code == 200, response.body

    await asyncio.gather(*(pairs(page, 500) for page in pages))
    from tornado_signin.hub import LocalStates, _in_process

    # 2,000 sessions came and went: no state, no record and no marker is left behind.
    assert len(_in_process(hub, LocalStates)) == 0
    assert len(hub._records) == 0 and len(hub._consumed) == 0 and len(hub._sessions) == 0
    # One session holds at most limits.states_per_session (8) outstanding states.
    page = app.client()
    for _ in range(30):
        await page.state()
    assert len(_in_process(hub, LocalStates)) == 8
