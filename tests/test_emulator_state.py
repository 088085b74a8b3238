"""The emulator's state folder: a restarted emulator still knows every grant, token and key.

In-process tests restart an :class:`Emulator` on the same folder; the
subprocess test kills ``tornado-signin emulator --state-dir DIR`` with
SIGKILL (nothing gets a chance to flush) and starts it again.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

import google.auth.transport.requests
import google.oauth2.id_token
import pytest
import requests

from procs import free_port, wait_port
from tornado_signin.emulator import Emulator, EmulatorClient, EmulatorStateError, EmulatorThread, OAuthError
from tornado_signin.emulator.persist import LOCK_FILE, STATE_FILE

CLIENT = EmulatorClient("state-client.apps.googleusercontent.com", "state-secret", ("http://127.0.0.1:8080",))


def tokens(emulator: Emulator, email: str = "alice@example.com", **mint) -> dict:
    """Mint a code for ``email`` and exchange it (in-process): return the token fields."""
    code = emulator.mint_code(CLIENT.client_id, email, **mint)
    issued = emulator.state.exchange_code(CLIENT, code, "postmessage")
    return {"access_token": issued.access_token, "refresh_token": issued.refresh_token}


def test_restart_keeps_grants_tokens_keys_and_switches(tmp_path):
    folder = tmp_path / "emu"
    first = Emulator(clients=[CLIENT], state_dir=folder)
    alice = tokens(first)
    bob = tokens(first, "bob@gmail.com")
    pending = first.mint_code(CLIENT.client_id, "carol@example.org")
    kid = first.rotate_keys()
    first.configure(access_token_ttl=120, rotate_refresh_tokens=True)
    pems = first.keys.pem_map()
    first.state.revoke(bob["refresh_token"])
    first.close()

    second = Emulator(clients=[CLIENT], state_dir=folder)
    try:
        assert second.keys.current.kid == kid and second.keys.pem_map() == pems
        assert second.settings()["access_token_ttl"] == 120 and second.settings()["rotate_refresh_tokens"] is True
        assert second.state.userinfo(alice["access_token"])["email"] == "alice@example.com"
        refreshed = second.state.refresh(CLIENT, alice["refresh_token"], None)
        assert refreshed.access_token and refreshed.refresh_token  # rotation stayed on
        # Revoked before the restart: still revoked after it.
        with pytest.raises(OAuthError) as caught:
            second.state.refresh(CLIENT, bob["refresh_token"], None)
        assert caught.value.error == "invalid_grant"
        assert second.grant_revoked(CLIENT.client_id, "bob@gmail.com")
        # A code minted before the restart is spent once, after it.
        assert second.state.exchange_code(CLIENT, pending, "postmessage").refresh_token
        second.close()
        third = Emulator(clients=[CLIENT], state_dir=folder)
        with pytest.raises(OAuthError):
            third.state.exchange_code(CLIENT, pending, "postmessage")
        # The rotated-away refresh token stays dead; its successor lives.
        with pytest.raises(OAuthError):
            third.state.refresh(CLIENT, alice["refresh_token"], None)
        assert third.state.refresh(CLIENT, refreshed.refresh_token, None).access_token
        third.close()
    finally:
        second.close()


def test_without_a_state_dir_nothing_is_written(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    emulator = Emulator(clients=[CLIENT])
    tokens(emulator)
    assert emulator.state_dir is None and list(tmp_path.iterdir()) == []


def test_state_files_are_private_and_replaced_atomically(tmp_path):
    folder = tmp_path / "emu"
    folder.mkdir(mode=0o755)
    emulator = Emulator(clients=[CLIENT], state_dir=folder)
    try:
        tokens(emulator)
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700
        for name in (STATE_FILE, LOCK_FILE):
            assert stat.S_IMODE((folder / name).stat().st_mode) == 0o600
        assert sorted(p.name for p in folder.iterdir()) == sorted([LOCK_FILE, STATE_FILE])  # no temp file left
        document = json.loads((folder / STATE_FILE).read_text())
        assert document["version"] == 1 and len(document["refresh_tokens"]) == 1
    finally:
        emulator.close()


def test_a_folder_in_use_is_refused(tmp_path):
    first = Emulator(clients=[CLIENT], state_dir=tmp_path)
    try:
        with pytest.raises(EmulatorStateError, match="in use by another emulator"):
            Emulator(clients=[CLIENT], state_dir=tmp_path)
    finally:
        first.close()
    Emulator(clients=[CLIENT], state_dir=tmp_path).close()


@pytest.mark.parametrize("content", ["{not json", '{"version": 99}', '{"version": 1, "grants": [{"sub": 1}]}'])
def test_a_corrupt_state_file_names_the_file(tmp_path, content):
    (tmp_path / STATE_FILE).write_text(content)
    with pytest.raises(EmulatorStateError, match=STATE_FILE):
        Emulator(clients=[CLIENT], state_dir=tmp_path)
    # The lock was released: a good file opens.
    (tmp_path / STATE_FILE).unlink()
    Emulator(clients=[CLIENT], state_dir=tmp_path).close()


def test_emulator_thread_releases_the_folder(tmp_path):
    with EmulatorThread(clients=[CLIENT], state_dir=tmp_path) as emulator:
        assert emulator.state_dir == str(tmp_path.resolve())
    with EmulatorThread(clients=[CLIENT], state_dir=tmp_path):
        pass


# -- as a process ----------------------------------------------------------------


def start(cwd: Path, port: int, *extra: str) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tornado_signin.cli", "emulator", "--port", str(port), *extra],
        cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )
    wait_port(port, proc=proc)
    return proc


def kill(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)
    if proc.stdout:
        proc.stdout.close()


def test_killed_emulator_process_keeps_its_users(tmp_path):
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    state = tmp_path / "state"
    proc = start(tmp_path, port, "--state-dir", str(state))
    try:
        secrets_doc = requests.get(base + "/client_secret.json", timeout=10).json()["web"]
        client = {"client_id": secrets_doc["client_id"], "client_secret": secrets_doc["client_secret"]}
        code = requests.post(base + "/emulator/code", data={"client_id": client["client_id"],
                             "email": "alice@example.com"}, timeout=10).json()["code"]
        first = requests.post(base + "/token", data={**client, "grant_type": "authorization_code", "code": code,
                              "redirect_uri": "postmessage"}, timeout=10).json()
        assert first["refresh_token"]
    finally:
        kill(proc)  # SIGKILL: only what was written through survives

    proc = start(tmp_path, port, "--state-dir", str(state))
    try:
        # The access token issued before the kill still opens userinfo ...
        info = requests.get(base + "/v1/userinfo", headers={"Authorization": "Bearer " + first["access_token"]},
                            timeout=10)
        assert info.status_code == 200 and info.json()["email"] == "alice@example.com"
        # ... the refresh token still refreshes ...
        again = requests.post(base + "/token", data={**client, "grant_type": "refresh_token",
                              "refresh_token": first["refresh_token"]}, timeout=10)
        assert again.status_code == 200, again.text
        # ... and ID tokens signed before and after verify against the same published keys.
        request = google.auth.transport.requests.Request()
        for id_token in (first["id_token"], again.json()["id_token"]):
            claims = google.oauth2.id_token.verify_token(id_token, request, audience=client["client_id"],
                                                         certs_url=base + "/oauth2/v1/certs")
            assert claims["email"] == "alice@example.com"
    finally:
        kill(proc)

    # Without --state-dir the same restart forgets the grant (the defect this folder fixes).
    proc = start(tmp_path, port)
    try:
        forgot = requests.post(base + "/token", data={**client, "grant_type": "refresh_token",
                               "refresh_token": first["refresh_token"]}, timeout=10)
        assert forgot.status_code == 400 and forgot.json()["error"] == "invalid_grant"
    finally:
        kill(proc)


def test_state_dir_in_use_is_a_one_line_startup_error(tmp_path):
    port = free_port()
    proc = start(tmp_path, port, "--state-dir", str(tmp_path / "state"))
    try:
        second = subprocess.run(
            [sys.executable, "-m", "tornado_signin.cli", "emulator", "--port", str(free_port()),
             "--state-dir", str(tmp_path / "state")],
            cwd=tmp_path, capture_output=True, text=True, timeout=60,
        )
        assert second.returncode == 3
        assert second.stderr.strip().count("\n") == 0 and "in use by another emulator" in second.stderr
        assert "Traceback" not in second.stderr
    finally:
        kill(proc)


def test_every_switch_is_documented(tmp_path):
    """The settings switches are listed in the emulator's docstring and the README's table."""
    import tornado_signin.emulator as package

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    emulator = Emulator(clients=[CLIENT])
    for name in emulator.settings():
        assert f"\n    {name} " in package.__doc__, name
        assert f"| `{name}` |" in readme, name
