"""Cross-Account Protection (RISC): verify Google's security event tokens and act on them.

Google pushes a *security event token* (SET, RFC 8417: a JWT, content type
``application/secevent+jwt``) to the receiver when something happens to a
user's Google Account. :class:`SecurityEventVerifier` validates one as Google
documents ("Protect user accounts with Cross-Account Protection"):

* the RISC configuration document (``risc.configuration_url``, Google's
  ``/.well-known/risc-configuration`` by default) names the ``issuer`` and
  the ``jwks_uri``; it is cached per its ``Cache-Control``;
* RS256 only, signed by a key the ``jwks_uri`` publishes (cached like the
  ID-token certs by :class:`~tornado_signin.certs.CertCache`, fetched again
  once for an unknown ``kid``; no ``jku``/``x5u``/``jwk`` header is followed);
* ``iss`` equal to the document's issuer; ``aud`` one of the configured
  client ids (``google.client_id`` and ``risc.client_ids``); ``iat`` an
  integer, not in the future beyond the clock skew; a ``jti``; an ``events``
  object. A SET has no ``exp`` and none is required.

:class:`RiscReceiver` then de-duplicates the ``jti`` across every process
sharing the hub (:meth:`~tornado_signin.hub.ConfirmationHub.consume_once`)
and applies each event, idempotently (times are the SET's ``iat``, merged as
"the later of the two", so a redelivery or a late retry changes nothing):

=====================================  ==============================================================
``risc/…/sessions-revoked``            end every session of the user, live
``oauth/…/tokens-revoked``             mark the grant revoked (audit fields kept; no refresh after
                                       it) and end the user's sessions (Google requires it for a
                                       sign-in token)
``oauth/…/token-revoked``              the same, only for the record whose refresh token matches the
                                       identifier (``prefix``: its first 16 characters;
                                       ``hash_base64_sha512_sha512``: base64 of SHA-512 of SHA-512)
``risc/…/account-disabled``            ``reason: hijacking``: end sessions, mark revoked, block
                                       sign-in for that ``sub`` until account-enabled; other
                                       reasons: end sessions and record
``risc/…/account-enabled``             lift the block
``risc/…/account-credential-change-…`` record, and log for the operator
``risc/…/verification``                log its ``state``; mark it received in the hub (``risc verify``)
=====================================  ==============================================================

What happened and when goes on the user's record (``security_event``,
``security_event_at``, ``disabled_at``, ``enabled_at``, ``revoked_at``;
``tornado-signin users --json`` shows them) and into ``/metrics``
(``signin_risc_events_total{event,outcome}``,
``signin_risc_rejected_total{reason}``). Nothing is done for a token that
failed verification.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import logging
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding

from .certs import CertCache, _freshness
from .errors import GoogleError, HubUnavailableError, SigninError, StorageError
from .google import GoogleClient
from .hooks import Revoked, SigninHooks
from .hub import ConfirmationHub
from .live_sessions import SessionRegistry
from .metrics import Metrics
from .store import TokenRecord, TokenStore
from .verify import _b64decode, _json_object

__all__ = [
    "SecurityEventError",
    "SecurityEvent",
    "VerifiedSet",
    "SecurityEventVerifier",
    "RiscReceiver",
    "EVENT_TYPES",
    "REQUESTED_EVENTS",
    "token_identifier",
    "verification_channel",
    "SET_CONTENT_TYPE",
    "APPLY_ERRORS",
]

log = logging.getLogger(__name__)

SET_CONTENT_TYPE = "application/secevent+jwt"
_RISC = "https://schemas.openid.net/secevent/risc/event-type/"
_OAUTH = "https://schemas.openid.net/secevent/oauth/event-type/"
#: Short name -> event type URI, for every event this receiver acts on.
EVENT_TYPES = {
    "sessions-revoked": _RISC + "sessions-revoked",
    "tokens-revoked": _OAUTH + "tokens-revoked",
    "token-revoked": _OAUTH + "token-revoked",
    "account-disabled": _RISC + "account-disabled",
    "account-enabled": _RISC + "account-enabled",
    "account-credential-change-required": _RISC + "account-credential-change-required",
    "verification": _RISC + "verification",
}
_SHORT_NAMES = {uri: name for name, uri in EVENT_TYPES.items()}
#: What ``risc register`` asks Google to send.
REQUESTED_EVENTS = tuple(EVENT_TYPES.values())
MAX_SET_LENGTH = 16 * 1024
#: How long a jti is remembered (Google redelivers for a limited time).
JTI_TTL = 30 * 86400.0
#: Failures to apply a verified event: answered 503 so that Google delivers the SET again
#: (a retry within the hub's record_ttl is applied despite its jti having been seen).
APPLY_ERRORS = (StorageError, HubUnavailableError)
_SUB = re.compile(r"^[\x21-\x7e]{1,255}$")
_JTI = re.compile(r"^[\x21-\x7e]{1,256}$")


class SecurityEventError(SigninError):
    """A security event token failed validation; ``reason`` is a short fixed word for metrics."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class SecurityEvent:
    """One event of a verified SET."""

    name: str  # short name ("account-disabled"), or the URI of a type this receiver does not know
    subject: dict[str, Any]
    detail: dict[str, Any]

    @property
    def sub(self) -> str | None:
        """Return the Google ``sub`` the event is about (iss-sub, id_token_claims subjects), or None."""
        sub = self.subject.get("sub")
        return sub if isinstance(sub, str) and _SUB.match(sub) else None

    @property
    def reason(self) -> str | None:
        reason = self.detail.get("reason")
        return reason if isinstance(reason, str) and re.fullmatch(r"[a-z0-9_-]{1,64}", reason) else None


