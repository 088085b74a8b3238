"""The listening side of the server: connections kept below the descriptor limit, accept errors backed off.

Tornado's accept handler (``tornado.netutil.add_accept_handler``) lets an
``EMFILE`` ("Too many open files") out of ``accept()``: the IOLoop logs it
with a traceback and calls the handler again at once, because the listening
socket stays readable. At the descriptor limit the server then spins on one
core and writes megabytes of log a second, and ``/healthz`` is never
accepted. :class:`GuardedHTTPServer` replaces that handler (through the
IOLoop's public ``add_handler``) with one that:

- counts open connections (HTTP ones and upgraded websockets) and never
  holds more than :attr:`GuardedHTTPServer.max_connections`, so descriptors
  stay free for the token store, the hub and Google, whatever a client
  opens. At the cap it first stops accepting for up to :data:`FULL_WAIT`
  (new connections wait in the kernel's backlog: a burst of short requests,
  refused handshakes say, frees room within milliseconds, and ``/healthz``
  is then served, late but served); still full after that, it answers each
  waiting connection a fixed ``503`` and closes it right after ``accept()``;
- caps the HTTP connections of one peer address (``per_address``), so one
  client cannot take every connection from the others (a health checker, a
  user): past it, its new connection gets the ``503`` at once. Off behind a
  proxy (``server.xheaders``), where every connection comes from the proxy;
- on ``EMFILE``/``ENFILE``/``ENOBUFS``/``ENOMEM`` stops accepting on that
  socket for a short, growing pause (50 ms up to 1 s) and logs it once per
  :data:`LOG_INTERVAL` with the count of what it did not log.

:func:`connection_budget` derives the default cap from ``RLIMIT_NOFILE``.
"""

from __future__ import annotations

import errno
import logging
import resource
import socket
import time
from collections.abc import Callable, Iterable
from typing import Any

from tornado.httpserver import HTTPServer
from tornado.ioloop import IOLoop

__all__ = ["GuardedHTTPServer", "connection_budget", "LOG_INTERVAL", "FULL_WAIT", "REFUSAL"]

log = logging.getLogger(__name__)

#: At most one log line per this many seconds for each kind of refusal.
LOG_INTERVAL = 10.0
#: What a connection past the cap is sent before it is closed.
REFUSAL = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
           b"Content-Length: 25\r\nConnection: close\r\nRetry-After: 1\r\n\r\n{\"error\": \"server busy\"}\n")
#: accept() errors that mean "out of descriptors or memory now": wait, do not spin.
_RESOURCE_ERRORS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
_PAUSE_MIN, _PAUSE_MAX = 0.05, 1.0
#: At the connection cap: how long new connections wait for room before they are refused, and how
#: often the listener looks for room meanwhile (seconds).
FULL_WAIT, _ROOM_POLL = 0.5, 0.01
#: Connections taken per readiness event, as Tornado's handler (its listen backlog).
_ACCEPTS_PER_EVENT = 128


def connection_budget(configured: int, reserve: int) -> int:
    """Return how many client connections this process may hold open.

    ``configured`` (``limits.max_connections``, 0: automatic) is capped at the
    soft ``RLIMIT_NOFILE`` less ``reserve`` descriptors (``limits.
    descriptor_reserve``: the store, the hub, Google, logs), and is at least 1.
    """
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        ceiling = 1 << 20
    else:
        ceiling = max(1, soft - reserve)
    if configured <= 0:
        return ceiling
    if configured > ceiling:
        log.warning("limits.max_connections %d exceeds the descriptor limit %d less limits.descriptor_reserve "
                    "%d: using %d", configured, soft, reserve, ceiling)
        return ceiling
    return configured


def _peer(address: Any) -> str:
    """Return the host part of a socket's peer ``address`` (a tuple for IP, a path string for a Unix socket)."""
    return str(address[0]) if isinstance(address, tuple) and address else str(address)


