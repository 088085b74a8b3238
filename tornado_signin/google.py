"""Outbound calls to Google's OAuth endpoints, without blocking the IOLoop.

:class:`GoogleClient` talks to the token, revoke, userinfo and certs
endpoints of a :class:`~tornado_signin.config.GoogleEndpoints` through
:class:`~tornado_signin.http_client.KeepAliveClient` (keep-alive HTTP/1.1 on
asyncio; see that module for why it is not Tornado's curl client). Every call
has a deadline. Replies are checked for shape and mapped to the exception tree of
:mod:`tornado_signin.errors`; a remote body never reaches a log line or a
client, because an error reply may echo the code or a token.

A code exchange is never retried automatically: it may have reached Google,
which spends the code on first use.
"""

from __future__ import annotations

import json
import logging
import re
import socket
import ssl
import time
from dataclasses import dataclass
from collections.abc import Iterable
from typing import Any, Literal, overload
from urllib.parse import quote_plus, urlencode, urlsplit

from .config import GoogleConfig
from .http_client import KeepAliveClient, ProxyConfigError, Reply, ReplyTooLarge
from .errors import (
    ClientConfigError,
    GoogleOAuthError,
    GoogleProtocolError,
    GoogleUnavailableError,
    InvalidGrantError,
)

__all__ = ["GoogleClient", "TokenResponse", "SCOPE_ALIASES", "normalize_scopes", "expand_scope", "transport_reason"]

log = logging.getLogger(__name__)

#: Largest reply body accepted from a Google endpoint.
MAX_REPLY_BYTES = 1024 * 1024
_CLIENT_ERRORS = frozenset({"invalid_client", "unauthorized_client", "redirect_uri_mismatch", "invalid_scope",
                            "unsupported_grant_type", "access_denied"})

#: Google expands the short scope names in its replies.
SCOPE_ALIASES = {
    "email": "https://www.googleapis.com/auth/userinfo.email",
    "profile": "https://www.googleapis.com/auth/userinfo.profile",
}


#: Where Google's API scopes live; a bare name (``drive.readonly``) is short for one below it.
SCOPE_BASE = "https://www.googleapis.com/auth/"


def expand_scope(scope: str) -> str:
    """Return ``scope`` as Google reports it: ``email``/``profile`` as their URLs, a bare name under SCOPE_BASE."""
    if scope in SCOPE_ALIASES:
        return SCOPE_ALIASES[scope]
    if scope == "openid" or ":" in scope or "/" in scope:
        return scope
    return SCOPE_BASE + scope


#: A scope a caller asks for: a URL, or a bare name (``drive.readonly``, ``openid``); never whitespace or controls.
_SCOPE_URL = re.compile(r"https?://[!-~]{1,500}")
_SCOPE_NAME = re.compile(r"[A-Za-z0-9._\-/:]{1,200}")


def checked_scopes(scopes: Iterable[str]) -> frozenset[str]:
    """Return the scopes a caller requires, expanded as :func:`normalize_scopes` does.

    Raise ValueError naming the first malformed one: a scope is a URL
    (``https://…``, no whitespace or controls) or a bare name of letters,
    digits and ``._-/:``. A string is refused too (a list of names is
    meant: ``"drive"`` would be five one-letter scopes).
    """
    if isinstance(scopes, str):
        raise ValueError(f"scopes must be a list of scope names, not the string {scopes!r}")
    items = list(scopes)
    for scope in items:
        if not isinstance(scope, str) or not (_SCOPE_URL.fullmatch(scope) or _SCOPE_NAME.fullmatch(scope)):
            raise ValueError(f"malformed scope {scope!r}: a scope is a URL or a name of letters, digits and ._-/: "
                             "(no spaces)")
    return frozenset(expand_scope(s) for s in items)


