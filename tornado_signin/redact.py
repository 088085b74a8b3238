"""Keep codes, tokens and secrets out of every log line, whoever logs them.

Libraries log what they send: Tornado's curl client (which host apps and
tests may use) logs request bodies and headers at DEBUG; requests-oauthlib and
oauthlib log tokens at DEBUG. A handler-level filter would miss handlers added by others
(pytest's caplog, an embedding app's), so :func:`install_redaction` wraps the
process's log-record factory: every record is redacted when it is created.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterable

__all__ = ["install_redaction", "redact", "redact_url", "reason"]

REDACTED = "[redacted]"
_PATTERNS = [
    (re.compile(r"(?i)\b(code|client_secret|refresh_token|access_token|id_token|token|assertion|state)=([^&\s'\"]+)"),
     r"\1=" + REDACTED),
    (re.compile(r"(?i)(['\"](?:code|client_secret|refresh_token|access_token|id_token|token)['\"]\s*:\s*)(['\"])[^'\"]*\2"),
     r"\1\2" + REDACTED + r"\2"),
    (re.compile(r"(?i)\b(Bearer|Basic)\s+[A-Za-z0-9._~+/=-]+"), r"\1 " + REDACTED),
    (re.compile(r"ya29\.[A-Za-z0-9._-]+"), REDACTED),
    (re.compile(r"1//[A-Za-z0-9._-]+"), REDACTED),
    (re.compile(r"\b4/[A-Za-z0-9._-]{8,}"), REDACTED),
    (re.compile(r"GOCSPX-[A-Za-z0-9_-]+"), REDACTED),
    (re.compile(r"eyJ[A-Za-z0-9_-]*\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*"), REDACTED),
]
_literals: set[str] = set()
_lock = threading.Lock()
_installed = False


def redact(text: str) -> str:
    """Return ``text`` with anything that looks like a code, token or registered secret replaced."""
    for literal in _literals:
        if literal in text:
            text = text.replace(literal, REDACTED)
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def install_redaction(secrets: Iterable[str] = ()) -> None:
    """Redact every log record of this process from now on; also redact the given literal ``secrets``.

    Idempotent; later calls only add secrets.
    """
    global _installed
    with _lock:
        _literals.update(s for s in secrets if s and len(s) >= 8)
        if _installed:
            return
        previous = logging.getLogRecordFactory()

        def factory(*args: object, **kwargs: object) -> logging.LogRecord:
            record = previous(*args, **kwargs)
            try:
                message = record.getMessage()
            except Exception:  # a broken format string is the caller's bug; keep it visible
                return record
            record.msg = redact(message)
            record.args = None
            return record

        logging.setLogRecordFactory(factory)
        _installed = True


_URL_PASSWORD = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://[^/\s:@]*:)[^@\s/]*@")


def redact_url(text: str) -> str:
    """Return ``text`` with the password of every URL in it (``scheme://user:password@host``) replaced by ``***``."""
    return _URL_PASSWORD.sub(r"\1***@", text)


def reason(exc: BaseException) -> str:
    """Return one line for an operator saying why ``exc`` happened, without a secret.

    The message of ``exc`` and, when it adds something, the first line of its
    cause (a driver's own words: "no such table", "Connection refused"),
    with URL passwords and anything :func:`redact` knows replaced.
    """
    text = str(exc) or type(exc).__name__
    cause = exc.__cause__
    if cause is not None:
        detail = (str(cause).strip().splitlines() or [""])[0]
        # SQLAlchemy prefixes the driver's message with its class: "(sqlite3.OperationalError) no such table: t".
        detail = re.sub(r"^\([\w.]+\)\s*", "", detail).strip()
        if detail and detail not in text:
            text = f"{text}: {detail}"
    return redact(redact_url(" ".join(text.split()).rstrip(".")))
