"""signin.js on the demo page in Chromium: one request per login, the outcome whatever the order, gapi's failures.

``tornado-signin serve`` runs in demo mode (app + emulator) as in
test_browser.py. The order of the POST's answer and the socket's frame is
made explicit with Playwright: the page's websocket goes through
``page.route_web_socket`` (frames held back, released on cue) and the
disconnect answer through ``page.route`` (fetched from the server, handed to
the page on cue).
"""

from __future__ import annotations

import re
import subprocess
import sys
from urllib.parse import parse_qs, urlsplit

import pytest
import requests

from procs import free_port, wait_port

pytestmark = pytest.mark.browser

DISCONNECTED = "Disconnected: access revoked and your tokens forgotten."


@pytest.fixture
def demo(tmp_path):
    """Start ``serve`` in demo mode (extra CLI arguments) in ``tmp_path``; return (app URL, emulator URL)."""
    servers: list[subprocess.Popen] = []

    def start(*extra: str) -> tuple[str, str]:
        port, emulator_port = free_port(), free_port()
        process = subprocess.Popen(
            [sys.executable, "-m", "tornado_signin.cli", "serve", "--port", str(port),
             "--emulator-port", str(emulator_port), *extra],
            cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        servers.append(process)
        wait_port(port, proc=process, timeout=20)
        wait_port(emulator_port, proc=process, timeout=20)
        return f"http://127.0.0.1:{port}", f"http://127.0.0.1:{emulator_port}"

    yield start
    for process in servers:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()


def approve(page, button: str, email: str | None = None):
    """Click ``button``, approve in the emulator's popup (as ``email``); return the popup's URL query."""
    with page.expect_popup() as info:
        page.click(button)
    popup = info.value
    popup.wait_for_load_state()
    query = parse_qs(urlsplit(popup.url).query)
    if email:
        popup.check(f"input[data-email='{email}']")
    popup.click("#approve")
    return query


def status(page) -> str:
    return page.text_content("#status") or ""


def test_a_sign_in_makes_no_get_state_after_the_page_load(chromium, demo):
    app_url, _ = demo()
    context = chromium.new_context()
    page = context.new_page()
    requested: list[tuple[str, str]] = []
    page.on("request", lambda r: requested.append((r.method, urlsplit(r.url).path)) if r.url.startswith(app_url)
            else None)
    page.goto(app_url + "/")
    page.wait_for_selector("#signinButton:not([disabled])")
    loaded = len(requested)
    approve(page, "#signinButton", "bob@gmail.com")
    page.locator("#status", has_text="fully logged in").wait_for(timeout=15000)
    # A second login (incremental consent) is one request too; its popup pre-selects the user.
    query = approve(page, "#moreScopesButton")
    assert query["login_hint"] == ["bob@gmail.com"]
    assert query["include_granted_scopes"] == ["true"]
    assert "drive.appdata" in query["scope"][0] and "openid" in query["scope"][0].split()
    page.locator("#apiResult", has_text="drive.appdata").wait_for(timeout=10000)
    after = requested[loaded:]
    assert ("GET", "/state") not in after, after
    assert after.count(("POST", "/storeauthcode")) == 2, after
    assert ("GET", "/state") not in requested  # the page brought its first state
    context.close()


def test_disconnect_shows_disconnected_when_the_signed_out_frame_comes_after_the_answer(chromium, demo):
    app_url, _ = demo()
    context = chromium.new_context()
    page = context.new_page()
    sockets = []

    def handler(ws):
        server = ws.connect_to_server()
        entry = {"ws": ws, "held": [], "closed": None}
        sockets.append(entry)

        def from_server(message):
            if '"signed_out"' in str(message):
                entry["held"].append(message)  # delivered only after the answer, below
            elif entry["held"]:
                return
            else:
                ws.send(message)
        server.on_message(from_server)
        # The server closes a signed-out socket right after the frame: hold the close too.
        server.on_close(lambda code, reason: entry.update(closed=(code, reason)))

    page.route_web_socket(re.compile(r"/confirm$"), handler)
    page.goto(app_url + "/")
    page.wait_for_selector("#signinButton:not([disabled])")
    approve(page, "#signinButton", "alice@example.com")
    page.locator("#status", has_text="fully logged in").wait_for(timeout=15000)
    with page.expect_response(lambda r: r.url.endswith("/disconnect")) as answer:
        page.click("#disconnectButton")
    assert answer.value.status == 200
    page.locator("#status", has_text="Disconnected").wait_for(timeout=10000)
    page.wait_for_function("() => true")  # let the answer's handler finish
    held = [m for entry in sockets for m in entry["held"]]
    assert held, "the server sent no signed_out frame"
    for entry in sockets:
        for message in entry["held"]:
            entry["ws"].send(message)
        if entry["closed"]:
            entry["ws"].close(code=entry["closed"][0], reason=entry["closed"][1] or "")
    page.wait_for_timeout(700)
    assert status(page) == DISCONNECTED
    assert page.is_visible("#signinButton") and not page.is_visible("#signedInActions")
    context.close()


def test_disconnect_shows_disconnected_when_the_signed_out_frame_comes_first(chromium, demo):
    app_url, _ = demo()
    context = chromium.new_context()
    page = context.new_page()
    delivered: list[str] = []

    def socket_handler(ws):
        server = ws.connect_to_server()

        def from_server(message):
            ws.send(message)
            delivered.append(str(message))
        server.on_message(from_server)

    page.route_web_socket(re.compile(r"/confirm$"), socket_handler)
    held: list = []

    def hold_answer(route):
        held.append((route, route.fetch()))  # the server has disconnected; the page waits for the answer

    page.goto(app_url + "/")
    page.wait_for_selector("#signinButton:not([disabled])")
    approve(page, "#signinButton", "carol@example.org")
    page.locator("#status", has_text="fully logged in").wait_for(timeout=15000)
    page.route(re.compile(r"/disconnect$"), hold_answer)
    page.click("#disconnectButton")
    for _ in range(100):
        if held and any('"signed_out"' in m for m in delivered):
            break
        page.wait_for_timeout(100)
    assert held and any('"signed_out"' in m for m in delivered), (held, delivered)
    page.wait_for_timeout(300)
    assert "fully logged in" in status(page)  # the frame alone waits for the more specific answer
    route, response = held[0]
    route.fulfill(response=response)
    page.locator("#status", has_text="Disconnected").wait_for(timeout=10000)
    page.wait_for_timeout(500)
    assert status(page) == DISCONNECTED
    context.close()


def test_a_signed_out_frame_from_elsewhere_still_signs_the_page_out(chromium, demo):
    app_url, _ = demo()
    context = chromium.new_context()
    page = context.new_page()
    page.goto(app_url + "/")
    page.wait_for_selector("#signinButton:not([disabled])")
    approve(page, "#signinButton", "bob@gmail.com")
    page.locator("#status", has_text="fully logged in").wait_for(timeout=15000)
    other = context.new_page()  # another tab of the same browser session signs out
    other.goto(app_url + "/")
    other.wait_for_selector("#signoutButton")
    other.locator("#status", has_text="fully logged in").wait_for(timeout=15000)
    other.click("#signoutButton")
    other.locator("#status", has_text="Signed out").wait_for(timeout=10000)
    page.locator("#status", has_text="Signed out").wait_for(timeout=10000)
    assert page.is_visible("#signinButton")
    context.close()


def test_gapi_init_failure_is_shown_on_the_page(chromium, demo):
    app_url, emulator_url = demo("--client-library", "gapi")
    switched = requests.post(emulator_url + "/emulator/settings", json={"gapi_init_error": "idpiframe_initialization_failed"},
                             timeout=10)
    assert switched.status_code == 200 and switched.json()["gapi_init_error"] == "idpiframe_initialization_failed"
    context = chromium.new_context()
    page = context.new_page()
    page.goto(app_url + "/")
    page.locator("#status", has_text="idpiframe_initialization_failed").wait_for(timeout=10000)
    assert "July 2022" in status(page)
    assert page.is_disabled("#signinButton")
    # Switched back, the same page works again.
    assert requests.post(emulator_url + "/emulator/settings", json={"gapi_init_error": ""}, timeout=10).ok
    page.reload()
    page.wait_for_selector("#signinButton:not([disabled])")
    context.close()


def test_gapi_incremental_consent_asks_for_base_and_extra_scopes(chromium, demo):
    app_url, _ = demo("--client-library", "gapi")
    context = chromium.new_context()
    page = context.new_page()
    page.goto(app_url + "/")
    page.wait_for_selector("#signinButton:not([disabled])")
    first = approve(page, "#signinButton", "alice@example.com")
    page.locator("#status", has_text="fully logged in").wait_for(timeout=15000)
    base = first["scope"][0].split()
    more = approve(page, "#moreScopesButton")
    asked = more["scope"][0].split()
    assert set(base) < set(asked) and "https://www.googleapis.com/auth/drive.appdata" in asked
    page.locator("#apiResult", has_text="drive.appdata").wait_for(timeout=10000)
    context.close()


HOST_PAGE = """<!DOCTYPE html><html><head><meta charset="utf-8"></head><body>
<button id="mine" type="button">Mine</button><p id="out"></p>
<script src="/auth/signin.js" data-client-id="{client_id}" data-scope="openid email"
        data-script-url="{emulator}/gsi/client"></script>
<script>
  window.events = [];
  TornadoSignin.mount(document.getElementById("mine"), {{
    onSignedIn: function (user) {{ events.push("in:" + user.email); document.getElementById("out").textContent = "in " + user.email; }},
    onSignedOut: function (reason) {{ events.push("out:" + reason); }},
    onFailed: function (reason) {{ events.push("failed:" + reason); }}
  }});
</script></body></html>"""


@pytest.fixture
def host_app():
    """An in-process stack mounted under /auth, in a thread, plus a host page at /host.html; yield its URL."""
    import asyncio
    import threading

    from tornado.web import RequestHandler

    from harness import CLIENT_ID, start_stack

    ready = threading.Event()
    box: dict = {}

    class HostPage(RequestHandler):
        def get(self):
            self.finish(HOST_PAGE.format(client_id=CLIENT_ID, emulator=box["stack"].emulator.base_url))

    def run():
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)

        async def main():
            stack = box["stack"] = await start_stack(server={"path_prefix": "/auth"})
            stack.app.add_handlers(r".*", [(r"/host\.html", HostPage)])
            box["stop"] = asyncio.Event()
            ready.set()
            await box["stop"].wait()
            await stack.close()

        box["loop"] = loop
        loop.run_until_complete(main())
        loop.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert ready.wait(20)
    yield box["stack"].app_url
    box["loop"].call_soon_threadsafe(box["stop"].set)
    thread.join(10)


