"""KeepAliveClient (tornado_signin/http_client.py) held to its module docstring's contract.

Every server here is a real asyncio server on 127.0.0.1, written to misbehave on purpose, and it counts
what it saw from its side of the socket: connections accepted, requests read (with their bytes), and
connections the client closed. So "one connection", "sent exactly once more" and "not reused afterwards"
are checked where they happen, not in the client's internals. The last tests drive GoogleClient through
the same failures (its ``_fetch`` maps them to the product's errors).

Every test runs with DEBUG logging captured and fails on any record at ERROR or above (asyncio's
"Exception in callback", "Task was destroyed but it is pending", a protocol callback that raised).
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import gc
import gzip
import ipaddress
import logging
import socket
import ssl
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tornado_signin.config import GoogleConfig, GoogleEndpoints
from tornado_signin.errors import GoogleProtocolError, GoogleUnavailableError
from tornado_signin.google import GoogleClient, transport_reason
from tornado_signin.http_client import KeepAliveClient, MalformedReply, ProxyError, ReplyTooLarge

pytestmark = pytest.mark.gen_test(timeout=10)

#: What a timing assertion allows beyond its deadline (a loaded 2-core machine).
SLACK = 0.4


# -- the servers ----------------------------------------------------------------------------------------


@dataclass
class Seen:
    """One request as the server read it."""

    connection: int  # which connection, in accept order (0 is the first)
    index: int  # its place on that connection (0: the connection's first request)
    head: bytes
    body: bytes

    @property
    def path(self) -> str:
        return self.head.split(b" ", 2)[1].decode()


CLOSE = "close"  # a responder's return value: close the connection after this request
Responder = Callable[[Seen, asyncio.StreamReader, asyncio.StreamWriter], Awaitable[object]]


class Server:
    """An HTTP/1.1 server on 127.0.0.1 whose answer to each request is ``respond(seen, reader, writer)``."""

    def __init__(self, respond: Responder, *, tls: ssl.SSLContext | None = None) -> None:
        self.respond = respond
        self.tls = tls
        self.connections = 0
        self.requests: list[Seen] = []
        self.client_closes = 0  # connections on which the server read the client's end (EOF or reset)
        self._tasks: set[asyncio.Task] = set()

    async def __aenter__(self) -> Server:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.tls)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.server.wait_closed()

    def url(self, path: str = "/t", host: str = "127.0.0.1") -> str:
        return f"{'https' if self.tls else 'http'}://{host}:{self.port}{path}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        number, self.connections = self.connections, self.connections + 1
        try:
            for index in range(1000):
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except asyncio.IncompleteReadError:
                    self.client_closes += 1
                    return
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                seen = Seen(number, index, head, await reader.readexactly(length))
                self.requests.append(seen)
                if await self.respond(seen, reader, writer) == CLOSE:
                    return
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            self.client_closes += 1
        except asyncio.CancelledError:
            pass  # stopped by __aexit__: end normally, or asyncio's stream protocol logs the cancelled task
        finally:
            self._tasks.discard(task)
            writer.close()


def answer(body: bytes = b"ok", status: str = "200 OK", headers: tuple[str, ...] = (),
           version: str = "HTTP/1.1") -> bytes:
    """A reply with a Content-Length (unless ``headers`` frame it otherwise)."""
    lines = [f"{version} {status}", *headers]
    if not any(h.lower().startswith(("content-length:", "transfer-encoding:")) for h in headers):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def ok(seen: Seen, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(answer(seen.path.encode()))


async def silent(seen: Seen, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Read the request, never answer; the client's close is counted (client_closes)."""
    await reader.read()


def sends(data: bytes, then: str | None = None) -> Responder:
    """A responder that writes ``data`` (then closes if ``then`` is CLOSE)."""

    async def respond(seen: Seen, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> str | None:
        writer.write(data)
        await writer.drain()
        return then

    return respond


async def until(predicate: Callable[[], bool], timeout: float = 2.0) -> None:
    """Wait until ``predicate()`` holds; fail after ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        assert loop.time() < deadline, "timed out waiting for the condition"
        await asyncio.sleep(0.005)


def free_port() -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# -- fixtures ---------------------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def no_error_logs(caplog):
    """Capture everything at DEBUG; fail on any record at ERROR or above, asyncio's included.

    Set up before pytest-tornado's io_loop and torn down after it: a task left pending is reported
    ("Task was destroyed but it is pending") when the closed loop's tasks are collected here.
    """
    caplog.set_level(logging.DEBUG)
    yield caplog
    gc.collect()
    records = [r for phase in ("setup", "call", "teardown") for r in caplog.get_records(phase)]
    bad = [r for r in records if r.levelno >= logging.ERROR
           or "Task was destroyed" in r.getMessage() or "Exception in callback" in r.getMessage()]
    assert not bad, [f"{r.name}: {r.getMessage()}" for r in bad]


@pytest.fixture
def make_client(io_loop):
    """KeepAliveClient(**options); every one made is closed after the test, on its still open loop."""
    clients: list[KeepAliveClient] = []

    def make(**options) -> KeepAliveClient:
        clients.append(KeepAliveClient(**options))
        return clients[-1]

    yield make
    for client in clients:
        client.close()
    io_loop.run_sync(lambda: asyncio.sleep(0.01))  # the transports' connection_lost callbacks run


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> dict[str, tuple[Path, Path]]:
    """Self-signed certificates (cert, key): for 127.0.0.1 and localhost, and for other names only."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    folder = tmp_path_factory.mktemp("certs")
    now = datetime.datetime.now(datetime.timezone.utc)
    made = {}
    for label, dns, ips in (("loopback", ["localhost"], ["127.0.0.1"]),
                            ("other", ["other.example"], ["127.0.0.2"])):
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, dns[0])])
        sans = [x509.DNSName(d) for d in dns] + [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
        cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(minutes=5))
                .not_valid_after(now + datetime.timedelta(days=1))
                .add_extension(x509.SubjectAlternativeName(sans), critical=False)
                .sign(key, hashes.SHA256()))
        cert_path, key_path = folder / f"{label}-cert.pem", folder / f"{label}-key.pem"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
        made[label] = (cert_path, key_path)
    return made


def server_tls(cert: tuple[Path, Path]) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*cert)
    return context


# -- keep-alive and the connection limit -----------------------------------------------------------------


