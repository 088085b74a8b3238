"""ID token verification by every rule of DESIGN §3, and nothing looser.

Accepted only: RS256 signed by a key the configured certs URL publishes (no
``jku``, ``x5u`` or ``jwk`` header is ever followed); ``iss`` exactly
``https://accounts.google.com`` or ``accounts.google.com``; ``aud`` equal to
the client id; ``azp``, if present, equal to the client id; integer
``exp``/``iat`` within the configured clock skew, and ``iat`` no older than an
ID token lives; a ``sub`` that is a short printable string; ``at_hash``
matching the access token when both are present; and, if configured, an ``hd``
among the allowed domains. ``email_verified`` counts only when it is the JSON
boolean ``true``. The string claims kept (``email``, ``name``, ``picture``,
``hd``) must hold no control character (see :func:`has_control_characters`):
a token carrying one is refused like any other bad token.

Each failure raises :class:`~tornado_signin.errors.TokenVerificationError`
whose message names the rule, never the token.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
import time
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding

from .certs import CertCache
from .config import GOOGLE_ISSUERS, GoogleConfig
from .errors import TokenVerificationError

__all__ = ["IdTokenVerifier", "IdClaims", "has_control_characters"]

MAX_TOKEN_LENGTH = 8192
#: Google's ID tokens live one hour.
MAX_TOKEN_AGE = 3600
_SEGMENT = re.compile(r"^[A-Za-z0-9_-]+$")
_SUB = re.compile(r"^[\x21-\x7e]{1,255}$")


@dataclass(frozen=True)
class IdClaims:
    """The verified identity of one ID token."""

    sub: str
    email: str | None
    email_verified: bool
    name: str | None
    picture: str | None
    hd: str | None


def _b64decode(segment: str, what: str) -> bytes:
    if not _SEGMENT.match(segment):
        raise TokenVerificationError(f"{what} is not base64url")
    try:
        return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    except (binascii.Error, ValueError) as exc:
        raise TokenVerificationError(f"{what} is not base64url") from exc


def _json_object(segment: str, what: str) -> dict[str, Any]:
    try:
        value = json.loads(_b64decode(segment, what))
    except (ValueError, UnicodeDecodeError) as exc:
        raise TokenVerificationError(f"{what} is not JSON") from exc
    if not isinstance(value, dict):
        raise TokenVerificationError(f"{what} is not a JSON object")
    return value


def _int_claim(claims: dict[str, Any], name: str) -> int:
    value = claims.get(name)
    if isinstance(value, bool) or not isinstance(value, int):
        raise TokenVerificationError(f"claim {name} is missing or not an integer")
    return value


#: Format controls that ordinary text needs: the zero-width non-joiner and
#: joiner (Persian and Indic names, emoji sequences).
_JOINERS = frozenset("\u200c\u200d")
#: Unicode categories refused in a stored claim: controls (C0, DEL, C1),
#: format controls (bidi overrides and isolates, zero-width spaces, BOM),
#: lone surrogates, and line and paragraph separators.
_REFUSED_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})


def has_control_characters(value: str) -> bool:
    """Return True when ``value`` holds a character that could act on a terminal, a log or a text's direction.

    That is a C0 or C1 control, DEL, a line or paragraph separator, a lone
    surrogate, or a Unicode format control other than the zero-width
    (non-)joiner.
    """
    if value.isprintable():  # the common case, in C: none of those categories
        return False
    return any(c not in _JOINERS and unicodedata.category(c) in _REFUSED_CATEGORIES for c in value)


def _optional_str(claims: dict[str, Any], name: str) -> str | None:
    """Return the string claim ``name`` (None when absent, not a string or over 1024 characters).

    Raise TokenVerificationError naming the claim when it holds a control
    character: the server stores and shows these values, and an operator's
    terminal or log must not interpret them.
    """
    value = claims.get(name)
    if not isinstance(value, str) or len(value) > 1024:
        return None
    if has_control_characters(value):
        raise TokenVerificationError(f"claim {name} contains a control character")
    return value


class IdTokenVerifier:
    """Verify Google ID tokens for one client."""

    def __init__(self, google: GoogleConfig, certs: CertCache, *, clock: Callable[[], float] = time.time) -> None:
        self.client_id = google.client_id
        self.skew = google.clock_skew_seconds
        self.hosted_domains = frozenset(google.hosted_domains)
        self.certs = certs
        self.clock = clock

    async def verify(self, token: Any, *, access_token: str | None = None) -> IdClaims:
        """Return the claims of ``token`` if it passes every rule; raise TokenVerificationError."""
        if not isinstance(token, str) or not token or len(token) > MAX_TOKEN_LENGTH:
            raise TokenVerificationError("ID token missing or too long")
        segments = token.split(".")
        if len(segments) != 3:
            raise TokenVerificationError(f"ID token has {len(segments)} segments, not 3")
        header = _json_object(segments[0], "header")
        claims = _json_object(segments[1], "payload")
        signature = _b64decode(segments[2], "signature")
        if header.get("alg") != "RS256":
            raise TokenVerificationError("alg is not RS256")
        if "crit" in header:
            raise TokenVerificationError("critical header extensions are not supported")
        kid = header.get("kid")
        if not isinstance(kid, str) or not 0 < len(kid) <= 128:
            raise TokenVerificationError("kid missing")
        key = await self.certs.get_key(kid)
        if key is None:
            raise TokenVerificationError("kid not published by the certs endpoint")
        try:
            key.verify(signature, f"{segments[0]}.{segments[1]}".encode("ascii"), padding.PKCS1v15(), hashes.SHA256())
        except InvalidSignature as exc:
            raise TokenVerificationError("bad signature") from exc
        return self._check_claims(claims, access_token)

    def _check_claims(self, claims: dict[str, Any], access_token: str | None) -> IdClaims:
        if claims.get("iss") not in GOOGLE_ISSUERS or not isinstance(claims.get("iss"), str):
            raise TokenVerificationError("iss is not Google")
        aud = claims.get("aud")
        if isinstance(aud, list) and len(aud) == 1:
            aud = aud[0]
        if not isinstance(aud, str) or aud != self.client_id:
            raise TokenVerificationError("aud is not this client")
        if "azp" in claims and claims["azp"] != self.client_id:
            raise TokenVerificationError("azp is not this client")
        now = self.clock()
        exp = _int_claim(claims, "exp")
        iat = _int_claim(claims, "iat")
        if now > exp + self.skew:
            raise TokenVerificationError("token expired")
        if iat > now + self.skew:
            raise TokenVerificationError("iat is in the future")
        if now - iat > MAX_TOKEN_AGE + self.skew:
            raise TokenVerificationError("token is too old")
        sub = claims.get("sub")
        if not isinstance(sub, str) or not _SUB.match(sub):
            raise TokenVerificationError("sub missing or malformed")
        if access_token is not None and "at_hash" in claims:
            digest = hashlib.sha256(access_token.encode("ascii", "replace")).digest()
            expected = base64.urlsafe_b64encode(digest[:16]).rstrip(b"=").decode("ascii")
            if claims["at_hash"] != expected:
                raise TokenVerificationError("at_hash does not match the access token")
        hd = _optional_str(claims, "hd")
        if self.hosted_domains and (hd is None or hd.lower() not in self.hosted_domains):
            raise TokenVerificationError("hd is not an allowed hosted domain")
        return IdClaims(
            sub=sub,
            email=_optional_str(claims, "email"),
            email_verified=claims.get("email_verified") is True,
            name=_optional_str(claims, "name"),
            picture=_optional_str(claims, "picture"),
            hd=hd,
        )
