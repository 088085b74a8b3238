"""One user's grant changes, one at a time, across every process: late answers never undo newer state.

Google answers some calls late, and the answer is about the grant as it was
when the call was made. Three races follow, each closed here or by the
store's conditional writes (:meth:`~tornado_signin.store.TokenStore.mark_revoked`,
:meth:`~tornado_signin.store.TokenStore.delete_if`):

* two sign-ins of a new user: the one without a refresh token revokes the
  grant (the consent workaround) while the other's exchange, which carries
  the refresh token of that same grant, is still in flight;
* a refresh answered ``invalid_grant`` after the user signed in again: the
  revoked mark applies only to the refresh token the refresh used;
* a disconnect whose revoke is answered late, after another device signed
  in: the delete applies only to the refresh token that was revoked.

:class:`GrantGuard` serialises, per ``sub``, what follows an exchange (save,
decide, revoke), every refresh and every revoke of the server (disconnect,
CLI ``revoke``), through a hub lease
(:meth:`~tornado_signin.hub.ConfirmationHub.acquire_lease`); and the code
POSTs of one browser session (two tabs), whole, exchange included: the sub of
an exchange in flight is unknown until Google answers, the session is not.
Whoever revokes a grant leaves a note in the hub (the time the revoke
ended, kept :attr:`~tornado_signin.hub.ConfirmationHub.record_ttl` seconds on the
channel ``grant-revoked:<sub>``, which no browser session can name). A sign-in
whose exchange started before such a note cannot know whether Google issued
its refresh token before or after the revoke: it tries the token with one
refresh before it answers ``signed_in``, so a ``200 signed_in`` means the
stored refresh token works.

Two browsers of one new user have no session in common, and the sub of an
exchange is unknown until Google answers it. So every exchange is recorded
in the hub while it is in flight (:meth:`GrantGuard.exchange`), deployment
wide, in the order exchanges began; a sign-in left without a usable refresh
token waits, before it revokes the grant, for the exchanges that began
before its own (:meth:`GrantGuard.wait_for_earlier_exchanges`, at most
their deadline), then reads the record again under the user's lease: a
refresh token one of them stored means signed in, and no revoke. This costs
two hub round trips per sign-in (begin and end); the wait happens only on
the consent-workaround path.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import AsyncIterator, Callable

from .hub import ConfirmationHub, LocalExchanges, LocalLeases

__all__ = ["GrantGuard", "LEASE_TTL", "LEASE_WAIT", "CLOCK_MARGIN", "EXCHANGE_MARGIN"]

log = logging.getLogger(__name__)

#: How long one holder may keep a user's lease (longer than an exchange, a
#: revoke with its retries and a store write; a holder that died blocks the
#: user for at most this long).
LEASE_TTL = 60.0
#: How long a sign-in or a revoke waits for the lease before it goes on
#: without it (then it never revokes a grant: see :meth:`GrantGuard.hold`).
LEASE_WAIT = 30.0
#: Clocks of different machines disagree: a revoke note counts for exchanges
#: that started up to this many seconds after it.
CLOCK_MARGIN = 5.0
#: An exchange stays "in flight" for Google's deadline plus this many seconds: its ID token's
#: check (certs fetch), the wait for the user's lease and the store write come after the answer.
EXCHANGE_MARGIN = 10.0
#: How long a process-local revoke note is kept (a hub keeps its own for ``record_ttl``).
NOTE_TTL = 600.0


def _channel(sub: str) -> str:
    return f"grant-revoked:{sub}"


class GrantGuard:
    """Per-user serialisation of grant changes, and the notes of revokes, through a hub.

    Example (what a revoke does around its calls)::

        guard = GrantGuard(hub)
        async with guard.hold(sub) as held:        # the user's lease, in every process sharing the hub
            ...                                    # revoke at Google, then store.delete_if(sub, ...)
            await guard.note_revoked(sub)          # a sign-in that crossed it checks its refresh token
    """

    def __init__(self, hub: ConfirmationHub | None, *, ttl: float = LEASE_TTL, wait: float = LEASE_WAIT,
                 clock: Callable[[], float] = time.time) -> None:
        """Guard through ``hub``; None keeps leases and notes in this process (scripts, one-process tools)."""
        self.hub = hub
        self.ttl = ttl
        self.wait = wait
        self.clock = clock
        self._leases = LocalLeases()
        self._exchanges = LocalExchanges()
        self._notes: dict[str, float] = {}

    async def _acquire(self, key: str) -> str | None:
        if self.hub is None:
            return self._leases.acquire(key, self.ttl)
        return await self.hub.acquire_lease(key, self.ttl)

    async def _release(self, key: str, token: str) -> bool:
        if self.hub is None:
            return self._leases.release(key, token)
        return await self.hub.release_lease(key, token)

    def hold(self, sub: str) -> contextlib.AbstractAsyncContextManager[bool]:
        """Hold ``sub``'s grant lease for the block; yield True when held, False when it could not be had.

        See :meth:`hold_key`.
        """
        return self.hold_key(f"grant:{sub}")

    def hold_session(self, sid: str) -> contextlib.AbstractAsyncContextManager[bool]:
        """Hold the sign-in lease of browser session ``sid`` (its code POSTs, one at a time); see :meth:`hold_key`.

        Two tabs of one browser share its session: the second tab's sign-in
        then starts after the first one's is stored, so it finds the refresh
        token the first one brought instead of revoking the grant under it.
        """
        return self.hold_key(f"signin-session:{sid}")

    @contextlib.asynccontextmanager
    async def hold_key(self, key: str) -> AsyncIterator[bool]:
        """Hold the lease ``key`` for the block; yield True when held, False when it could not be had.

        Waits up to :attr:`wait` seconds for another holder (polling with a
        growing pause, at most 0.1 s). False means the hub did not answer or
        the lease stayed taken: the caller then must not revoke the grant (it
        could end a refresh token another sign-in is storing), and says so in
        its log. The lease is released at the end of the block, even on an
        error or a cancellation.
        """
        deadline = time.monotonic() + self.wait
        pause = 0.005
        token: str | None = None
        while True:
            try:
                token = await self._acquire(key)
            except Exception as exc:  # any hub failure: go on unserialised, never revoke
                log.warning("grant lease unavailable (%s): going on without it", type(exc).__name__)
                break
            if token is not None or time.monotonic() >= deadline:
                break
            await asyncio.sleep(pause * random.uniform(0.5, 1.0))
            pause = min(pause * 2, 0.1)
        if token is None:
            log.warning("could not hold a grant lease: going on without it (no grant is revoked)")
        try:
            yield token is not None
        finally:
            if token is not None:
                try:
                    released = await self._release(key, token)
                except Exception as exc:  # it expires on its own
                    log.warning("grant lease not released (%s): it expires in %.0fs", type(exc).__name__, self.ttl)
                else:
                    if not released:
                        log.warning("a grant lease outlived its %.0fs: the work under it took too long", self.ttl)

    async def note_revoked(self, sub: str) -> None:
        """Record that a revoke of ``sub``'s grant ended now (call after the revoke call returned or failed)."""
        if self.hub is None:
            now = self.clock()
            if len(self._notes) > 1024:  # keep what a sign-in in flight could still need
                self._notes = {k: at for k, at in self._notes.items() if at > now - NOTE_TTL}
            self._notes[sub] = now
            return
        try:
            await self.hub.publish(_channel(sub), {"type": "grant_revoked", "at": self.clock()})
        except Exception as exc:  # the lease still orders what comes next in this process
            log.warning("could not record a revoke in the hub: %s", type(exc).__name__)

    async def revoked_since(self, sub: str, started: float) -> bool:
        """Return True when a revoke of ``sub``'s grant may have ended after ``started`` (or the hub cannot say)."""
        if self.hub is None:
            at = self._notes.get(sub)
            return at is not None and at >= started - CLOCK_MARGIN
        try:
            note = await self.hub.last(_channel(sub))
        except Exception as exc:  # cannot tell: assume the worst, the caller checks its token
            log.warning("could not read revoke notes from the hub: %s", type(exc).__name__)
            return True
        if not note:
            return False
        at = note.get("at")
        return not isinstance(at, (int, float)) or at >= started - CLOCK_MARGIN

    # -- exchanges in flight ------------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def exchange(self, deadline: float) -> AsyncIterator[str | None]:
        """Record an exchange in flight for the block (at most ``deadline`` + EXCHANGE_MARGIN seconds).

        Yield its ticket, or None when the hub could not record it (then
        :meth:`wait_for_earlier_exchanges` cannot tell, and the caller does
        not revoke). The record ends with the block, even on an error: wrap
        the exchange and the store write of its tokens, so that whoever waits
        for it finds the tokens stored.
        """
        ttl = deadline + EXCHANGE_MARGIN
        ticket: str | None = None
        try:
            ticket = self._exchanges.begin(ttl) if self.hub is None else await self.hub.begin_exchange(ttl)
        except Exception as exc:  # any hub failure: the sign-in goes on, it only never revokes
            log.warning("could not record an exchange in the hub (%s): going on without it", type(exc).__name__)
        try:
            yield ticket
        finally:
            if ticket is not None:
                try:
                    if self.hub is None:
                        self._exchanges.end(ticket)
                    else:
                        await self.hub.end_exchange(ticket)
                except Exception as exc:  # it lapses on its own; waiters wait until then
                    log.warning("could not end an exchange in the hub (%s): it lapses in %.0fs",
                                type(exc).__name__, ttl)

    async def _earlier(self, ticket: str) -> int:
        if self.hub is None:
            return self._exchanges.before(ticket)
        return await self.hub.exchanges_before(ticket)

    async def earlier_exchanges(self, ticket: str | None) -> bool:
        """Return True when an exchange that began before ``ticket``'s is in flight (or the hub cannot say)."""
        if ticket is None:
            return True
        try:
            return await self._earlier(ticket) > 0
        except Exception as exc:
            log.warning("could not read the exchanges in flight (%s)", type(exc).__name__)
            return True

    async def wait_for_earlier_exchanges(self, ticket: str | None, within: float) -> bool:
        """Wait until every exchange that began before ``ticket``'s is resolved; return True when they are.

        Polls the hub with a growing pause (at most 0.1 s). False after
        ``within`` seconds, or when the hub cannot say (the caller then must
        not revoke).
        """
        if ticket is None:
            return False
        deadline = time.monotonic() + within
        pause = 0.005
        while True:
            try:
                if await self._earlier(ticket) == 0:
                    return True
            except Exception as exc:
                log.warning("could not read the exchanges in flight (%s)", type(exc).__name__)
                return False
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(pause * random.uniform(0.5, 1.0))
            pause = min(pause * 2, 0.1)
