"""HTTP endpoints for orchestrators and Prometheus: ``/healthz``, ``/readyz``, ``/metrics``.

Served by aiohttp's web server (already a dependency through aiodocker), bound to
``DOCKHAND_HTTP_HOST`` (default 127.0.0.1). Port 0 picks a free port (logged).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from aiohttp import web

from dockhand.schemas import WireModel

from .telemetry import prometheus_text

log = logging.getLogger("dockhand.http")

Check = Callable[[], Awaitable[dict[str, bool]]]
# What /readyz reports besides its checks (not part of ``ready``), e.g. the broker node.
Info = Callable[[], WireModel | None]


class HttpPortError(Exception):
    """The HTTP endpoint cannot listen (port taken, address not available, no permission)."""


class Endpoints:
    """The worker's small HTTP server."""

    def __init__(self, host: str, port: int, readiness: Check, info: Info | None = None) -> None:
        self._host = host
        self._port = port
        self._readiness = readiness
        self._info = info
        self._runner: web.AppRunner | None = None
        self.port: int | None = None

    async def _healthz(self, _: web.Request) -> web.Response:
        # Answering at all is the proof: the event loop is alive.
        return web.json_response({"status": "alive"})

    async def _readyz(self, _: web.Request) -> web.Response:
        checks = await self._readiness()
        ready = all(checks.values())
        body: dict[str, object] = {"ready": ready, **checks}
        info = self._info() if self._info is not None else None
        if info is not None:
            body.update(info.model_dump(mode="json"))  # e.g. {"node": "rabbit-1:5672", "consuming": true}
        return web.json_response(body, status=200 if ready else 503)

    async def _metrics(self, _: web.Request) -> web.Response:
        return web.Response(body=prometheus_text(), content_type="text/plain", charset="utf-8")

    async def start(self) -> None:
        app = web.Application()
        app.add_routes(
            [web.get("/healthz", self._healthz), web.get("/readyz", self._readyz), web.get("/metrics", self._metrics)]
        )
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._host, self._port)
        try:
            await site.start()
        except OSError as exc:
            await self._runner.cleanup()
            self._runner = None
            raise HttpPortError(
                f"cannot listen on {self._host}:{self._port} for /healthz, /readyz and /metrics: "
                f"{exc.strerror or exc}; set DOCKHAND_HTTP_PORT to a free port (0 picks one) "
                "or DOCKHAND_HTTP_ENABLED=false"
            ) from None
        addresses = self._runner.addresses
        self.port = int(addresses[0][1]) if addresses else self._port
        log.info("http: listening on %s:%s (/healthz /readyz /metrics)", self._host, self.port)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
