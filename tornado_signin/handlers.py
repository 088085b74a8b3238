"""The HTTP surface: the page, the state, the code endpoint, sign-out, disconnect, health, metrics.

Handlers are small: they gate requests, call domain services from the
:class:`~tornado_signin.context.AppContext` passed through ``initialize()``,
and map domain errors to short JSON errors. Details go to the log, never to
the client, and no code, token or secret goes to either.
"""

from __future__ import annotations

import json
import logging
import re
import secrets
from typing import Any
from urllib.parse import urlsplit

from tornado.web import HTTPError, RequestHandler, stream_request_body

from .context import AppContext
from .logctx import accept_request_id, request_id
from .errors import (
    ClientConfigError,
    GoogleError,
    HubUnavailableError,
    GoogleUnavailableError,
    InvalidGrantError,
    OverloadedError,
    StorageError,
    TokenVerificationError,
    UnknownUserError,
)
from .sessions import Session, new_session_id, read_session_cookie, session_cookie_name
from .signin import CONSENT_REQUIRED, SIGNED_IN

__all__ = [
    "BaseHandler",
    "PageHandler",
    "StateHandler",
    "StoreAuthCodeHandler",
    "SignoutHandler",
    "DisconnectHandler",
    "HealthHandler",
    "ReadyHandler",
    "MetricsHandler",
]

log = logging.getLogger(__name__)

#: Google's one-time codes are URL-safe text ("4/0AX4Xf…"); nothing else is accepted.
CODE_PATTERN = re.compile(r"[0-9A-Za-z/_.~+-]+")  # fullmatch: "$" would let a trailing LF through
STATE_HEADER = "X-Signin-State"
#: On every response (the page's own CSP replaces the strict default one).
SECURITY_HEADERS = (
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
    ("Cache-Control", "no-store"),
    ("X-Frame-Options", "DENY"),
    ("Content-Security-Policy", "default-src 'none'; frame-ancestors 'none'"),
)


