"""Google's signing keys, fetched without blocking and cached per Cache-Control.

Google publishes its ID-token keys twice: a map of ``kid`` to PEM X.509
certificates (``/oauth2/v1/certs``) and a JWKS (``/oauth2/v3/certs``).
:class:`CertCache` reads either, keeps the keys for the ``max-age`` the reply
allows, fetches them again once when a token names an unknown ``kid`` (keys
rotate), and coalesces concurrent fetches into one. The max-age counts from
the reply's ``Age`` (how long Google's cache already held it). A failed fetch keeps the
previous keys: verification must not stop because one certs request failed.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import re
import time
from collections.abc import Callable
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey, RSAPublicNumbers
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from .errors import GoogleError
from .google import GoogleClient

__all__ = ["CertCache", "parse_certs"]

log = logging.getLogger(__name__)

DEFAULT_MAX_AGE = 300.0
MAX_MAX_AGE = 86400.0
#: An unknown kid triggers at most one refetch in this many seconds, so a
#: stream of forged kids cannot turn every login into a certs request. A login
#: whose kid is unknown within the window waits for its end (at most this
#: long) and shares the one refetch made then: a key Google published seconds
#: after an earlier refetch still signs its users in.
REFETCH_INTERVAL = 5.0


def _b64url_int(value: Any) -> int:
    if not isinstance(value, str) or not re.fullmatch(r"[A-Za-z0-9_-]+", value):
        raise ValueError("not base64url")
    return int.from_bytes(base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)), "big")


def parse_certs(document: dict[str, Any]) -> dict[str, RSAPublicKey]:
    """Return ``{kid: RSA public key}`` from a PEM map or a JWKS; skip entries that are not RSA keys."""
    keys: dict[str, RSAPublicKey] = {}
    if isinstance(document.get("keys"), list):
        for jwk in document["keys"]:
            if not isinstance(jwk, dict) or jwk.get("kty") != "RSA" or jwk.get("alg", "RS256") != "RS256":
                continue
            if jwk.get("use", "sig") != "sig" or not isinstance(jwk.get("kid"), str):
                continue
            try:
                keys[jwk["kid"]] = RSAPublicNumbers(_b64url_int(jwk["e"]), _b64url_int(jwk["n"])).public_key()
            except (KeyError, ValueError):
                log.warning("skipping a malformed JWKS key")
        return keys
    for kid, pem in document.items():
        if not isinstance(pem, str):
            continue
        try:
            data = pem.encode("ascii")
            key = (x509.load_pem_x509_certificate(data).public_key() if b"CERTIFICATE" in data
                   else load_pem_public_key(data))
        except ValueError:
            log.warning("skipping a malformed PEM certificate")
            continue
        if isinstance(key, RSAPublicKey):
            keys[kid] = key
    return keys


def _max_age(cache_control: str | None) -> float:
    if not cache_control:
        return DEFAULT_MAX_AGE
    directives = [d.strip().lower() for d in cache_control.split(",")]
    if "no-store" in directives or "no-cache" in directives:
        return 0.0
    for directive in directives:
        match = re.fullmatch(r"(?:s-)?max-age\s*=\s*\"?(\d+)\"?", directive)
        if match:
            return min(float(match.group(1)), MAX_MAX_AGE)
    return DEFAULT_MAX_AGE


def _freshness(headers: Any) -> float:
    """Return how long a certs reply stays fresh: its max-age less its ``Age`` (RFC 9111 4.2.3).

    Google's certs come through a shared cache that says in ``Age`` how long
    it has held them; ignoring it would keep keys past Google's own expiry.
    """
    max_age = _max_age(headers.get("Cache-Control"))
    age = (headers.get("Age") or "").strip()
    if not re.fullmatch(r"[0-9]{1,10}", age):  # delta-seconds; anything else is ignored
        return max_age
    return max(max_age - int(age), 0.0)


class CertCache:
    """Cached signing keys of one certs URL."""

    def __init__(self, client: GoogleClient, url: str, *, clock: Callable[[], float] = time.time,
                 on_fetch: Callable[[str], None] | None = None,
                 refetch_interval: float = REFETCH_INTERVAL) -> None:
        self.client = client
        self.url = url
        self.clock = clock
        self.on_fetch = on_fetch
        self.refetch_interval = refetch_interval
        self._keys: dict[str, RSAPublicKey] = {}
        self._expires_at = 0.0
        self._last_fetch = float("-inf")
        self._inflight: asyncio.Future[None] | None = None

    async def _refresh(self) -> None:
        # Single flight: every caller waiting for keys shares one request.
        if self._inflight is not None:
            await asyncio.shield(self._inflight)
            return
        self._inflight = asyncio.get_running_loop().create_future()
        try:
            self._last_fetch = self.clock()
            try:
                document, response = await self.client.fetch_json(self.url)
                keys = parse_certs(document)
            except GoogleError as exc:
                log.warning("fetching signing keys from %s failed: %s", self.url, exc)
                if self.on_fetch:
                    self.on_fetch("error")
                return
            if not keys:
                log.warning("certs document at %s holds no usable RSA key", self.url)
                return
            self._keys = keys
            self._expires_at = self._last_fetch + _freshness(response.headers)
            if self.on_fetch:
                self.on_fetch("fetched")
        finally:
            self._inflight.set_result(None)
            self._inflight = None

    async def get_key(self, kid: str) -> RSAPublicKey | None:
        """Return the key named ``kid``, or None if the certs URL does not publish it.

        Fetch when the cache is stale. When ``kid`` is unknown, make sure one
        fetch starts after this moment, but at most one per
        ``refetch_interval``: wait (at most that long) for the window to end,
        or for a fetch another caller started meanwhile, and share it.
        """
        now = self.clock()
        if now >= self._expires_at:
            await self._refresh()
        elif self.on_fetch:
            self.on_fetch("hit")
        key = self._keys.get(kid)
        if key is None:
            key = await self._refetch_for(kid, now)
        return key

    async def _refetch_for(self, kid: str, seen: float) -> RSAPublicKey | None:
        """Return ``kid``'s key after a fetch that started at or after ``seen`` (None if still unknown)."""
        while True:
            if self._inflight is not None:
                await asyncio.shield(self._inflight)
            elif self._last_fetch >= seen:
                return self._keys.get(kid)
            else:
                wait = self._last_fetch + self.refetch_interval - self.clock()
                if wait <= 0:
                    await self._refresh()
                    return self._keys.get(kid)
                if wait > self.refetch_interval:  # the clock went backwards: do not wait on it
                    return None
                await asyncio.sleep(wait)
