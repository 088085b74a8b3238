"""Shared fixtures: the real services of this machine, and the CI rule for them.

A test that needs PostgreSQL, MariaDB or Redis skips with a clear reason when
the service is down outside CI, and fails when ``CI=true``: CI must never pass
by skipping what it was meant to check.
"""

from __future__ import annotations

import os
import socket
import uuid
from pathlib import Path

import pytest

IN_CI = os.environ.get("CI", "").lower() == "true"

POSTGRES_URL = os.environ.get("TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
MARIADB_URL = os.environ.get("TEST_MARIADB_URL", "mysql+pymysql://root@127.0.0.1:3306/test")
REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


#: The variables that send KeepAliveClient (and libcurl, requests, pip …) through a proxy.
PROXY_VARIABLES = ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY",
                   "no_proxy", "NO_PROXY")
# Also gone from this process's environment before any test module is imported: several copy os.environ
# at import (``ENV = {**os.environ, …}``) for the servers and CLIs they start, and a developer's proxy
# would carry their loopback traffic (to the emulator) to it.
for _name in PROXY_VARIABLES:
    os.environ.pop(_name, None)


@pytest.fixture(autouse=True)
def no_proxy_environment(monkeypatch) -> None:
    """No proxy variable for any test unless it sets one itself (monkeypatch.setenv, undone after it).

    A test that sets one with os.environ directly would leak it into the next tests: this removes it.
    """
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def require_service(name: str, port: int) -> None:
    """Skip (outside CI) or fail (in CI) unless ``name`` listens on 127.0.0.1:``port``."""
    if _port_open("127.0.0.1", port):
        return
    message = f"{name} is not listening on 127.0.0.1:{port}"
    if IN_CI:
        pytest.fail(f"{message}; CI must start it (.ci/run)")
    pytest.skip(f"{message} (start it to run this test)")


@pytest.fixture
def postgres_url() -> str:
    """A SQLAlchemy URL of the machine's PostgreSQL ``test`` database."""
    require_service("PostgreSQL", 5432)
    return POSTGRES_URL


@pytest.fixture
def mariadb_url() -> str:
    """A SQLAlchemy URL of the machine's MariaDB ``test`` database."""
    require_service("MariaDB", 3306)
    return MARIADB_URL


@pytest.fixture
def redis_url() -> str:
    """A URL of the machine's Redis."""
    require_service("Redis", 6379)
    return REDIS_URL


@pytest.fixture
def unique_name() -> str:
    """A name no other test uses (tables, channels, keys), so tests can share servers."""
    return "t" + uuid.uuid4().hex[:12]


CHROMIUM = "/usr/bin/chromium"
#: Debian's Chromium on this machine: no sandbox as root, and nothing that reaches the network.
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]


@pytest.fixture(scope="module")
def chromium():
    """Debian's headless Chromium driven by Playwright (never `playwright install`).

    Module-scoped: Playwright's sync API runs its own event loop, which must
    not outlive the module into pytest-tornado's IOLoop tests.
    """
    if not Path(CHROMIUM).exists():
        if IN_CI:
            pytest.fail("Debian's chromium is not installed; .ci/run must install it")
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS, headless=True)
        yield browser
        browser.close()


@pytest.fixture
def clock():
    """A :class:`harness.FakeClock` for the emulator and the server (``Emulator(clock=clock)``)."""
    from harness import FakeClock

    return FakeClock()


@pytest.fixture(scope="module")
def moto_server():
    """The URL of moto's DynamoDB (and every AWS service) as a server on a free loopback port, one per module."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def no_redis(tmp_path) -> dict[str, str]:
    """An environment where ``import redis`` fails, as when the ``redis`` extra is not installed."""
    shim = tmp_path / "shim"
    (shim / "redis").mkdir(parents=True)
    (shim / "redis" / "__init__.py").write_text("raise ModuleNotFoundError(\"No module named 'redis'\", name='redis')\n")
    return {"PYTHONPATH": os.pathsep.join([str(shim), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
