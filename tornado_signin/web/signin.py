"""The sign-in surface: the page, the state, the code endpoint, sign-out and disconnect (seed steps 1–7).

Each handler gates its request first (:mod:`tornado_signin.web.gate`), then
calls the domain services (:class:`~tornado_signin.signin.SigninService`,
:class:`~tornado_signin.offline.OfflineAccess`) and answers domain errors
through :data:`~tornado_signin.web.base.ERROR_RESPONSES`.
"""

from __future__ import annotations

import importlib.resources
import logging
import secrets
import urllib.parse
from pathlib import Path
from typing import Any, cast

from tornado.http1connection import HTTP1Connection
from tornado.web import HTTPError, stream_request_body

from ..errors import (
    ClientConfigError,
    GoogleError,
    GoogleUnavailableError,
    HubUnavailableError,
    InvalidGrantError,
    OverloadedError,
    SigninBlockedError,
    SigninError,
    StorageError,
    TokenVerificationError,
    UnknownUserError,
)
from ..hooks import ConsentRequired, Revoked, SignedIn, SignedOut
from ..sessions import Session, new_session_id
from ..signin import CONSENT_REQUIRED, SIGNED_IN
from ..users import SignedInUser
from .base import BaseHandler, csp_header, error_response, signin_csp
from . import inputs

__all__ = [
    "PageHandler",
    "StateHandler",
    "StoreAuthCodeHandler",
    "SignoutHandler",
    "DisconnectHandler",
    "page_template_path",
]

log = logging.getLogger(__name__)


def local_next(value: str) -> str | None:
    """Return ``value`` when it is a path of this origin (``/me?x=1``), else None: ``?next=`` never leaves the site.

    Refused: absolute and scheme-relative URLs (``//evil.example``), backslashes (browsers read ``/\\`` as
    ``//``), control characters.
    """
    if not value.startswith("/") or value.startswith("//") or "\\" in value:
        return None
    if any(ord(char) < 0x20 or ord(char) == 0x7F for char in value):
        return None
    parts = urllib.parse.urlsplit(value)
    return value if not parts.scheme and not parts.netloc else None


def page_template_path() -> str:
    """Return the folder of the page's template, from an editable install or a wheel alike."""
    return str(Path(str(importlib.resources.files("tornado_signin.templates"))))


class PageHandler(BaseHandler):
    """``GET <prefix>/``: the sign-in page (seed steps 1–4); its script's URLs start with the prefix."""

    def get_template_path(self) -> str:
        """Return the package's templates: a host app's ``template_path`` is its own pages' folder."""
        return page_template_path()

    async def get(self) -> None:
        await self.rate_limit("state")
        session = await self.ensure_session()
        config = self.ctx.config
        nonce = secrets.token_urlsafe(16)
        # What signin.js needs (signin_csp, shared with host pages), within this page's own strict policy.
        self.set_header("Content-Security-Policy", csp_header(
            {"default-src": ["'self'"]},
            signin_csp(config, nonce, self.own_origin()),
            {"img-src": ["'self'", "data:", "https:"], "style-src": ["'self'", "'unsafe-inline'"],
             "base-uri": ["'none'"], "form-action": ["'self'"], "frame-ancestors": ["'none'"]},
        ))
        self.set_header("Cross-Origin-Opener-Policy", "same-origin-allow-popups")
        self.render(
            "index.html",
            nonce=nonce,
            client_id=config.google.client_id,
            scopes=" ".join(config.google.scopes),
            client_library=config.google.client_library,
            client_script_url=config.google.client_script_url,
            state=await self.issue_state(session),
            needs_consent=session.needs_consent,
            user=({"sub": session.sub, "email": session.email, "name": session.name} if session.sub else None),
            development=config.development,
            prefix=self.ctx.path_prefix,
            # Where tornado.web.authenticated came from (login_url defaults to this page): back there once signed in.
            next_url=local_next(self.get_query_argument("next", "")),
        )


