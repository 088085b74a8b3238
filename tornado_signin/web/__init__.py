"""tornado-signin's HTTP surface, one module per concern.

- :mod:`~tornado_signin.web.inputs` — the one validation of every request value (headers, query flags, the code);
- :mod:`~tornado_signin.web.gate` — origin, fetch metadata, single-use state: the gate before any outbound call;
- :mod:`~tornado_signin.web.base` — the handlers' shared plumbing: cookies, the one live-session check, security
  headers, JSON answers, the one domain-error → response table;
- :mod:`~tornado_signin.web.signin` — the page, ``/state``, ``/storeauthcode``, ``/signout``, ``/disconnect``;
- :mod:`~tornado_signin.web.confirm` — the ``/confirm`` websocket;
- :mod:`~tornado_signin.web.host` — ``/session`` and what a host app builds on: ``SigninMixin``, ``SigninButton``;
- :mod:`~tornado_signin.web.assets` — ``/signin.js`` (``static/signin.js``) and ``/favicon.ico``;
- :mod:`~tornado_signin.web.risc` — ``/risc``, the receiver of Google's security events;
- :mod:`~tornado_signin.web.ops` — ``/healthz`` and ``/metrics``;
- :mod:`~tornado_signin.web.api` — the demo's ``/api/userinfo`` and ``/api/scopes``.

The application and its URL table are built by :mod:`tornado_signin.app`.
"""
