"""``GET /confirm``: the websocket that tells the page "fully logged in" (seed step 7).

A socket is accepted only with an allowed ``Origin`` (a missing or ``null``
one is refused, unlike Tornado's default) and a valid session cookie, and is
subscribed only to its own session's channel. On connect it is sent the
channel's recorded outcome, so a socket that connects after the login still
learns it. When the session id rotates at sign-in the socket follows it;
sign-out closes it. Frames from the client are ignored; oversized ones close
the socket (Tornado's ``websocket_max_message_size``); pings detect dead peers
(:class:`SocketPinger`: one timer for every socket of the application).
"""

from __future__ import annotations

import collections
import json
import logging
import weakref
from typing import Any

from tornado.http1connection import HTTP1Connection
from tornado.ioloop import IOLoop, PeriodicCallback
from tornado.websocket import WebSocketClosedError, WebSocketHandler

from ..context import AppContext
from ..errors import HubUnavailableError
from ..hub import Subscription
from ..logctx import accept_request_id, request_id
from ..sessions import Session
from . import inputs
from .base import live_session
from .gate import origin_allowed

__all__ = ["ConfirmSocket", "SocketPinger"]

log = logging.getLogger(__name__)

#: Close codes sent to the page.
CLOSE_SIGNED_OUT = 4000
CLOSE_SHUTDOWN = 1001
#: RFC 6455's "try again later": the hub could not subscribe the socket to its session's channel.
CLOSE_TRY_AGAIN = 1013


class SocketPinger:
    """Pings every open /confirm socket of one application from one timer; closes those that stop answering.

    A socket is pinged ``interval`` seconds after it opened or last answered;
    one that has not answered a ping ``timeout`` seconds later is closed (the
    rule of Tornado's ``websocket_ping_interval`` / ``websocket_ping_timeout``,
    which the product's ``limits.websocket_ping_*`` configure). Hand-written
    because a measurement earned it: Tornado's pinging keeps a task, its
    coroutine and a timer for each socket, ~1 KB of an idle socket's ~17 KB
    (tracemalloc, 2,000 sockets) and one timer per socket in the IOLoop's heap.
    Sockets wait in two queues in time order (due for a ping; pinged, not
    answered), so a tick touches only the sockets it acts on, and ticks come
    at most every 0.5 s, so the pings of sockets opened together are spread
    as their opening was (no stall of the IOLoop every interval). The queues
    hold weak references: a closed socket is not kept. The timer starts with
    the first socket and stops with :meth:`stop`.
    """

    def __init__(self, interval: float, timeout: float) -> None:
        self.interval = interval
        self.timeout = timeout
        self._timer: PeriodicCallback | None = None
        self._due: collections.deque[tuple[float, weakref.ref[ConfirmSocket]]] = collections.deque()
        self._unanswered: collections.deque[tuple[float, weakref.ref[ConfirmSocket]]] = collections.deque()

    @property
    def enabled(self) -> bool:
        """Return True when sockets are pinged at all (``limits.websocket_ping_interval`` > 0)."""
        return self.interval > 0

    def watch(self, socket: ConfirmSocket, now: float) -> None:
        """Schedule ``socket``'s next ping ``interval`` seconds after ``now`` (it opened or answered then)."""
        if not self.enabled:
            return
        self.start()
        socket.ping_due = now + self.interval
        self._due.append((socket.ping_due, weakref.ref(socket)))

    def start(self) -> None:
        """Start the timer on the current IOLoop, unless it runs already (or pinging is off)."""
        if self._timer is None and self.enabled:
            # A few ticks per interval or timeout, at most 0.5 s apart: a dead peer is found at most a quarter
            # of either late, and the pings of sockets opened together go out spread, not at once.
            tick = max(0.01, min(0.5, self.interval / 4, (self.timeout or self.interval) / 4))
            self._timer = PeriodicCallback(self.tick, tick * 1000)
            self._timer.start()

    def stop(self) -> None:
        """Stop the timer (idempotent)."""
        if self._timer is not None:
            self._timer.stop()
            self._timer = None

    def tick(self, now: float | None = None) -> None:
        """Close the sockets whose ping went unanswered for ``timeout`` seconds; ping the sockets that are due.

        ``now``: the IOLoop's time (by default, read here).
        """
        now = IOLoop.current().time() if now is None else now
        unanswered, due = self._unanswered, self._due
        while unanswered and unanswered[0][0] + self.timeout <= now:
            sent, ref = unanswered.popleft()
            socket = ref()
            if socket is not None and socket.pinged_at == sent:  # not answered since
                socket.ping_timed_out()
        while due and due[0][0] <= now:
            when, ref = due.popleft()
            socket = ref()
            # An entry a pong replaced (ping_due moved on) or of a closed socket is dropped.
            if socket is not None and socket.ping_due == when and socket.ping_now(now):
                unanswered.append((now, ref))


