"""The package's static files: ``GET <prefix>/signin.js`` (the JavaScript client) and ``<prefix>/favicon.ico``.

Both are read once, when the module is imported, from ``tornado_signin/web/static``
(editable install or wheel alike) and answered from memory with an ETag, so a
browser revalidates them (``no-cache``) instead of refetching.
"""

from __future__ import annotations

import importlib.resources

from .base import BaseHandler

__all__ = ["SigninScriptHandler", "FaviconHandler", "static_file"]


def static_file(name: str) -> bytes:
    """Return the bytes of ``tornado_signin/web/static/<name>``; raise FileNotFoundError if it is not shipped."""
    return importlib.resources.files("tornado_signin.web").joinpath("static", name).read_bytes()


class _AssetHandler(BaseHandler):
    body: bytes = b""
    content_type = "application/octet-stream"

    def compute_etag(self) -> str | None:  # type: ignore[override]
        # The same bytes for everyone (unlike every other answer here): revalidation works.
        return super(BaseHandler, self).compute_etag()

    def get(self) -> None:
        self.set_header("Content-Type", self.content_type)
        self.set_header("Cache-Control", "no-cache")
        self.write(self.body)


class SigninScriptHandler(_AssetHandler):
    """``GET <prefix>/signin.js``: the browser client (see the file's header comment for its API)."""

    body = static_file("signin.js")
    content_type = "text/javascript; charset=utf-8"


class FaviconHandler(_AssetHandler):
    """``GET <prefix>/favicon.ico``: a 16×16 icon, so the page's tab makes no 404."""

    body = static_file("favicon.ico")
    content_type = "image/x-icon"
