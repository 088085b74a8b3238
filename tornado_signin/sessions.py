"""Browser sessions and the single-use sign-in ``state``.

The session lives in one signed cookie (Tornado's HMAC-SHA256 signed value)
holding a random session id and, after sign-in, the user's ``sub``. The
session id names the session's confirmation channel. It is replaced at
sign-in (session fixation) and the cookie is cleared at sign-out.

A ``state`` is issued per sign-in attempt by ``GET /state``. It is bound to
the session id by an HMAC under the cookie secret, expires, and is single-use
through the hub's outstanding states (:meth:`~tornado_signin.hub.ConfirmationHub.issue_state`),
so any server process sharing the cookie secret and the hub can check it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from tornado.httputil import parse_cookie

if TYPE_CHECKING:
    from tornado.web import RequestHandler

__all__ = ["Session", "StateSigner", "new_session_id", "session_cookie_name", "read_session_cookie"]

#: Cookie names are constants so that sign-in and sign-out can never disagree.
SESSION_COOKIE = "signin_session"
SECURE_SESSION_COOKIE = "__Host-signin_session"


def session_cookie_name(secure: bool) -> str:
    """Return the session cookie's name: the ``__Host-`` prefixed one over https."""
    return SECURE_SESSION_COOKIE if secure else SESSION_COOKIE


def new_session_id() -> str:
    """Return a fresh random session id (128 random bits, url-safe) that does not start with ``-``.

    The CLI prints session ids for ``tornado-signin sessions USER --end ID``; one starting with
    ``-`` (1 in 64 of token_urlsafe's) would be read there as an option.
    """
    while True:
        sid = secrets.token_urlsafe(16)
        if not sid.startswith("-"):
            return sid


@dataclass(frozen=True)
class Session:
    """What the session cookie holds."""

    sid: str
    sub: str | None = None
    email: str | None = None
    name: str | None = None
    #: Set when a sign-in failed after Google may have spent the only refresh
    #: token: the next attempt asks for consent so that one is issued again.
    needs_consent: bool = False

    def encode(self) -> str:
        """Return the cookie payload (signed by the caller)."""
        data: dict[str, str | int | None] = {"sid": self.sid}
        if self.sub:
            data.update(sub=self.sub, email=self.email, name=self.name)
        if self.needs_consent:
            data["nc"] = 1
        return json.dumps(data, separators=(",", ":"))

    @classmethod
    def decode(cls, payload: bytes | None) -> "Session | None":
        """Return the Session of a verified cookie payload, or None for a malformed one."""
        if not payload:
            return None
        try:
            data = json.loads(payload)
        except ValueError:
            return None
        if not isinstance(data, dict) or not isinstance(data.get("sid"), str) or not 16 <= len(data["sid"]) <= 64:
            return None
        sub = data.get("sub") if isinstance(data.get("sub"), str) else None
        return cls(sid=data["sid"], sub=sub, email=data.get("email") if sub else None,
                   name=data.get("name") if sub else None, needs_consent=bool(data.get("nc")))


def read_session_cookie(handler: "RequestHandler", max_age_days: float, *, secure: bool | None = None) -> Session | None:
    """Return the Session of the request's signed session cookie, or None (absent, forged, expired, malformed).

    ``secure`` picks the cookie's name (``__Host-`` over https); None: the request's protocol.
    """
    name = session_cookie_name(handler.request.protocol == "https" if secure is None else secure)
    header = handler.request.headers.get("Cookie")
    # The one cookie is parsed out directly: Tornado's get_cookie first builds
    # a SimpleCookie of every cookie (a Morsel each), most of this call's cost.
    raw = parse_cookie(header).get(name) if header else None
    if not raw:
        return None
    return Session.decode(handler.get_signed_cookie(name, value=raw, max_age_days=max_age_days))


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


class StateSigner:
    """Issue and check session-bound, expiring ``state`` values (single use is the hub's job)."""

    def __init__(self, secret: str, ttl: float) -> None:
        self._key = hashlib.sha256(b"tornado-signin state\0" + secret.encode("utf-8")).digest()
        self.ttl = ttl

    def _mac(self, sid: str, nonce: str, expires: int) -> str:
        message = f"{sid}|{nonce}|{expires}".encode("ascii", "replace")
        return _b64(hmac.new(self._key, message, hashlib.sha256).digest())

    def issue(self, sid: str, now: float | None = None) -> str:
        """Return a new state for session ``sid``."""
        expires = int((time.time() if now is None else now) + self.ttl)
        nonce = secrets.token_urlsafe(16)
        return f"{nonce}.{expires}.{self._mac(sid, nonce, expires)}"

    def check(self, sid: str, state: str | None, now: float | None = None) -> str | None:
        """Return the state's nonce when ``state`` was issued to ``sid`` and has not expired, else None."""
        if not state or len(state) > 128:
            return None
        parts = state.split(".")
        # ASCII digits only: str.isdigit() is also true of "²" and "١", which int() refuses.
        if len(parts) != 3 or not parts[1].isascii() or not parts[1].isdigit():
            return None
        nonce, expires_text, mac = parts
        expires = int(expires_text)
        if not hmac.compare_digest(mac, self._mac(sid, nonce, expires)):
            return None
        if (time.time() if now is None else now) > expires:
            return None
        return nonce
