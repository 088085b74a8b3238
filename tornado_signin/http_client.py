"""The HTTP/1.1 client of the calls to Google's endpoints: keep-alive, deadlines, bounded replies.

Hand-written on asyncio's transports (TLS by the standard library's ``ssl``:
the system's CA certificates, hostname checks, SNI) and httptools' parser
(llhttp, Node.js's HTTP parser, in C), because a measurement earns it: one
token POST on a kept-alive connection costs 0.048-0.067 ms of this process's
CPU, against 0.30-0.33 ms through Tornado's curl client and ~0.18 ms through
aiohttp (``python -m bench.token_client``: 10,000 POSTs, 64 in flight, the same
loopback server; bench/README.md, "The token client"). Tornado's curl client
was a third of the offline bulk refresh's CPU and ~17 % of a login's.

Contract of :class:`KeepAliveClient`:

* :meth:`~KeepAliveClient.request` sends one request and returns its
  :class:`Reply` (any status: a 4xx or 5xx is a reply, not an error).
* Connections are kept per origin (scheme, host, port) and reused one
  request at a time (no pipelining); at most ``max_connections`` per origin
  are open at once, further requests wait (inside their deadline) for one.
  A connection idle for ``idle_timeout`` seconds is closed before it is
  reused, so an idle connection the server is about to close is rarely
  picked.
* A request sent on a *reused* connection that the server closes before any
  byte of a reply arrived is sent once more on a new connection (what libcurl
  does: the server closed an idle connection as the request was sent). No
  other failure is retried: a code exchange that may have reached Google is
  never sent twice. A cancelled request closes its connection.
* ``connect_timeout`` bounds DNS, TCP and TLS of a new connection (through
  a proxy: the connection to the proxy, its CONNECT exchange and TLS);
  ``request_timeout`` bounds the whole request, waiting included.
* Failures raise: ``TimeoutError``; the ``OSError`` of the socket, DNS
  (``socket.gaierror``) or TLS (``ssl.SSLError``) failure;
  ``ConnectionResetError`` for a connection closed before its reply's end;
  :class:`ReplyTooLarge` for a body over ``max_body`` bytes (also after gzip);
  :class:`MalformedReply` for a reply that is not HTTP/1.x, an unsupported
  content encoding, or bytes the server sent unasked; :class:`ProxyError`
  for a proxy that cannot be reached, refuses the CONNECT (its message names
  the proxy, the target and the status, e.g. "proxy 10.0.0.1:3128 refused
  CONNECT to oauth2.googleapis.com:443: HTTP 407") or answers it with bytes
  that are not a reply head of at most 16 KiB.
* A proxy is taken from the environment as libcurl (Tornado's curl client)
  takes it: for an https URL ``https_proxy``, ``HTTPS_PROXY``, then
  ``all_proxy``, ``ALL_PROXY``; for an http URL ``http_proxy`` (lowercase
  only: ``HTTP_PROXY`` may come from a CGI request's ``Proxy:`` header,
  "httpoxy"), then ``all_proxy``, ``ALL_PROXY``; the first that is set and not
  empty. ``no_proxy`` (else ``NO_PROXY``) bypasses it: comma-separated host
  names, domain suffixes (``.example.com`` or ``example.com`` matches
  ``a.example.com``), IP addresses, or ``*``. The variables are read once per
  origin, by its first request, never per request. Only ``http://host[:port]``
  proxies (no scheme: http; no port: 1080, as libcurl) are supported; another
  scheme (``socks5://``, ``https://``) is a :class:`ProxyConfigError` (a
  ``ValueError``) naming the variable.
  An https URL goes through a ``CONNECT host:port`` tunnel, TLS to the target
  inside it, kept alive as a direct connection; an http URL is sent to the
  proxy in absolute form (``POST http://host/path``), kept alive to the proxy.
  ``user:password@`` in the proxy URL (percent-decoded) is sent to the proxy
  as ``Proxy-Authorization: Basic``, and appears in no log line or error.
* Bodies are never logged, and a DEBUG line names only the method, the URL's
  origin and path, the status, the body's size and the proxy's host and port.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import logging
import os
import re
import socket
import ssl
import zlib
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit
# Undocumented, so not in typeshed, but in urllib.request since Python 2 (urllib's own no_proxy matcher).
from urllib.request import proxy_bypass_environment  # type: ignore[attr-defined]

import httptools
from tornado.httputil import HTTPHeaders

__all__ = ["KeepAliveClient", "Reply", "MalformedReply", "ReplyTooLarge", "ProxyError", "ProxyConfigError"]

log = logging.getLogger(__name__)


class MalformedReply(OSError):
    """The server's bytes are not an HTTP/1.x reply this client accepts."""


