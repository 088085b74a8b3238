"""The public Python API as README shows it: every name in ``__all__`` exists, and the routes merge into a host app."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re

import pytest
from tornado.httpserver import HTTPServer
from tornado.testing import bind_unused_port
from tornado.web import Application, RequestHandler

import tornado_signin
from harness import CLIENT_ID, CLIENT_SECRET, PageClient, json_body, make_config
from tornado_signin.emulator import Emulator, EmulatorClient

#: Every module of the package but its two faces (``tornado_signin``, ``tornado_signin.web``: docstrings only).
PUBLIC = sorted(m.name.removeprefix("tornado_signin.")
                for m in pkgutil.walk_packages(tornado_signin.__path__, "tornado_signin.")
                if m.name != "tornado_signin.web")

#: The entry points a developer starts from: each shows its use in a literal block ("Example::") of its docstring
#: (for a module, the module's).
ENTRY_POINTS = [
    "config.load_config", "app.make_app", "app.signin_routes", "wiring.build_context", "wiring.open_store",
    "wiring.run_offline", "wiring.session_registry", "scripts.get_credentials", "scripts.authorized_session",
    "offline.OfflineAccess.credentials", "offline.OfflineAccess.credentials_for_all", "store.TokenStore",
    "store.load_store", "hub.load_hub", "hooks", "web.host", "web.host.SigninButton", "users.SignedInUser",
    "expiry.AccessExpiry.add_listener", "live_sessions.SessionRegistry", "risc.RiscReceiver", "grants.GrantGuard",
    "migrate.migrate", "testing", "emulator",
]


def test_every_module_is_listed():
    assert len(PUBLIC) > 50 and "web.host" in PUBLIC and "emulator.risc" in PUBLIC


@pytest.mark.parametrize("name", PUBLIC)
def test_every_public_module_names_its_api_and_each_name_exists(name):
    module = importlib.import_module(f"tornado_signin.{name}")
    assert module.__all__, name
    missing = [n for n in module.__all__ if not hasattr(module, n)]
    assert missing == []


def _entry_point(dotted: str) -> object:
    parts = dotted.split(".")
    for split in range(len(parts), 0, -1):
        try:
            found: object = importlib.import_module("tornado_signin." + ".".join(parts[:split]))
        except ImportError:
            continue
        for attr in parts[split:]:
            found = getattr(found, attr)
        return found
    raise AssertionError(dotted)


@pytest.mark.parametrize("dotted", ENTRY_POINTS)
def test_each_entry_point_shows_its_use(dotted):
    doc = inspect.getdoc(_entry_point(dotted)) or ""
    assert re.search(r"::$", doc, re.M), f"{dotted}: no literal block (Example::) in its docstring"


class Mine(RequestHandler):
    def get(self) -> None:
        self.write("host page")


@pytest.mark.gen_test(timeout=30)
async def test_the_routes_merge_into_a_host_application_as_readme_shows():
    from tornado_signin.app import signin_routes, template_path
    from tornado_signin.wiring import build_context

    app_sock, app_port = bind_unused_port()
    emu_sock, emu_port = bind_unused_port()
    app_url, emulator_url = f"http://127.0.0.1:{app_port}", f"http://127.0.0.1:{emu_port}"
    emulator = Emulator(clients=[EmulatorClient(CLIENT_ID, CLIENT_SECRET, (app_url,))], base_url=emulator_url)
    emu_server = HTTPServer(emulator.make_app())
    emu_server.add_sockets([emu_sock])
    config = make_config(app_url, emulator_url)

    ctx = build_context(config)
    app = Application([*signin_routes(ctx), (r"/mine", Mine)],
                      cookie_secret=config.server.cookie_secret, template_path=template_path(), signin=ctx)
    server = HTTPServer(app)
    server.add_sockets([app_sock])
    try:
        page = PageClient(app_url, app_url)
        assert (await page.fetch("/mine")).body == b"host page"
        response = await page.post_code(emulator.mint_code(CLIENT_ID, "alice@example.com"))
        assert response.code == 200, response.body
        assert json_body(response)["user"]["email"] == "alice@example.com"
    finally:
        server.stop()
        emu_server.stop()
        await ctx.close()
