"""The load generator: asyncio, raw HTTP/1.1 keep-alive and websocket clients, closed loop.

Each of C virtual clients holds its own connection (and, for the login, its
own cookie jar, state and confirmation websocket) and loops: take a code
minted in advance, do one login, record its latency. Throughput counts the
logins that ended inside the measurement window (after the warm-up).
"""

from __future__ import annotations

import asyncio
import base64
import collections
import json
import os
import random
import resource
import time
from dataclasses import dataclass, field
from typing import Any

from .common import COOKIE_SECRET

__all__ = ["Http", "run_load", "run_sockets", "percentile"]


def percentile(values: list[float], q: float) -> float:
    """Return the q-quantile (0..1) of ``values`` by nearest rank (0.0 when empty)."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, int(round(q * len(ordered) + 0.5)) - 1))]


class _HttpProtocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.buffer = bytearray()
        self.waiter: asyncio.Future | None = None
        self.closed = False

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        self._check()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError("connection closed"))

    def _check(self) -> None:
        if self.waiter is None or self.waiter.done():
            return
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            return
        head = bytes(self.buffer[:end]).decode("latin-1")
        lines = head.split("\r\n")
        headers: list[tuple[str, str]] = []
        length = 0
        for line in lines[1:]:
            name, _, value = line.partition(":")
            name, value = name.strip().lower(), value.strip()
            headers.append((name, value))
            if name == "content-length":
                length = int(value)
        if len(self.buffer) < end + 4 + length:
            return
        body = bytes(self.buffer[end + 4:end + 4 + length])
        del self.buffer[:end + 4 + length]
        self.waiter.set_result((int(lines[0].split(" ", 2)[1]), headers, body))


class Http:
    """One keep-alive HTTP/1.1 connection that reconnects when the server closes it."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.protocol: _HttpProtocol | None = None

    async def request(self, method: str, path: str, body: bytes = b"", headers: str = "") -> tuple[int, list, bytes]:
        if self.protocol is None or self.protocol.closed:
            _, self.protocol = await asyncio.get_running_loop().create_connection(
                _HttpProtocol, "127.0.0.1", self.port)
        protocol = self.protocol
        protocol.waiter = asyncio.get_running_loop().create_future()
        protocol.transport.write(
            f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\nContent-Length: {len(body)}\r\n"
            f"{headers}\r\n".encode("latin-1") + body)
        protocol._check()
        status, response_headers, response_body = await protocol.waiter
        if any(name == "connection" and value.lower() == "close" for name, value in response_headers):
            protocol.transport.close()
            self.protocol = None
        return status, response_headers, response_body

    def close(self) -> None:
        if self.protocol is not None:
            self.protocol.transport.close()


def _cookies(headers: list, jar: dict[str, str]) -> None:
    for name, value in headers:
        if name == "set-cookie":
            pair = value.split(";", 1)[0]
            key, _, val = pair.partition("=")
            jar[key] = val.strip('"')


def _cookie_header(jar: dict[str, str]) -> str:
    return "Cookie: " + "; ".join(f"{k}={v}" for k, v in jar.items()) + "\r\n" if jar else ""


class _WsProtocol(asyncio.Protocol):
    """A websocket client that answers pings and counts (or hands over) text frames."""

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.handshake: asyncio.Future = asyncio.get_running_loop().create_future()
        self.frame_waiter: asyncio.Future | None = None
        self.frames = 0

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.handshake.done():
            self.handshake.set_exception(ConnectionError("closed during handshake"))

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if not self.handshake.done():
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            status = bytes(self.buffer[:end]).split(b" ", 2)[1]
            del self.buffer[:end + 4]
            if status != b"101":
                self.handshake.set_exception(ConnectionError(f"websocket handshake answered {status!r}"))
                return
            self.handshake.set_result(True)
        while len(self.buffer) >= 2:
            opcode, length, at = self.buffer[0] & 0x0F, self.buffer[1] & 0x7F, 2
            if length == 126:
                if len(self.buffer) < 4:
                    return
                length, at = int.from_bytes(self.buffer[2:4], "big"), 4
            elif length == 127:
                if len(self.buffer) < 10:
                    return
                length, at = int.from_bytes(self.buffer[2:10], "big"), 10
            if len(self.buffer) < at + length:
                return
            payload = bytes(self.buffer[at:at + length])
            del self.buffer[:at + length]
            if opcode == 0x9:
                self._send(0xA, payload)
            elif opcode == 0x1:
                self.frames += 1
                if self.frame_waiter is not None and not self.frame_waiter.done():
                    self.frame_waiter.set_result(time.perf_counter())

    def _send(self, opcode: int, payload: bytes) -> None:
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.transport.write(bytes([0x80 | opcode, 0x80 | len(payload)]) + mask + masked)


