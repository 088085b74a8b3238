"""The emulator's client scripts in a real browser (Debian's headless Chromium via Playwright).

A host page on its own origin loads ``/gsi/client`` and ``/js/platform.js``
from the emulator, as an app page would, and the tests drive the popup.
"""

from __future__ import annotations

import http.server
import threading
from urllib.parse import parse_qs, urlsplit

import pytest
import requests

from tornado_signin.emulator import EmulatorClient, EmulatorThread

pytestmark = pytest.mark.browser

CLIENT_ID = "browser.apps.googleusercontent.com"

HOST_PAGE = """<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>host</title>
<script src="{emulator}/gsi/client"></script>
<script src="{emulator}/js/platform.js?onload=gapiReady"></script>
<script>
  window.results = [];
  window.gapiReady = function () {{ window.gapiLoaded = true; }};
  function gis() {{
    google.accounts.oauth2.initCodeClient({{
      client_id: "{client_id}", scope: "openid email", ux_mode: "popup", state: "s-1",
      callback: function (r) {{ results.push({{callback: r}}); }},
      error_callback: function (e) {{ results.push({{error_callback: e}}); }}
    }}).requestCode();
  }}
  function gisIgnored() {{
    // prompt and nonce are not CodeClientConfig fields, and requestCode takes no arguments: Google ignores them.
    google.accounts.oauth2.initCodeClient({{
      client_id: "{client_id}", scope: "openid email", ux_mode: "popup", state: "s-2", prompt: "consent", nonce: "n-1",
      callback: function (r) {{ results.push({{callback: r}}); }}
    }}).requestCode({{scope: "openid email profile", prompt: "consent", state: "other"}});
  }}
  function gapiMore() {{
    gapi.load("auth2", function () {{
      // login_hint is not a ClientConfig field; the options' scope is what is asked for.
      var auth = gapi.auth2.init({{client_id: "{client_id}", scope: "openid email", login_hint: "bob@gmail.com"}});
      auth.then(function () {{
        auth.grantOfflineAccess({{scope: "openid https://www.googleapis.com/auth/drive.appdata",
                                  login_hint: "bob@gmail.com", redirect_uri: "https://evil.example/"}}).then(
          function (r) {{ results.push({{resolved: r}}); }},
          function (e) {{ results.push({{rejected: e}}); }});
      }});
    }});
  }}
  function gapiInit() {{
    gapi.load("auth2", function () {{
      gapi.auth2.init({{client_id: "{client_id}", scope: "openid email"}}).then(
        function () {{ results.push({{initialized: true}}); }},
        function (reason) {{ results.push({{initFailed: reason}}); }});
    }});
  }}
  function gapiGrant() {{
    gapi.load("auth2", function () {{
      var auth = gapi.auth2.init({{client_id: "{client_id}", scope: "openid email"}});
      auth.then(function () {{
        auth.grantOfflineAccess().then(
          function (r) {{ results.push({{resolved: r}}); }},
          function (e) {{ results.push({{rejected: e}}); }});
      }});
    }});
  }}
</script></head>
<body><button id="gis" onclick="gis()">GIS</button><button id="gapi" onclick="gapiGrant()">gapi</button>
<button id="gisIgnored" onclick="gisIgnored()">GIS ignored</button><button id="gapiMore" onclick="gapiMore()">gapi more</button>
<button id="gapiInit" onclick="gapiInit()">gapi init</button></body></html>
"""


@pytest.fixture(scope="module")
def browser(chromium):
    return chromium


@pytest.fixture(scope="module")
def host_and_emulator():
    """Serve the host page from one origin and the emulator from another."""
    page = {"html": b""}

    class Host(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.end_headers()
            self.wfile.write(page["html"])

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Host)
    host_origin = f"http://127.0.0.1:{server.server_address[1]}"
    serving = threading.Thread(target=server.serve_forever, daemon=True)
    serving.start()
    runner = EmulatorThread(clients=[EmulatorClient(CLIENT_ID, "browser-secret", (host_origin,))])
    emulator = runner.start()
    page["html"] = HOST_PAGE.format(emulator=emulator.base_url, client_id=CLIENT_ID).encode()
    yield host_origin, emulator
    runner.stop()
    server.shutdown()
    server.server_close()


@pytest.fixture
def page(browser, host_and_emulator):
    host_origin, _ = host_and_emulator
    context = browser.new_context()
    tab = context.new_page()
    tab.goto(host_origin + "/")
    yield tab
    context.close()


def open_popup(page, button: str):
    with page.expect_popup() as info:
        page.click(button)
    popup = info.value
    popup.wait_for_load_state()
    return popup


def results(page) -> list:
    # Interval polling: the default (requestAnimationFrame) stalls while the popup has focus.
    page.wait_for_function("window.results.length > 0", polling=100, timeout=10000)
    return page.evaluate("window.results")


