"""Events for the host app: signed in, signed out, revoked, consent required, access expiring.

The host registers its hooks once, when it builds the app::

    from tornado_signin.hooks import SigninHooks

    async def signed_in(event):                    # a SignedIn
        await db.upsert_user(event.user.sub, event.user.email, event.scopes)

    hooks = SigninHooks(on_signed_in=signed_in, on_revoked=lambda event: log.info("revoked %s", event.sub))
    app = make_app(config, hooks=hooks)            # or build_context(config, hooks=hooks)

Each hook is a plain function or a coroutine function taking one event (the
dataclasses below; none holds a token). A plain function runs on the IOLoop:
keep it short, or make it a coroutine and move blocking work off the loop.

When each runs, and what it may rely on:

* ``on_signed_in(SignedIn)``: after the tokens are stored and the new
  session is recorded, BEFORE the page is told: the socket frame
  ``signed_in`` and the HTTP answer of ``/storeauthcode`` (and the new
  session cookie) go out once the hook has returned. So whatever the hook
  writes is there when the page shows "fully logged in".
* ``on_consent_required(ConsentRequired)``: a sign-in that left the user with
  no usable refresh token, before its ``consent_required`` frame and 409; and
  :meth:`SigninMixin.google_credentials
  <tornado_signin.web.host.SigninMixin.google_credentials>` before it raises.
* ``on_signed_out(SignedOut)``: ``POST <prefix>/signout`` and
  ``/disconnect``, after the session's record is gone and its sockets were
  told, before the HTTP answer.
* ``on_revoked(Revoked)``: the user's grant or sessions were ended for them:
  ``/disconnect`` (before its ``on_signed_out``), a refresh answered
  ``invalid_grant`` (in the process that refreshed), a security event
  (Cross-Account Protection) that revoked the grant or ended sessions.
* ``on_access_expiring(AccessExpiring)``: a time-limited grant of a signed-in
  user ends soon (:mod:`tornado_signin.expiry`), after the page's
  ``access_expiring`` frame.

A hook that raises is logged (ERROR, with its traceback; log redaction
applies) and changes nothing: the sign-in goes on. A hook still running
after ``timeout`` seconds (default 5) is logged (WARNING) and left to finish
in the background; the request goes on without it. Hooks run in the process
that handled the request or event (with several processes or machines, each
calls its own hooks); the CLI (``tornado-signin revoke``) calls none.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from .expiry import AccessExpiring
from .users import SignedInUser

__all__ = ["SigninHooks", "SignedIn", "SignedOut", "Revoked", "ConsentRequired", "AccessExpiring", "Hook",
           "EVENTS"]

log = logging.getLogger(__name__)

#: The hook names, in the order of the SigninHooks arguments.
EVENTS = ("signed_in", "signed_out", "revoked", "consent_required", "access_expiring")
DEFAULT_TIMEOUT = 5.0

Hook = Callable[[Any], "Awaitable[None] | None"]


@dataclass(frozen=True)
class SignedIn:
    """A user completed a sign-in."""

    user: SignedInUser
    #: Every scope the user has granted this app so far (Google's URLs, sorted).
    scopes: tuple[str, ...]
    #: True when this sign-in's exchange brought a refresh token (a first or renewed consent) and it was stored.
    refresh_token_stored: bool
    #: POSIX seconds when time-limited access ends, or None.
    access_expires_at: float | None = None


@dataclass(frozen=True)
class SignedOut:
    """A signed-in browser session was ended at the user's request."""

    user: SignedInUser
    #: ``signout``, ``signout_everywhere`` or ``disconnect``.
    reason: str
    #: True when every session of the user ended.
    everywhere: bool = False


@dataclass(frozen=True)
class Revoked:
    """The user's grant or sessions were ended for them."""

    sub: str
    #: ``disconnect``, ``invalid_grant``, or ``risc:<event>`` (``risc:tokens-revoked``, ``risc:sessions-revoked``…).
    reason: str
    #: True when the stored refresh token no longer works (offline access needs a new consent).
    grant_revoked: bool
    #: How many signed-in sessions were ended with it.
    sessions_ended: int = 0


@dataclass(frozen=True)
class ConsentRequired:
    """The user must consent (again) before the app can act for them."""

    #: Google's id of the user, None when nobody was signed in.
    sub: str | None
    #: ``no_refresh_token`` (a sign-in), ``missing_scope``, ``not_active`` (revoked, expired, none stored),
    #: ``unknown_user`` (forgotten) or ``signed_out``.
    reason: str
    #: The scopes to ask for (``missing_scope``), Google's URLs.
    missing_scopes: tuple[str, ...] = ()


class SigninHooks:
    """The host app's hooks, called at the documented points (see the module docstring)."""

    def __init__(self, *, on_signed_in: Hook | None = None, on_signed_out: Hook | None = None,
                 on_revoked: Hook | None = None, on_consent_required: Hook | None = None,
                 on_access_expiring: Hook | None = None, timeout: float = DEFAULT_TIMEOUT) -> None:
        """Each ``on_<event>`` is a function or coroutine function of one event, or None.

        Raise TypeError for a hook that is not callable, ValueError for a ``timeout`` not above 0.
        """
        hooks = {"signed_in": on_signed_in, "signed_out": on_signed_out, "revoked": on_revoked,
                 "consent_required": on_consent_required, "access_expiring": on_access_expiring}
        for name, hook in hooks.items():
            if hook is not None and not callable(hook):
                raise TypeError(f"on_{name} must be a function or a coroutine function")
        if not timeout > 0:
            raise ValueError("timeout must be above 0 seconds")
        self._hooks: dict[str, Hook] = {name: hook for name, hook in hooks.items() if hook is not None}
        self.timeout = float(timeout)
        #: Hooks that outlived the timeout, still running (kept referenced until done).
        self._background: set[asyncio.Future[None]] = set()

    def has(self, name: str) -> bool:
        """Return True when a hook is registered for event ``name``."""
        return name in self._hooks

    async def _call(self, name: str, hook: Hook, event: Any) -> None:
        try:
            result = hook(event)
            if inspect.isawaitable(result):
                await result
        except Exception:
            log.error("the on_%s hook failed; carrying on without it", name, exc_info=True)

    async def emit(self, name: str, event: Any) -> None:
        """Call the hook of ``name`` with ``event`` and wait for it, at most ``timeout`` seconds. Never raise.

        A hook still running then is logged and left to finish in the background.
        """
        hook = self._hooks.get(name)
        if hook is None:
            return
        task = asyncio.ensure_future(self._call(name, hook, event))
        done, _ = await asyncio.wait({task}, timeout=self.timeout)
        if not done:
            log.warning("the on_%s hook is still running after %.1fs; carrying on without waiting for it",
                        name, self.timeout)
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    async def drain(self, timeout: float | None = None) -> None:
        """Wait (at most ``timeout`` seconds; default the hooks' own) for hooks left running in the background."""
        if self._background:
            await asyncio.wait(set(self._background), timeout=self.timeout if timeout is None else timeout)

    # -- one method per event, for the callers ---------------------------------------

    async def signed_in(self, event: SignedIn) -> None:
        await self.emit("signed_in", event)

    async def signed_out(self, event: SignedOut) -> None:
        await self.emit("signed_out", event)

    async def revoked(self, event: Revoked) -> None:
        await self.emit("revoked", event)

    async def consent_required(self, event: ConsentRequired) -> None:
        await self.emit("consent_required", event)

    async def access_expiring(self, event: AccessExpiring) -> None:
        await self.emit("access_expiring", event)
