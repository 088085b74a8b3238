"""Sessions that can be ended, across two `tornado-signin serve` processes sharing PostgreSQL and Redis,
and the `sessions` command run as a subprocess the way the README shows it."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from harness import json_body
from procs import ENV, mint
from test_deploy import Deployment, read_frame

pytestmark = [pytest.mark.gen_test(timeout=90), pytest.mark.slow]


@pytest.fixture
def deployment(tmp_path, postgres_url, redis_url, unique_name):
    made = Deployment(tmp_path, postgres_url, redis_url, unique_name)
    yield made
    made.close()


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tornado_signin.cli", *args], capture_output=True, text=True,
                          env={**os.environ, **ENV}, timeout=60)


async def test_copied_cookie_is_refused_on_the_other_process_after_signout(deployment):
    dep = deployment
    page_a = dep.client(0)
    assert (await page_a.post_code(mint(dep.emulator_url))).code == 200
    copy_b = dep.client(1)
    copy_b.cookies = dict(page_a.cookies)
    assert (await copy_b.fetch("/api/scopes")).code == 200
    socket_b = await copy_b.socket()
    assert (await read_frame(socket_b))["type"] == "signed_in"  # the recorded outcome
    assert (await page_a.post_gated("/signout")).code == 200
    assert await read_frame(socket_b) == {"type": "signed_out"}  # pushed by the other process
    assert (await copy_b.fetch("/api/scopes")).code == 401
    assert b"alice@example.com" not in (await copy_b.fetch("/")).body


async def test_sessions_command_lists_and_ends_sessions_live(deployment):
    dep = deployment
    tabs = []
    for index in (0, 1):
        tab = dep.client(index)
        body = json_body(await tab.post_code(mint(dep.emulator_url)))
        tabs.append(tab)
    sub = body["user"]["sub"]
    listed = run_cli("sessions", "--config", str(dep.config), "alice@example.com", "--json")
    assert listed.returncode == 0, listed.stderr
    sessions = json.loads(listed.stdout)
    assert len(sessions) == 2 and {s["sub"] for s in sessions} == {sub}
    table = run_cli("sessions", "--config", str(dep.config), sub)
    assert table.returncode == 0 and table.stdout.startswith("SESSION_ID") and len(table.stdout.splitlines()) == 3
    sockets = [await tab.socket() for tab in tabs]
    for socket in sockets:
        assert (await read_frame(socket))["type"] == "signed_in"

    # One session: whichever tab owns it is told, the other stays signed in.
    first = sessions[0]["session_id"]
    ended = run_cli("sessions", "--config", str(dep.config), "alice@example.com", "--end", first)
    assert ended.returncode == 0 and f"ended session {first}" in ended.stdout, ended.stderr
    codes = sorted([(await tab.fetch("/api/scopes")).code for tab in tabs])
    assert codes == [200, 401]
    again = run_cli("sessions", "--config", str(dep.config), "alice@example.com", "--end", first)
    assert again.returncode == 1 and "no live session" in again.stderr

    # Every session.
    everything = run_cli("sessions", "--config", str(dep.config), "alice@example.com", "--end", "--all")
    assert everything.returncode == 0 and "ended 1 session(s)" in everything.stdout
    assert [(await tab.fetch("/api/scopes")).code for tab in tabs] == [401, 401]
    assert json.loads(run_cli("sessions", "--config", str(dep.config), sub, "--json").stdout) == []

    usage = run_cli("sessions", "--config", str(dep.config), sub, "--all")
    assert usage.returncode == 2 and "--end --all" in usage.stderr


def test_sessions_command_refuses_the_memory_hub(tmp_path):
    from procs import write_config

    config = write_config(tmp_path, name="mem", emulator_url="http://127.0.0.1:9", origins=["http://127.0.0.1:8"],
                          store={"backend": "sql", "url": f"sqlite:///{tmp_path / 't.db'}"})
    result = run_cli("sessions", "--config", str(config), "someone-sub")
    assert result.returncode == 3 and "hub.backend" in result.stderr and "redis" in result.stderr
