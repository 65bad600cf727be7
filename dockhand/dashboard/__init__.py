"""``dockhand dashboard``: a live, read-only page of the fleet in the browser.

Hosts (status, role, Docker latency, running containers, commands, last heartbeat), their
workspaces, the discovered services and a feed of events and failed commands, fed from the bus
through one :class:`~dockhand.client.Client` (:mod:`.bus`), held in a :class:`FleetState`
(:mod:`.state`) and served by aiohttp as one page plus a stream of server-sent events
(:mod:`.server`). Plain JavaScript, no build step (``static/``).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Callable

from dockhand.client import Client

from .bus import BusFeed
from .server import DEFAULT_BIND, DashboardServer, check_exposure, is_loopback, parse_bind, start_site
from .state import FleetState

__all__ = [
    "DEFAULT_BIND",
    "BusFeed",
    "DashboardServer",
    "FleetState",
    "check_exposure",
    "is_loopback",
    "parse_bind",
    "serve",
]


async def serve(
    client: Client,
    *,
    host: str = "127.0.0.1",
    port: int = 8090,
    token: str | None = None,
    list_interval_s: float = 15.0,
    silent_intervals: float = 3.0,
    label_prefix: str = "dockhand",
    on_ready: Callable[[str], None] | None = None,
) -> None:
    """Connect ``client``, serve the page on ``host:port`` and feed it until SIGINT / SIGTERM.

    Connects first, so an unreachable broker fails before anything listens; after that a lost
    broker only makes the page say "reconnecting". ``on_ready`` gets the page's URL once it serves.
    """
    check_exposure(host, token)
    state = FleetState(silent_intervals=silent_intervals, label_prefix=label_prefix)
    server = DashboardServer(state, token=token)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    async with client:
        runner, bound = await start_site(server, host, port)
        try:
            shown = f"[{host}]" if ":" in host else host
            if on_ready is not None:
                on_ready(f"http://{shown}:{bound}/")
            feed = asyncio.ensure_future(BusFeed(client, state, list_interval_s=list_interval_s).run())
            stopped = asyncio.ensure_future(stop.wait())
            try:
                await asyncio.wait({feed, stopped}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in (feed, stopped):
                    task.cancel()
                await asyncio.gather(feed, stopped, return_exceptions=True)
            error = feed.exception() if feed.done() and not feed.cancelled() else None
            while isinstance(error, BaseExceptionGroup) and len(error.exceptions) == 1:
                error = error.exceptions[0]  # the TaskGroup's one failure, e.g. a refused permission
            if error is not None:
                raise error
        finally:
            await runner.cleanup()