class _OncePerInterval:
    """A log line at most once per :data:`LOG_INTERVAL`, saying how many were held back."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self.last = float("-inf")
        self.held = 0

    def __call__(self, message: str, *args: Any) -> None:
        now = self.clock()
        if now - self.last < LOG_INTERVAL:
            self.held += 1
            return
        held, self.held, self.last = self.held, 0, now
        log.warning(message + " (%d more in the last %.0f s)", *args, held, LOG_INTERVAL)


class GuardedHTTPServer(HTTPServer):
    """An HTTPServer that holds at most ``max_connections`` connections and backs off accept errors.

    ``open_sockets()`` returns the number of upgraded websockets the
    application holds (Tornado hands a websocket's stream over to it, so the
    server no longer counts it as a connection). ``on_refused(reason)`` is
    called for every connection refused at accept (``"full"``: the connection
    cap; ``"address"``: its peer's cap) and every accept error
    (``"accept_error"``), e.g. to count it.
    """

    def initialize(self, *args: Any, max_connections: int = 0, per_address: int = 0,
                   open_sockets: Callable[[], int] = lambda: 0,
                   on_refused: Callable[[str], None] = lambda reason: None,
                   clock: Callable[[], float] = time.monotonic, **kwargs: Any) -> None:
        super().initialize(*args, **kwargs)
        self.max_connections = max_connections or connection_budget(0, 64)
        #: HTTP connections one peer address may hold (0: no cap).
        self.per_address = per_address
        self._by_address: dict[str, int] = {}
        self._address_of: dict[int, str] = {}  # id(stream) -> its peer address, while counted
        self.open_sockets = open_sockets
        self.on_refused = on_refused
        self.http_connections = 0
        self.clock = clock
        self._pause = _PAUSE_MIN
        self._listening: dict[int, socket.socket] = {}
        self._paused: set[int] = set()
        self._full_since: float | None = None
        self._halted = False
        self._log_full = _OncePerInterval(clock)
        self._log_address = _OncePerInterval(clock)
        self._log_error = _OncePerInterval(clock)

    @property
    def open_connections(self) -> int:
        """Return the connections open now: HTTP ones plus upgraded websockets."""
        return self.http_connections + self.open_sockets()

    # -- counting (HTTPServer's own hooks) -------------------------------------------

    def handle_stream(self, stream: Any, address: tuple) -> None:
        self.http_connections += 1
        peer = _peer(address)
        self._by_address[peer] = self._by_address.get(peer, 0) + 1
        self._address_of[id(stream)] = peer
        super().handle_stream(stream, address)

    def on_close(self, server_conn: object) -> None:
        # Called once per connection, also when a websocket takes its stream over.
        self.http_connections -= 1
        peer = self._address_of.pop(id(getattr(server_conn, "stream", None)), None)
        if peer is not None:
            left = self._by_address.get(peer, 0) - 1
            if left > 0:
                self._by_address[peer] = left
            else:
                self._by_address.pop(peer, None)
        super().on_close(server_conn)

    # -- accepting -------------------------------------------------------------------

    def add_sockets(self, sockets: Iterable[socket.socket]) -> None:
        sockets = list(sockets)
        super().add_sockets(sockets)
        loop = IOLoop.current()
        for sock in sockets:
            # Tornado registered its own accept handler on the socket; ours
            # replaces it (TCPServer.stop still unregisters the socket by fd).
            loop.remove_handler(sock)
            self._listening[sock.fileno()] = sock
            loop.add_handler(sock, self._accept, IOLoop.READ)

    def stop(self) -> None:
        self._halted = True
        self._listening.clear()
        super().stop()

    def _accept(self, sock: socket.socket, _events: int) -> None:
        for _ in range(_ACCEPTS_PER_EVENT):
            if self._halted:
                return
            full = self.open_connections >= self.max_connections
            if not full:
                self._full_since = None
            else:
                now = self.clock()
                if self._full_since is None:
                    self._full_since = now
                if now - self._full_since < FULL_WAIT:
                    self._pause_accepting(sock, _ROOM_POLL)  # leave them in the backlog a while
                    return
            try:
                connection, address = sock.accept()
            except BlockingIOError:
                self._pause = _PAUSE_MIN
                return
            except ConnectionAbortedError:
                continue
            except OSError as exc:
                self._back_off(sock, exc)
                return
            if full:
                self._refuse(connection)
                continue
            if self.per_address and self._by_address.get(_peer(address), 0) >= self.per_address:
                self._refuse(connection, "address")
                continue
            # The callback Tornado itself gives add_accept_handler: it wraps
            # the socket (TLS too) in an IOStream and calls handle_stream.
            self._handle_connection(connection, address)

    def _refuse(self, connection: socket.socket, reason: str = "full") -> None:
        try:
            connection.setblocking(False)
            connection.send(REFUSAL)
        except OSError:
            pass
        connection.close()
        self.on_refused(reason)
        if reason == "full":
            self._log_full("connection refused: %d connections open, the limit (limits.max_connections)",
                           self.open_connections)
        else:
            self._log_address("connection refused: a peer address holds limits.connections_per_address (%d)",
                              self.per_address)

    def _back_off(self, sock: socket.socket, exc: OSError) -> None:
        """Stop accepting on ``sock`` for a growing pause; log once per interval."""
        self.on_refused("accept_error")
        pause = self._pause
        self._pause = min(_PAUSE_MAX, self._pause * 2)
        name = errno.errorcode.get(exc.errno or 0, "error")
        if exc.errno not in _RESOURCE_ERRORS:
            pause = _PAUSE_MAX
        self._log_error("accept() failed: %s (%s); not accepting for %.2f s", exc.strerror or exc, name, pause)
        self._pause_accepting(sock, pause)

    def _pause_accepting(self, sock: socket.socket, seconds: float) -> None:
        fd = sock.fileno()
        if fd in self._paused:
            return
        self._paused.add(fd)
        loop = IOLoop.current()
        loop.remove_handler(sock)
        loop.call_later(seconds, self._resume, sock, fd)

    def _resume(self, sock: socket.socket, fd: int) -> None:
        self._paused.discard(fd)
        if self._halted or self._listening.get(fd) is not sock:
            return
        IOLoop.current().add_handler(sock, self._accept, IOLoop.READ)
