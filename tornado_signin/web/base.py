"""What every tornado-signin handler shares: the context, security headers, JSON answers, the session cookie.

Handlers are small: they gate requests (:mod:`tornado_signin.web.gate`),
call domain services from the :class:`~tornado_signin.context.AppContext`
passed through ``initialize()``, and map domain errors to short JSON errors
through ONE table, :data:`ERROR_RESPONSES`. Details go to the log, never to
the client, and no code, token or secret goes to either.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from tornado import httputil
from tornado.log import access_log
from tornado.web import HTTPError, RequestHandler

from ..config import Config
from ..context import AppContext
from ..errors import (
    ClientConfigError,
    GoogleError,
    GoogleUnavailableError,
    HubUnavailableError,
    InvalidGrantError,
    OverloadedError,
    SigninBlockedError,
    StorageError,
    TokenVerificationError,
)
from ..logctx import accept_request_id, request_id
from ..sessions import Session, new_session_id, read_session_cookie, session_cookie_name
from . import gate, inputs
from .gate import origin_of

__all__ = ["AccessLog", "BaseHandler", "live_session", "signin_csp", "csp_header", "ErrorResponse", "ERROR_RESPONSES", "error_response", "SECURITY_HEADERS"]

log = logging.getLogger(__name__)

#: On every response (the page's own CSP replaces the strict default one).
SECURITY_HEADERS = (
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
    ("Cache-Control", "no-store"),
    ("X-Frame-Options", "DENY"),
    ("Content-Security-Policy", "default-src 'none'; frame-ancestors 'none'"),
)


def signin_csp(config: Config, nonce: str, own_origin: str | None = None) -> dict[str, list[str]]:
    """Return the Content-Security-Policy sources a page running ``signin.js`` needs, by directive.

    ``script-src``: the page's ``nonce`` (signin.js is loaded with it and
    loads Google's library with the same nonce) and the library's origin;
    ``connect-src``: ``'self'`` (state, code POST, session), the websocket
    origin of ``own_origin`` (``ws://``/``wss://``; older browsers do not
    match it with ``'self'``), and the script and auth origins (Google's FedCM
    migration of both libraries fetches from ``accounts.google.com``);
    ``frame-src``: the auth and script origins; ``style-src``: the script
    origin (GIS styles its own elements). Each source appears once.
    """
    script_origin = origin_of(config.google.client_script_url) or ""
    auth_origin = origin_of(config.google.endpoints.auth_uri) or ""
    ws_origin = own_origin.replace("http", "ws", 1) if own_origin else ""
    directives = {
        "script-src": [f"'nonce-{nonce}'", script_origin],
        "connect-src": ["'self'", ws_origin, script_origin, auth_origin],
        "frame-src": [auth_origin, script_origin],
        "style-src": [script_origin],
    }
    return {name: list(dict.fromkeys(s for s in sources if s)) for name, sources in directives.items()}


def csp_header(*policies: Mapping[str, Iterable[str]]) -> str:
    """Return one ``Content-Security-Policy`` value of ``policies`` merged (each directive's sources joined, once).

    Example::

        csp_header({"default-src": ["'self'"]}, signin_csp(config, nonce, origin))
    """
    merged: dict[str, dict[str, None]] = {}
    for policy in policies:
        for name, sources in policy.items():
            merged.setdefault(name, {}).update(dict.fromkeys(sources))
    return "; ".join(" ".join([name, *sources]) for name, sources in merged.items())


@dataclass(frozen=True)
class ErrorResponse:
    """How a domain error is answered: HTTP ``status``, the short ``reason`` the client sees, and the
    ``outcome`` label it counts under in ``signin_logins_total``."""

    status: int
    reason: str
    outcome: str


#: The one domain-error -> HTTP response table; looked up along the exception's MRO (most specific first).
ERROR_RESPONSES: dict[type[Exception], ErrorResponse] = {
    TokenVerificationError: ErrorResponse(401, "id token rejected", "verification_failed"),
    InvalidGrantError: ErrorResponse(400, "code rejected by google", "invalid_grant"),
    ClientConfigError: ErrorResponse(502, "sign-in is misconfigured", "client_config"),
    GoogleUnavailableError: ErrorResponse(504, "google unavailable", "google_unavailable"),
    GoogleError: ErrorResponse(502, "bad reply from google", "google_protocol"),
    OverloadedError: ErrorResponse(503, "server busy", "overloaded"),
    StorageError: ErrorResponse(503, "storage unavailable", "storage_error"),
    HubUnavailableError: ErrorResponse(503, "session store unavailable", "hub_unavailable"),
    SigninBlockedError: ErrorResponse(403, "sign-in blocked", "blocked"),
}


def error_response(exc: BaseException) -> ErrorResponse | None:
    """Return the answer :data:`ERROR_RESPONSES` gives ``exc``, or None when it has none."""
    for cls in type(exc).__mro__:
        response = ERROR_RESPONSES.get(cls)
        if response is not None:
            return response
    return None


async def live_session(ctx: AppContext, handler: RequestHandler) -> Session | None:
    """Return the session of ``handler``'s signed cookie, or None (absent, forged, expired, or ended).

    The one session check of every handler, ours and the host's
    (:class:`~tornado_signin.web.host.SigninMixin`): a signed-in cookie counts
    only while its record lives in the hub (one read, never cached; a hub that
    cannot answer counts as ended).
    """
    secure = inputs.scheme(handler.request, ctx.config.server) == "https"
    session = read_session_cookie(handler, ctx.config.limits.session_max_age_days, secure=secure)
    if session is not None and session.sub and not await ctx.sessions.is_live(session):
        return None
    return session


class AccessLog:
    """Tornado's access log (``log_function``), with refusals by a rate limit collapsed.

    Each request is one line as Tornado writes it, except 429s: one line per
    :data:`INTERVAL` seconds says how many there were, so a flood of refused
    requests cannot grow the log by a line each.
    """

    INTERVAL = 10.0

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._last = float("-inf")
        self._held = 0

    def __call__(self, handler: RequestHandler) -> None:
        status = handler.get_status()
        request = handler.request
        if status == 429:
            now = self.clock()
            if now - self._last < self.INTERVAL:
                self._held += 1
                return
            held, self._held, self._last = self._held, 0, now
            access_log.warning("429 %s %s (%s) (%d more refused by rate limits in the last %.0f s)",
                               request.method, request.uri, request.remote_ip, held, self.INTERVAL)
            return
        if status < 400:
            method = access_log.info
        elif status < 500:
            method = access_log.warning
        else:
            method = access_log.error
        method("%d %s %s (%s) %.2fms", status, request.method, request.uri, request.remote_ip,
               1000.0 * request.request_time())


class BaseHandler(RequestHandler):
    """Shared plumbing: the context, the session cookie, JSON errors, security headers."""

    ctx: AppContext

    def initialize(self, ctx: AppContext) -> None:
        self.ctx = ctx
        # Tornado sets the default headers before initialize(); HSTS needs the config.
        self._set_hsts()

    def _set_hsts(self) -> None:
        if self.is_secure:
            self.set_header("Strict-Transport-Security", "max-age=31536000")

    def prepare(self) -> Awaitable[None] | None:
        # Each request runs in its own task: the id tags every log line of it.
        request_id.set(self.request_id)
        # Before anything parses a header: the one validation layer (400 JSON for a malformed value).
        inputs.check_headers(self.request)
        return None

    # -- headers and errors --------------------------------------------------------

    @property
    def request_id(self) -> str:
        """Return this request's id: a sane incoming ``X-Request-Id`` (from the proxy) or a new one."""
        rid = self.__dict__.get("_request_id")
        if rid is None:
            rid = self.__dict__["_request_id"] = accept_request_id(self.request.headers.get("X-Request-Id"))
        return rid

    def set_default_headers(self) -> None:
        # Through set_header (public API), not Tornado's private _headers:
        # measured 3.4 us a response against 2.0 us, nothing beside a login.
        for name, value in SECURITY_HEADERS:
            self.set_header(name, value)
        self.set_header("X-Request-Id", self.request_id)
        if "ctx" in self.__dict__:  # again after an error (send_error clears the headers)
            self._set_hsts()
        self.clear_header("Server")

    def check_xsrf_cookie(self) -> None:
        # A host application may turn on xsrf_cookies for its own forms; these
        # endpoints have their own, stricter gate (X-Requested-With, Origin,
        # fetch metadata, a session-bound single-use state), and the page's
        # script sends no _xsrf.
        return None

    def compute_etag(self) -> None:
        # Every answer here is per-session and no-store: an ETag (a SHA-1 of
        # each GET body) could never be used for revalidation.
        return None

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        # The reason is a short fixed phrase chosen by the handler (an
        # HTTPError's reason); exception text may hold remote content and is only logged.
        reason = kwargs.get("reason")
        exc_info = kwargs.get("exc_info")
        if exc_info is not None and isinstance(exc_info[1], HTTPError) and exc_info[1].reason:
            reason = exc_info[1].reason
        if not reason:
            reason = httputil.responses.get(status_code, "error")
            if reason == "Internal Server Error":
                reason = "internal error"
        self.set_header("Content-Type", "application/json; charset=UTF-8")
        self.finish(json.dumps({"error": reason.lower(), **self.error_fields()}))

    def error_fields(self) -> dict[str, Any]:
        """Return the fields an error answer carries besides ``error`` (none here; the code endpoint adds
        the next state)."""
        return {}

    def fail(self, status: int, reason: str, log_message: str | None = None) -> HTTPError:
        """Return an HTTPError answered as ``{"error": reason}`` and logged with ``log_message``."""
        return HTTPError(status, log_message or reason, reason=reason)

    def fail_for(self, exc: BaseException, log_message: str | None = None) -> HTTPError:
        """Return the HTTPError :data:`ERROR_RESPONSES` gives ``exc`` (500 for an error it has no answer for)."""
        response = error_response(exc)
        if response is None:
            return HTTPError(500, f"unmapped error: {type(exc).__name__}")
        return self.fail(response.status, response.reason, log_message)

    def fail_logged(self, exc: GoogleError | StorageError, what: str) -> HTTPError:
        """Log ``exc`` as ``what: google failed: …`` (WARNING: Google's trouble passes) or ``what: store
        failed: …`` (ERROR: an operator must mend the store), and return :meth:`fail_for` ``exc``."""
        if isinstance(exc, StorageError):
            log.error("%s: store failed: %s", what, exc)
        else:
            log.warning("%s: google failed: %s", what, exc)
        return self.fail_for(exc)

    def write_json(self, document: dict[str, Any], status: int = 200) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json; charset=UTF-8")
        self.finish(json.dumps(document))

    # -- origin --------------------------------------------------------------------

    @property
    def is_secure(self) -> bool:
        """Return whether the client sees https (:func:`inputs.scheme`: ``server.public_origin`` first)."""
        return inputs.scheme(self.request, self.ctx.config.server) == "https"

    def own_origin(self) -> str:
        """Return the app's own origin (:func:`inputs.own_origin`: ``server.public_origin`` when set)."""
        return inputs.own_origin(self.request, self.ctx.config.server)

    def allowed_origins(self) -> frozenset[str]:
        return self.ctx.allowed_origins(self.own_origin())

    def check_request_origin(self) -> None:
        """Refuse unless the request comes from an allowed origin by script (:func:`gate.check_script_request`)."""
        gate.check_script_request(self.request, self.allowed_origins(),
                                  foreign_origins_configured=bool(self.ctx.config.server.allowed_origins))

    async def consume_state(self, session: Session) -> None:
        """Refuse unless the request carries an unexpired state issued to this session, and spend it.

        Raise HTTPError 403 for a bad state, 503 when the hub cannot tell.
        """
        try:
            await gate.consume_state(self.ctx, session, inputs.state(self.request))
        except HubUnavailableError as exc:
            log.warning("state check failed: %s", exc)
            raise self.fail_for(exc) from exc

    async def issue_state(self, session: Session) -> str:
        """Return a new state for ``session`` (:func:`gate.issue_state`)."""
        return await gate.issue_state(self.ctx, session)

    async def rate_limit(self, budget: str) -> None:
        """Refuse with a JSON 429 once this client has spent its budget ``budget`` (``limits.*_per_minute``).

        The client is ``request.remote_ip`` (``X-Forwarded-For`` only with ``server.xheaders``).
        """
        if not await self.ctx.limits.allow(budget, self.request.remote_ip or "?"):
            self.ctx.metrics.inc("signin_rate_limited_total", budget=budget)
            # No log_message: a flood must not write a line per request (the access log collapses 429s).
            raise HTTPError(429, reason="too many requests")

    # -- session -------------------------------------------------------------------

    def read_session_cookie(self) -> Session | None:
        """Return the session the signed cookie holds, or None, *without* checking that it was not ended."""
        return read_session_cookie(self, self.ctx.config.limits.session_max_age_days, secure=self.is_secure)

    async def read_session(self) -> Session | None:
        """Return the session of the signed cookie, or None (also for a signed-in session that was ended).

        A signed-in cookie costs one hub read (:meth:`SessionRegistry.is_live`); the answer is never cached.
        """
        return await live_session(self.ctx, self)

    def write_session(self, session: Session) -> None:
        """Set the signed session cookie: HttpOnly, SameSite=Lax, Secure (and ``__Host-``) over https.

        ``Path=/`` whatever the mount prefix (``server.path_prefix``): the
        ``__Host-`` prefix requires it (browsers drop such a cookie with any
        other Path), and the host app's own handlers outside the prefix read
        the session (:class:`~tornado_signin.web.host.SigninMixin`). A Path
        is no boundary inside one origin (any page of the origin can fetch
        under the prefix with the cookie); the boundary is the origin, which
        ``__Host-`` pins: no subdomain or plain-http page can set or shadow it.
        """
        self.set_signed_cookie(
            session_cookie_name(self.is_secure),
            session.encode(),
            expires_days=None,
            httponly=True,
            samesite="Lax",
            secure=self.is_secure,
            path="/",
        )

    def clear_session(self) -> None:
        # The same attributes as when set: a __Host- cookie is only replaced by a Secure one.
        self.clear_cookie(session_cookie_name(self.is_secure), path="/", secure=self.is_secure, httponly=True,
                          samesite="Lax")

    async def ensure_session(self) -> Session:
        """Return the current session, starting (and setting) a new anonymous one if there is none."""
        session = await self.read_session()
        if session is None:
            session = Session(sid=new_session_id())
            self.write_session(session)
        return session

    async def require_session(self) -> Session:
        """Return the current session; raise HTTPError 403 when the request has none."""
        session = await self.read_session()
        if session is None:
            raise self.fail(403, "no session", "request without a session cookie")
        return session

    async def end_session(self, session: Session, *, everywhere: bool = False) -> list[str]:
        """Clear the session cookie, end the session's record and close its sockets, in every process.

        With ``everywhere`` every session of the user ends. Return the ids of
        the live sessions ended. Raise HTTPError 503 when the hub cannot end it.
        """
        self.clear_session()
        try:
            ended = await self.ctx.sessions.end_all(session.sub) if everywhere and session.sub else []
            if session.sid not in ended and await self.ctx.sessions.end(session.sid):
                ended.append(session.sid)
        except HubUnavailableError as exc:
            log.error("sign-out could not end the session record: %s", exc)
            raise self.fail_for(exc) from exc
        return ended

    # -- the confirmation channel ----------------------------------------------------

    async def publish(self, channel: str, frame: dict[str, Any], **extra: Any) -> None:
        """Publish ``frame`` on ``channel``; a hub failure is logged, never raised (the request's own
        answer already tells the page, and a reconnecting socket reads the record)."""
        try:
            await self.ctx.hub.publish(channel, {"frame": frame, **extra})
        except Exception as exc:
            log.error("confirmation hub publish failed: %s", type(exc).__name__)
