"""Config mistakes as an operator meets them: `tornado-signin check` and `serve` run as subprocesses.

Each case is a file a user could write (a typo, the example with the
downloaded client_secret.json, a desktop client's file …); the test reads the
exit status, stdout and stderr the way the README documents them.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tornado_signin.crypto import generate_key

ROOT = Path(__file__).resolve().parent.parent
EXIT_CONFIG = 3
ENV = {"TORNADO_SIGNIN_COOKIE_SECRET": "c" * 40, "TORNADO_SIGNIN_KEY": generate_key()}
WEB_CLIENT = {"web": {"client_id": "1234-abc.apps.googleusercontent.com", "client_secret": "GOCSPX-from-file",
                      "project_id": "demo", "auth_uri": "https://accounts.google.com/o/oauth2/auth",
                      "token_uri": "https://oauth2.googleapis.com/token",
                      "auth_provider_x509_cert_url": "https://www.googleapis.com/oauth2/v1/certs",
                      "javascript_origins": ["https://app.example.com"]}}


def tornado_signin(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None,
                   timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run the installed ``tornado-signin`` command (the one the README shows)."""
    command = shutil.which("tornado-signin", path=str(Path(sys.executable).parent)) or "tornado-signin"
    base = {k: v for k, v in os.environ.items() if not k.startswith(("TORNADO_SIGNIN_", "GOOGLE_"))}
    return subprocess.run([command, *args], capture_output=True, text=True, env={**base, **(env or {})},
                          cwd=cwd, timeout=timeout)


def write(path: Path, document: object) -> Path:
    path.write_text(document if isinstance(document, str) else yaml.safe_dump(document, sort_keys=False))
    return path


def valid_document(folder: Path) -> dict:
    """A config that loads (no network needed to load it)."""
    return {
        "server": {"cookie_secret": {"$env": "TORNADO_SIGNIN_COOKIE_SECRET"}},
        "google": {"client_id": "1234-abc.apps.googleusercontent.com", "client_secret": "GOCSPX-x"},
        "store": {"backend": "sql", "url": f"sqlite:///{folder / 'tokens.sqlite3'}",
                  "encryption": {"keys": [{"$env": "TORNADO_SIGNIN_KEY"}]}},
    }


def example_with(folder: Path, client_secrets: object = WEB_CLIENT, edit=lambda text: text) -> Path:
    """Return config.example.yaml (edited by ``edit``) in ``folder``, with a client_secret.json beside it."""
    if client_secrets is not None:
        write(folder / "client_secret.json", client_secrets if isinstance(client_secrets, str)
              else json.dumps(client_secrets))
    return write(folder / "config.yaml", edit((ROOT / "config.example.yaml").read_text()))


# --------------------------------------------------------------------------- typos


TYPOS = [
    ("sever", lambda d: {("sever" if k == "server" else k): v for k, v in d.items()},
     "config key 'sever': unknown; did you mean 'server'?"),
    ("cookie_secert", lambda d: {**d, "server": {"cookie_secert": d["server"]["cookie_secret"]}},
     "config key 'server.cookie_secert': unknown; did you mean 'server.cookie_secret'?"),
    ("developement", lambda d: {"developement": True, **d},
     "config key 'developement': unknown; did you mean 'development'?"),
    ("memroy", lambda d: {**d, "hub": {"backend": "memroy"}},
     "config key 'hub.backend': no hub 'memroy' is installed; did you mean 'memory'? "
     "(installed in entry-point group 'tornado_signin.hubs': memory, redis)"),
    ("store backend", lambda d: {**d, "store": {**d["store"], "backend": "sqll"}},
     "config key 'store.backend': no token store 'sqll' is installed; did you mean 'sql'? "
     "(installed in entry-point group 'tornado_signin.backends': dynamodb, file, memory, sql)"),
    ("store option", lambda d: {**d, "store": {**{k: v for k, v in d["store"].items() if k != "url"},
                                               "ulr": d["store"]["url"]}},
     "config key 'store.ulr': unknown option of backend 'sql'; did you mean 'store.url'?"),
]


@pytest.mark.parametrize("name, edit, message", TYPOS, ids=[t[0] for t in TYPOS])
def test_check_reports_a_typo_first_with_the_closest_key(tmp_path, name, edit, message):
    # The environment is empty too: the typo still comes before the unset variables.
    path = write(tmp_path / "config.yaml", edit(valid_document(tmp_path)))
    result = tornado_signin("check", "--config", str(path), env={})
    assert (result.returncode, result.stdout, result.stderr) == (EXIT_CONFIG, f"config: FAILED: {message}\n", "")
    assert not (tmp_path / "tokens.sqlite3").exists()


