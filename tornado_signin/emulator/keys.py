"""Signing keys, their published forms, and JWT encoding (honest and broken).

A :class:`KeySet` holds the RSA keys the emulator signs ID tokens with, on
Google's schedule: the next key is published well before it signs, and the
one it replaces stays published for a while after the switch (see
:class:`KeySet`). A test-only abrupt rotation signs with a new key at once.

Published forms, as Google serves them:

* ``/oauth2/v1/certs``: ``{kid: PEM of a self-signed X.509 certificate}``;
* ``/oauth2/v3/certs``: a JWKS ``{"keys": [{kty, alg, use, kid, n, e}]}``.

:func:`encode_jwt` signs with any of the algorithms a fault may ask for
(see :data:`SIGNING_METHODS`), so tests can prove a verifier refuses them.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import hmac
import json
import logging
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

__all__ = ["SigningKey", "KeySet", "SIGNING_METHODS", "encode_jwt", "b64url", "b64url_decode", "at_hash"]

log = logging.getLogger(__name__)

#: ``id_token_signing`` fault methods: how a token is (mis)signed.
SIGNING_METHODS = (
    "bad_signature",
    "other_key_same_kid",
    "none",
    "hs256_public_key",
    "hs256_client_secret",
    "es256",
    "rs512",
    "raw",
)

#: The default schedule (seconds): a next key every week, signing a day after
#: it is published, its predecessor retired a day after the switch.
DEFAULT_PERIOD = 7 * 86400.0
DEFAULT_LEAD = 86400.0
DEFAULT_LINGER = 86400.0


def b64url(data: bytes) -> str:
    """Return ``data`` base64url-encoded without padding (JOSE style)."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def at_hash(access_token: str) -> str:
    """Return the OpenID ``at_hash`` of ``access_token`` for RS256."""
    return b64url(hashlib.sha256(access_token.encode("ascii")).digest()[:16])


def b64url_decode(segment: str) -> bytes:
    """Return the bytes of the unpadded base64url ``segment`` (a JWT's); raise ValueError for anything else."""
    if not segment or any(c not in _B64URL for c in segment):
        raise ValueError("not base64url")
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


_B64URL = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


def _int_b64(value: int) -> str:
    return b64url(value.to_bytes((value.bit_length() + 7) // 8, "big"))


@dataclass(frozen=True)
class SigningKey:
    """One RSA key with its key id and published certificate."""

    kid: str
    private_key: rsa.RSAPrivateKey
    certificate_pem: str

    @classmethod
    def generate(cls) -> "SigningKey":
        """Return a fresh 2048-bit RSA key with a self-signed certificate."""
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        public_der = key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        kid = hashlib.sha1(public_der).hexdigest()
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "accounts.google.com (tornado-signin emulator)")])
        now = datetime.datetime.now(datetime.timezone.utc)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=14))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(key, hashes.SHA256())
        )
        return cls(kid, key, cert.public_bytes(serialization.Encoding.PEM).decode("ascii"))

    @property
    def public_pem(self) -> bytes:
        """Return the SubjectPublicKeyInfo PEM of the public key."""
        return self.private_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def to_json(self) -> dict[str, str]:
        """Return the key as ``{kid, private_key (PKCS#8 PEM), certificate}`` for the state folder."""
        private_pem = self.private_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        return {"kid": self.kid, "private_key": private_pem.decode("ascii"), "certificate": self.certificate_pem}

    @classmethod
    def from_json(cls, document: dict[str, str]) -> "SigningKey":
        """Return the key :meth:`to_json` wrote; raise ValueError/TypeError/KeyError if malformed."""
        key = serialization.load_pem_private_key(document["private_key"].encode("ascii"), password=None)
        if not isinstance(key, rsa.RSAPrivateKey):
            raise ValueError("a signing key must be RSA")
        return cls(document["kid"], key, document["certificate"])

    def jwk(self) -> dict:
        """Return the public key as a JWK, as Google's v3 certs list it."""
        numbers = self.private_key.public_key().public_numbers()
        return {"kty": "RSA", "alg": "RS256", "use": "sig", "kid": self.kid, "n": _int_b64(numbers.n), "e": _int_b64(numbers.e)}


@dataclass
class _Slot:
    """One key on the schedule: published from ``published_at``, signs from ``signs_from``, gone at ``retires_at``."""

    key: SigningKey
    published_at: float
    signs_from: float
    retires_at: float = math.inf