async def test_sequential_requests_reuse_one_connection(make_client):
    client = make_client()
    async with Server(ok) as server:
        for n in range(5):
            reply = await client.request("GET", server.url(f"/n{n}"))
            assert (reply.code, reply.body, reply.url) == (200, f"/n{n}".encode(), server.url(f"/n{n}"))
    assert server.connections == 1
    assert [(s.connection, s.index) for s in server.requests] == [(0, i) for i in range(5)]


async def test_concurrent_requests_open_at_most_max_connections_and_the_rest_wait(make_client):
    async def slow(seen, reader, writer):
        await asyncio.sleep(0.05)
        writer.write(answer(seen.path.encode()))

    client = make_client(max_connections=2)
    async with Server(slow) as server:
        replies = await asyncio.gather(*(client.request("GET", server.url(f"/r{i}")) for i in range(7)))
    assert [r.body for r in replies] == [f"/r{i}".encode() for i in range(7)]
    assert server.connections == 2
    assert len(server.requests) == 7


async def test_request_timeout_covers_waiting_for_a_slot(make_client):
    gate = asyncio.Event()

    async def held(seen, reader, writer):
        await gate.wait()
        writer.write(answer())

    client = make_client(max_connections=1)
    loop = asyncio.get_running_loop()
    async with Server(held) as server:
        first = asyncio.ensure_future(client.request("GET", server.url(), request_timeout=5))
        await until(lambda: len(server.requests) == 1)
        started = loop.time()
        with pytest.raises(TimeoutError):
            await client.request("GET", server.url("/second"), request_timeout=0.2)
        assert 0.15 <= loop.time() - started <= 0.2 + SLACK
        assert len(server.requests) == 1, "the waiting request was never sent"
        gate.set()
        assert (await first).code == 200
    assert server.connections == 1


async def test_a_waiter_cancelled_after_it_was_handed_the_slot_passes_it_on(make_client):
    """One slot, two waiters: the first is woken (handed the freed slot) and cancelled before it runs; the
    second gets the slot at once, not at its deadline."""
    gate = asyncio.Event()

    async def held(seen, reader, writer):
        if seen.path == "/held":
            await gate.wait()
        writer.write(answer())

    client = make_client(max_connections=1)
    loop = asyncio.get_running_loop()
    async with Server(held) as server:
        holder = asyncio.ensure_future(client.request("GET", server.url("/held"), request_timeout=5))
        await until(lambda: len(server.requests) == 1)
        first = asyncio.ensure_future(client.request("GET", server.url("/first"), request_timeout=5))
        second = asyncio.ensure_future(client.request("GET", server.url("/second"), request_timeout=5))
        await asyncio.sleep(0.05)  # both wait for the slot
        (origin,) = client._origins.values()
        assert len(origin.waiters) == 2
        woken, wake = origin.waiters[0], origin._wake

        def wake_then_cancel() -> None:
            wake()  # the held reply freed the slot and handed it to the first waiter ...
            if woken.done():
                first.cancel()  # ... which is cancelled in the same step, before it runs
                origin._wake = wake

        origin._wake = wake_then_cancel
        started = loop.time()
        gate.set()
        assert (await holder).code == 200
        assert (await second).code == 200
        assert loop.time() - started < 1.0, "the second waiter waited for its deadline"
        with pytest.raises(asyncio.CancelledError):
            await first
    assert [r.path for r in server.requests] == ["/held", "/second"]


# -- framing -------------------------------------------------------------------------------------------


async def test_content_length_body_read_in_pieces(make_client):
    body = bytes(range(256)) * 400  # ~100 KB: several reads

    async def trickle(seen, reader, writer):
        data = answer(body, headers=("X-Kind: bytes",))
        head = data[:-len(body)]
        for i in range(len(head)):  # the head byte by byte: headers split across reads
            writer.write(head[i:i + 1])
            await writer.drain()
            await asyncio.sleep(0.001)
        writer.write(body)

    client = make_client()
    async with Server(trickle) as server:
        for _ in range(2):
            reply = await client.request("GET", server.url())
            assert (reply.code, reply.body, reply.headers["X-Kind"]) == (200, body, "bytes")
    assert server.connections == 1


async def test_chunked_body_and_the_connection_is_kept(make_client):
    async def chunked(seen, reader, writer):
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        for piece in (b"5\r\nhello\r\n", b"6\r\n world\r\n", b"0\r\nX-Trailer: t\r\n\r\n"):
            await writer.drain()
            await asyncio.sleep(0.01)
            writer.write(piece)

    client = make_client()
    async with Server(chunked) as server:
        for _ in range(2):
            assert (await client.request("GET", server.url())).body == b"hello world"
    assert server.connections == 1


async def test_body_delimited_by_connection_close(make_client):
    async def until_close(seen, reader, writer):
        writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\npart one, ")
        await writer.drain()
        await asyncio.sleep(0.02)
        writer.write(b"part two")
        return CLOSE

    client = make_client()
    async with Server(until_close) as server:
        assert (await client.request("GET", server.url())).body == b"part one, part two"
        assert (await client.request("GET", server.url())).body == b"part one, part two"
    assert server.connections == 2


async def test_connection_close_reply_is_not_reused(make_client):
    # The server sends "Connection: close" but leaves the socket open: the client must close it.
    client = make_client()
    async with Server(sends(answer(headers=("Connection: close",)))) as server:
        assert (await client.request("GET", server.url())).body == b"ok"
        await until(lambda: server.client_closes == 1)
        assert (await client.request("GET", server.url())).body == b"ok"
    assert server.connections == 2


async def test_100_continue_before_the_real_reply(make_client):
    async def interim(seen, reader, writer):
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(0.02)
        writer.write(answer(b"real", status="201 Created", headers=("X-Real: yes",)))

    client = make_client()
    async with Server(interim) as server:
        for _ in range(2):
            reply = await client.request("POST", server.url(), body=b"x")
            assert (reply.code, reply.body, reply.headers.get("X-Real")) == (201, b"real", "yes")
    assert server.connections == 1


async def test_a_close_after_an_interim_reply_fails_at_once(make_client):
    client = make_client()
    loop = asyncio.get_running_loop()
    async with Server(sends(b"HTTP/1.1 100 Continue\r\n\r\n", CLOSE)) as server:
        started = loop.time()
        with pytest.raises(ConnectionResetError):
            await client.request("POST", server.url(), body=b"x", request_timeout=3)
        assert loop.time() - started < 1.0, "waited for the deadline instead of failing on the close"
    assert len(server.requests) == 1