async def open_socket(port: int, cookie: str) -> _WsProtocol:
    """Open ``/confirm`` with ``cookie`` (a Cookie header line); return the protocol after the 101."""
    _, protocol = await asyncio.get_running_loop().create_connection(_WsProtocol, "127.0.0.1", port)
    key = base64.b64encode(os.urandom(16)).decode()
    protocol.transport.write(
        f"GET /confirm HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\nOrigin: http://127.0.0.1:{port}\r\n"
        f"{cookie}\r\n".encode())
    await protocol.handshake
    return protocol


@dataclass
class LoadResult:
    """What one measured run produced."""

    completed: int = 0
    errors: collections.Counter = field(default_factory=collections.Counter)
    latencies: list[float] = field(default_factory=list)
    seconds: float = 0.0
    ran_out_of_codes: bool = False
    #: One-request logins whose answer carried no next state, so the next login had to GET /state first.
    state_fallbacks: int = 0
    #: One-request logins that used the state the previous answer carried.
    states_carried: int = 0

    def summary(self) -> dict[str, Any]:
        return {
            "throughput": self.completed / self.seconds if self.seconds else 0.0,
            "completed": self.completed,
            "p50_ms": 1000 * percentile(self.latencies, 0.50),
            "p99_ms": 1000 * percentile(self.latencies, 0.99),
            "errors": dict(self.errors),
            "ran_out_of_codes": self.ran_out_of_codes,
            "state_fallbacks": self.state_fallbacks,
            "states_carried": self.states_carried,
        }


_CODE_HEADERS = "Content-Type: application/octet-stream\r\nX-Requested-With: XMLHttpRequest\r\n"


async def run_load(kind: str, ports: list[int], codes: list[str], *, connections: int, warmup: float,
                   duration: float, websockets: bool = True) -> LoadResult:
    """Drive ``kind`` with ``connections`` virtual clients spread over ``ports``; return the LoadResult of the
    ``duration`` seconds after ``warmup``.

    Kinds: "exchange": one POST /exchange per login; "login": one POST /storeauthcode per login with the
    state the previous answer carried (the first one comes with the page; a client that got no state in
    an answer GETs /state before its next login, counted in ``state_fallbacks`` and inside that login's
    time); "login2": GET /state then POST /storeauthcode; "state": GET /state alone; "echo": GET /.
    """
    result = LoadResult()
    codes = list(codes)
    loop = asyncio.get_running_loop()
    start = loop.time()
    window = (start + warmup, start + warmup + duration)
    sockets: list[_WsProtocol] = []

    async def client(index: int) -> None:
        port = ports[index % len(ports)]
        http = Http(port)
        jar: dict[str, str] = {}
        origin = f"Origin: http://127.0.0.1:{port}\r\n"
        state: str | None = None
        try:
            if kind in ("login", "login2", "state"):
                # The page load: a session cookie and, for the one-request login, the first state
                # (the page carries it; GET /state stands for the page here, once, not measured).
                status, headers, body = await http.request("GET", "/state")
                _cookies(headers, jar)
                state = json.loads(body)["state"]
                if websockets and kind != "state":
                    sockets.append(await open_socket(port, _cookie_header(jar)))
            while loop.time() < window[1]:
                began = loop.time()
                if kind == "echo":
                    status, headers, _ = await http.request("GET", "/")
                    ok = status == 200
                elif kind == "state":
                    status, headers, _ = await http.request("GET", "/state", headers=_cookie_header(jar))
                    _cookies(headers, jar)
                    ok = status == 200
                else:
                    if not codes:
                        result.ran_out_of_codes = True
                        return
                    code = codes.pop().encode()
                    if kind == "exchange":
                        status, headers, body = await http.request("POST", "/exchange", code)
                        ok = status == 200
                    else:
                        carried = kind == "login" and state is not None
                        if not carried:
                            status, headers, body = await http.request("GET", "/state", headers=_cookie_header(jar))
                            _cookies(headers, jar)
                            state = json.loads(body)["state"]
                        status, headers, body = await http.request(
                            "POST", "/storeauthcode", code,
                            f"{_CODE_HEADERS}{origin}X-Signin-State: {state}\r\n{_cookie_header(jar)}")
                        _cookies(headers, jar)
                        ok = status == 200
                        # The next login's state, when the answer carries it (the product's one-request login).
                        state = json.loads(body).get("state") if body[:1] == b"{" else None
                        if kind == "login":
                            if carried:
                                result.states_carried += 1
                            if state is None:
                                result.state_fallbacks += 1
                ended = loop.time()
                if window[0] <= began and ended <= window[1]:
                    if ok:
                        result.completed += 1
                        result.latencies.append(ended - began)
                    else:
                        result.errors[str(status)] += 1
        except (ConnectionError, OSError) as exc:
            result.errors[type(exc).__name__] += 1
        finally:
            http.close()

    await asyncio.gather(*(client(i) for i in range(connections)))
    for protocol in sockets:
        protocol.transport.close()
    result.seconds = duration
    return result


