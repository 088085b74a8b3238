"""The cost of revocable sessions (issue 14): the hub calls a signed-in request and a sign-in add.

Every request that relies on a signed-in cookie asks the hub whether its
session record still exists (``session_active``, never cached); every sign-in
writes one (``start_session``). This measures both, per call, for the memory
hub and the Redis hub (a private redis-server on a free port, or
``--redis-url``), as wall time and as this process's CPU time::

    .venv/bin/python -m bench.session_check [--calls 5000] [--redis-url redis://127.0.0.1:6379/0]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
import uuid
from typing import Any

from tornado_signin.hub import SessionRecord


async def _measure(hub: Any, calls: int) -> dict[str, float]:
    sid = uuid.uuid4().hex
    await hub.start_session(SessionRecord(sid=sid, sub="bench", started_at=time.time()), 600)
    for _ in range(200):  # warm-up: connections, caches
        await hub.session_active(sid)
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(calls):
        assert await hub.session_active(sid)
    check = ((time.perf_counter() - wall) / calls * 1e6, (time.process_time() - cpu) / calls * 1e6)
    records = [SessionRecord(sid=uuid.uuid4().hex, sub=f"bench-{i % 50}", started_at=time.time())
               for i in range(calls // 5)]
    wall, cpu = time.perf_counter(), time.process_time()
    for record in records:
        await hub.start_session(record, 600)
    start = ((time.perf_counter() - wall) / len(records) * 1e6, (time.process_time() - cpu) / len(records) * 1e6)
    await hub.end_session(sid)
    for record in records:
        await hub.end_session(record.sid)
    return {"check_wall_us": round(check[0], 1), "check_cpu_us": round(check[1], 1),
            "start_wall_us": round(start[0], 1), "start_cpu_us": round(start[1], 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=5000)
    parser.add_argument("--redis-url", help="an existing Redis (default: a private redis-server)")
    args = parser.parse_args(argv)
    from tornado_signin_backends.memory_hub import MemoryHub
    from tornado_signin_backends.redis_hub import RedisHub

    proc = None
    url = args.redis_url
    if url is None:
        import socket
        import subprocess

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                 "--appendonly", "no"], stdout=subprocess.DEVNULL)
        time.sleep(0.5)
        url = f"redis://127.0.0.1:{port}/0"

    async def run() -> dict[str, Any]:
        results = {"memory": await _measure(MemoryHub(), args.calls)}
        hub = RedisHub(url=url, key_prefix=f"bench-{uuid.uuid4().hex}:")
        try:
            results["redis"] = await _measure(hub, args.calls)
        finally:
            await hub.close()
        return results

    try:
        print(json.dumps(asyncio.run(run()), indent=2))
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(5)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