@pytest.mark.parametrize("data", [
    b"HTTP/1.1 200 OK\r\nContent-Type: text/pl",  # headers cut off
    b"HTTP/1.1 2",  # status line cut off
    b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n12345",  # body shorter than its length
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel",  # chunked, cut off
], ids=["headers", "status", "content-length", "chunked"])
async def test_a_reply_cut_off_by_the_close_is_an_error_not_a_reply(make_client, data):
    client = make_client()
    async with Server(sends(data, CLOSE)) as server:
        with pytest.raises(ConnectionResetError, match="before the end of its reply"):
            await client.request("GET", server.url(), request_timeout=3)
    assert len(server.requests) == 1, "not retried: part of a reply came"


async def test_http10_replies(make_client):
    replies = iter([answer(b"with length", version="HTTP/1.0"), b"HTTP/1.0 200 OK\r\n\r\nuntil close"])

    async def http10(seen, reader, writer):
        data = next(replies)
        writer.write(data)
        # The first leaves the socket open: HTTP/1.0 without "keep-alive" is not reused all the same.
        return None if b"Content-Length" in data else CLOSE

    client = make_client()
    async with Server(http10) as server:
        assert (await client.request("GET", server.url())).body == b"with length"
        assert (await client.request("GET", server.url())).body == b"until close"
        await until(lambda: server.client_closes == 1)
    assert server.connections == 2


# -- content encoding and size limits --------------------------------------------------------------------


async def test_gzip_reply_is_decoded(make_client):
    plain = b'{"access_token": "x"}' * 200
    client = make_client()
    async with Server(sends(answer(gzip.compress(plain), headers=("Content-Encoding: gzip",)))) as server:
        for _ in range(2):
            assert (await client.request("GET", server.url())).body == plain
    assert server.connections == 1


@pytest.mark.parametrize("body", [
    b"\x1f\x8b\x08\x00" + b"not deflate at all" * 4,
    gzip.compress(b"A" * 5000)[:-8],  # the CRC and size trailer missing
    gzip.compress(b"A" * 5000)[:20],  # most of the stream missing
], ids=["garbage", "no-trailer", "truncated"])
async def test_corrupt_gzip_is_a_malformed_reply(make_client, body):
    client = make_client()
    async with Server(sends(answer(body, headers=("Content-Encoding: gzip",)))) as server:
        with pytest.raises(MalformedReply, match="corrupt gzip"):
            await client.request("GET", server.url())
        await until(lambda: server.client_closes == 1)


async def test_unsupported_content_encoding_is_a_malformed_reply(make_client):
    client = make_client()
    async with Server(sends(answer(b"\x0b\x02\x80ok\x03", headers=("Content-Encoding: br",)))) as server:
        with pytest.raises(MalformedReply, match="unsupported content encoding") as caught:
            await client.request("GET", server.url())
        assert not isinstance(caught.value, ReplyTooLarge)
        await until(lambda: server.client_closes == 1)


async def test_a_body_over_max_body_is_too_large_and_the_connection_is_dropped(make_client):
    bodies = iter([b"x" * 1000, b"x" * 1001, b"after"])

    async def sized(seen, reader, writer):
        writer.write(answer(next(bodies)))

    client = make_client(max_body=1000)
    async with Server(sized) as server:
        assert len((await client.request("GET", server.url())).body) == 1000  # the limit itself is fine
        with pytest.raises(ReplyTooLarge):
            await client.request("GET", server.url())
        await until(lambda: server.client_closes == 1)
        assert (await client.request("GET", server.url())).body == b"after"
    assert [s.connection for s in server.requests] == [0, 0, 1]


async def test_a_gzip_bomb_is_too_large_and_the_connection_is_dropped(make_client):
    bomb = gzip.compress(b"\0" * 10_000_000)  # ~10 KB on the wire
    assert len(bomb) < 64 * 1024
    bodies = iter([answer(bomb, headers=("Content-Encoding: gzip",)), answer(b"after")])

    async def respond(seen, reader, writer):
        writer.write(next(bodies))

    client = make_client(max_body=64 * 1024)
    async with Server(respond) as server:
        with pytest.raises(ReplyTooLarge):
            await client.request("GET", server.url())
        await until(lambda: server.client_closes == 1)
        assert (await client.request("GET", server.url())).body == b"after"
    assert [s.connection for s in server.requests] == [0, 1]


# -- bytes that are not a reply to the request --------------------------------------------------------


async def test_garbage_instead_of_http_is_a_malformed_reply(make_client):
    client = make_client()
    async with Server(sends(b"SSH-2.0-OpenSSH_9.2p1 Debian\r\n\r\n")) as server:
        with pytest.raises(MalformedReply, match="malformed HTTP reply"):
            await client.request("GET", server.url())
        await until(lambda: server.client_closes == 1)
    assert len(server.requests) == 1


async def test_unsolicited_bytes_drop_the_idle_connection(make_client):
    wrote = asyncio.Event()

    async def chatty(seen, reader, writer):
        writer.write(answer())
        if seen.connection == 0:
            await writer.drain()
            await asyncio.sleep(0.02)
            writer.write(answer(b"nobody asked"))  # on the idle connection
            wrote.set()

    client = make_client()
    async with Server(chatty) as server:
        assert (await client.request("GET", server.url())).body == b"ok"
        await wrote.wait()
        await until(lambda: server.client_closes == 1)  # the client dropped it on receipt
        assert (await client.request("GET", server.url())).body == b"ok"
    assert [s.connection for s in server.requests] == [0, 1]


async def test_a_second_reply_in_the_same_read_drops_the_connection(make_client):
    async def twice(seen, reader, writer):
        writer.write(answer(b"one") + (answer(b"two") if seen.connection == 0 else b""))

    client = make_client()
    async with Server(twice) as server:
        assert (await client.request("GET", server.url())).body == b"one"
        await until(lambda: server.client_closes == 1)
        replies = await asyncio.gather(*(client.request("GET", server.url()) for _ in range(3)))
        assert [r.body for r in replies] == [b"one"] * 3
    assert 0 not in [s.connection for s in server.requests[1:]], "the connection that sent unasked was reused"


