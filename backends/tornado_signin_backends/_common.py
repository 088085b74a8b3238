"""Helpers shared by the built-in token stores (private: plugins should not import this).

The ``sub`` rule every built-in backend enforces: a non-empty ``str`` of at
most :data:`~tornado_signin.store.MAX_SUB_LENGTH` characters, encodable as
UTF-8 and without NUL. ``save`` of any other ``sub`` raises ValueError;
``get`` and ``delete`` of one answer "not stored" (None / False), since no such
record can exist.
"""

from __future__ import annotations

from tornado_signin.store import MAX_SUB_LENGTH

__all__ = ["is_valid_sub", "check_sub"]


def is_valid_sub(sub: object) -> bool:
    """Return True when ``sub`` can be stored by a built-in backend."""
    if not isinstance(sub, str) or not sub or len(sub) > MAX_SUB_LENGTH or "\x00" in sub:
        return False
    try:
        sub.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def check_sub(sub: object) -> str:
    """Return ``sub`` unchanged; raise ValueError (without echoing it) when it cannot be stored."""
    if not is_valid_sub(sub):
        raise ValueError(
            f"invalid sub: expected a non-empty string of at most {MAX_SUB_LENGTH} characters, "
            "valid UTF-8 and without NUL"
        )
    return sub  # type: ignore[return-value]
