"""From a delivered message to a confirmed result and an ack.

aio-pika hands each delivery to FastStream as its own task, and under load those tasks reach
the handler out of order. ``submit`` therefore restores the broker's order from the delivery
tags (:class:`DeliveryOrder`) before a message enters its per-workspace lane. Each command then
runs when its lane and a concurrency slot are free; its result is published with publisher
confirms, and only then is the message acked — or rejected into the dead-letter queue when the
command was never valid.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import re
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any

import pydantic_core
from opentelemetry import trace
from pydantic import ValidationError

from schemas import COMMAND_ADAPTER, COMMAND_TYPES, Command, ErrorCode, Result, Status, utcnow

from .errors import DockhandError, rejected
from .handlers import HANDLERS, check_policy, lane_key
from .store import ResultStore
from .telemetry import Telemetry

if TYPE_CHECKING:
    from faststream.rabbit import RabbitMessage

    from .docker_ops import DockerOps
    from .publishing import Publisher
    from .settings import Settings
    from .topology import Topology

log = logging.getLogger("dockhand.commands")


class Lanes:
    """Runs jobs with the same key one after another, in submission order; jobs without a
    key, or with different keys, run concurrently."""

    def __init__(self) -> None:
        self._tails: dict[str, asyncio.Task[None]] = {}
        self.tasks: set[asyncio.Task[None]] = set()

    def submit(
        self, key: str | None, job: Callable[[], Awaitable[None]], context: contextvars.Context | None = None
    ) -> asyncio.Task[None]:
        before = self._tails.get(key) if key is not None else None

        async def run() -> None:
            if before is not None:
                # Wait for the predecessor however it ended; its failure is its own.
                await asyncio.wait([before])
            await job()

        task = asyncio.get_running_loop().create_task(run(), context=context)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        if key is not None:
            self._tails[key] = task
            task.add_done_callback(lambda t: self._tails.pop(key) if self._tails.get(key) is t else None)
        return task


class DeliveryOrder:
    """Releases deliveries in broker order: delivery tags count 1, 2, 3, … per channel, so a
    message that arrives early is held until the ones before it have arrived.

    A delivery that never reaches the handler (FastStream failed before it) would stall its
    channel; after ``gap_timeout_s`` the held messages are released anyway, in tag order.
    """

    def __init__(self, gap_timeout_s: float = 2.0) -> None:
        self._gap_timeout_s = gap_timeout_s
        self._next: dict[int, int] = {}
        self._held: dict[int, dict[int, Callable[[], None]]] = {}
        self._timers: dict[int, asyncio.TimerHandle] = {}

    def admit(self, channel: object, tag: int | None, release: Callable[[], None]) -> None:
        if tag is None:  # not from a broker delivery (tests): nothing to order by
            release()
            return
        key = id(channel)
        if key not in self._next:
            # A new channel (first start or a reconnect): its tags start again at 1.
            self._forget_closed()
            self._next[key] = 1
        if tag < self._next[key]:
            release()  # released already by a gap timeout: late, but never dropped
            return
        held = self._held.setdefault(key, {})
        held[tag] = release
        self._drain(key)

    def _drain(self, key: int) -> None:
        held = self._held[key]
        expected = self._next[key]
        while expected in held:
            held.pop(expected)()
            expected += 1
        self._next[key] = expected
        timer = self._timers.pop(key, None)
        if timer is not None:
            timer.cancel()
        if held:
            self._timers[key] = asyncio.get_running_loop().call_later(self._gap_timeout_s, self._skip_gap, key)

    def _skip_gap(self, key: int) -> None:
        self._timers.pop(key, None)
        held = self._held.get(key)
        if held:
            log.warning("delivery %d never reached the handler; releasing the %d after it", self._next[key], len(held))
            self._next[key] = min(held)
            self._drain(key)

    def _forget_closed(self) -> None:
        # Keep the bookkeeping of a handful of channels; old ones have nothing held.
        for key in [k for k in self._next if not self._held.get(k)][:-8]:
            self._next.pop(key, None)
            self._held.pop(key, None)


def _summarise(exc: ValidationError, limit: int = 5) -> str:
    parts = []
    for error in exc.errors(include_url=False)[:limit]:
        where = ".".join(str(p) for p in error["loc"]) or "body"
        parts.append(f"{where}: {error['msg']}")
    more = exc.error_count() - limit
    return "; ".join(parts) + (f"; and {more} more" if more > 0 else "")


class Rejection(Exception):
    """A message that is not a valid command, with its ``command_id`` when one was readable."""

    def __init__(self, error: DockhandError, command_id: str | None, command_type: str) -> None:
        super().__init__(str(error))
        self.error = error
        self.command_id = command_id
        self.command_type = command_type


_COMMAND_ID = re.compile(rb'^\s*\{\s*"command_id"\s*:\s*"([A-Za-z0-9_.:@/+=-]{1,128})"')


def parse(body: bytes, routing_key: str, max_body_bytes: int) -> Command:
    """Validate one message body against the contract, or raise :class:`Rejection`."""
    if len(body) > max_body_bytes:
        raise Rejection(
            rejected(ErrorCode.INVALID_COMMAND, f"body of {len(body)} bytes exceeds the {max_body_bytes}-byte limit"),
            None,
            "unknown",
        )
    try:
        raw = pydantic_core.from_json(body)
    except ValueError as exc:
        # Unparseable (truncated, nested too deep, …) but the id may still be plain to see:
        # the sender then gets its rejection instead of silence.
        sniffed = _COMMAND_ID.search(body[:4096])
        command_id = sniffed.group(1).decode() if sniffed else None
        raise Rejection(
            rejected(ErrorCode.INVALID_COMMAND, f"body is not JSON: {exc}"), command_id, "unknown"
        ) from None
    if not isinstance(raw, dict):
        raise Rejection(rejected(ErrorCode.INVALID_COMMAND, "body must be a JSON object"), None, "unknown")
    command_id = raw.get("command_id")
    if not (isinstance(command_id, str) and 1 <= len(command_id) <= 128):
        command_id = None
    command_type = raw.get("type")
    shown_type = command_type if isinstance(command_type, str) and len(command_type) <= 64 else "unknown"
    # isinstance first: a list or object "type" is unhashable and must be a rejection, not a crash.
    if not isinstance(command_type, str) or command_type not in COMMAND_TYPES:
        raise Rejection(
            rejected(ErrorCode.UNKNOWN_TYPE, f"unknown command type {str(command_type)[:64]!r}"), command_id, shown_type
        )
    _, _, key_type = routing_key.partition(".")
    if key_type != command_type:
        raise Rejection(
            rejected(
                ErrorCode.INVALID_COMMAND, f"type {command_type!r} does not match routing key {routing_key[:200]!r}"
            ),
            command_id,
            shown_type,
        )
    try:
        return COMMAND_ADAPTER.validate_json(body)
    except ValidationError as exc:
        message = f"invalid {command_type}: {_summarise(exc)}"
        raise Rejection(rejected(ErrorCode.INVALID_COMMAND, message), command_id, shown_type) from None


class Counters:
    """Outcome counts for health heartbeats."""

    def __init__(self) -> None:
        self.in_flight = 0
        self.by_status: dict[Status, int] = dict.fromkeys(Status, 0)


class Dispatcher:
    """Turns delivered messages into executed commands and confirmed results."""

    def __init__(
        self, settings: Settings, topology: Topology, publisher: Publisher, telemetry: Telemetry | None = None
    ) -> None:
        self.settings = settings
        self.telemetry = telemetry or Telemetry(settings.host_id)
        self.topology = topology
        self.publisher = publisher
        self.ops: DockerOps | None = None
        self.store = ResultStore(
            settings.result_cache_size,
            settings.state_dir / f"results-{settings.host_id}.sqlite3" if settings.state_dir else None,
        )
        self.lanes = Lanes()
        self._order = DeliveryOrder()
        self.counters = Counters()
        self._slots = asyncio.Semaphore(settings.max_concurrency)
        self._draining = False
        self.active = True  # the app clears it while this worker is a standby (see leadership.py)
        self.worker_id = settings.effective_worker_id

    # --- intake (synchronous: preserves delivery order) -----------------------------------

    def submit(self, body: bytes, message: RabbitMessage) -> None:
        """Take one delivered message; it enters its lane in broker delivery order."""
        raw = message.raw_message
        # The message's context (its consumer span, from its traceparent) goes with it, even
        # when another message's arrival is what releases it into its lane.
        context = contextvars.copy_context()
        self._order.admit(raw.channel, raw.delivery_tag, lambda: self._enter(body, message, context))

    def _enter(self, body: bytes, message: RabbitMessage, context: contextvars.Context | None = None) -> None:
        if not self.active:
            # Delivered while this worker is (becoming) a standby: give it back, untouched.
            self.lanes.submit(None, lambda: message.nack(requeue=True))
            return
        received = utcnow()
        routing_key = message.raw_message.routing_key or ""
        try:
            command = parse(body, routing_key, self.settings.max_body_bytes)
        except Rejection as exc:
            rejection = exc
            self.lanes.submit(None, lambda: self._guarded(self._reject(rejection, message, received), message), context)
            return
        key = lane_key(command.type, command.payload)
        self.lanes.submit(key, lambda: self._guarded(self._run(command, message, received), message), context)

    async def _guarded(self, job: Awaitable[None], message: RabbitMessage) -> None:
        """A bug must not strand a message unacked: requeue it, and the quorum queue's
        delivery limit dead-letters it if it keeps failing."""
        try:
            await job
        except Exception:
            log.exception("internal error handling message %s; requeueing it", message.raw_message.message_id)
            with contextlib.suppress(Exception):
                await message.nack(requeue=True)

    # --- execution -----------------------------------------------------------------------

    async def _run(self, command: Command, message: RabbitMessage, received: datetime) -> None:
        async with self._slots:
            if self._draining:
                # Not started: leave it unacked; closing the channel returns it to the queue
                # (in order) for the next worker.
                return
            self.counters.in_flight += 1
            attributes = {
                "dockhand.command_id": command.command_id,
                "dockhand.command_type": command.type,
                "dockhand.host_id": self.settings.host_id,
            }
            workspace_id = getattr(command.payload, "workspace_id", None)
            if workspace_id:
                attributes["dockhand.workspace_id"] = workspace_id
            span = self.telemetry.tracer.start_span(f"dockhand {command.type}", attributes=attributes)
            try:
                with trace.use_span(span, end_on_exit=True):
                    await self._answer(command, message, span)
            finally:
                self.counters.in_flight -= 1

    async def _answer(self, command: Command, message: RabbitMessage, span: trace.Span) -> None:
        """Execute (or answer from the store), publish, settle."""
        stored = self.store.get(command.command_id)
        if stored is None:
            result = await self._execute(command, message)
        elif message.raw_message.redelivered and self.store.is_published(command.command_id):
            # A crash came between the confirmed result and the ack: it was answered.
            log.info("%s %s: redelivered, already answered; acking", command.type, command.command_id)
            await message.ack()
            return
        else:
            log.info("%s %s: answered from the stored result", command.type, command.command_id)
            result = stored
        span.set_attribute("dockhand.status", result.status.value)
        if result.error is not None:
            span.set_attribute("dockhand.error_code", result.error.code.value)
            span.set_status(trace.Status(trace.StatusCode.ERROR, result.error.code.value))
        await self._finish(result, message, settle=self._settle_for(result.status))

    def _attempt(self, message: RabbitMessage) -> int:
        headers = message.raw_message.headers or {}
        count = headers.get("x-delivery-count")
        if isinstance(count, int):
            return count + 1
        return 2 if message.raw_message.redelivered else 1

    async def _execute(self, command: Command, message: RabbitMessage) -> Result:
        started = utcnow()
        clock = time.perf_counter()
        body: Any = None
        error: DockhandError | None = None
        if command.expires_at is not None and command.expires_at <= started:
            error = DockhandError(
                ErrorCode.TIMEOUT,
                f"command expired at {command.expires_at.isoformat()} before it ran",
                status=Status.EXPIRED,
            )
        else:
            assert self.ops is not None, "Docker client not started"
            try:
                check_policy(command.type, command.payload, self.ops)
                body = await HANDLERS[command.type](command.payload, self.ops)
            except DockhandError as exc:
                error = exc
            except Exception as exc:
                log.exception("%s %s crashed", command.type, command.command_id)
                error = DockhandError(ErrorCode.INTERNAL, f"{type(exc).__name__}: {exc}")
        result = Result(
            command_id=command.command_id,
            type=command.type,
            status=error.status if error else Status.SUCCEEDED,
            host_id=self.settings.host_id,
            worker_id=self.worker_id,
            result=body,
            error=error.info() if error else None,
            started_at=started,
            finished_at=utcnow(),
            duration_ms=round((time.perf_counter() - clock) * 1000, 3),
            attempt=self._attempt(message),
        )
        # Remember outcomes that a repeat must not redo; a retryable failure may be sent again
        # with the same id and should then run again.
        if result.status is not Status.REJECTED and not (error and error.retryable):
            self.store.put(result, published=False)
        self.telemetry.commands.add(1, {"type": command.type, "status": result.status.value})
        self.telemetry.command_duration.record(result.duration_ms / 1000, {"type": command.type})
        subject = getattr(command.payload, "workspace_id", None) or getattr(command.payload, "name", None)
        log.info(
            "%s%s %s in %.1f ms (command %s)%s",
            command.type,
            f" {subject}" if subject else "",
            result.status.value,
            result.duration_ms,
            command.command_id,
            f": {error}" if error else "",
            extra={
                "command_id": command.command_id,
                "command_type": command.type,
                "workspace_id": getattr(command.payload, "workspace_id", None),
                "status": result.status.value,
                "duration_ms": result.duration_ms,
                **({"error_code": error.code.value} if error else {}),
            },
        )
        return result

    async def _reject(self, rejection: Rejection, message: RabbitMessage, received: datetime) -> None:
        log.warning(
            "rejected message %s (command %s): %s",
            message.raw_message.message_id or message.raw_message.delivery_tag,
            rejection.command_id or "unreadable",
            rejection.error,
        )
        if rejection.command_id is None:
            self.counters.by_status[Status.REJECTED] += 1
            await message.reject(requeue=False)
            return
        now = utcnow()
        result = Result(
            command_id=rejection.command_id,
            type=rejection.command_type,
            status=Status.REJECTED,
            host_id=self.settings.host_id,
            worker_id=self.worker_id,
            error=rejection.error.info(),
            started_at=received,
            finished_at=now,
            duration_ms=round((now - received).total_seconds() * 1000, 3),
            attempt=self._attempt(message),
        )
        await self._finish(result, message, settle="reject")

    @staticmethod
    def _settle_for(status: Status) -> str:
        return "reject" if status is Status.REJECTED else "ack"

    async def _finish(self, result: Result, message: RabbitMessage, *, settle: str) -> None:
        """Publish the result (confirmed), then ack — or reject into the dead-letter queue."""
        try:
            await self._publish_result(result, message)
        except Exception:
            # Still failing after the retries: requeue it rather than ack it unanswered. The
            # redelivery is answered from the store (nothing runs twice); if publishing keeps
            # failing, the delivery limit dead-letters it.
            log.exception("could not publish the result of %s; requeueing the command", result.command_id)
            with contextlib.suppress(Exception):
                await message.nack(requeue=True)
            return
        self.store.mark_published(result.command_id)
        self.counters.by_status[result.status] += 1
        if settle == "reject":
            await message.reject(requeue=False)
        else:
            await message.ack()

    async def _publish_result(self, result: Result, message: RabbitMessage) -> None:
        payload = result.model_dump_json().encode()
        raw = message.raw_message
        common: dict[str, Any] = {"correlation_id": raw.correlation_id, "message_type": "dockhand.result"}
        await self.publisher.confirmed(
            payload,
            exchange=self.topology.results,
            routing_key=self.topology.result_key(result.type, result.status.value),
            persist=True,
            **common,
        )
        if raw.reply_to:
            await self.publisher.confirmed(payload, routing_key=raw.reply_to, **common)

    # --- shutdown ------------------------------------------------------------------------

    async def drain(self, grace_s: float) -> bool:
        """Let running commands finish (and publish) within ``grace_s``; commands not yet
        started stay unacked for the next worker. True when everything finished in time."""
        self._draining = True
        pending = set(self.lanes.tasks)
        if not pending:
            return True
        log.info("draining: %d command(s) in flight, up to %.0f s", self.counters.in_flight, grace_s)
        _, late = await asyncio.wait(pending, timeout=grace_s)
        for task in late:
            task.cancel()
        if late:
            log.warning("drain: %d command(s) did not finish in time; they will be redelivered", len(late))
        return not late
