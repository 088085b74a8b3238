"""tornado_signin.plugins: one loader for token stores and confirmation hubs."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tornado_signin.errors import ConfigError
from tornado_signin.hub import ConfirmationHub, load_hub
from tornado_signin.plugins import HUBS, STORES, installed_backends, load
from tornado_signin.store import TokenStore, load_store

# Makes ``redis`` unimportable in a fresh interpreter, as without the extra.
WITHOUT_REDIS = "import sys; sys.modules['redis'] = None; "


def _python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          env={**os.environ})


def test_the_memory_hub_comes_through_its_entry_point():
    hub = load_hub("memory")
    assert isinstance(hub, ConfirmationHub)
    assert type(hub).__module__ == "tornado_signin_backends.memory_hub"


def test_a_hub_option_the_hub_does_not_take_names_the_key():
    with pytest.raises(ConfigError) as caught:
        load_hub("memory", key_prefix="app:")
    assert caught.value.key == "hub.key_prefix"
    with pytest.raises(ConfigError) as caught:
        load(HUBS, "memory", {"tiemout": 2}, base=ConfirmationHub)
    assert caught.value.key == "hub.tiemout" and "'memory'" in str(caught.value)


def test_an_unknown_name_names_the_group_and_lists_the_installed_ones():
    with pytest.raises(ConfigError) as caught:
        load_hub("memroy")
    assert caught.value.key == "hub.backend"
    assert "tornado_signin.hubs" in str(caught.value) and "memory, redis" in str(caught.value)
    with pytest.raises(ConfigError) as caught:
        load_store("sqll")
    assert caught.value.key == "store.backend"
    assert "tornado_signin.backends" in str(caught.value) and "dynamodb, file, memory, sql" in str(caught.value)


def test_a_store_option_is_checked_the_same_way():
    with pytest.raises(ConfigError) as caught:
        load(STORES, "memory", {"path": "x"}, base=TokenStore)
    assert caught.value.key == "store.path"


def test_a_plugin_of_the_wrong_kind_is_refused():
    with pytest.raises(ConfigError) as caught:
        load(HUBS, "memory", {}, base=TokenStore)
    assert caught.value.key == "hub.backend" and "does not build a TokenStore" in str(caught.value)


def test_installed_backends_covers_stores_and_hubs():
    listed = {(info.group, info.name) for info in installed_backends()}
    assert {(STORES.name, n) for n in ("sql", "dynamodb", "file", "memory")} <= listed
    assert {(HUBS.name, "memory"), (HUBS.name, "redis")} <= listed


def test_a_hub_without_its_extra_gives_the_install_command():
    result = _python(WITHOUT_REDIS + load_redis_script())
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "hub.backend|pip install 'tornado-signin[redis]'"


def load_redis_script() -> str:
    return ("from tornado_signin.hub import load_hub\n"
            "from tornado_signin.errors import ConfigError\n"
            "try:\n    load_hub('redis', 'redis://127.0.0.1:6379/0')\n"
            "except ConfigError as exc:\n    print(exc.key + '|' + str(exc).split(': ')[-1])\n")


def test_backends_command_shows_a_hub_missing_its_extra():
    result = _python(WITHOUT_REDIS + "from tornado_signin.cli import main; sys.exit(main(['backends', '--json']))")
    assert result.returncode == 0, result.stderr
    hubs = {b["name"]: b for b in json.loads(result.stdout) if b["group"] == "tornado_signin.hubs"}
    assert hubs["redis"]["loadable"] is False
    assert hubs["redis"]["install_hint"] == "pip install 'tornado-signin[redis]'"
    assert hubs["memory"]["loadable"] is True
    text = _python(WITHOUT_REDIS + "from tornado_signin.cli import main; sys.exit(main(['backends']))").stdout
    hub_part = text.split("Confirmation hubs")[1]
    assert "redis" in hub_part and "install with: pip install 'tornado-signin[redis]'" in hub_part