@dataclass(frozen=True)
class VerifiedSet:
    """A security event token that passed every check."""

    jti: str
    iat: int
    events: list[SecurityEvent] = field(default_factory=list)


def token_identifier(token: str, alg: str) -> str | None:
    """Return Google's identifier of refresh ``token`` under ``alg`` (``prefix`` or
    ``hash_base64_sha512_sha512``), or None for another algorithm."""
    if alg == "prefix":
        return token[:16]
    if alg == "hash_base64_sha512_sha512":
        inner = hashlib.sha512(token.encode("utf-8")).digest()
        return base64.b64encode(hashlib.sha512(inner).digest()).decode("ascii")
    return None


def verification_channel(state: str) -> str:
    """Return the hub channel a received verification event with ``state`` is recorded on."""
    return "risc-verification:" + hashlib.sha256(state.encode("utf-8")).hexdigest()[:32]


def _printable(value: Any, limit: int = 200) -> str:
    """Return ``value`` as at most ``limit`` characters, each non-printable one as ``?`` (for what Google sent)."""
    text = str(value)[:limit]
    return "".join(c if c.isprintable() else "?" for c in text)


class _Configuration:
    """Google's RISC configuration document, cached per Cache-Control; a failed fetch keeps the last one."""

    def __init__(self, client: GoogleClient, url: str, clock: Callable[[], float]) -> None:
        self.client, self.url, self.clock = client, url, clock
        self.issuer: str | None = None
        self.jwks_uri: str | None = None
        self._expires_at = 0.0
        self._lock = asyncio.Lock()

    async def get(self) -> tuple[str, str]:
        """Return (issuer, jwks_uri); raise SecurityEventError when no document was ever fetched."""
        if self.clock() >= self._expires_at:
            async with self._lock:
                if self.clock() >= self._expires_at:
                    await self._fetch()
        if self.issuer is None or self.jwks_uri is None:
            raise SecurityEventError("configuration", "the RISC configuration document is unavailable")
        return self.issuer, self.jwks_uri

    async def _fetch(self) -> None:
        try:
            document, response = await self.client.fetch_json(self.url)
        except GoogleError as exc:
            log.warning("fetching the RISC configuration from %s failed: %s", self.url, exc)
            self._expires_at = self.clock() + 5.0  # not on every SET while Google is away
            return
        issuer, jwks_uri = document.get("issuer"), document.get("jwks_uri")
        if not isinstance(issuer, str) or not issuer or not isinstance(jwks_uri, str) or \
                not jwks_uri.startswith(("https://", "http://")):
            log.warning("the RISC configuration at %s names no issuer or jwks_uri", self.url)
            self._expires_at = self.clock() + 5.0
            return
        self.issuer, self.jwks_uri = issuer, jwks_uri
        self._expires_at = self.clock() + _freshness(response.headers)


