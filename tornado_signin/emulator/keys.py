"""Signing keys, their published forms, and JWT encoding (honest and broken).

A :class:`KeySet` holds the RSA keys the emulator signs ID tokens with. The
newest key signs; the previous one stays published after a rotation, so a
token signed just before :meth:`KeySet.rotate` still verifies, as with
Google. Keys older than that are retired.

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
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

__all__ = ["SigningKey", "KeySet", "SIGNING_METHODS", "encode_jwt", "b64url", "at_hash"]

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

#: How many keys stay published: the signing key and the one before it.
PUBLISHED_KEYS = 2


def b64url(data: bytes) -> str:
    """Return ``data`` base64url-encoded without padding (JOSE style)."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def at_hash(access_token: str) -> str:
    """Return the OpenID ``at_hash`` of ``access_token`` for RS256."""
    return b64url(hashlib.sha256(access_token.encode("ascii")).digest()[:16])


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


class KeySet:
    """The emulator's signing keys: the newest signs, the newest two are published."""

    def __init__(self, keys: Iterable[SigningKey] | None = None) -> None:
        self._keys: list[SigningKey] = list(keys or ()) or [SigningKey.generate()]
        self._impostor: SigningKey | None = None
        #: Called after a rotation (the emulator writes its state folder there).
        self.on_change: Callable[[], None] | None = None

    def to_json(self) -> list[dict[str, str]]:
        """Return the published keys, newest first, for the state folder."""
        return [key.to_json() for key in self._keys]

    @classmethod
    def from_json(cls, documents: list[dict[str, str]]) -> "KeySet":
        """Return the KeySet :meth:`to_json` wrote (a fresh key if it holds none)."""
        return cls(SigningKey.from_json(document) for document in documents)

    @property
    def current(self) -> SigningKey:
        """Return the key that signs new ID tokens."""
        return self._keys[0]

    @property
    def published(self) -> list[SigningKey]:
        """Return the published keys, newest first."""
        return list(self._keys)

    def rotate(self) -> str:
        """Start signing with a new key; keep the previous one published. Return the new kid."""
        self._keys = [SigningKey.generate(), *self._keys][:PUBLISHED_KEYS]
        log.info("signing key rotated")
        if self.on_change is not None:
            self.on_change()
        return self.current.kid

    def pem_map(self) -> dict[str, str]:
        """Return ``{kid: certificate PEM}`` for the published keys."""
        return {key.kid: key.certificate_pem for key in self._keys}

    def jwks(self) -> dict:
        """Return the JWKS document of the published keys."""
        return {"keys": [key.jwk() for key in self._keys]}

    def impostor(self) -> SigningKey:
        """Return a key that is never published (for the ``other_key_same_kid`` fault)."""
        if self._impostor is None:
            self._impostor = SigningKey.generate()
        return self._impostor

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
