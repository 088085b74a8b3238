"""The script API: Google credentials for a stored user from a plain Python script (no IOLoop needed).

Every function here builds its services through :mod:`tornado_signin.wiring`,
so log redaction is installed before the first call to Google: a script that
logs at DEBUG logs no token, code or secret.
"""

from __future__ import annotations

import datetime
import os
import time
from collections.abc import Iterable
from typing import Any

from google.oauth2.credentials import Credentials

from .config import Config
from .errors import ConfigError
from .store import TokenRecord
from .wiring import open_store, run_offline

__all__ = ["get_credentials", "authorized_session", "run_offline"]


def get_credentials(config: Config, user: str, *, required_scopes: Iterable[str] = ()) -> Credentials:
    """Return valid Credentials for ``user`` (a sub or an email) from a plain script (no IOLoop needed).

    Raise as :meth:`tornado_signin.offline.OfflineAccess.credentials`.

    Example::

        from googleapiclient import discovery
        from tornado_signin.config import load_config
        from tornado_signin.scripts import get_credentials

        creds = get_credentials(load_config("config.yaml"), "alice@example.com", required_scopes=["drive.appdata"])
        drive = discovery.build("drive", "v3", credentials=creds)
    """
    return run_offline(config, lambda offline: offline.credentials(user, required_scopes=required_scopes))


def authorized_session(config: Config, user: str) -> Any:
    """Return a ``requests_oauthlib.OAuth2Session`` for ``user`` that refreshes itself.

    The session starts with a fresh access token; when it expires,
    requests-oauthlib refreshes it at the configured token endpoint and the
    new token is merged into the store. requests-oauthlib refuses plain
    ``http://`` (the emulator) unless ``OAUTHLIB_INSECURE_TRANSPORT`` is set,
    which the config allows only with ``development: true``; raise
    ConfigError saying so rather than fail on the first refresh.

    Example::

        from tornado_signin.config import load_config
        from tornado_signin.scripts import authorized_session

        session = authorized_session(load_config("config.yaml"), "alice@example.com")
        print(session.get("https://openidconnect.googleapis.com/v1/userinfo").json()["email"])
    """
    from requests_oauthlib import OAuth2Session

    if config.google.endpoints.token_uri.startswith("http://") and not os.environ.get("OAUTHLIB_INSECURE_TRANSPORT"):
        raise ConfigError("google.endpoints.token_uri", "requests-oauthlib needs OAUTHLIB_INSECURE_TRANSPORT=1 "
                                                        "for a plain http:// endpoint (development only)")

    credentials = get_credentials(config, user)
    google = config.google

    def persist(token: dict[str, Any]) -> None:
        store = open_store(config)
        try:
            now = time.time()
            store.save(TokenRecord(
                sub=record_sub, access_token=token["access_token"],
                access_token_expiry=now + float(token.get("expires_in", 3600)), access_token_issued_at=now,
                refresh_token=token.get("refresh_token"),
                refresh_token_issued_at=now if token.get("refresh_token") else None,
            ))
        finally:
            store.close()

    record_sub = run_offline(config, lambda offline: offline.find(user)).sub
    expires_in = (credentials.expiry - datetime.datetime.utcnow()).total_seconds() if credentials.expiry else 3600
    return OAuth2Session(
        google.client_id,
        token={"access_token": credentials.token, "refresh_token": credentials.refresh_token,
               "token_type": "Bearer", "expires_in": expires_in},
        auto_refresh_url=google.endpoints.token_uri,
        auto_refresh_kwargs={"client_id": google.client_id, "client_secret": google.client_secret},
        token_updater=persist,
    )
