"""Seed step 7 as domain code: exchange the code, verify the ID token, merge the tokens.

:class:`SigninService` knows nothing of HTTP: handlers call
:meth:`SigninService.complete` and map its outcome and exceptions to
responses.

Google returns a refresh token only on the first offline consent (or with
``prompt=consent``). A stored refresh token is never replaced by "none" (the
store's merge rule); a user left with no usable refresh token gets the
``consent_required`` outcome so the page asks again with consent.

A ``signed_in`` outcome means the stored refresh token works: what follows
an exchange runs under the user's grant lease (:mod:`tornado_signin.grants`),
and a refresh token whose exchange crossed a revoke of the same grant is
tried once before it counts. A sign-in left without a refresh token waits for the
exchanges in flight that began before its own (another browser of the same
user may be storing one) before it revokes the grant.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from .crypto import EncryptingStore
from .errors import CryptoError, GoogleError, GoogleProtocolError, InvalidGrantError, SigninBlockedError, StorageError
from .google import GoogleClient, TokenResponse
from .grants import EXCHANGE_MARGIN, GrantGuard
from .health import StoreHealth
from .metrics import Metrics
from .store import TokenRecord
from .verify import IdClaims, IdTokenVerifier
from .workers import WorkerPool

__all__ = ["SigninService", "SigninOutcome", "SIGNED_IN", "CONSENT_REQUIRED", "record_from_tokens"]

log = logging.getLogger(__name__)

SIGNED_IN = "signed_in"
CONSENT_REQUIRED = "consent_required"
#: Delays between attempts to save tokens Google already issued (the code is spent).
SAVE_RETRY_DELAYS = (0.05, 0.2, 0.5, 1.5)


@dataclass(frozen=True)
class SigninOutcome:
    """The result of a completed exchange: ``status`` is SIGNED_IN or CONSENT_REQUIRED."""

    status: str
    claims: IdClaims
    record: TokenRecord
    #: Whether this exchange brought a refresh token (a first or renewed consent) into the store.
    refresh_token_received: bool = False


def record_from_tokens(sub: str, email: str | None, tokens: TokenResponse) -> TokenRecord:
    """Return the record to merge for a token-endpoint reply (plaintext tokens)."""
    return TokenRecord(
        sub=sub,
        email=email,
        refresh_token=tokens.refresh_token,
        refresh_token_issued_at=tokens.received_at if tokens.refresh_token else None,
        refresh_token_expires_at=tokens.refresh_token_expires_at if tokens.refresh_token else None,
        access_token=tokens.access_token,
        access_token_expiry=tokens.expiry,
        access_token_issued_at=tokens.received_at,
        scopes=tuple(sorted(tokens.scopes)),
    )


class SigninService:
    """Complete sign-ins for one client."""

    def __init__(self, google: GoogleClient, verifier: IdTokenVerifier, store: EncryptingStore,
                 workers: WorkerPool, metrics: Metrics, grants: GrantGuard | None = None) -> None:
        self.google = google
        self.verifier = verifier
        self.store = store
        self.workers = workers
        self.metrics = metrics
        #: Serialises each user's grant changes across processes (see :mod:`tornado_signin.grants`);
        #: without one, a process-local one.
        self.grants = grants or GrantGuard(None)
        #: The store's up/down flag (a StoreHealth), told about every save; optional.
        self.health: StoreHealth | None = None

    async def save_with_retry(self, record: TokenRecord) -> TokenRecord:
        """Merge ``record`` into the store, retrying transient failures with backoff.

        Raise StorageError when every attempt failed.
        """
        for attempt, delay in enumerate((*SAVE_RETRY_DELAYS, None)):
            started = time.perf_counter()
            try:
                merged = await self.workers.run(self.store.save, record)
            except CryptoError:
                # The save was written; the stored record does not decrypt
                # (tampered, or a key missing). The store itself is up.
                raise
            except StorageError as exc:
                if self.health is not None:
                    self.health.report(False, type(exc.__cause__ or exc).__name__)
                if delay is None:
                    raise
                log.warning("token store save failed (attempt %d), retrying: %s", attempt + 1, exc)
                await asyncio.sleep(delay)
                continue
            self.metrics.observe("signin_store_seconds", time.perf_counter() - started)
            if self.health is not None:
                self.health.report(True)
            return merged
        raise AssertionError("unreachable")

    async def complete(self, code: str, *, session_id: str | None = None) -> SigninOutcome:
        """Exchange ``code`` and store the user's tokens.

        Return CONSENT_REQUIRED (after revoking the stale grant at Google,
        see :meth:`revoke_stale_grant`) when the user is left with no usable
        refresh token, SIGNED_IN otherwise. Raise GoogleError subclasses
        (exchange), TokenVerificationError, SigninBlockedError (a security
        event blocks this user), StorageError or OverloadedError;
        the code is spent once the exchange was attempted, so nothing here
        retries it. ``session_id`` (the browser session that posted the code)
        makes the sign-ins of one session run one at a time.
        """
        if session_id is None:
            return await self._complete(code)
        # One browser session's code POSTs (its tabs) one at a time, exchange
        # included: the first tab's refresh token is stored before the second
        # tab decides whether the grant needs revoking.
        async with self.grants.hold_session(session_id):
            return await self._complete(code)

    async def _complete(self, code: str) -> SigninOutcome:
        # The exchange is recorded in flight until its tokens are stored: a
        # sign-in of the same user in another browser, about to revoke the
        # grant, waits for it (see _after_earlier_exchanges).
        async with self.grants.exchange(self.google.google.request_timeout) as ticket:
            return await self._exchange_and_store(code, ticket)

    async def _exchange_and_store(self, code: str, ticket: str | None) -> SigninOutcome:
        started = time.perf_counter()
        exchange_started = self.grants.clock()
        tokens = await self.google.exchange_code(code)
        self.metrics.observe("signin_exchange_seconds", time.perf_counter() - started)
        if tokens.id_token is None:
            raise GoogleProtocolError("token reply has no id_token (is the openid scope requested?)")
        started = time.perf_counter()
        claims = await self.verifier.verify(tokens.id_token, access_token=tokens.access_token)
        self.metrics.observe("signin_verify_seconds", time.perf_counter() - started)
        # An unverified email is anybody's claim: it is never stored, so no
        # lookup by email (CLI, scripts) can reach this grant through it.
        email = claims.email if claims.email_verified else None
        incoming = record_from_tokens(claims.sub, email, tokens)
        # What follows the exchange runs under the user's grant lease, so that
        # no other sign-in or disconnect of this user revokes the grant between
        # our look at the store and our answer.
        async with self.grants.hold(claims.sub) as held:
            grant_ended = False
            if incoming.refresh_token and await self.grants.revoked_since(claims.sub, exchange_started):
                # A revoke of this user's grant ended while our exchange was in
                # flight: Google may have issued our refresh token before it.
                incoming, grant_ended = await self._tried(incoming)
            merged = await self.save_with_retry(incoming)
            if merged.signin_blocked:
                # Known only after the save (no extra read on every login): the tokens
                # just stored are neutralised at once, as the block's revocation did.
                await self.save_with_retry(TokenRecord(sub=claims.sub, revoked_at=time.time()))
                raise SigninBlockedError("a security event blocks sign-in for this user until account-enabled")
            if merged.has_usable_refresh_token:
                return SigninOutcome(status=SIGNED_IN, claims=claims, record=merged,
                                     refresh_token_received=incoming.refresh_token is not None
                                     and merged.refresh_token == incoming.refresh_token)
            if grant_ended:
                log.info("the refresh token of this sign-in died with a revoke that crossed it: consent again")
                return SigninOutcome(status=CONSENT_REQUIRED, claims=claims, record=merged)
            if not held:
                log.warning("stale grant not revoked: another sign-in of this user may be storing its refresh token")
                return SigninOutcome(status=CONSENT_REQUIRED, claims=claims, record=merged)
            if not await self.grants.earlier_exchanges(ticket):
                await self.revoke_stale_grant(merged.access_token, sub=claims.sub)
                return SigninOutcome(status=CONSENT_REQUIRED, claims=claims, record=merged)
        # Exchanges that began before ours are in flight: one may be this
        # user's, in another browser, bringing the refresh token of this very
        # grant. Wait for them outside the lease (they need it to store).
        return await self._after_earlier_exchanges(ticket, claims, merged, exchange_started)

    async def _after_earlier_exchanges(self, ticket: str | None, claims: IdClaims, merged: TokenRecord,
                                       exchange_started: float) -> SigninOutcome:
        """Wait for the exchanges that began before ``ticket``'s, then decide again on the stored record.

        Return SIGNED_IN with the stored record when one of them stored a
        usable refresh token; otherwise revoke the stale grant (unless the
        wait could not finish, the lease could not be had, or another sign-in
        revoked it since our exchange began) and return CONSENT_REQUIRED.
        """
        within = self.google.google.request_timeout + EXCHANGE_MARGIN
        resolved = await self.grants.wait_for_earlier_exchanges(ticket, within)
        async with self.grants.hold(claims.sub) as held:
            stored = await self.workers.run(self.store.get, claims.sub)
            if stored is not None and stored.has_usable_refresh_token and not stored.signin_blocked:
                return SigninOutcome(status=SIGNED_IN, claims=claims, record=stored)
            if not (resolved and held):
                log.warning("stale grant not revoked: a sign-in that may be storing its refresh token "
                            "did not finish in time")
            elif await self.grants.revoked_since(claims.sub, exchange_started):
                log.info("stale grant already revoked by another sign-in of this user")
            else:
                await self.revoke_stale_grant(merged.access_token, sub=claims.sub)
            return SigninOutcome(status=CONSENT_REQUIRED, claims=claims, record=stored or merged)

    async def _tried(self, incoming: TokenRecord) -> tuple[TokenRecord, bool]:
        """Return ``incoming`` after one refresh with its refresh token, and whether the grant was found ended.

        A refresh that works gives the record its fresh access token; one
        answered ``invalid_grant`` drops both tokens (dead with the grant). If
        Google cannot be reached, ``incoming`` is returned unchanged (a later
        refresh will tell, and marks it revoked conditionally).
        """
        assert incoming.refresh_token is not None
        try:
            tokens = await self.google.refresh(incoming.refresh_token)
        except InvalidGrantError:
            self.metrics.inc("signin_refresh_total", outcome="invalid_grant")
            return TokenRecord(sub=incoming.sub, email=incoming.email), True
        except GoogleError as exc:
            log.warning("could not try the refresh token of a sign-in that crossed a revoke: %s", exc)
            return incoming, False
        self.metrics.inc("signin_refresh_total", outcome="refreshed")
        tried = record_from_tokens(incoming.sub, incoming.email, tokens)
        if not tried.refresh_token:
            tried = tried.replace(refresh_token=incoming.refresh_token,
                                  refresh_token_issued_at=incoming.refresh_token_issued_at)
        return tried.replace(scopes=tried.scopes or incoming.scopes), False

    async def revoke_stale_grant(self, access_token: str | None, *, sub: str | None = None) -> None:
        """End the grant of ``access_token`` at Google, so that the next consent is a first one again.

        Google issues a refresh token only on a grant's first consent. With no
        usable one stored, ending the grant makes the next consent issue one:
        this works for GIS (which has no documented ``prompt=consent``) and
        gapi alike. A failure is logged, never raised: the user is asked for
        consent either way.
        """
        if not access_token:
            return
        try:
            await self.google.revoke(access_token)
        except GoogleError as exc:
            log.warning("could not revoke the stale grant: %s", exc)
        if sub is not None:
            await self.grants.note_revoked(sub)
