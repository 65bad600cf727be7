"""From a delivered message to a confirmed result and an ack.

aio-pika hands each delivery to FastStream as its own task, and under load those tasks reach
the handler out of order. ``submit`` therefore restores the broker's order from the delivery
tags (:class:`DeliveryOrder`) before a message enters its per-workspace lane. Each command then
runs when its lane and a concurrency slot are free (``workspace.exec``: a slot of the exec pool,
taken at intake); its result is published with publisher confirms, and only then is the message
acked — or rejected into the dead-letter queue when the command was never valid (as a redacted
copy when it carries a secret). A stored result is bound to its command by a fingerprint, so a
reused ``command_id`` is a ``conflict``, never another command's answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import hmac
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any

import pydantic_core
from opentelemetry import trace
from pydantic import ValidationError

from dockhand.schemas import COMMAND_ADAPTER, COMMAND_TYPES, Command, ErrorCode, Result, Status, utcnow
from dockhand.schemas._base import COMMAND_ID_PATTERN

from . import exec_stream, tenancy
from .errors import DockhandError, rejected
from .handlers import HANDLERS, check_policy, lane_key
from .store import ResultStore, store_key
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
_VALID_ID = re.compile(COMMAND_ID_PATTERN)
_UNSAFE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def printable(value: object) -> str:
    """``value`` as text fit for one log line: control characters, line separators and bidi
    overrides escaped as ``repr()`` writes them (``\\n``, ``\\x1b``, ``\\u2028``). Every
    sender-provided value a log line prints goes through this."""
    return _UNSAFE.sub(lambda m: repr(m.group())[1:-1], str(value))


def shown_id(command_id: str) -> str:
    """The ``command_id`` a result carries for a message whose id is readable but not valid
    (over 128 characters, control characters): escaped like :func:`printable`, cut to 128
    characters (ending ``...``). It is then a valid id itself, so a result never carries a line
    break or a control character; a sender matches such an answer by its ``correlation_id``."""
    if _VALID_ID.fullmatch(command_id):
        return command_id
    text = printable(command_id)
    return text if len(text) <= 128 else text[:125] + "..."


def _sniff_id(body: bytes) -> str | None:
    """The ``command_id`` of a body that is not parsed (too big, not JSON), when it is the first
    key and a plain token: the sender then gets its rejection instead of silence."""
    sniffed = _COMMAND_ID.search(body[:4096])
    return sniffed.group(1).decode() if sniffed else None


def parse(body: bytes, routing_key: str, max_body_bytes: int) -> Command:
    """Validate one message body against the contract, or raise :class:`Rejection`."""
    if len(body) > max_body_bytes:
        raise Rejection(
            rejected(ErrorCode.INVALID_COMMAND, f"body of {len(body)} bytes exceeds the {max_body_bytes}-byte limit"),
            _sniff_id(body),
            "unknown",
        )
    try:
        raw = pydantic_core.from_json(body)
    except ValueError as exc:
        # Unparseable (truncated, nested too deep, …) but the id may still be plain to see.
        raise Rejection(
            rejected(ErrorCode.INVALID_COMMAND, f"body is not JSON: {exc}"), _sniff_id(body), "unknown"
        ) from None
    if not isinstance(raw, dict):
        raise Rejection(rejected(ErrorCode.INVALID_COMMAND, "body must be a JSON object"), None, "unknown")
    command_id = raw.get("command_id")
    command_type = raw.get("type")
    # The type a rejection reports (and routes by): readable and short, whatever was sent.
    shown_type = printable(command_type) if isinstance(command_type, str) and len(command_type) <= 64 else "unknown"
    if not isinstance(command_id, str) or not command_id:
        command_id = None
    elif not _VALID_ID.fullmatch(command_id):
        # Readable but not valid: answered (under an escaped, shortened id) rather than left
        # for the sender to time out on.
        raise Rejection(
            rejected(
                ErrorCode.INVALID_COMMAND,
                f"command_id must be 1 to 128 printable characters (no control characters or line breaks); "
                f"got {len(command_id)} characters",
            ),
            shown_id(command_id),
            shown_type,
        )
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


POOLED_TYPES = frozenset({"workspace.exec"})
"""Command types that run in the exec pool (``DOCKHAND_MAX_CONCURRENT_EXECS``), not in a command slot."""

UNSTORED_TYPES = frozenset({"workspace.get_file"})
"""Command types whose results are not kept in the result store: a file read carries up to
DOCKHAND_MAX_FILE_BYTES (as base64) and changes nothing, so a repeat simply reads again."""

REDACTED_HEADER = "x-dockhand-redacted"
"""Header of a dead letter that is a redacted copy: what was removed (comma-separated paths)."""

_SECRET_KEY = re.compile(r"password|passwd|secret|token", re.IGNORECASE)
_SECRET_TEXT = re.compile(rb"password|passwd|secret|token", re.IGNORECASE)


def _redact_tree(value: Any, path: str, found: list[str]) -> Any:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            where = f"{path}.{key}" if path else str(key)
            if _SECRET_KEY.search(str(key)) and item not in (None, ""):
                out[key] = "[redacted]"
                found.append(printable(where))
            else:
                out[key] = _redact_tree(item, where, found)
        return out
    if isinstance(value, list):
        return [_redact_tree(item, f"{path}[{i}]", found) for i, item in enumerate(value)]
    return value


def redact(body: bytes, max_parse_bytes: int) -> tuple[bytes, list[str]] | None:
    """A copy of ``body`` fit for the dead-letter queue, and what was taken out of it; ``None``
    when it carries no secret (it is then dead-lettered untouched).

    A JSON body loses the value of every key that names a secret (``registry_auth.password``,
    an env ``*_TOKEN``, …). A body that cannot be parsed (or is over the size limit) and
    mentions one anywhere is cut just before that word: there is no telling where a secret
    in broken JSON ends."""
    first = _SECRET_TEXT.search(body)
    if first is None:
        return None
    tree: Any = None
    if len(body) <= max_parse_bytes:
        with contextlib.suppress(ValueError):
            tree = pydantic_core.from_json(body)
    if tree is None or not isinstance(tree, dict | list):
        return body[: first.start()] + b"[redacted: the rest of this unparseable body]", [f"body[{first.start()}:]"]
    found: list[str] = []
    cleaned = _redact_tree(tree, "", found)
    if not found:
        return None  # the word is only in a value (an echo command, a label): nothing to hide
    return json.dumps(cleaned, ensure_ascii=False).encode(), found


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
        # workspace.exec runs outside those slots, in a pool of its own; a counter at intake
        # (running + waiting in their lanes) bounds both the execs and the deliveries they hold.
        self._execs = 0
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
        key = lane_key(command.type, command.payload)
        task = self.lanes.submit(
            key, lambda: self._guarded(self._run(command, message, received, pooled=pooled), message), context
        )
        if pooled:
            task.add_done_callback(self._release_exec)

    def _release_exec(self, _: object) -> None:
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
            with contextlib.suppress(Exception):
                await message.nack(requeue=True)

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
            span = self.telemetry.tracer.start_span(f"dockhand {command.type}", attributes=attributes)
            try:
                with trace.use_span(span, end_on_exit=True):
                    await self._answer(command, message, span)
            finally:
                self.counters.in_flight -= 1

    async def _answer(self, command: Command, message: RabbitMessage, span: trace.Span) -> None:
        """Execute (or answer from the store), publish, settle."""
        stored_under = self._store_key(command.command_id)
        entry = self.store.lookup(stored_under)
        key: str | None = stored_under  # the entry this answer marks published (none for a conflict)
        if entry is None:
            result = await self._execute(command, message)
        elif entry.fingerprint is not None and not hmac.compare_digest(
            entry.fingerprint, self.store.fingerprint(command.type, command.payload)
        ):
            # The id answered another command (another type or payload): neither run this one
            # nor hand over that one's result, and leave the stored result as it is.
            result = self._conflict(command, message)
            key = None
        elif message.raw_message.redelivered and entry.published:
            # A crash came between the confirmed result and the ack: it was answered.
            log.info("%s %s: redelivered, already answered; acking", command.type, command.command_id)
            await message.ack()
            return
        else:
            log.info("%s %s: answered from the stored result", command.type, command.command_id)
            result = entry.result
        span.set_attribute("dockhand.status", result.status.value)
        if result.error is not None:
            span.set_attribute("dockhand.error_code", result.error.code.value)
            span.set_status(trace.Status(trace.StatusCode.ERROR, result.error.code.value))
        await self._finish(result, message, settle=self._settle_for(result.status), key=key)

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
        return self._result(command.command_id, command.type, error, utcnow(), message)

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
        await self._finish(
            self._result(command.command_id, command.type, error, utcnow(), message), message, settle="ack"
        )

    def _result(
        self, command_id: str, command_type: str, error: DockhandError, started: datetime, message: RabbitMessage
    ) -> Result:
        """The result of a command answered without running it."""
        now = utcnow()
        return Result(
            command_id=command_id,
            type=command_type,
            status=error.status,
            host_id=self.settings.host_id,
            worker_id=self.worker_id,
            error=error.info(),
            started_at=started,
            finished_at=now,
            duration_ms=round((now - started).total_seconds() * 1000, 3),
            attempt=self._attempt(message),
        )

    @staticmethod
    def _store_key(command_id: str) -> str:
        """The result-store key of ``command_id`` for the running command's sender."""
        return store_key(tenancy.store_owner(), command_id)

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
                # Where a streamed exec sends its output (this task's context only).
                raw = message.raw_message
                exec_stream.REPLY.set(
                    exec_stream.ReplyTarget(self.publisher, command.command_id, raw.reply_to, raw.correlation_id)
                )
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
        kept = command.type not in UNSTORED_TYPES
        if kept and result.status is not Status.REJECTED and not (error and error.retryable):
            self.store.put(
                result,
                published=False,
                key=self._store_key(result.command_id),
                fingerprint=self.store.fingerprint(command.type, command.payload),
            )
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
        return result

    async def _reject(self, rejection: Rejection, message: RabbitMessage, received: datetime) -> None:
        log.warning(
            "rejected message %s (command %s): %s",
            printable(message.raw_message.message_id or message.raw_message.delivery_tag),
            printable(rejection.command_id or "unreadable"),
            printable(rejection.error),
        )
        if rejection.command_id is None:
            self.counters.by_status[Status.REJECTED] += 1
            await self._dead_letter(message)
            return
        result = self._result(rejection.command_id, rejection.command_type, rejection.error, received, message)
        await self._finish(result, message, settle="reject")

    @staticmethod
    def _settle_for(status: Status) -> str:
        return "reject" if status is Status.REJECTED else "ack"

    async def _finish(self, result: Result, message: RabbitMessage, *, settle: str, key: str | None = None) -> None:
        """Publish the result (confirmed), then ack — or dead-letter it. ``key``: the store
        entry this result is (to mark published); None for results that are not stored."""
        try:
            await self._publish_result(result, message)
        except Exception:
            # Still failing after the retries: requeue it rather than ack it unanswered. The
            # redelivery is answered from the store (nothing runs twice); if publishing keeps
            # failing, the delivery limit dead-letters it.
            log.exception("could not publish the result of %s; requeueing the command", printable(result.command_id))
            with contextlib.suppress(Exception):
                await message.nack(requeue=True)
            return
        if key is not None:
            self.store.mark_published(key)
        self.counters.by_status[result.status] += 1
        if settle == "reject":
            await self._dead_letter(message)
        else:
            await message.ack()

    async def _dead_letter(self, message: RabbitMessage) -> None:
        """Reject a message into the dead-letter queue — unless it carries a secret: then a
        redacted copy goes to the dead-letter exchange (confirmed) and the original is acked."""
        raw = message.raw_message
        redaction = redact(message.body, self.settings.body_limit)
        if redaction is None:
            await message.reject(requeue=False)
            return
        body, redacted = redaction
        headers: dict[str, Any] = dict(raw.headers or {})
        headers[REDACTED_HEADER] = ",".join(redacted)
        headers.setdefault("x-dockhand-dead-lettered-by", self.worker_id)
        if raw.user_id:
            # Not as user_id: the broker checks that property against our own connection's user.
            headers.setdefault("x-dockhand-original-user-id", raw.user_id)
        properties = {
            name: value
            for name, value in {
                "message_id": raw.message_id,
                "correlation_id": raw.correlation_id,
                "reply_to": raw.reply_to,
                "message_type": raw.type,
                "timestamp": raw.timestamp,
            }.items()
            if value is not None
        }
        try:
            await self.publisher.confirmed(
                body,
                exchange=self.topology.dead,
                routing_key=raw.routing_key or "",
                persist=True,
                headers=headers,
                **properties,
            )
        except Exception:
            # Never reject the original (it would keep the secret): requeue it and try again.
            log.exception("could not dead-letter a redacted copy of %s; requeueing it", printable(raw.message_id))
            with contextlib.suppress(Exception):
                await message.nack(requeue=True)
            return
        log.info("dead-lettered a redacted copy of message %s (%s)", printable(raw.message_id), ", ".join(redacted))
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
            # A moment for what a cancelled command cleans up (an exec kills its processes).
            await asyncio.wait(late, timeout=5)
        return not late