# -- connections the server closes ------------------------------------------------------------------


async def test_an_idle_connection_the_server_closed_is_replaced(make_client):
    client = make_client()
    async with Server(sends(answer(), CLOSE)) as server:  # no "Connection: close": it just hangs up
        assert (await client.request("GET", server.url())).body == b"ok"
        await asyncio.sleep(0.05)
        assert (await client.request("GET", server.url())).body == b"ok"
    assert [s.connection for s in server.requests] == [0, 1]


async def test_a_reused_connection_closed_without_reply_is_sent_once_more(make_client):
    async def hang_up_on_reuse(seen, reader, writer):
        if seen.index > 0:
            return CLOSE  # read the request, then closed as if it had been idle too long
        writer.write(answer(seen.body))

    client = make_client()
    async with Server(hang_up_on_reuse) as server:
        assert (await client.request("POST", server.url(), body=b"first")).body == b"first"
        assert (await client.request("POST", server.url(), body=b"second")).body == b"second"
    assert [(s.connection, s.index, s.body) for s in server.requests] == [
        (0, 0, b"first"), (0, 1, b"second"), (1, 0, b"second")]


async def test_the_resend_goes_on_a_new_connection_not_another_idle_one(make_client):
    async def hang_up_on_reuse(seen, reader, writer):
        if seen.index > 0:
            return CLOSE
        await asyncio.sleep(0.05)  # the first two overlap: two connections
        writer.write(answer(seen.body))

    client = make_client(max_connections=2)
    async with Server(hang_up_on_reuse) as server:
        await asyncio.gather(*(client.request("POST", server.url(), body=b"warm") for _ in range(2)))
        assert server.connections == 2
        assert (await client.request("POST", server.url(), body=b"again")).body == b"again"
    again = [(s.connection, s.index) for s in server.requests if s.body == b"again"]
    assert len(again) == 2, "sent exactly once more"
    assert again[1] == (2, 0), "the resend went on a new connection"


async def reset(seen: Seen, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> str:
    """Read the request, then reset the connection (RST: SO_LINGER 0) instead of answering."""
    writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()
    return CLOSE


async def test_a_reset_is_resent_on_a_reused_connection_only(make_client):
    async def reset_on_reuse(seen, reader, writer):
        if seen.index > 0 or seen.path == "/reset":
            return await reset(seen, reader, writer)
        writer.write(answer(seen.body))

    client = make_client()
    async with Server(reset_on_reuse) as server:
        assert (await client.request("POST", server.url(), body=b"first")).body == b"first"
        assert (await client.request("POST", server.url(), body=b"second")).body == b"second"
        assert [(s.connection, s.body) for s in server.requests] == [(0, b"first"), (0, b"second"), (1, b"second")]
        with pytest.raises(ConnectionResetError) as caught:  # on a new connection: not resent
            await make_client().request("POST", server.url("/reset"), body=b"code=once")
    assert [s.body for s in server.requests].count(b"code=once") == 1
    assert transport_reason(caught.value, server.url()) == f"connection to 127.0.0.1:{server.port} broken"


async def test_a_new_connection_closed_without_reply_is_not_retried(make_client):
    client = make_client()
    async with Server(sends(b"", CLOSE)) as server:
        with pytest.raises(ConnectionResetError, match="closed the connection without a reply"):
            await client.request("POST", server.url(), body=b"code=once")
    assert len(server.requests) == 1
    assert server.connections == 1


# -- connect failures and deadlines ----------------------------------------------------------------


async def test_connect_refused(make_client):
    with pytest.raises(ConnectionRefusedError):
        await make_client().request("GET", f"http://127.0.0.1:{free_port()}/t")


async def test_a_server_that_never_answers_times_out_and_the_connection_is_closed(make_client):
    client = make_client()
    loop = asyncio.get_running_loop()
    async with Server(silent) as server:
        started = loop.time()
        with pytest.raises(TimeoutError):
            await client.request("GET", server.url(), request_timeout=0.3)
        assert 0.25 <= loop.time() - started <= 0.3 + SLACK
        await until(lambda: server.client_closes == 1, timeout=1.0)


async def test_connect_timeout_bounds_a_tls_handshake_that_never_completes(make_client):
    client = make_client()
    loop = asyncio.get_running_loop()
    async with Server(silent) as server:  # plain TCP: never answers the ClientHello
        url = server.url().replace("http://", "https://")
        started = loop.time()
        with pytest.raises(TimeoutError):
            await client.request("GET", url, connect_timeout=0.2, request_timeout=5)
        assert 0.15 <= loop.time() - started <= 0.2 + SLACK
        await until(lambda: server.client_closes == 1, timeout=1.0)
    assert server.requests == []


async def test_connect_timeout_bounds_a_connect_to_a_full_backlog(make_client):
    client = make_client()
    loop = asyncio.get_running_loop()
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)  # never accepted: once the queue is full, SYNs are dropped
        address = listener.getsockname()
        fillers = []
        try:
            for _ in range(4):
                filler = socket.socket()
                filler.setblocking(False)
                filler.connect_ex(address)
                fillers.append(filler)
            started = loop.time()
            with pytest.raises(TimeoutError):
                await client.request("GET", f"http://127.0.0.1:{address[1]}/t", connect_timeout=0.2,
                                     request_timeout=5)
            assert 0.15 <= loop.time() - started <= 0.2 + SLACK
        finally:
            for filler in fillers:
                filler.close()


# -- TLS ------------------------------------------------------------------------------------------


async def test_tls_self_signed_is_not_trusted(make_client, certs):
    async with Server(ok, tls=server_tls(certs["loopback"])) as server:
        with pytest.raises(ssl.SSLCertVerificationError) as caught:
            await make_client().request("GET", server.url())
    assert transport_reason(caught.value, server.url()).startswith(
        "TLS: the certificate of 127.0.0.1 is not trusted")
    assert server.requests == []


