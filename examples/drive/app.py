"""A host Tornado app built on tornado-signin: the seed's own example, listing its users' Google Drive files.

Run it with no config; it starts the Google emulator beside it, as the demo
does, and keeps its store (``drive-example.sqlite3``), its generated secrets
and the emulator's state in the current folder::

    pip install 'tornado-signin[sql,examples]'
    python examples/drive/app.py [--port 8090] [--emulator-port 8091]
    python examples/drive/app.py sync [--emulator-port 8091]   # the offline job (the app must run: its
                                                               # emulator plays Google)

Routes: ``/`` (the host's own page: ``#signinButton``, ``#status``), ``/me``
and ``/files`` (both ``tornado.web.authenticated``), the sign-in under
``/auth`` (``/auth/signin.js``, ``/auth/storeauthcode``, ``/auth/confirm``…).

What it shows, in order: the host builds the context once
(``wiring.build_context``) with its hooks, mounts ``signin_routes(ctx,
prefix="/auth")`` beside its own handlers and passes ``signin=ctx``; its
handlers mix in ``SigninMixin`` (``current_user``, ``google_credentials``);
its page renders the ``SigninButton`` UI module under ``set_signin_csp``;
Drive is called with google-api-python-client exactly as the seed's Python
sample does, off the IOLoop; ``sync`` does the same for every stored user
with the user gone.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import shlex
import sys
from pathlib import Path
from typing import Any

import httplib2
import tornado.web
from google.auth.exceptions import RefreshError
from googleapiclient import discovery
from googleapiclient.errors import HttpError

from tornado_signin.app import NotFoundHandler, signin_routes
from tornado_signin.config import Config, config_from_dict
from tornado_signin.demo import cli_command, demo_config_document
from tornado_signin.emulator import EmulatorStateError
from tornado_signin.errors import ConsentRequiredError, GoogleUnavailableError, MissingScopeError, SigninError
from tornado_signin.google import normalize_scopes as expand_scopes
from tornado_signin.hooks import Revoked, SignedIn, SigninHooks
from tornado_signin.offline import OfflineAccess
from tornado_signin.server import serve_demo
from tornado_signin.web.host import UI_MODULES, SigninMixin
from tornado_signin.scripts import run_offline
from tornado_signin.wiring import build_context

log = logging.getLogger("drive-example")

HERE = Path(__file__).resolve().parent
PREFIX = "/auth"
#: What the app asks Google for: sign-in, its own app folder, and reading the user's files.
DRIVE_SCOPES = ("https://www.googleapis.com/auth/drive.appdata", "https://www.googleapis.com/auth/drive.readonly")
SCOPES = ("openid", "email", "profile", *DRIVE_SCOPES)
STORE_FILE = "drive-example.sqlite3"
CONFIG_FILE = "drive-example.yaml"


def config_document(folder: Path, host: str, port: int, emulator_port: int) -> dict[str, Any]:
    """Return the app's config: the demo's (emulator endpoints, generated secrets) with its prefix, scopes, store."""
    document = demo_config_document(folder=folder, host=host, port=port,
                                    emulator_url=f"http://{host}:{emulator_port}",
                                    store={"backend": "sql", "url": f"sqlite:///{folder / STORE_FILE}"})
    document["server"]["path_prefix"] = PREFIX
    document["google"]["scopes"] = list(SCOPES)
    return document


def drive_endpoint(config: Config) -> str:
    """Return Drive v3's endpoint: Google's, or the emulator's (what ``Emulator.drive_endpoint`` gives)."""
    token_uri = config.google.endpoints.token_uri
    if token_uri.startswith("https://oauth2.googleapis.com/"):
        return "https://www.googleapis.com/drive/v3/"
    return token_uri.rsplit("/", 1)[0] + "/drive/v3/"


