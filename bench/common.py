"""Constants and small helpers shared by the benchmark's processes."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
import urllib.request
from typing import Any

from cryptography.fernet import Fernet

def _run_secret(name: str, make: Any) -> str:
    """Return this run's value of secret ``name``: made once by the first process, inherited by the others.

    The orchestrator imports this module first and its children inherit
    ``os.environ``, so every process of one run shares the values; nothing
    secret-looking is committed.
    """
    value = os.environ.get(name)
    if not value:
        value = os.environ[name] = make()
    return value


CLIENT_ID = "bench-client.apps.googleusercontent.com"
CLIENT_SECRET = _run_secret("BENCH_RUN_CLIENT_SECRET", lambda: "GOCSPX-bench-" + secrets.token_urlsafe(18))
COOKIE_SECRET = _run_secret("BENCH_RUN_COOKIE_SECRET", lambda: secrets.token_urlsafe(48))
#: The benchmark's databases are throwaway: a key per run.
ENCRYPTION_KEY = _run_secret("BENCH_RUN_ENCRYPTION_KEY", lambda: Fernet.generate_key().decode("ascii"))
#: The PKCE verifier the Flask peer's Flow generated and kept in its session (see bench/flask_peer.py).
PKCE_VERIFIER = _run_secret("BENCH_RUN_PKCE_VERIFIER", lambda: secrets.token_urlsafe(48))
SCOPE = "openid email profile"
#: Core of the server under test; the load generator, the emulator (and Redis) get the other one.
SERVER_CPU = 0
LOAD_CPU = 1

UPSERT_SQL = (
    "INSERT INTO tokens (sub, email, refresh_token, access_token, expiry, updated) VALUES (?, ?, ?, ?, ?, ?) "
    "ON CONFLICT(sub) DO UPDATE SET email = excluded.email, "
    "refresh_token = COALESCE(excluded.refresh_token, tokens.refresh_token), "
    "access_token = excluded.access_token, expiry = excluded.expiry, updated = excluded.updated"
)
CREATE_SQL = (
    "CREATE TABLE IF NOT EXISTS tokens (sub TEXT PRIMARY KEY, email TEXT, refresh_token TEXT, "
    "access_token TEXT, expiry REAL, updated REAL)"
)


def pkce_challenge(verifier: str) -> str:
    """Return the S256 code challenge of ``verifier`` (RFC 7636)."""
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def fetch_json(url: str, data: bytes | None = None, timeout: float = 30.0) -> Any:
    """GET (or POST ``data``) ``url`` on the loopback and return its JSON."""
    with urllib.request.urlopen(urllib.request.Request(url, data=data), timeout=timeout) as response:
        return json.loads(response.read())


def pin(cpu: int) -> None:
    """Pin this process (and the threads it starts later) to ``cpu`` when the machine has it."""
    if hasattr(os, "sched_setaffinity") and cpu in os.sched_getaffinity(0) | set(range(os.cpu_count() or 1)):
        try:
            os.sched_setaffinity(0, {cpu})
        except OSError:
            pass
