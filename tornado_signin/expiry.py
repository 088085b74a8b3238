"""Time-limited access: tell the page and the host app before a refresh token stops working.

Google lets a user grant access for a limited time; the token reply then
carries ``refresh_token_expires_in`` and the record keeps
``refresh_token_expires_at``. After it the refresh token is not used (offline
access raises ConsentRequiredError without calling Google; the next sign-in
asks for consent). Before it, :class:`AccessExpiry` gives notice:

* the page: the ``signed_in`` answer and frame carry ``access_expires_at``
  (POSIX seconds), and ``notice`` seconds before that time (at once if it is
  closer) the session's sockets get ``{"type": "access_expiring",
  "expires_at": …, "expires_in": …}`` in every process (through the hub);
* the host app: every listener added with :meth:`AccessExpiry.add_listener`
  is called then with an :class:`AccessExpiring` (``sub``, ``expires_at``,
  ``sid``), a plain function or a coroutine function; a failing listener is
  logged and does not stop the others. This is the hook point the host-app
  API builds on.

The notice is scheduled in the process that completed the sign-in, while the
session lives (a session ended before the notice time gets none); a restart
of that process drops the pending notices (the page still has
``access_expires_at``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from .hub import ConfirmationHub

__all__ = ["AccessExpiry", "AccessExpiring", "ACCESS_EXPIRING"]

log = logging.getLogger(__name__)

ACCESS_EXPIRING = "access_expiring"
#: Default: notice one hour ahead.
DEFAULT_NOTICE = 3600.0
MIN_DELAY = 1.0


@dataclass(frozen=True)
class AccessExpiring:
    """A time-limited grant is about to end."""

    sub: str
    #: POSIX seconds after which the refresh token stops working.
    expires_at: float
    #: The signed-in session that was told (None when not about a session).
    sid: str | None = None


Listener = Callable[[AccessExpiring], Awaitable[None] | None]


class AccessExpiry:
    """Schedule notices of ending time-limited grants; call the host app's listeners."""

    def __init__(self, hub: ConfirmationHub, *, notice: float = DEFAULT_NOTICE,
                 is_live: Callable[[str, str], Awaitable[bool]] | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        """``is_live(sid, sub)`` says whether the session still lives (a notice for an ended one is dropped)."""
        self.hub = hub
        self.notice = notice
        self.is_live = is_live
        self.clock = clock
        self._listeners: list[Listener] = []
        self._timers: dict[str, asyncio.TimerHandle] = {}
        #: Notices being given: the loop keeps only a weak reference to a task, so a running one is kept here.
        self._firing: set[asyncio.Task[None]] = set()

    def add_listener(self, listener: Listener) -> Callable[[], None]:
        """Call ``listener(AccessExpiring)`` before every time-limited grant of a signed-in user ends.

        Return a function that removes it again. (``SigninHooks(on_access_expiring=…)``
        registers one the same way.)

        Example::

            async def ask_to_renew(event):          # an AccessExpiring
                await mailer.send(event.sub, f"Google access ends at {event.expires_at:.0f}")

            remove = app.settings["signin"].expiry.add_listener(ask_to_renew)
        """
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener) if listener in self._listeners else None

    def frame(self, expires_at: float) -> dict[str, object]:
        """Return the page's ``access_expiring`` frame for a grant ending at ``expires_at``."""
        return {"type": ACCESS_EXPIRING, "expires_at": int(expires_at),
                "expires_in": max(int(expires_at - self.clock()), 0)}

    def watch(self, sid: str, sub: str, expires_at: float) -> None:
        """Give notice for session ``sid`` of ``sub`` ``notice`` seconds before ``expires_at``."""
        self.cancel(sid)
        # At least a moment: the page's socket is still following the session id the sign-in rotated.
        delay = max(expires_at - self.notice - self.clock(), MIN_DELAY)
        loop = asyncio.get_running_loop()
        self._timers[sid] = loop.call_later(delay, self._start_firing, sid, sub, expires_at)

    def _start_firing(self, sid: str, sub: str, expires_at: float) -> None:
        task = asyncio.get_running_loop().create_task(self._fire(sid, sub, expires_at))
        self._firing.add(task)
        task.add_done_callback(self._firing.discard)

    def cancel(self, sid: str) -> None:
        """Drop the pending notice of session ``sid``, if any."""
        timer = self._timers.pop(sid, None)
        if timer is not None:
            timer.cancel()

    async def _fire(self, sid: str, sub: str, expires_at: float) -> None:
        self._timers.pop(sid, None)
        if self.is_live is not None and not await self.is_live(sid, sub):
            return
        try:
            # Not recorded: a socket that connects later must still read the sign-in outcome.
            await self.hub.publish(sid, {"frame": self.frame(expires_at)}, record=False)
        except Exception as exc:
            log.warning("could not tell the page that its access ends: %s", type(exc).__name__)
        await self.notify(AccessExpiring(sub=sub, expires_at=expires_at, sid=sid))

    async def notify(self, event: AccessExpiring) -> None:
        """Call every listener with ``event``; a failing one is logged, the others still run."""
        for listener in list(self._listeners):
            try:
                result = listener(event)
                if result is not None:
                    await result
            except Exception:
                log.exception("an access-expiring listener failed")

    def close(self) -> None:
        """Cancel every pending notice."""
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