class ReplyTooLarge(MalformedReply):
    """The reply's body exceeds the client's ``max_body``."""


class ProxyError(OSError):
    """The proxy could not be reached, refused the CONNECT, or did not answer it as HTTP.

    Its message names the proxy by host and port only, never its credentials.
    """


class ProxyConfigError(ValueError):
    """A proxy variable holds a URL this client cannot use; the message names the variable, not its value."""


@dataclass
class Reply:
    """One HTTP reply: its status ``code``, ``body`` and ``url``; ``headers`` are parsed when first read."""

    code: int
    body: bytes
    url: str
    raw_headers: list[tuple[bytes, bytes]] = field(default_factory=list, repr=False)
    _headers: HTTPHeaders | None = field(default=None, repr=False)

    @property
    def headers(self) -> HTTPHeaders:
        """The reply's headers, case-insensitive (Tornado's HTTPHeaders)."""
        if self._headers is None:
            headers = HTTPHeaders()
            for name, value in self.raw_headers:
                headers.add(name.decode("latin-1"), value.decode("latin-1"))
            self._headers = headers
        return self._headers


@dataclass(frozen=True)
class _Target:
    origin: tuple[str, str, int]
    path: bytes
    head: bytes  # "Host: …\r\n"
    absolute: bytes  # "http://host[:port]/path…": the request target sent to an http proxy


# -- proxies ------------------------------------------------------------------------------------------

#: The variables naming the proxy of a scheme's URLs, in libcurl's order. No uppercase HTTP_PROXY: in a
#: CGI process it holds the request's "Proxy:" header (httpoxy, CVE-2016-5385); libcurl skips it.
_PROXY_VARIABLES = {
    "https": ("https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"),
    "http": ("http_proxy", "all_proxy", "ALL_PROXY"),
}
_PROXY_DEFAULT_PORT = 1080  # libcurl's, for a proxy URL without a port
_MAX_CONNECT_HEAD = 16 * 1024
_STATUS_LINE = re.compile(rb"HTTP/1\.[0-9] ([0-9]{3})(?: [^\r\n]*)?")


