"""``redis``: a confirmation hub shared by every process and machine through Redis.

Config (``hub:`` section)::

    hub:
      backend: redis
      url: redis://redis.internal:6379/0     # rediss:// for TLS; password in the URL or {"$env": …}
      key_prefix: "tornado-signin:"          # optional: to share one Redis between deployments

Example (what ``serve`` builds from that section)::

    hub = RedisHub(url="redis://127.0.0.1:6379/0")
    subscription = await hub.subscribe(session_id, on_message)
    await hub.publish(session_id, {"frame": {"type": "signed_in"}})
    subscription.close()
    await hub.close()

How it maps the :class:`~tornado_signin.hub.ConfirmationHub` contract, on
redis-py's asyncio client:

- ``publish``: ``SET <prefix>last:<channel> <message> EX <record_ttl>`` then
  ``PUBLISH <prefix>ch:<channel> <message>`` in one server-side script
  (redis-py's ``register_script``: ``EVALSHA``, and on ``NOSCRIPT`` it loads the
  script again), so the outcome is *recorded* before anybody can be told and a
  socket that connects late (on any process) reads it with ``last``. A Redis
  that refuses scripts (an ACL without ``@scripting``, a renamed command) gets
  the same two commands in one ``MULTI``/``EXEC`` instead (:mod:`.scripts`).
  Once recorded, the message goes straight to this process's own subscribers
  (before ``publish`` returns); its echo from Redis is recognised by its id and
  dropped, so this process delivers its own messages exactly once, whatever an
  outage replays (:mod:`.envelope`).
- ``subscribe``: one redis-py ``PubSub`` per hub (per process), read by a
  background task, subscribed to the channels that have local subscribers.
  ``subscribe`` returns once Redis has confirmed the channel's ``SUBSCRIBE``
  (the task reads the confirmation), so a message any process publishes after
  it returns reaches the subscriber; if Redis took the connection but does
  not confirm within ``timeout``, it raises HubUnavailableError and the
  subscription is dropped. A
  channel whose last local subscriber leaves is unsubscribed just before the
  next ``SUBSCRIBE``, or after a quiet second. After a quiet second the task
  also sends ``PING``: a pub/sub connection that does not answer within
  ``timeout`` is replaced, as after any error.
- ``consume_once``: ``SET <prefix>once:<key> 1 NX EX <ttl>``.
- leases: ``SET <prefix>lease:<key> <token> NX PX <ttl>`` to take one, a
  compare-and-delete script to release it (only while it holds the token).
- exchanges in flight: ``begin_exchange`` is one script (``INCR <prefix>exch-seq``
  for the ticket, ``ZADD <prefix>exch`` with the time it lapses on Redis's
  clock, lapsed entries dropped, both keys expiring with the newest entry),
  ``end_exchange`` one ``ZREM``, ``exchanges_before`` one script counting the
  live entries with a smaller ticket. No ``MULTI``/``EXEC`` fallback: where
  scripts are refused the sign-ins go on and never revoke a grant.
- session records (:mod:`.sessions`): ``<prefix>sess:<sid>`` holds the record
  (JSON) with the session's TTL and ``<prefix>user-sess:<sub>`` the set of the
  user's session ids; ``start_session`` writes both in one script
  (``MULTI``/``EXEC`` where scripts are refused),
  ``session_active`` is one ``EXISTS`` (the per-request check),
  ``sessions_of`` reads the set and the records (``MGET``) and drops ids whose
  record expired, ``end_session``/``end_sessions`` ``DEL`` the records and
  ``SREM`` the ids. While Redis is unreachable a session started or ended
  here is kept locally (valid, or ended, on this process) and written when
  Redis returns (ends first); ``session_active`` of any other session and
  ``sessions_of`` raise HubUnavailableError: an end that cannot be checked is
  not taken as live.
- ``hit``, ``issue_state``, ``spend_state``: one script each (per-client
  budgets counted for the deployment; at most ``keep`` outstanding states
  per session, a spent one deleted), see :mod:`.quota`.
- ``check``: ``PING``.

Connections: commands go through redis-py's connection pool, at most
:data:`~.hub.MAX_CONNECTIONS` at once (a burst beyond it waits for a turn),
each under one deadline (``timeout``) covering the wait, connect, write and
read; the pub/sub connection comes from a pool of its own. A command that
finds its pooled connection closed (Redis restarted) is sent once more on a
new one (redis-py's ``Retry``, connection errors only; a timeout is not
retried); a connection idle for 30 s is pinged before use (redis-py's
``health_check_interval``).

Redis down. Logins must not depend on the hub, so no method raises for an
unreachable Redis: ``subscribe`` returns at once (without the confirmation),
``publish`` delivers to this process's subscribers at once
and keeps the message in a local outbox (:mod:`.outbox`), ``last`` answers
from that outbox, ``consume_once`` falls back to a per-process marker (a
state can then be replayed on *another* process during the outage only; it
stays bound to its session and its TTL). The background task reconnects with
backoff (0.1 s to 2 s) and, once Redis answers, writes the outbox (``SET …
EX`` with the remaining TTL, then ``PUBLISH``), re-marks the locally consumed
keys, re-subscribes, and re-reads the recorded message of every subscribed
channel so that a message published by another process during the outage is
still delivered (also after a start that found Redis down, or a ``subscribe``
that returned unconfirmed). Each message carries an id (the publishing hub's random
origin and a counter); a subscriber never gets the same one twice. Only
:meth:`~.hub.RedisHub.check` (readiness) reports the outage.
"""

from .hub import DEFAULT_PREFIX, MAX_CONNECTIONS, RedisHub

__all__ = ["RedisHub", "DEFAULT_PREFIX", "MAX_CONNECTIONS"]