def list_drive(credentials: Any, api_endpoint: str) -> dict[str, Any]:
    """Return ``{"files": [...], "appFolder": {...}}`` for ``credentials``: blocking, run it off the IOLoop.

    As the seed's Python sample calls Drive: google-api-python-client's
    discovery document shipped with the library (``static_discovery``), the
    endpoint pointed elsewhere through ``client_options`` (the trailing
    ``/drive/v3/`` is part of it). A new service per call: httplib2 is not
    thread-safe.
    """
    drive = discovery.build("drive", "v3", credentials=credentials, static_discovery=True, cache_discovery=False,
                            client_options={"api_endpoint": api_endpoint})
    appfolder = drive.files().get(fileId="appfolder", fields="id, name").execute()
    listing = drive.files().list(pageSize=100, q="trashed = false",
                                 fields="nextPageToken, files(id, name, mimeType, modifiedTime)").execute()
    appdata = drive.files().list(spaces="appDataFolder", fields="files(id, name, mimeType)").execute()
    return {"files": listing.get("files", []),
            "appFolder": {"id": appfolder["id"], "name": appfolder["name"], "files": appdata.get("files", [])}}


async def drive_listing(offline: OfflineAccess, sub: str, credentials: Any, api_endpoint: str) -> dict[str, Any]:
    """Return :func:`list_drive` of ``credentials`` (``sub``'s), run in the context's worker pool.

    When Google ended the access token before its time (the grant was revoked
    at Google, or the token expired meanwhile), google-auth's own refresh
    behind the 401 fails: refresh once through the store instead, which
    persists a new token or, answered ``invalid_grant``, marks the grant
    revoked and raises ConsentRequiredError (the ``on_revoked`` hook runs).
    """
    try:
        return await offline.workers.run(list_drive, credentials, api_endpoint)
    except RefreshError:
        await offline.fresh_record(sub, force=True)
        credentials = await offline.credentials(sub, required_scopes=DRIVE_SCOPES)
        return await offline.workers.run(list_drive, credentials, api_endpoint)


# -- the host's handlers ---------------------------------------------------------------


class HomeHandler(SigninMixin, tornado.web.RequestHandler):
    """``/``: the host's own page with the sign-in button (also its ``login_url``)."""

    def get(self) -> None:
        self.set_signin_csp()
        # Only scopes this app uses: a link must not make the page ask Google for others.
        wanted = expand_scopes(self.get_query_argument("scope", ""))
        self.render("home.html", next_url=self.get_query_argument("next", ""),
                    consent_scopes=[scope for scope in DRIVE_SCOPES if scope in wanted])


class MeHandler(SigninMixin, tornado.web.RequestHandler):
    """``/me``: who is signed in (a redirect to ``/`` without a session)."""

    @tornado.web.authenticated
    def get(self) -> None:
        self.set_header("Content-Type", "text/plain; charset=UTF-8")
        self.set_header("Cache-Control", "no-store")
        self.write(self.current_user.email or self.current_user.sub)


class FilesHandler(SigninMixin, tornado.web.RequestHandler):
    """``/files``: the user's Drive files, fetched by the server with the stored credentials."""

    @tornado.web.authenticated
    async def get(self) -> None:
        self.set_header("Cache-Control", "no-store")
        try:
            credentials = await self.google_credentials(scopes=DRIVE_SCOPES)
            listing = await drive_listing(self.signin.offline, self.current_user.sub, credentials,
                                          drive_endpoint(self.signin.config))
        except MissingScopeError as exc:
            # Not granted yet: back to the page, which asks for them (incremental consent).
            self.redirect(self.consent_url(sorted(exc.missing)))
            return
        except ConsentRequiredError:
            self.redirect(self.consent_url())
            return
        except GoogleUnavailableError:
            self.set_status(503)
            self.write({"error": "google unavailable"})
            return
        except HttpError as exc:
            log.warning("Drive answered %s", exc.status_code)
            self.set_status(502)
            self.write({"error": "drive refused the call"})
            return
        self.write(listing)


# -- wiring ----------------------------------------------------------------------------


async def on_signed_in(event: SignedIn) -> None:
    log.info("signed in: %s (%d scopes, refresh token stored: %s)", event.user.email, len(event.scopes),
             "yes" if event.refresh_token_stored else "no, kept the one we have")


def on_revoked(event: Revoked) -> None:
    log.info("access ended for %s (%s)", event.sub, event.reason)