@dataclass(frozen=True)
class _Proxy:
    host: str
    port: int
    authorization: bytes  # b"Proxy-Authorization: Basic …\r\n", or b""

    @property
    def name(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def _proxy_for(scheme: str, host: str) -> _Proxy | None:
    """The proxy libcurl would use for ``scheme://host`` by the environment, or None (direct).

    Raise ProxyConfigError, naming the variable (never its value: it may hold a password), for a proxy URL
    this client cannot use.

    Not urllib.request.getproxies_environment(): unlike libcurl it takes HTTP_PROXY (outside CGI), and a
    set but empty lowercase variable hides the uppercase one (libcurl skips an empty variable).
    """
    for variable in _PROXY_VARIABLES[scheme]:
        value = os.environ.get(variable)
        if value:
            break
    else:
        return None
    # proxy_bypass_environment matches no_proxy as libcurl does for host names (exact, or a domain
    # suffix on a dot boundary, a leading dot ignored, case-insensitive, spaces around commas) and "*".
    # Where they differ: libcurl matches an IP address as an address (and CIDR ranges such as 10.0.0.0/8,
    # since 7.86) where this matches it as text (an entry "0.0.1" matches 127.0.0.1, 10.0.0.0/8 nothing).
    # Google's endpoints are names.
    no_proxy = os.environ.get("no_proxy") or os.environ.get("NO_PROXY")
    if no_proxy and proxy_bypass_environment(host, {"no": no_proxy}):
        return None
    return _parse_proxy(variable, value)


def _parse_proxy(variable: str, value: str) -> _Proxy:
    if "://" not in value:
        value = "http://" + value  # libcurl's default proxy scheme
    parts = urlsplit(value.strip())
    if parts.scheme != "http":
        raise ProxyConfigError(f"{variable}: proxy scheme {parts.scheme!r} is not supported; "
                               "only an http://host:port proxy is")
    try:
        port = parts.port or _PROXY_DEFAULT_PORT
    except ValueError:
        raise ProxyConfigError(f"{variable}: the proxy URL's port is not a number from 0 to 65535") from None
    if not parts.hostname:
        raise ProxyConfigError(f"{variable}: the proxy URL names no host")
    authorization = b""
    if parts.username is not None:
        credentials = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode("utf-8")
        authorization = b"Proxy-Authorization: Basic " + base64.b64encode(credentials) + b"\r\n"
    return _Proxy(parts.hostname, port, authorization)


class _Tunnel(asyncio.Protocol):
    """A connection to a proxy until the head of its reply to CONNECT (bounded) is read.

    ``head``'s result: the bytes read, the head's end (its blank line) and whatever came after it.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, proxy: str) -> None:
        self.proxy = proxy
        self.buffer = b""
        self.head: asyncio.Future[bytes] = loop.create_future()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if self.head.done():
            return  # not reached: reading is paused at the head's end, until TLS takes the transport over
        self.buffer += data
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(self.buffer) > _MAX_CONNECT_HEAD:
                self.head.set_exception(ProxyError(
                    f"proxy {self.proxy} sent a reply to CONNECT over {_MAX_CONNECT_HEAD} bytes"))
            return
        assert self.transport is not None
        self.transport.pause_reading()  # start_tls resumes it, with its own protocol in place
        self.head.set_result(self.buffer)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.head.done():
            self.head.set_exception(ProxyError(f"proxy {self.proxy} closed the connection before its reply "
                                               "to CONNECT had ended"))


class _Connection(asyncio.Protocol):
    """One connection to an origin; one request at a time (the callbacks are httptools')."""

    def __init__(self, pool: _Origin) -> None:
        self.pool = pool
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.reply: asyncio.Future[Reply] | None = None
        self.url = ""
        self.reused = False
        self.idle_since = 0.0
        self._reset()

    def _reset(self) -> None:
        self.chunks: list[bytes] = []
        self.size = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.received = False
        self.complete_head = False  # the status line and headers were all read
        self.framed = False  # Content-Length or chunked: the body does not end with the connection
        self.gzip = False
        self.failure: OSError | None = None

    # asyncio.Protocol

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if self.reply is None:
            self._fail(MalformedReply(f"{self.pool.name} sent bytes no request asked for"))
            return
        self.received = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(self.failure or MalformedReply(f"{self.pool.name} sent a malformed HTTP reply ({exc})"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.pool.forget(self)
        if self.reply is not None and self.complete_head and not self.framed and self.failure is None:
            self.on_message_complete()  # a body delimited by the end of the connection (HTTP/1.0 style)
            return
        if self.reused and not self.received and self.reply is not None:
            self._fail(_StaleConnection())
            return
        # A reply cut off (in its head, its framed body, or after an interim 100) is no reply.
        self._fail(exc if isinstance(exc, OSError) else ConnectionResetError(
            f"{self.pool.name} closed the connection "
            f"{'before the end of its reply' if self.received else 'without a reply'}"))

    # httptools callbacks

    def on_message_begin(self) -> None:
        if self.reply is None:  # a reply after the one asked for, in the same read as it
            self.failure = MalformedReply(f"{self.pool.name} sent bytes no request asked for")
            raise self.failure

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))
        lowered = name.lower()
        if lowered in (b"content-length", b"transfer-encoding"):
            self.framed = True
        elif lowered == b"content-encoding":
            encoding = value.strip().lower()
            if encoding == b"gzip":
                self.gzip = True
            elif encoding not in (b"", b"identity"):
                self.failure = MalformedReply(f"{self.pool.name} sent an unsupported content encoding")
                raise self.failure

    def on_headers_complete(self) -> None:
        self.complete_head = True

    def on_body(self, body: bytes) -> None:
        self.size += len(body)
        if self.size > self.pool.client.max_body:
            self.failure = ReplyTooLarge(f"reply of more than {self.pool.client.max_body} bytes")
            raise self.failure
        self.chunks.append(body)

    def on_message_complete(self) -> None:
        code = self.parser.get_status_code()
        if 100 <= code < 200:  # an interim reply (100 Continue): the real one follows
            self._reset()
            self.received = True
            return
        body: bytes | None = b"".join(self.chunks)
        if self.gzip:
            body = self._gunzip(body or b"")
            if body is None:  # failed the request
                return
        reply, self.reply = self.reply, None
        result = Reply(code, body or b"", self.url, self.headers)
        keep = self.parser.should_keep_alive() and self.transport is not None and not self.transport.is_closing()
        self._reset()
        if keep:
            self.pool.release(self)
        else:
            self.close()
        if reply is not None and not reply.done():
            reply.set_result(result)

    # internals

    def _gunzip(self, body: bytes) -> bytes | None:
        limit = self.pool.client.max_body
        inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
        try:
            plain = inflater.decompress(body, limit + 1)
        except zlib.error:
            plain = None
        if plain is not None and len(plain) > limit:
            self._fail(ReplyTooLarge(f"reply of more than {limit} bytes"))
            return None
        if plain is None or not inflater.eof:  # corrupt, or truncated (which inflates without an error, short)
            self._fail(MalformedReply(f"{self.pool.name} sent a corrupt gzip body"))
            return None
        return plain

    def send(self, data: bytes, reply: asyncio.Future[Reply], url: str) -> None:
        assert self.transport is not None
        self.reply, self.url = reply, url
        self.transport.write(data)

    def _fail(self, exc: BaseException) -> None:
        reply, self.reply = self.reply, None
        self.close()
        if reply is not None and not reply.done():
            reply.set_exception(exc)

    def close(self) -> None:
        self.pool.forget(self)
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()


class _StaleConnection(ConnectionResetError):
    """A reused connection closed before any reply byte: the request is sent again on a new one."""


class _Origin:
    """The connections to one origin: the idle ones (newest last), how many are open, who waits."""

    def __init__(self, client: KeepAliveClient, origin: tuple[str, str, int]) -> None:
        self.client = client
        self.scheme, self.host, self.port = origin
        self.name = f"{self.host}:{self.port}"
        self.idle: list[_Connection] = []
        self.open = 0
        self.waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self.members: set[_Connection] = set()
        self.connecting: set[asyncio.Future[Any]] = set()
        self.closed = False  # by KeepAliveClient.close: what still waits here fails
        self.proxy = _proxy_for(self.scheme, self.host)
        #: Not None for an http origin reached through a proxy: its requests go in absolute form, with
        #: these bytes (the proxy's Proxy-Authorization, or b"") in their head.
        self.forward: bytes | None = None
        self.via = ""  # the debug line's " via proxy host:port"
        self.tunnel_request = b""  # an https origin through a proxy: its CONNECT request
        if self.proxy is not None:
            self.via = f" via proxy {self.proxy.name}"
            if self.scheme == "http":
                self.forward = self.proxy.authorization
            else:
                authority = (f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}")
                self.tunnel_request = (f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n".encode("ascii")
                                       + self.proxy.authorization + b"\r\n")

    async def connection(self, loop: asyncio.AbstractEventLoop, deadline: float,
                         connect_timeout: float, fresh: bool = False) -> _Connection:
        """Return an idle connection (fresh enough) or a new one, waiting for a free slot until ``deadline``.

        ``fresh``: a new connection only (the resend of a request a reused one lost); an idle
        connection is closed if that frees the slot it needs.
        """
        stale_before = loop.time() - self.client.idle_timeout
        while self.idle and (not fresh or self.open >= self.client.max_connections):
            connection = self.idle.pop()
            if not fresh and connection.idle_since >= stale_before and connection.transport is not None \
                    and not connection.transport.is_closing():
                connection.reused = True
                return connection
            connection.close()
        while self.open >= self.client.max_connections:
            waiter = loop.create_future()
            self.waiters.append(waiter)
            # A deadline of its own rather than asyncio.wait_for: a waiter woken (handed the free slot) and
            # cancelled before it ran must pass the wake-up on, which wait_for hides on 3.11 and loses on 3.12.
            timer = loop.call_at(deadline, _expire, waiter)
            try:
                await waiter
            except BaseException:
                if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                    self._wake()  # woken, then cancelled: the slot goes to the next waiter
                raise
            finally:
                timer.cancel()
                if waiter in self.waiters:
                    self.waiters.remove(waiter)
            if self.idle:
                connection = self.idle.pop()
                if not fresh:
                    connection.reused = True
                    return connection
                connection.close()
        return await self.connect(loop, min(connect_timeout, max(0.0, deadline - loop.time())))

    async def connect(self, loop: asyncio.AbstractEventLoop, timeout: float) -> _Connection:
        if self.closed:  # a closed origin has no idle connection: every request of it comes here
            raise ConnectionAbortedError("the HTTP client was closed")
        self.open += 1
        connection = _Connection(self)
        self.members.add(connection)
        tls = self.client.ssl_context if self.scheme == "https" else None
        if self.proxy is None:
            attempt: asyncio.Future[Any] = asyncio.ensure_future(loop.create_connection(
                lambda: connection, self.host, self.port, ssl=tls, server_hostname=self.host if tls else None))
        else:
            attempt = asyncio.ensure_future(self._through_proxy(loop, self.proxy, connection, tls))
        self.connecting.add(attempt)  # close() cancels it
        try:
            await asyncio.wait_for(attempt, timeout)
        except BaseException:
            connection.close()  # its transport too, if it connected as the wait ended
            if self.closed:
                raise ConnectionAbortedError("the HTTP client was closed") from None
            raise
        finally:
            self.connecting.discard(attempt)
        if self.closed:  # connected as the client was being closed
            connection.close()
            raise ConnectionAbortedError("the HTTP client was closed")
        return connection

    async def _through_proxy(self, loop: asyncio.AbstractEventLoop, proxy: _Proxy, connection: _Connection,
                             tls: ssl.SSLContext | None) -> None:
        """Connect ``connection`` through ``proxy``: to the proxy itself (http), or a CONNECT tunnel with TLS
        to this origin inside it (https)."""
        protocol: asyncio.Protocol = connection if tls is None else _Tunnel(loop, proxy.name)
        try:
            transport, _ = await loop.create_connection(lambda: protocol, proxy.host, proxy.port)
        except TimeoutError:
            raise
        except OSError as exc:
            # Named as the proxy's failure: "connection refused by oauth2.googleapis.com:443" would send
            # the operator after Google.
            if isinstance(exc, ConnectionRefusedError):
                reason = "connection refused"
            elif isinstance(exc, socket.gaierror):
                reason = "DNS lookup failed"
            else:
                reason = (exc.strerror or str(exc) or type(exc).__name__).lower()
            raise ProxyError(f"cannot connect to proxy {proxy.name} ({reason})") from exc
        if tls is None:
            return  # connection_made set the connection's transport
        assert isinstance(protocol, _Tunnel)
        try:
            transport.write(self.tunnel_request)
            head = await protocol.head
            status = _STATUS_LINE.fullmatch(head.split(b"\r\n", 1)[0])
            if status is None:
                raise ProxyError(f"proxy {proxy.name} sent a malformed reply to CONNECT")
            if not status[1].startswith(b"2"):
                raise ProxyError(f"proxy {proxy.name} refused CONNECT to {self.name}: "
                                 f"HTTP {status[1].decode('ascii')}")
            if head.find(b"\r\n\r\n") + 4 != len(head):
                # The target speaks only after the ClientHello; a refusal's body is never read.
                raise ProxyError(f"proxy {proxy.name} sent bytes after its reply to CONNECT")
            secure = await loop.start_tls(transport, connection, tls, server_hostname=self.host)
        except BaseException:
            transport.close()
            raise
        if secure is None:  # the transport closed as TLS began
            raise ConnectionResetError(f"proxy {proxy.name} closed the tunnel to {self.name}")
        connection.transport = secure

    def release(self, connection: _Connection) -> None:
        """Put a connection that finished its reply back, or hand it to the next waiter."""
        connection.idle_since = asyncio.get_running_loop().time()
        self.idle.append(connection)
        self._wake()

    def forget(self, connection: _Connection) -> None:
        """A connection is closed (or never opened): free its slot."""
        if connection in self.members:
            self.members.discard(connection)
            self.open -= 1
            if connection in self.idle:
                self.idle.remove(connection)
            self._wake()

    def _wake(self) -> None:
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def close(self) -> None:
        self.closed = True
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_exception(ConnectionAbortedError("the HTTP client was closed"))
        for attempt in self.connecting:
            attempt.cancel()
        for connection in list(self.members):
            connection._fail(ConnectionAbortedError("the HTTP client was closed"))


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError("timed out waiting for a free connection"))


class KeepAliveClient:
    """A pool of keep-alive HTTP/1.1 connections per origin; see the module's contract."""

    def __init__(self, *, max_connections: int = 64, idle_timeout: float = 30.0, max_body: int = 1024 * 1024,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        self.max_connections = max_connections
        self.idle_timeout = idle_timeout
        self.max_body = max_body
        self.ssl_context = ssl_context or ssl.create_default_context()
        self._origins: dict[tuple[str, str, int], _Origin] = {}
        self._targets: dict[str, _Target] = {}

    def _target(self, url: str) -> _Target:
        target = self._targets.get(url)
        if target is None:
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError(f"not an http(s) URL: {url!r}")
            port = parts.port or (443 if parts.scheme == "https" else 80)
            default = port == (443 if parts.scheme == "https" else 80)
            host = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
            path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
            authority = host if default else f"{host}:{port}"
            target = _Target((parts.scheme, parts.hostname, port), path.encode("ascii"),
                             f"Host: {authority}\r\n".encode("ascii"),
                             f"{parts.scheme}://{authority}{path}".encode("ascii"))
            if len(self._targets) >= 256:  # a few endpoints are called; never grow without bound
                self._targets.clear()
            self._targets[url] = target
        return target

    async def request(self, method: str, url: str, *, body: bytes | None = None,
                      headers: dict[str, str] | None = None, connect_timeout: float = 5.0,
                      request_timeout: float = 10.0) -> Reply:
        """Send ``method url`` with ``body`` and ``headers``; return the Reply (see the module's contract)."""
        target = self._target(url)
        origin = self._origins.get(target.origin)
        if origin is None:  # reads the proxy variables, once for this origin
            origin = self._origins[target.origin] = _Origin(self, target.origin)
        if origin.forward is None:
            lines = [method.encode("ascii"), b" ", target.path, b" HTTP/1.1\r\n", target.head]
        else:  # http through a proxy: the absolute form, and the proxy's credentials if any
            lines = [method.encode("ascii"), b" ", target.absolute, b" HTTP/1.1\r\n", target.head, origin.forward]
        for name, value in (headers or {}).items():
            if "\r" in value or "\n" in value or "\r" in name or "\n" in name:
                raise ValueError(f"header {name!r} holds a line break")
            lines.append(f"{name}: {value}\r\n".encode("latin-1"))
        if body is not None or method in ("POST", "PUT", "PATCH"):
            lines.append(b"Content-Length: %d\r\n" % len(body or b""))
        lines.append(b"\r\n")
        if body:
            lines.append(body)
        data = b"".join(lines)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + request_timeout
        timer = None
        try:
            for fresh in (False, True):
                connection = await origin.connection(loop, deadline, connect_timeout, fresh)
                reply: asyncio.Future[Reply] = loop.create_future()
                if timer is not None:
                    timer.cancel()
                timer = loop.call_at(deadline, connection._fail, TimeoutError(f"{method} {url}: timed out"))
                connection.send(data, reply, url)
                try:
                    result = await reply
                except _StaleConnection:
                    continue
                except asyncio.CancelledError:
                    # No deadline guards this connection any more: a server that never answers would
                    # hold its slot for good. Close it.
                    if connection.reply is reply:
                        connection._fail(ConnectionAbortedError("the request was cancelled"))
                    raise
                if log.isEnabledFor(logging.DEBUG):
                    log.debug("%s %s://%s%s -> %d (%d bytes)%s", method, target.origin[0], origin.name,
                              target.path.decode("ascii").split("?")[0], result.code, len(result.body),
                              origin.via)
                return result
            raise ConnectionResetError(f"{origin.name} closed the connection without a reply")
        except asyncio.TimeoutError as exc:  # asyncio.wait_for's, on Python 3.10
            raise TimeoutError(f"{method} {url}: timed out") from exc
        finally:
            if timer is not None:
                timer.cancel()

    def close(self) -> None:
        """Close every connection; requests in flight (sent, connecting, or waiting for a connection) fail
        with ConnectionAbortedError."""
        for origin in self._origins.values():
            origin.close()
        self._origins.clear()
