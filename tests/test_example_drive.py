"""``examples/drive/app.py`` as a subprocess, over HTTP: the host's routes, the sign-in under /auth, the sync job.

(The same app in Chromium, popup and all: ``test_host_browser.py``.)
"""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.parse

import pytest
import requests

from drive_example import APP, ENV, DriveExample
from procs import free_port
from tornado_signin.config import load_config
from tornado_signin.demo import DEMO_CLIENT_ID
from tornado_signin.wiring import open_store

DRIVE = "https://www.googleapis.com/auth/drive.appdata https://www.googleapis.com/auth/drive.readonly"
USER_FILES = {"Project plan", "Budget 2026", "Reports", "Team photo.jpg", "notes.txt"}


@pytest.fixture
def example(tmp_path):
    running = DriveExample(tmp_path)
    yield running
    assert running.stop() == 0, running.log()
    log = running.log()
    assert " ERROR " not in log and "Traceback" not in log, log


def mint(example: DriveExample, email: str, scope: str = "openid email profile " + DRIVE) -> str:
    answer = requests.post(example.emulator_url + "/emulator/code", timeout=10,
                           data={"client_id": DEMO_CLIENT_ID, "email": email, "scope": scope, "prompt": "consent"})
    answer.raise_for_status()
    return answer.json()["code"]


def sign_in(example: DriveExample, email: str, **kw) -> requests.Session:
    browser = requests.Session()
    state = browser.get(example.url + "/auth/state", timeout=10).json()["state"]
    answer = browser.post(example.url + "/auth/storeauthcode", data=mint(example, email, **kw), timeout=10,
                          headers={"X-Requested-With": "XMLHttpRequest", "Origin": example.url,
                                   "Content-Type": "application/octet-stream", "X-Signin-State": state})
    assert answer.status_code == 200, answer.text
    assert answer.json()["user"]["email"] == email
    return browser


def test_protected_routes_redirect_to_the_hosts_page_without_a_session(example):
    for path in ("/me", "/files"):
        answer = requests.get(example.url + path, allow_redirects=False, timeout=10)
        assert answer.status_code == 302
        assert answer.headers["Location"] == "/?" + urllib.parse.urlencode({"next": path})
    page = requests.get(example.url + "/", timeout=10)
    assert page.status_code == 200 and 'id="signinButton"' in page.text and 'id="status"' in page.text
    assert '<script src="/auth/signin.js" nonce="' in page.text
    # The sign-in lives under /auth only.
    assert requests.get(example.url + "/state", timeout=10).status_code == 404
    assert requests.get(example.url + "/auth/session", timeout=10).json() == {"signed_in": False}
    assert requests.get(example.url + "/auth/signin.js", timeout=10).status_code == 200


def test_me_and_files_with_a_session_then_the_sync_job(example):
    browser = sign_in(example, "alice@example.com")
    me = browser.get(example.url + "/me", timeout=10)
    assert me.status_code == 200 and me.text == "alice@example.com"
    assert me.headers["Cache-Control"] == "no-store"
    files = browser.get(example.url + "/files", timeout=10)
    assert files.status_code == 200, files.text
    listing = files.json()
    assert {item["name"] for item in listing["files"]} == USER_FILES
    assert all(set(item) == {"id", "name", "mimeType", "modifiedTime"} for item in listing["files"])
    assert {item["name"] for item in listing["appFolder"]["files"]} == {"settings.json", "sync-state.json"}
    assert browser.get(example.url + "/auth/session", timeout=10).json()["user"]["email"] == "alice@example.com"
    # The hook ran, and logged no token.
    assert "signed in: alice@example.com (5 scopes, refresh token stored: yes)" in example.log()
    # The offline job lists the same files, the user gone.
    result = example.sync()
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines()[0] == "alice@example.com: 5 files, 2 in the app folder"
    for name in USER_FILES:
        assert f"  {name}  (" in result.stdout
    assert "  appfolder/sync-state.json" in result.stdout


def test_sync_refreshes_an_expired_access_token_and_persists_it(example):
    # Access tokens that live less than the refresh margin: every use refreshes with the stored refresh token.
    requests.post(example.emulator_url + "/emulator/settings", json={"access_token_ttl": 60}, timeout=10)
    sign_in(example, "bob@gmail.com")
    config = load_config(str(example.folder / "drive-example.yaml"))
    store = open_store(config)
    try:
        (before,) = list(store.records())
        result = example.sync()
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith("bob@gmail.com: 5 files")
        after = store.get(before.sub)
        assert after.access_token != before.access_token
        assert after.access_token_issued_at > before.access_token_issued_at
        assert after.refresh_token == before.refresh_token
        for secret in (before.refresh_token, before.access_token, after.access_token):
            assert secret not in result.stdout + result.stderr
    finally:
        store.close()


