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


WEB_CLIENT = {"web": {"client_id": "1234-abc.apps.googleusercontent.com", "client_secret": "GOCSPX-from-file",
                      "project_id": "demo", "auth_uri": "https://accounts.google.com/o/oauth2/auth",
                      "token_uri": "https://oauth2.googleapis.com/token",
                      "auth_provider_x509_cert_url": "https://www.googleapis.com/oauth2/v1/certs",
                      "javascript_origins": ["https://app.example.com"]}}


def example_beside(tmp_path, client_secrets=WEB_CLIENT):
    """Return config.example.yaml copied into tmp_path, with a client_secret.json beside it."""
    (tmp_path / "client_secret.json").write_text(json.dumps(client_secrets))
    path = tmp_path / "config.yaml"
    path.write_text((ROOT / "config.example.yaml").read_text())
    return path


def test_example_config_loads_with_its_env_vars(tmp_path):
    config = load_config(example_beside(tmp_path), environ=ENV)
    # The downloaded file is the source of truth: the example overrides none of it.
    assert config.google.client_id == WEB_CLIENT["web"]["client_id"]
    assert config.google.client_secret == "GOCSPX-from-file"
    assert config.google.endpoints.auth_uri == WEB_CLIENT["web"]["auth_uri"]
    assert config.server.cookie_secret == ENV["TORNADO_SIGNIN_COOKIE_SECRET"]
    assert config.store.backend == "sql" and config.store.options["table"] == "tornado_signin_tokens"
    assert not config.development


def test_example_config_documents_every_key():
    text = (ROOT / "config.example.yaml").read_text()
    from dataclasses import fields

    from tornado_signin.config import GoogleConfig, LimitsConfig, ServerConfig

    for cls, skip in ((ServerConfig, ()), (GoogleConfig, ("endpoints", "javascript_origins")), (LimitsConfig, ())):
        for f in fields(cls):
            if f.name not in skip:
                assert f"  {f.name}:" in text or f"  # {f.name}:" in text, \
                    f"{cls.__name__}.{f.name} missing from config.example.yaml"


def test_missing_env_var_names_the_key(tmp_path):
    with pytest.raises(ConfigError) as caught:
        load_config(example_beside(tmp_path), environ={})
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
    assert caught.value.key == "google.client_secrets_file"
    assert str(caught.value) == (f"config key 'google.client_secrets_file': {tmp_path / 'cs.json'} is an 'installed' "
                                 "(desktop) client; the one-time-code flow needs a 'web' client ('Web application' "
                                 "in the Google API Console)")


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
    with pytest.raises(ConfigError) as caught:
        config_from_dict(bad, environ={})
    assert str(caught.value) == ("config key 'google.endpoints.token_uri': plain http:// is allowed only on "
                                 "loopback, even in development")


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
    with pytest.raises(ConfigError) as caught:
        config_from_dict(minimal(store={"backend": "cassandra", "encryption": {"keys": [generate_key()]}}),
                         environ={})
    message = str(caught.value)
    assert caught.value.key == "store.backend" and "tornado_signin.backends" in message and "sql" in message


def test_misspelt_backend_option_fails_at_startup():
    with pytest.raises(ConfigError) as caught:
        config_from_dict(minimal(store={"backend": "sql", "ulr": "sqlite://", "encryption": {"keys": [generate_key()]}}),
                         environ={})
    assert caught.value.key == "store.ulr"
    assert str(caught.value) == "config key 'store.ulr': unknown option of backend 'sql'; did you mean 'store.url'?"


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
    assert "tornado_signin_backends/sql/store.py" in names
    assert "tornado_signin_backends/redis_hub/hub.py" in names
    entry_points = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "[tornado_signin.backends]" in entry_points and "sql = tornado_signin_backends.sql" in entry_points


# --------------------------------------------------------------------------- typos come first


def rename(document, section, old, new):
    """Return ``document`` with the key ``old`` of ``section`` (None: the top level) renamed to ``new``."""
    target = document if section is None else document[section]
    target[new] = target.pop(old)
    return document


