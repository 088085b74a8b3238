"""Encryption at rest for stored tokens, done in the core before any backend sees them.

Each token is encrypted with AES-256-GCM (authenticated) under a list of
keys, newest first: the newest encrypts, every key decrypts, so keys can
rotate without downtime (``tornado-signin rotate-keys``). The associated
data of each ciphertext is its field (``refresh_token`` or ``access_token``)
and the ``sub`` of the record it is stored in: a ciphertext copied into
another user's row, or into the other field, does not decrypt
(:class:`~tornado_signin.errors.CryptoError`), so write access to the store
cannot make Bob's row act as Alice.

The configured keys are Fernet keys (``tornado-signin genkey``); each one's
AES key is derived from it with HKDF-SHA256. A ciphertext reads
``tsg1.<base64url: key id (4) | nonce (12) | ciphertext and tag>``; the key id
(derived from the key, not secret) picks the key without trying each one.
Records written by earlier versions hold Fernet tokens, which are not bound
to their user: they still decrypt (under any configured key), and
``rotate-keys`` or ``migrate`` rewrites them bound. :class:`EncryptingStore`
wraps any :class:`~tornado_signin.store.TokenStore` so that every backend, a
third party's included, gets this for free.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
from collections.abc import Iterator, Sequence
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from .errors import ConfigError, CryptoError
from .store import TokenRecord, TokenStore

__all__ = ["TokenCipher", "EncryptingStore", "generate_key", "TOKEN_FIELDS"]

#: The record fields that hold tokens (and the associated data's field names).
TOKEN_FIELDS = ("refresh_token", "access_token")
_PREFIX = "tsg1."
_KEY_ID_BYTES = 4
_NONCE_BYTES = 12
_HKDF_INFO = b"tornado-signin token encryption: AES-256-GCM, v1"
#: Rounds of a compare-and-set before giving up (each lost round saw another write land).
_CAS_ROUNDS = 16


def generate_key() -> str:
    """Return a new Fernet key as text, the format ``encryption.keys`` expects."""
    return Fernet.generate_key().decode("ascii")


def _associated_data(sub: str, field: str) -> bytes:
    # The field names hold no NUL, so the split is unambiguous whatever the sub.
    return b"tornado-signin/v1\x00" + field.encode("ascii") + b"\x00" + sub.encode("utf-8", "surrogatepass")


class _Key:
    """One configured key: its Fernet form (legacy tokens) and its derived AES-GCM key and id."""

    def __init__(self, fernet_key: bytes) -> None:
        self.fernet = Fernet(fernet_key)
        raw = base64.urlsafe_b64decode(fernet_key)
        derived = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_HKDF_INFO).derive(raw)
        self.aead = AESGCM(derived)
        self.key_id = hmac.new(derived, b"key id", hashlib.sha256).digest()[:_KEY_ID_BYTES]


class TokenCipher:
    """Authenticated encryption of token strings, bound to their user and field, under rotating keys."""

    def __init__(self, keys: Sequence[str], *, config_key: str = "encryption.keys") -> None:
        """Build from Fernet keys, newest first.

        Raise ConfigError naming ``config_key`` when the list is empty or a key
        is not a valid Fernet key (the key itself is never echoed).
        """
        if not keys:
            raise ConfigError(config_key, "at least one key is required (generate one with `tornado-signin genkey`)")
        self._keys: list[_Key] = []
        for index, key in enumerate(keys):
            try:
                self._keys.append(_Key(key.encode("ascii") if isinstance(key, str) else key))
            except (ValueError, TypeError, UnicodeEncodeError, binascii.Error) as exc:
                raise ConfigError(f"{config_key}[{index}]", "not a valid Fernet key (32 url-safe base64 bytes)") from exc
        self._newest = self._keys[0]
        self._legacy = MultiFernet([key.fernet for key in self._keys])

    def encrypt(self, plaintext: str, *, sub: str, field: str) -> str:
        """Return ``plaintext`` encrypted under the newest key, bound to ``sub`` and ``field``."""
        nonce = os.urandom(_NONCE_BYTES)
        sealed = self._newest.aead.encrypt(nonce, plaintext.encode("utf-8"), _associated_data(sub, field))
        return _PREFIX + base64.urlsafe_b64encode(self._newest.key_id + nonce + sealed).decode("ascii")

    def decrypt(self, ciphertext: str, *, sub: str, field: str) -> str:
        """Return the plaintext of ``ciphertext`` stored in ``field`` of ``sub``'s record.

        Raise CryptoError when no configured key opens it, or it was made for
        another user or field (the message says which check failed, never a
        value). A legacy Fernet token (unbound) opens under any configured key.
        """
        if not ciphertext.startswith(_PREFIX):
            try:
                return self._legacy.decrypt(ciphertext.encode("ascii")).decode("utf-8")
            except (InvalidToken, UnicodeError, ValueError) as exc:
                raise CryptoError("a stored token cannot be decrypted with the configured encryption.keys") from exc
        try:
            blob = base64.urlsafe_b64decode(ciphertext[len(_PREFIX):].encode("ascii"))
        except (binascii.Error, ValueError, UnicodeError) as exc:
            raise CryptoError("a stored token is malformed") from exc
        key_id, nonce = blob[:_KEY_ID_BYTES], blob[_KEY_ID_BYTES:_KEY_ID_BYTES + _NONCE_BYTES]
        sealed = blob[_KEY_ID_BYTES + _NONCE_BYTES:]
        candidates = [key for key in self._keys if key.key_id == key_id]
        if not candidates or len(nonce) != _NONCE_BYTES:
            raise CryptoError("a stored token cannot be decrypted with the configured encryption.keys")
        for key in candidates:
            try:
                return key.aead.decrypt(nonce, sealed, _associated_data(sub, field)).decode("utf-8")
            except InvalidTag:
                continue
            except UnicodeError as exc:
                raise CryptoError("a stored token does not decode as text") from exc
        raise CryptoError("a stored token does not belong to this record (another user's or field's "
                          "ciphertext) or was altered")


class EncryptingStore(TokenStore):
    """A TokenStore that encrypts token fields on the way in and decrypts them on the way out.

    It has the inner store's contract; records above it hold plaintext,
    records below it ciphertext.
    """

    def __init__(self, inner: TokenStore, cipher: TokenCipher) -> None:
        self.inner = inner
        self.cipher = cipher

    def _seal(self, record: TokenRecord) -> TokenRecord:
        cipher, sub = self.cipher, record.sub
        return record.replace(**{
            field: cipher.encrypt(value, sub=sub, field=field) if value else None
            for field in TOKEN_FIELDS for value in (getattr(record, field),)
        })

    def _open(self, record: TokenRecord, known: dict[tuple[str, str], str] | None = None) -> TokenRecord:
        # ``known`` maps (field, ciphertext) this process just made for this
        # record to the plaintext: what a save wrote back need not be decrypted again.
        known = known or {}
        opened = {}
        for field in TOKEN_FIELDS:
            value = getattr(record, field)
            if value:
                value = known.get((field, value)) or self.cipher.decrypt(value, sub=record.sub, field=field)
            opened[field] = value or None
        return record.replace(**opened)

    def get(self, sub: str) -> TokenRecord | None:
        record = self.inner.get(sub)
        return None if record is None else self._open(record)

    @staticmethod
    def _made(record: TokenRecord, sealed: TokenRecord) -> dict[tuple[str, str], str]:
        """Return the ciphertexts ``_seal`` just made for ``record``, mapped to their plaintext (see ``_open``)."""
        return {(field, getattr(sealed, field)): getattr(record, field) for field in TOKEN_FIELDS
                if getattr(sealed, field)}

    def save(self, record: TokenRecord) -> TokenRecord:
        sealed = self._seal(record)
        return self._open(self.inner.save(sealed), self._made(record, sealed))

    def delete(self, sub: str) -> bool:
        return self.inner.delete(sub)

    def get_many(self, subs: Sequence[str]) -> list[TokenRecord | None | Exception]:
        """As :meth:`TokenStore.get_many`, through the inner store's: a record that does not decrypt is its
        sub's CryptoError, the others are returned."""
        results: list[TokenRecord | None | Exception] = []
        for item in self.inner.get_many(subs):
            if isinstance(item, TokenRecord):
                try:
                    item = self._open(item)
                except Exception as exc:  # that record's outcome, as its get would raise it
                    item = exc
            results.append(item)
        return results

    def save_many(self, records: Sequence[TokenRecord]) -> list[TokenRecord | Exception]:
        """As :meth:`TokenStore.save_many`, through the inner store's (one batch below as above)."""
        sealed = [self._seal(record) for record in records]
        results: list[TokenRecord | Exception] = []
        for record, closed, item in zip(records, sealed, self.inner.save_many(sealed), strict=True):
            if isinstance(item, TokenRecord):
                try:
                    item = self._open(item, self._made(record, closed))
                except Exception as exc:  # that record's outcome, as its save would raise it
                    item = exc
            results.append(item)
        return results

    def _stored_ciphertext(self, sub: str, refresh_token: str | None) -> tuple[bool, str | None]:
        """Return (True, the stored ciphertext) when ``sub``'s stored refresh token decrypts to ``refresh_token``."""
        stored = self.inner.get(sub)
        if stored is None:
            return False, None
        if stored.refresh_token is None or refresh_token is None:
            return stored.refresh_token is None and refresh_token is None, None
        plain = self.cipher.decrypt(stored.refresh_token, sub=sub, field="refresh_token")
        return hmac.compare_digest(plain.encode("utf-8"), refresh_token.encode("utf-8")), stored.refresh_token

    def _compare_and_set(self, sub: str, refresh_token: str | None, write: Any) -> bool:
        # The inner store compares ciphertext, and a token's ciphertext differs
        # at every encryption: find the one stored for this plaintext, then let
        # the inner store write only if it is still that one. If it changed in
        # between (a save, a re-encryption), look again.
        for _ in range(_CAS_ROUNDS):
            match, ciphertext = self._stored_ciphertext(sub, refresh_token)
            if not match:
                return False
            if write(ciphertext):
                return True
        return False

    def mark_revoked(self, sub: str, revoked_at: float, *, if_refresh_token: str | None) -> bool:
        """As :meth:`TokenStore.mark_revoked`, with ``if_refresh_token`` in plaintext."""
        return self._compare_and_set(sub, if_refresh_token, lambda ciphertext: self.inner.mark_revoked(
            sub, revoked_at, if_refresh_token=ciphertext))

    def delete_if(self, sub: str, *, if_refresh_token: str | None) -> bool:
        """As :meth:`TokenStore.delete_if`, with ``if_refresh_token`` in plaintext."""
        return self._compare_and_set(sub, if_refresh_token, lambda ciphertext: self.inner.delete_if(
            sub, if_refresh_token=ciphertext))

    def records(self) -> Iterator[TokenRecord]:
        for record in self.inner.records():
            yield self._open(record)

    def find_by_email(self, email: str) -> list[TokenRecord]:
        return [self._open(record) for record in self.inner.find_by_email(email)]

    def check(self) -> None:
        self.inner.check()

    def close(self) -> None:
        self.inner.close()

    def reencrypt_all(self) -> int:
        """Re-encrypt every stored token under the newest key, bound to its record; return how many were rewritten.

        This also upgrades the unbound Fernet tokens of earlier versions. Each
        record is written back with its own issue times, so the merge replaces
        the ciphertext without ever letting an older token win over a newer
        one saved meanwhile. Raise CryptoError for a token no key opens (or
        one bound to another record): nothing is served as another user.
        """
        count = 0
        for record in list(self.records()):
            if record.refresh_token or record.access_token:
                self.save(record)
                count += 1
        return count
