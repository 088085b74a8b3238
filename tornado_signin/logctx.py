"""Structured logs: a request id in every log line of that request.

:data:`request_id` is a :class:`contextvars.ContextVar` set by the request
handlers (from a sane incoming ``X-Request-Id``, e.g. set by nginx, or a new
one) and echoed in the ``X-Request-Id`` response header. Tornado runs each
request in its own task, so the id follows the request through every
coroutine, and :class:`~tornado_signin.workers.WorkerPool` copies the context
into its threads, so store and Google-client lines carry it too.

:class:`RequestIdFilter` puts it on every record as ``request_id`` (``-``
outside a request); :class:`JsonFormatter` writes one JSON object per line
(``log_format: json``).
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import secrets
import time

__all__ = ["request_id", "new_request_id", "accept_request_id", "RequestIdFilter", "JsonFormatter",
           "TEXT_FORMAT", "configure_logging"]

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("tornado_signin_request_id", default="-")

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s]: %(message)s"
_SANE = re.compile(r"^[A-Za-z0-9._:-]{8,64}$")


def new_request_id() -> str:
    """Return a fresh random id (16 hex characters)."""
    return secrets.token_hex(8)


def accept_request_id(incoming: str | None) -> str:
    """Return ``incoming`` if it is a sane id (8–64 of ``[A-Za-z0-9._:-]``), else a new one."""
    if incoming and _SANE.match(incoming):
        return incoming
    return new_request_id()


class RequestIdFilter(logging.Filter):
    """Add ``record.request_id`` (the current request's id, or ``-``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = request_id.get()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, request_id, message (and exc)."""

    def format(self, record: logging.LogRecord) -> str:
        document = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "request_id": getattr(record, "request_id", request_id.get()),
            "message": record.getMessage(),
        }
        if record.exc_info:
            document["exc"] = self.formatException(record.exc_info)
        return json.dumps(document)


def configure_logging(level: str = "INFO", fmt: str = "text") -> None:
    """Configure the root logger: stderr, ``level``, text or JSON lines, request ids on every line."""
    handler = logging.StreamHandler()
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(getattr(logging, level, logging.INFO))
