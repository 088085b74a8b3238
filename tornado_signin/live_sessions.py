"""Signed-in sessions that can be ended: sign-out everywhere, for every copy of the cookie.

The session cookie is signed, so a copy of it stays *authentic* until it
expires. What makes it *valid* is a record in the confirmation hub
(:meth:`~tornado_signin.hub.ConfirmationHub.start_session`), written at
sign-in under the session id the cookie holds. Every request that relies on a
signed-in cookie asks the hub whether that record still exists — one hub read,
never cached, because a cache would let an ended session live on for its
lifetime. Ending a session deletes its record (so the cookie stops working in
every process, copies included) and publishes ``signed_out`` on the session's
confirmation channel, which closes its open pages' sockets in every process.

Anonymous sessions (before sign-in) have no record: they hold nothing to end.

When the hub cannot answer, a signed-in cookie is not taken as live (the
request is served as signed out and ``signin_session_checks_total
{outcome="hub_unavailable"}`` counts it): an end that cannot be checked must
not be ignored.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from .errors import HubUnavailableError
from .hub import ConfirmationHub, SessionRecord
from .metrics import Metrics
from .sessions import Session

__all__ = ["SessionRegistry", "SIGNED_OUT_FRAME"]

log = logging.getLogger(__name__)

#: The frame pushed to a session's pages when it ends.
SIGNED_OUT_FRAME = {"type": "signed_out"}
MAX_USER_AGENT = 200


class SessionRegistry:
    """Start, check, list and end the signed-in sessions of one application.

    Example (sign a user out everywhere, as ``tornado-signin sessions USER --end --all`` does)::

        sessions = app.settings["signin"].sessions
        ended = await sessions.end_all(sub, reason="admin")   # their pages show signed out, live
    """

    def __init__(self, hub: ConfirmationHub, metrics: Metrics, *, ttl: float,
                 clock: Callable[[], float] = time.time) -> None:
        """``ttl``: how long a record lives, in seconds (the cookie's own maximum age)."""
        self.hub = hub
        self.metrics = metrics
        self.ttl = ttl
        self.clock = clock
        metrics.counter("signin_sessions_ended_total", "Signed-in sessions ended, by reason.")
        metrics.counter("signin_session_checks_total", "Signed-in cookies refused: ended, hub_unavailable.")

    async def start(self, session: Session, *, user_agent: str = "", address: str = "") -> None:
        """Record the signed-in ``session``. Raise HubUnavailableError when the hub cannot record it."""
        if not session.sub:
            raise ValueError("only a signed-in session has a record")
        record = SessionRecord(sid=session.sid, sub=session.sub, started_at=self.clock(),
                               user_agent=(user_agent or "")[:MAX_USER_AGENT], address=address or "")
        await self.hub.start_session(record, self.ttl)

    async def is_live(self, session: Session) -> bool:
        """Return True for an anonymous session, and for a signed-in one while its record exists.

        Return False (logged, counted) when the hub cannot answer.
        """
        if not session.sub:
            return True
        try:
            live = await self.hub.session_active(session.sid)
        except HubUnavailableError as exc:
            log.warning("session check failed, serving the request as signed out: %s", exc)
            self.metrics.inc("signin_session_checks_total", outcome="hub_unavailable")
            return False
        if not live:
            self.metrics.inc("signin_session_checks_total", outcome="ended")
        return live

    async def _push_signed_out(self, sid: str, *, record: bool = True) -> None:
        try:
            await self.hub.publish(sid, {"frame": SIGNED_OUT_FRAME, "close": True}, record=record)
        except Exception as exc:  # the record is gone already: the session is ended either way
            log.error("confirmation hub publish failed: %s", type(exc).__name__)

    async def end(self, sid: str, *, reason: str = "signout") -> bool:
        """End session ``sid`` and close its pages; return whether a live record was ended.

        Raise HubUnavailableError when the hub cannot end it.
        """
        ended = await self.hub.end_session(sid) is not None
        # Recorded only for a session that had a record: signing out an
        # anonymous session (a flood can make those for free) leaves nothing
        # in the hub, and its open pages are still told.
        await self._push_signed_out(sid, record=ended)
        if ended:
            self.metrics.inc("signin_sessions_ended_total", reason=reason)
        return ended

    async def end_all(self, sub: str, *, reason: str = "signout_everywhere") -> list[str]:
        """End every session of ``sub`` and close their pages; return the ended session ids.

        Raise HubUnavailableError when the hub cannot end them.
        """
        sids = await self.hub.end_sessions(sub)
        for sid in sids:
            await self._push_signed_out(sid)
        if sids:
            self.metrics.inc("signin_sessions_ended_total", len(sids), reason=reason)
        return sids

    async def list(self, sub: str) -> list[SessionRecord]:
        """Return the live sessions of ``sub``, oldest first. Raise HubUnavailableError."""
        return await self.hub.sessions_of(sub)
