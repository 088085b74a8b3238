"""Config: the example file loads, client_secret.json is honoured, errors name the key."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tornado_signin.config import GoogleEndpoints, config_from_dict, load_config
from tornado_signin.crypto import generate_key
from tornado_signin.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent
ENV = {
    "TORNADO_SIGNIN_COOKIE_SECRET": "c" * 40,
    "GOOGLE_CLIENT_SECRET": "GOCSPX-example",
    "TORNADO_SIGNIN_KEY": generate_key(),
}


def minimal(**sections):
    data = {
        "server": {"cookie_secret": "s" * 40},
        "google": {"client_id": "id.apps.googleusercontent.com", "client_secret": "secret"},
        "store": {"backend": "memory", "encryption": {"keys": [generate_key()]}},
    }
    for name, value in sections.items():
        data[name] = {**data.get(name, {}), **value} if isinstance(value, dict) else value
    return data


def test_example_config_loads_with_its_env_vars():
    config = load_config(ROOT / "config.example.yaml", environ=ENV)
    assert config.google.client_secret == "GOCSPX-example"
    assert config.server.cookie_secret == ENV["TORNADO_SIGNIN_COOKIE_SECRET"]
    assert config.store.backend == "sql" and config.store.options["table"] == "tornado_signin_tokens"
    assert config.google.endpoints == GoogleEndpoints()
    assert not config.development


def test_example_config_documents_every_key():
    text = (ROOT / "config.example.yaml").read_text()
    from dataclasses import fields

    from tornado_signin.config import GoogleConfig, LimitsConfig, ServerConfig

    for cls, skip in ((ServerConfig, ()), (GoogleConfig, ("endpoints",)), (LimitsConfig, ())):
        for f in fields(cls):
            if f.name not in skip:
                assert f"  {f.name}:" in text, f"{cls.__name__}.{f.name} missing from config.example.yaml"


def test_missing_env_var_names_the_key():
    with pytest.raises(ConfigError) as caught:
        load_config(ROOT / "config.example.yaml", environ={})
    assert "server.cookie_secret" in str(caught.value)


def test_client_secrets_file_sets_client_and_endpoints(tmp_path):
    secrets = {"web": {"client_id": "abc.apps.googleusercontent.com", "client_secret": "GOCSPX-x",
                       "auth_uri": "https://accounts.google.com/o/oauth2/auth",
                       "token_uri": "https://oauth2.googleapis.com/token",
                       "auth_provider_x509_cert_url": "https://www.googleapis.com/oauth2/v1/certs"}}
    (tmp_path / "client_secret.json").write_text(json.dumps(secrets))
    data = minimal(google={"client_secrets_file": "client_secret.json"})
    del data["google"]["client_id"], data["google"]["client_secret"]
    config = config_from_dict(data, base_dir=tmp_path, environ={})
    assert config.google.client_id == "abc.apps.googleusercontent.com"
    assert config.google.endpoints.auth_uri == "https://accounts.google.com/o/oauth2/auth"
    assert config.google.endpoints.revoke_uri == GoogleEndpoints().revoke_uri


def test_installed_client_secrets_are_refused(tmp_path):
    (tmp_path / "cs.json").write_text(json.dumps({"installed": {"client_id": "x"}}))
    with pytest.raises(ConfigError) as caught:
        config_from_dict(minimal(google={"client_secrets_file": "cs.json"}), base_dir=tmp_path, environ={})
    assert "google.client_secrets_file" in str(caught.value) and "web" in str(caught.value)


@pytest.mark.parametrize("data, key", [
    ({"server": {"cookie_secret": "short"}}, "server.cookie_secret"),
    ({"server": {"port": "eighty"}}, "server.port"),
    ({"server": {"allowed_origins": ["https://a.example/path"]}}, "server.allowed_origins[0]"),
    ({"google": {"client_library": "jquery"}}, "google.client_library"),
    ({"google": {"scopes": ["https://www.googleapis.com/auth/drive"]}}, "google.scopes"),
    ({"google": {"clock_skew_seconds": 3600}}, "google.clock_skew_seconds"),
    ({"google": {"endpoints": {"token_uri": "http://oauth2.googleapis.com/token"}}}, "google.endpoints.token_uri"),
    ({"google": {"endpoints": {"token_uri": "https://127.0.0.1:8081/token"}}}, "google.endpoints.token_uri"),
    ({"google": {"tokenuri": "x"}}, "google.tokenuri"),
    ({"store": {"encryption": {"keys": []}}}, "store.encryption.keys"),
    ({"hub": {"backend": "redis"}}, "hub.url"),
    ({"limits": {"max_body_bytes": 10_000_000}}, "limits.max_body_bytes"),
    ({"limits": {"websocket_ping_interval": 20.0, "websocket_ping_timeout": 30.0}}, "limits.websocket_ping_timeout"),
    ({"log_level": "LOUD"}, "log_level"),
    ({"colour": "blue"}, "colour"),
])
def test_errors_name_the_key(data, key):
    with pytest.raises(ConfigError) as caught:
        config_from_dict(minimal(**data), environ={})
    assert caught.value.key == key, str(caught.value)


def test_development_allows_loopback_http_endpoints_only():
    ok = minimal(development=True, google={"endpoints": {"token_uri": "http://127.0.0.1:8081/token"}})
    assert config_from_dict(ok, environ={}).google.endpoints.token_uri == "http://127.0.0.1:8081/token"
    bad = minimal(development=True, google={"endpoints": {"token_uri": "http://example.com/token"}})
    with pytest.raises(ConfigError):
        config_from_dict(bad, environ={})


def test_insecure_transport_env_refused_outside_development():
    with pytest.raises(ConfigError) as caught:
        config_from_dict(minimal(), environ={"OAUTHLIB_INSECURE_TRANSPORT": "1"})
    assert caught.value.key == "development"


def test_bad_encryption_key_names_the_key():
    from tornado_signin.wiring import open_store

    config = config_from_dict(minimal(store={"backend": "memory", "encryption": {"keys": ["not-a-key"]}}), environ={})
    with pytest.raises(ConfigError) as caught:
        open_store(config)
    assert caught.value.key == "store.encryption.keys[0]" and "not-a-key" not in str(caught.value)


def test_unknown_backend_names_group_and_lists_installed():
    from tornado_signin.wiring import open_store

    config = config_from_dict(minimal(store={"backend": "cassandra", "encryption": {"keys": [generate_key()]}}),
                              environ={})
    with pytest.raises(ConfigError) as caught:
        open_store(config)
    message = str(caught.value)
    assert caught.value.key == "store.backend" and "tornado_signin.backends" in message and "sql" in message


def test_misspelt_backend_option_fails_at_startup():
    from tornado_signin.wiring import open_store

    config = config_from_dict(minimal(store={"backend": "sql", "ulr": "sqlite://", "encryption": {"keys": [generate_key()]}}),
                              environ={})
    with pytest.raises(ConfigError) as caught:
        open_store(config)
    assert caught.value.key.startswith("store") and "ulr" in str(caught.value)


def test_templates_ship_in_the_wheel(tmp_path):
    import subprocess
    import sys
    import zipfile

    result = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                             "-w", str(tmp_path), str(ROOT)], capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-2000:]
    wheel = next(tmp_path.glob("tornado_signin-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "tornado_signin/templates/index.html" in names
    assert "tornado_signin/emulator/templates/consent.html" in names
    assert "tornado_signin/emulator/templates/gsi_client.js" in names
    assert "tornado_signin_backends/sql.py" in names
    entry_points = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "[tornado_signin.backends]" in entry_points and "sql = tornado_signin_backends.sql" in entry_points