async def test_tls_with_a_context_that_trusts_the_cert_works_and_keeps_alive(make_client, certs):
    client = make_client(ssl_context=ssl.create_default_context(cafile=str(certs["loopback"][0])))
    async with Server(ok, tls=server_tls(certs["loopback"])) as server:
        for host in ("127.0.0.1", "localhost"):
            for _ in range(3):
                assert (await client.request("GET", server.url("/tls", host=host))).body == b"/tls"
    assert server.connections == 2  # one per origin


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
async def test_tls_a_cert_for_another_name(make_client, certs, host):
    client = make_client(ssl_context=ssl.create_default_context(cafile=str(certs["other"][0])))
    async with Server(ok, tls=server_tls(certs["other"])) as server:
        with pytest.raises(ssl.SSLCertVerificationError) as caught:
            await client.request("GET", server.url(host=host))
    assert transport_reason(caught.value, server.url(host=host)) == (
        f"TLS: the certificate of {host} is not valid for that name")


# -- headers ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("headers", [
    {"X-Note": "a\r\nInjected: yes"}, {"X-Note": "a\nInjected: yes"}, {"X-Note": "a\rInjected: yes"},
    {"X-Note\r\nInjected": "yes"},
])
async def test_a_header_holding_a_line_break_is_refused_before_anything_is_sent(make_client, headers):
    client = make_client()
    async with Server(ok) as server:
        with pytest.raises(ValueError, match="line break"):
            await client.request("GET", server.url(), headers=headers)
        await asyncio.sleep(0.05)
        assert server.connections == 0
        assert (await client.request("GET", server.url(), headers={"X-Note": "fine"})).code == 200
    assert len(server.requests) == 1
    assert b"Injected" not in server.requests[0].head and b"X-Note: fine\r\n" in server.requests[0].head


async def test_reply_headers_are_case_insensitive_and_keep_repeats(make_client):
    reply_bytes = answer(headers=("Set-Cookie: a=1", "set-cookie: b=2", "X-Mixed-Case: v", "Cache-Control: max-age=9"))
    async with Server(sends(reply_bytes)) as server:
        reply = await make_client().request("GET", server.url())
    assert reply.headers.get_list("Set-Cookie") == ["a=1", "b=2"]
    assert reply.headers["x-mixed-case"] == reply.headers["X-MIXED-CASE"] == "v"
    assert reply.headers["cache-control"] == "max-age=9"


async def test_request_headers_and_body_are_sent_as_given(make_client):
    async with Server(ok) as server:
        await make_client().request("POST", server.url("/token?x=1"), body=b"a=b&c=d",
                                    headers={"Content-Type": "application/x-www-form-urlencoded"})
    head = server.requests[0].head
    assert head.startswith(b"POST /token?x=1 HTTP/1.1\r\n")
    assert f"\r\nHost: 127.0.0.1:{server.port}\r\n".encode() in head
    assert b"\r\nContent-Type: application/x-www-form-urlencoded\r\n" in head
    assert b"\r\nContent-Length: 7\r\n" in head and server.requests[0].body == b"a=b&c=d"


# -- close, cancellation, idle_timeout -------------------------------------------------------------------


async def test_close_fails_requests_in_flight_and_closes_idle_connections(make_client):
    client = make_client(max_connections=1)
    loop = asyncio.get_running_loop()
    async with Server(ok) as idle, Server(silent) as held, Server(silent) as no_handshake:
        assert (await client.request("GET", idle.url())).code == 200  # now idle
        sent = asyncio.ensure_future(client.request("GET", held.url(), request_timeout=5))
        await until(lambda: len(held.requests) == 1)
        waiting = asyncio.ensure_future(client.request("GET", held.url(), request_timeout=5))  # for a slot
        connecting = asyncio.ensure_future(client.request(  # a TLS handshake that never ends
            "GET", no_handshake.url().replace("http://", "https://"), connect_timeout=5, request_timeout=5))
        await until(lambda: no_handshake.connections == 1)
        await asyncio.sleep(0.02)
        started = loop.time()
        client.close()
        for future in (sent, waiting, connecting):
            with pytest.raises(ConnectionAbortedError):
                await future
        assert loop.time() - started < 1.0
        await until(lambda: idle.client_closes == 1 and held.client_closes == 1 and no_handshake.client_closes == 1)
        assert len(held.requests) == 1, "the waiting request was never sent"


