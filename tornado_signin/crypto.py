"""Encryption at rest for stored tokens, done in the core before any backend sees them.

Tokens are encrypted with Fernet (AES-128-CBC + HMAC-SHA256, authenticated)
under a list of keys, newest first: the newest encrypts, every key decrypts,
so keys can rotate without downtime (``tornado-signin rotate-keys``).
:class:`EncryptingStore` wraps any :class:`~tornado_signin.store.TokenStore`
so that every backend, a third party's included, gets this for free.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from .errors import ConfigError, CryptoError
from .store import TokenRecord, TokenStore

__all__ = ["TokenCipher", "EncryptingStore", "generate_key"]


def generate_key() -> str:
    """Return a new Fernet key as text, the format ``encryption.keys`` expects."""
    return Fernet.generate_key().decode("ascii")


class TokenCipher:
    """Authenticated encryption of token strings under rotating keys."""

    def __init__(self, keys: Sequence[str], *, config_key: str = "encryption.keys") -> None:
        """Build from Fernet keys, newest first.

        Raise ConfigError naming ``config_key`` when the list is empty or a key
        is not a valid Fernet key (the key itself is never echoed).
        """
        if not keys:
            raise ConfigError(config_key, "at least one key is required (generate one with `tornado-signin genkey`)")
        fernets = []
        for index, key in enumerate(keys):
            try:
                fernets.append(Fernet(key.encode("ascii") if isinstance(key, str) else key))
            except (ValueError, TypeError, UnicodeEncodeError) as exc:
                raise ConfigError(f"{config_key}[{index}]", "not a valid Fernet key (32 url-safe base64 bytes)") from exc
        self._newest = fernets[0]
        self._all = MultiFernet(fernets)

    def encrypt(self, plaintext: str) -> str:
        """Return ``plaintext`` encrypted under the newest key."""
        return self._newest.encrypt(plaintext.encode("utf-8")).decode("ascii")

    def decrypt(self, ciphertext: str) -> str:
        """Return the plaintext; raise CryptoError if no configured key opens it."""
        try:
            return self._all.decrypt(ciphertext.encode("ascii")).decode("utf-8")
        except (InvalidToken, UnicodeError, ValueError) as exc:
            raise CryptoError("a stored token cannot be decrypted with the configured encryption.keys") from exc


class EncryptingStore(TokenStore):
    """A TokenStore that encrypts token fields on the way in and decrypts them on the way out.

    It has the inner store's contract; records above it hold plaintext,
    records below it ciphertext.
    """

    def __init__(self, inner: TokenStore, cipher: TokenCipher) -> None:
        self.inner = inner
        self.cipher = cipher

    def _seal(self, record: TokenRecord) -> TokenRecord:
        return record.replace(
            refresh_token=self.cipher.encrypt(record.refresh_token) if record.refresh_token else None,
            access_token=self.cipher.encrypt(record.access_token) if record.access_token else None,
        )

    def _open(self, record: TokenRecord | None, known: dict[str, str] | None = None) -> TokenRecord | None:
        # ``known`` maps ciphertexts this process just made to their plaintext:
        # what a save wrote back need not be decrypted again.
        if record is None:
            return None
        known = known or {}
        return record.replace(
            refresh_token=(known.get(record.refresh_token) or self.cipher.decrypt(record.refresh_token))
            if record.refresh_token else None,
            access_token=(known.get(record.access_token) or self.cipher.decrypt(record.access_token))
            if record.access_token else None,
        )

    def get(self, sub: str) -> TokenRecord | None:
        return self._open(self.inner.get(sub))

    def save(self, record: TokenRecord) -> TokenRecord:
        sealed = self._seal(record)
        known = {sealed.refresh_token: record.refresh_token, sealed.access_token: record.access_token}
        return self._open(self.inner.save(sealed), {k: v for k, v in known.items() if k and v})

    def delete(self, sub: str) -> bool:
        return self.inner.delete(sub)

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
        """Re-encrypt every stored token under the newest key; return how many records were rewritten.

        Each record is written back with its own issue times, so the merge
        replaces the ciphertext without ever letting an older token win over
        a newer one saved meanwhile.
        """
        count = 0
        for record in list(self.records()):
            if record.refresh_token or record.access_token:
                self.save(record)
                count += 1
        return count
