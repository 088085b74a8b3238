"""Real processes for the deployment tests: `tornado-signin serve` instances, the emulator, Redis, nginx.

Everything listens on 127.0.0.1 on free ports, logs into the test's tmp
folder, and is stopped (by its own pid) when the test ends. Secrets reach the
servers through the environment, as in production.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from harness import CLIENT_ID, CLIENT_SECRET, COOKIE_SECRET, ENCRYPTION_KEY

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
ENV = {
    "TS_COOKIE_SECRET": COOKIE_SECRET,
    "TS_KEY": ENCRYPTION_KEY,
    "TS_CLIENT_SECRET": CLIENT_SECRET,
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 15.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {port} after {timeout}s")


def write_config(tmp: Path, *, name: str, emulator_url: str, origins: list[str], store: dict[str, Any],
                 hub: dict[str, Any] | None = None, limits: dict[str, Any] | None = None, **extra: Any) -> Path:
    """Write a development config (secrets by $env) and return its path."""
    document: dict[str, Any] = {
        "development": True,
        "server": {"cookie_secret": {"$env": "TS_COOKIE_SECRET"}, "allowed_origins": origins},
        "google": {
            "client_id": CLIENT_ID,
            "client_secret": {"$env": "TS_CLIENT_SECRET"},
            "client_script_url": emulator_url + "/gsi/client",
            "endpoints": {
                "auth_uri": emulator_url + "/o/oauth2/v2/auth",
                "token_uri": emulator_url + "/token",
                "certs_uri": emulator_url + "/oauth2/v1/certs",
            },
            "request_timeout": 5.0,
        },
        "store": {**store, "encryption": {"keys": [{"$env": "TS_KEY"}]}},
        "hub": hub or {"backend": "memory"},
        # Every test shares 127.0.0.1: the per-client budgets are off unless a test sets one.
        "limits": {"code_posts_per_minute": 0, "state_requests_per_minute": 0, "signout_posts_per_minute": 0,
                   "disconnect_posts_per_minute": 0, "socket_handshakes_per_minute": 0, **(limits or {})},
        **extra,
    }
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


class Proc:
    """One child process with its log file."""

    def __init__(self, argv: list[str], log: Path, *, env: dict[str, str] | None = None,
                 preexec_fn: Any = None) -> None:
        self.log_path = log
        self.log_file = open(log, "wb")
        self.proc = subprocess.Popen(argv, stdout=self.log_file, stderr=subprocess.STDOUT, cwd=ROOT,
                                     env={**os.environ, **ENV, **(env or {})}, start_new_session=True,
                                     preexec_fn=preexec_fn)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        self.log_file.flush()
        return self.log_path.read_text(errors="replace")

    def signal(self, sig: int) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, sig)

    def wait(self, timeout: float) -> int:
        return self.proc.wait(timeout)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                # The group holds forked workers too; it is this process's own session.
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self.log_file.close()


def _wait_or_stop(proc: Proc, port: int) -> None:
    """Wait for ``proc`` to listen on ``port``; stop it if it never does (no process outlives its test)."""
    try:
        wait_port(port, proc=proc.proc)
    except BaseException:
        proc.stop()
        raise


def start_emulator(tmp: Path, config: Path, port: int) -> Proc:
    proc = Proc([PYTHON, "-m", "tornado_signin.cli", "emulator", "--config", str(config), "--port", str(port)],
                tmp / f"emulator-{port}.log")
    _wait_or_stop(proc, port)
    return proc


def start_server(tmp: Path, config: Path, port: int, *extra: str, preexec_fn: Any = None) -> Proc:
    """Start `tornado-signin serve`; ``preexec_fn`` runs in the child before exec (e.g. to lower a limit)."""
    proc = Proc([PYTHON, "-m", "tornado_signin.cli", "serve", "--config", str(config), "--port", str(port), *extra],
                tmp / f"serve-{port}.log", preexec_fn=preexec_fn)
    _wait_or_stop(proc, port)
    return proc


def start_redis(port: int, tmp: Path) -> Proc:
    proc = Proc(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                 "--daemonize", "no"], tmp / f"redis-{port}.log")
    _wait_or_stop(proc, port)
    return proc


def mint(emulator_url: str, email: str = "alice@example.com", *, consent: bool = True) -> str:
    """Mint a one-time code at the emulator's test-only endpoint."""
    form = {"client_id": CLIENT_ID, "email": email, "scope": "openid email profile"}
    if consent:
        form["prompt"] = "consent"
    request = urllib.request.Request(emulator_url + "/emulator/code", data=urllib.parse.urlencode(form).encode(),
                                     method="POST")
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)["code"]


def get(url: str, timeout: float = 5.0) -> tuple[int, bytes, dict[str, str]]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read(), dict(response.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), dict(exc.headers)
