"""The demo and the CLI together, as a newcomer runs them: the printed --config line, restarts.

``tornado-signin serve`` (demo mode) runs in a temporary folder as a real
process. The test signs a user in the way the page does (a code minted by the
emulator's ``POST /emulator/code``, posted to the app's ``/storeauthcode``),
runs the exact CLI line the demo printed, kills the demo with SIGKILL,
starts it again, and the stored user's refresh token still works.
"""

from __future__ import annotations

import json
import os
import select
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
import yaml

from procs import free_port, wait_port
from tornado_signin.demo import DEMO_CLIENT_ID, DEMO_CONFIG_FILE, DEMO_EMULATOR_DIR, DEMO_STORE_FILE

BIN = str(Path(sys.executable).parent)
ENV = {**os.environ, "PATH": BIN + os.pathsep + os.environ.get("PATH", "")}
ENV.pop("TORNADO_SIGNIN_CONFIG", None)
HINT = "the CLI reaches this demo with: "


class Demo:
    """One ``tornado-signin serve`` process in ``folder``; ``cli_line`` is what it printed for the CLI."""

    def __init__(self, folder: Path, port: int, emulator_port: int) -> None:
        self.app_url = f"http://127.0.0.1:{port}"
        self.emulator_url = f"http://127.0.0.1:{emulator_port}"
        self.log = open(folder / "demo.log", "ab")
        self.proc = subprocess.Popen(
            ["tornado-signin", "serve", "--port", str(port), "--emulator-port", str(emulator_port)],
            cwd=folder, env=ENV, stdout=subprocess.PIPE, stderr=self.log, start_new_session=True,
        )
        self.cli_line = self._read_hint()
        wait_port(port, proc=self.proc)

    def _read_hint(self, timeout: float = 30.0) -> str:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        seen = b""
        while time.monotonic() < deadline:
            for line in seen.decode(errors="replace").splitlines():
                if HINT in line:
                    return line.split(HINT, 1)[1].strip()
            ready, _, _ = select.select([fd], [], [], 0.5)
            if ready:
                chunk = os.read(fd, 65536)  # unbuffered: select sees every byte the demo wrote
                if not chunk:
                    break
                seen += chunk
            elif self.proc.poll() is not None:
                break
        raise AssertionError(f"the demo printed no CLI line: {seen!r}")

    def kill(self) -> None:
        """SIGKILL the demo's process group (its own session): nothing gets to flush."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)
        if self.proc.stdout:
            self.proc.stdout.close()
        self.log.close()

    def sign_in(self, email: str, **form: str) -> dict:
        """Sign ``email`` in as the page would: state, a freshly consented code (``form``: more of its fields), the code POST."""
        page = requests.Session()
        state = page.get(self.app_url + "/state", timeout=10).json()["state"]
        code = requests.post(self.emulator_url + "/emulator/code", timeout=10,
                             data={"client_id": DEMO_CLIENT_ID, "email": email, **form}).json()["code"]
        response = page.post(self.app_url + "/storeauthcode", data=code.encode(), timeout=20, headers={
            "Content-Type": "application/octet-stream", "X-Requested-With": "XMLHttpRequest",
            "Origin": self.app_url, "X-Signin-State": state})
        assert response.status_code == 200, response.text
        return response.json()["user"]

    def settings(self, **switches: object) -> None:
        response = requests.post(self.emulator_url + "/emulator/settings", json=switches, timeout=10)
        assert response.status_code == 200, response.text


def run(line: str, **env: str) -> subprocess.CompletedProcess:
    """Run a shell-quoted command line (as the user would paste it) with the venv's scripts on PATH."""
    return subprocess.run(shlex.split(line), capture_output=True, text=True, env={**ENV, **env}, timeout=60)


@pytest.fixture
def demo_folder(tmp_path):
    demos: list[Demo] = []
    ports = (free_port(), free_port())

    def start() -> Demo:
        demo = Demo(tmp_path, *ports)
        demos.append(demo)
        return demo

    yield tmp_path, start
    for demo in demos:
        demo.kill()


