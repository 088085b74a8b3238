"""``POST /risc``: the Cross-Account Protection receiver (on with ``risc.enabled: true``).

Google pushes one security event token per request, the raw JWT as the body
with ``Content-Type: application/secevent+jwt`` (RFC 8935). The answer is
``202`` (accepted: verified, and applied or a duplicate), ``400`` with no
detail for anything else (the reason goes to the log and to
``signin_risc_rejected_total``), or ``503`` when a verified event could not
be applied yet (store or hub down), so that Google delivers it again. There
is no browser gate here: the caller is Google, and only a token that passes
verification is acted on (:mod:`tornado_signin.risc`).
"""

from __future__ import annotations

import logging

from ..risc import APPLY_ERRORS, MAX_SET_LENGTH, SET_CONTENT_TYPE, SecurityEventError
from . import inputs
from .base import BaseHandler

__all__ = ["RiscHandler"]

log = logging.getLogger(__name__)


class RiscHandler(BaseHandler):
    """Receive security event tokens."""

    def _refuse(self, log_message: str) -> None:
        log.warning("security event token refused: %s", log_message)
        self.write_json({"error": "invalid request"}, 400)

    async def post(self) -> None:
        receiver = self.ctx.risc
        if receiver is None:
            raise self.fail(404, "not found")
        if inputs.content_type(self.request) != SET_CONTENT_TYPE:
            self._refuse(f"content type is not {SET_CONTENT_TYPE}")
            return
        body = self.request.body
        if not body or len(body) > MAX_SET_LENGTH:
            self._refuse("empty or oversized body")
            return
        try:
            token = body.decode("ascii")
        except UnicodeDecodeError:
            self._refuse("body is not ASCII")
            return
        try:
            await receiver.receive(token)
        except SecurityEventError as exc:
            self._refuse(str(exc))
            return
        except APPLY_ERRORS as exc:
            log.error("a verified security event could not be applied (Google will retry): %s", exc)
            self.write_json({"error": "temporarily unavailable"}, 503)
            return
        self.set_status(202)
        self.finish()
