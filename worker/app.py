"""The FastStream application: broker, subscribers, Docker client lifespan, drain on exit."""

from __future__ import annotations

import asyncio
import gc
import itertools
import logging
import secrets
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import aiodocker
import aiohttp
from faststream import AckPolicy, FastStream
from faststream.rabbit import RabbitBroker
from faststream.rabbit.schemas import Channel
from faststream.security import BaseSecurity
from faststream.specification import AsyncAPI

from dockhand.schemas import (
    ContainerEvent,
    DiscoveryEvent,
    DiscoverySnapshot,
    Heartbeat,
    NetworkEvent,
    Result,
    WireModel,
)
from dockhand.schemas.events import WorkspaceExpired
from dockhand.schemas.health import BrokerHealth
from dockhand.schemas.results import ExecOutputChunk

from . import __version__, tls
from .connection import MultiNodeBroker
from .discovery import Discovery
from .dispatch import Dispatcher
from .docker import DockerOps
from .endpoints import Endpoints, HttpPortError
from .events import EventStream
from .expiry import Expiry
from .health import HealthMonitor
from .janitor import Janitor
from .labels import Labels
from .leadership import Leadership
from .policy import Policy
from .publishing import EventPipeline, EventSequencer, Publish, Publisher, broker_channel
from .settings import Settings
from .telemetry import Telemetry, broker_middlewares, from_environment
from .topology import Topology
from .watchdog import ConsumerWatchdog

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
        (topology.events, f"{host}.workspace.expired", WorkspaceExpired, "A workspace reached its deadline (ttl_s)"),
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


def _broker(settings: Settings, telemetry: Telemetry) -> MultiNodeBroker:
    # FastStream's own per-message "Received/Processed" lines go to DEBUG: our log has one
    # line per command outcome instead.
    return MultiNodeBroker(
        # Every node of the cluster (contract v1.1): a lost node is replaced by the next that
        # answers (worker/connection.py), and the subscribers' consumers follow.
        settings.amqp_urls,
        # amqps://: verified with the settings' CA and client certificate (worker/tls.py).
        security=BaseSecurity(ssl_context=settings.amqp_ssl_context) if settings.amqp_ssl_context else None,
        log_level=logging.DEBUG,
        graceful_timeout=settings.shutdown_grace_s,
        middlewares=broker_middlewares(telemetry),
        on_reconnected=[lambda _: telemetry.broker_reconnects.add(1)],
        id_generator=message_ids(),
        # The one handler takes the message as it is (_as_is): FastDepends would only resolve
        # that one parameter, at about 5 % of a cheap command's CPU (py-spy, c=64).
        apply_types=False,
    )


def tune_gc() -> None:
    """Set up the cycle collector for a long-running worker, once everything is imported.

    ``gc.freeze()`` moves what exists now (modules, classes, schemas: ~90,000 objects) out of
    the collector's sight, and a larger first generation lets the short-lived objects of a
    command die by reference count before a collection walks them. Measured with the real
    dispatcher over fakes: the collector's share of a cheap command fell from ~114 µs to ~9 µs.
    Only the worker's own process does this (not a test process that builds an app).
    """
    gc.freeze()
    _, second, third = gc.get_threshold()
    gc.set_threshold(10_000, second, third)


def message_ids() -> Callable[[], str]:
    """Ids for the messages we publish without one (``correlation_id``): a random prefix per
    process and a counter. FastStream's default is a ``uuid4`` per publish, whose
    ``os.urandom`` system call showed up in the profile of a loaded worker."""
    prefix = secrets.token_hex(6)
    counter = itertools.count(1)
    return lambda: f"{prefix}-{next(counter):x}"


def _docker_client(settings: Settings) -> tuple[aiodocker.Docker, aiohttp.BaseConnector | None]:
    """The Docker client, and its connector when it is ours to close."""
    # A bound for ordinary API calls; aiodocker leaves stop/pull/logs/exec unbounded, and
    # those carry their own limits (stop timeout, pull and exec timeouts).
    timeout = aiohttp.ClientTimeout(total=settings.docker_timeout_s, connect=10)
    # A TCP endpoint gets our own connector, so that TLS is exactly what the settings say
    # (aiodocker would otherwise consult DOCKER_TLS_VERIFY / DOCKER_CERT_PATH by itself).
    endpoint = settings.docker_endpoint
    tls.warn_plaintext(endpoint)
    connector = endpoint.connector()
    return aiodocker.Docker(url=endpoint.url, connector=connector, timeout=timeout), connector