def origin_of(url: str) -> str | None:
    """Return ``scheme://host[:port]`` of ``url`` in lower case, or None."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return None
    return f"{parts.scheme}://{parts.netloc}".lower()


class BaseHandler(RequestHandler):
    """Shared plumbing: the context, the session cookie, JSON errors, security headers."""

    ctx: AppContext

    def initialize(self, ctx: AppContext) -> None:
        self.ctx = ctx

    def prepare(self) -> None:
        # Each request runs in its own task: the id tags every log line of it.
        request_id.set(self.request_id)

    # -- headers and errors --------------------------------------------------------

    @property
    def request_id(self) -> str:
        """Return this request's id: a sane incoming ``X-Request-Id`` (from the proxy) or a new one."""
        rid = self.__dict__.get("_request_id")
        if rid is None:
            rid = self.__dict__["_request_id"] = accept_request_id(self.request.headers.get("X-Request-Id"))
        return rid

    def set_default_headers(self) -> None:
        headers = self._headers
        # Constants (and an id accept_request_id has sanitised): assigned
        # directly, skipping set_header's per-call value checks on every response.
        for name, value in SECURITY_HEADERS:
            headers[name] = value
        headers["X-Request-Id"] = self.request_id
        if self.request.protocol == "https":
            headers["Strict-Transport-Security"] = "max-age=31536000"
        del headers["Server"]

    def compute_etag(self) -> None:
        # Every answer here is per-session and no-store: an ETag (a SHA-1 of
        # each GET body) could never be used for revalidation.
        return None

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        # The reason is a short fixed phrase chosen by the handler; exception
        # text may hold remote content and is only logged.
        reason = self._reason if status_code < 500 or self._reason != "Internal Server Error" else "internal error"
        self.set_header("Content-Type", "application/json; charset=UTF-8")
        self.finish(json.dumps({"error": reason.lower() if reason else "error"}))

    def fail(self, status: int, reason: str, log_message: str | None = None) -> HTTPError:
        """Return an HTTPError answered as ``{"error": reason}`` and logged with ``log_message``."""
        return HTTPError(status, log_message or reason, reason=reason)

    def write_json(self, document: dict[str, Any], status: int = 200) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json; charset=UTF-8")
        self.finish(json.dumps(document))

    # -- origin --------------------------------------------------------------------

    @property
    def is_secure(self) -> bool:
        return self.request.protocol == "https"

    def own_origin(self) -> str:
        return f"{self.request.protocol}://{self.request.host}".lower()

    def allowed_origins(self) -> frozenset[str]:
        return self.ctx.allowed_origins(self.own_origin())

    # -- session -------------------------------------------------------------------

    def read_session_cookie(self) -> Session | None:
        """Return the session the signed cookie holds, or None, *without* checking that it was not ended."""
        return read_session_cookie(self, self.ctx.config.limits.session_max_age_days)

    async def read_session(self) -> Session | None:
        """Return the session of the signed cookie, or None (also for a signed-in session that was ended).

        A signed-in cookie costs one hub read (:meth:`SessionRegistry.is_live`); the answer is never cached.
        """
        session = self.read_session_cookie()
        if session is not None and session.sub and not await self.ctx.sessions.is_live(session):
            return None
        return session

    def write_session(self, session: Session) -> None:
        """Set the signed session cookie: HttpOnly, SameSite=Lax, Secure (and ``__Host-``) over https."""
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

    # -- the CSRF gate shared by every state-changing POST -----------------------------

    def check_request_origin(self) -> None:
        """Refuse unless the request comes from an allowed origin by script (before any outbound call)."""
        headers = self.request.headers
        if headers.get("X-Requested-With") != "XMLHttpRequest":
            raise self.fail(403, "missing X-Requested-With", "X-Requested-With header missing or wrong")
        origin = headers.get("Origin")
        # Browsers send a bare serialized origin; anything else (a path, userinfo) is forged.
        if not origin or origin_of(origin) != origin.lower() or origin_of(origin) not in self.allowed_origins():
            raise self.fail(403, "origin not allowed", "Origin missing, null, malformed or not allowed")
        # Fetch metadata: a request from another origin is legitimate only when a
        # foreign origin is configured; a navigation (a form post) never is.
        site = headers.get("Sec-Fetch-Site")
        if site not in (None, "same-origin") and not self.ctx.config.server.allowed_origins:
            raise self.fail(403, "origin not allowed", f"Sec-Fetch-Site: {site[:32]}")
        if headers.get("Sec-Fetch-Mode", "cors") not in ("cors", "same-origin"):
            raise self.fail(403, "origin not allowed", "Sec-Fetch-Mode is not cors")

    async def consume_state(self, session: Session) -> None:
        """Refuse unless the request carries an unexpired state issued to this session, and spend it."""
        nonce = self.ctx.states.check(session.sid, self.request.headers.get(STATE_HEADER))
        if nonce is None:
            raise self.fail(403, "invalid state", "state missing, foreign or expired")
        if not await self.ctx.hub.consume_once(f"state:{nonce}", self.ctx.states.ttl + 60):
            raise self.fail(403, "invalid state", "state reused")

    async def publish(self, channel: str, frame: dict[str, Any], **extra: Any) -> None:
        """Publish ``frame`` on ``channel``; a hub failure is logged, never raised (the request's own
        answer already tells the page, and a reconnecting socket reads the record)."""
        try:
            await self.ctx.hub.publish(channel, {"frame": frame, **extra})
        except Exception as exc:
            log.error("confirmation hub publish failed: %s", type(exc).__name__)

    async def end_session(self, session: Session, *, everywhere: bool = False) -> None:
        """Clear the session cookie, end the session's record and close its sockets, in every process.

        With ``everywhere`` every session of the user ends. Raise HTTPError 503 when the hub cannot end it.
        """
        self.clear_session()
        try:
            ended = await self.ctx.sessions.end_all(session.sub) if everywhere and session.sub else []
            if session.sid not in ended:
                await self.ctx.sessions.end(session.sid)
        except HubUnavailableError as exc:
            log.error("sign-out could not end the session record: %s", exc)
            raise self.fail(503, "session store unavailable") from exc

    async def require_session(self) -> Session:
        session = await self.read_session()
        if session is None:
            raise self.fail(403, "no session", "request without a session cookie")
        return session