def normalize_scopes(scopes: "str | list[str] | tuple[str, ...] | None") -> frozenset[str]:
    """Return a scope set with short names expanded to the URLs Google reports.

    ``email`` and ``profile`` become the ``userinfo.*`` URLs, as Google
    reports them; another bare name (``drive.readonly``) is short for
    ``https://www.googleapis.com/auth/drive.readonly``; ``openid`` and URLs stay.
    """
    if scopes is None:
        return frozenset()
    items = scopes.split() if isinstance(scopes, str) else list(scopes)
    return frozenset(expand_scope(s) for s in items if s)


def transport_reason(error: BaseException | None, url: str) -> str:
    """Return in a few words why no HTTP reply came from ``url`` (DNS, refused, TLS, timeout …).

    Understands the failures :class:`~tornado_signin.http_client.KeepAliveClient`
    raises (socket, DNS and ssl exceptions, its own messages); anything else
    is named by its message.
    """
    parts = urlsplit(url)
    host = parts.hostname or "?"
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        port = 0
    if error is None:
        return "no reply"
    if isinstance(error, ConnectionRefusedError):
        return f"connection refused by {host}:{port} (nothing listening there, or a firewall)"
    if isinstance(error, socket.gaierror):
        return f"DNS lookup failed for {host}"
    if isinstance(error, ssl.SSLCertVerificationError):
        if error.verify_code in (62, 64):  # X509_V_ERR_HOSTNAME_MISMATCH, X509_V_ERR_IP_ADDRESS_MISMATCH
            return f"TLS: the certificate of {host} is not valid for that name"
        return f"TLS: the certificate of {host} is not trusted (self-signed, or an unknown CA)"
    if isinstance(error, ssl.SSLError):
        return f"TLS handshake with {host}:{port} failed"
    if isinstance(error, TimeoutError):
        return "timed out"
    if isinstance(error, (ConnectionResetError, BrokenPipeError)) and not error.strerror and str(error):
        return str(error)  # the client's own words: "… closed the connection without a reply"
    if isinstance(error, (ConnectionResetError, BrokenPipeError)):
        return f"connection to {host}:{port} broken"
    if isinstance(error, OSError) and error.strerror:
        return error.strerror.lower()
    return str(error) or type(error).__name__


@dataclass(frozen=True)
class TokenResponse:
    """A successful reply of the token endpoint, checked for shape."""

    access_token: str
    expires_in: int
    token_type: str
    scopes: frozenset[str]
    refresh_token: str | None
    id_token: str | None
    received_at: float
    #: Time-limited access (Google's ``refresh_token_expires_in``): seconds the refresh token works.
    refresh_token_expires_in: int | None = None

    @property
    def expiry(self) -> float:
        """Return the POSIX time at which the access token expires."""
        return self.received_at + self.expires_in

    @property
    def refresh_token_expires_at(self) -> float | None:
        """Return the POSIX time after which the refresh token stops working, or None (no limit)."""
        if self.refresh_token_expires_in is None:
            return None
        return self.received_at + self.refresh_token_expires_in


def _parse_json_object(response: Reply) -> dict[str, Any]:
    body = response.body or b""
    if len(body) > MAX_REPLY_BYTES:
        raise GoogleProtocolError(f"reply of {len(body)} bytes exceeds {MAX_REPLY_BYTES}")
    try:
        document = json.loads(body)
    except ValueError as exc:
        raise GoogleProtocolError("reply is not JSON") from exc
    if not isinstance(document, dict):
        raise GoogleProtocolError(f"reply is JSON {type(document).__name__}, not an object")
    return document


_TOKEN_CHARS = re.compile(r"^[\x21-\x7e]{1,4096}$")


@overload
def _token_string(document: dict[str, Any], name: str, *, required: Literal[True]) -> str: ...
@overload
def _token_string(document: dict[str, Any], name: str, *, required: Literal[False]) -> str | None: ...
def _token_string(document: dict[str, Any], name: str, *, required: bool) -> str | None:
    value = document.get(name)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not _TOKEN_CHARS.match(value):
        raise GoogleProtocolError(f"reply field {name!r} is missing or malformed")
    return value