class StateHandler(BaseHandler):
    """``GET /state``: a fresh single-use state for this browser session (JSON)."""

    async def get(self) -> None:
        await self.rate_limit("state")
        session = await self.ensure_session()
        document: dict[str, Any] = {"state": await self.issue_state(session)}
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

    Every answer once the origin gate has passed — success or failure — and
    every frame that ends the attempt carry the next state (``"state"``) for
    the session, so a login is one request: the page never needs ``GET
    /state`` between attempts. The answer and the frame carry the same value
    (single use either way); an answer is JSON read by script from an allowed
    origin (no CORS), a frame goes only to that session's sockets.
    """

    async def prepare(self) -> None:
        self._body = bytearray()
        #: The session of this request once read; the origin gate passed (an answer may carry a state).
        self._session: Session | None = None
        self._gated = False
        #: The state a refusal hands the page (recorded in the hub before the answer is written).
        self._next_state: str | None = None
        super().prepare()
        if self.request.method != "POST":
            return
        if not await self.ctx.limits.allow("code", self.request.remote_ip or "?"):
            self.ctx.metrics.inc("signin_logins_total", outcome="rate_limited")
            raise HTTPError(429, reason="too many requests")
        self.check_request_origin()
        self._gated = True
        try:
            if inputs.content_type(self.request) != "application/octet-stream":
                raise self.fail(415, "content type must be application/octet-stream")
            cap = self.ctx.config.limits.max_body_bytes
            length = inputs.content_length(self.request)
            if length is not None and length > cap:
                raise self.fail(413, "body too large")
        except HTTPError:
            await self._issue_next_state()
            raise
        cast(HTTP1Connection, self.request.connection).set_max_body_size(cap)

    async def data_received(self, chunk: bytes) -> None:
        self._body.extend(chunk)
        if len(self._body) > self.ctx.config.limits.max_body_bytes:
            await self._issue_next_state()
            raise self.fail(413, "body too large")

    def _code(self) -> str:
        return inputs.code(bytes(self._body), self.ctx.config.limits.max_code_length)

    async def _issue_next_state(self) -> None:
        """Issue the state a refusal carries (write_error cannot wait for the hub): only past the origin
        gate, and for a session the cookie names (read unchecked: a state only works for a live session)."""
        if not self._gated or self._next_state is not None:
            return
        session = self._session or self.read_session_cookie()
        if session is not None:
            self._next_state = await self.issue_state(session)

    def error_fields(self) -> dict[str, Any]:
        return {"state": self._next_state} if self._next_state is not None else {}

    async def post(self) -> None:
        try:
            await self._post()
        except HTTPError:
            await self._issue_next_state()
            raise

    async def _post(self) -> None:
        session = self._session = await self.require_session()
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
            outcome = await ctx.signin.complete(code, session_id=session.sid)
        except (TokenVerificationError, GoogleError, StorageError, OverloadedError, SigninBlockedError) as exc:
            await self._failed(session, exc)
            return

        claims = outcome.claims
        if outcome.status == CONSENT_REQUIRED:
            ctx.metrics.inc("signin_logins_total", outcome=CONSENT_REQUIRED)
            log.info("sign-in needs consent again: no usable refresh token for this user")
            self.write_session(Session(sid=session.sid, needs_consent=True))
            await ctx.hooks.consent_required(ConsentRequired(sub=claims.sub, reason="no_refresh_token"))
            state = await self.issue_state(session)
            await self.publish(session.sid, {"type": CONSENT_REQUIRED, "state": state})
            self.write_json({"status": CONSENT_REQUIRED, "state": state}, 409)
            return

        ctx.metrics.inc("signin_logins_total", outcome=SIGNED_IN)
        # A new session id at sign-in defeats session fixation; the sockets of
        # the old id are told to follow the new one.
        # One user for the page, /session, the host's current_user and hooks: an unverified
        # email is anybody's claim (as in the store), so none is shown or handed on.
        signed_in = SignedInUser(sub=claims.sub, email=claims.email if claims.email_verified else None,
                                 name=claims.name)
        new_session = Session(sid=new_session_id(), sub=signed_in.sub, email=signed_in.email, name=signed_in.name)
        try:
            await ctx.sessions.start(new_session, user_agent=inputs.user_agent(self.request),
                                     address=self.request.remote_ip or "")
        except HubUnavailableError as exc:
            # Without its record the new cookie would not count: fail the attempt (the tokens are stored).
            await self._failed(session, exc)
            return
        self.write_session(new_session)
        user = signed_in.as_dict()
        self._session = new_session
        state = await self.issue_state(new_session)
        frame: dict[str, Any] = {"type": SIGNED_IN, "user": user, "state": state}
        expires_at = outcome.record.refresh_token_expires_at
        if expires_at is not None:
            # Time-limited access: the page learns when it ends, and is told again ahead of it.
            frame["access_expires_at"] = int(expires_at)
            ctx.expiry.watch(new_session.sid, claims.sub, expires_at)
        # The host's hook runs before the page is told (frame and answer), so
        # what it writes is there when the page shows "fully logged in".
        await ctx.hooks.signed_in(SignedIn(
            user=signed_in,
            scopes=tuple(sorted(outcome.record.scopes)), refresh_token_stored=outcome.refresh_token_received,
            access_expires_at=expires_at))
        await self.publish(new_session.sid, frame)
        await self.publish(session.sid, frame, rebind=new_session.sid)
        log.info("user signed in (scopes: %d)", len(outcome.record.scopes))
        self.write_json({"status": SIGNED_IN, "user": user, "state": state,
                         **({"access_expires_at": int(expires_at)} if expires_at is not None else {})})

    async def _failed(self, session: Session, exc: SigninError) -> None:
        """Answer a failed attempt as :data:`ERROR_RESPONSES` says, tell the page's socket, log for the operator."""
        response = error_response(exc)
        assert response is not None, type(exc)
        self.ctx.metrics.inc("signin_logins_total", outcome=response.outcome)
        if isinstance(exc, ClientConfigError):
            log.error("OPERATOR ALERT: Google rejected this server's client configuration: %s", exc.error)
        elif isinstance(exc, (StorageError, OverloadedError)):
            # Google spent the code and may have issued the only refresh token
            # we will ever get for this grant: steer the next sign-in through consent.
            log.error("tokens could not be stored after the exchange: %s", exc)
            self.write_session(Session(sid=session.sid, needs_consent=True))
        elif isinstance(exc, HubUnavailableError):
            log.error("sign-in could not record the session: %s", exc)
        elif isinstance(exc, InvalidGrantError):
            log.warning("sign-in failed: Google answered invalid_grant to the code")
        elif isinstance(exc, TokenVerificationError):
            log.warning("sign-in failed: ID token rejected: %s", exc)
        else:
            log.warning("sign-in failed: %s", exc)
        state = await self.issue_state(session)
        await self.publish(session.sid, {"type": "failed", "reason": response.reason, "state": state})
        self.write_json({"error": response.reason, "state": state}, response.status)