class PageHandler(BaseHandler):
    """``GET /``: the sign-in page (seed steps 1–4)."""

    async def get(self) -> None:
        session = await self.ensure_session()
        config = self.ctx.config
        nonce = secrets.token_urlsafe(16)
        script_origin = origin_of(config.google.client_script_url) or ""
        auth_origin = origin_of(config.google.endpoints.auth_uri) or ""
        ws_origin = self.own_origin().replace("http", "ws", 1)
        self.set_header(
            "Content-Security-Policy",
            f"default-src 'self'; script-src 'nonce-{nonce}' {script_origin}; "
            f"connect-src 'self' {ws_origin} {script_origin}; frame-src {auth_origin} {script_origin}; "
            f"img-src 'self' data: https:; style-src 'self' 'unsafe-inline' {script_origin}; "
            "base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
        )
        self.set_header("Cross-Origin-Opener-Policy", "same-origin-allow-popups")
        self.render(
            "index.html",
            nonce=nonce,
            client_id=config.google.client_id,
            scopes=" ".join(config.google.scopes),
            client_library=config.google.client_library,
            client_script_url=config.google.client_script_url,
            state=self.ctx.states.issue(session.sid),
            needs_consent=session.needs_consent,
            user=({"sub": session.sub, "email": session.email, "name": session.name} if session.sub else None),
            development=config.development,
        )


class StateHandler(BaseHandler):
    """``GET /state``: a fresh single-use state for this browser session (JSON)."""

    async def get(self) -> None:
        session = await self.ensure_session()
        document: dict[str, Any] = {"state": self.ctx.states.issue(session.sid)}
        if session.needs_consent:
            document["prompt"] = "consent"
        self.write_json(document)


