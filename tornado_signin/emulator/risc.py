"""Cross-Account Protection (RISC) as Google runs it, for the emulator.

Google's side of "Protect user accounts with Cross-Account Protection":

* ``GET /.well-known/risc-configuration``: the issuer
  (``https://accounts.google.com/``) and the ``jwks_uri`` of the security
  event tokens (the emulator's ``/oauth2/v3/certs``: SETs are signed with the
  same keys as ID tokens, as at Google), plus the management endpoints;
* ``GET /service_account.json`` (development only: it holds a private key):
  a service-account key of the emulator's project, in Google's format;
* the RISC management API, called with a bearer JWT signed by that key
  (``iss`` = ``sub`` = its ``client_email``, ``aud`` =
  :data:`MANAGEMENT_AUDIENCE`, at most an hour long):
  ``POST /v1beta/stream:update`` (delivery push + ``url``,
  ``events_requested``), ``GET /v1beta/stream``, ``GET /v1beta/stream/status``,
  ``POST /v1beta/stream/status:update`` (``enabled`` / ``disabled``),
  ``POST /v1beta/stream:verify`` (``state``: a verification event is pushed);
* pushes: each SET is POSTed to the registered receiver with
  ``Content-Type: application/secevent+jwt``; a non-2xx answer or a failed
  connection is retried (0.2, 0.5, 1, 2, 4 s apart), as Google redelivers;
  a SET is sent per OAuth client of the project the user granted, with that
  client id as ``aud``, only for requested event types, only while the
  stream is enabled;
* test-only ``POST /emulator/risc/event`` (form ``type``, ``email`` or
  ``sub``, optional ``reason``; for ``token-revoked`` optional ``token`` and
  ``token_identifier_alg``): applies the event to the emulator's own state as
  Google would (``tokens-revoked`` ends the grant, ``token-revoked`` ends one
  refresh token) and pushes its SET; ``GET /emulator/risc/deliveries`` lists
  what was pushed and how the receiver answered;
* ``GET /permissions`` (development only): the account-permissions page,
  where an account removes a client's access, which ends the grant and sends
  ``tokens-revoked``, as on myaccount.google.com/permissions.

With a state folder (``--state-dir``) the stream, its status, the service
account's key and who granted which client survive a restart. Not emulated:
the stream's ``subject:add`` / ``subject:remove`` endpoints.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import html
import json
import logging
import secrets
from typing import Any, Protocol

import tornado.web
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding
from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest

from .handlers import EmulatorHandler, TestOnlyHandler, _error_body
from .keys import KeySet, SigningKey, b64url_decode
from .state import State

__all__ = ["RiscEmulator", "RiscApiError", "RISC_HANDLERS", "RISC_ISSUER", "MANAGEMENT_AUDIENCE", "EVENT_URIS"]

log = logging.getLogger(__name__)

RISC_ISSUER = "https://accounts.google.com/"
MANAGEMENT_AUDIENCE = "https://risc.googleapis.com/google.identity.risc.v1beta.RiscManagementService"
PUSH_DELIVERY = "https://schemas.openid.net/secevent/risc/delivery-method/push"
_RISC = "https://schemas.openid.net/secevent/risc/event-type/"
_OAUTH = "https://schemas.openid.net/secevent/oauth/event-type/"
EVENT_URIS = {
    "sessions-revoked": _RISC + "sessions-revoked",
    "tokens-revoked": _OAUTH + "tokens-revoked",
    "token-revoked": _OAUTH + "token-revoked",
    "account-disabled": _RISC + "account-disabled",
    "account-enabled": _RISC + "account-enabled",
    "account-credential-change-required": _RISC + "account-credential-change-required",
    "verification": _RISC + "verification",
}
RETRY_DELAYS = (0.2, 0.5, 1.0, 2.0, 4.0)
SERVICE_ACCOUNT_EMAIL = "tornado-signin-risc@tornado-signin-emulator.iam.gserviceaccount.com"


class RiscApiError(Exception):
    """A management API refusal: ``status`` and Google's message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _identifier(token: str, alg: str) -> str:
    if alg == "prefix":
        return token[:16]
    inner = hashlib.sha512(token.encode("utf-8")).digest()
    return base64.b64encode(hashlib.sha512(inner).digest()).decode("ascii")