async def test_a_cancelled_request_frees_its_connection_slot(make_client):
    async def hang_on_slow(seen, reader, writer):
        if seen.path == "/slow":
            return await silent(seen, reader, writer)
        writer.write(answer())

    client = make_client(max_connections=1)
    async with Server(hang_on_slow) as server:
        task = asyncio.ensure_future(client.request("GET", server.url("/slow"), request_timeout=5))
        await until(lambda: len(server.requests) == 1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await until(lambda: server.client_closes == 1)  # no deadline guards it any more: closed
        assert (await client.request("GET", server.url("/fast"), request_timeout=1)).code == 200
    assert server.connections == 2


@pytest.mark.parametrize("idle_timeout, connections", [(0.1, 2), (5.0, 1)])
async def test_a_connection_idle_longer_than_idle_timeout_is_not_reused(make_client, idle_timeout, connections):
    client = make_client(idle_timeout=idle_timeout)
    async with Server(ok) as server:
        await client.request("GET", server.url())
        await asyncio.sleep(0.2)
        await client.request("GET", server.url())
        await until(lambda: server.client_closes == connections - 1)  # the stale one, closed by the client
    assert server.connections == connections


# -- logging ----------------------------------------------------------------------------------------


async def test_the_debug_line_names_method_origin_path_status_and_size_only(make_client, no_error_logs):
    reply_bytes = answer(b"RESPONSE-SECRET", headers=("X-Echo: HEADER-SECRET",))
    async with Server(sends(reply_bytes)) as server:
        await make_client().request("POST", server.url("/token?q=QUERY-SECRET"), body=b"code=BODY-SECRET",
                                    headers={"Authorization": "Bearer TOKEN-SECRET"})
    lines = [r.getMessage() for r in no_error_logs.records if r.name == "tornado_signin.http_client"]
    assert lines == [f"POST http://127.0.0.1:{server.port}/token -> 200 (15 bytes)"]
    everything = "\n".join(r.getMessage() for r in no_error_logs.records)
    for secret in ("RESPONSE", "HEADER", "QUERY", "BODY", "TOKEN"):
        assert f"{secret}-SECRET" not in everything


# -- proxies from the environment ------------------------------------------------------------------------


CONNECTED = b"HTTP/1.1 200 Connection established\r\n\r\n"


class Proxy:
    """A forward proxy on 127.0.0.1 that counts what it saw from the client.

    A CONNECT gets ``connect_reply`` (None: never answered); after a 2xx the bytes are piped both ways to
    the target named. An absolute-form request (``GET http://host:port/path``) opens a connection to its
    host (once per client connection, kept for the next requests) and is passed on in origin form
    (``GET /path``), as a real proxy does; replies are piped back.
    """

    def __init__(self, connect_reply: bytes | None = CONNECTED) -> None:
        self.connect_reply = connect_reply
        self.connections = 0
        self.heads: list[bytes] = []  # every request head read from a client: CONNECTs and forwarded ones
        self.client_closes = 0
        self._tasks: set[asyncio.Task] = set()

    async def __aenter__(self) -> Proxy:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.name = f"127.0.0.1:{self.port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.connections += 1
        upstream: asyncio.StreamWriter | None = None
        pipes: list[asyncio.Task] = []
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except asyncio.IncompleteReadError:
                    self.client_closes += 1
                    return
                self.heads.append(head)
                method, target, _ = head.split(b"\r\n", 1)[0].split(b" ", 2)
                if method == b"CONNECT":
                    if self.connect_reply is None:
                        await reader.read()
                        self.client_closes += 1
                        return
                    writer.write(self.connect_reply)
                    await writer.drain()
                    if not self.connect_reply.split(b" ", 2)[1].startswith(b"2"):
                        return
                    host, _, port = target.decode().rpartition(":")
                    up_reader, upstream = await asyncio.open_connection(host, int(port))
                    await asyncio.gather(pipe(reader, upstream), pipe(up_reader, writer))
                    return
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                body = await reader.readexactly(length)
                parts = urlsplit(target.decode())
                assert parts.scheme == "http" and parts.hostname and parts.port, target
                if upstream is None:
                    up_reader, upstream = await asyncio.open_connection(parts.hostname, parts.port)
                    pipes.append(asyncio.ensure_future(pipe(up_reader, writer)))
                path = parts.path + (f"?{parts.query}" if parts.query else "")
                upstream.write(head.replace(target, path.encode(), 1) + body)
        except (ConnectionError, asyncio.IncompleteReadError):
            self.client_closes += 1
        except asyncio.CancelledError:
            pass  # stopped by __aexit__
        finally:
            for piping in pipes:
                piping.cancel()
            await asyncio.gather(*pipes, return_exceptions=True)
            if upstream is not None:
                upstream.close()
            self._tasks.discard(task)
            writer.close()


async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copy ``reader`` to ``writer`` until its end, then close ``writer``."""
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


def trusting(certs) -> ssl.SSLContext:
    """A client context that trusts the loopback certificate (127.0.0.1 and localhost)."""
    return ssl.create_default_context(cafile=str(certs["loopback"][0]))


@pytest.mark.parametrize("variable", ["https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"])
async def test_https_through_a_proxy_is_one_connect_tunnel_kept_alive(make_client, certs, monkeypatch, variable):
    client = make_client(ssl_context=trusting(certs))
    async with Proxy() as proxy, Server(ok, tls=server_tls(certs["loopback"])) as server:
        monkeypatch.setenv(variable, proxy.url)
        for path in ("/a", "/b"):
            reply = await client.request("POST", server.url(path), body=b"x")
            assert (reply.code, reply.body) == (200, path.encode())
    authority = f"127.0.0.1:{server.port}"
    assert proxy.heads == [f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n".encode()]
    assert proxy.connections == 1 and server.connections == 1
    assert [(s.connection, s.index, s.path) for s in server.requests] == [(0, 0, "/a"), (0, 1, "/b")]


async def test_https_proxy_wins_over_all_proxy_and_http_proxy_is_not_for_https(make_client, certs, monkeypatch):
    client = make_client(ssl_context=trusting(certs))
    async with Proxy() as proxy, Proxy() as other, Server(ok, tls=server_tls(certs["loopback"])) as server:
        monkeypatch.setenv("http_proxy", other.url)
        monkeypatch.setenv("https_proxy", proxy.url)
        monkeypatch.setenv("ALL_PROXY", "socks5://127.0.0.1:1")  # never read: https_proxy comes first
        assert (await client.request("GET", server.url())).code == 200
    assert (proxy.connections, other.connections) == (1, 0)


async def test_http_through_a_proxy_goes_in_absolute_form_kept_alive(make_client, monkeypatch):
    client = make_client()
    async with Proxy() as proxy, Server(ok) as server:
        monkeypatch.setenv("http_proxy", proxy.url)
        for path in ("/token?x=1", "/revoke"):
            reply = await client.request("POST", server.url(path), body=b"a=b")
            assert (reply.code, reply.body) == (200, path.encode())
    assert [head.split(b"\r\n")[:2] for head in proxy.heads] == [
        [f"POST {server.url(path)} HTTP/1.1".encode(), f"Host: 127.0.0.1:{server.port}".encode()]
        for path in ("/token?x=1", "/revoke")]
    assert proxy.connections == 1 and server.connections == 1
    assert [s.body for s in server.requests] == [b"a=b", b"a=b"]


@pytest.mark.parametrize("variable", ["HTTP_PROXY", "https_proxy"])
async def test_http_urls_ignore_uppercase_http_proxy_and_https_proxy(make_client, monkeypatch, variable):
    async with Proxy() as proxy, Server(ok) as server:
        monkeypatch.setenv(variable, proxy.url)
        assert (await make_client().request("GET", server.url())).body == b"/t"
    assert proxy.connections == 0 and server.connections == 1


@pytest.mark.parametrize("variable, value, bypassed", [
    ("no_proxy", "localhost", True),
    ("NO_PROXY", "localhost", True),
    ("no_proxy", "*", True),
    ("no_proxy", "example.com, .LOCALHOST", True),  # spaces, a leading dot, any case
    ("no_proxy", "calhost,127.0.0.1", False),  # a suffix counts only on a dot boundary; the URL names localhost
    ("no_proxy", "", False),
])
async def test_no_proxy_bypasses_the_proxy(make_client, monkeypatch, variable, value, bypassed):
    async with Proxy() as proxy, Server(ok) as server:
        monkeypatch.setenv("http_proxy", proxy.url)
        monkeypatch.setenv(variable, value)
        assert (await make_client().request("GET", server.url(host="localhost"))).body == b"/t"
    assert server.connections == 1
    assert (proxy.connections, len(proxy.heads)) == ((0, 0) if bypassed else (1, 1))


async def test_the_environment_is_read_once_per_origin_not_per_request(make_client, monkeypatch):
    client = make_client()
    async with Proxy() as proxy, Server(ok) as server, Server(ok) as later:
        monkeypatch.setenv("http_proxy", proxy.url)
        assert (await client.request("GET", server.url())).code == 200
        monkeypatch.setenv("http_proxy", "socks5://127.0.0.1:1")
        assert (await client.request("GET", server.url())).code == 200  # this origin kept its proxy
        with pytest.raises(ValueError, match="http_proxy"):  # a new origin reads the variables anew
            await client.request("GET", later.url())
    assert len(proxy.heads) == 2 and later.connections == 0


SECRETS = ("us@er", "p:ss", "us%40er", "p%3Ass", base64.b64encode(b"us@er:p:ss").decode())


async def test_proxy_credentials_go_to_the_proxy_only_and_into_no_log_or_error(
        make_client, certs, monkeypatch, no_error_logs):
    client = make_client(ssl_context=trusting(certs))
    basic = f"Proxy-Authorization: Basic {base64.b64encode(b'us@er:p:ss').decode()}\r\n".encode()
    async with Proxy() as proxy, Proxy(b"HTTP/1.1 407 Proxy Authentication Required\r\n\r\n") as refusing, \
            Server(ok, tls=server_tls(certs["loopback"])) as tls_server, Server(ok) as plain:
        monkeypatch.setenv("https_proxy", f"http://us%40er:p%3Ass@127.0.0.1:{proxy.port}")
        monkeypatch.setenv("http_proxy", f"us%40er:p%3Ass@127.0.0.1:{proxy.port}")  # no scheme: http
        assert (await client.request("GET", tls_server.url())).code == 200
        assert (await client.request("GET", plain.url())).code == 200
        monkeypatch.setenv("https_proxy", f"http://us%40er:p%3Ass@127.0.0.1:{refusing.port}")
        with pytest.raises(ProxyError) as refused:
            await client.request("GET", tls_server.url(host="localhost"))  # a new origin: the new variable
        monkeypatch.setenv("all_proxy", "socks5://us%40er:p%3Ass@127.0.0.1:1080")
        monkeypatch.delenv("https_proxy")
        with pytest.raises(ValueError) as unsupported:
            await make_client().request("GET", tls_server.url())
    assert [basic in head for head in proxy.heads] == [True, True]  # the CONNECT, the absolute-form GET
    assert basic in refusing.heads[0]
    assert all(b"Proxy-Authorization" not in s.head for s in tls_server.requests), "not inside the tunnel"
    everything = "\n".join([r.getMessage() for r in no_error_logs.records] + [str(refused.value),
                                                                              str(unsupported.value)])
    assert "via proxy 127.0.0.1:" in everything  # the debug lines name the proxy, by host and port
    for secret in SECRETS:
        assert secret not in everything


async def test_a_refused_connect_names_the_proxy_target_and_status(make_client, certs, monkeypatch):
    refusal = (b"HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic realm=\"p\"\r\n"
               b"Content-Length: 6\r\n\r\ndenied")
    async with Proxy(refusal) as proxy, Server(ok, tls=server_tls(certs["loopback"])) as server:
        monkeypatch.setenv("https_proxy", proxy.url)
        with pytest.raises(ProxyError) as caught:
            await make_client(ssl_context=trusting(certs)).request("GET", server.url())
    message = f"proxy {proxy.name} refused CONNECT to 127.0.0.1:{server.port}: HTTP 407"
    assert str(caught.value) == message and isinstance(caught.value, OSError)
    assert transport_reason(caught.value, server.url()) == message
    assert server.connections == 0


@pytest.mark.parametrize("reply, then, error", [
    (b"SSH-2.0-OpenSSH_9.2p1\r\n\r\n", None, "sent a malformed reply to CONNECT"),
    (b"HTTP/1.1 200 OK\r\nX-Pad: " + b"a" * 17000, None, "sent a reply to CONNECT over 16384 bytes"),
    (CONNECTED + b"\x16\x03\x01", None, "sent bytes after its reply to CONNECT"),
    (b"HTTP/1.1 200 OK\r\n", CLOSE, "closed the connection before its reply to CONNECT had ended"),
], ids=["not-http", "too-large", "bytes-after", "cut-off"])
async def test_a_reply_to_connect_that_is_not_a_head_is_a_proxy_error(make_client, monkeypatch, reply, then, error):
    ended = asyncio.Event()

    async def answer_connect(reader, writer):
        try:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(reply)  # in one write: on loopback, one read of the client's
            await writer.drain()
            if then != CLOSE:
                assert await reader.read() == b""  # left open: the client ends it
        finally:
            writer.close()
            ended.set()

    server = await asyncio.start_server(answer_connect, "127.0.0.1", 0)
    async with server:
        monkeypatch.setenv("https_proxy", f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}")
        with pytest.raises(ProxyError, match=error):
            await make_client().request("GET", "https://127.0.0.1:9/t", request_timeout=3)
        await asyncio.wait_for(ended.wait(), 2)


async def test_a_proxy_that_never_answers_connect_times_out_within_connect_timeout(make_client, monkeypatch):
    loop = asyncio.get_running_loop()
    async with Proxy(connect_reply=None) as proxy:
        monkeypatch.setenv("https_proxy", proxy.url)
        started = loop.time()
        with pytest.raises(TimeoutError):
            await make_client().request("GET", "https://127.0.0.1:9/t", connect_timeout=0.2, request_timeout=5)
        assert 0.15 <= loop.time() - started <= 0.2 + SLACK
        await until(lambda: proxy.client_closes == 1, timeout=1.0)
    assert len(proxy.heads) == 1


async def test_connect_timeout_covers_the_tls_handshake_inside_the_tunnel(make_client, monkeypatch):
    loop = asyncio.get_running_loop()
    async with Proxy() as proxy, Server(silent) as server:  # plain TCP behind the tunnel: no ServerHello
        monkeypatch.setenv("https_proxy", proxy.url)
        started = loop.time()
        with pytest.raises(TimeoutError):
            await make_client().request("GET", f"https://127.0.0.1:{server.port}/t", connect_timeout=0.3,
                                        request_timeout=5)
        assert 0.25 <= loop.time() - started <= 0.3 + SLACK
        await until(lambda: server.client_closes == 1, timeout=1.0)
    assert server.requests == []


async def test_an_unreachable_proxy_is_named_not_the_target(make_client, monkeypatch):
    port, url = free_port(), "https://oauth2.example.invalid/token"  # never looked up: the proxy would
    monkeypatch.setenv("https_proxy", f"http://127.0.0.1:{port}")
    with pytest.raises(ProxyError) as caught:
        await make_client().request("GET", url)
    assert str(caught.value) == f"cannot connect to proxy 127.0.0.1:{port} (connection refused)"
    assert transport_reason(caught.value, url) == str(caught.value)


@pytest.mark.parametrize("variable, value, url, error", [
    ("https_proxy", "socks5://127.0.0.1:1080", "https://127.0.0.1:9/t",
     "https_proxy: proxy scheme 'socks5' is not supported; only an http://host:port proxy is"),
    ("ALL_PROXY", "https://user:secret@127.0.0.1:3128", "http://127.0.0.1:9/t",
     "ALL_PROXY: proxy scheme 'https' is not supported"),
    ("http_proxy", "http://127.0.0.1:31280000", "http://127.0.0.1:9/t", "http_proxy: the proxy URL's port"),
    ("http_proxy", "http://user:secret@:3128", "http://127.0.0.1:9/t", "http_proxy: the proxy URL names no host"),
], ids=["socks5", "https", "port", "no-host"])
async def test_a_proxy_url_this_client_cannot_use_is_a_clear_error(make_client, monkeypatch, variable, value, url,
                                                                    error):
    monkeypatch.setenv(variable, value)
    client = make_client()
    for _ in range(2):  # not remembered: each request says it again
        with pytest.raises(ValueError) as caught:
            await client.request("GET", url)
        assert str(caught.value).startswith(error) and "secret" not in str(caught.value)


# -- GoogleClient through these failures --------------------------------------------------------------


def google_at(base_url: str) -> GoogleClient:
    return GoogleClient(GoogleConfig("id.apps.googleusercontent.com", "client-secret",
                                     endpoints=GoogleEndpoints.for_base_url(base_url), request_timeout=0.5))


@pytest.mark.parametrize("respond, error, reason", [
    (sends(b"", CLOSE), GoogleUnavailableError, "closed the connection without a reply"),
    (sends(b"HTTP/1.1 200 OK\r\nContent-Le", CLOSE), GoogleUnavailableError, "before the end of its reply"),
    (sends(b"garbage\r\n\r\n"), GoogleUnavailableError, "malformed HTTP reply"),
    (sends(answer(b"x", headers=("Content-Encoding: br",))), GoogleUnavailableError, "unsupported content encoding"),
    (silent, GoogleUnavailableError, "timed out"),
    (sends(answer(b"{" + b" " * (1024 * 1024))), GoogleProtocolError, "reply of more than 1048576 bytes"),
    (sends(answer(gzip.compress(b" " * (3 * 1024 * 1024)), headers=("Content-Encoding: gzip",))),
     GoogleProtocolError, "reply of more than 1048576 bytes"),
], ids=["closed", "cut-off", "garbage", "br", "silent", "too-large", "gzip-bomb"])
async def test_google_client_maps_transport_failures(respond, error, reason):
    async with Server(respond) as server:
        google = google_at(server.url(""))
        try:
            with pytest.raises(error) as caught:
                await google.exchange_code("4/SECRET-CODE")
        finally:
            google.close()
    assert type(caught.value) is error
    assert reason in str(caught.value) and "SECRET-CODE" not in str(caught.value)
    assert len(server.requests) == 1, "a code exchange is never sent twice"


async def test_google_client_connect_refused_is_unavailable():
    google = google_at(f"http://127.0.0.1:{free_port()}")
    try:
        with pytest.raises(GoogleUnavailableError, match="connection refused by 127.0.0.1"):
            await google.refresh("1//SECRET-REFRESH")
    finally:
        google.close()


async def test_google_client_untrusted_tls_is_unavailable(certs):
    async with Server(ok, tls=server_tls(certs["loopback"])) as server:
        google = google_at(server.url(""))
        try:
            with pytest.raises(GoogleUnavailableError, match="is not trusted"):
                await google.exchange_code("4/SECRET-CODE")
        finally:
            google.close()


async def test_google_client_through_a_proxy_that_refuses_is_unavailable_naming_the_proxy(monkeypatch):
    async with Proxy(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n") as proxy:
        monkeypatch.setenv("HTTPS_PROXY", proxy.url)
        google = google_at("https://oauth2.example.invalid")  # never looked up: the proxy would
        try:
            with pytest.raises(GoogleUnavailableError) as caught:
                await google.exchange_code("4/SECRET-CODE")
        finally:
            google.close()
    assert str(caught.value) == (f"POST https://oauth2.example.invalid/token: proxy {proxy.name} refused CONNECT "
                                 "to oauth2.example.invalid:443: HTTP 403")
    assert len(proxy.heads) == 1


async def test_google_client_reaches_the_emulator_through_an_http_proxy(monkeypatch):
    from harness import CLIENT_ID, CLIENT_SECRET
    from tornado_signin.emulator import EmulatorClient, EmulatorThread
    from tornado_signin.errors import InvalidGrantError

    thread = EmulatorThread(clients=[EmulatorClient(CLIENT_ID, CLIENT_SECRET, ("http://127.0.0.1:8080",))])
    emulator = await asyncio.get_running_loop().run_in_executor(None, thread.start)
    try:
        async with Proxy() as proxy:
            monkeypatch.setenv("http_proxy", proxy.url)
            endpoints = GoogleEndpoints.for_base_url(emulator.base_url)
            google = GoogleClient(GoogleConfig(CLIENT_ID, CLIENT_SECRET, endpoints=endpoints))
            try:
                certs, _ = await google.fetch_json(endpoints.verification_certs_uri)
                with pytest.raises(InvalidGrantError):  # the emulator's own OAuth error, through the proxy
                    await google.exchange_code("4/not-a-code")
            finally:
                google.close()
    finally:
        await asyncio.get_running_loop().run_in_executor(None, thread.stop)
    assert certs.get("keys")
    assert [head.split(b" ", 2)[:2] for head in proxy.heads] == [
        [b"GET", endpoints.verification_certs_uri.encode()], [b"POST", endpoints.token_uri.encode()]]
    assert proxy.connections == 1