def test_signin_js_works_on_a_host_page_with_only_data_attributes(chromium, host_app):
    """A host page: the script tag's data- attributes, GET /session and GET /state on load, the callbacks."""
    app_url = host_app
    context = chromium.new_context()
    page = context.new_page()
    requested: list[str] = []
    page.on("request", lambda r: requested.append(urlsplit(r.url).path) if r.url.startswith(app_url) else None)
    page.goto(app_url + "/host.html")
    page.wait_for_selector("#mine:not([disabled])")
    assert "/auth/session" in requested and "/auth/state" in requested  # the first load of a host page
    approve(page, "#mine", "bob@gmail.com")
    page.locator("#out", has_text="in bob@gmail.com").wait_for(timeout=15000)
    assert requested.count("/auth/state") == 1 and "/auth/storeauthcode" in requested
    assert page.is_hidden("#mine")
    assert page.evaluate("window.events") == ["in:bob@gmail.com"]
    context.close()


def test_a_refused_state_is_retried_once_with_the_state_of_the_answer(chromium, demo):
    """A state the server refuses (spent, expired, another session's): the 403 brings the next one, the code is
    still unspent (the state gate runs before the exchange), and the client retries once — still no GET /state."""
    app_url, _ = demo()
    context = chromium.new_context()
    page = context.new_page()
    posts: list[int] = []
    requested: list[str] = []
    page.on("request", lambda r: requested.append(urlsplit(r.url).path) if r.url.startswith(app_url) else None)

    def spoil_first(route):
        posts.append(1)
        headers = dict(route.request.headers)
        if len(posts) == 1:
            headers["x-signin-state"] = "spent.0.state"
        route.continue_(headers=headers)

    page.route(re.compile(r"/storeauthcode$"), spoil_first)
    page.goto(app_url + "/")
    page.wait_for_selector("#signinButton:not([disabled])")
    approve(page, "#signinButton", "alice@example.com")
    page.locator("#status", has_text="fully logged in").wait_for(timeout=15000)
    assert len(posts) == 2 and "/state" not in requested
    context.close()