@stream_request_body
class StoreAuthCodeHandler(BaseHandler):
    """``POST /storeauthcode``: receive the one-time code, exchange it, confirm (seed steps 6–7).

    Every gate runs before the exchange: rate limit, ``X-Requested-With``,
    Origin, content type, body size (enforced while streaming, before
    buffering), session, code charset and length, and last the single-use
    state.
    """

    def prepare(self) -> None:
        super().prepare()
        self._body = bytearray()
        if self.request.method != "POST":
            return
        if not self.ctx.code_rate_limit.allow(self.request.remote_ip or "?"):
            self.ctx.metrics.inc("signin_logins_total", outcome="rate_limited")
            raise self.fail(429, "too many requests", "code POST rate limit hit")
        self.check_request_origin()
        content_type = self.request.headers.get("Content-Type", "").split(";")[0].strip().lower()
        if content_type != "application/octet-stream":
            raise self.fail(415, "content type must be application/octet-stream")
        cap = self.ctx.config.limits.max_body_bytes
        length = self.request.headers.get("Content-Length")
        if length is not None and (not length.isdigit() or int(length) > cap):
            raise self.fail(413, "body too large")
        self.request.connection.set_max_body_size(cap)

    def data_received(self, chunk: bytes) -> None:
        self._body.extend(chunk)
        if len(self._body) > self.ctx.config.limits.max_body_bytes:
            raise self.fail(413, "body too large")

    def _code(self) -> str:
        raw = bytes(self._body)
        try:
            code = raw.decode("utf-8").strip(" ")
        except UnicodeDecodeError:
            raise self.fail(400, "malformed code", "code is not UTF-8") from None
        if not code or len(code) > self.ctx.config.limits.max_code_length or not CODE_PATTERN.fullmatch(code):
            raise self.fail(400, "malformed code", f"code rejected by charset/length bound ({len(code)} chars)")
        return code

    async def post(self) -> None:
        session = await self.require_session()
        code = self._code()
        ctx = self.ctx
        if ctx.draining:
            ctx.metrics.inc("signin_logins_total", outcome="shutting_down")
            raise self.fail(503, "server shutting down", "code POST refused: shutting down (retry elsewhere)")
        # Without a usable store the tokens Google would issue could not be
        # kept: refuse before the exchange so the code stays unspent.
        if ctx.store_health is not None and not await ctx.store_health.ready():
            ctx.metrics.inc("signin_logins_total", outcome="store_unavailable")
            raise self.fail(503, "storage unavailable", "code POST refused before the exchange: token store down")
        # A full worker pool would refuse the store save after Google spent
        # the code: answer a fast 503 now, while the code is still unspent.
        if ctx.workers.saturated:
            ctx.metrics.inc("signin_logins_total", outcome="overloaded")
            raise self.fail(503, "server busy", "code POST refused before the exchange: worker pool full")
        await self.consume_state(session)
        ctx.logins_in_flight += 1
        try:
            await self._complete(session, code)
        finally:
            ctx.logins_in_flight -= 1

    async def _complete(self, session: Session, code: str) -> None:
        ctx = self.ctx
        try:
            outcome = await ctx.signin.complete(code)
        except TokenVerificationError as exc:
            await self._failed(session, "id token rejected", f"ID token rejected: {exc}", 401, "verification_failed")
            return
        except InvalidGrantError:
            await self._failed(session, "code rejected by google", "Google answered invalid_grant to the code", 400,
                               "invalid_grant")
            return
        except ClientConfigError as exc:
            log.error("OPERATOR ALERT: Google rejected this server's client configuration: %s", exc.error)
            await self._failed(session, "sign-in is misconfigured", None, 502, "client_config")
            return
        except GoogleUnavailableError as exc:
            await self._failed(session, "google unavailable", str(exc), 504, "google_unavailable")
            return
        except GoogleError as exc:
            await self._failed(session, "bad reply from google", str(exc), 502, "google_protocol")
            return
        except (StorageError, OverloadedError) as exc:
            # Google spent the code and may have issued the only refresh token
            # we will ever get for this grant: steer the next sign-in through consent.
            log.error("tokens could not be stored after the exchange: %s", exc)
            self.write_session(Session(sid=session.sid, needs_consent=True))
            if isinstance(exc, OverloadedError):
                await self._failed(session, "server busy", None, 503, "overloaded")
            else:
                await self._failed(session, "storage unavailable", None, 503, "storage_error")
            return

        claims = outcome.claims
        if outcome.status == CONSENT_REQUIRED:
            ctx.metrics.inc("signin_logins_total", outcome=CONSENT_REQUIRED)
            log.info("sign-in needs consent again: no usable refresh token for this user")
            await self._revoke_stale_grant(outcome.record.access_token)
            self.write_session(Session(sid=session.sid, needs_consent=True))
            await self.publish(session.sid, {"type": CONSENT_REQUIRED})
            self.write_json({"status": CONSENT_REQUIRED}, 409)
            return

        ctx.metrics.inc("signin_logins_total", outcome=SIGNED_IN)
        # A new session id at sign-in defeats session fixation; the sockets of
        # the old id are told to follow the new one.
        new_session = Session(sid=new_session_id(), sub=claims.sub, email=claims.email, name=claims.name)
        try:
            await ctx.sessions.start(new_session, user_agent=self.request.headers.get("User-Agent", ""),
                                     address=self.request.remote_ip or "")
        except HubUnavailableError as exc:
            # Without its record the new cookie would not count: fail the attempt (the tokens are stored).
            log.error("sign-in could not record the session: %s", exc)
            await self._failed(session, "session store unavailable", None, 503, "hub_unavailable")
            return
        self.write_session(new_session)
        user = claims.public()
        frame = {"type": SIGNED_IN, "user": user}
        await self.publish(new_session.sid, frame)
        await self.publish(session.sid, frame, rebind=new_session.sid)
        log.info("user signed in (scopes: %d)", len(outcome.record.scopes))
        self.write_json({"status": SIGNED_IN, "user": user})

    async def _revoke_stale_grant(self, access_token: str | None) -> None:
        # Google issues a refresh token only on a grant's first consent. With
        # no usable one stored, ending the grant makes the next consent a
        # first one again: this works for GIS (which has no documented
        # prompt=consent) and gapi alike.
        if not access_token:
            return
        try:
            await self.ctx.google.revoke(access_token)
        except GoogleError as exc:
            log.warning("could not revoke the stale grant: %s", exc)

    async def _failed(self, session: Session, reason: str, log_message: str | None, status: int, outcome: str) -> None:
        self.ctx.metrics.inc("signin_logins_total", outcome=outcome)
        if log_message:
            log.warning("sign-in failed: %s", log_message)
        await self.publish(session.sid, {"type": "failed", "reason": reason})
        self.write_json({"error": reason}, status)