@pytest.mark.parametrize("edit, message", [
    # Each typo hides a key that is then "missing" or "invalid": the typo itself is reported.
    (lambda d: rename(d, None, "server", "sever"), "config key 'sever': unknown; did you mean 'server'?"),
    (lambda d: rename(d, "server", "cookie_secret", "cookie_secert"),
     "config key 'server.cookie_secert': unknown; did you mean 'server.cookie_secret'?"),
    (lambda d: {**d, "developement": True, "google": {**d["google"], "endpoints": {"token_uri": "http://127.0.0.1:1/t"}}},
     "config key 'developement': unknown; did you mean 'development'?"),
    (lambda d: {**d, "google": {**d["google"], "endpoints": {"tokn_uri": "https://oauth2.googleapis.com/token"}}},
     "config key 'google.endpoints.tokn_uri': unknown; did you mean 'google.endpoints.token_uri'?"),
    (lambda d: {**d, "google": {**d["google"], "token_uri": "https://oauth2.googleapis.com/token"}},
     "config key 'google.token_uri': unknown; did you mean 'google.endpoints.token_uri'?"),
    (lambda d: {**d, "limits": {"max_body_byte": 10}},
     "config key 'limits.max_body_byte': unknown; did you mean 'limits.max_body_bytes'?"),
    (lambda d: {**d, "store": {"backend": "memory", "encryption": {"key": ["x"]}}},
     "config key 'store.encryption.key': unknown; did you mean 'store.encryption.keys'?"),
    (lambda d: {**d, "hub": {"backend": "memroy"}},
     "config key 'hub.backend': no hub 'memroy' is installed; did you mean 'memory'? "
     "(installed in entry-point group 'tornado_signin.hubs': memory, redis)"),
])
def test_typos_are_reported_first_with_the_closest_key(edit, message):
    document = edit(minimal())
    with pytest.raises(ConfigError) as caught:
        config_from_dict(document, environ={})
    assert str(caught.value) == message


def test_unknown_key_without_a_close_one_lists_the_valid_keys():
    with pytest.raises(ConfigError) as caught:
        config_from_dict(minimal(hub={"colour": "blue"}), environ={})
    assert str(caught.value) == "config key 'hub.colour': unknown (valid here: backend, key_prefix, url)"


def test_every_unknown_key_is_reported_at_once_each_with_its_closest_key_in_the_documents_order():
    document = minimal(server={"cookie_secert": "s" * 40}, hub={"colour": "blue"}, limts={},
                       google={"token_uri": "https://oauth2.googleapis.com/token"})
    with pytest.raises(ConfigError) as caught:
        config_from_dict(document, environ={})
    assert caught.value.key == "server.cookie_secert"
    assert str(caught.value) == (
        "config key 'server.cookie_secert': unknown; did you mean 'server.cookie_secret'? Also unknown: "
        "'google.token_uri' (did you mean 'google.endpoints.token_uri'?), "
        "'hub.colour' (valid here: backend, key_prefix, url), 'limts' (did you mean 'limits'?)")


def test_unknown_store_options_join_the_other_unknown_keys_before_an_unknown_hub_backend():
    document = minimal(sever={}, hub={"backend": "memroy"},
                       store={"backend": "sql", "ulr": "sqlite://", "encryption": {"key": ["x"]}})
    with pytest.raises(ConfigError) as caught:
        config_from_dict(document, environ={})
    assert str(caught.value) == (
        "config key 'store.ulr': unknown option of backend 'sql'; did you mean 'store.url'? Also unknown: "
        "'store.encryption.key' (did you mean 'store.encryption.keys'?), 'sever' (did you mean 'server'?)")


def test_typo_comes_before_an_unset_environment_variable():
    document = minimal(server={"cookie_secret": {"$env": "UNSET_VAR"}}, limts={})
    with pytest.raises(ConfigError) as caught:
        config_from_dict(document, environ={})
    assert caught.value.key == "limts" and "did you mean 'limits'?" in str(caught.value)


def test_unknown_store_backend_suggests_and_lists_installed():
    with pytest.raises(ConfigError) as caught:
        config_from_dict(minimal(store={"backend": "sqll"}), environ={})
    assert caught.value.key == "store.backend"
    assert "no token store 'sqll' is installed; did you mean 'sql'?" in str(caught.value)
    assert "dynamodb, file, memory, sql" in str(caught.value)


# --------------------------------------------------------------------------- client_secret.json is the source of truth