@pytest.mark.slow
def test_printed_cli_line_works_and_survives_restarts(demo_folder):
    folder, start = demo_folder
    demo = start()
    config_path = folder / DEMO_CONFIG_FILE
    assert demo.cli_line == f"tornado-signin users --config {shlex.quote(str(config_path))}"
    # The file holds the demo's secrets: never readable by others.
    assert stat.S_IMODE(config_path.stat().st_mode) == 0o600
    assert stat.S_IMODE((folder / DEMO_EMULATOR_DIR).stat().st_mode) == 0o700

    # Short-lived access tokens while signing in, so the CLI must refresh after the restart.
    demo.settings(access_token_ttl=2)
    user = demo.sign_in("alice@example.com")
    demo.settings(access_token_ttl=3600)

    listed = run(demo.cli_line)
    assert listed.returncode == 0, listed.stderr
    rows = [line.split() for line in listed.stdout.splitlines()[1:]]
    assert [(row[0], row[1], row[2]) for row in rows] == [(user["sub"], "alice@example.com", "active")]
    # The same, with the config named by the environment instead.
    from_env = run("tornado-signin users", TORNADO_SIGNIN_CONFIG=str(config_path))
    assert (from_env.returncode, from_env.stdout) == (0, listed.stdout), from_env.stderr

    demo.kill()
    time.sleep(2.1)  # the stored access token is now expired
    demo = start()
    assert demo.cli_line == f"tornado-signin users --config {shlex.quote(str(config_path))}"
    called = run(f"tornado-signin call --config {shlex.quote(str(config_path))} alice@example.com")
    assert called.returncode == 0, called.stderr
    assert json.loads(called.stdout)["email"] == "alice@example.com"
    stats = requests.get(demo.emulator_url + "/emulator/stats", timeout=10).json()
    assert stats.get("token.refresh_token") == 1  # a refresh, answered by the restarted emulator
    # Users signed in after a restart work too, and the config names the running ports.
    run_env = run("tornado-signin token bob@gmail.com", TORNADO_SIGNIN_CONFIG=str(config_path))
    assert run_env.returncode != 0 and "Traceback" not in run_env.stderr  # not signed in yet
    demo.sign_in("bob@gmail.com")
    token = run("tornado-signin token bob@gmail.com", TORNADO_SIGNIN_CONFIG=str(config_path))
    assert token.returncode == 0 and token.stdout.strip().startswith("ya29."), token.stderr
    assert yaml.safe_load(config_path.read_text())["google"]["endpoints"]["token_uri"] == demo.emulator_url + "/token"

    # Without the emulator's state folder, the same restart loses the grants: what the folder is for.
    demo.kill()
    shutil.rmtree(folder / DEMO_EMULATOR_DIR)
    demo = start()
    stored = json.loads(run(demo.cli_line.replace(" users ", " users --json ")).stdout)
    assert {u["email"] for u in stored} == {"alice@example.com", "bob@gmail.com"}
    lost = run(f"tornado-signin call --config {shlex.quote(str(config_path))} alice@example.com")
    assert lost.returncode != 0 and "Traceback" not in lost.stderr


def test_check_passes_against_a_demo_that_just_started(demo_folder):
    """The demo starts its services as `serve` does: its store exists (table created) before any sign-in, so
    the operator's first `check` against it passes without --create-table."""
    folder, start = demo_folder
    demo = start()
    result = run(demo.cli_line.replace(" users ", " check ", 1))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "store (sql): ok" in result.stdout and "FAILED" not in result.stdout
    assert (folder / DEMO_STORE_FILE).exists()


def test_commands_take_config_from_the_environment(tmp_path):
    missing = run("tornado-signin users")
    assert missing.returncode == 2 and "TORNADO_SIGNIN_CONFIG" in missing.stderr
    # serve and emulator too: with the variable set, serve is not demo mode.
    for command in ("users", "check", "rotate-keys", "token alice@example.com", "call alice@example.com",
                    "revoke alice@example.com", "sessions alice@example.com", "serve", "emulator"):
        result = run(f"tornado-signin {command}", TORNADO_SIGNIN_CONFIG=str(tmp_path / "nope.yaml"))
        assert result.returncode == 3, (command, result.stdout, result.stderr)
        assert f"TORNADO_SIGNIN_CONFIG={tmp_path / 'nope.yaml'}" in result.stdout + result.stderr, command
    # An explicit --config wins over the environment.
    explicit = run(f"tornado-signin users --config {tmp_path / 'other.yaml'}",
                   TORNADO_SIGNIN_CONFIG=str(tmp_path / "nope.yaml"))
    assert explicit.returncode == 3 and "other.yaml" in explicit.stderr and "nope.yaml" not in explicit.stderr


