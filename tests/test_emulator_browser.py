"""The emulator's client scripts in a real browser (Debian's headless Chromium via Playwright).

A host page on its own origin loads ``/gsi/client`` and ``/js/platform.js``
from the emulator, as an app page would, and the tests drive the popup.
"""

from __future__ import annotations

import http.server
import threading

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
<body><button id="gis" onclick="gis()">GIS</button><button id="gapi" onclick="gapiGrant()">gapi</button></body></html>
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
    assert response["state"] == "s-1"
    assert response["authuser"] == "0"
    assert response["prompt"] in ("consent", "none")
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
    assert exchange(emulator, answer["resolved"]["code"]).status_code == 200


def test_gapi_deny_rejects(page):
    popup = open_popup(page, "#gapi")
    popup.click("#deny")
    (answer,) = results(page)
    assert answer == {"rejected": {"error": "access_denied"}}