class RiscHost(Protocol):
    """What the RISC service uses of its :class:`~tornado_signin.emulator.Emulator`.

    Read at each use, not copied: the emulator replaces its key set when it
    restores a state folder.
    """

    state: State
    keys: KeySet
    development: bool

    def persist(self) -> None:
        """Write the state folder (a no-op without one)."""


class RiscEmulator:
    """The emulator's Cross-Account Protection service (one stream for the emulated project)."""

    def __init__(self, emulator: RiscHost) -> None:
        self.emulator = emulator
        self._service_key: SigningKey | None = None
        self.stream: dict[str, Any] | None = None
        self.status = "enabled"
        #: Every SET pushed: {"jti", "event", "aud", "url", "statuses": [answers], "delivered": bool}.
        self.deliveries: list[dict[str, Any]] = []
        self.retry_delays = RETRY_DELAYS
        # Clients a user ever granted, so that events after the grant ended still reach the app.
        self._audiences: dict[str, set[str]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()

    @property
    def service_key(self) -> SigningKey:
        """The service account's key pair (made on first use: most emulators never need one)."""
        if self._service_key is None:
            self._service_key = SigningKey.generate()
            self.emulator.persist()
        return self._service_key

    def to_json(self) -> dict[str, Any]:
        """Return what survives a restart (the state folder)."""
        return {"stream": self.stream, "status": self.status,
                "service_key": self._service_key.to_json() if self._service_key is not None else None,
                "audiences": {sub: sorted(clients) for sub, clients in self._audiences.items()}}

    def restore(self, document: dict[str, Any] | None) -> None:
        """Load what :meth:`to_json` wrote; raise ValueError/TypeError/KeyError when it is malformed."""
        if not document:
            return
        stream = document.get("stream")
        if stream is not None and not isinstance(stream, dict):
            raise ValueError("risc.stream is not an object")
        self.stream = stream
        self.status = "disabled" if document.get("status") == "disabled" else "enabled"
        key = document.get("service_key")
        self._service_key = SigningKey.from_json(key) if key else None
        self._audiences = {str(sub): set(clients) for sub, clients in (document.get("audiences") or {}).items()}

    # -- documents -------------------------------------------------------

    def configuration(self, base: str) -> dict[str, Any]:
        """Return the RISC configuration document (Google's, with the emulator's endpoints)."""
        return {
            "issuer": RISC_ISSUER,
            "jwks_uri": f"{base}/oauth2/v3/certs",
            "delivery_methods_supported": [PUSH_DELIVERY],
            "configuration_endpoint": f"{base}/v1beta/stream",
            "status_endpoint": f"{base}/v1beta/stream/status",
            "verification_endpoint": f"{base}/v1beta/stream:verify",
            "add_subject_endpoint": f"{base}/v1beta/subject:add",
            "remove_subject_endpoint": f"{base}/v1beta/subject:remove",
        }

    def service_account(self, base: str) -> dict[str, Any]:
        """Return the development service-account key, in Google's JSON key format."""
        private_pem = self.service_key.private_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        return {
            "type": "service_account",
            "project_id": "tornado-signin-emulator",
            "private_key_id": self.service_key.kid,
            "private_key": private_pem.decode("ascii"),
            "client_email": SERVICE_ACCOUNT_EMAIL,
            "client_id": "100000000000000000001",
            "auth_uri": f"{base}/o/oauth2/auth",
            "token_uri": f"{base}/token",
            "auth_provider_x509_cert_url": f"{base}/oauth2/v1/certs",
            "client_x509_cert_url": f"{base}/robot/v1/metadata/x509/{SERVICE_ACCOUNT_EMAIL}",
            "universe_domain": "googleapis.com",
        }

    # -- the management API --------------------------------------------------

    def authorize(self, authorization: str | None) -> None:
        """Raise RiscApiError 401 unless ``authorization`` is a bearer JWT of the service account."""
        if not authorization or not authorization.startswith("Bearer "):
            raise RiscApiError(401, "Unauthorized.")
        token = authorization[len("Bearer "):].strip()
        try:
            header_b64, claims_b64, signature_b64 = token.split(".")
            header = json.loads(b64url_decode(header_b64))
            claims = json.loads(b64url_decode(claims_b64))
            self.service_key.private_key.public_key().verify(
                b64url_decode(signature_b64), f"{header_b64}.{claims_b64}".encode("ascii"), padding.PKCS1v15(),
                hashes.SHA256())
        except (ValueError, UnicodeError, InvalidSignature, RecursionError):  # RecursionError: deeply nested JSON
            raise RiscApiError(401, "Unauthorized.") from None
        now = self.emulator.state.clock()
        iat, exp = claims.get("iat"), claims.get("exp")
        if (not isinstance(header, dict) or header.get("alg") != "RS256" or not isinstance(claims, dict)
                or claims.get("iss") != SERVICE_ACCOUNT_EMAIL or claims.get("sub") != SERVICE_ACCOUNT_EMAIL
                or claims.get("aud") != MANAGEMENT_AUDIENCE or not isinstance(iat, int) or not isinstance(exp, int)
                or iat > now + 60 or exp <= now or exp - iat > 3600):
            raise RiscApiError(401, "Unauthorized.")

    def update_stream(self, body: Any) -> dict[str, Any]:
        """Store a stream configuration (``stream:update``); return it. Raise RiscApiError like Google."""
        if not isinstance(body, dict):
            raise RiscApiError(400, "Stream configuration must contain delivery field.")
        delivery = body.get("delivery")
        if not isinstance(delivery, dict):
            raise RiscApiError(400, "Stream configuration must contain delivery field.")
        if delivery.get("delivery_method") != PUSH_DELIVERY:
            raise RiscApiError(400, "Stream configuration must contain delivery.delivery_method field.")
        url = delivery.get("url")
        if not isinstance(url, str) or not url:
            raise RiscApiError(400, "Stream configuration must contain delivery.url field.")
        loopback_http = url.startswith(("http://127.0.0.1", "http://localhost", "http://[::1]"))
        if not url.startswith("https://") and not (self.emulator.development and loopback_http):
            raise RiscApiError(403, "The delivery endpoint must be an HTTPS URL.")
        requested = body.get("events_requested")
        if not isinstance(requested, list) or not requested or not all(isinstance(e, str) for e in requested):
            raise RiscApiError(400, "Stream configuration must contain events_requested field.")
        self.stream = {
            "iss": RISC_ISSUER,
            "aud": sorted(self.emulator.state.clients),
            "delivery": {"delivery_method": PUSH_DELIVERY, "url": url},
            "events_supported": sorted(EVENT_URIS.values()),
            "events_requested": list(requested),
            "events_delivered": [e for e in requested if e in EVENT_URIS.values()],
        }
        log.info("risc: stream configured (%d event types)", len(self.stream["events_delivered"]))
        self.emulator.persist()
        return self.stream

    def register_receiver(self, url: str) -> dict[str, Any]:
        """Point the stream at ``url`` for every event type (what ``risc register`` asks; for the demo)."""
        return self.update_stream({"delivery": {"delivery_method": PUSH_DELIVERY, "url": url},
                                   "events_requested": list(EVENT_URIS.values())})

    def get_stream(self) -> dict[str, Any]:
        if self.stream is None:
            raise RiscApiError(404, "Project has no RISC configuration.")
        return self.stream

    def set_status(self, body: Any) -> dict[str, str]:
        if self.stream is None:
            raise RiscApiError(404, "Project has no existing RISC configuration, cannot update status.")
        status = body.get("status") if isinstance(body, dict) else None
        if status not in ("enabled", "disabled"):
            raise RiscApiError(403, "Invalid status.")
        self.status = status
        self.emulator.persist()
        return {"status": status}

    # -- security event tokens -------------------------------------------------

    def make_set(self, event: str, body: dict[str, Any], aud: str, *, iat: int | None = None,
                 jti: str | None = None) -> tuple[str, str]:
        """Return ``(jti, SET)`` of one event for client ``aud``, signed with the current signing key."""
        jti = jti or secrets.token_hex(16)
        claims = {"iss": RISC_ISSUER, "aud": aud, "iat": int(self.emulator.state.clock()) if iat is None else iat,
                  "jti": jti, "events": {EVENT_URIS[event]: body}}
        return jti, self.emulator.keys.sign({"typ": "secevent+jwt"}, claims)

    async def _post(self, url: str, token: str) -> int:
        request = HTTPRequest(url, method="POST", body=token, request_timeout=5, follow_redirects=False,
                              headers={"Content-Type": "application/secevent+jwt", "Accept": "application/json"})
        try:
            response = await AsyncHTTPClient().fetch(request, raise_error=False)
        except (OSError, HTTPClientError) as exc:
            log.info("risc: push failed (%s)", type(exc).__name__)
            return 0
        return response.code

    async def deliver(self, event: str, body: dict[str, Any], auds: list[str]) -> list[dict[str, Any]]:
        """Push the event's SET to the receiver once per client in ``auds``; return the deliveries.

        The first attempt is awaited; a failed one is retried in the background.
        """
        if self.stream is None or self.status != "enabled" or EVENT_URIS[event] not in self.stream["events_requested"]:
            log.info("risc: %s not sent (no stream, stream disabled or event not requested)", event)
            return []
        url = self.stream["delivery"]["url"]
        made = []
        for aud in auds:
            jti, token = self.make_set(event, body, aud)
            record: dict[str, Any] = {"jti": jti, "event": event, "aud": aud, "url": url, "statuses": [],
                                      "delivered": False}
            self.deliveries.append(record)
            made.append(record)
            if not await self._attempt(record, token):
                task = asyncio.get_running_loop().create_task(self._retry(record, token))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
        return made

    async def _attempt(self, record: dict[str, Any], token: str) -> bool:
        status = await self._post(record["url"], token)
        record["statuses"].append(status)
        record["delivered"] = 200 <= status < 300
        log.info("risc: pushed %s (answer %d)", record["event"], status)
        return record["delivered"]

    async def _retry(self, record: dict[str, Any], token: str) -> None:
        for delay in self.retry_delays:
            await asyncio.sleep(delay)
            if await self._attempt(record, token):
                return
        log.warning("risc: %s never accepted by the receiver; giving up", record["event"])

    def _audience(self, sub: str) -> list[str]:
        known = self._audiences.setdefault(sub, set())
        granted = set(self.emulator.state.clients_granted(sub))
        if not granted <= known:
            known.update(granted)
            self.emulator.persist()
        return sorted(known)

    async def trigger(self, event: str, email_or_sub: str, *, reason: str | None = None, token: str | None = None,
                      alg: str = "hash_base64_sha512_sha512") -> dict[str, Any]:
        """Apply ``event`` to the emulator's state as Google would and push its SET; return a summary.

        Raise KeyError for an unknown account, ValueError for an unknown event type.
        """
        if event not in EVENT_URIS or event == "verification":
            raise ValueError(f"unknown event type {event!r}")
        state = self.emulator.state
        account = state.account(email_or_sub)
        auds = self._audience(account.sub)
        subject = {"subject_type": "iss-sub", "iss": RISC_ISSUER, "sub": account.sub}
        body: dict[str, Any] = {"subject": subject}
        if event == "tokens-revoked":
            for client_id in auds:
                state.revoke_grant(client_id, account.sub)
        elif event == "token-revoked":
            if token is None:
                tokens = [t for client_id in auds for t in state.refresh_tokens_of(client_id, account.sub)]
                if not tokens:
                    raise ValueError("that account holds no refresh token to revoke")
                token = tokens[-1]
            state.revoke_refresh_token(token)
            if alg not in ("prefix", "hash_base64_sha512_sha512"):
                raise ValueError("token_identifier_alg must be prefix or hash_base64_sha512_sha512")
            body = {"subject": {"subject_type": "oauth_token", "token_type": "refresh_token",
                                "token_identifier_alg": alg, "token": _identifier(token, alg)}}
        elif event == "account-disabled" and reason:
            body["reason"] = reason
        deliveries = await self.deliver(event, body, auds)
        return {"event": event, "deliveries": [{k: d[k] for k in ("jti", "aud", "statuses", "delivered")}
                                               for d in deliveries]}

    async def verify(self, state_text: str) -> list[dict[str, Any]]:
        """Push a verification event with ``state`` to every client of the project (``stream:verify``)."""
        if self.stream is None:
            raise RiscApiError(404, "Project has no RISC configuration.")
        return await self.deliver("verification", {"state": state_text}, sorted(self.emulator.state.clients))

    async def remove_access(self, client_id: str, email_or_sub: str) -> dict[str, Any]:
        """The account-permissions page's "Remove access": end the grant and send tokens-revoked."""
        account = self.emulator.state.account(email_or_sub)
        auds = [a for a in self._audience(account.sub) if a == client_id]
        self.emulator.state.revoke_grant(client_id, account.sub)
        body = {"subject": {"subject_type": "iss-sub", "iss": RISC_ISSUER, "sub": account.sub}}
        deliveries = await self.deliver("tokens-revoked", body, auds or [client_id])
        return {"event": "tokens-revoked", "deliveries": len(deliveries)}


# -- handlers --------------------------------------------------------------------



class ConfigurationHandler(EmulatorHandler):
    """``GET /.well-known/risc-configuration``."""

    async def get(self) -> None:
        await self.reply(self.emulator.risc.configuration(self.base_url()),
                         headers={"Cache-Control": "public, max-age=3600"})

class ServiceAccountHandler(TestOnlyHandler):
    """``GET /service_account.json``: the development service-account key (development only)."""

    async def get(self) -> None:
        self.set_header("Content-Disposition", 'attachment; filename="service_account.json"')
        await self.reply(self.emulator.risc.service_account(self.base_url()))

class ManagementHandler(EmulatorHandler):
    """The RISC management API: ``stream:update``, ``stream``, ``stream/status[:update]``, ``stream:verify``.

    Which call a route is comes from its endpoint name (``risc.stream_update`` …).
    """

    async def _answer(self, method: str) -> None:
        risc = self.emulator.risc
        try:
            risc.authorize(self.request.headers.get("Authorization"))
            body: Any = {}
            if method == "POST":
                try:
                    body = json.loads(self.request.body or b"{}")
                except ValueError:
                    raise RiscApiError(400, "Invalid JSON payload received.") from None
            if self.endpoint == "risc.stream_update" and method == "POST":
                result: Any = risc.update_stream(body)
            elif self.endpoint == "risc.stream" and method == "GET":
                result = risc.get_stream()
            elif self.endpoint == "risc.status" and method == "GET":
                risc.get_stream()
                result = {"status": risc.status}
            elif self.endpoint == "risc.status_update" and method == "POST":
                result = risc.set_status(body)
            elif self.endpoint == "risc.verify" and method == "POST":
                state_text = body.get("state", "") if isinstance(body, dict) else ""
                await risc.verify(str(state_text))
                result = {}
            else:
                raise RiscApiError(405, "Method Not Allowed")
        except RiscApiError as exc:
            await self.reply({"error": {"code": exc.status, "message": str(exc)}}, exc.status)
            return
        await self.reply(result)

    async def get(self) -> None:
        await self._answer("GET")

    async def post(self) -> None:
        await self._answer("POST")

class EventHandler(TestOnlyHandler):
    """``POST /emulator/risc/event``: apply a security event and push its SET (test-only)."""

    async def post(self) -> None:
        who = self.get_argument("email", "") or self.get_argument("sub", "")
        try:
            summary = await self.emulator.risc.trigger(
                self.get_argument("type", ""), who, reason=self.get_argument("reason", None) or None,
                token=self.get_argument("token", None), alg=self.get_argument("token_identifier_alg",
                                                                              "hash_base64_sha512_sha512"))
        except KeyError:
            await self.reply(_error_body("invalid_request", "Unknown test account."), 400)
            return
        except ValueError as exc:
            await self.reply(_error_body("invalid_request", str(exc)), 400)
            return
        await self.reply(summary)

class DeliveriesHandler(TestOnlyHandler):
    """``GET /emulator/risc/deliveries``: every SET pushed and the receiver's answers (test-only)."""

    async def get(self) -> None:
        await self.reply({"deliveries": self.emulator.risc.deliveries})

class PermissionsHandler(TestOnlyHandler):
    """``GET /permissions?authuser=EMAIL``: the apps with access to an account; POST removes one."""

    def _page(self, email: str, message: str = "") -> None:
        state = self.emulator.state
        rows = []
        try:
            account = state.account(email) if email else None
        except KeyError:
            account = None
        accounts = "".join(
            f'<li><a href="?authuser={html.escape(a.email)}">{html.escape(a.email)}</a></li>'
            for a in state.accounts)
        if account is not None:
            for client_id in state.clients_granted(account.sub):
                rows.append(
                    f'<li><span class="app">{html.escape(client_id)}</span> '
                    f'<form method="post" style="display:inline">'
                    f'<input type="hidden" name="authuser" value="{html.escape(account.email)}">'
                    f'<input type="hidden" name="client_id" value="{html.escape(client_id)}">'
                    f'<button type="submit" class="remove">Remove access</button></form></li>')
        body = (f"<!doctype html><meta charset=utf-8><title>Third-party apps with account access</title>"
                f"<h1>Third-party apps with account access</h1><p id=message>{html.escape(message)}</p>"
                f"<h2>Accounts</h2><ul>{accounts}</ul>"
                + (f"<h2>{html.escape(account.email)}</h2><ul id=apps>{''.join(rows) or '<li>No apps</li>'}</ul>"
                   if account is not None else ""))
        self.set_header("Content-Type", "text/html; charset=utf-8")
        self.set_header("Content-Security-Policy", "default-src 'none'; form-action 'self'")
        self.finish(body)

    async def get(self) -> None:
        self._page(self.get_query_argument("authuser", ""))

    async def post(self) -> None:
        email, client_id = self.get_argument("authuser", ""), self.get_argument("client_id", "")
        try:
            await self.emulator.risc.remove_access(client_id, email)
        except KeyError:
            raise tornado.web.HTTPError(400, reason="unknown account") from None
        self._page(email, f"Access removed for {client_id}.")


#: (path, handler, extra initialize() arguments) of the RISC routes.
RISC_HANDLERS: list[tuple[str, type[EmulatorHandler], dict[str, Any]]] = [
    (r"/\.well-known/risc-configuration", ConfigurationHandler, {"endpoint": "risc.configuration"}),
    (r"/service_account\.json", ServiceAccountHandler, {}),
    (r"/v1beta/stream:update", ManagementHandler, {"endpoint": "risc.stream_update"}),
    (r"/v1beta/stream", ManagementHandler, {"endpoint": "risc.stream"}),
    (r"/v1beta/stream/status", ManagementHandler, {"endpoint": "risc.status"}),
    (r"/v1beta/stream/status:update", ManagementHandler, {"endpoint": "risc.status_update"}),
    (r"/v1beta/stream:verify", ManagementHandler, {"endpoint": "risc.verify"}),
    (r"/emulator/risc/event", EventHandler, {}),
    (r"/emulator/risc/deliveries", DeliveriesHandler, {}),
    (r"/permissions", PermissionsHandler, {}),
]