class KeySet:
    """The emulator's signing keys, rotated on Google's schedule.

    Google publishes the next key well before signing with it, and keeps the
    previous key published for a while after the switch, so a client that
    caches the certs for their ``max-age`` and never refetches on an unknown
    ``kid`` (Node's google-auth-library) always holds the signing key. The
    schedule here: every ``period`` seconds a next key is published; it signs
    ``lead`` seconds later; the key it replaces is retired ``linger`` seconds
    after that. ``lead`` must be at least the certs' max-age. ``period=None``
    turns the automatic schedule off (:meth:`rotate` still works).

    :meth:`rotate` with ``abrupt=True`` is the test-only switch that keeps the
    old behaviour: the new key signs at once and only the previous one stays
    published (for testing a verifier's refetch on an unknown kid).
    """

    def __init__(
        self,
        keys: Iterable[SigningKey] | None = None,
        *,
        clock: Callable[[], float] = time.time,
        period: float | None = DEFAULT_PERIOD,
        lead: float = DEFAULT_LEAD,
        linger: float = DEFAULT_LINGER,
    ) -> None:
        if period is not None and period <= lead:
            raise ValueError("key schedule: the period must be longer than the lead (one pending key at a time)")
        self.clock = clock
        self.period, self.lead, self.linger = period, lead, linger
        given = list(keys or ()) or [SigningKey.generate()]
        # Given keys are newest first; the newest signs, the others are its predecessors.
        self._slots = [_Slot(key, -math.inf, -math.inf) for key in reversed(given)]
        self._changed_at = clock()
        self._next_at = self._changed_at + period if period else math.inf
        self._impostor: SigningKey | None = None
        #: Called after a rotation (the emulator writes its state folder there).
        self.on_change: Callable[[], None] | None = None

    # -- persistence -------------------------------------------------------

    def to_json(self) -> list[dict[str, Any]]:
        """Return the scheduled keys, newest first, with their times, for the state folder."""
        self._tick()

        def number(value: float) -> float | None:
            return value if math.isfinite(value) else None

        return [
            {**slot.key.to_json(), "published_at": number(slot.published_at), "signs_from": number(slot.signs_from),
             "retires_at": number(slot.retires_at)}
            for slot in reversed(self._slots)
        ]

    @classmethod
    def from_json(cls, documents: list[dict[str, Any]], **schedule: Any) -> "KeySet":
        """Return the KeySet :meth:`to_json` wrote (a fresh key if it holds none); ``schedule`` as for the constructor.

        Documents without times (an older state folder) are keys newest first,
        the newest signing.
        """
        keys = [SigningKey.from_json(d) for d in documents]
        keyset = cls(keys or None, **schedule)
        if keys and all("signs_from" in d for d in documents):

            def time_of(value: Any, missing: float) -> float:
                return missing if value is None else float(value)

            keyset._slots = [
                _Slot(key, time_of(d.get("published_at"), -math.inf), time_of(d.get("signs_from"), -math.inf),
                      time_of(d.get("retires_at"), math.inf))
                for key, d in zip(reversed(keys), reversed(documents), strict=True)
            ]
        return keyset

    # -- the schedule --------------------------------------------------------

    def _tick(self) -> None:
        """Carry out the scheduled publications that are due by now."""
        now = self.clock()
        if now < self._next_at:
            return
        assert self.period
        # A clock that jumped several periods gets one rotation at the last boundary, not one per period.
        missed = int((now - self._next_at) // self.period)
        at = self._next_at + missed * self.period
        self._schedule(at)
        self._next_at = at + self.period
        if self.on_change is not None:
            self.on_change()

    def _schedule(self, at: float) -> SigningKey:
        signing = self._signing_slot(at)
        slot = _Slot(SigningKey.generate(), at, at + self.lead)
        signing.retires_at = min(signing.retires_at, slot.signs_from + self.linger)
        self._slots = [s for s in self._slots if s.retires_at > at] + [slot]
        self._changed_at = at
        log.info("next signing key published (signs in %ss)", self.lead)
        return slot.key

    def _signing_slot(self, now: float) -> _Slot:
        # The latest to start signing; among equal starts (keys given without times) the newest.
        best: _Slot | None = None
        for slot in self._slots:  # oldest first
            if slot.signs_from <= now and (best is None or slot.signs_from >= best.signs_from):
                best = slot
        assert best is not None, "a key set always has a signing key"
        return best

    @property
    def current(self) -> SigningKey:
        """Return the key that signs new ID tokens now."""
        self._tick()
        return self._signing_slot(self.clock()).key

    @property
    def published(self) -> list[SigningKey]:
        """Return the published keys, newest first."""
        self._tick()
        now = self.clock()
        return [s.key for s in reversed(self._slots) if s.published_at <= now < s.retires_at]

    @property
    def changed_at(self) -> float:
        """Return when the published set last changed (POSIX seconds; the certs' ``Age`` counts from it)."""
        self._tick()
        now = self.clock()
        moments = [t for s in self._slots for t in (s.published_at, s.retires_at) if t <= now and math.isfinite(t)]
        return max([self._changed_at, *moments])

    def rotate(self, *, abrupt: bool = True) -> str:
        """Rotate now; return the new kid.

        ``abrupt`` (the default, the test-only switch): the new key signs at
        once and only the key that signed until now stays published beside
        it. ``abrupt=False``: Google's way, the new key is published now and
        signs ``lead`` seconds later.
        """
        now = self.clock()
        self._tick()
        if abrupt:
            previous = self._signing_slot(now)
            previous.retires_at = math.inf
            self._slots = [previous, _Slot(SigningKey.generate(), now, now)]
            self._changed_at = now
            key = self._slots[-1].key
            log.info("signing key rotated")
        else:
            key = self._schedule(now)
        if self.on_change is not None:
            self.on_change()
        return key.kid

    def pem_map(self) -> dict[str, str]:
        """Return ``{kid: certificate PEM}`` for the published keys."""
        return {key.kid: key.certificate_pem for key in self.published}

    def jwks(self) -> dict:
        """Return the JWKS document of the published keys."""
        return {"keys": [key.jwk() for key in self.published]}

    def impostor(self) -> SigningKey:
        """Return a key that is never published (for the ``other_key_same_kid`` fault)."""
        if self._impostor is None:
            self._impostor = SigningKey.generate()
        return self._impostor

    def verify(self, token: str) -> tuple[dict, dict] | None:
        """Return ``(header, claims)`` of an RS256 JWT signed by a published key, or None.

        Expiry is the caller's business (tokeninfo refuses expired tokens).
        """
        try:
            header_b64, claims_b64, signature_b64 = token.split(".")
            header = json.loads(b64url_decode(header_b64))
            claims = json.loads(b64url_decode(claims_b64))
            signature = b64url_decode(signature_b64)
        except (ValueError, RecursionError):  # RecursionError: a deeply nested JSON segment
            return None
        if not isinstance(header, dict) or not isinstance(claims, dict) or header.get("alg") != "RS256":
            return None
        key = next((k for k in self.published if k.kid == header.get("kid")), None)
        if key is None:
            return None
        try:
            key.private_key.public_key().verify(
                signature, f"{header_b64}.{claims_b64}".encode("ascii"), padding.PKCS1v15(), hashes.SHA256()
            )
        except (InvalidSignature, UnicodeEncodeError):
            return None
        return header, claims

    def sign(
        self,
        header: dict,
        claims: dict,
        *,
        unset: Iterable[str] = (),
        method: str | None = None,
        client_secret: str = "",
        raw: str = "",
    ) -> str:
        """Return a compact JWT of ``claims`` signed with the current key.

        ``header`` fields override the defaults (``alg``, ``kid``, ``typ``);
        the fields named in ``unset`` are left out.
        ``method`` is None for an honest RS256 token, or one of
        :data:`SIGNING_METHODS` for a deliberately bad one.
        """
        key = self.current
        base = {"alg": "RS256", "kid": key.kid, "typ": "JWT"}
        if method == "raw":
            return raw
        if method == "none":
            base["alg"] = "none"
        elif method in ("hs256_public_key", "hs256_client_secret"):
            base["alg"] = "HS256"
        elif method == "es256":
            base["alg"] = "ES256"
        elif method == "rs512":
            base["alg"] = "RS512"
        elif method == "other_key_same_kid":
            key = self.impostor()
        elif method not in (None, "bad_signature"):
            raise ValueError(f"unknown signing method {method!r}")
        merged = {name: value for name, value in {**base, **header}.items() if name not in set(unset)}
        return encode_jwt(merged, claims, key=key, method=method, client_secret=client_secret)


def encode_jwt(header: dict, claims: dict, *, key: SigningKey, method: str | None, client_secret: str = "") -> str:
    """Return ``header.claims.signature``; the signature follows ``method`` (see :meth:`KeySet.sign`)."""
    segments = [
        b64url(json.dumps(header, separators=(",", ":")).encode()),
        b64url(json.dumps(claims, separators=(",", ":")).encode()),
    ]
    signing_input = ".".join(segments).encode("ascii")
    if method == "none":
        signature = b""
    elif method == "hs256_public_key":
        signature = hmac.new(key.public_pem, signing_input, hashlib.sha256).digest()
    elif method == "hs256_client_secret":
        signature = hmac.new(client_secret.encode(), signing_input, hashlib.sha256).digest()
    elif method == "es256":
        ec_key = ec.generate_private_key(ec.SECP256R1())
        r, s = decode_dss_signature(ec_key.sign(signing_input, ec.ECDSA(hashes.SHA256())))
        signature = r.to_bytes(32, "big") + s.to_bytes(32, "big")
    elif method == "rs512":
        signature = key.private_key.sign(signing_input, padding.PKCS1v15(), hashes.SHA512())
    else:
        signature = key.private_key.sign(signing_input, padding.PKCS1v15(), hashes.SHA256())
        if method == "bad_signature":
            signature = bytes([signature[0] ^ 0x01]) + signature[1:]
    return ".".join([*segments, b64url(signature)])