def raise_fd_limit() -> int:
    """Raise this process's open-file limit to its hard limit; return the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def rss_bytes(pid: int) -> int:
    """Return the resident set size of process ``pid``."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


async def run_sockets(port: int, server_pid: int, *, count: int, probes: int) -> dict[str, Any]:
    """Open ``count`` idle ``/confirm`` sockets, measure the server's memory per socket, then the
    time from publishing one confirmation (``POST /bench/publish``) to its frame on one socket
    picked at random, ``probes`` times."""
    from tornado.web import create_signed_value

    from tornado_signin.sessions import Session, new_session_id, session_cookie_name

    raise_fd_limit()
    baseline = rss_bytes(server_pid)
    sids = [new_session_id() for _ in range(count)]
    gate = asyncio.Semaphore(256)
    opened_at = time.perf_counter()

    async def one(sid: str) -> _WsProtocol:
        value = create_signed_value(COOKIE_SECRET, session_cookie_name(False), Session(sid=sid).encode()).decode()
        async with gate:
            return await open_socket(port, f"Cookie: {session_cookie_name(False)}={value}\r\n")

    protocols = await asyncio.gather(*(one(sid) for sid in sids), return_exceptions=True)
    open_seconds = time.perf_counter() - opened_at
    failed = sum(1 for p in protocols if isinstance(p, BaseException))
    await asyncio.sleep(1.0)
    loaded = rss_bytes(server_pid)
    http = Http(port)
    latencies = []
    for _ in range(probes):
        index = random.randrange(count)
        protocol = protocols[index]
        if isinstance(protocol, BaseException):
            continue
        protocol.frame_waiter = asyncio.get_running_loop().create_future()
        began = time.perf_counter()
        await http.request("POST", f"/bench/publish?channel={sids[index]}")
        arrived = await asyncio.wait_for(protocol.frame_waiter, 5)
        latencies.append(arrived - began)
    http.close()
    still_open = sum(1 for p in protocols if not isinstance(p, BaseException) and not p.transport.is_closing())
    for protocol in protocols:
        if not isinstance(protocol, BaseException):
            protocol.transport.close()
    return {
        "sockets": count,
        "failed": failed,
        "open_at_end": still_open,
        "open_seconds": open_seconds,
        "rss_before_mb": baseline / 2**20,
        "rss_after_mb": loaded / 2**20,
        "kb_per_socket": (loaded - baseline) / max(count - failed, 1) / 1024,
        "delivery_p50_ms": 1000 * percentile(latencies, 0.50),
        "delivery_p99_ms": 1000 * percentile(latencies, 0.99),
        "probes": len(latencies),
    }
