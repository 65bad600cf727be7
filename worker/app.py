"""The FastStream application: broker, subscribers, Docker client lifespan, drain on exit."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiodocker
import aiohttp
from faststream import AckPolicy, FastStream
from faststream.rabbit import RabbitBroker, RabbitMessage
from faststream.rabbit.schemas import Channel

from . import __version__
from .discovery import Discovery
from .dispatch import Dispatcher
from .docker_ops import DockerOps
from .events import EventStream
from .health import HealthMonitor
from .labels import Labels
from .policy import Policy
from .publishing import Publisher
from .settings import Settings
from .topology import Topology

log = logging.getLogger("dockhand")

DEFAULT_DOCKER_URL = "unix:///var/run/docker.sock"


async def _raw_body(message: Any, original: Any) -> bytes:
    """Hand the handler the body untouched: validation (and rejection) is the dispatcher's."""
    body: bytes = message.body
    return body


def create_app(settings: Settings | None = None) -> FastStream:
    """Build the worker for one configuration (``python -m worker`` runs it)."""
    settings = settings or Settings()
    topology = Topology(settings)
    # FastStream's own per-message "Received/Processed" lines go to DEBUG: our log has one
    # line per command outcome instead.
    broker = RabbitBroker(settings.amqp_url, log_level=logging.DEBUG, graceful_timeout=settings.shutdown_grace_s)
    publisher = Publisher(broker)
    dispatcher = Dispatcher(settings, topology, publisher)
    labels = Labels(settings.label_prefix, settings.discovery_label_prefix)
    background: dict[str, EventStream | HealthMonitor] = {}

    async def on_command(body: bytes, message: RabbitMessage) -> None:
        dispatcher.submit(body, message)

    for queue, description in (
        (topology.host_queue, f"Commands for host {settings.host_id} (and all.#)"),
        (topology.any_queue, "Commands any host may take"),
    ):
        broker.subscriber(
            queue,
            topology.commands,
            ack_policy=AckPolicy.MANUAL,
            # Bounded backlog per queue; the concurrency itself is the dispatcher's semaphore.
            channel=Channel(prefetch_count=settings.prefetch),
            decoder=_raw_body,
            no_reply=True,
            description=description,
        )(on_command)

    @asynccontextmanager
    async def lifespan() -> AsyncIterator[None]:
        # A bound for ordinary API calls; aiodocker leaves stop/pull/logs/exec unbounded, and
        # those carry their own limits (stop timeout, pull and exec timeouts).
        timeout = aiohttp.ClientTimeout(total=settings.docker_timeout_s, connect=10)
        docker = aiodocker.Docker(url=settings.docker_host or DEFAULT_DOCKER_URL, timeout=timeout)
        try:
            dispatcher.ops = DockerOps(docker, settings, labels, Policy(settings, labels))
            yield
        finally:
            # The broker is already stopped here: FastStream stops it inside the lifespan.
            await docker.close()
            dispatcher.store.close()

    async def start_background() -> None:
        await topology.declare(broker)
        ops = dispatcher.ops
        assert ops is not None
        discovery = Discovery(
            ops,
            publisher.to(topology.events, message_type="dockhand.discovery"),
            require_healthy=settings.discovery_require_healthy,
        )
        stream = EventStream(ops, settings, discovery, publisher.to(topology.events, message_type="dockhand.event"))
        health = HealthMonitor(
            ops,
            settings,
            dispatcher.counters,
            stream.state,
            publisher.to(topology.health, message_type="dockhand.heartbeat"),
            __version__,
        )
        background.update(stream=stream, health=health)
        stream.start()
        health.start()
        log.info(
            "dockhand worker %s ready: host %s, queue %s, max concurrency %d",
            settings.effective_worker_id,
            settings.host_id,
            topology.host_queue.name,
            settings.max_concurrency,
        )

    async def drain() -> None:
        for subscriber in broker.subscribers:
            await subscriber.stop()  # basic.cancel: no new deliveries, acks still work
        await dispatcher.drain(settings.shutdown_grace_s)
        for task in background.values():
            await task.stop()

    app = FastStream(broker, lifespan=lifespan, after_startup=[start_background], on_shutdown=[drain], logger=log)
    app.context.set_global("dispatcher", dispatcher)
    return app
