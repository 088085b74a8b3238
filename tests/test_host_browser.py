"""The host-app surface in Chromium: the sign-in under a prefix, the example Drive app end to end."""

from __future__ import annotations

import pytest

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
