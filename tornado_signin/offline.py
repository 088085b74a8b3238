"""Offline access: valid Google credentials for a stored user, with the user gone.

This is why the flow exists (the seed: "to use Google services on behalf of a
user when the user is offline"). :class:`OfflineAccess` returns the stored
access token while it is valid, otherwise refreshes it with the stored
refresh token at the configured token endpoint and persists the result
through the store's merge (a rotated refresh token included).

* Concurrent requests for one user cause one refresh per process (single
  flight). Across processes two refreshes may race; the store's merge keeps
  the newest tokens, so neither loses a refresh token.
* ``invalid_grant`` (revoked, expired, unused for months) marks the record
  revoked, keeps its audit fields, stops retrying and raises
  ConsentRequiredError: the user's next sign-in goes through consent.
* Retryable failures (5xx, timeouts) are retried with backoff, then raised
  as GoogleUnavailableError.

For scripts, :func:`tornado_signin.scripts.get_credentials` and
:func:`tornado_signin.scripts.authorized_session` wrap the same code path
without an IOLoop of their own.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import time
from collections.abc import Iterable
from typing import Any

from google.oauth2.credentials import Credentials

from .errors import (
    ConsentRequiredError,
    GrantRevokedError,
    GoogleUnavailableError,
    InvalidGrantError,
    MissingScopeError,
    UnknownUserError,
)
from .google import GoogleClient, normalize_scopes
from .grants import GrantGuard
from .hooks import Revoked, SigninHooks
from .metrics import Metrics
from .signin import record_from_tokens
from .store import TokenRecord, TokenStore
from .workers import WorkerPool

__all__ = ["OfflineAccess", "REFRESH_MARGIN"]

log = logging.getLogger(__name__)

#: An access token is refreshed when it has less than this many seconds left.
#: It exceeds google-auth's own threshold (225 s), so the Credentials handed
#: out are ``valid`` in google-auth's eyes too.
REFRESH_MARGIN = 300.0
REFRESH_RETRY_DELAYS = (0.2, 1.0, 3.0)


def _require_active(record: TokenRecord) -> None:
    """Raise ConsentRequiredError unless ``record`` holds a usable refresh token (its state is ``active``)."""
    if record.has_usable_refresh_token:
        return
    if record.revoked_at is not None:
        raise ConsentRequiredError("the user's grant is revoked: the user must sign in with consent again")
    raise ConsentRequiredError("no refresh token is stored for the user: the user must sign in with consent again")


class OfflineAccess:
    """Credentials, refresh and revocation for stored users of one client."""

    def __init__(self, store: TokenStore, google: GoogleClient, workers: WorkerPool,
                 metrics: Metrics | None = None, *, retry_delays: Iterable[float] = REFRESH_RETRY_DELAYS,
                 grants: GrantGuard | None = None, hooks: SigninHooks | None = None) -> None:
        """``hooks``: the host app's (``on_revoked`` when a refresh finds the grant revoked); none by default."""
        self.hooks = hooks or SigninHooks()
        #: Serialises each user's grant changes with the sign-ins (see :mod:`tornado_signin.grants`).
        self.grants = grants or GrantGuard(None)
        self.store = store
        self.google = google
        self.workers = workers
        self.metrics = metrics or Metrics()
        self.retry_delays = tuple(retry_delays)
        self._refreshing: dict[str, asyncio.Future[TokenRecord]] = {}

    # -- lookup ------------------------------------------------------------------------

    def _find_blocking(self, user: str) -> TokenRecord:
        record = self.store.get(user)
        if record is not None:
            return record
        if "@" in user:
            # Only verified emails are stored; one that several records share
            # (an address re-assigned, an account re-created) names nobody.
            matches = self.store.find_by_email(user)
            if len(matches) == 1:
                return matches[0]
            if len(matches) > 1:
                raise UnknownUserError(f"{len(matches)} users share that email: give the user's sub instead")
        raise UnknownUserError("no stored user with that sub or verified email: give the user's sub")

    async def find(self, user: str) -> TokenRecord:
        """Return the record of ``user``: a sub, or an email that exactly one record holds (compared ignoring
        ASCII case; only verified emails are stored). Raise UnknownUserError otherwise."""
        return await self.workers.run(self._find_blocking, user)

    # -- credentials -------------------------------------------------------------------

    async def fresh_record(self, user: str, *, min_valid: float = REFRESH_MARGIN, force: bool = False) -> TokenRecord:
        """Return the record of ``user`` with an access token valid for ``min_valid`` seconds more.

        Raise UnknownUserError, ConsentRequiredError (the record is not active:
        no usable refresh token, a revoked grant — even with an unexpired
        access token stored — or Google answered invalid_grant),
        GoogleUnavailableError.
        """
        record = await self.find(user)
        # A stored access token is handed out only while the record is active:
        # once the grant is revoked (or was never offline), Google has most
        # likely ended that token too, and the caller must learn it now.
        _require_active(record)
        if not force and record.access_token and (record.access_token_expiry or 0) - time.time() > min_valid:
            return record
        pending = self._refreshing.get(record.sub)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[TokenRecord] = asyncio.get_running_loop().create_future()
        self._refreshing[record.sub] = future
        try:
            # Under the user's grant lease: a disconnect (or a sign-in's revoke)
            # waits for this refresh, so a late answer cannot re-create a record
            # forgotten meanwhile, nor land on a grant ended meanwhile.
            try:
                async with self.grants.hold(record.sub):
                    current = await self.workers.run(self.store.get, record.sub)
                    if current is None:
                        raise UnknownUserError("no stored user with that sub or verified email: give the user's sub")
                    _require_active(current)
                    result = await self._refresh(current)
            except GrantRevokedError:
                # Told once the lease is released: a slow hook must not hold up the user's sign-ins.
                await self.hooks.revoked(Revoked(sub=record.sub, reason="invalid_grant", grant_revoked=True))
                raise
        except BaseException as exc:
            future.set_exception(exc)
            # Mark the exception retrieved: waiters, if any, get it through shield.
            future.exception()
            raise
        else:
            future.set_result(result)
            return result
        finally:
            del self._refreshing[record.sub]

    async def _refresh(self, record: TokenRecord) -> TokenRecord:
        assert record.refresh_token is not None
        for attempt, delay in enumerate((*self.retry_delays, None)):
            sent_at = time.time()
            try:
                tokens = await self.google.refresh(record.refresh_token)
            except InvalidGrantError as exc:
                self.metrics.inc("signin_refresh_total", outcome="invalid_grant")
                # The answer is about this refresh token only: if a newer one was
                # stored while the refresh was in flight, it stays usable. And the
                # mark is dated when the request left: a token Google issued after
                # that (a new consent waiting to be stored) outranks it.
                marked = await self.workers.run(self.store.mark_revoked, record.sub, sent_at,
                                                if_refresh_token=record.refresh_token)
                if marked:
                    log.warning("refresh token rejected (invalid_grant); the grant is marked revoked")
                else:
                    log.warning("refresh token rejected (invalid_grant); a newer one is stored meanwhile: kept")
                error = GrantRevokedError if marked else ConsentRequiredError
                raise error("the refresh token was revoked or expired: the user must sign in again") from exc
            except GoogleUnavailableError as exc:
                self.metrics.inc("signin_refresh_total", outcome="retryable_error")
                if delay is None:
                    raise
                log.warning("refresh failed (attempt %d), retrying: %s", attempt + 1, exc)
                await asyncio.sleep(delay)
                continue
            self.metrics.inc("signin_refresh_total", outcome="refreshed")
            # Google may narrow or widen what it reports; keep the granted set.
            incoming = record_from_tokens(record.sub, None, tokens)
            if not tokens.scopes:
                incoming = incoming.replace(scopes=record.scopes)
            return await self.workers.run(self.store.save, incoming)
        raise AssertionError("unreachable")

    def _credentials(self, record: TokenRecord) -> Credentials:
        google = self.google.google
        expiry = (datetime.datetime.fromtimestamp(record.access_token_expiry, datetime.timezone.utc).replace(tzinfo=None)
                  if record.access_token_expiry else None)
        return Credentials(
            token=record.access_token,
            refresh_token=record.refresh_token,
            token_uri=google.endpoints.token_uri,
            client_id=google.client_id,
            client_secret=google.client_secret,
            scopes=list(record.scopes) or None,
            expiry=expiry,
        )

    async def credentials(self, user: str, *, required_scopes: Iterable[str] = (),
                          min_valid: float = REFRESH_MARGIN) -> Credentials:
        """Return google-auth Credentials for ``user`` valid now (refreshed and persisted if needed).

        Raise MissingScopeError when ``required_scopes`` (short names or URLs)
        were not all granted, and as :meth:`fresh_record`.

        Example (in a handler of the app; never blocks the IOLoop)::

            offline = self.settings["signin"].offline
            creds = await offline.credentials(sub, required_scopes=["drive.appdata"])
        """
        record = await self.find(user)
        missing = normalize_scopes(tuple(required_scopes)) - normalize_scopes(record.scopes)
        if missing:
            raise MissingScopeError(missing)
        return self._credentials(await self.fresh_record(user, min_valid=min_valid))

    async def call_userinfo(self, user: str) -> dict[str, Any]:
        """Call Google's userinfo API for ``user`` with stored credentials (the offline path end to end)."""
        record = await self.fresh_record(user)
        try:
            return await self.google.userinfo(record.access_token or "")
        except InvalidGrantError:
            # The access token died early (revoked at Google): refresh once.
            record = await self.fresh_record(user, force=True)
            return await self.google.userinfo(record.access_token or "")

    # -- revocation --------------------------------------------------------------------

    async def revoke_and_forget(self, user: str) -> bool:
        """Revoke ``user``'s grant at Google, then delete the record if it still holds the revoked refresh token.

        Runs under the user's grant lease. Return True when Google revoked it,
        False when Google already considered it invalid (which counts as
        revoked). A record that a newer sign-in rewrote meanwhile is kept.
        Raise GoogleUnavailableError (retried with backoff first; the record is
        kept so the revoke can be tried again) and UnknownUserError.
        """
        sub = (await self.find(user)).sub
        # Under the user's grant lease: no sign-in of this user stores a refresh
        # token between our read and our delete, and one whose exchange crossed
        # this revoke finds the note and tries its token before it answers.
        async with self.grants.hold(sub):
            record = await self.workers.run(self.store.get, sub)
            if record is None:
                raise UnknownUserError("no stored user with that sub or verified email: give the user's sub")
            token = record.refresh_token or record.access_token
            revoked = False
            if token:
                try:
                    revoked = await self._revoke_with_retry(token)
                finally:
                    await self.grants.note_revoked(sub)
            # Only the record this revoke was computed for: one that a newer
            # sign-in wrote meanwhile (another refresh token) is kept.
            deleted = await self.workers.run(self.store.delete_if, sub, if_refresh_token=record.refresh_token)
            if not deleted:
                log.info("revoked, but the record changed meanwhile (a newer sign-in): kept")
        return revoked

    async def _revoke_with_retry(self, token: str) -> bool:
        for attempt, delay in enumerate((*self.retry_delays, None)):
            try:
                return await self.google.revoke(token)
            except GoogleUnavailableError as exc:
                if delay is None:
                    raise
                log.warning("revoke failed (attempt %d), retrying: %s", attempt + 1, exc)
                await asyncio.sleep(delay)
        raise AssertionError("unreachable")
