"""The CLI: backends, check, and the offline path end to end from fresh processes."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from tornado.testing import bind_unused_port

from harness import CLIENT_ID, CLIENT_SECRET, COOKIE_SECRET, PageClient, json_body
from tornado_signin.app import make_app, make_server
from tornado_signin.config import load_config
from tornado_signin.crypto import generate_key
from tornado_signin.emulator import EmulatorClient, EmulatorThread


def run_cli(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tornado_signin.cli", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, cwd=cwd, timeout=60)


def write_config(folder: Path, emulator_url: str, app_url: str, **store: object) -> Path:
    document = {
        "development": True,
        "server": {"cookie_secret": {"$env": "TS_COOKIE"}, "allowed_origins": [app_url]},
        "google": {
            "client_id": CLIENT_ID,
            "client_secret": {"$env": "TS_CLIENT_SECRET"},
            "endpoints": {"auth_uri": emulator_url + "/o/oauth2/v2/auth", "token_uri": emulator_url + "/token",
                          "certs_uri": emulator_url + "/oauth2/v1/certs"},
        },
        "store": {"backend": "sql", "url": f"sqlite:///{folder / 'tokens.sqlite3'}",
                  "encryption": {"keys": [{"$env": "TS_KEY"}]}, **store},
    }
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


def test_backends_lists_builtin_stores():
    result = run_cli("backends")
    assert result.returncode == 0, result.stderr
    for name in ("sql", "dynamodb", "file", "memory"):
        assert f"  {name} " in result.stdout
    listed = json.loads(run_cli("backends", "--json").stdout)
    assert {b["name"] for b in listed} >= {"sql", "dynamodb", "file", "memory"}
    assert all(b["loadable"] for b in listed if b["name"] in ("sql", "memory"))


#: Each command's own usage line, whitespace collapsed (argparse wraps long ones).
USAGES = {
    "serve": "[-h] [--config FILE] [--host HOST] [--port PORT] [--emulator-port EMULATOR_PORT] "
             "[--client-library {gis,gapi}] [--processes PROCESSES]",
    "emulator": "[-h] [--config FILE] [--host HOST] [--port PORT] [--state-dir DIR]",
    "backends": "[-h] [--json]",
    "check": "[-h] [--config FILE] [--create-table]",
    "users": "[-h] [--config FILE] [--json]",
    "token": "[-h] [--config FILE] [--json] [--scope SCOPE] user",
    "call": "[-h] [--config FILE] user",
    "revoke": "[-h] [--config FILE] user",
    "sessions": "[-h] [--config FILE] [--json] [--end [SESSION_ID]] [--all] USER",
    "rotate-keys": "[-h] [--config FILE]",
    "migrate": "[-h] --from CONFIG --to CONFIG",
    "genkey": "[-h]",
}


def _usage(text: str) -> str:
    return " ".join(text.split("\n\n", 1)[0].split())


def test_help_lists_every_command():
    out = run_cli("--help").stdout
    assert _usage(out) == "usage: tornado-signin [-h] COMMAND ..."
    listed = re.findall(r"^    ([a-z-]+)(?:\s|$)", out, re.M)
    assert set(USAGES) <= set(listed), listed


@pytest.mark.parametrize("command", sorted(USAGES))
def test_each_command_has_its_own_usage(command):
    result = run_cli(command, "--help")
    assert result.returncode == 0 and result.stderr == ""
    assert _usage(result.stdout) == f"usage: tornado-signin {command} {USAGES[command]}"


def test_config_error_names_the_key(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("server: {cookie_secret: short}\ngoogle: {client_id: x, client_secret: y}\n")
    result = run_cli("check", "--config", str(path))
    assert result.returncode == 3
    assert "server.cookie_secret" in result.stdout + result.stderr


def store_bob_with_an_expired_access_token(config, emulator) -> tuple[str, dict]:
    """Store bob@gmail.com as a sign-in at ``emulator`` would, with a working refresh token and an expired access
    token; return his sub and the token endpoint's reply."""
    import time

    import requests

    from tornado_signin.emulator import DEFAULT_ACCOUNTS
    from tornado_signin.store import TokenRecord
    from tornado_signin.wiring import open_store

    reply = requests.post(emulator.base_url + "/token", data={
        "grant_type": "authorization_code", "code": emulator.mint_code(CLIENT_ID, "bob@gmail.com"),
        "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET, "redirect_uri": "postmessage"}, timeout=10).json()
    sub = next(a.sub for a in DEFAULT_ACCOUNTS if a.email == "bob@gmail.com")
    now = time.time()
    store = open_store(config)
    store.save(TokenRecord(sub=sub, email="bob@gmail.com", refresh_token=reply["refresh_token"],
                           refresh_token_issued_at=now, access_token="ya29.expired", access_token_expiry=now - 10,
                           access_token_issued_at=now, scopes=tuple(reply["scope"].split())))
    store.close()
    return sub, reply


@pytest.fixture
def emulator_thread():
    app_sock, app_port = bind_unused_port()
    app_url = f"http://127.0.0.1:{app_port}"
    thread = EmulatorThread(clients=[EmulatorClient(CLIENT_ID, CLIENT_SECRET, (app_url,))])
    emulator = thread.start()
    yield emulator, app_sock, app_url
    thread.stop()


@pytest.mark.gen_test(timeout=120)
async def test_offline_path_from_a_fresh_process(tmp_path, emulator_thread):
    emulator, app_sock, app_url = emulator_thread
    env = {"TS_COOKIE": COOKIE_SECRET, "TS_CLIENT_SECRET": CLIENT_SECRET, "TS_KEY": generate_key()}
    config_path = write_config(tmp_path, emulator.base_url, app_url)
    config = load_config(config_path, environ=env)

    # Sign in through the running server ...
    app = make_app(config)
    server = make_server(app, config)
    server.add_sockets([app_sock])
    client = PageClient(app_url, app_url)
    response = await client.post_code(emulator.mint_code(CLIENT_ID, "alice@example.com"))
    assert response.code == 200, response.body
    sub = json_body(response)["user"]["sub"]
    # ... then stop it: the user and the server are both gone.
    server.stop()
    await server.close_all_connections()
    await app.settings["signin"].close()

    users = json.loads(run_cli("users", "--config", str(config_path), "--json", env=env).stdout)
    assert [(u["sub"], u["email"], u["state"]) for u in users] == [(sub, "alice@example.com", "active")]

    token = run_cli("token", "--config", str(config_path), "alice@example.com", env=env)
    assert token.returncode == 0, token.stderr
    access_token = token.stdout.strip()
    assert access_token.startswith("ya29.") and "\n" not in access_token

    whole = json.loads(run_cli("token", "--config", str(config_path), sub, "--json", env=env).stdout)
    assert whole["access_token"] == access_token and "refresh_token" not in whole

    called = run_cli("call", "--config", str(config_path), sub, env=env)
    assert called.returncode == 0, called.stderr
    assert json.loads(called.stdout)["email"] == "alice@example.com"
    assert emulator.stats["userinfo"] == 1

    missing = run_cli("token", "--config", str(config_path), sub, "--scope",
                      "https://www.googleapis.com/auth/drive.appdata", env=env)
    assert missing.returncode != 0 and "missing scopes" in missing.stderr

    # An expired access token is refreshed by the CLI and persisted.
    emulator.configure(access_token_ttl=3600)
    from tornado_signin.wiring import open_store
    store = open_store(config)
    record = store.get(sub)
    store.save(record.replace(access_token="ya29.expired", access_token_expiry=1.0,
                              access_token_issued_at=record.access_token_issued_at + 1))
    store.close()
    refreshed = run_cli("token", "--config", str(config_path), sub, env=env).stdout.strip()
    assert refreshed not in ("ya29.expired", access_token) and emulator.stats["token.refresh_token"] == 1

    rotated_env = {**env, "TS_KEY": generate_key()}
    rotated_cfg = tmp_path / "rotated.yaml"
    doc = yaml.safe_load(config_path.read_text())
    doc["store"]["encryption"]["keys"] = [{"$env": "TS_KEY"}, {"$env": "TS_OLD_KEY"}]
    rotated_cfg.write_text(yaml.safe_dump(doc))
    rotated_env["TS_OLD_KEY"] = env["TS_KEY"]
    result = run_cli("rotate-keys", "--config", str(rotated_cfg), env=rotated_env)
    assert result.returncode == 0 and "re-encrypted 1 record" in result.stdout
    # The old key alone no longer opens the record; the new one alone does.
    assert run_cli("token", "--config", str(config_path), sub, env=env).returncode != 0
    new_only = {**env, "TS_KEY": rotated_env["TS_KEY"]}
    assert run_cli("token", "--config", str(config_path), sub, env=new_only).stdout.strip() == refreshed

    revoked = run_cli("revoke", "--config", str(config_path), sub, env=new_only)
    assert revoked.returncode == 0, revoked.stderr
    assert emulator.grant_revoked(CLIENT_ID, sub)
    assert json.loads(run_cli("users", "--config", str(config_path), "--json", env=new_only).stdout) == []


def test_check_reports_each_part(tmp_path, emulator_thread):
    emulator, _, app_url = emulator_thread
    env = {"TS_COOKIE": COOKIE_SECRET, "TS_CLIENT_SECRET": CLIENT_SECRET, "TS_KEY": generate_key()}
    good = write_config(tmp_path, emulator.base_url, app_url)
    result = run_cli("check", "--config", str(good), "--create-table", env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "store (sql): ok" in result.stdout and "google certs" in result.stdout

    bad_store = tmp_path / "bad-store"
    bad_store.mkdir()
    cfg = write_config(bad_store, emulator.base_url, app_url, url="postgresql+psycopg://nobody@127.0.0.1:1/none")
    assert run_cli("check", "--config", str(cfg), env=env).returncode == 4

    bad_google = tmp_path / "bad-google"
    bad_google.mkdir()
    cfg = write_config(bad_google, "http://127.0.0.1:1", app_url)
    assert run_cli("check", "--config", str(cfg), "--create-table", env=env).returncode == 6


def test_script_api_get_credentials_and_authorized_session(tmp_path, emulator_thread, monkeypatch):
    """The plain-script API: google-auth Credentials and a self-refreshing requests-oauthlib session."""
    import time

    from tornado_signin.scripts import authorized_session, get_credentials
    from tornado_signin.wiring import open_store

    emulator, _, app_url = emulator_thread
    env = {"TS_COOKIE": COOKIE_SECRET, "TS_CLIENT_SECRET": CLIENT_SECRET, "TS_KEY": generate_key()}
    config = load_config(write_config(tmp_path, emulator.base_url, app_url), environ=env)
    # An access token that is already expired: both APIs must refresh it.
    sub, _ = store_bob_with_an_expired_access_token(config, emulator)

    creds = get_credentials(config, "bob@gmail.com")
    assert creds.valid and creds.token != "ya29.expired"
    from tornado_signin.errors import ConfigError

    with pytest.raises(ConfigError):  # requests-oauthlib refuses http:// without the development switch
        authorized_session(config, sub)
    monkeypatch.setenv("OAUTHLIB_INSECURE_TRANSPORT", "1")
    session = authorized_session(config, sub)
    response = session.get(config.google.endpoints.userinfo_uri, timeout=10)
    assert response.status_code == 200 and response.json()["email"] == "bob@gmail.com"
    assert emulator.stats["token.refresh_token"] == 1
    # When the session's token expires, requests-oauthlib refreshes it and the store gets the new one.
    session.token = {**session.token, "expires_at": time.time() - 5, "expires_in": -5}
    assert session.get(config.google.endpoints.userinfo_uri, timeout=10).status_code == 200
    assert emulator.stats["token.refresh_token"] == 2
    store = open_store(config)
    assert store.get(sub).access_token == session.token["access_token"]
    store.close()