@pytest.mark.parametrize("name, edit, message", TYPOS[:3], ids=[t[0] for t in TYPOS[:3]])
def test_serve_reports_a_typo_first_with_the_closest_key(tmp_path, name, edit, message):
    path = write(tmp_path / "config.yaml", edit(valid_document(tmp_path)))
    result = tornado_signin("serve", "--config", str(path), env=ENV)
    assert (result.returncode, result.stdout, result.stderr) == (EXIT_CONFIG, "", f"tornado-signin: {message}\n")


# --------------------------------------------------------------------------- switching to real Google


def test_the_example_with_the_downloaded_file_takes_everything_from_the_file(tmp_path):
    """README step 2: the example beside client_secret.json; its client is the file's, not a placeholder."""
    from tornado_signin.config import load_config

    config = load_config(example_with(tmp_path), environ=ENV)
    assert config.google.client_id == WEB_CLIENT["web"]["client_id"]
    assert config.google.client_secret == WEB_CLIENT["web"]["client_secret"]
    assert config.google.endpoints.auth_uri == WEB_CLIENT["web"]["auth_uri"]
    text = (ROOT / "config.example.yaml").read_text()
    google = yaml.safe_load(text)["google"]
    assert google["client_secrets_file"] == "client_secret.json"
    assert not {"client_id", "client_secret", "endpoints"} & set(google), "the example must not override the file"


def test_check_names_both_places_of_a_conflicting_client_id(tmp_path):
    path = example_with(tmp_path, edit=lambda text: text.replace(
        "  # client_id: YOUR_CLIENT_ID.apps.googleusercontent.com", "  client_id: 999-other.apps.googleusercontent.com"))
    result = tornado_signin("check", "--config", str(path), env=ENV)
    assert result.returncode == EXIT_CONFIG and result.stderr == ""
    assert result.stdout == (
        f"config: FAILED: config key 'google.client_id': differs from web.client_id in {tmp_path / 'client_secret.json'}"
        " ('999-other.apps.googleusercontent.com' here, '1234-abc.apps.googleusercontent.com' in the file): "
        "the file is the source of truth, remove google.client_id from the config\n")


def test_serve_refuses_a_conflicting_client_secret_without_showing_either(tmp_path):
    path = example_with(tmp_path, edit=lambda text: text.replace(
        '  # client_secret: {"$env": "GOOGLE_CLIENT_SECRET"}', '  client_secret: {"$env": "GOOGLE_CLIENT_SECRET"}'))
    result = tornado_signin("serve", "--config", str(path), env={**ENV, "GOOGLE_CLIENT_SECRET": "GOCSPX-other"})
    assert result.returncode == EXIT_CONFIG and result.stdout == ""
    assert result.stderr.startswith("tornado-signin: config key 'google.client_secret': differs from "
                                    f"web.client_secret in {tmp_path / 'client_secret.json'}")
    assert "GOCSPX" not in result.stderr


@pytest.mark.parametrize("document, problem", [
    ('{"web": {"client_id": ', "is not JSON (line 1 column 23): download the client's JSON again"),
    ({"installed": {"client_id": "1-a.apps.googleusercontent.com", "client_secret": "GOCSPX-d"}},
     "is an 'installed' (desktop) client; the one-time-code flow needs a 'web' client"),
    ({"other": {}}, "has no 'web' section"),
], ids=["broken", "desktop", "no-web"])
def test_check_names_the_file_and_its_problem_before_any_environment_variable(tmp_path, document, problem):
    result = tornado_signin("check", "--config", str(example_with(tmp_path, document)), env={})
    assert result.returncode == EXIT_CONFIG and result.stderr == ""
    assert result.stdout.startswith(
        f"config: FAILED: config key 'google.client_secrets_file': {tmp_path / 'client_secret.json'} {problem}")


def test_check_names_a_missing_client_secrets_file(tmp_path):
    result = tornado_signin("check", "--config", str(example_with(tmp_path, None)), env={})
    assert (result.returncode, result.stdout) == (
        EXIT_CONFIG, f"config: FAILED: config key 'google.client_secrets_file': file not found: "
                     f"{tmp_path / 'client_secret.json'}\n")


def test_check_refuses_the_placeholder_client_id(tmp_path):
    """The example's alternative (client_id in YAML) uncommented but not filled in."""
    def edit(text: str) -> str:
        return (text.replace("  client_secrets_file: client_secret.json\n", "")
                .replace("  # client_id: ", "  client_id: ").replace("  # client_secret: ", "  client_secret: "))

    result = tornado_signin("check", "--config", str(example_with(tmp_path, None, edit)),
                            env={**ENV, "GOOGLE_CLIENT_SECRET": "GOCSPX-x"})
    assert result.returncode == EXIT_CONFIG and result.stderr == ""
    assert result.stdout.startswith("config: FAILED: config key 'google.client_id': "
                                    "'YOUR_CLIENT_ID.apps.googleusercontent.com' is a placeholder")