class SignoutHandler(BaseHandler):
    """``POST /signout``: end the session in every process (its record, its cookie, its sockets).

    ``?everywhere=1`` ends every session of the user ("sign out everywhere").
    A cookie whose session already ended is still signed out (cookie cleared, 200).
    """

    async def post(self) -> None:
        self.check_request_origin()
        # The cookie is read unchecked: signing out a session that already
        # ended elsewhere still clears this browser's cookie.
        session = self.read_session_cookie()
        if session is None:
            raise self.fail(403, "no session", "request without a session cookie")
        await self.consume_state(session)
        everywhere = self.get_query_argument("everywhere", "") in ("1", "true")
        if everywhere and session.sub and not await self.ctx.sessions.is_live(session):
            everywhere = False  # an ended cookie must not end the user's other sessions
        await self.end_session(session, everywhere=everywhere)
        self.write_json({"status": "signed_out"})


class DisconnectHandler(BaseHandler):
    """``POST /disconnect``: revoke the grant at Google, forget the user, end the session."""

    async def post(self) -> None:
        self.check_request_origin()
        session = await self.require_session()
        await self.consume_state(session)
        if not session.sub:
            raise self.fail(403, "not signed in")
        try:
            await self.ctx.offline.revoke_and_forget(session.sub)
        except GoogleUnavailableError as exc:
            log.warning("disconnect: revoke failed, user kept: %s", exc)
            raise self.fail(503, "google unavailable") from exc
        except StorageError as exc:
            log.error("disconnect: store failed: %s", exc)
            raise self.fail(503, "storage unavailable") from exc
        except UnknownUserError:
            log.info("disconnect: user already forgotten")
        await self.end_session(session, everywhere=True)
        self.write_json({"status": "disconnected"})


class HealthHandler(BaseHandler):
    """``GET /healthz``: liveness (the IOLoop answers). ``?ready=1`` adds store and hub checks."""

    async def get(self) -> None:
        if not self.get_query_argument("ready", None):
            self.write_json({"status": "ok"})
            return
        if self.ctx.draining:
            self.write_json({"status": "draining", "failed": []}, 503)
            return
        problems = {}
        health = self.ctx.store_health
        if health is not None:
            health.start()
            if not await health.probe():
                problems["store"] = "unavailable"
        else:
            try:
                await self.ctx.workers.run(self.ctx.store.check)
            except Exception as exc:
                problems["store"] = type(exc).__name__
        try:
            await self.ctx.hub.check()
        except Exception as exc:
            problems["hub"] = type(exc).__name__
        if problems:
            self.write_json({"status": "unavailable", "failed": sorted(problems)}, 503)
        else:
            self.write_json({"status": "ready"})


ReadyHandler = HealthHandler


class MetricsHandler(BaseHandler):
    """``GET /metrics``: Prometheus text format."""

    def get(self) -> None:
        self.set_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
        self.finish(self.ctx.metrics.render())
