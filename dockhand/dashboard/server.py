"""The dashboard's HTTP side (aiohttp): one page, its two static files, the state as JSON and
the live stream of changes as server-sent events. Read-only: GET only.

With a token, every request needs it: ``Authorization: Bearer <token>``, or the cookie that
``/?token=<token>`` sets (an ``EventSource`` cannot send headers) before it redirects to ``/``
(so the token does not stay in the address bar or the history). Without one, only loopback
binds are allowed (:func:`check_exposure`) and the ``Host`` header must name a loopback
address: a web page elsewhere cannot read the fleet through DNS rebinding.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
import json
from importlib import resources
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web

from .state import CLOSE, FleetState, sse

COOKIE = "dockhand_dashboard"
DEFAULT_BIND = "127.0.0.1:8090"
PING_S = 15.0
"""A comment line this often keeps proxies and the browser from closing an idle stream."""
RETRY_MS = 1500
"""How soon the browser reconnects a lost stream."""

_STATIC = {
    "app.js": "text/javascript",
    "app.css": "text/css",
}
_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
_LOOPBACK_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost"}


def parse_bind(value: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` for IPv6; a bare ``:PORT`` is loopback); ValueError if not."""
    host, sep, port_s = value.rpartition(":")
    if not sep or not port_s.isdigit() or not 0 <= int(port_s) <= 65535:
        raise ValueError(f"--bind {value!r}: give HOST:PORT, e.g. {DEFAULT_BIND}")
    host = host.strip("[]") or "127.0.0.1"
    return host, int(port_s)


def is_loopback(host: str) -> bool:
    """A name or address that only this machine reaches."""
    if host.lower() in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_exposure(host: str, token: str | None) -> None:
    """ValueError (one line) for a bind that others can reach without a token."""
    if not token and not is_loopback(host):
        raise ValueError(
            f"--bind {host}: other machines could read the fleet; set --token or DOCKHAND_DASHBOARD_TOKEN "
            "to bind anything but loopback"
        )


def _static(name: str) -> bytes:
    return resources.files("dockhand.dashboard").joinpath("static", name).read_bytes()


class DashboardServer:
    """The aiohttp application over a :class:`FleetState`."""

    def __init__(self, state: FleetState, *, token: str | None = None) -> None:
        self.state = state
        self.token = token or None
        self._files = {name: _static(name) for name in (*_STATIC, "index.html")}
        self._ticker: asyncio.Task[None] | None = None
        self.streams = 0
        """Open event streams (pages connected now)."""

    def app(self) -> web.Application:
        """The application: ``/``, ``/static/{name}``, ``/api/state``, ``/api/events``."""
        app = web.Application(middlewares=[self._guard])
        app.router.add_get("/", self._index)
        app.router.add_get("/static/{name}", self._static)
        app.router.add_get("/api/state", self._state)
        app.router.add_get("/api/events", self._events)
        app.on_startup.append(self._startup)
        app.on_shutdown.append(self._shutdown)
        return app

    async def _startup(self, _app: web.Application) -> None:
        self._ticker = asyncio.create_task(self._ticks(), name="dashboard-tick")

    async def _shutdown(self, _app: web.Application) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
        self.state.close_listeners()

    async def _ticks(self) -> None:
        """Every second: statuses re-derived (silence sends no message) and the server's time to
        the pages, which also tells a page its stream is alive."""
        while True:
            await asyncio.sleep(1.0)
            self.state.tick()

    # --- access ------------------------------------------------------------------------------

    def _authorised(self, request: web.Request) -> bool:
        if self.token is None:
            return True
        given = request.headers.get("Authorization", "")
        bearer = given[7:] if given.lower().startswith("bearer ") else ""
        cookie = request.cookies.get(COOKIE, "")
        expected = self.token.encode()
        return any(hmac.compare_digest(value.encode(), expected) for value in (bearer, cookie) if value)

    @web.middleware
    async def _guard(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if self.token is None:
            host = urlsplit(f"//{request.host}").hostname or ""
            if not is_loopback(host):
                raise web.HTTPForbidden(text="dockhand dashboard: only loopback host names without a token\n")
        elif request.path == "/" and "token" in request.query:
            if not hmac.compare_digest(request.query["token"].encode(), self.token.encode()):
                raise web.HTTPUnauthorized(text="dockhand dashboard: wrong token\n")
            response = web.HTTPSeeOther("/")
            response.set_cookie(COOKIE, self.token, httponly=True, samesite="Strict", path="/")
            raise response
        elif not self._authorised(request):
            raise web.HTTPUnauthorized(
                text="dockhand dashboard: give the token (Authorization: Bearer ..., or open /?token=...)\n",
                headers={"WWW-Authenticate": 'Bearer realm="dockhand dashboard"'},
            )
        response = await handler(request)
        for name, value in _HEADERS.items():
            response.headers.setdefault(name, value)
        return response  # type: ignore[no-any-return]

    # --- handlers ------------------------------------------------------------------------------

    async def _index(self, _request: web.Request) -> web.Response:
        return web.Response(body=self._files["index.html"], content_type="text/html", charset="utf-8")

    async def _static(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in _STATIC:
            raise web.HTTPNotFound
        return web.Response(body=self._files[name], content_type=_STATIC[name], charset="utf-8")

    async def _state(self, _request: web.Request) -> web.Response:
        return web.Response(text=json.dumps(self.state.snapshot(), default=str), content_type="application/json")

    async def _events(self, request: web.Request) -> web.StreamResponse:
        """The changes as server-sent events: first the whole state (``snapshot``), then every
        change. Registered before the snapshot is taken (one event loop: nothing in between)."""
        response = web.StreamResponse(
            headers={**_HEADERS, "Content-Type": "text/event-stream", "X-Accel-Buffering": "no"}
        )
        await response.prepare(request)
        queue = self.state.listen()
        self.streams += 1
        try:
            await response.write(f"retry: {RETRY_MS}\n\n".encode() + sse("snapshot", self.state.snapshot()))
            while True:
                try:
                    async with asyncio.timeout(PING_S):
                        frame = await queue.get()
                except TimeoutError:
                    frame = b": ping\n\n"
                if frame == CLOSE:
                    break
                await response.write(frame)
            with contextlib.suppress(ConnectionResetError, RuntimeError):
                await response.write_eof()
        except ConnectionResetError:  # the page went away
            pass
        finally:
            self.streams -= 1
            self.state.unlisten(queue)
        return response


async def start_site(server: DashboardServer, host: str, port: int) -> tuple[web.AppRunner, int]:
    """Serve ``server`` on ``host:port``; returns the runner (``await runner.cleanup()``) and the
    port bound (``port`` 0 takes a free one)."""
    runner = web.AppRunner(server.app(), access_log=None, shutdown_timeout=2.0)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    addresses = runner.addresses
    return runner, int(addresses[0][1]) if addresses else port