class ConfirmSocket(WebSocketHandler):
    """One page's confirmation channel."""

    ctx: AppContext

    def initialize(self, ctx: AppContext) -> None:
        self.ctx = ctx
        self.session: Session | None = None
        self.subscription: Subscription | None = None
        self.channel: str | None = None
        #: (session id, client address) of the quota slot this socket holds.
        self.slot: tuple[str, str] | None = None
        #: IOLoop time the peer last showed it is alive (open, a pong); when its next ping is due; when the
        #: unanswered ping left (see SocketPinger).
        self.alive_at = 0.0
        self.ping_due = 0.0
        self.pinged_at: float | None = None

    @property
    def max_message_size(self) -> int:
        """Return ``limits.websocket_max_message_bytes``: the cap holds in a host app that sets no
        ``websocket_max_message_size`` (Tornado's default is 10 MiB)."""
        return self.ctx.config.limits.websocket_max_message_bytes

    def check_origin(self, origin: str) -> bool:
        # The code endpoint's own check (gate.origin_allowed): exact serialized origin in the allow-list.
        own = inputs.own_origin(self.request, self.ctx.config.server)
        return origin_allowed(origin, self.ctx.allowed_origins(own))

    async def refuse(self, status: int, reason: str) -> None:
        """Answer the handshake ``{"error": reason}`` with ``status`` and close the connection.

        A refused handshake's connection is closed, not kept alive: a script
        that opens sockets without end must not hold a descriptor for each.
        """
        self.set_status(status)
        self.set_header("Content-Type", "application/json; charset=UTF-8")
        self.set_header("X-Request-Id", request_id.get())
        self.set_header("Connection", "close")
        await self.finish(json.dumps({"error": reason}))
        if isinstance(self.request.connection, HTTP1Connection):  # what Tornado's HTTPServer serves
            self.request.connection.close()

    async def get(self, *args: Any, **kwargs: Any) -> None:
        request_id.set(accept_request_id(self.request.headers.get("X-Request-Id")))
        try:
            # The one validation layer, the handshake's own headers included
            # (Tornado's checks of those answer plain text).
            inputs.check_headers(self.request, websocket=True)
            origin = inputs.origin(self.request)
            # Tornado accepts a handshake without Origin; browsers always send one,
            # so its absence means a non-browser client or a stripped request.
            # Tornado >= 6.6 also skips check_origin when Sec-Fetch-Site says
            # same-origin or when Origin's host:port equals Host whatever the
            # scheme, so the check runs here, on every handshake.
            allowed = bool(origin) and self.check_origin(origin or "")
        except inputs.InputError as exc:
            log.warning("websocket handshake refused: %s", exc.log_message)
            await self.refuse(400, exc.reason or "malformed request")
            return
        if not allowed:
            await self.refuse(403, "origin not allowed")
            return
        if not await self.ctx.limits.allow("socket", self.request.remote_ip or "?"):
            self.ctx.metrics.inc("signin_rate_limited_total", budget="socket")
            await self.refuse(429, "too many requests")
            return
        # An ended signed-in session is refused like a missing one (one hub read).
        self.session = await live_session(self.ctx, self)
        if self.session is None:
            await self.refuse(403, "session required")
            return
        address = self.request.remote_ip or "?"
        full = self.ctx.socket_quota.acquire(self.session.sid, address)
        if full is not None:
            self.ctx.metrics.inc("signin_sockets_refused_total", cap=full)
            await self.refuse(429, "too many sockets")
            return
        self.slot = (self.session.sid, address)
        try:
            await super().get(*args, **kwargs)
        finally:
            if self.ws_connection is None:  # the handshake failed: no on_close will come
                self._release()

    def _release(self) -> None:
        if self.slot is not None:
            self.ctx.socket_quota.release(*self.slot)
            self.slot = None

    async def open(self, *args: Any, **kwargs: Any) -> None:
        assert self.session is not None
        # The handshake's headers are read (origin, cookie, upgrade) and never again: an idle socket
        # would keep them for its life (the request and its spent HTTP connection share the object, so it
        # is emptied in place), ~1.2 KB of its ~17 KB (measured with tracemalloc, 2,000 sockets); so are
        # the headers of the 101 answer, long sent.
        self.request.headers.clear()
        for name in ("Server", "Date", "Upgrade", "Connection", "Sec-WebSocket-Accept"):  # the 101's, sent
            self.clear_header(name)
        self.alive_at = IOLoop.current().time()
        self.ctx.sockets.add(self)
        if self.ctx.pinger is not None:
            self.ctx.pinger.watch(self, self.alive_at)
        if not await self._follow(self.session.sid):
            return
        try:
            recorded = await self.ctx.hub.last(self.session.sid)
        except HubUnavailableError as exc:
            self._unavailable(exc)
            return
        if recorded is not None:
            self._deliver(recorded)

    async def _follow(self, channel: str) -> bool:
        """Listen on ``channel`` instead of the current one; False (the socket closed 1013) when the hub cannot."""
        if self.subscription is not None:
            self.subscription.close()
            self.subscription = None
        self.channel = channel
        try:
            self.subscription = await self.ctx.hub.subscribe(channel, self._deliver)
        except HubUnavailableError as exc:
            self._unavailable(exc)
            return False
        return True

    def _unavailable(self, exc: HubUnavailableError) -> None:
        # A socket that hears nothing would leave the page waiting for ever: close it so the page
        # reconnects (and falls back on the POST's own answer meanwhile).
        log.warning("confirmation socket closed: the hub could not follow its session: %s", exc)
        self.close(CLOSE_TRY_AGAIN, "try again later")

    def _deliver(self, message: dict[str, Any]) -> None:
        frame = message.get("frame")
        if frame is not None:
            try:
                self.write_message(json.dumps(frame))
            except WebSocketClosedError:
                return
        if message.get("close"):
            self.close(CLOSE_SIGNED_OUT, "signed out")
        elif isinstance(message.get("rebind"), str):
            # The session id rotated at sign-in: follow the new channel so that
            # sign-out of the new session reaches this socket too.
            IOLoop.current().add_callback(self._follow, message["rebind"])

    def ping_now(self, now: float) -> bool:
        """Ping the peer (called by :class:`SocketPinger`); return False when the socket is closed or closing."""
        if self.ws_connection is None or self.ws_connection.is_closing():
            return False
        try:
            self.ping()
        except WebSocketClosedError:
            return False
        self.pinged_at = now
        return True

    def ping_timed_out(self) -> None:
        """Close the socket: its ping went unanswered (called by :class:`SocketPinger`)."""
        if self.ws_connection is not None and not self.ws_connection.is_closing():
            self.close(reason="ping timed out")

    def on_pong(self, data: bytes) -> None:
        self.alive_at = IOLoop.current().time()
        self.pinged_at = None
        if self.ctx.pinger is not None:
            self.ctx.pinger.watch(self, self.alive_at)

    def on_message(self, message: str | bytes) -> None:
        # The page has nothing to say; junk is ignored, oversized frames are
        # refused by websocket_max_message_size before they get here.
        return None

    def on_close(self) -> None:
        self._release()
        self.ctx.sockets.discard(self)
        if self.subscription is not None:
            self.subscription.close()
            self.subscription = None
