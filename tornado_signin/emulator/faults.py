"""The fault plan: make the next call(s) to an emulator endpoint misbehave.

A fault is a JSON object (``POST /emulator/faults`` takes one object or a
list of them; Python code calls :meth:`FaultPlan.add`)::

    {"endpoint": "token", "kind": "status", "count": 1, "status": 503}

``endpoint`` (default ``"token"``) names what misbehaves: ``token`` (or only
``token.authorization_code`` / ``token.refresh_token``), ``certs`` (or only
``certs.pem`` / ``certs.jwks``), ``userinfo``, ``revoke``, ``tokeninfo`` or ``drive`` (or only
``drive.files.list`` / ``drive.files.get``). ``count`` is how
many matching calls it affects (default 1; ``-1`` = until cleared).

Transport kinds, for every endpoint (one applies per call, oldest first):

==========  ==================================================================
``status``  answer ``status`` (required) with ``body`` (string, or JSON value;
            default a Google-shaped error), ``content_type``, ``headers``
``hang``    answer nothing for ``seconds`` (default 30), then drop the
            connection
``delay``   wait ``seconds`` (required), then answer normally
``drip``    answer normally but send the body in ``chunks`` pieces (default
            10) ``interval`` seconds apart (default 0.5)
``body``    answer ``status`` (default 200) with the raw ``body`` string
            (e.g. ``"null"``, ``"[]"``, ``"42"``) or ``size`` bytes (>= 14) of valid
            JSON padding; ``content_type`` default ``application/json``
==========  ==================================================================

``status``, ``hang``, ``body`` and ``delay`` accept ``"after": true``: the
request is processed first (a code is spent, a grant revoked) and only the
answer is lost, replaced or late - the "it worked but the reply never
arrived (yet)" case.

Token-response kinds, for ``token`` only (every matching one applies):

=========================  ====================================================
``omit_id_token``          no ``id_token`` in the answer
``scope``                  ``value`` replaces the ``scope`` string
``token_type``             ``value`` replaces ``token_type`` (e.g. ``bearer``)
``issuer_without_scheme``  ``iss`` is ``accounts.google.com``
``id_token_claims``        ``set`` (object), ``unset`` (list), ``shift``
                           (object of seconds added to numeric claims)
``id_token_header``        ``set`` / ``unset`` JWT header fields (kid, jku …)
``id_token_signing``       ``method``: one of
                           :data:`~tornado_signin.emulator.keys.SIGNING_METHODS`;
                           ``raw`` returns ``value`` verbatim as the id_token
=========================  ====================================================
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from .keys import SIGNING_METHODS

__all__ = ["Fault", "FaultError", "FaultPlan", "TRANSPORT_KINDS", "TOKEN_KINDS", "ENDPOINTS"]

log = logging.getLogger(__name__)

ENDPOINTS = (
    "token",
    "token.authorization_code",
    "token.refresh_token",
    "certs",
    "certs.pem",
    "certs.jwks",
    "userinfo",
    "revoke",
    "drive",
    "drive.files.list",
    "drive.files.get",
    "tokeninfo",
)

_NUMBER = (int, float)

#: kind -> {parameter: (accepted types, required)}
TRANSPORT_KINDS: dict[str, dict[str, tuple[tuple[type, ...], bool]]] = {
    "status": {
        "status": ((int,), True),
        "body": ((str, dict, list, int, float, bool, type(None)), False),
        "content_type": ((str,), False),
        "headers": ((dict,), False),
        "after": ((bool,), False),
    },
    "hang": {"seconds": (_NUMBER, False), "after": ((bool,), False)},
    "delay": {"seconds": (_NUMBER, True), "after": ((bool,), False)},
    "drip": {"interval": (_NUMBER, False), "chunks": ((int,), False)},
    "body": {
        "body": ((str,), False),
        "size": ((int,), False),
        "status": ((int,), False),
        "content_type": ((str,), False),
        "after": ((bool,), False),
    },
}

TOKEN_KINDS: dict[str, dict[str, tuple[tuple[type, ...], bool]]] = {
    "omit_id_token": {},
    "scope": {"value": ((str,), True)},
    "token_type": {"value": ((str,), True)},
    "issuer_without_scheme": {},
    "id_token_claims": {"set": ((dict,), False), "unset": ((list,), False), "shift": ((dict,), False)},
    "id_token_header": {"set": ((dict,), False), "unset": ((list,), False)},
    "id_token_signing": {"method": ((str,), True), "value": ((str,), False)},
}


class FaultError(ValueError):
    """A fault description is invalid; the message says which field."""


@dataclass
class Fault:
    """One planned misbehaviour; ``remaining`` counts down (-1 = forever)."""

    endpoint: str
    kind: str
    remaining: int
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def is_transport(self) -> bool:
        """Return True for a kind that changes how the answer travels."""
        return self.kind in TRANSPORT_KINDS

    def matches(self, endpoint: str) -> bool:
        """Return True when this fault applies to a call of ``endpoint`` (e.g. ``token.refresh_token``)."""
        return endpoint == self.endpoint or endpoint.startswith(self.endpoint + ".")

    def to_json(self) -> dict:
        """Return the fault as the JSON object that would create it (with the remaining count)."""
        return {"endpoint": self.endpoint, "kind": self.kind, "count": self.remaining, **self.params}


def _validate(endpoint: str, kind: str, count: Any, params: dict[str, Any]) -> None:
    if endpoint not in ENDPOINTS:
        raise FaultError(f"endpoint: unknown {endpoint!r} (one of {', '.join(ENDPOINTS)})")
    schema = TRANSPORT_KINDS.get(kind)
    if schema is None:
        schema = TOKEN_KINDS.get(kind)
        if schema is None:
            raise FaultError(f"kind: unknown {kind!r} (one of {', '.join([*TRANSPORT_KINDS, *TOKEN_KINDS])})")
        if not endpoint.startswith("token"):
            raise FaultError(f"kind: {kind!r} only applies to the token endpoint")
    if isinstance(count, bool) or not isinstance(count, int) or (count < 1 and count != -1):
        raise FaultError("count: must be a positive integer or -1")
    for name, value in params.items():
        if name not in schema:
            raise FaultError(f"{name}: not a parameter of {kind!r} (accepted: {', '.join(schema) or 'none'})")
        types, _ = schema[name]
        if isinstance(value, bool) and bool not in types:
            raise FaultError(f"{name}: wrong type")
        if not isinstance(value, types):
            raise FaultError(f"{name}: wrong type")
    for name, (_, required) in schema.items():
        if required and name not in params:
            raise FaultError(f"{name}: required by {kind!r}")
    if kind in ("status", "body") and "status" in params and not 100 <= params["status"] <= 599:
        raise FaultError("status: must be an HTTP status code")
    if kind == "id_token_signing":
        if params["method"] not in SIGNING_METHODS:
            raise FaultError(f"method: unknown {params['method']!r} (one of {', '.join(SIGNING_METHODS)})")
        if params["method"] == "raw" and "value" not in params:
            raise FaultError("value: required by method 'raw'")
    if kind == "body" and ("body" in params) == ("size" in params):
        raise FaultError("body: give exactly one of 'body' and 'size'")


class FaultPlan:
    """The pending faults of one emulator, in the order they were added."""

    def __init__(self) -> None:
        self._faults: list[Fault] = []

    def add(self, endpoint: str = "token", kind: str = "status", *, count: int = 1, **params: Any) -> Fault:
        """Plan a fault (see the module docstring for kinds and parameters) and return it.

        Raise FaultError for an unknown endpoint, kind or parameter.
        """
        _validate(endpoint, kind, count, params)
        fault = Fault(endpoint, kind, count, dict(params))
        self._faults.append(fault)
        log.info("fault planned: %s on %s (count %s)", kind, endpoint, count)
        return fault

    def load(self, spec: Any) -> list[Fault]:
        """Plan the faults of a JSON value: one object or a list of them; return them.

        All are validated before any is planned. Raise FaultError when one is invalid.
        """
        items = spec if isinstance(spec, list) else [spec]
        checked = []
        for item in items:
            if not isinstance(item, dict):
                raise FaultError("a fault must be a JSON object")
            params = dict(item)
            endpoint = params.pop("endpoint", "token")
            kind = params.pop("kind", None)
            count = params.pop("count", 1)
            if not isinstance(endpoint, str) or not isinstance(kind, str):
                raise FaultError("kind: required (a string)")
            _validate(endpoint, kind, count, params)
            checked.append((endpoint, kind, count, params))
        return [self.add(endpoint, kind, count=count, **params) for endpoint, kind, count, params in checked]

    def clear(self) -> None:
        """Forget every planned fault."""
        self._faults.clear()

    def pending(self) -> list[Fault]:
        """Return the planned faults, oldest first."""
        return list(self._faults)

    def __len__(self) -> int:
        return len(self._faults)

    def _consume(self, fault: Fault) -> None:
        if fault.remaining > 0:
            fault.remaining -= 1
            if fault.remaining == 0:
                self._faults.remove(fault)

    def take_transport(self, endpoint: str) -> Fault | None:
        """Return (and count down) the oldest transport fault matching ``endpoint``, or None."""
        for fault in self._faults:
            if fault.is_transport and fault.matches(endpoint):
                self._consume(fault)
                log.info("fault applied: %s on %s", fault.kind, endpoint)
                return fault
        return None

    def take_token_faults(self, endpoint: str) -> list[Fault]:
        """Return (and count down) every token-response fault matching ``endpoint``."""
        taken = [f for f in self._faults if not f.is_transport and f.matches(endpoint)]
        for fault in taken:
            self._consume(fault)
            log.info("fault applied: %s on %s", fault.kind, endpoint)
        return taken
