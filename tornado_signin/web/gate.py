"""The gate in front of every state-changing request: origin, fetch metadata, single-use state.

Everything here runs *before* any outbound call (DESIGN §1, steps 4–6). The
origin check is the ONE place an ``Origin`` is compared with the allow-list:
the code endpoint, sign-out and disconnect (:func:`check_script_request`) and
the websocket handshake (:func:`origin_allowed`) all go through it.

Refusals are ``tornado.web.HTTPError`` with a short fixed ``reason`` for the
client and the detail in the log message.
"""

from __future__ import annotations

from collections.abc import Collection
from urllib.parse import urlsplit

from tornado.httputil import HTTPServerRequest
from tornado.web import HTTPError

from ..context import AppContext
from ..sessions import Session
from . import inputs

__all__ = ["STATE_HEADER", "origin_of", "origin_allowed", "check_script_request", "issue_state", "consume_state"]

#: The header the page sends the server-issued state in.
STATE_HEADER = "X-Signin-State"


def _refuse(reason: str, log_message: str) -> HTTPError:
    return HTTPError(403, log_message, reason=reason)


def origin_of(url: str) -> str | None:
    """Return ``scheme://host[:port]`` of ``url`` in lower case, or None (also for a URL that does not parse)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return None
    return f"{parts.scheme}://{parts.netloc}".lower()


def origin_allowed(origin: str | None, allowed: Collection[str]) -> bool:
    """Return True when ``origin`` is a bare serialized origin (scheme included) in ``allowed``.

    Browsers send exactly ``scheme://host[:port]``; anything else (missing,
    ``null``, a path, userinfo) is forged or stripped and refused.
    """
    if not origin:
        return False
    serialized = origin_of(origin)
    return serialized == origin.lower() and serialized in allowed


def check_script_request(request: HTTPServerRequest, allowed: Collection[str], *,
                         foreign_origins_configured: bool) -> None:
    """Refuse unless the request comes by script from an allowed origin; raise HTTPError 403.

    Checks ``X-Requested-With: XMLHttpRequest``, the ``Origin`` (read through
    :mod:`~tornado_signin.web.inputs`) against
    ``allowed`` and the fetch metadata: a cross-site request is legitimate
    only when ``foreign_origins_configured`` (``server.allowed_origins``), a
    navigation (a form post) never is.
    """
    headers = request.headers
    if headers.get("X-Requested-With") != "XMLHttpRequest":
        raise _refuse("missing X-Requested-With", "X-Requested-With header missing or wrong")
    if not origin_allowed(inputs.origin(request), allowed):
        raise _refuse("origin not allowed", "Origin missing, null, malformed or not allowed")
    site = headers.get("Sec-Fetch-Site")
    if site not in (None, "same-origin") and not foreign_origins_configured:
        raise _refuse("origin not allowed", f"Sec-Fetch-Site: {site[:32]}")
    if headers.get("Sec-Fetch-Mode", "cors") not in ("cors", "same-origin"):
        raise _refuse("origin not allowed", "Sec-Fetch-Mode is not cors")


async def issue_state(ctx: AppContext, session: Session) -> str:
    """Return a new state for ``session``, recorded in the hub as one of its outstanding states.

    A session keeps at most ``limits.states_per_session`` outstanding; the oldest is forgotten first.
    """
    state = ctx.states.issue(session.sid)
    await ctx.hub.issue_state(session.sid, state.split(".", 1)[0], keep=ctx.config.limits.states_per_session,
                              ttl=ctx.states.ttl)
    return state


async def consume_state(ctx: AppContext, session: Session, value: str | None) -> None:
    """Spend the state ``value`` (the ``X-Signin-State`` header) issued to ``session``; raise HTTPError 403.

    Refused when missing, issued to another session, expired, already spent
    in any process sharing the hub, or forgotten (more states were issued to
    the session since). Raise HubUnavailableError when the hub cannot tell.
    """
    nonce = ctx.states.check(session.sid, value)
    if nonce is None:
        raise _refuse("invalid state", "state missing, foreign or expired")
    if not await ctx.hub.spend_state(session.sid, nonce, ttl=ctx.states.ttl + 60):
        raise _refuse("invalid state", "state reused, forgotten or never issued")
