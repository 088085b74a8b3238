"""A third-party plugin, built and installed into a temporary directory, is found through the entry points."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

FIXTURE = Path(__file__).parent / "plugin_fixture"


@pytest.fixture(scope="module")
def plugin_site(tmp_path_factory):
    """Install tests/plugin_fixture with pip into a private directory (no network, no build isolation)."""
    root = tmp_path_factory.mktemp("plugin")
    source = root / "src"
    shutil.copytree(FIXTURE, source)
    site = root / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
         "--no-index", "--target", str(site), str(source)],
        check=True, capture_output=True, timeout=180,
    )
    return root, site


def _run(site: Path, args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess:
    environ = {**os.environ, "PYTHONPATH": str(site), **env}
    environ.pop("PYTEST_ADDOPTS", None)
    return subprocess.run([sys.executable, *args], cwd=cwd, env=environ, capture_output=True, text=True,
                          timeout=180)


def test_installed_plugin_is_listed_loaded_and_usable(plugin_site):
    root, site = plugin_site
    script = textwrap.dedent(
        """
        from tornado_signin.errors import ConfigError
        from tornado_signin.store import TokenRecord, installed_backends, load_store

        infos = {info.name: info for info in installed_backends()}
        assert infos["thirdparty"].loadable, infos["thirdparty"]
        assert infos["thirdparty"].distribution == "tsp-plugin", infos["thirdparty"]
        assert infos["thirdparty"].module == "tsp_plugin"
        assert {"memory", "sql", "dynamodb", "file"} <= set(infos)
        store = load_store("thirdparty", {"label": "x"})
        assert type(store).__module__ == "tsp_plugin"
        store.save(TokenRecord(sub="u", refresh_token="rt", refresh_token_issued_at=1.0))
        assert store.save(TokenRecord(sub="u")).refresh_token == "rt"
        assert store.get("u").refresh_token == "rt"
        try:
            load_store("thirdparty", {"lable": "typo"})
        except ConfigError as exc:
            assert exc.key == "store.lable", exc.key
        else:
            raise AssertionError("a misspelt option must be a ConfigError")
        print("plugin ok")
        """
    )
    result = _run(site, ["-c", script], cwd=root)
    assert result.returncode == 0, result.stderr
    assert "plugin ok" in result.stdout


def test_the_shipped_contract_kit_passes_the_plugin(plugin_site):
    root, site = plugin_site
    result = _run(site, ["-m", "pytest", "-q", "-p", "no:cacheprovider", "contract_check.py"], cwd=root / "src")
    assert result.returncode == 0, result.stdout + result.stderr
    assert " passed" in result.stdout and "failed" not in result.stdout


def test_the_shipped_contract_kit_rejects_a_store_that_does_not_merge(plugin_site):
    root, site = plugin_site
    result = _run(site, ["-m", "pytest", "-q", "-p", "no:cacheprovider", "contract_check.py"], cwd=root / "src",
                  TSP_BACKEND="thirdparty-naive")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "test_missing_refresh_token_never_replaces_a_stored_one FAILED" in result.stdout or (
        "FAILED contract_check.py::TestThirdPartyStore::test_missing_refresh_token_never_replaces_a_stored_one"
        in result.stdout
    )
