"""Demo mode: the app and the Google emulator in one process, no Google project, no network.

``tornado-signin serve`` without ``--config`` lands here. Secrets the demo
needs (cookie secret, encryption key, the emulator client's secret) are
generated once into a 0600 file in the working directory and reused, so a
restarted demo still decrypts its SQLite store; the emulator keeps its grants,
tokens and keys in ``.tornado-signin-emulator/`` beside them, so the stored
users' refresh tokens still work after a restart.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shlex
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from .config import Config, config_from_dict
from .crypto import generate_key

__all__ = ["DEMO_CLIENT_ID", "DEV_SECRETS_FILE", "DEMO_STORE_FILE", "DEMO_EMULATOR_DIR", "DEMO_CONFIG_FILE",
           "DEMO_SERVICE_ACCOUNT_FILE", "load_dev_secrets", "demo_config", "demo_config_document", "write_demo_config", "demo_config_written", "cli_command"]

DEMO_CLIENT_ID = "tornado-signin-demo.apps.googleusercontent.com"
DEV_SECRETS_FILE = ".tornado-signin-dev.json"
DEMO_STORE_FILE = "tornado-signin-demo.sqlite3"
#: The demo emulator's state folder (grants, tokens, keys), inside the demo folder.
DEMO_EMULATOR_DIR = ".tornado-signin-emulator"
#: The demo's effective config, for the CLI (``--config``), inside the demo folder.
DEMO_CONFIG_FILE = "tornado-signin-demo.yaml"
#: The emulator's development service-account key (0600), inside DEMO_EMULATOR_DIR: ``risc status|verify|register``.
DEMO_SERVICE_ACCOUNT_FILE = "service_account.json"


def write_secret_file(path: Path, document: dict[str, Any]) -> None:
    """Write ``document`` as JSON to ``path``: created 0600, replaced atomically."""
    _write_private(path, json.dumps(document, indent=2))


def _write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path``: created 0600, fsynced, replaced atomically."""
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", dir=str(path.parent))
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def load_dev_secrets(folder: Path) -> dict[str, str]:
    """Return the demo's secrets from ``folder``, generating the file on first use."""
    path = folder / DEV_SECRETS_FILE
    if path.exists():
        document = json.loads(path.read_text(encoding="utf-8"))
        if all(isinstance(document.get(k), str) for k in ("cookie_secret", "encryption_key", "client_secret")):
            return document
    document = {
        "cookie_secret": secrets.token_urlsafe(48),
        "encryption_key": generate_key(),
        "client_secret": "GOCSPX-demo-" + secrets.token_urlsafe(18),
    }
    write_secret_file(path, document)
    return document


def demo_config_document(*, folder: Path, host: str, port: int, emulator_url: str, client_library: str = "gis",
                         store: dict[str, Any] | None = None) -> dict[str, Any]:
    """Return the config document of demo mode (secrets in clear, from the dev secrets file)."""
    dev = load_dev_secrets(folder)
    script = "/gsi/client" if client_library == "gis" else "/js/platform.js"
    return {
        "development": True,
        "server": {"host": host, "port": port, "cookie_secret": dev["cookie_secret"]},
        "google": {
            "client_id": DEMO_CLIENT_ID,
            "client_secret": dev["client_secret"],
            "client_library": client_library,
            "client_script_url": emulator_url + script,
            "endpoints": {
                "auth_uri": emulator_url + "/o/oauth2/v2/auth",
                "token_uri": emulator_url + "/token",
                "certs_uri": emulator_url + "/oauth2/v1/certs",
            },
        },
        "store": {
            **(store or {"backend": "sql", "url": f"sqlite:///{folder / DEMO_STORE_FILE}"}),
            "encryption": {"keys": [dev["encryption_key"]]},
        },
        # Cross-Account Protection: the emulator's stream is pointed at this receiver at start-up.
        "risc": {
            "enabled": True,
            "configuration_url": emulator_url + "/.well-known/risc-configuration",
            "management_url": emulator_url + "/v1beta",
            # Written by the demo at start-up (the emulator's key, as Google's console would hand it out).
            "service_account_file": str(folder / DEMO_EMULATOR_DIR / DEMO_SERVICE_ACCOUNT_FILE),
        },
    }


def demo_config(*, folder: Path, host: str, port: int, emulator_url: str, client_library: str = "gis",
                store: dict[str, Any] | None = None) -> Config:
    """Return the Config of demo mode: development on, Google played by the emulator at ``emulator_url``."""
    document = demo_config_document(folder=folder, host=host, port=port, emulator_url=emulator_url,
                                    client_library=client_library, store=store)
    return config_from_dict(document, base_dir=folder, environ={})


def write_demo_config(folder: Path, document: dict[str, Any], name: str = DEMO_CONFIG_FILE) -> Path:
    """Write the demo's effective config ``document`` to ``folder``/``name``; return its path.

    The CLI loads it as any config (``tornado-signin users --config PATH``).
    It holds the demo's generated secrets, so, like the dev secrets file,
    it is created 0600 and replaced atomically; rewritten at every start so
    it always names the ports the demo runs on.
    """
    path = folder / name
    header = (
        "# The effective config of the tornado-signin demo in this folder, written at each start.\n"
        f"# 0600: it holds the demo's generated secrets (also in {DEV_SECRETS_FILE}).\n"
        f"# Use it from the CLI: {cli_command()} users --config {shlex.quote(str(path))}\n"
        "#   (or export TORNADO_SIGNIN_CONFIG=<this file>; the demo must run for token refreshes).\n"
    )
    _write_private(path, header + yaml.safe_dump(document, sort_keys=False))
    return path


@contextlib.contextmanager
def demo_config_written(folder: Path, document: dict[str, Any], name: str = DEMO_CONFIG_FILE) -> Iterator[Path]:
    """Write the demo's config as :func:`write_demo_config` does; yield its path.

    For a demo that writes its files before it listens (so that whoever sees
    its ports answer finds them): an error in the block (a port in use) puts
    back what the file held before, or removes it, so the file never names a
    demo that did not start.
    """
    path = folder / name
    try:
        previous: str | None = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        previous = None
    write_demo_config(folder, document, name)
    try:
        yield path
    except BaseException:
        if previous is None:
            path.unlink(missing_ok=True)
        else:
            _write_private(path, previous)
        raise


def cli_command() -> str:
    """Return the shell words that run this CLI again from the user's shell, quoted for pasting.

    ``tornado-signin`` when that name on PATH is the running console script; else
    the script's absolute path (``./dev demo`` runs ``.venv/bin/tornado-signin``,
    which is not on PATH); ``python -m tornado_signin.cli`` when no script runs.
    """
    script = Path(sys.argv[0]) if sys.argv and sys.argv[0] else None
    if script is None or script.suffix == ".py" or not script.is_file():
        return f"{shlex.quote(sys.executable)} -m tornado_signin.cli"
    absolute = os.path.abspath(script)
    on_path = shutil.which("tornado-signin")
    if on_path is not None and os.path.samefile(on_path, absolute):
        return "tornado-signin"
    return shlex.quote(absolute)
