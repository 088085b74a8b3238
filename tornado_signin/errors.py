"""The exceptions tornado-signin raises.

Every error the package raises derives from :class:`SigninError`, so an
embedding application can catch the whole family with one clause. Foreign
exceptions (SQLAlchemy, botocore, OS, HTTP client) are translated at the
boundary where they occur and chained with ``raise ... from exc``; they never
reach a request handler.

The tree::

    SigninError
    ├── ConfigError                 bad configuration; names the key
    ├── StorageError                a token store failed (chained to cause)
    │   └── CryptoError             a stored token could not be decrypted (wrong key,
    │                               another record's ciphertext, altered)
    ├── OverloadedError             the bounded worker pool is full
    ├── HubUnavailableError         the confirmation hub cannot answer (session records)
    ├── ListenError                 a server cannot listen on its port (in use, not permitted)
    ├── WorkerError                 serve --processes: the workers cannot be kept serving
    ├── GoogleError                 an outbound call to Google failed
    │   ├── GoogleUnavailableError  timeout, connection error, 5xx: retryable
    │   ├── GoogleProtocolError     a reply that does not parse as OAuth
    │   └── GoogleOAuthError        an OAuth error reply (``error`` field)
    │       ├── InvalidGrantError   code spent/expired, refresh token revoked
    │       └── ClientConfigError   invalid_client, redirect_uri_mismatch …
    ├── TokenVerificationError      the ID token failed a verification rule
    ├── ConsentRequiredError        no usable refresh token: ask consent again
    │   ├── MissingScopeError       stored grant lacks a required scope (consent to it)
    │   └── GrantRevokedError       a refresh found the grant revoked (invalid_grant) and marked it
    ├── SigninBlockedError          a security event blocks sign-in for this user
    └── UnknownUserError            no stored record for that user
"""

from __future__ import annotations

__all__ = [
    "SigninError",
    "ConfigError",
    "StorageError",
    "CryptoError",
    "OverloadedError",
    "HubUnavailableError",
    "ListenError",
    "WorkerError",
    "GoogleError",
    "GoogleUnavailableError",
    "GoogleProtocolError",
    "GoogleOAuthError",
    "InvalidGrantError",
    "ClientConfigError",
    "TokenVerificationError",
    "ConsentRequiredError",
    "GrantRevokedError",
    "SigninBlockedError",
    "MissingScopeError",
    "UnknownUserError",
]


class SigninError(Exception):
    """Base class of every tornado-signin error."""


class ConfigError(SigninError, ValueError):
    """The configuration is invalid; ``key`` names the offending key."""

    def __init__(self, key: str, message: str) -> None:
        # "config" (and "", the top level) is the file itself, not a key in it.
        super().__init__(f"config key {key!r}: {message}" if key not in ("", "config") else f"config file: {message}")
        self.key = key


class StorageError(SigninError):
    """A token store operation failed; ``__cause__`` holds the backend's error."""


class CryptoError(StorageError):
    """A stored token could not be decrypted: no configured key opens it, or it was made for another
    record or field (copied there by someone with write access to the store), or it was altered.

    A StorageError, so every handler answers it as a store failure (a clean 503), never as a 500.
    """


class OverloadedError(SigninError):
    """The bounded worker pool is full; the caller should answer 503 at once."""


class HubUnavailableError(SigninError):
    """The confirmation hub could not answer a session-record call; ``__cause__`` holds why."""


class ListenError(SigninError):
    """A listener (``app`` or ``emulator``) cannot listen on ``host:port``; the message says why."""

    def __init__(self, listener: str, host: str, port: int, reason: str) -> None:
        super().__init__(f"{listener} port {port} on {host} {reason}")
        self.listener = listener
        self.host = host
        self.port = port


class WorkerError(SigninError):
    """``serve --processes``: a worker was killed before it served, or workers died too often; the supervisor gave up."""


class GoogleError(SigninError):
    """An outbound call to a Google endpoint failed."""


class GoogleUnavailableError(GoogleError):
    """Timeout, connection failure or 5xx: the call may succeed if retried."""


class GoogleProtocolError(GoogleError):
    """Google (or what stands in for it) answered something that is not OAuth."""


class GoogleOAuthError(GoogleError):
    """Google answered with an OAuth error; ``error`` holds its code.

    The ``error_description`` of the reply is deliberately not kept: it is
    the remote party's text and never reaches a client or a log line.
    """

    def __init__(self, error: str, status: int | None = None) -> None:
        super().__init__(f"OAuth error {error!r} (HTTP {status})")
        self.error = error
        self.status = status


class InvalidGrantError(GoogleOAuthError):
    """``invalid_grant``: the code is spent or expired, or the grant was revoked."""


class ClientConfigError(GoogleOAuthError):
    """The client itself is misconfigured (``invalid_client``, ``redirect_uri_mismatch``,
    ``unauthorized_client``): an operator problem, not the user's."""


class TokenVerificationError(SigninError):
    """The ID token broke a verification rule; the message names the rule, never the token."""


class ConsentRequiredError(SigninError):
    """The user has no usable refresh token and Google sent none: ask for consent."""


class GrantRevokedError(ConsentRequiredError):
    """A refresh was answered ``invalid_grant`` and the stored grant is now marked revoked: ask for consent."""


class SigninBlockedError(SigninError):
    """A security event (account-disabled for hijacking) blocks sign-in for this ``sub`` until account-enabled."""


class MissingScopeError(ConsentRequiredError):
    """The stored grant does not include every scope the caller requires (``missing``): ask consent to them."""

    def __init__(self, missing: "set[str] | frozenset[str]") -> None:
        super().__init__("missing scopes: " + " ".join(sorted(missing)))
        self.missing = frozenset(missing)


class UnknownUserError(SigninError, LookupError):
    """No record is stored for that user (sub or email)."""
