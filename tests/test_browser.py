"""The whole flow in a real browser: Debian's headless Chromium driven by Playwright.

``tornado-signin serve`` runs in demo mode (app + emulator, as a newcomer
would start it) in a temporary folder. The test clicks ``#signinButton``,
picks an account in the emulator's popup, presses ``#approve``, and reads
``#status``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from procs import free_port, wait_port

pytestmark = pytest.mark.browser

@pytest.fixture
def playwright_browser(chromium):
    return chromium


def start_demo(folder: Path, *extra: str) -> tuple[subprocess.Popen, str]:
    port, emulator_port = free_port(), free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "tornado_signin.cli", "serve", "--port", str(port),
         "--emulator-port", str(emulator_port), *extra],
        cwd=folder, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    wait_port(port, proc=process, timeout=20)
    wait_port(emulator_port, proc=process, timeout=20)
    return process, f"http://127.0.0.1:{port}"


@pytest.fixture
def demo(tmp_path):
    servers = []

    def start(*extra: str) -> str:
        process, url = start_demo(tmp_path, *extra)
        servers.append(process)
        return url

    yield start
    for process in servers:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()


def sign_in(browser, url: str, email: str) -> tuple[object, str]:
    context = browser.new_context()
    page = context.new_page()
    page.goto(url + "/")
    # Locators, not string predicates: the page's CSP forbids eval, as it should.
    page.wait_for_selector("#signinButton:not([disabled])")
    with page.expect_popup() as popup_info:
        page.click("#signinButton")
    popup = popup_info.value
    popup.wait_for_load_state()
    popup.check(f"input[data-email='{email}']")
    popup.click("#approve")
    page.locator("#status", has_text="fully logged in").wait_for(timeout=15000)
    return page, page.text_content("#status")


def test_gis_flow_in_chromium(playwright_browser, demo):
    url = demo()
    page, status = sign_in(playwright_browser, url, "bob@gmail.com")
    assert "fully logged in" in status and "bob@gmail.com" in status
    # The offline path: the server calls userinfo with the stored credentials.
    page.click("#userinfoButton")
    page.locator("#apiResult", has_text="bob@gmail.com").wait_for(timeout=10000)
    # Incremental authorization: ask for one more scope, then show what is granted.
    with page.expect_popup() as popup_info:
        page.click("#moreScopesButton")
    popup = popup_info.value
    popup.wait_for_load_state()
    popup.click("#approve")
    page.locator("#apiResult", has_text="drive.appdata").wait_for(timeout=10000)
    granted = page.text_content("#apiResult")
    assert "userinfo.email" in granted and "drive.appdata" in granted
    shots = os.environ.get("BROWSER_SCREENSHOT_DIR")
    if shots:
        page.screenshot(path=str(Path(shots) / "tornado-signin-signed-in.png"))
    page.context.close()


def test_gapi_flow_in_chromium(playwright_browser, demo):
    url = demo("--client-library", "gapi")
    page, status = sign_in(playwright_browser, url, "alice@example.com")
    assert "fully logged in" in status and "alice@example.com" in status
    page.context.close()


def test_signout_in_chromium(playwright_browser, demo):
    url = demo()
    page, _ = sign_in(playwright_browser, url, "carol@example.org")
    page.click("#signoutButton")
    page.locator("#status", has_text="Signed out").wait_for(timeout=10000)
    assert page.is_visible("#signinButton")
    page.context.close()


def test_demo_writes_secrets_0600(tmp_path, demo):
    demo()
    secrets_file = tmp_path / ".tornado-signin-dev.json"
    assert secrets_file.exists() and (secrets_file.stat().st_mode & 0o777) == 0o600
