"""Issue 11 §3: a stored access token is handed out only while the record is active.

A record whose grant was revoked (``invalid_grant`` on a refresh, a RISC
event, an operator) or that never had a refresh token still holds the last
access token, unexpired. The CLI's ``token``, ``OfflineAccess.credentials``
and the script API's ``get_credentials`` refuse it with a consent-required
error (a non-zero exit for the CLI) instead of printing a token that Google
has most likely revoked.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from harness import write_offline_config
from tornado_signin.config import load_config
from tornado_signin.errors import ConsentRequiredError
from tornado_signin.google import GoogleClient
from tornado_signin.offline import OfflineAccess
from tornado_signin.store import TokenRecord
from tornado_signin.workers import WorkerPool
from tornado_signin.wiring import open_store

SUB = "108204268033311374519"
ACCESS_TOKEN = "ya29.stored-and-dead"


@pytest.fixture
def config_file(tmp_path):
    # Google is unreachable: nothing here may need it.
    return write_offline_config(tmp_path)


def store_record(config_file, **changes):
    path, env = config_file
    now = time.time()
    record = TokenRecord(sub=SUB, email="ada@example.com", refresh_token="1//rt", refresh_token_issued_at=now - 60,
                         access_token=ACCESS_TOKEN, access_token_issued_at=now - 60,
                         access_token_expiry=now + 3000, scopes=("openid", "email"))
    store = open_store(load_config(path, environ=env))
    try:
        return store.save(record.replace(**changes))
    finally:
        store.close()


#: Each state's changes, computed when the record is stored (a revocation after the token's issue time).
STATES = {
    "revoked": lambda: {"revoked_at": time.time()},
    "no_refresh_token": lambda: {"refresh_token": None, "refresh_token_issued_at": None},
}


def run_cli(*args, env):
    return subprocess.run([sys.executable, "-m", "tornado_signin.cli", *args], capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=60)


@pytest.mark.parametrize("state", sorted(STATES))
@pytest.mark.parametrize("json_flag", [(), ("--json",)])
def test_cli_token_refuses_an_inactive_record(config_file, state, json_flag):
    assert store_record(config_file, **STATES[state]()).state == state
    path, env = config_file
    for user in (SUB, "ada@example.com"):
        result = run_cli("token", "--config", str(path), user, *json_flag, env=env)
        assert result.returncode != 0
        assert ACCESS_TOKEN not in result.stdout + result.stderr
        assert result.stdout == ""
        assert "sign in with consent again" in result.stderr, result.stderr
        assert result.stderr.count("\n") == 1, result.stderr


def test_cli_token_hands_out_an_active_record(config_file):
    assert store_record(config_file).state == "active"
    path, env = config_file
    result = run_cli("token", "--config", str(path), SUB, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == ACCESS_TOKEN


@pytest.mark.parametrize("state", sorted(STATES))
def test_credentials_and_get_credentials_refuse_an_inactive_record(config_file, state):
    store_record(config_file, **STATES[state]())
    path, env = config_file
    config = load_config(path, environ=env)
    from tornado_signin.scripts import get_credentials

    with pytest.raises(ConsentRequiredError):
        get_credentials(config, SUB)

    async def through_offline_access():
        store = open_store(config)
        google = GoogleClient(config.google)
        workers = WorkerPool(1, 4)
        try:
            offline = OfflineAccess(store, google, workers)
            for call in (offline.credentials(SUB), offline.fresh_record(SUB), offline.call_userinfo(SUB)):
                with pytest.raises(ConsentRequiredError):
                    await call
        finally:
            google.close()
            workers.shutdown()
            store.close()

    import asyncio

    asyncio.run(through_offline_access())