class Runtime:
    """One worker process: its broker, dispatcher, Docker client and background jobs.

    The life of a worker, in order: :meth:`lifespan` opens the HTTP endpoints and the Docker
    client; :meth:`start_background` (after the broker connects) declares the topology and
    campaigns for the host's leader lock; :meth:`activate` / :meth:`stand_by` follow the lock;
    :meth:`drain` (on shutdown) stops consuming and lets running commands finish.
    """

    def __init__(self, settings: Settings, telemetry: Telemetry) -> None:
        self.settings = settings
        self.telemetry = telemetry
        self.topology = Topology(settings)
        self.broker = _broker(settings, telemetry)
        # Past FastStream's publish path when no span is recorded (its spans are then the only
        # thing that path would add).
        self.publisher = Publisher(self.broker, direct=not telemetry.records_spans)
        self.dispatcher = Dispatcher(settings, self.topology, self.publisher, telemetry)
        self.labels = Labels(settings.label_prefix, settings.discovery_label_prefix)
        # Every publisher on the events exchange shares one sequencer: one counter per family.
        self.sequencer = EventSequencer()
        # ... and one pipeline: events in seq order on one channel, confirms awaited in a window.
        self.event_pipeline = EventPipeline(self.sequencer, broker_channel(self.broker), self.topology.events.name)
        self.http: Endpoints | None = None
        self.stream: EventStream | None = None
        self.health: HealthMonitor | None = None
        self.leadership: Leadership | None = None
        self.watchdog: ConsumerWatchdog | None = None
        # Held while the subscribers are started or stopped (fail-over, drain, the watchdog's
        # re-creation), so that those never interleave.
        self.subscriptions = asyncio.Lock()
        self.expiry: Expiry | None = None
        self.janitor: Janitor | None = None
        telemetry.observe(
            "dockhand.commands.in_flight",
            "Commands running now",
            "{command}",
            lambda: self.dispatcher.counters.in_flight,
        )
        self._subscribe()
        _document_outputs(self.broker, self.topology, settings.host_id)

    def app(self) -> FastStream:
        """The FastStream application that runs this worker."""
        app = FastStream(
            self.broker,
            lifespan=self.lifespan,
            after_startup=[self.start_background],
            on_shutdown=[self.drain],
            logger=log,
            specification=AsyncAPI(
                title="dockhand",
                version=__version__,
                description="Run Docker through RabbitMQ: commands in; results, events and heartbeats out. "
                "Contract: shared/contract.md.",
            ),
        )
        app.context.set_global("dispatcher", self.dispatcher)
        app.context.set_global("runtime", self)
        return app

    def _subscribe(self) -> None:
        async def on_command(message: Any) -> None:
            self.dispatcher.submit(message.body, message)

        for queue, description in (
            (self.topology.host_queue, f"Commands for host {self.settings.host_id} (bound `<host>.#` and `all.#`)"),
            (self.topology.any_queue, "Commands any host may take (bound `any.#`)"),
        ):
            self.broker.subscriber(
                queue,
                self.topology.commands,
                ack_policy=AckPolicy.MANUAL,
                # Bounded backlog per queue; the concurrency itself is the dispatcher's semaphore.
                # No confirms: answers are committed in transactions on this channel (answers.py),
                # and a channel in confirm mode cannot take tx.select.
                channel=Channel(prefetch_count=self.settings.prefetch, publisher_confirms=False),
                decoder=_as_is,
                no_reply=True,
                title=queue.name,
                description=description,
            )(on_command)

    def _counted(self, publish: Publish) -> Publish:
        async def publish_and_count(routing_key: str, model: WireModel) -> None:
            await publish(routing_key, model)
            self.telemetry.events.add(1, {"type": getattr(model, "type", "unknown")})

        return publish_and_count

    @asynccontextmanager
    async def lifespan(self) -> AsyncIterator[None]:
        """HTTP endpoints and the Docker client, for the life of the broker connection."""
        if self.settings.http_enabled:
            # First, before any connection: a port that is taken ends the start-up with one line.
            http = Endpoints(self.settings.http_host, self.settings.http_port, self.readiness, self.broker_state)
            try:
                await http.start()
            except HttpPortError as exc:
                self.telemetry.shutdown()
                raise SystemExit(f"dockhand: {exc}") from None
            self.http = http
        docker, connector = _docker_client(self.settings)
        try:
            policy = Policy(self.settings, self.labels)
            self.dispatcher.ops = DockerOps(docker, self.settings, self.labels, policy, self.telemetry)
            yield
        finally:
            # The broker is already stopped here: FastStream stops it inside the lifespan.
            if self.http is not None:
                await self.http.stop()
            await docker.close()
            if connector is not None:  # ours, not aiodocker's: it closes only what it made
                await connector.close()
            self.dispatcher.store.close()
            self.telemetry.shutdown()

    async def readiness(self) -> dict[str, bool]:
        """What the readiness endpoint reports: the broker answers, Docker is reachable, every
        queue this worker should consume has its consumer (a standby's need none)."""
        return {
            "broker": await self.broker.ping(timeout=1.0),
            "docker": self.health is not None and self.health.docker.reachable,
            "consumers": self.watchdog is not None and not self.watchdog.problems(),
        }

    def broker_state(self) -> BrokerHealth:
        """Which broker node this worker is on and whether it consumes (readiness, heartbeat)."""
        return BrokerHealth(
            node=self.broker.node,
            consuming=self.watchdog is not None and self.watchdog.consuming,
        )

    async def start_background(self) -> None:
        """Declare the topology, build the background jobs, campaign for the lock."""
        await self.topology.declare(self.broker)
        ops = self.dispatcher.ops
        assert ops is not None, "the lifespan sets the Docker operations before start-up ends"
        self._build_jobs(ops)
        # One active worker per host: the leader consumes commands (host and `any` queues) and
        # publishes events; standbys wait. Subscribers started with the broker stop until then.
        for subscriber in self.broker.subscribers:
            await subscriber.stop()
        self._campaign()
        log.info(
            "dockhand worker %s ready: host %s, queue %s, max concurrency %d",
            self.settings.effective_worker_id,
            self.settings.host_id,
            self.topology.host_queue.name,
            self.settings.max_concurrency,
        )

    def _build_jobs(self, ops: DockerOps) -> None:
        """The event stream (with discovery), expiry, garbage and heartbeat jobs."""
        discovery = Discovery(
            ops,
            self._counted(self._events("dockhand.discovery")),
            require_healthy=self.settings.discovery_require_healthy,
        )
        self.stream = stream = EventStream(ops, self.settings, discovery, self._counted(self._events("dockhand.event")))
        # An event the pipeline gave up on is a gap: a resync follows it with a snapshot.
        self.event_pipeline.on_lost.append(stream.request_resync)
        self.expiry = Expiry(
            ops,
            self._counted(self._events("dockhand.event")),
            rescan_s=self.settings.expiry_rescan_s,
            stop_timeout_s=self.settings.expiry_stop_timeout_s,
        )
        self.janitor = Janitor(ops)
        self.health = HealthMonitor(
            ops,
            self.settings,
            self.dispatcher.counters,
            stream.state,
            self.publisher.to(self.topology.health, message_type="dockhand.heartbeat"),
            __version__,
        )
        self.telemetry.observe("dockhand.events.lag", "Docker event to processing", "ms", lambda: stream.state.lag_ms)

    def _campaign(self) -> None:
        """Campaign for the host's leader lock; heartbeat; watch the consumers."""
        assert self.health is not None
        self.leadership = leadership = Leadership(
            self.settings.amqp_urls,
            self.topology.leader_lock,
            on_elected=self.activate,
            on_demoted=self.stand_by,
            ssl_context=self.settings.amqp_ssl_context,
        )
        self.health.is_leader = lambda: leadership.leader
        self.health.broker_state = self.broker_state
        # After a broker-sent cancel, a channel error or a reconnect: every queue this worker
        # should consume has its consumer again (worker/watchdog.py).
        self.watchdog = ConsumerWatchdog(
            lambda: self.broker.subscribers,
            # The leader only: a standby's dispatcher is never stood down (it never led), so
            # ``active`` alone would have the watchdog start a standby's consumers.
            lambda: leadership.leader and self.dispatcher.active,
            lambda: self.broker.node is not None,
            lock=self.subscriptions,
        )
        leadership.start()
        self.health.start()
        self.watchdog.start()

    def _events(self, message_type: str) -> Publish:
        return self.event_pipeline.to(message_type)

    async def activate(self) -> None:
        """This worker took the host's leader lock: consume commands, publish events."""
        async with self.subscriptions:
            self.dispatcher.active = True
            for subscriber in self.broker.subscribers:
                await subscriber.start()
        # This worker now publishes the host's events: a new epoch, so that consumers resync
        # (another worker, or this one before it stood down, may have published meanwhile).
        self.sequencer.new_epoch()
        for job in (self.stream, self.expiry, self.janitor):
            if job is not None:
                job.start()

    async def stand_by(self) -> None:
        """Another worker holds the lock: stop consuming and publishing events."""
        async with self.subscriptions:
            self.dispatcher.active = False
            for subscriber in self.broker.subscribers:
                await subscriber.stop()
        for job in (self.stream, self.expiry, self.janitor):
            if job is not None:
                await job.stop()

    async def drain(self) -> None:
        """On shutdown: no new deliveries, running commands finish, background jobs stop."""
        if self.watchdog is not None:
            await self.watchdog.stop()  # first: it would re-create the consumers stopped here
        async with self.subscriptions:
            for subscriber in self.broker.subscribers:
                await subscriber.stop()  # basic.cancel: no new deliveries, acks still work
        await self.dispatcher.drain(self.settings.shutdown_grace_s)
        for job in (self.leadership, self.janitor, self.expiry, self.stream, self.health):
            if job is not None:
                await job.stop()
        await self.event_pipeline.close()  # the events still unconfirmed, for a few seconds at most


def create_app(settings: Settings | None = None, telemetry: Telemetry | None = None) -> FastStream:
    """Build the worker for one configuration (``python -m dockhand.worker`` runs it)."""
    settings = settings or Settings()
    return Runtime(settings, telemetry or from_environment(settings)).app()