def test_a_user_without_drive_access_is_sent_to_consent(example):
    browser = sign_in(example, "carol@example.org", scope="openid email profile")
    answer = browser.get(example.url + "/files", allow_redirects=False, timeout=10)
    assert answer.status_code == 302
    target = urllib.parse.urlsplit(answer.headers["Location"])
    assert target.path == "/"
    query = urllib.parse.parse_qs(target.query)
    assert query["next"] == ["/files"] and set(query["scope"][0].split()) == set(DRIVE.split())
    # The page asks for them (incremental consent through the JS client) when it has ?scope=.
    page = browser.get(example.url + answer.headers["Location"], timeout=10)
    config = json.loads(page.text.split('id="drive-example">', 1)[1].split("</script>", 1)[0])
    assert set(config["scopes"]) == set(DRIVE.split()) and config["next"] == "/files"
    # A link cannot make the page ask Google for scopes the app does not use.
    foreign = browser.get(example.url + "/?scope=gmail.readonly+drive.readonly&next=/files", timeout=10)
    config = json.loads(foreign.text.split('id="drive-example">', 1)[1].split("</script>", 1)[0])
    assert config["scopes"] == ["https://www.googleapis.com/auth/drive.readonly"]
    result = example.sync()
    assert result.returncode == 0
    assert result.stdout.startswith("carol@example.org: needs to sign in again (missing scopes:")


def test_sync_without_users_and_after_a_revoke(example):
    empty = example.sync()
    assert empty.returncode == 0 and empty.stdout == ""
    assert "no stored users" in empty.stderr
    browser = sign_in(example, "alice@example.com")
    # Revoke at Google (the emulator), behind the app's back: the next refresh is answered invalid_grant.
    config = load_config(str(example.folder / "drive-example.yaml"))
    store = open_store(config)
    try:
        (record,) = list(store.records())
        requests.post(example.emulator_url + "/revoke", data={"token": record.refresh_token}, timeout=10)
    finally:
        store.close()
    result = example.sync()
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("alice@example.com: needs to sign in again")
    # The page's /files of that user: sent to consent, not a 500.
    answer = browser.get(example.url + "/files", allow_redirects=False, timeout=10)
    assert answer.status_code == 302 and answer.headers["Location"].startswith("/?next=%2Ffiles")


def test_sync_while_the_app_is_down_says_so_and_fails(tmp_path):
    example = DriveExample(tmp_path)
    try:
        sign_in(example, "alice@example.com")
    finally:
        assert example.stop() == 0
    result = example.sync()
    assert result.returncode == 1
    assert "alice@example.com: failed:" in result.stderr and "Traceback" not in result.stderr


def test_a_busy_port_is_one_line_naming_it(example, tmp_path_factory):
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    again = subprocess.run([sys.executable, str(APP), "--port", str(example.port), "--emulator-port",
                            str(free_port())], cwd=elsewhere, capture_output=True, text=True, timeout=60)
    assert again.returncode == 2
    lines = [line for line in again.stderr.splitlines() if line.startswith("app.py:")]
    assert len(lines) == 1 and str(example.port) in lines[0] and "Traceback" not in again.stderr
    # A second app in the same folder: its emulator state is in use, one line naming it (a traceback before).
    here = subprocess.run([sys.executable, str(APP), "--port", str(free_port()), "--emulator-port",
                           str(free_port())], cwd=example.folder, capture_output=True, text=True, timeout=60)
    assert here.returncode == 2 and "Traceback" not in here.stderr, here.stderr
    lines = [line for line in here.stderr.splitlines() if line.startswith("app.py:")]
    assert len(lines) == 1 and "is in use by another emulator" in lines[0], here.stderr


def test_the_printed_lines_work_as_printed_and_the_page_has_its_icon(example):
    """The CLI and sync lines the app prints run from a shell without the venv on PATH; /favicon.ico is there."""
    import shlex

    import time

    deadline = time.monotonic() + 10
    while "the CLI reaches this app with: " not in (printed := example.log()) and time.monotonic() < deadline:
        time.sleep(0.1)  # printed once both ports listen
    cli = next(line for line in printed.splitlines() if "the CLI reaches this app with: " in line)
    env = {**ENV, "PATH": "/usr/bin:/bin"}
    listed = subprocess.run(shlex.split(cli.split("with: ", 1)[1]), capture_output=True, text=True, env=env,
                            cwd=example.folder, timeout=60)
    assert listed.returncode == 0 and "no users stored" in listed.stderr, listed.stderr
    job = next(line for line in printed.splitlines() if line.startswith("the offline job: "))
    synced = subprocess.run(shlex.split(job.split(": ", 1)[1]), capture_output=True, text=True, env=env,
                            cwd=example.folder, timeout=60)
    assert "no stored users" in synced.stderr, synced.stderr
    sign_in(example, "alice@example.com")
    synced = example.sync()
    assert synced.returncode == 0 and "file_cache" not in synced.stderr, synced.stderr  # no library noise
    # Every page of the app (its text /me too) makes the browser ask for /favicon.ico: a 404 in the console before.
    icon = requests.get(example.url + "/favicon.ico", timeout=10)
    assert icon.status_code == 200 and icon.headers["Content-Type"].startswith("image/")