class SecurityEventVerifier:
    """Verify security event tokens for a set of client ids."""

    def __init__(self, client: GoogleClient, configuration_url: str, audiences: Iterable[str], *,
                 clock_skew: float = 60.0, clock: Callable[[], float] = time.time,
                 on_fetch: Callable[[str], None] | None = None) -> None:
        self.client = client
        self.audiences = frozenset(audiences)
        self.skew = clock_skew
        self.clock = clock
        self.on_fetch = on_fetch
        self.configuration = _Configuration(client, configuration_url, clock)
        self._certs: CertCache | None = None

    def _certs_for(self, jwks_uri: str) -> CertCache:
        if self._certs is None or self._certs.url != jwks_uri:
            self._certs = CertCache(self.client, jwks_uri, clock=self.clock, on_fetch=self.on_fetch)
        return self._certs

    async def verify(self, token: Any) -> VerifiedSet:
        """Return the verified SET of ``token``; raise SecurityEventError naming the failed rule."""
        if not isinstance(token, str) or not token or len(token) > MAX_SET_LENGTH:
            raise SecurityEventError("malformed", "SET missing or too long")
        segments = token.strip().split(".")
        if len(segments) != 3:
            raise SecurityEventError("malformed", "SET is not a signed JWT")
        try:
            header = _json_object(segments[0], "header")
            claims = _json_object(segments[1], "payload")
            signature = _b64decode(segments[2], "signature")
        except SigninError as exc:
            raise SecurityEventError("malformed", f"SET {exc}") from exc
        if header.get("alg") != "RS256":
            raise SecurityEventError("algorithm", "SET alg is not RS256")
        if "crit" in header:
            raise SecurityEventError("malformed", "SET has critical header extensions")
        kid = header.get("kid")
        if not isinstance(kid, str) or not 0 < len(kid) <= 128:
            raise SecurityEventError("kid", "SET has no kid")
        issuer, jwks_uri = await self.configuration.get()
        key = await self._certs_for(jwks_uri).get_key(kid)
        if key is None:
            raise SecurityEventError("kid", "SET kid is not published at the jwks_uri")
        try:
            key.verify(signature, f"{segments[0]}.{segments[1]}".encode("ascii"), padding.PKCS1v15(),
                       hashes.SHA256())
        except InvalidSignature as exc:
            raise SecurityEventError("signature", "SET signature does not verify") from exc
        return self._check_claims(claims, issuer)

    def _check_claims(self, claims: dict[str, Any], issuer: str) -> VerifiedSet:
        if claims.get("iss") != issuer:
            raise SecurityEventError("issuer", "SET iss is not the RISC issuer")
        aud = claims.get("aud")
        audiences = aud if isinstance(aud, list) else [aud]
        if not any(isinstance(a, str) and a in self.audiences for a in audiences):
            raise SecurityEventError("audience", "SET aud is not a configured client id")
        iat = claims.get("iat")
        if isinstance(iat, bool) or not isinstance(iat, int):
            raise SecurityEventError("iat", "SET iat is missing or not an integer")
        if iat > self.clock() + self.skew:
            raise SecurityEventError("iat", "SET iat is in the future")
        jti = claims.get("jti")
        if not isinstance(jti, str) or not _JTI.match(jti):
            raise SecurityEventError("jti", "SET jti is missing or malformed")
        events = claims.get("events")
        if not isinstance(events, dict) or not events:
            raise SecurityEventError("events", "SET has no events")
        parsed = []
        for uri, body in events.items():
            if not isinstance(uri, str) or not isinstance(body, dict):
                raise SecurityEventError("events", "SET event is not an object")
            subject = body.get("subject")
            parsed.append(SecurityEvent(name=_SHORT_NAMES.get(uri, uri),
                                        subject=subject if isinstance(subject, dict) else {},
                                        detail=body))
        return VerifiedSet(jti=jti, iat=iat, events=parsed)


