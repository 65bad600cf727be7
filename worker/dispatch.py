"""From a delivered message to an executed command and a settled message.

``submit`` restores the broker's delivery order (:mod:`.ordering`) and checks the body against
the contract (:mod:`.intake`) before a message enters its per-workspace lane. Each command then
runs when its lane and a concurrency slot are free (``workspace.exec``: a slot of the exec pool,
taken at intake); its result is published and the message settled by :mod:`.settle`. A stored
result is bound to its command by a fingerprint, so a reused ``command_id`` is a ``conflict``,
never another command's answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import hmac
import logging
import time
from collections.abc import Awaitable
from datetime import datetime
from typing import TYPE_CHECKING, Any

from opentelemetry import trace

from dockhand.schemas import Command, ErrorCode, Result, Status, utcnow

from . import exec_stream, tenancy
from .answers import Transactions
from .errors import DockhandError
from .handlers import HANDLERS, check_policy, lane_key
from .intake import Rejection, parse, printable
from .ordering import DeliveryOrder, Lanes
from .settle import Counters, Settler, attempt_of, settle_for
from .store import ResultStore, store_key
from .telemetry import Telemetry

if TYPE_CHECKING:
    from faststream.rabbit import RabbitMessage

    from .docker import DockerOps
    from .publishing import Publisher
    from .settings import Settings
    from .topology import Topology

log = logging.getLogger("dockhand.commands")

POOLED_TYPES = frozenset({"workspace.exec"})
"""Command types that run in the exec pool (``DOCKHAND_MAX_CONCURRENT_EXECS``), not in a command slot."""

UNSTORED_TYPES = frozenset({"workspace.get_file"})
"""Command types whose results are not kept in the result store: a file read carries up to
DOCKHAND_MAX_FILE_BYTES (as base64) and changes nothing, so a repeat simply reads again."""


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
        tracer = self.telemetry.tracer if self.telemetry.records_spans else None
        self.settler = Settler(
            settings,
            topology,
            publisher,
            self.store,
            self.counters,
            settings.effective_worker_id,
            Transactions(publisher, tracer=tracer),
        )
        self._slots = asyncio.Semaphore(settings.max_concurrency)
        # workspace.exec runs outside those slots, in a pool of its own; a counter at intake
        # (running + waiting in their lanes) bounds both the execs and the deliveries they hold.
        self._execs = 0
        self._in_pool: set[int] = set()  # id() of the deliveries counted in _execs
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
            self.lanes.submit(None, lambda: self.settler.settle(message, "requeue"))
            return
        received = utcnow()
        routing_key = message.raw_message.routing_key or ""
        try:
            command = parse(body, routing_key, self.settings.body_limit)
        except Rejection as exc:
            rejection = exc
            self.lanes.submit(None, lambda: self._guarded(self._reject(rejection, message, received), message), context)
            return
        try:
            sender = tenancy.sender_of(message.raw_message.user_id, self.settings)
        except DockhandError as exc:
            rejection = Rejection(exc, command.command_id, command.type)
            self.lanes.submit(None, lambda: self._guarded(self._reject(rejection, message, received), message), context)
            return
        # The sender lives in this message's own context: what runs for it (DockerOps' owner
        # labels and checks, the store key) reads it there, and no other message sees it.
        if context is None:
            context = contextvars.copy_context()
        context.run(tenancy.SENDER.set, sender)
        pooled = command.type in POOLED_TYPES
        if pooled:
            if self._execs >= self.settings.exec_slots:
                # Answered at once (no lane, no slot): a full pool must not pile up unacked
                # deliveries, which would exhaust the prefetch that other commands need.
                self.lanes.submit(None, lambda: self._guarded(self._at_capacity(command, message), message), context)
                return
            self._execs += 1
            self._in_pool.add(id(message))
        key = lane_key(command.type, command.payload)
        task = self.lanes.submit(
            key, lambda: self._guarded(self._run(command, message, received, pooled=pooled), message), context
        )
        if pooled:
            task.add_done_callback(lambda _: self._release_exec(message))

    def _release_exec(self, message: RabbitMessage) -> None:
        """An exec leaves the pool once its answer is decided or its task ends, whichever comes
        first. Not only at the end: the ack commits with the reply (answers.py), and the broker
        may deliver the next exec before the commit-ok reaches the worker."""
        if id(message) in self._in_pool:
            self._in_pool.discard(id(message))
            self._execs -= 1

    async def _guarded(self, job: Awaitable[None], message: RabbitMessage) -> None:
        """A bug must not strand a message unacked: requeue it, and the quorum queue's
        delivery limit dead-letters it if it keeps failing."""
        try:
            await job
        except Exception:
            log.exception(
                "internal error handling message %s; requeueing it", printable(message.raw_message.message_id)
            )
            await self.settler.settle(message, "requeue")

    # --- execution -----------------------------------------------------------------------

    async def _run(self, command: Command, message: RabbitMessage, received: datetime, *, pooled: bool = False) -> None:
        # A pooled command (workspace.exec) was admitted at intake and takes no command slot.
        slot: contextlib.AbstractAsyncContextManager[Any] = contextlib.nullcontext() if pooled else self._slots
        async with slot:
            if self._draining:
                # Not started: leave it unacked; closing the channel returns it to the queue
                # (in order) for the next worker.
                return
            self.counters.in_flight += 1
            try:
                if not self.telemetry.records_spans:
                    # Nothing records a span: the message's trace context (current already)
                    # is all that goes on, into the result's headers.
                    await self._answer(command, message, trace.get_current_span())
                    return
                with trace.use_span(self._span(command), end_on_exit=True) as span:
                    await self._answer(command, message, span)
            finally:
                self.counters.in_flight -= 1

    def _span(self, command: Command) -> trace.Span:
        """The ``dockhand <type>`` span of one command, with its ids."""
        attributes = {
            "dockhand.command_id": command.command_id,
            "dockhand.command_type": command.type,
            "dockhand.host_id": self.settings.host_id,
        }
        workspace_id = getattr(command.payload, "workspace_id", None)
        if workspace_id:
            attributes["dockhand.workspace_id"] = workspace_id
        sender = tenancy.current()
        if sender is not None:
            attributes["dockhand.sender"] = sender.user
        return self.telemetry.tracer.start_span(f"dockhand {command.type}", attributes=attributes)

    async def _answer(self, command: Command, message: RabbitMessage, span: trace.Span) -> None:
        """Execute (or answer from the store), publish, settle."""
        stored_under = self._store_key(command.command_id)
        entry = self.store.lookup(stored_under)
        key: str | None = stored_under  # the entry this answer marks published (none for a conflict)
        payload: bytes | None = None
        results_sent = False
        if entry is None:
            result, payload = await self._execute(command, message)
        elif entry.fingerprint is not None and not hmac.compare_digest(
            entry.fingerprint, self.store.fingerprint(command.type, command.payload)
        ):
            # The id answered another command (another type or payload): neither run this one
            # nor hand over that one's result, and leave the stored result as it is.
            result = self._conflict(command, message)
            key = None
        elif message.raw_message.redelivered and entry.published:
            # It was answered and marked (its reply and ack committed, or a journal of an earlier
            # version confirmed it), yet the broker delivers it again: ack it, answer nothing.
            log.info("%s %s: redelivered, already answered; acking", command.type, command.command_id)
            await self.settler.settle(message, "ack")
            return
        else:
            log.info("%s %s: answered from the stored result", command.type, command.command_id)
            result = entry.result
            # Killed between the results exchange's confirm and the reply: the reply only.
            results_sent = entry.results_sent and not entry.published
        span.set_attribute("dockhand.status", result.status.value)
        if result.error is not None:
            span.set_attribute("dockhand.error_code", result.error.code.value)
            span.set_status(trace.Status(trace.StatusCode.ERROR, result.error.code.value))
        self._release_exec(message)  # the exec (if it is one) is done; only its answer is left
        await self.settler.finish(
            result, message, settle=settle_for(result.status), key=key, payload=payload, results_sent=results_sent
        )

    def _conflict(self, command: Command, message: RabbitMessage) -> Result:
        log.warning(
            "%s %s: command_id already answered a different command; not run (conflict)",
            command.type,
            command.command_id,
        )
        error = DockhandError(
            ErrorCode.CONFLICT,
            f"command_id {command.command_id!r} was already used for a different command (another type or "
            "payload); nothing was run — send this command under a new command_id",
        )
        return self.settler.unrun(command.command_id, command.type, error, utcnow(), message)

    async def _at_capacity(self, command: Command, message: RabbitMessage) -> None:
        entry = self.store.lookup(self._store_key(command.command_id))
        if entry is not None:
            # Answered before: the stored answer (or a conflict) needs no pool slot.
            await self._run(command, message, utcnow(), pooled=True)
            return
        error = DockhandError(
            ErrorCode.CAPACITY,
            f"{self.settings.exec_slots} workspace.exec already running or waiting on host {self.settings.host_id} "
            "(DOCKHAND_MAX_CONCURRENT_EXECS); nothing was run — retry later",
            retryable=True,
        )
        log.warning("%s %s: %s", command.type, command.command_id, error)
        self.telemetry.commands.add(1, {"type": command.type, "status": Status.FAILED.value})
        await self.settler.finish(
            self.settler.unrun(command.command_id, command.type, error, utcnow(), message), message, settle="ack"
        )

    @staticmethod
    def _store_key(command_id: str) -> str:
        """The result-store key of ``command_id`` for the running command's sender."""
        return store_key(tenancy.store_owner(), command_id)

    async def _execute(self, command: Command, message: RabbitMessage) -> tuple[Result, bytes]:
        """Run the command; its result and that result's JSON (dumped once: journal and publish)."""
        started = utcnow()
        clock = time.perf_counter()
        body, error = await self._invoke(command, message, started)
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
            attempt=attempt_of(message),
        )
        # Remember outcomes that a repeat must not redo; a retryable failure may be sent again
        # with the same id and should then run again.
        body = result.model_dump_json()
        kept = command.type not in UNSTORED_TYPES
        if kept and result.status is not Status.REJECTED and not (error and error.retryable):
            self.store.put(
                result,
                published=False,
                key=self._store_key(result.command_id),
                fingerprint=self.store.fingerprint(command.type, command.payload),
                body=body,
            )
        self._record(command, result, error)
        return result, body.encode()

    async def _invoke(
        self, command: Command, message: RabbitMessage, started: datetime
    ) -> tuple[Any, DockhandError | None]:
        """Run the command's handler: its result body, or the error it ended with."""
        if command.expires_at is not None and command.expires_at <= started:
            return None, DockhandError(
                ErrorCode.TIMEOUT,
                f"command expired at {command.expires_at.isoformat()} before it ran",
                status=Status.EXPIRED,
            )
        assert self.ops is not None, "Docker client not started"
        try:
            check_policy(command.type, command.payload, self.ops)
            # Where a streamed exec sends its output (this task's context only).
            raw = message.raw_message
            exec_stream.REPLY.set(
                exec_stream.ReplyTarget(self.publisher, command.command_id, raw.reply_to, raw.correlation_id)
            )
            return await HANDLERS[command.type](command.payload, self.ops), None
        except DockhandError as exc:
            return None, exc
        except Exception as exc:
            log.exception("%s %s crashed", command.type, command.command_id)
            return None, DockhandError(ErrorCode.INTERNAL, f"{type(exc).__name__}: {exc}")

    def _record(self, command: Command, result: Result, error: DockhandError | None) -> None:
        """Count, time and log one executed command."""
        self.telemetry.commands.add(1, {"type": command.type, "status": result.status.value})
        self.telemetry.command_duration.record(result.duration_ms / 1000, {"type": command.type})
        if not log.isEnabledFor(logging.INFO):
            return  # at WARNING (as benchmarks run): no record, and no arguments built for one
        subject = getattr(command.payload, "workspace_id", None) or getattr(command.payload, "name", None)
        log.info(
            "%s%s %s in %.1f ms (command %s)%s",
            command.type,
            f" {subject}" if subject else "",
            result.status.value,
            result.duration_ms,
            command.command_id,
            f": {printable(error)}" if error else "",
            extra={
                "command_id": command.command_id,
                "command_type": command.type,
                "workspace_id": getattr(command.payload, "workspace_id", None),
                "status": result.status.value,
                "duration_ms": result.duration_ms,
                **({"error_code": error.code.value} if error else {}),
            },
        )

    async def _reject(self, rejection: Rejection, message: RabbitMessage, received: datetime) -> None:
        log.warning(
            "rejected message %s (command %s): %s",
            printable(message.raw_message.message_id or message.raw_message.delivery_tag),
            printable(rejection.command_id or "unreadable"),
            printable(rejection.error),
        )
        if rejection.command_id is None:
            self.counters.by_status[Status.REJECTED] += 1
            await self.settler.dead_letter(message)
            return
        result = self.settler.unrun(rejection.command_id, rejection.command_type, rejection.error, received, message)
        await self.settler.finish(result, message, settle="reject")

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
            # A moment for what a cancelled command cleans up (an exec kills its processes).
            await asyncio.wait(late, timeout=5)
        return not late