def secrets_config(tmp_path, document=WEB_CLIENT, **google):
    (tmp_path / "client_secret.json").write_text(document if isinstance(document, str) else json.dumps(document))
    data = minimal(google={"client_secrets_file": "client_secret.json", **google})
    for name in ("client_id", "client_secret"):
        if name not in google:
            del data["google"][name]
    return data


def test_the_file_alone_configures_google(tmp_path):
    config = config_from_dict(secrets_config(tmp_path), base_dir=tmp_path, environ={})
    assert config.google.client_id == WEB_CLIENT["web"]["client_id"]
    assert config.google.client_secret == "GOCSPX-from-file"


def test_the_same_value_twice_is_accepted(tmp_path):
    data = secrets_config(tmp_path, client_id=WEB_CLIENT["web"]["client_id"],
                          endpoints={"token_uri": WEB_CLIENT["web"]["token_uri"]})
    assert config_from_dict(data, base_dir=tmp_path, environ={}).google.client_id == WEB_CLIENT["web"]["client_id"]


@pytest.mark.parametrize("google, key", [
    ({"client_id": "other.apps.googleusercontent.com"}, "google.client_id"),
    ({"client_secret": "GOCSPX-other"}, "google.client_secret"),
    ({"endpoints": {"token_uri": "https://oauth2.googleapis.com/token2"}}, "google.endpoints.token_uri"),
    ({"endpoints": {"auth_uri": "https://accounts.google.com/o/oauth2/v2/auth"}}, "google.endpoints.auth_uri"),
    ({"endpoints": {"certs_uri": "https://www.googleapis.com/oauth2/v2/certs"}}, "google.endpoints.certs_uri"),
])
def test_a_different_value_in_yaml_and_file_names_both(tmp_path, google, key):
    with pytest.raises(ConfigError) as caught:
        config_from_dict(secrets_config(tmp_path, **google), base_dir=tmp_path, environ={})
    message = str(caught.value)
    assert caught.value.key == key and str(tmp_path / "client_secret.json") in message
    assert "source of truth" in message
    assert "GOCSPX" not in message  # a secret's values are never shown


@pytest.mark.parametrize("document, problem", [
    ('{"web": {"client_id": "x",', "is not JSON (line 1 column"),
    ({"installed": {"client_id": "1-a.apps.googleusercontent.com", "client_secret": "s"}},
     "is an 'installed' (desktop) client"),
    ({"client_id": "1-a.apps.googleusercontent.com"}, "has no 'web' section"),
    ([1, 2], "is not Google's client secrets JSON"),
    ({"web": {"client_secret": "s"}}, "web.client_id is missing"),
    ({"web": {"client_id": 12, "client_secret": "s"}}, "web.client_id must be a non-empty string"),
])
def test_a_broken_file_is_the_first_error_and_names_the_file(tmp_path, document, problem):
    # Every {"$env"} of this config is unset: the file's problem still comes first.
    data = secrets_config(tmp_path, document)
    data["server"]["cookie_secret"] = {"$env": "UNSET_COOKIE_SECRET"}
    data["store"]["encryption"]["keys"] = [{"$env": "UNSET_KEY"}]
    with pytest.raises(ConfigError) as caught:
        config_from_dict(data, base_dir=tmp_path, environ={})
    assert caught.value.key == "google.client_secrets_file"
    assert f"{tmp_path / 'client_secret.json'} {problem}" in str(caught.value) or \
        f"{tmp_path / 'client_secret.json'}: {problem}" in str(caught.value)


@pytest.mark.parametrize("client_id", ["YOUR_CLIENT_ID.apps.googleusercontent.com",
                                       "your-client-id.apps.googleusercontent.com",
                                       "<client id>.apps.googleusercontent.com", "xxxx.apps.googleusercontent.com",
                                       "1234-....apps.googleusercontent.com"])
def test_a_placeholder_client_id_is_refused_outside_development(client_id):
    with pytest.raises(ConfigError) as caught:
        config_from_dict(minimal(google={"client_id": client_id}), environ={})
    assert caught.value.key == "google.client_id" and "placeholder" in str(caught.value)
    assert config_from_dict(minimal(development=True, google={"client_id": client_id}), environ={})
