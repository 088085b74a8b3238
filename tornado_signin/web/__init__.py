"""tornado-signin's HTTP surface, one module per concern.

- :mod:`~tornado_signin.web.gate` — origin, fetch metadata, single-use state: the gate before any outbound call;
- :mod:`~tornado_signin.web.base` — the handlers' shared plumbing: cookies, security headers, JSON answers,
  the one domain-error → response table;
- :mod:`~tornado_signin.web.signin` — the page, ``/state``, ``/storeauthcode``, ``/signout``, ``/disconnect``;
- :mod:`~tornado_signin.web.confirm` — the ``/confirm`` websocket;
- :mod:`~tornado_signin.web.ops` — ``/healthz`` and ``/metrics``;
- :mod:`~tornado_signin.web.api` — the demo's ``/api/userinfo`` and ``/api/scopes``.

The application and its URL table are built by :mod:`tornado_signin.app`.
"""
