"""The token store: the plugin interface every storage backend implements.

A backend is a class registered in the ``tornado_signin.backends`` entry-point
group (the built-in ``memory``, ``sql``, ``dynamodb`` and ``file`` backends use
the same group as third-party plugins). It is built with the keyword-only
options of its ``store`` config section, so a misspelt option fails at startup.

The contract, checked for every backend by :mod:`tornado_signin.testing`:

* Methods are synchronous and thread-safe; the core calls them off the IOLoop
  through :meth:`tornado_signin.workers.WorkerPool.run`, one way everywhere.
* Records are keyed by the Google ``sub``.
* Token fields arrive already encrypted by the core (see
  :mod:`tornado_signin.crypto`): a backend stores them as opaque strings.
* :meth:`TokenStore.save` is an atomic merge following :func:`merge_records`,
  whatever the interleaving of concurrent saves in threads or processes.
* :meth:`TokenStore.mark_revoked` and :meth:`TokenStore.delete_if` are
  atomic compare-and-set writes on the stored refresh token: an outcome
  applies only to the token it was computed for.
* :meth:`TokenStore.get_many` and :meth:`TokenStore.save_many` are optional:
  the defaults loop over ``get`` / ``save``; a backend may do a batch's work
  in one go (one query, one transaction) with the same per-record outcomes.
* Every backend failure is raised as :class:`~tornado_signin.errors.StorageError`
  chained to its cause.
"""

from __future__ import annotations

import abc
import dataclasses
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from .plugins import STORES, BackendInfo, installed_backends, load

__all__ = [
    "ENTRY_POINT_GROUP",
    "TokenRecord",
    "TokenStore",
    "merge_records",
    "installed_backends",
    "load_store",
    "BackendInfo",
    "email_key",
    "revoked_record",
]

ENTRY_POINT_GROUP = STORES.name

#: Longest ``sub`` accepted anywhere. Google documents at most 255 ASCII characters.
MAX_SUB_LENGTH = 255


@dataclass(frozen=True)
class TokenRecord:
    """What is stored for one user.

    ``refresh_token`` and ``access_token`` hold ciphertext at the backend
    boundary and plaintext above it. Times are POSIX seconds (floats).
    ``refresh_token_issued_at`` and ``access_token_issued_at`` order competing
    saves: the newer token wins. ``revoked_at`` marks the grant revoked; a
    refresh token issued after it is usable again.
    ``refresh_token_expires_at`` is set when the user granted time-limited
    access (Google's ``refresh_token_expires_in``): the refresh token stops
    working then. ``disabled_at`` / ``enabled_at`` are the times of the last
    security events that blocked and unblocked sign-in (account-disabled for
    hijacking, account-enabled); ``security_event`` / ``security_event_at``
    say what the last security event was (for example
    ``account-disabled:hijacking``) and when it was received.
    """

    sub: str
    email: str | None = None
    refresh_token: str | None = None
    refresh_token_issued_at: float | None = None
    access_token: str | None = None
    access_token_expiry: float | None = None
    access_token_issued_at: float | None = None
    scopes: tuple[str, ...] = ()
    created_at: float | None = None
    updated_at: float | None = None
    revoked_at: float | None = None
    refresh_token_expires_at: float | None = None
    disabled_at: float | None = None
    enabled_at: float | None = None
    security_event: str | None = None
    security_event_at: float | None = None

    @property
    def refresh_token_expired(self) -> bool:
        """Return True when the stored refresh token was time-limited and its time is up (now)."""
        return self.refresh_token_expires_at is not None and self.refresh_token_expires_at <= time.time()

    @property
    def has_usable_refresh_token(self) -> bool:
        """Return True when a refresh token is stored, was issued after any revocation, and has not expired."""
        if not self.refresh_token or self.refresh_token_expired:
            return False
        if self.revoked_at is None:
            return True
        return (self.refresh_token_issued_at or 0.0) > self.revoked_at

    @property
    def signin_blocked(self) -> bool:
        """Return True while a security event blocks sign-in (disabled and not enabled since)."""
        return self.disabled_at is not None and (self.enabled_at is None or self.enabled_at < self.disabled_at)

    @property
    def state(self) -> str:
        """Return ``active``, ``blocked``, ``revoked``, ``expired`` or ``no_refresh_token`` (for listings)."""
        if self.signin_blocked:
            return "blocked"
        if self.has_usable_refresh_token:
            return "active"
        if self.revoked_at is not None and (self.refresh_token_issued_at or 0.0) <= self.revoked_at:
            return "revoked"
        if self.refresh_token and self.refresh_token_expired:
            return "expired"
        return "no_refresh_token"

    def replace(self, **changes: Any) -> "TokenRecord":
        """Return a copy with ``changes`` applied."""
        return dataclasses.replace(self, **changes)


_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def email_key(email: str) -> str:
    """Return the form under which emails compare: ASCII letters lower-cased, everything else as is.

    Google compares addresses case-insensitively; only ASCII is folded, so
    no Unicode case mapping (the Kelvin sign lower-cases to ``k``) can make
    two different addresses one.
    """
    return email.translate(_ASCII_LOWER)