class RiscReceiver:
    """De-duplicate verified SETs and apply their events to the store, the sessions and the hub.

    Built by :func:`tornado_signin.wiring.build_context` when ``risc.enabled``
    is true (``ctx.risc``, None otherwise) and served at ``POST <prefix>/risc``
    (:class:`~tornado_signin.web.risc.RiscHandler`).

    Example (the receiver's whole use, as the handler makes it)::

        try:
            await ctx.risc.receive(request.body.decode("ascii"))   # verify, de-duplicate, apply
        except SecurityEventError:
            ...                                    # answer 400, no detail: never acted on
        except APPLY_ERRORS:
            ...                                    # answer 503: Google delivers it again
    """

    def __init__(self, verifier: SecurityEventVerifier, store: TokenStore, sessions: SessionRegistry,
                 hub: ConfirmationHub, metrics: Metrics, *, run: Callable[..., Any],
                 save: Callable[[TokenRecord], Any] | None = None, hooks: SigninHooks | None = None) -> None:
        """``run(fn, *args)`` runs a blocking store call off the IOLoop (WorkerPool.run); ``save(record)``
        merges a record with retries (SigninService.save_with_retry), by default one ``run(store.save)``;
        ``hooks``: the host app's (``on_revoked`` once an event revoked a grant or ended sessions)."""
        self.hooks = hooks or SigninHooks()
        self.verifier = verifier
        self.store = store
        self.sessions = sessions
        self.hub = hub
        self.metrics = metrics
        self.run = run
        self.save = save or (lambda record: run(store.save, record))
        metrics.counter("signin_risc_events_total", "Security events (Cross-Account Protection) by event and outcome.")
        metrics.counter("signin_risc_rejected_total", "Security event tokens refused, by reason.")

    async def receive(self, token: Any) -> VerifiedSet:
        """Verify ``token``, then apply its events unless its ``jti`` was seen before; return the SET.

        Raise SecurityEventError (nothing was done), or StorageError / HubUnavailableError when an
        event could not be applied (the caller answers 5xx so that Google delivers it again).
        """
        try:
            verified = await self.verifier.verify(token)
        except SecurityEventError as exc:
            self.metrics.inc("signin_risc_rejected_total", reason=exc.reason)
            raise
        failed_channel = f"risc-failed:{verified.jti}"
        if not await self.hub.consume_once(f"risc-jti:{verified.jti}", JTI_TTL):
            # Seen before: applied already, unless that attempt failed (then Google's retry applies it).
            failed = await self.hub.last(failed_channel)
            if not (failed and failed.get("failed")):
                for event in verified.events:
                    self.metrics.inc("signin_risc_events_total", event=self._label(event), outcome="duplicate")
                log.info("security event token received again (duplicate jti): ignored")
                return verified
        try:
            for event in verified.events:
                outcome = await self.apply(event, float(verified.iat))
                self.metrics.inc("signin_risc_events_total", event=self._label(event), outcome=outcome)
        except APPLY_ERRORS:
            await self._mark(failed_channel, True)
            raise
        else:
            await self._mark(failed_channel, False)
        return verified

    async def _mark(self, channel: str, failed: bool) -> None:
        try:
            if failed or await self.hub.last(channel):
                await self.hub.publish(channel, {"failed": failed}, record=True)
        except Exception as exc:  # best effort: the answer's status tells Google already
            log.warning("could not record a security event's outcome in the hub: %s", type(exc).__name__)

    @staticmethod
    def _label(event: SecurityEvent) -> str:
        return event.name if event.name in EVENT_TYPES else "unknown"

    async def _record(self, sub: str, at: float, what: str, *, revoke: bool = False,
                      disabled_at: float | None = None, enabled_at: float | None = None) -> None:
        # iat has whole seconds: a grant revoked "at" that second covers every token issued in it
        # (a refresh token issued after revoked_at would count as a new grant).
        # Capped at now: a token issued after this event reached us is a new grant.
        revoked_at = min(at + 1.0, time.time()) if revoke else None
        await self.save(TokenRecord(sub=sub, security_event=what, security_event_at=at, revoked_at=revoked_at,
                                    disabled_at=disabled_at, enabled_at=enabled_at))

    async def _end_sessions(self, sub: str, reason: str) -> int:
        return len(await self.sessions.end_all(sub, reason=reason))

    async def _revoked(self, sub: str, name: str, *, grant_revoked: bool, sessions_ended: int) -> None:
        await self.hooks.revoked(Revoked(sub=sub, reason=f"risc:{name}", grant_revoked=grant_revoked,
                                         sessions_ended=sessions_ended))

    async def apply(self, event: SecurityEvent, at: float) -> str:
        """Apply one verified event (``at``: the SET's iat); return the outcome label for metrics."""
        name = event.name
        if name == "verification":
            state = event.detail.get("state")
            state = state if isinstance(state, str) else ""
            log.info("security event: verification received (state %r)", _printable(state))
            try:
                await self.hub.publish(verification_channel(state), {"verified_at": time.time()}, record=True)
            except Exception as exc:  # the log line is the documented record; the hub one is for `risc verify`
                log.warning("could not record the verification in the hub: %s", type(exc).__name__)
            return "logged"
        if name == "token-revoked":
            return await self._token_revoked(event, at)
        sub = event.sub
        if name not in EVENT_TYPES:
            log.info("security event of a type this receiver does not handle: %s", _printable(name, 120))
            return "ignored"
        if sub is None:
            log.warning("security event %s names no sub: ignored", name)
            return "no_subject"
        if name == "sessions-revoked":
            ended = await self._end_sessions(sub, "risc_sessions_revoked")
            await self._record(sub, at, name)
            log.warning("security event sessions-revoked: ended %d session(s) of the user", ended)
            await self._revoked(sub, name, grant_revoked=False, sessions_ended=ended)
        elif name == "tokens-revoked":
            await self._record(sub, at, name, revoke=True)
            ended = await self._end_sessions(sub, "risc_tokens_revoked")
            log.warning("security event tokens-revoked: grant marked revoked, ended %d session(s)", ended)
            await self._revoked(sub, name, grant_revoked=True, sessions_ended=ended)
        elif name == "account-disabled":
            reason = event.reason
            what = f"{name}:{reason}" if reason else name
            if reason == "hijacking":
                await self._record(sub, at, what, revoke=True, disabled_at=at)
            else:
                await self._record(sub, at, what)
            ended = await self._end_sessions(sub, "risc_account_disabled")
            log.warning("security event account-disabled (reason %s): ended %d session(s)%s", reason or "none",
                        ended, "; grant revoked, sign-in blocked until account-enabled" if reason == "hijacking" else "")
            await self._revoked(sub, name, grant_revoked=reason == "hijacking", sessions_ended=ended)
        elif name == "account-enabled":
            await self._record(sub, at, name, enabled_at=at)
            log.warning("security event account-enabled: sign-in allowed again")
        elif name == "account-credential-change-required":
            await self._record(sub, at, name)
            log.warning("OPERATOR: security event account-credential-change-required for a user: "
                        "look out for suspicious activity on this account")
        return "applied"

    def _matching_blocking(self, alg: str, identifier: str) -> list[TokenRecord]:
        matches = []
        for record in self.store.records():
            if not record.refresh_token:
                continue
            ours = token_identifier(record.refresh_token, alg)
            if ours is not None and hmac.compare_digest(ours.rstrip("="), identifier.rstrip("=")):
                matches.append(record)
        return matches

    async def _token_revoked(self, event: SecurityEvent, at: float) -> str:
        subject = event.subject
        alg, identifier = subject.get("token_identifier_alg"), subject.get("token")
        if subject.get("token_type", "refresh_token") != "refresh_token" or not isinstance(alg, str) or \
                not isinstance(identifier, str) or not identifier or len(identifier) > 512:
            log.warning("security event token-revoked without a refresh-token identifier: ignored")
            return "no_subject"
        if token_identifier("", alg) is None:
            log.warning("security event token-revoked with an unknown identifier algorithm: ignored")
            return "no_subject"
        # Records are few and the event rare: a scan (decrypting each refresh token) costs less than
        # keeping an index of identifiers beside every stored token.
        matches = await self.run(self._matching_blocking, alg, identifier)
        if event.sub is not None:
            matches = [r for r in matches if r.sub == event.sub]
        if not matches:
            log.info("security event token-revoked: no stored refresh token matches; nothing to do")
            return "no_match"
        for record in matches:
            await self._record(record.sub, at, "token-revoked", revoke=True)
            ended = await self._end_sessions(record.sub, "risc_token_revoked")
            await self._revoked(record.sub, "token-revoked", grant_revoked=True, sessions_ended=ended)
        log.warning("security event token-revoked: the matching grant is marked revoked")
        return "applied"