def parse_token_response(document: dict[str, Any], received_at: float) -> TokenResponse:
    """Return the TokenResponse of a 200 reply; raise GoogleProtocolError on a malformed one."""
    token_type = document.get("token_type")
    if not isinstance(token_type, str) or token_type.lower() != "bearer":
        raise GoogleProtocolError("reply field 'token_type' is not Bearer")
    expires_in = document.get("expires_in", 3600)
    if isinstance(expires_in, str) and re.fullmatch(r"-?[0-9]{1,12}", expires_in):
        expires_in = int(expires_in)
    if isinstance(expires_in, bool) or not isinstance(expires_in, int) or expires_in > 86400 * 366:
        raise GoogleProtocolError("reply field 'expires_in' is malformed")
    if expires_in < 1:
        # Google sends positive integers; a zero or negative one (a clock or rounding oddity upstream)
        # is a token that is valid but already expired: the next use refreshes it, the sign-in stands.
        log.warning("token reply's expires_in is %d: the access token is taken as already expired", expires_in)
        expires_in = 0
    scope = document.get("scope", "")
    if not isinstance(scope, str):
        raise GoogleProtocolError("reply field 'scope' is malformed")
    refresh_expires_in = document.get("refresh_token_expires_in")
    if isinstance(refresh_expires_in, str) and refresh_expires_in.isdigit():
        refresh_expires_in = int(refresh_expires_in)
    if refresh_expires_in is not None and (isinstance(refresh_expires_in, bool) or not isinstance(
            refresh_expires_in, int) or not 0 < refresh_expires_in <= 86400 * 366 * 10):
        raise GoogleProtocolError("reply field 'refresh_token_expires_in' is malformed")
    return TokenResponse(
        refresh_token_expires_in=refresh_expires_in,
        access_token=_token_string(document, "access_token", required=True),
        expires_in=expires_in,
        token_type="Bearer",
        scopes=normalize_scopes(scope),
        refresh_token=_token_string(document, "refresh_token", required=False),
        id_token=_token_string(document, "id_token", required=False),
        received_at=received_at,
    )


#: The headers of every call (the token endpoint's POSTs add the form's type), built once, not per call.
_JSON_HEADERS = {"Accept": "application/json"}
_FORM_HEADERS = {**_JSON_HEADERS, "Content-Type": "application/x-www-form-urlencoded"}


