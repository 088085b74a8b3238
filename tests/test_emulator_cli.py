"""``tornado-signin emulator`` as the README runs it, in a subprocess (issue 12 item 6).

The emulator stands in for Google only in development: with a production
config it refuses to start, and it never serves a client secret it did not
generate (an operator's config secret stays unserved even in development).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import requests
import yaml
from tornado.testing import bind_unused_port

from tornado_signin.crypto import generate_key

CLI = str(Path(sys.executable).with_name("tornado-signin"))
CLIENT_ID = "prod-client.apps.googleusercontent.com"
SECRET = "GOCSPX-the-operators-real-secret"


def write_config(folder: Path, *, development: bool) -> Path:
    document = {
        "development": development,
        "server": {"cookie_secret": {"$env": "TS_COOKIE"}, "public_origin": "https://app.example.com"},
        "google": {"client_id": CLIENT_ID, "client_secret": {"$env": "TS_CLIENT_SECRET"}},
        "store": {"backend": "sql", "url": f"sqlite:///{folder / 'tokens.sqlite3'}",
                  "encryption": {"keys": [{"$env": "TS_KEY"}]}},
    }
    path = folder / ("dev.yaml" if development else "prod.yaml")
    path.write_text(yaml.safe_dump(document))
    return path


def environment() -> dict[str, str]:
    return {**os.environ, "TS_COOKIE": "c" * 48, "TS_CLIENT_SECRET": SECRET, "TS_KEY": generate_key()}


def test_emulator_refuses_a_production_config(tmp_path):
    """development: false -> one clear line on stderr naming the file, exit code 3 (config error), nothing served."""
    config = write_config(tmp_path, development=False)
    sock, port = bind_unused_port()
    sock.close()
    result = subprocess.run([CLI, "emulator", "--config", str(config), "--port", str(port)], capture_output=True,
                            text=True, env=environment(), cwd=tmp_path, timeout=60)
    assert result.returncode == 3, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "development: false" in lines[0] and str(config) in lines[0], result.stderr
    assert "listening" not in result.stdout and SECRET not in result.stdout + result.stderr
    # The same config named by TORNADO_SIGNIN_CONFIG instead of --config.
    result = subprocess.run([CLI, "emulator", "--port", str(port)], capture_output=True, text=True,
                            env={**environment(), "TORNADO_SIGNIN_CONFIG": str(config)}, cwd=tmp_path, timeout=60)
    assert result.returncode == 3 and "development: false" in result.stderr, (result.stdout, result.stderr)


def test_emulator_never_serves_the_configs_secret(tmp_path):
    """With a development config the emulator runs, but /client_secret.json refuses the operator's secret (403)."""
    config = write_config(tmp_path, development=True)
    sock, port = bind_unused_port()
    sock.close()
    process = subprocess.Popen([CLI, "emulator", "--config", str(config), "--port", str(port)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environment(),
                               cwd=tmp_path)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                requests.get(base + "/.well-known/openid-configuration", timeout=2)
                break
            except requests.ConnectionError:
                assert process.poll() is None and time.monotonic() < deadline, process.stderr.read()
                time.sleep(0.2)
        answer = requests.get(base + "/client_secret.json", timeout=10)
        assert answer.status_code == 403 and SECRET not in answer.text
    finally:
        process.terminate()
        out, err = process.communicate(timeout=30)
    assert SECRET not in out + err