def exchange(emulator, code: str) -> requests.Response:
    data = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": "postmessage",
        "client_id": CLIENT_ID,
        "client_secret": "browser-secret",
    }
    return requests.post(emulator.base_url + "/token", data=data, timeout=10)


def test_gis_code_client_delivers_a_working_code(page, host_and_emulator):
    _, emulator = host_and_emulator
    popup = open_popup(page, "#gis")
    assert "origin=http" in popup.url and "redirect_uri=postmessage" in popup.url
    popup.check("input[data-email='carol@example.org']")
    popup.click("#approve")
    (answer,) = results(page)
    response = answer["callback"]
    # Only CodeResponse's fields (@types/google.accounts): no authuser, prompt or hd.
    assert set(response) == {"code", "scope", "state"}
    assert response["state"] == "s-1"
    assert "openid" in response["scope"].split()
    body = exchange(emulator, response["code"]).json()
    assert body["id_token"] and body["access_token"].startswith("ya29.")
    page.wait_for_timeout(200)
    assert popup.is_closed()


def test_gis_deny_reaches_the_callback_as_an_error(page):
    popup = open_popup(page, "#gis")
    popup.click("#deny")
    (answer,) = results(page)
    response = {k: v for k, v in answer["callback"].items() if v is not None}
    assert response == {"error": "access_denied", "state": "s-1"}


def test_gis_popup_closed_and_foreign_messages_ignored(page):
    popup = open_popup(page, "#gis")
    # A message from the page's own origin (not the emulator, not the popup) must not count.
    page.evaluate("window.postMessage({code: 'forged', state: 's-1'}, '*')")
    popup.close()
    (answer,) = results(page)
    assert answer == {"error_callback": {"type": "popup_closed", "message": "Popup window closed"}}


def test_gapi_onload_and_grant_offline_access(page, host_and_emulator):
    _, emulator = host_and_emulator
    page.wait_for_function("window.gapiLoaded === true", polling=100, timeout=10000)
    popup = open_popup(page, "#gapi")
    assert "access_type=offline" in popup.url
    popup.click("#approve")
    (answer,) = results(page)
    assert set(answer["resolved"]) == {"code"}  # grantOfflineAccess resolves {code} (@types/gapi.auth2)
    assert exchange(emulator, answer["resolved"]["code"]).status_code == 200


def test_gis_ignores_what_codeclientconfig_does_not_have_and_requestcode_arguments(page):
    popup = open_popup(page, "#gisIgnored")
    query = parse_qs(urlsplit(popup.url).query)
    assert "prompt" not in query and "nonce" not in query
    assert query["scope"] == ["openid email"] and query["state"] == ["s-2"]
    popup.click("#approve")
    (answer,) = results(page)
    assert set(answer["callback"]) == {"code", "scope", "state"} and answer["callback"]["state"] == "s-2"


def test_gapi_honours_only_gapis_options_and_asks_for_exactly_the_options_scope(page):
    page.wait_for_function("window.gapiLoaded === true", polling=100, timeout=10000)
    popup = open_popup(page, "#gapiMore")
    query = parse_qs(urlsplit(popup.url).query)
    # No base scopes added silently, no login_hint (neither ClientConfig nor OfflineAccessOptions has one).
    assert query["scope"] == ["openid https://www.googleapis.com/auth/drive.appdata"]
    assert "login_hint" not in query and query["redirect_uri"] == ["postmessage"]
    popup.click("#approve")
    (answer,) = results(page)
    assert set(answer["resolved"]) == {"code"}


def test_gapi_init_fails_with_the_emulators_switch(browser, host_and_emulator):
    host_origin, emulator = host_and_emulator
    settings = emulator.base_url + "/emulator/settings"
    assert requests.post(settings, json={"gapi_init_error": "idpiframe_initialization_failed"}, timeout=10).ok
    context = browser.new_context()
    try:
        tab = context.new_page()
        tab.goto(host_origin + "/")
        tab.wait_for_function("window.gapiLoaded === true", polling=100, timeout=10000)
        tab.click("#gapiInit")
        (answer,) = results(tab)
        reason = answer["initFailed"]
        assert reason["error"] == "idpiframe_initialization_failed" and reason["details"]
    finally:
        context.close()
        requests.post(settings, json={"gapi_init_error": ""}, timeout=10)
    bad = requests.post(settings, json={"gapi_init_error": "<script>"}, timeout=10)
    assert bad.status_code == 400 and bad.json()["error"] == "invalid_request"


def test_gapi_deny_rejects(page):
    popup = open_popup(page, "#gapi")
    popup.click("#deny")
    (answer,) = results(page)
    assert answer == {"rejected": {"error": "access_denied"}}
