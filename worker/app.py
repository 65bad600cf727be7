"""The FastStream application: broker, subscribers, Docker client lifespan, drain on exit."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiodocker
import aiohttp
from faststream import AckPolicy, FastStream
from faststream.rabbit import RabbitBroker
from faststream.rabbit.opentelemetry import RabbitTelemetryMiddleware
from faststream.rabbit.schemas import Channel
from faststream.security import BaseSecurity
from faststream.specification import AsyncAPI

from dockhand.schemas import ContainerEvent, DiscoveryEvent, DiscoverySnapshot, Heartbeat, NetworkEvent, Result
from dockhand.schemas.results import ExecOutputChunk

from . import __version__, tls
from .discovery import Discovery
from .dispatch import Dispatcher
from .docker_ops import DockerOps
from .endpoints import Endpoints, HttpPortError
from .events import EventStream
from .health import HealthMonitor
from .labels import Labels
from .leadership import Leadership
from .policy import Policy
from .publishing import EventSequencer, Publisher
from .settings import Settings
from .telemetry import Telemetry, from_environment
from .topology import Topology

log = logging.getLogger("dockhand")


async def _as_is(message: Any, original: Any) -> Any:
    """Hand the handler the message itself, body untouched: validation (and rejection) is the
    dispatcher's. (A handler parameter resolved from FastStream's context would cost a thread
    hop per delivery: about a tenth of a millisecond of CPU per command.)"""
    return message


def _document_outputs(broker: RabbitBroker, topology: Topology, host: str) -> None:
    """Publishers that describe what the worker sends, for the AsyncAPI document."""
    outputs: list[tuple[Any, str, Any, str]] = [
        (topology.results, f"{host}.{{type}}.{{status}}", Result, "The result of every command"),
        (topology.events, f"{host}.container.{{action}}", ContainerEvent, "Docker container events"),
        (topology.events, f"{host}.network.{{action}}", NetworkEvent, "Docker network events"),
        (topology.events, f"{host}.discovery.{{change}}", DiscoveryEvent, "Discovery added/removed/updated/invalid"),
        (topology.events, f"{host}.discovery.snapshot", DiscoverySnapshot, "The whole discovered service set"),
        (topology.health, f"{host}.heartbeat", Heartbeat, "Health heartbeat"),
        # To the default exchange: a streamed exec's output, routed by the command's reply_to.
        (None, "{reply_to}", ExecOutputChunk, "A streamed exec's output (exec.output), to the command's reply_to"),
    ]
    for exchange, routing_key, model, description in outputs:
        broker.publisher(
            exchange=exchange, routing_key=routing_key, schema=model, title=routing_key, description=description
        )


def create_app(settings: Settings | None = None, telemetry: Telemetry | None = None) -> FastStream:
    """Build the worker for one configuration (``python -m dockhand.worker`` runs it)."""
    settings = settings or Settings()
    telemetry = telemetry or from_environment(settings)
    topology = Topology(settings)
    # FastStream's own per-message "Received/Processed" lines go to DEBUG: our log has one
    # line per command outcome instead.
    broker = RabbitBroker(
        settings.amqp_url,
        # amqps://: verified with the settings' CA and client certificate (worker/tls.py).
        security=BaseSecurity(ssl_context=settings.amqp_ssl_context) if settings.amqp_ssl_context else None,
        log_level=logging.DEBUG,
        graceful_timeout=settings.shutdown_grace_s,
        middlewares=[
            RabbitTelemetryMiddleware(
                tracer_provider=telemetry.tracer_provider,
                meter_provider=telemetry.meter_provider,
            )
        ],
        on_reconnected=[lambda _: telemetry.broker_reconnects.add(1)],
    )
    publisher = Publisher(broker)
    dispatcher = Dispatcher(settings, topology, publisher, telemetry)
    labels = Labels(settings.label_prefix, settings.discovery_label_prefix)
    background: dict[str, Any] = {}
    telemetry.observe(
        "dockhand.commands.in_flight", "Commands running now", "{command}", lambda: dispatcher.counters.in_flight
    )

    def counted(publish: Any) -> Any:
        async def publish_and_count(routing_key: str, model: Any) -> None:
            await publish(routing_key, model)
            telemetry.events.add(1, {"type": getattr(model, "type", "unknown")})

        return publish_and_count

    async def on_command(message: Any) -> None:
        dispatcher.submit(message.body, message)

    for queue, description in (
        (topology.host_queue, f"Commands for host {settings.host_id} (bound `<host>.#` and `all.#`)"),
        (topology.any_queue, "Commands any host may take (bound `any.#`)"),
    ):
        broker.subscriber(
            queue,
            topology.commands,
            ack_policy=AckPolicy.MANUAL,
            # Bounded backlog per queue; the concurrency itself is the dispatcher's semaphore.
            channel=Channel(prefetch_count=settings.prefetch),
            decoder=_as_is,
            no_reply=True,
            title=queue.name,
            description=description,
        )(on_command)
    _document_outputs(broker, topology, settings.host_id)

    @asynccontextmanager
    async def lifespan() -> AsyncIterator[None]:
        if settings.http_enabled:
            # First, before any connection: a port that is taken ends the start-up with one line.
            http = Endpoints(settings.http_host, settings.http_port, readiness)
            try:
                await http.start()
            except HttpPortError as exc:
                telemetry.shutdown()
                raise SystemExit(f"dockhand: {exc}") from None
            background["http"] = http
        # A bound for ordinary API calls; aiodocker leaves stop/pull/logs/exec unbounded, and
        # those carry their own limits (stop timeout, pull and exec timeouts).
        timeout = aiohttp.ClientTimeout(total=settings.docker_timeout_s, connect=10)
        # A TCP endpoint gets our own connector, so that TLS is exactly what the settings say
        # (aiodocker would otherwise consult DOCKER_TLS_VERIFY / DOCKER_CERT_PATH by itself).
        endpoint = settings.docker_endpoint
        tls.warn_plaintext(endpoint)
        connector = endpoint.connector()
        docker = aiodocker.Docker(url=endpoint.url, connector=connector, timeout=timeout)
        try:
            dispatcher.ops = DockerOps(docker, settings, labels, Policy(settings, labels), telemetry)
            yield
        finally:
            # The broker is already stopped here: FastStream stops it inside the lifespan.
            if "http" in background:
                await background["http"].stop()
            await docker.close()
            if connector is not None:  # ours, not aiodocker's: it closes only what it made
                await connector.close()
            dispatcher.store.close()
            telemetry.shutdown()

    async def readiness() -> dict[str, bool]:
        health: HealthMonitor | None = background.get("health")
        return {
            "broker": await broker.ping(timeout=1.0),
            "docker": health is not None and health.docker.reachable,
        }

    async def start_background() -> None:
        await topology.declare(broker)
        ops = dispatcher.ops
        assert ops is not None
        # Every publisher on the events exchange shares one sequencer: one counter per family.
        sequencer = EventSequencer()
        discovery = Discovery(
            ops,
            counted(publisher.to(topology.events, message_type="dockhand.discovery", sequencer=sequencer)),
            require_healthy=settings.discovery_require_healthy,
        )
        stream = EventStream(
            ops,
            settings,
            discovery,
            counted(publisher.to(topology.events, message_type="dockhand.event", sequencer=sequencer)),
        )
        health = HealthMonitor(
            ops,
            settings,
            dispatcher.counters,
            stream.state,
            publisher.to(topology.health, message_type="dockhand.heartbeat"),
            __version__,
        )
        telemetry.observe("dockhand.events.lag", "Docker event to processing", "ms", lambda: stream.state.lag_ms)

        async def activate() -> None:
            dispatcher.active = True
            for subscriber in broker.subscribers:
                await subscriber.start()
            # This worker now publishes the host's events: a new epoch, so that consumers resync
            # (another worker, or this one before it stood down, may have published meanwhile).
            sequencer.new_epoch()
            stream.start()

        async def stand_by() -> None:
            dispatcher.active = False
            for subscriber in broker.subscribers:
                await subscriber.stop()
            await stream.stop()

        # One active worker per host: the leader consumes commands (host and `any` queues) and
        # publishes events; standbys wait. Subscribers started with the broker stop until then.
        for subscriber in broker.subscribers:
            await subscriber.stop()
        leadership = Leadership(
            settings.amqp_url,
            topology.leader_lock,
            on_elected=activate,
            on_demoted=stand_by,
            ssl_context=settings.amqp_ssl_context,
        )
        health.is_leader = lambda: leadership.leader
        background.update(stream=stream, health=health, leadership=leadership)
        leadership.start()
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
        for name in ("leadership", "stream", "health"):
            if name in background:
                await background[name].stop()

    app = FastStream(
        broker,
        lifespan=lifespan,
        after_startup=[start_background],
        on_shutdown=[drain],
        logger=log,
        specification=AsyncAPI(
            title="dockhand",
            version=__version__,
            description="Run Docker through RabbitMQ: commands in; results, events and heartbeats out. "
            "Contract: shared/contract.md.",
        ),
    )
    app.context.set_global("dispatcher", dispatcher)
    return app
