"""The page's JavaScript client ``<prefix>/signin.js``, the favicon and the page's CSP.

In-process: the files are served under the prefix, the CSP names each origin
once and lets both client libraries reach the auth origin. Offline: signin.js
type-checks against Google's published types (``@types/google.accounts``,
``@types/gapi.auth2``) with TypeScript from npm (tests/node), so every option
it passes and every field it reads exists in Google's libraries.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import IN_CI
from harness import make_config, start_stack

NODE = Path(__file__).parent / "node"
TSC = NODE / "node_modules" / ".bin" / "tsc"
SIGNIN_JS = Path(__file__).parent.parent / "tornado_signin" / "web" / "static" / "signin.js"


@pytest.fixture
def stack(io_loop, request):
    overrides = getattr(request, "param", {})
    opened = io_loop.run_sync(lambda: start_stack(**overrides))
    yield opened
    io_loop.run_sync(opened.close)


def _csp(response) -> dict[str, list[str]]:
    policy = response.headers["Content-Security-Policy"]
    return {name: values for name, *values in (part.split() for part in policy.split(";") if part.strip())}


@pytest.mark.gen_test(timeout=30)
@pytest.mark.parametrize("stack", [{}, {"server": {"path_prefix": "/auth"}}], indirect=True)
async def test_signin_js_and_favicon_are_served_under_the_prefix(stack):
    prefix = stack.config.server.path_prefix
    client = stack.client()
    script = await client.fetch(prefix + "/signin.js")
    assert script.code == 200
    assert script.headers["Content-Type"] == "text/javascript; charset=utf-8"
    assert script.body == SIGNIN_JS.read_bytes()
    assert script.headers["X-Content-Type-Options"] == "nosniff"
    etag = script.headers["Etag"]
    again = await client.fetch(prefix + "/signin.js", headers={"If-None-Match": etag})
    assert again.code == 304
    icon = await client.fetch(prefix + "/favicon.ico")
    assert icon.code == 200 and icon.headers["Content-Type"] == "image/x-icon"
    assert icon.body[:4] == b"\x00\x00\x01\x00"  # an ICO header
    page = (await client.fetch(prefix + "/")).body.decode()
    assert f'<link rel="icon" href="{prefix}/favicon.ico">' in page
    assert re.search(rf'<script src="{prefix}/signin.js" nonce="[^"]+"></script>', page)


@pytest.mark.gen_test(timeout=30)
@pytest.mark.parametrize("library", ["gis", "gapi"])
async def test_csp_lets_both_libraries_reach_the_auth_origin_and_names_each_origin_once(stack, library):
    emulator = stack.emulator.base_url
    google = stack.ctx.config.google
    script = {"gis": "/gsi/client", "gapi": "/js/platform.js"}[library]
    stack.ctx.config = dataclasses.replace(stack.ctx.config, google=dataclasses.replace(
        google, client_library=library, client_script_url=emulator + script))
    csp = _csp(await stack.client().fetch("/"))
    assert emulator in csp["connect-src"]  # the auth origin (the emulator's, in development)
    assert csp["frame-src"] == [emulator]  # the auth and the script origin are one: listed once
    for values in csp.values():
        assert len(values) == len(set(values)), csp


def test_csp_in_production_shape_names_google_auth_origin_for_gapi():
    from tornado_signin.web.base import csp_header, signin_csp

    config = make_config("https://app.example", "https://unused.example")
    config = dataclasses.replace(config, google=dataclasses.replace(
        config.google, client_library="gapi", client_script_url="https://apis.google.com/js/platform.js",
        endpoints=dataclasses.replace(config.google.endpoints, auth_uri="https://accounts.google.com/o/oauth2/v2/auth")))
    csp = signin_csp(config, "n0nce", "https://app.example")
    assert csp["connect-src"] == ["'self'", "wss://app.example", "https://apis.google.com",
                                  "https://accounts.google.com"]
    assert csp["frame-src"] == ["https://accounts.google.com", "https://apis.google.com"]
    assert csp_header({"frame-src": ["https://accounts.google.com"]}, {"frame-src": ["https://accounts.google.com"]}) \
        == "frame-src https://accounts.google.com"


def _tsc_or_skip() -> Path:
    if TSC.exists():
        return TSC
    reason = "TypeScript is not installed in tests/node (run ./dev test, which runs npm ci there)"
    if shutil.which("npm") is None:
        reason = "npm is missing (apt-get install npm), so TypeScript cannot be installed in tests/node"
    if IN_CI:
        pytest.fail(reason + "; CI must install it (.ci/run)")
    pytest.skip(reason)


@pytest.mark.gen_test(timeout=30)
@pytest.mark.parametrize("library", ["gis", "gapi"])
async def test_the_demo_page_calls_google_only_through_signin_js(stack, library):
    """All of the page's calls to Google's libraries are in signin.js, the file the type check covers."""
    stack.ctx.config = dataclasses.replace(stack.ctx.config, google=dataclasses.replace(
        stack.ctx.config.google, client_library=library))
    page = (await stack.client().fetch("/")).body.decode()
    inline = "".join(re.findall(r"<script nonce=[^>]*>(.*?)</script>", page, re.S))
    assert "TornadoSignin.mount" in inline
    for google_call in ("google.accounts", "gapi.", "initCodeClient", "grantOfflineAccess"):
        assert google_call not in inline


def test_signin_js_type_checks_against_googles_published_types():
    tsc = _tsc_or_skip()
    result = subprocess.run([str(tsc), "-p", str(NODE / "tsconfig.signin.json")], cwd=NODE,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr


def test_the_emulators_stand_ins_type_check_against_googles_published_types(tmp_path):
    """gsi client and platform.js, as the emulator serves them, against @types/google.accounts and @types/gapi.auth2.

    Their JSDoc says what each function takes and gives in Google's types, so reading an option Google does not
    have (``config.prompt``) or answering a field Google does not declare (``authuser``) is a type error.
    """
    tsc = _tsc_or_skip()
    from tornado_signin.emulator import Emulator, EmulatorClient

    emulator = Emulator(clients=[EmulatorClient("c.apps.googleusercontent.com", "s", ("http://127.0.0.1:1",))],
                        base_url="http://127.0.0.1:2")
    names = ["gsi_client.js", "platform.js"]
    for name in names:
        rendered = emulator.templates.load(name).generate(
            origin_json='"http://127.0.0.1:2"', onload_json='"ready"', init_error_json='""')
        (tmp_path / name).write_bytes(rendered)
    types = NODE / "node_modules" / "@types"
    (tmp_path / "tsconfig.json").write_text(json.dumps({
        # Not strict: the stand-ins' ES5 constructor functions have an untyped ``this`` under TypeScript 7;
        # what is checked is their surface (parameters and answers in Google's types).
        "compilerOptions": {"allowJs": True, "checkJs": True, "noEmit": True, "strict": False, "target": "es2017",
                            "lib": ["dom", "es2017"], "types": ["google.accounts", "gapi.auth2"],
                            "typeRoots": [str(types)]},
        "files": names,
    }))
    result = subprocess.run([str(tsc), "-p", str(tmp_path / "tsconfig.json")], cwd=tmp_path,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr
    # The check bites: a field CodeResponse does not declare is an error.
    gsi = (tmp_path / "gsi_client.js").read_text()
    (tmp_path / "gsi_client.js").write_text(gsi.replace("state: data.state};", "state: data.state, authuser: \"0\"};"))
    spoiled = subprocess.run([str(tsc), "-p", str(tmp_path / "tsconfig.json")], cwd=tmp_path,
                             capture_output=True, text=True, timeout=120)
    assert spoiled.returncode != 0 and "authuser" in spoiled.stdout
