"""SIGTERM the moment a server announces itself: it drains and exits 0, it is not killed.

A process manager may signal as soon as it reads the "listening" line. The
child below sends itself SIGTERM from inside the announcement (the log line,
or the printed line of the demo and the emulator), so the signal arrives at
the earliest moment a reader could send it: before any handler installed
after the announcement. The same child reports the garbage collector's
settings at that moment: ``serve`` has settled it
(:func:`~tornado_signin.server.settle_collector`) before it announces itself.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from harness import CLIENT_ID, CLIENT_SECRET
from procs import free_port
from tornado_signin.crypto import generate_key
from tornado_signin.server import GC_YOUNG_THRESHOLD

pytestmark = pytest.mark.timeout(90)

ENV = {"TORNADO_SIGNIN_COOKIE_SECRET": "c" * 40, "TORNADO_SIGNIN_KEY": generate_key()}

# Runs the CLI's main() with a tripwire on the announcement: SIGTERM to itself, once.
_CHILD = r"""
import gc, logging, os, signal, sys

from tornado_signin.cli import main

MARKS = ("listening on", "tornado-signin demo: open")
fired = False


def trip(text):
    global fired
    if not fired and any(mark in text for mark in MARKS):
        fired = True
        sys.__stderr__.write(f"collector: threshold {gc.get_threshold()[0]}, frozen {gc.get_freeze_count()}\n")
        os.kill(os.getpid(), signal.SIGTERM)


class Tripwire(logging.Handler):
    def emit(self, record):
        trip(record.getMessage())


class Stdout:
    def __init__(self, inner):
        self.inner = inner

    def write(self, text):
        written = self.inner.write(text)
        self.inner.flush()
        trip(text)
        return written

    def __getattr__(self, name):
        return getattr(self.inner, name)


logging.getLogger("tornado_signin").addHandler(Tripwire())
sys.stdout = Stdout(sys.stdout)
sys.exit(main(sys.argv[1:]))
"""


def run_child(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("TORNADO_SIGNIN_", "GOOGLE_"))}
    return subprocess.run([sys.executable, "-c", _CHILD, *args], capture_output=True, text=True,
                          env={**base, **ENV}, cwd=cwd, timeout=60)


def dev_config(folder: Path) -> Path:
    # Google is never reached: the server only starts and stops.
    base_url = f"http://127.0.0.1:{free_port()}"
    document = {
        "development": True,
        "server": {"cookie_secret": {"$env": "TORNADO_SIGNIN_COOKIE_SECRET"}},
        "google": {"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET,
                   "endpoints": {"auth_uri": f"{base_url}/o/oauth2/v2/auth", "token_uri": f"{base_url}/token",
                                 "certs_uri": f"{base_url}/oauth2/v1/certs"}},
        "store": {"backend": "sql", "url": f"sqlite:///{folder / 'tokens.sqlite3'}",
                  "encryption": {"keys": [{"$env": "TORNADO_SIGNIN_KEY"}]}},
    }
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


@pytest.mark.parametrize("command", ["serve", "demo", "emulator"])
def test_sigterm_right_after_the_listening_line_is_a_clean_exit(tmp_path, command):
    if command == "serve":
        args = ["serve", "--config", str(dev_config(tmp_path)), "--port", str(free_port())]
    elif command == "demo":
        args = ["serve", "--port", str(free_port()), "--emulator-port", str(free_port())]
    else:
        args = ["emulator", "--port", str(free_port())]
    result = run_child(args, tmp_path)
    output = result.stdout + result.stderr
    assert "listening on" in output or "demo: open" in output, output
    assert result.returncode == 0, (result.returncode, output)
    assert "shut down in" in output, output
    if command == "serve":
        settled = re.search(r"collector: threshold (\d+), frozen (\d+)", output)
        assert settled is not None, output
        assert int(settled.group(1)) == GC_YOUNG_THRESHOLD and int(settled.group(2)) > 10_000, output
