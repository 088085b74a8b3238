"""Registering the receiver with Google's RISC management API (``tornado-signin risc …``).

Calls go to ``risc.management_url`` (Google's ``https://risc.googleapis.com/v1beta``
by default) with a bearer JWT that the service-account key of
``risc.service_account_file`` signs (google-auth's self-signed
:class:`google.auth.jwt.Credentials`: ``iss`` = ``sub`` = the account's
``client_email``, ``aud`` = :data:`MANAGEMENT_AUDIENCE`, one hour), as
Google's guide describes. Blocking (requests): for the CLI only.

* :meth:`RiscAdmin.register`: ``POST stream:update`` with the push delivery to
  ``url`` and every event type the receiver handles;
* :meth:`RiscAdmin.status`: ``GET stream/status`` and ``GET stream``;
* :meth:`RiscAdmin.request_verification`: ``POST stream:verify`` with a
  ``state``; the receiver records the verification event it then gets in the
  hub (:func:`tornado_signin.risc.verification_channel`), which
  :func:`wait_for_verification` polls.

Errors are :class:`RiscAdminError` with Google's status and message (never
the bearer token).
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .config import Config
from .errors import ConfigError, SigninError
from .risc import REQUESTED_EVENTS, _printable, verification_channel

__all__ = ["RiscAdmin", "RiscAdminError", "MANAGEMENT_AUDIENCE", "PUSH_DELIVERY", "wait_for_verification"]

MANAGEMENT_AUDIENCE = "https://risc.googleapis.com/google.identity.risc.v1beta.RiscManagementService"
PUSH_DELIVERY = "https://schemas.openid.net/secevent/risc/delivery-method/push"


class RiscAdminError(SigninError):
    """The management API refused a call or could not be reached; ``status`` is its HTTP status (0: no answer)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"RISC management API: {message}" + (f" (HTTP {status})" if status else ""))
        self.status = status


def _load_service_account(config: Config) -> dict[str, Any]:
    path = config.risc.service_account_file
    if not path:
        raise ConfigError("risc.service_account_file", "is required for the RISC management API "
                                                       "(the service-account key JSON of the project)")
    try:
        info = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ConfigError("risc.service_account_file", f"file not found: {path}") from exc
    except (OSError, ValueError) as exc:
        raise ConfigError("risc.service_account_file", f"cannot read {path} as JSON: {type(exc).__name__}") from exc
    if not isinstance(info, dict) or info.get("type") != "service_account" or not info.get("private_key") \
            or not info.get("client_email"):
        raise ConfigError("risc.service_account_file", "is not a service-account key (type service_account, "
                                                       "private_key, client_email)")
    return info


class RiscAdmin:
    """The RISC management API of one project, authenticated with its service-account key."""

    def __init__(self, config: Config, *, timeout: float = 10.0) -> None:
        """Raise ConfigError naming ``risc.service_account_file`` when the key is missing or unreadable."""
        import google.auth.jwt

        info = _load_service_account(config)
        try:
            self._credentials = google.auth.jwt.Credentials.from_service_account_info(
                info, audience=MANAGEMENT_AUDIENCE)
        except (ValueError, KeyError) as exc:
            raise ConfigError("risc.service_account_file", f"the key does not load: {type(exc).__name__}") from exc
        self.base = config.risc.management_url.rstrip("/")
        self.development = config.development
        self.timeout = timeout

    def _bearer(self) -> str:
        if not self._credentials.valid:
            self._credentials.refresh(None)  # self-signed: no request is made
        token = self._credentials.token
        return token.decode("ascii") if isinstance(token, bytes) else str(token)

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        import requests

        try:
            response = requests.request(method, f"{self.base}/{path}", json=body, timeout=self.timeout,
                                        headers={"Authorization": f"Bearer {self._bearer()}"},
                                        allow_redirects=False)
        except requests.RequestException as exc:
            raise RiscAdminError(0, f"cannot reach {self.base} ({type(exc).__name__})") from exc
        try:
            document = response.json() if response.content else {}
        except ValueError:
            document = None
        if response.status_code >= 400 or document is None:
            message = "not JSON"
            if isinstance(document, dict) and isinstance(document.get("error"), dict):
                message = _printable(document["error"].get("message", "error"), limit=300)
            raise RiscAdminError(response.status_code, message)
        return document

    def register(self, url: str) -> dict[str, Any]:
        """Point the project's event stream at ``url`` for every event type the receiver handles.

        Raise ConfigError (``--url``) for a URL Google would refuse, RiscAdminError for a refusal.
        """
        parts = urlsplit(url)
        loopback = parts.hostname in ("127.0.0.1", "localhost", "::1")
        if parts.scheme != "https" and not (self.development and parts.scheme == "http" and loopback):
            raise ConfigError("--url", "must be an https:// URL of the receiver (…/risc)")
        body = {"delivery": {"delivery_method": PUSH_DELIVERY, "url": url}, "events_requested": list(REQUESTED_EVENTS)}
        self._call("POST", "stream:update", body)
        return body

    def status(self) -> dict[str, Any]:
        """Return ``{"status": enabled|disabled, "stream": the stream configuration}``."""
        status = self._call("GET", "stream/status")
        stream = self._call("GET", "stream")
        return {"status": status.get("status") if isinstance(status, dict) else None, "stream": stream}

    def request_verification(self, state: str) -> None:
        """Ask Google to send a verification event carrying ``state`` to the registered receiver."""
        self._call("POST", "stream:verify", {"state": state})


def wait_for_verification(config: Config, state: str, timeout: float) -> bool:
    """Return True once a receiver sharing the configured hub recorded the verification ``state``
    (polled every 0.2 s), False after ``timeout`` seconds. Raise ConfigError for the memory hub."""
    from .wiring import open_shared_hub

    async def poll() -> bool:
        hub = open_shared_hub(config, "risc verify")
        deadline = time.monotonic() + timeout
        try:
            while True:
                if await hub.last(verification_channel(state)):
                    return True
                if time.monotonic() >= deadline:
                    return False
                await asyncio.sleep(0.2)
        finally:
            await hub.close()

    return asyncio.run(poll())