@pytest.mark.slow
def test_printed_cli_line_works_when_the_script_is_not_on_path(tmp_path):
    # ./dev demo runs .venv/bin/tornado-signin by a relative path, with the user's PATH, which lacks .venv/bin.
    script = os.path.relpath(Path(BIN) / "tornado-signin", tmp_path)
    bare_env = {**ENV, "PATH": os.pathsep.join(("/usr/local/bin", "/usr/bin", "/bin"))}
    assert shutil.which("tornado-signin", path=bare_env["PATH"]) is None
    port, emulator_port = free_port(), free_port()
    log = open(tmp_path / "demo.log", "ab")
    proc = subprocess.Popen([script, "serve", "--port", str(port), "--emulator-port", str(emulator_port)],
                            cwd=tmp_path, env=bare_env, stdout=subprocess.PIPE, stderr=log, start_new_session=True)
    try:
        assert proc.stdout is not None
        line = ""
        deadline = time.monotonic() + 30
        while HINT not in line and time.monotonic() < deadline and proc.poll() is None:
            line = proc.stdout.readline().decode(errors="replace")
        assert HINT in line, line
        printed = line.split(HINT, 1)[1].strip()
        # Pasted into a shell with the same PATH, from another folder, it works as printed.
        listed = subprocess.run(printed, shell=True, capture_output=True, text=True, env=bare_env, cwd="/",
                                timeout=60)
        assert listed.returncode == 0, (printed, listed.stdout, listed.stderr)
        assert shlex.split(printed)[0] == str(Path(BIN).absolute() / "tornado-signin")
        # The config file's own comment shows the same command.
        assert f"# Use it from the CLI: {printed}\n" in (tmp_path / DEMO_CONFIG_FILE).read_text()
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
        log.close()


@pytest.mark.parametrize("processes", ["2", "0"])
def test_the_demo_refuses_several_processes_instead_of_ignoring_the_option(tmp_path, processes):
    result = subprocess.run(["tornado-signin", "serve", "--port", str(free_port()), "--emulator-port",
                             str(free_port()), "--processes", processes],
                            cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=15)
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == ("tornado-signin: --processes: the demo runs in one process (several need a shared hub: "
                             "serve --config FILE with hub.backend: redis, see Deployment in the README)\n")
    assert not (tmp_path / DEMO_CONFIG_FILE).exists()


class _Listening(Exception):
    pass


def test_the_demo_writes_its_secrets_and_config_before_either_port_answers(tmp_path, monkeypatch):
    """Whoever sees a demo port answer (a test, a script, the browser) finds its files: each is written while
    neither port accepts a connection yet."""
    import socket

    import tornado_signin.demo as demo_module
    from tornado_signin.server import serve_demo

    port, emulator_port = free_port(), free_port()
    written = []

    def refused(what: str) -> None:
        for p in (port, emulator_port):
            with socket.socket() as probe:
                assert probe.connect_ex(("127.0.0.1", p)) != 0, f"port {p} answered before the {what} was written"
        written.append(what)

    real_secrets, real_config = demo_module.write_secret_file, demo_module.write_demo_config
    monkeypatch.setattr(demo_module, "write_secret_file",
                        lambda *a, **kw: (refused("secrets file"), real_secrets(*a, **kw))[1])
    monkeypatch.setattr(demo_module, "write_demo_config",
                        lambda *a, **kw: (refused("config file"), real_config(*a, **kw))[1])
    announced = []

    def on_listening(app_url: str, emulator_url: str, config_path: Path) -> None:
        announced.append(config_path)
        raise _Listening

    with pytest.raises(_Listening):
        serve_demo(host="127.0.0.1", port=port, emulator_port=emulator_port, folder=tmp_path,
                   on_listening=on_listening)
    assert written == ["secrets file", "config file", "secrets file"]  # the last: the service-account key
    assert announced == [tmp_path / DEMO_CONFIG_FILE]
    for name in (".tornado-signin-dev.json", DEMO_CONFIG_FILE):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o600