def revoked_record(stored: TokenRecord, revoked_at: float, now: float | None = None) -> TokenRecord:
    """Return ``stored`` marked revoked at ``revoked_at`` (the later of the two marks), as :meth:`TokenStore.mark_revoked` leaves it."""
    marks = [t for t in (stored.revoked_at, revoked_at) if t is not None]
    return stored.replace(revoked_at=max(marks), updated_at=time.time() if now is None else now)


def _newer(incoming: float | None, stored: float | None) -> bool:
    # Ties go to the incoming record so that a re-encryption (same issue time,
    # new ciphertext) replaces the stored value.
    return stored is None or (incoming is not None and incoming >= stored)


def merge_records(stored: TokenRecord | None, incoming: TokenRecord, now: float | None = None) -> TokenRecord:
    """Return the record a save of ``incoming`` over ``stored`` must leave.

    This function is the reference semantics of :meth:`TokenStore.save`;
    backends that merge inside a database implement the same rules:

    * refresh token: replaced (with its issue time and its
      ``refresh_token_expires_at``, None included) only when ``incoming`` has
      one whose ``refresh_token_issued_at`` is >= the stored one; a missing
      refresh token never replaces a stored one;
    * access token, expiry, issue time and ``scopes``: replaced together only
      when ``incoming`` has an access token whose ``access_token_issued_at``
      is >= the stored one;
    * ``email``: replaced when ``incoming`` has one (the core passes only
      verified emails);
    * ``revoked_at``, ``disabled_at``, ``enabled_at``: each the later of the two;
    * ``security_event`` and ``security_event_at``: replaced together only when
      ``incoming`` has an event whose ``security_event_at`` is >= the stored one;
    * ``created_at``: the stored one; for a new record the incoming one (a
      migration keeps it) or ``now``; ``updated_at``: ``now``.
    """
    now = time.time() if now is None else now
    if stored is None:
        stored = TokenRecord(sub=incoming.sub, created_at=incoming.created_at or now)
    merged = stored
    if incoming.refresh_token and _newer(incoming.refresh_token_issued_at, stored.refresh_token_issued_at):
        merged = merged.replace(
            refresh_token=incoming.refresh_token,
            refresh_token_issued_at=incoming.refresh_token_issued_at,
            refresh_token_expires_at=incoming.refresh_token_expires_at,
        )
    if incoming.access_token and _newer(incoming.access_token_issued_at, stored.access_token_issued_at):
        merged = merged.replace(
            access_token=incoming.access_token,
            access_token_expiry=incoming.access_token_expiry,
            access_token_issued_at=incoming.access_token_issued_at,
            scopes=tuple(incoming.scopes) or stored.scopes,
        )
    if incoming.email:
        merged = merged.replace(email=incoming.email)
    if incoming.security_event and _newer(incoming.security_event_at, stored.security_event_at):
        merged = merged.replace(security_event=incoming.security_event, security_event_at=incoming.security_event_at)

    def later(name: str) -> float | None:
        times = [t for t in (getattr(stored, name), getattr(incoming, name)) if t is not None]
        return max(times) if times else None

    return merged.replace(
        revoked_at=later("revoked_at"),
        disabled_at=later("disabled_at"),
        enabled_at=later("enabled_at"),
        created_at=stored.created_at or now,
        updated_at=now,
    )


