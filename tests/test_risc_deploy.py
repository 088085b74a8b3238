"""Cross-Account Protection across real processes: two `tornado-signin serve` sharing PostgreSQL and Redis,
the emulator pushing security events, and `tornado-signin risc register|status|verify` run as the README shows."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from harness import json_body, without_state
from procs import ENV, Proc, free_port, get, mint, start_emulator, start_server, write_config
from test_deploy import read_frame

pytestmark = [pytest.mark.gen_test(timeout=120), pytest.mark.slow]


def run_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tornado_signin.cli", *args], capture_output=True, text=True,
                          env={**os.environ, **ENV}, timeout=timeout)


def post_form(url: str, form: dict[str, str]) -> dict:
    request = urllib.request.Request(url, data=urllib.parse.urlencode(form).encode(), method="POST")
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.load(response)


class RiscDeployment:
    def __init__(self, tmp: Path, postgres_url: str | None, redis_url: str | None, table: str,
                 instances: int = 2) -> None:
        """PostgreSQL and Redis shared by ``instances`` servers; without their URLs, SQLite and the memory hub."""
        self.tmp, self.postgres_url, self.table = tmp, postgres_url, table
        self.ports = [free_port() for _ in range(instances)]
        self.urls = [f"http://127.0.0.1:{p}" for p in self.ports]
        emulator_port = free_port()
        self.emulator_url = f"http://127.0.0.1:{emulator_port}"
        self.service_account = tmp / "risc-service-account.json"
        self.config = write_config(
            tmp, name="risc", emulator_url=self.emulator_url, origins=self.urls,
            store={"backend": "sql", "url": postgres_url or f"sqlite:///{tmp / 'tokens.db'}", "table": table},
            hub={"backend": "redis", "url": redis_url, "key_prefix": f"{table}:"} if redis_url else None,
            risc={"enabled": True, "configuration_url": self.emulator_url + "/.well-known/risc-configuration",
                  "management_url": self.emulator_url + "/v1beta", "service_account_file": str(self.service_account)})
        self.procs: list[Proc] = [start_emulator(tmp, self.config, emulator_port)]
        status, body, _ = get(self.emulator_url + "/service_account.json")
        assert status == 200
        self.service_account.write_bytes(body)
        self.service_account.chmod(0o600)
        self.servers = [start_server(tmp, self.config, port) for port in self.ports]
        self.procs.extend(self.servers)

    def client(self, index: int):
        from harness import PageClient

        return PageClient(self.urls[index], self.urls[index])

    def event(self, **form: str) -> dict:
        return post_form(self.emulator_url + "/emulator/risc/event", form)

    def close(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()
        if self.postgres_url is None:
            return
        engine = create_engine(self.postgres_url)
        try:
            with engine.begin() as conn:
                conn.execute(text(f'DROP TABLE IF EXISTS "{self.table}"'))
        finally:
            engine.dispose()


@pytest.fixture
def risc_deployment(tmp_path, postgres_url, redis_url, unique_name):
    deployment = RiscDeployment(tmp_path, postgres_url, redis_url, unique_name)
    yield deployment
    deployment.close()


async def test_register_status_and_verify_against_the_emulator(risc_deployment):
    dep = risc_deployment
    config = str(dep.config)
    bad_url = run_cli("risc", "register", "--config", config, "--url", "http://example.com/risc")
    assert bad_url.returncode == 3 and "--url" in bad_url.stderr
    registered = run_cli("risc", "register", "--config", config, "--url", dep.urls[0] + "/risc")
    assert registered.returncode == 0, registered.stderr
    assert f"registered {dep.urls[0]}/risc for 7 event types" in registered.stdout
    status = run_cli("risc", "status", "--config", config)
    assert status.returncode == 0, status.stderr
    assert "status: enabled" in status.stdout and f"receiver: {dep.urls[0]}/risc" in status.stdout
    assert "event: https://schemas.openid.net/secevent/risc/event-type/sessions-revoked" in status.stdout
    streamed = json.loads(run_cli("risc", "status", "--config", config, "--json").stdout)
    assert streamed["stream"]["delivery"]["url"] == dep.urls[0] + "/risc"
    verified = run_cli("risc", "verify", "--config", config, "--timeout", "20")
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert "verification event received by the receiver" in verified.stdout
    assert "verification received" in dep.servers[0].log()
    # The receiver down: nothing arrives, a non-zero exit after the timeout.
    dep.servers[0].stop()
    timed_out = run_cli("risc", "verify", "--config", config, "--timeout", "1.5")
    assert timed_out.returncode == 1 and "no verification event reached the receiver" in timed_out.stderr
    # A key Google does not know: refused.
    from tornado_signin.emulator.keys import SigningKey
    from cryptography.hazmat.primitives import serialization

    forged = json.loads(dep.service_account.read_text())
    forged["private_key"] = SigningKey.generate().private_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode()
    dep.service_account.write_text(json.dumps(forged))
    refused = run_cli("risc", "status", "--config", config)
    assert refused.returncode == 6 and "Unauthorized" in refused.stderr and "PRIVATE KEY" not in refused.stderr
    dep.service_account.unlink()
    missing = run_cli("risc", "status", "--config", config)
    assert missing.returncode == 3 and "risc.service_account_file" in missing.stderr


async def test_security_events_sign_out_tabs_on_both_processes_and_block_until_enabled(risc_deployment):
    dep = risc_deployment
    assert run_cli("risc", "register", "--config", str(dep.config), "--url", dep.urls[1] + "/risc").returncode == 0
    tabs, sockets = [], []
    for index in (0, 1):
        tab = dep.client(index)
        body = json_body(await tab.post_code(mint(dep.emulator_url, "alice@example.com")))
        assert body["status"] == "signed_in", body
        socket = await tab.socket()
        assert (await read_frame(socket))["type"] == "signed_in"
        tabs.append(tab)
        sockets.append(socket)
    other = dep.client(0)
    assert (await other.post_code(mint(dep.emulator_url, "bob@gmail.com"))).code == 200
    sub = body["user"]["sub"]

    summary = dep.event(type="sessions-revoked", email="alice@example.com")
    assert [d["statuses"] for d in summary["deliveries"]] == [[202]]
    for socket in sockets:  # both tabs, on both processes, are told live
        assert await read_frame(socket) == {"type": "signed_out"}
    assert [(await tab.fetch("/api/scopes")).code for tab in tabs] == [401, 401]
    assert (await other.fetch("/api/scopes")).code == 200  # another user is untouched

    # account-disabled (hijacking): sign-in refused on either process until account-enabled.
    assert dep.event(type="account-disabled", email="alice@example.com", reason="hijacking")["deliveries"]
    for index in (0, 1):
        refused = await dep.client(index).post_code(mint(dep.emulator_url, "alice@example.com"))
        assert refused.code == 403 and without_state(json_body(refused)) == {"error": "sign-in blocked"}
    users = json.loads(run_cli("users", "--config", str(dep.config), "--json").stdout)
    (alice,) = [u for u in users if u["sub"] == sub]
    assert alice["signin_blocked"] is True and alice["security_event"] == "account-disabled:hijacking"
    assert alice["state"] == "blocked"
    assert dep.event(type="account-enabled", email="alice@example.com")["deliveries"]
    back = await dep.client(0).post_code(mint(dep.emulator_url, "alice@example.com"))
    assert back.code == 200, back.body
    metrics = (await dep.client(1).fetch("/metrics")).body.decode()
    assert 'signin_risc_events_total{event="account-disabled",outcome="applied"} 1' in metrics