def make_app(config: Config) -> tornado.web.Application:
    """Return the host application: its own routes, the sign-in under /auth, the context in settings["signin"]."""
    ctx = build_context(config, hooks=SigninHooks(on_signed_in=on_signed_in, on_revoked=on_revoked))
    routes: list[Any] = [
        (r"/", HomeHandler),
        (r"/me", MeHandler),
        (r"/files", FilesHandler),
        *signin_routes(ctx, prefix=PREFIX),
    ]
    return tornado.web.Application(
        routes,
        signin=ctx,
        login_url="/",
        cookie_secret=config.server.cookie_secret,
        template_path=str(HERE / "templates"),
        static_path=str(HERE / "static"),
        ui_modules=UI_MODULES,
        default_handler_class=NotFoundHandler,
        default_handler_args={"ctx": ctx},
        # /confirm is pinged by the context's one timer (limits.websocket_ping_*), not by Tornado per socket.
        websocket_max_message_size=config.limits.websocket_max_message_bytes,
    )


def serve(args: argparse.Namespace) -> int:
    folder = Path.cwd()

    def listening(app_url: str, emulator_url: str, config_path: Path) -> None:
        print(f"Drive example on {app_url} (Google emulator on {emulator_url}/)", flush=True)
        # Lines that run as pasted, from any shell: this interpreter and the CLI by absolute paths when needed.
        job = f"{shlex.quote(sys.executable)} {shlex.quote(str(Path(sys.argv[0]).resolve()))} sync"
        print(f"the offline job: {job} --emulator-port {args.emulator_port}", flush=True)
        print(f"the CLI reaches this app with: {cli_command()} users --config {shlex.quote(str(config_path))}",
              flush=True)

    serve_demo(host=args.host, port=args.port, emulator_port=args.emulator_port, folder=folder,
               on_listening=listening, document=config_document(folder, args.host, args.port, args.emulator_port),
               build_app=make_app, config_file=CONFIG_FILE)
    return 0


def sync(args: argparse.Namespace) -> int:
    """The offline job: list every stored user's Drive files with the stored refresh token; the users are gone."""
    folder = Path.cwd()
    config = config_from_dict(config_document(folder, args.host, args.port, args.emulator_port), base_dir=folder,
                              environ={})
    endpoint = drive_endpoint(config)

    async def work(offline: OfflineAccess) -> int:
        seen = failed = 0
        # Every stored user, refreshed with the stored refresh token (and persisted) when the access token
        # runs out; one user's error is that user's outcome, the job goes on.
        async for outcome in offline.credentials_for_all(concurrency=8, required_scopes=DRIVE_SCOPES):
            seen += 1
            who = outcome.user
            with contextlib.suppress(SigninError):  # the email, to print (an unknown user has none)
                who = (await offline.find(outcome.user)).email or who
            try:
                if outcome.error is not None:
                    raise outcome.error
                listing = await drive_listing(offline, outcome.user, outcome.credentials, endpoint)
            except ConsentRequiredError as exc:
                print(f"{who}: needs to sign in again ({exc})")
                continue
            except (SigninError, HttpError) as exc:
                print(f"{who}: failed: {exc}", file=sys.stderr)
                failed += 1
                continue
            except (OSError, httplib2.HttpLib2Error) as exc:  # Drive (the emulator: is the app running?) is down
                print(f"{who}: failed: Drive unreachable at {endpoint} ({type(exc).__name__})", file=sys.stderr)
                failed += 1
                continue
            print(f"{who}: {len(listing['files'])} files, {len(listing['appFolder']['files'])} in the app folder")
            for item in listing["files"]:
                print(f"  {item['name']}  ({item['mimeType']})")
            for item in listing["appFolder"]["files"]:
                print(f"  appfolder/{item['name']}")
        if not seen:
            print("no stored users: sign in on the app's page first", file=sys.stderr)
        return 1 if failed else 0

    return run_offline(config, work)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="app.py", description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("command", nargs="?", choices=("serve", "sync"), default="serve",
                        help="serve (default): the app and its emulator; sync: the offline job")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8090, help="the app's port (default 8090)")
    parser.add_argument("--emulator-port", type=int, default=8091, help="the Google emulator's port (default 8091)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        return sync(args) if args.command == "sync" else serve(args)
    except (SigninError, EmulatorStateError) as exc:  # a busy port, a state folder in use, a store that cannot open
        print(f"app.py: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