class TokenStore(abc.ABC):
    """A storage backend for :class:`TokenRecord` objects.

    Subclasses take their options as keyword-only constructor arguments. All
    methods must be thread-safe, and must raise
    :class:`~tornado_signin.errors.StorageError` (chained to the cause) on any
    backend failure.

    Example (a plugin, registered in the ``tornado_signin.backends`` entry-point group)::

        import threading
        from tornado_signin.store import TokenRecord, TokenStore, merge_records, revoked_record

        class DictStore(TokenStore):
            def __init__(self, *, label: str = "") -> None:
                self._records, self._lock = {}, threading.Lock()

            def get(self, sub):
                with self._lock:
                    return self._records.get(sub)

            def save(self, record):
                with self._lock:
                    merged = self._records[record.sub] = merge_records(self._records.get(record.sub), record)
                    return merged

            def delete(self, sub):
                with self._lock:
                    return self._records.pop(sub, None) is not None

            def mark_revoked(self, sub, revoked_at, *, if_refresh_token):
                with self._lock:
                    stored = self._records.get(sub)
                    if stored is None or stored.refresh_token != if_refresh_token:
                        return False
                    self._records[sub] = revoked_record(stored, revoked_at)
                    return True

            def delete_if(self, sub, *, if_refresh_token):
                with self._lock:
                    stored = self._records.get(sub)
                    if stored is None or stored.refresh_token != if_refresh_token:
                        return False
                    del self._records[sub]
                    return True

            def records(self):
                with self._lock:
                    return iter(list(self._records.values()))
    """

    @abc.abstractmethod
    def get(self, sub: str) -> TokenRecord | None:
        """Return the record stored for ``sub``, or None when there is none."""

    @abc.abstractmethod
    def save(self, record: TokenRecord) -> TokenRecord:
        """Merge ``record`` into the stored one atomically and return the result.

        The merge follows :func:`merge_records` exactly, under any interleaving
        of concurrent saves (threads and, for shared backends, processes).
        """

    @abc.abstractmethod
    def delete(self, sub: str) -> bool:
        """Forget ``sub``; return True if a record was deleted, False if there was none."""

    @abc.abstractmethod
    def records(self) -> Iterator[TokenRecord]:
        """Yield every stored record (order unspecified). Used by the CLI and migrations."""

    # -- conditional writes ---------------------------------------------------
    #
    # An answer from Google applies only to the refresh token it was computed
    # for: an ``invalid_grant`` for the old token must not mark a record that
    # meanwhile holds a new one revoked, and a revoke of the old grant must not
    # delete a record a newer sign-in wrote. Each is a compare-and-set on the
    # stored refresh token (ciphertext at the backend), done atomically by the
    # backend: a conditional UPDATE/DELETE, a ConditionExpression, the same
    # lock as ``save``.

    @abc.abstractmethod
    def mark_revoked(self, sub: str, revoked_at: float, *, if_refresh_token: str | None) -> bool:
        """Mark ``sub``'s grant revoked at ``revoked_at`` only if its stored refresh token is ``if_refresh_token``.

        ``if_refresh_token`` is compared exactly with the stored value; None
        means "no refresh token stored". On a match, atomically: ``revoked_at``
        becomes the later of the stored one and ``revoked_at``, ``updated_at``
        now, every other field unchanged; return True. Return False, changing
        nothing, when no record is stored or it holds another refresh token.
        """

    @abc.abstractmethod
    def delete_if(self, sub: str, *, if_refresh_token: str | None) -> bool:
        """Forget ``sub`` only if its stored refresh token is ``if_refresh_token`` (as :meth:`mark_revoked`).

        Return True when the record was deleted, False (nothing changed) when
        none is stored or it holds another refresh token. Atomic.
        """

    # -- batches ----------------------------------------------------------------
    #
    # Optional: the defaults below call get / save once per item, so every
    # backend (a third party's included) has them. A backend overrides them
    # only to do a batch's work in one go (the sql store: one SELECT … IN, one
    # transaction), with exactly the outcomes of the one-by-one calls.

    def get_many(self, subs: Sequence[str]) -> list[TokenRecord | None | Exception]:
        """Return, for each of ``subs`` in order, what ``get(sub)`` returns, or the exception it raises.

        One item per sub (a sub given twice is answered twice). Each item is
        as that sub's own ``get`` would answer at some moment during the call
        (the batch need not be one snapshot). A failure is that sub's item
        (StorageError, or above the backend CryptoError), never the call's.
        """
        return _each(self.get, subs)

    def save_many(self, records: Sequence[TokenRecord]) -> list[TokenRecord | Exception]:
        """Save each of ``records`` as ``save`` does, in order; return, for each, what its ``save`` returns or
        the exception it raises.

        Each record is its own atomic merge (following :func:`merge_records`,
        whatever runs concurrently), applied in the given order, so two
        records of one sub merge as two saves one after the other. The batch
        as a whole is not atomic: one record's failure (ValueError for a sub
        the backend refuses, StorageError) is that record's item, and the
        others are saved.
        """
        return _each(self.save, records)

    def find_by_email(self, email: str) -> list[TokenRecord]:
        """Return every stored record whose email equals ``email`` under :func:`email_key` (order unspecified).

        Exact matches only (no pattern, prefix or substring: ``%`` and ``_``
        are ordinary characters); a record without an email never matches.
        Only verified emails are stored (the core passes an email only when
        the ID token's ``email_verified`` is ``true``), so callers resolve an
        email to a user only when exactly one record comes back. The default
        scans :meth:`records`; a backend may answer from an index instead, with
        the same result. Thread-safe; raise StorageError like the others.
        """
        wanted = email_key(email)
        return [r for r in self.records() if r.email and email_key(r.email) == wanted]

    def check(self) -> None:
        """Raise StorageError unless the backend is reachable and usable.

        The default implementation performs a ``get`` of an id that cannot exist.
        """
        self.get("tornado-signin-health-check")

    def close(self) -> None:
        """Release connections and files. The store is unusable afterwards. Idempotent."""


R = TypeVar("R")


def _each(call: Callable[[Any], R], items: Sequence[Any]) -> list[R | Exception]:
    """Return ``call(item)`` for each item in order, or the exception it raised: that item's outcome, the others go on."""
    results: list[R | Exception] = []
    for item in items:
        try:
            results.append(call(item))
        except Exception as exc:
            results.append(exc)
    return results


def load_store(name: str, options: dict[str, Any] | None = None) -> TokenStore:
    """Build the token store registered as ``name`` with ``options`` (see :func:`tornado_signin.plugins.load`).

    Raise ConfigError naming ``store.backend`` when no such backend is
    installed (the message lists the installed names) or its dependencies are
    missing (the message gives the pip command), and naming ``store.<option>``
    when the backend rejects an option.

    Example::

        store = load_store("sql", {"url": "sqlite:///tokens.sqlite3"})
    """
    return load(STORES, name, options, base=TokenStore)
