"""The operator's endpoints: ``GET /healthz`` (liveness, ``?ready=1`` readiness) and ``GET /metrics``."""

from __future__ import annotations

from . import inputs
from .base import BaseHandler

__all__ = ["HealthHandler", "ReadyHandler", "MetricsHandler"]


class HealthHandler(BaseHandler):
    """``GET /healthz``: liveness (the IOLoop answers). ``?ready=1`` adds store and hub checks."""

    async def get(self) -> None:
        if not inputs.flag(self.get_query_argument("ready", None), "ready"):
            self.write_json({"status": "ok"})
            return
        if self.ctx.draining:
            self.write_json({"status": "draining", "failed": []}, 503)
            return
        problems = {}
        health = self.ctx.store_health
        if health is not None:
            health.start()
            if not await health.probe():
                problems["store"] = "unavailable"
        else:
            try:
                await self.ctx.workers.run(self.ctx.store.check)
            except Exception as exc:
                problems["store"] = type(exc).__name__
        try:
            await self.ctx.hub.check()
        except Exception as exc:
            problems["hub"] = type(exc).__name__
        if problems:
            self.write_json({"status": "unavailable", "failed": sorted(problems)}, 503)
        else:
            self.write_json({"status": "ready"})


ReadyHandler = HealthHandler


class MetricsHandler(BaseHandler):
    """``GET /metrics``: Prometheus text format."""

    def get(self) -> None:
        self.set_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
        self.finish(self.ctx.metrics.render())