def test_a_demo_that_cannot_listen_leaves_the_previous_config_file(tmp_path):
    """The config file is written before the ports are taken; a port in use puts the previous one back."""
    import socket

    previous = "# the config of the demo that runs here\n"
    (tmp_path / DEMO_CONFIG_FILE).write_text(previous)
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        busy = holder.getsockname()[1]
        result = subprocess.run(["tornado-signin", "serve", "--port", str(busy), "--emulator-port", str(free_port())],
                                cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=30)
    assert result.returncode != 0 and "already in use" in result.stderr, result.stderr
    assert (tmp_path / DEMO_CONFIG_FILE).read_text() == previous
    (tmp_path / DEMO_CONFIG_FILE).unlink()
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        busy = holder.getsockname()[1]
        result = subprocess.run(["tornado-signin", "serve", "--port", str(free_port()), "--emulator-port", str(busy)],
                                cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=30)
    assert result.returncode != 0 and "already in use" in result.stderr, result.stderr
    assert not (tmp_path / DEMO_CONFIG_FILE).exists(), "a demo that did not start left a config file naming it"


@pytest.mark.parametrize("option, value", [("--emulator-port", "18999"), ("--client-library", "gapi")])
def test_serve_with_a_config_refuses_the_demo_options_instead_of_ignoring_them(tmp_path, option, value):
    config = tmp_path / "config.yaml"  # never read: the option is refused first
    result = subprocess.run(["tornado-signin", "serve", "--config", str(config), "--port", str(free_port()),
                             option, value], cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=15)
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == (f"tornado-signin: {option} is for the demo (serve without --config); with --config set "
                             "google.endpoints and google.client_library in the config\n")


@pytest.mark.slow
def test_token_after_time_limited_access_ended_says_so(demo_folder):
    folder, start = demo_folder
    demo = start()
    config = shlex.quote(str(folder / DEMO_CONFIG_FILE))
    demo.settings(access_token_ttl=2)
    demo.sign_in("carol@example.org", prompt="consent", refresh_token_ttl="2")
    demo.settings(access_token_ttl=3600)
    time.sleep(2.2)
    for command in ("token", "call"):
        ended = run(f"tornado-signin {command} --config {config} carol@example.org")
        assert (ended.returncode, ended.stdout) == (9, ""), ended.stderr
        assert ended.stderr == "tornado-signin: user 'carol@example.org': the user's time-limited access has ended: " \
                               "the user must sign in with consent again\n"


@pytest.mark.slow
def test_a_second_demo_in_the_same_folder_leaves_the_first_ones_config(demo_folder):
    folder, start = demo_folder
    first = start()
    config_path = folder / DEMO_CONFIG_FILE
    before = config_path.read_text()
    second = subprocess.run(["tornado-signin", "serve", "--port", str(free_port()), "--emulator-port", str(free_port())],
                            cwd=folder, env=ENV, capture_output=True, text=True, timeout=30)
    assert second.returncode == 3 and "is in use by another emulator" in second.stderr, second.stderr
    # The file still names the running demo's ports: its printed CLI line keeps working.
    assert config_path.read_text() == before
    assert run(first.cli_line).returncode == 0
    # And the running demo's emulator still pushes security events to its receiver.
    first.sign_in("alice@example.com")
    pushed = requests.post(first.emulator_url + "/emulator/risc/event", timeout=10,
                           data={"type": "sessions-revoked", "email": "alice@example.com"})
    assert pushed.status_code == 200 and pushed.json()["deliveries"][0]["statuses"] == [202], pushed.text


def test_risc_status_works_against_the_demo_as_printed(demo_folder):
    """The demo's config names its emulator's service-account key, so `risc status` answers (and after a restart)."""
    folder, start = demo_folder
    demo = start()
    config = shlex.quote(str(folder / DEMO_CONFIG_FILE))
    for _ in range(2):
        status = run(f"tornado-signin risc status --config {config}")
        assert status.returncode == 0, status.stderr
        assert "status: enabled" in status.stdout
        assert f"receiver: {demo.app_url}/risc" in status.stdout
        key = folder / DEMO_EMULATOR_DIR / "service_account.json"
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
        demo.kill()
        demo = start()
