"""Every backend's config snippet in README.md works as written.

The README marks each snippet with ``<!-- snippet: NAME -->`` right before its
fenced ```yaml block. Each is loaded into a config (beside a minimal
``server:``/``google:``); those that can run here (SQLite, files, memory,
PostgreSQL, MariaDB, DynamoDB through moto's server, the Redis hub) are
opened, and a record is saved and read back through the encrypting store.
Only what makes a shared server safe to share is changed: a test's own table
name, and the local endpoint's port.
"""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path

import pytest
import yaml

from tornado_signin.config import config_from_dict
from tornado_signin.crypto import generate_key
from tornado_signin.store import TokenRecord

ROOT = Path(__file__).resolve().parent.parent
EXPECTED = {"sql-sqlite", "sql-postgresql", "sql-mariadb", "dynamodb", "dynamodb-local", "file", "memory", "redis-hub"}
SNIPPET = re.compile(r"<!-- snippet: ([\w-]+) -->\n```yaml\n(.*?)```", re.S)


def snippets() -> dict[str, str]:
    found: dict[str, str] = {}
    for name, text in SNIPPET.findall((ROOT / "README.md").read_text(encoding="utf-8")):
        assert name not in found, f"two README snippets are called {name}"
        found[name] = text
    return found


def test_the_readme_has_a_snippet_for_every_backend():
    assert set(snippets()) == EXPECTED


def load(name: str, folder: Path, **environ: str):
    """Return the Config of README snippet ``name`` with a minimal server and google section."""
    document = yaml.safe_load(snippets()[name])
    base = {
        "server": {"cookie_secret": "c" * 40},
        "google": {"client_id": "1234-abc.apps.googleusercontent.com", "client_secret": "GOCSPX-x"},
        "store": {"backend": "memory", "encryption": {"keys": [{"$env": "TORNADO_SIGNIN_KEY"}]}},
    }
    return config_from_dict({**base, **document}, base_dir=folder,
                            environ={"TORNADO_SIGNIN_KEY": generate_key(), **environ})


def round_trip(config, *, create: bool = False) -> None:
    """Open the configured store, save a record and read it back; ``create``: the table first (check --create-table)."""
    from tornado_signin.wiring import open_store

    store = open_store(config)
    try:
        if create:
            store.inner.create_schema()
        store.check()
        now = time.time()
        saved = store.save(TokenRecord(sub="1234567890", email="alice@example.com", refresh_token="1//refresh",
                                       refresh_token_issued_at=now, access_token="ya29.access",
                                       access_token_expiry=now + 3600, access_token_issued_at=now,
                                       scopes=("openid", "email")))
        got = store.get("1234567890")
        assert got == saved and got.refresh_token == "1//refresh" and got.access_token == "ya29.access"
        assert [r.sub for r in store.records()] == ["1234567890"]
    finally:
        if create and hasattr(store.inner, "drop_schema"):
            store.inner.drop_schema()
        store.close()


def test_sqlite_snippet(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # its relative path is relative to the working directory
    config = load("sql-sqlite", tmp_path)
    round_trip(config)
    assert (tmp_path / "tokens.sqlite3").exists()


def test_file_snippet(tmp_path):
    config = load("file", tmp_path)
    assert config.store.options["path"] == str(tmp_path / "tokens")  # relative to the config file
    round_trip(config)
    assert len(list((tmp_path / "tokens").glob("*.json"))) == 1


def test_memory_snippet(tmp_path):
    round_trip(load("memory", tmp_path))


def with_table(config, table: str):
    from dataclasses import replace

    return config.with_changes(store=replace(config.store, options={**config.store.options, "table": table}))


def test_postgresql_snippet(tmp_path, postgres_url, unique_name):
    config = load("sql-postgresql", tmp_path, TORNADO_SIGNIN_DATABASE_URL=postgres_url)
    assert config.store.options["create_table"] is False
    round_trip(with_table(config, unique_name), create=True)


def test_mariadb_snippet(tmp_path, mariadb_url, unique_name):
    config = load("sql-mariadb", tmp_path, TORNADO_SIGNIN_DATABASE_URL=mariadb_url)
    round_trip(with_table(config, unique_name), create=True)


def test_dynamodb_snippet_loads(tmp_path):
    """The AWS one can only be built here: boto3 makes no request until first use."""
    from tornado_signin.wiring import open_store

    config = load("dynamodb", tmp_path)
    assert config.store.options == {"table": "tornado-signin-tokens", "region": "eu-west-1", "create_table": False}
    open_store(config).close()


def test_dynamodb_local_snippet(tmp_path, moto_server, unique_name, monkeypatch):
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)  # the snippet's own credentials must be enough
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    snippet = snippets()["dynamodb-local"]
    assert "endpoint_url: http://127.0.0.1:8000" in snippet
    config = load("dynamodb-local", tmp_path)
    from dataclasses import replace

    options = {**config.store.options, "endpoint_url": moto_server, "table": unique_name}
    round_trip(config.with_changes(store=replace(config.store, options=options)))


def test_redis_hub_snippet(tmp_path, redis_url, unique_name):
    pytest.importorskip("redis")
    from tornado_signin.hub import load_hub

    config = load("redis-hub", tmp_path, TORNADO_SIGNIN_REDIS_URL=redis_url)
    assert config.hub.backend == "redis" and config.hub.url == redis_url

    async def use() -> None:
        hub = load_hub(config.hub.backend, config.hub.url, key_prefix=f"{unique_name}:")
        try:
            await hub.check()
            assert await hub.consume_once("snippet", 10) is True
            assert await hub.consume_once("snippet", 10) is False
        finally:
            await hub.close()

    asyncio.run(use())
