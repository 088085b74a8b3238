"""What goes over Redis: a message wrapped with its id, so that no subscriber gets one twice."""

from __future__ import annotations

import itertools
import json
import logging
import uuid

from tornado_signin.hub import Message

__all__ = ["Envelopes"]

log = logging.getLogger(__name__)


class Envelopes:
    """Wrap this hub's messages as ``{"id": "<origin>-<n>", "message": …}`` and unwrap anyone's.

    The origin is random per hub and the counter per message: ids are unique
    without a uuid4 per message, and they tell this hub's own messages apart
    (:meth:`is_own`) without parsing them.

    Example::

        envelopes = Envelopes()
        message_id, raw = envelopes.wrap({"frame": {"type": "signed_in"}})
        assert envelopes.is_own(raw) and envelopes.unwrap(raw) == (message_id, {"frame": {"type": "signed_in"}})
    """

    def __init__(self) -> None:
        self.origin = uuid.uuid4().hex
        self._sequence = itertools.count(1)
        # How wrap() begins each envelope: '{"id":"<origin>-'.
        self._own_prefix = f'{{"id":"{self.origin}-'

    def wrap(self, message: Message) -> tuple[str, str]:
        """Return a new id and the envelope of ``message`` with it (JSON text)."""
        message_id = f"{self.origin}-{next(self._sequence)}"
        # The id comes first, so that is_own can tell an envelope without parsing it.
        return message_id, f'{{"id":"{message_id}","message":{json.dumps(message, separators=(",", ":"))}}}'

    def is_own(self, raw: str) -> bool:
        """Return whether ``raw`` was wrapped by this hub (and so already delivered by it)."""
        return raw.startswith(self._own_prefix)

    @staticmethod
    def unwrap(raw: str | None) -> tuple[str, Message] | None:
        """Return ``(id, message)`` of the envelope ``raw``; None for None, or (logged) for a malformed one."""
        if raw is None:
            return None
        try:
            envelope = json.loads(raw)
            return str(envelope["id"]), dict(envelope["message"])
        except (ValueError, KeyError, TypeError):
            log.warning("redis hub: ignored a malformed message")
            return None