def test_gis_consent_again_works_without_prompt(chromium, demo, tmp_path):
    """GIS has no prompt option: with no refresh token stored and none sent, the server ends the stale grant and
    the user's next consent in the page (no prompt anywhere) is a first one, which brings a refresh token."""
    import sqlite3

    app_url, _ = demo()
    context = chromium.new_context()
    page = context.new_page()
    page.goto(app_url + "/")
    page.wait_for_selector("#signinButton:not([disabled])")
    approve(page, "#signinButton", "alice@example.com")
    page.locator("#status", has_text="fully logged in").wait_for(timeout=15000)
    page.click("#signoutButton")
    page.locator("#status", has_text="Signed out").wait_for(timeout=10000)
    store = sqlite3.connect(tmp_path / "tornado-signin-demo.sqlite3")
    tables = [name for (name,) in store.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
    for table in tables:
        store.execute(f'DELETE FROM "{table}"')  # the stored refresh token is gone
    store.commit()
    first = approve(page, "#signinButton", "alice@example.com")
    assert "prompt" not in first
    page.locator("#status", has_text="Google sent no refresh token").wait_for(timeout=15000)
    again = approve(page, "#signinButton", "alice@example.com")
    assert "prompt" not in again
    page.locator("#status", has_text="fully logged in").wait_for(timeout=15000)
    rows = sum(store.execute(f'SELECT COUNT(*) FROM "{table}"').fetchone()[0] for table in tables)
    store.close()
    assert rows >= 1
    context.close()


def test_an_old_failure_replayed_by_the_socket_is_not_shown_after_a_reload(chromium, demo):
    """The hub replays the session's last frame to a socket that connects late; on a fresh page that is an old
    attempt's failure, which is not news: the page says "Not signed in.", and the next sign-in works."""
    app_url, emulator_url = demo()
    fault = {"endpoint": "token.authorization_code", "kind": "status", "status": 400,
             "body": {"error": "invalid_grant", "error_description": "Bad Request"}}
    assert requests.post(emulator_url + "/emulator/faults", json=fault, timeout=10).ok
    context = chromium.new_context()
    page = context.new_page()
    page.goto(app_url + "/")
    page.wait_for_selector("#signinButton:not([disabled])")
    approve(page, "#signinButton", "bob@gmail.com")
    page.locator("#status", has_text="Sign-in failed").wait_for(timeout=15000)
    frames: list[str] = []
    page.on("websocket", lambda ws: ws.on("framereceived", lambda payload: frames.append(str(payload))))
    page.reload()
    page.wait_for_selector("#signinButton:not([disabled])")
    for _ in range(50):
        if any('"failed"' in frame for frame in frames):
            break
        page.wait_for_timeout(100)
    assert any('"failed"' in frame for frame in frames), frames  # the replay did come
    page.wait_for_timeout(300)
    assert status(page) == "Not signed in."
    approve(page, "#signinButton", "carol@example.org")
    page.locator("#status", has_text="fully logged in").wait_for(timeout=15000)
    context.close()