class SignoutHandler(BaseHandler):
    """``POST /signout``: end the session in every process (its record, its cookie, its sockets).

    ``?everywhere=1`` ends every session of the user ("sign out everywhere").
    A cookie whose session already ended is still signed out (cookie cleared, 200).
    """

    async def post(self) -> None:
        await self.rate_limit("signout")
        self.check_request_origin()
        # The cookie is read unchecked: signing out a session that already
        # ended elsewhere still clears this browser's cookie.
        session = self.read_session_cookie()
        if session is None:
            raise self.fail(403, "no session", "request without a session cookie")
        await self.consume_state(session)
        everywhere = inputs.flag(self.get_query_argument("everywhere", None), "everywhere")
        hooks = self.ctx.hooks
        live = bool(session.sub) and (everywhere or hooks.has("signed_out")) and \
            await self.ctx.sessions.is_live(session)
        everywhere = everywhere and live  # an ended cookie must not end the user's other sessions
        await self.end_session(session, everywhere=everywhere)
        user = SignedInUser.of(session)
        if live and user is not None:
            await hooks.signed_out(SignedOut(user=user, reason="signout_everywhere" if everywhere else "signout",
                                             everywhere=everywhere))
        self.write_json({"status": "signed_out"})


class DisconnectHandler(BaseHandler):
    """``POST /disconnect``: revoke the grant at Google, forget the user, end the session."""

    async def post(self) -> None:
        await self.rate_limit("disconnect")
        self.check_request_origin()
        session = await self.require_session()
        await self.consume_state(session)
        if not session.sub:
            raise self.fail(403, "not signed in")
        try:
            await self.ctx.offline.revoke_and_forget(session.sub)
        except (GoogleUnavailableError, StorageError) as exc:
            raise self.fail_logged(exc, "disconnect (user kept)") from exc
        except UnknownUserError:
            log.info("disconnect: user already forgotten")
        ended = await self.end_session(session, everywhere=True)
        user = SignedInUser.of(session)
        assert user is not None
        await self.ctx.hooks.revoked(Revoked(sub=user.sub, reason="disconnect", grant_revoked=True,
                                             sessions_ended=len(ended)))
        await self.ctx.hooks.signed_out(SignedOut(user=user, reason="disconnect", everywhere=True))
        self.write_json({"status": "disconnected"})