class GoogleClient:
    """Async client of the configured Google endpoints. One instance serves the whole process."""

    def __init__(self, google: GoogleConfig, http: KeepAliveClient | None = None) -> None:
        self.google = google
        self.endpoints = google.endpoints
        self.http = http or KeepAliveClient(max_connections=64, max_body=MAX_REPLY_BYTES)
        # The token requests' fixed fields, form-encoded once (urlencode, as per call before): each call
        # only quotes its own code or token. urlencode of the five fields of an exchange cost 10.4 us,
        # the prefix and one quote_plus 3.1 us (measured on this machine).
        client = urlencode({"client_id": google.client_id, "client_secret": google.client_secret})
        self._exchange_form = urlencode({"grant_type": "authorization_code", "redirect_uri": google.redirect_uri})
        self._exchange_form += f"&{client}&code="
        self._refresh_form = f"grant_type=refresh_token&{client}&refresh_token="

    async def _fetch(self, url: str, *, method: str = "GET", body: str | None = None,
                     headers: dict[str, str] | None = None) -> Reply:
        try:
            return await self.http.request(
                method, url, body=None if body is None else body.encode(),
                headers=headers or _JSON_HEADERS,
                connect_timeout=min(5.0, self.google.request_timeout),
                request_timeout=self.google.request_timeout,
            )
        except ReplyTooLarge as exc:
            raise GoogleProtocolError(f"{method} {url}: {exc}") from exc
        except OSError as exc:
            raise GoogleUnavailableError(f"{method} {url}: {transport_reason(exc, url)}") from exc
        except ProxyConfigError as exc:  # the deployment's proxy variable: Google is out of reach until it is fixed
            raise GoogleUnavailableError(f"{method} {url}: {exc}") from exc

    def _raise_for_error(self, response: Reply, what: str) -> None:
        if response.code >= 500 or response.code == 429:
            raise GoogleUnavailableError(f"{what}: HTTP {response.code}")
        if response.code >= 400:
            try:
                document = _parse_json_object(response)
            except GoogleProtocolError as exc:
                raise GoogleProtocolError(f"{what}: HTTP {response.code} without an OAuth error body") from exc
            error = document.get("error")
            if not isinstance(error, str) or not re.fullmatch(r"[a-z_]{1,64}", error):
                raise GoogleProtocolError(f"{what}: HTTP {response.code} without an OAuth error code")
            if error == "invalid_grant":
                raise InvalidGrantError(error, response.code)
            if error in _CLIENT_ERRORS:
                raise ClientConfigError(error, response.code)
            raise GoogleOAuthError(error, response.code)
        if response.code != 200:
            raise GoogleProtocolError(f"{what}: unexpected HTTP {response.code}")

    async def _token_request(self, body: str, what: str) -> TokenResponse:
        response = await self._fetch(
            self.endpoints.token_uri,
            method="POST",
            body=body,
            headers=_FORM_HEADERS,
        )
        self._raise_for_error(response, what)
        return parse_token_response(_parse_json_object(response), time.time())

    async def exchange_code(self, code: str) -> TokenResponse:
        """Exchange a one-time code at the token endpoint (seed step 7). Never retried.

        Raise InvalidGrantError (spent/expired code), ClientConfigError
        (operator problem), GoogleUnavailableError, GoogleProtocolError.
        """
        return await self._token_request(self._exchange_form + quote_plus(code), "code exchange")

    async def refresh(self, refresh_token: str, scopes: "frozenset[str] | None" = None) -> TokenResponse:
        """Get a new access token with ``refresh_token``; raise as :meth:`exchange_code`."""
        body = self._refresh_form + quote_plus(refresh_token)
        if scopes:
            body += "&" + urlencode({"scope": " ".join(sorted(scopes))})
        return await self._token_request(body, "token refresh")

    async def revoke(self, token: str) -> bool:
        """Revoke the grant behind ``token`` (access or refresh) at Google.

        Return True when Google revoked it, False when Google already
        considers it invalid (which counts as revoked). Raise
        GoogleUnavailableError for a retryable failure.
        """
        response = await self._fetch(
            self.endpoints.revoke_uri,
            method="POST",
            body=urlencode({"token": token}),
            headers=_FORM_HEADERS,
        )
        if response.code == 200:
            return True
        try:
            self._raise_for_error(response, "revoke")
        except GoogleOAuthError as exc:
            if exc.error in ("invalid_token", "invalid_grant"):
                return False
            raise
        return True

    async def userinfo(self, access_token: str) -> dict[str, Any]:
        """Return the userinfo document for ``access_token`` (an example Google API call)."""
        response = await self._fetch(self.endpoints.userinfo_uri, headers={
            **_JSON_HEADERS, "Authorization": f"Bearer {access_token}"})
        if response.code == 401:
            raise InvalidGrantError("invalid_token", 401)
        self._raise_for_error(response, "userinfo")
        return _parse_json_object(response)

    async def fetch_json(self, url: str) -> tuple[dict[str, Any], Reply]:
        """GET a JSON object (certs documents); return it with the response for its headers."""
        response = await self._fetch(url)
        self._raise_for_error(response, f"GET {url}")
        return _parse_json_object(response), response

    def close(self) -> None:
        """Close the HTTP client."""
        self.http.close()
