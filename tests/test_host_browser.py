"""The host-app surface in Chromium: the sign-in under a prefix, the example Drive app end to end."""

from __future__ import annotations

import json

import pytest

from drive_example import DriveExample
from test_host_prefix import prefixed_server  # noqa: F401  (a fixture)

pytestmark = pytest.mark.browser


def test_signin_under_the_prefix_in_chromium(chromium, prefixed_server):  # noqa: F811 - the imported fixture
    """The page under ``/auth/`` posts its code, fetches its state and opens its socket under ``/auth``."""
    app_url, _, server = prefixed_server
    context = chromium.new_context()
    page = context.new_page()
    requested: list[str] = []
    page.on("request", lambda request: requested.append(request.url))
    page.goto(app_url + "/auth/")
    page.wait_for_selector("#signinButton:not([disabled])")
    with page.expect_popup() as popup_info:
        page.click("#signinButton")
    popup = popup_info.value
    popup.wait_for_load_state()
    popup.check("input[data-email='bob@gmail.com']")
    popup.click("#approve")
    page.locator("#status", has_text="fully logged in").wait_for(timeout=15000)
    assert "bob@gmail.com" in page.text_content("#status")
    own = [url for url in requested if url.startswith(app_url)]
    assert own and all(url.startswith(app_url + "/auth/") for url in own), own
    assert app_url + "/auth/storeauthcode" in own
    context.close()


def test_the_sign_in_page_goes_back_to_next_once_signed_in(chromium, prefixed_server):  # noqa: F811
    """``tornado.web.authenticated`` sends a visitor to ``<prefix>/?next=/path`` when the app has no login_url."""
    app_url, _, server = prefixed_server
    context = chromium.new_context()
    page = context.new_page()
    page.goto(app_url + "/auth/?next=%2Fauth%2Fsession")
    page.wait_for_selector("#signinButton:not([disabled])")
    with page.expect_popup() as popup_info:
        page.click("#signinButton")
    popup = popup_info.value
    popup.wait_for_load_state()
    popup.check("input[data-email='carol@example.org']")
    popup.click("#approve")
    page.wait_for_url(app_url + "/auth/session", timeout=15000)
    assert "carol@example.org" in page.text_content("body")
    context.close()


# -- the example host app: examples/drive/app.py ------------------------------------------------


def test_drive_example_end_to_end_in_chromium(chromium, tmp_path):
    """page → popup consent → "fully logged in as" → /me → /files lists files → the ``sync`` job prints them."""
    example = DriveExample(tmp_path)
    try:
        context = chromium.new_context()
        page = context.new_page()
        # /me without a session: a redirect to the host's login page (its own "/").
        page.goto(example.url + "/me")
        assert page.url.startswith(example.url + "/?next=")
        page.wait_for_selector("#signinButton:not([disabled])")
        with page.expect_popup() as popup_info:
            page.click("#signinButton")
        popup = popup_info.value
        popup.wait_for_load_state()
        popup.check("input[data-email='alice@example.com']")
        popup.click("#approve")
        # After sign-in the page follows ?next= back to /me, which now answers the email.
        page.wait_for_url(example.url + "/me", timeout=15000)
        assert page.text_content("body").strip() == "alice@example.com"
        page.goto(example.url + "/")
        page.locator("#status", has_text="fully logged in as alice@example.com").wait_for(timeout=15000)
        files = page.goto(example.url + "/files")
        assert files is not None and files.status == 200
        listing = json.loads(page.text_content("body"))
        names = {item["name"] for item in listing["files"]}
        assert {"Project plan", "Budget 2026", "notes.txt"} <= names and "Old draft.docx" not in names
        assert {item["name"] for item in listing["appFolder"]["files"]} == {"settings.json", "sync-state.json"}
        context.close()
        # The offline job, the user gone: the stored refresh token lists the same files.
        result = example.sync()
        assert result.returncode == 0, result.stderr
        assert "alice@example.com: 5 files, 2 in the app folder" in result.stdout
        assert "  Project plan  (application/vnd.google-apps.document)" in result.stdout
        assert "  appfolder/settings.json" in result.stdout
    finally:
        example.stop()
