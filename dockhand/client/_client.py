"""The client's core: one broker connection, one reply queue, any number of concurrent calls.

Why not FastStream's ``broker.request()``: it serialises concurrent requests. Here every call
registers a waiter under its own ``correlation_id`` and one consumer of one exclusive,
server-named reply queue hands each reply to its waiter, so a thousand calls share one
connection without waiting for each other.

Failure handling is what a hand-written RPC usually lacks: the ``command_id`` is made once per
logical call and reused on every retry (the worker's journal answers a repeat with the stored
outcome, never running it twice); publishes are confirmed and ``mandatory`` (no queue for the
target → :class:`NoRoute` at once, not a timeout); a lost connection fails the waiting attempts
at once and the next attempt reconnects, to the next node of the URL list when the one in use
is gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import ssl
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import aio_pika
import aio_pika.abc
from aiormq.exceptions import (
    AMQPError,
    ChannelAccessRefused,
    ChannelNotFoundEntity,
    DeliveryError,
    ProbableAuthenticationError,
    PublishError,
)
from pydantic import BaseModel, ValidationError

from dockhand.amqp import error_reason as _reason
from dockhand.amqp import mask_url, split_urls, url_user
from dockhand.schemas import COMMAND_ADAPTER, COMMAND_TYPES, RESULT_MODELS, Result

from ._commands import Discovery, Host, Images, Networks, Workspaces, to_wire
from ._events import EVENT_FAMILIES, Event, bindings, parse_event
from ._parse import M, _lenient, parse_result
from ._stream import EXEC_OUTPUT_TYPE, ExecStream
from .errors import (
    ERRORS_BY_STATUS,
    BrokerUnavailable,
    CommandError,
    CommandRejected,
    NoRoute,
    ReplyTimeout,
)

log = logging.getLogger("dockhand.client")

DEFAULT_URL = "amqp://guest:guest@localhost:5672/"
ANY = "any"
"""Target: one worker of any host (the result's ``host_id`` says which)."""
ALL = "all"
"""Target: every host (:meth:`Client.request_all`)."""


@dataclass(frozen=True)
class Retry:
    """How a call retries: reply timeouts, lost connections and results with ``retryable: true``
    are tried again, ``attempts`` times in all, with capped exponential backoff (full jitter).
    The command id is the same on every attempt. ``Retry.off()`` tries once."""

    attempts: int = 4
    reply_timeout_s: float = 30.0
    """How long one attempt waits for its reply before the next attempt is sent."""
    backoff_s: float = 0.25
    max_backoff_s: float = 5.0

    @classmethod
    def off(cls, reply_timeout_s: float = 30.0) -> Retry:
        """One attempt, no retry."""
        return cls(attempts=1, reply_timeout_s=reply_timeout_s)

    def delay(self, attempt: int) -> float:
        """The pause after failed attempt number ``attempt`` (1-based)."""
        return random.uniform(0, min(self.max_backoff_s, self.backoff_s * 2 ** (attempt - 1)))  # noqa: S311 -- jitter, not secrecy


class _LinkLost(Exception):
    """The connection an attempt was waiting on is gone (the attempt may be retried)."""


@dataclass(eq=False)
class _Link:
    """One connection, with its publishing channel and reply queue."""

    connection: aio_pika.abc.AbstractConnection
    channel: aio_pika.abc.AbstractChannel
    reply_queue: str
    url: str
    lost: asyncio.Event = field(default_factory=asyncio.Event)
    commands: aio_pika.abc.AbstractExchange | None = None


class _Waiter:
    """Where the replies to one correlation id go."""

    __slots__ = ("future", "link", "queue")

    def __init__(self, many: bool) -> None:
        self.future: asyncio.Future[bytes] | None = None if many else asyncio.get_running_loop().create_future()
        self.queue: asyncio.Queue[bytes] | None = asyncio.Queue() if many else None
        self.link: _Link | None = None  # the link an attempt is waiting on now: its loss fails the wait

    def deliver(self, body: bytes) -> None:
        if self.future is not None:
            if not self.future.done():  # a second copy (at-least-once) or a late reply: the first wins
                self.future.set_result(body)
        elif self.queue is not None:
            self.queue.put_nowait(body)


def expires_at(deadline: float | datetime | timedelta | None) -> datetime | None:
    """``expires_at`` for a deadline: seconds from now, a time span, or an aware time."""
    if deadline is None or isinstance(deadline, datetime):
        return deadline
    span = deadline if isinstance(deadline, timedelta) else timedelta(seconds=deadline)
    return datetime.now(UTC) + span


class Client:
    """A connection to dockhand workers over RabbitMQ.

    ::

        async with Client.connect("amqp://guest:guest@localhost:5672/", host="host-a") as dh:
            ws = await dh.workspaces.create(workspace_id="ws1", image="busybox:latest")
            out = await dh.workspaces.exec("ws1", ["echo", "hi"])

    ``url`` is one AMQP URL or a comma-separated list of a cluster's nodes (tried in order, or
    shuffled with ``shuffle=True``). ``host`` is the default target of commands (a host id or
    ``"any"``); each call may name another. ``retry`` and ``timeout`` (seconds, retries
    included) are defaults for every call.
    """

    def __init__(
        self,
        url: str | Sequence[str] = DEFAULT_URL,
        *,
        prefix: str = "dockhand",
        host: str | None = None,
        retry: Retry | None = None,
        timeout: float = 60.0,
        ssl_context: ssl.SSLContext | None = None,
        connect_timeout: float = 10.0,
        shuffle: bool = False,
        user_id: str | None = None,
        name: str = "dockhand-client",
    ) -> None:
        self.urls = split_urls(url) if isinstance(url, str) else [u for part in url for u in split_urls(part)]
        if shuffle:
            random.shuffle(self.urls)
        self.prefix = prefix
        self.target = host
        self.retry = retry if retry is not None else Retry()
        self.timeout = timeout
        self.ssl_context = ssl_context
        self.connect_timeout = connect_timeout
        self.name = name
        # With tenancy on, the worker takes the sender from user_id, which RabbitMQ checks against
        # the connection's user: the URL's user (none with EXTERNAL login: only the broker knows it).
        self.user_id = user_id if user_id is not None else url_user(self.urls[0])
        self._link: _Link | None = None
        self._link_lock = asyncio.Lock()
        self._next_url = 0
        self._closed = False
        self._waiters: dict[str, _Waiter] = {}
        self.workspaces = Workspaces(self)
        """Workspace commands (``workspace.*``)."""
        self.networks = Networks(self)
        """Network commands (``network.*``)."""
        self.images = Images(self)
        """Image commands (``image.*``)."""
        self.discovery = Discovery(self)
        """``discovery.list``."""
        self.host = Host(self)
        """``host.info``."""

    @classmethod
    def connect(cls, url: str | Sequence[str] = DEFAULT_URL, **options: Any) -> Client:
        """A client for ``async with``: ``async with Client.connect(url) as dh: ...``."""
        return cls(url, **options)

    async def __aenter__(self) -> Client:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # --- connection ------------------------------------------------------------------------

    async def open(self) -> None:
        """Connect now (a call connects by itself otherwise); :class:`BrokerUnavailable` if no node answers."""
        await self._get_link()

    async def close(self) -> None:
        """Close the connection; waiting calls fail with :class:`BrokerUnavailable`."""
        self._closed = True
        link, self._link = self._link, None
        if link is not None:
            self._lose(link)
            with contextlib.suppress(Exception):
                await link.connection.close()

    @property
    def connected_url(self) -> str | None:
        """The node in use (password masked), or None."""
        return mask_url(self._link.url) if self._link is not None else None

    async def _get_link(self) -> _Link:
        link = self._link
        if link is not None and not link.lost.is_set():
            return link
        async with self._link_lock:
            if self._closed:
                raise BrokerUnavailable("the client is closed", transient=False)
            if self._link is not None and not self._link.lost.is_set():
                return self._link
            if self._link is not None:  # lost: maybe only its channel, so close what is left of it
                with contextlib.suppress(Exception):
                    await self._link.connection.close()
            self._link = await self._connect_any()
            return self._link

    async def _connect_any(self) -> _Link:
        problems = []
        for _ in range(len(self.urls)):
            url = self.urls[self._next_url % len(self.urls)]
            try:
                return await self._connect(url)
            except ProbableAuthenticationError as err:
                raise BrokerUnavailable(
                    f"RabbitMQ at {mask_url(url)} refused the login: {_reason(err)}", transient=False
                ) from err
            except (TimeoutError, OSError, AMQPError, ValueError) as err:
                problems.append(f"{mask_url(url)}: {_reason(err)}")
                self._next_url += 1  # the next call starts at the next node
        raise BrokerUnavailable("cannot reach RabbitMQ at " + "; ".join(problems))

    async def _connect(self, url: str) -> _Link:
        connection = await asyncio.wait_for(
            aio_pika.connect(url, ssl_context=self.ssl_context, client_properties={"connection_name": self.name}),
            self.connect_timeout,
        )
        try:
            channel = await connection.channel(on_return_raises=True)
            queue = await channel.declare_queue(exclusive=True, auto_delete=True)
            link = _Link(connection, channel, queue.name, url)
            await queue.consume(self._on_reply, no_ack=True)
        except BaseException:
            await connection.close()
            raise

        def lost(*_: Any) -> None:
            self._lose(link)

        connection.close_callbacks.add(lost)
        channel.close_callbacks.add(lost)
        return link

    def _lose(self, link: _Link) -> None:
        """Mark ``link`` gone and fail the attempts waiting on it (they may be retried)."""
        link.lost.set()
        for waiter in self._waiters.values():
            if waiter.link is link and waiter.future is not None and not waiter.future.done():
                waiter.future.set_exception(_LinkLost())
            elif waiter.link is link and waiter.queue is not None:
                waiter.queue.put_nowait(b"")  # ends a stream (ExecStream): its replies are gone

    async def _on_reply(self, message: aio_pika.abc.AbstractIncomingMessage) -> None:
        waiter = self._waiters.get(message.correlation_id or "")
        if waiter is not None:
            if message.type == EXEC_OUTPUT_TYPE and waiter.future is not None:
                return  # an exec.output chunk is not the result: only a stream takes it
            waiter.deliver(message.body)

    async def _commands(self, link: _Link) -> aio_pika.abc.AbstractExchange:
        if link.commands is None:
            name = f"{self.prefix}.commands"
            try:
                link.commands = await link.channel.get_exchange(name, ensure=True)
            except ChannelNotFoundEntity as err:
                self._lose(link)  # the 404 closed the channel
                raise BrokerUnavailable(
                    f"exchange {name} does not exist on {mask_url(link.url)}: no worker has run with "
                    "this exchange prefix",
                    transient=False,
                    exchange=name,
                ) from err
        return link.commands

    # --- commands --------------------------------------------------------------------------

    def command(
        self,
        command_type: str,
        payload: BaseModel | Mapping[str, Any] | None = None,
        *,
        command_id: str | None = None,
        deadline: float | datetime | timedelta | None = None,
    ) -> dict[str, Any]:
        """The command body, validated as the worker will validate it (:class:`CommandRejected`
        with code ``invalid_command`` or ``unknown_type`` before anything is sent)."""
        return self._command(command_type, payload, command_id, deadline)[0]

    def _command(
        self,
        command_type: str,
        payload: BaseModel | Mapping[str, Any] | None,
        command_id: str | None,
        deadline: float | datetime | timedelta | None,
    ) -> tuple[dict[str, Any], bytes]:
        """:meth:`command`, and the body's JSON: validated as those bytes and sent as them."""
        if command_type not in COMMAND_TYPES:
            raise CommandRejected(
                f"unknown command type {command_type!r}; one of: {', '.join(sorted(COMMAND_TYPES))}",
                code="unknown_type",
                status="rejected",
                command_type=command_type,
            )
        body: dict[str, Any] = {"command_id": command_id or uuid.uuid4().hex, "type": command_type}
        if payload is not None:
            # The typed calls' usual payload, a flat dict of plain values, is JSON-ready as it is.
            flat = type(payload) is dict and all(type(v) in _PLAIN for v in payload.values())
            body["payload"] = dict(payload) if flat else to_wire(payload)
        if (when := expires_at(deadline)) is not None:
            body["expires_at"] = when.isoformat().replace("+00:00", "Z")
        encoded = json.dumps(body).encode()
        try:
            COMMAND_ADAPTER.validate_json(encoded)
        except ValidationError as err:
            problems = "; ".join(_describe(command_type, e) for e in err.errors(include_url=False))
            raise CommandRejected(
                f"invalid {command_type} command: {problems}",
                code="invalid_command",
                status="rejected",
                command_id=body["command_id"],
                command_type=command_type,
            ) from None
        return body, encoded

    async def request(
        self,
        command_type: str,
        payload: BaseModel | Mapping[str, Any] | None = None,
        *,
        host: str | None = None,
        command_id: str | None = None,
        deadline: float | datetime | timedelta | None = None,
        timeout: float | None = None,
        retry: Retry | None = None,
    ) -> Result:
        """Send one command and return its :class:`~dockhand.schemas.Result`, whatever its status
        (the raw mode; the typed calls raise instead). Retries as ``retry`` says, with one command id."""
        body, encoded = self._command(command_type, payload, command_id, deadline)
        raw = await self._call(body, self._target(host), timeout, retry, encoded)
        return parse_result(raw)

    async def call(
        self,
        command_type: str,
        payload: BaseModel | Mapping[str, Any] | None = None,
        *,
        host: str | None = None,
        command_id: str | None = None,
        deadline: float | datetime | timedelta | None = None,
        timeout: float | None = None,
        retry: Retry | None = None,
    ) -> Any:
        """Send one command and return its typed result body (e.g. a ``Workspace``); a result
        that is not ``succeeded`` raises a :class:`CommandError`."""
        body, encoded = self._command(command_type, payload, command_id, deadline)
        raw = await self._call(body, self._target(host), timeout, retry, encoded)
        return self._body(command_type, raw)

    async def _typed(self, model: type[M], command_type: str, payload: Any, options: Mapping[str, Any]) -> M:
        result = await self.call(command_type, payload, **options)
        assert isinstance(result, model)
        return result

    async def request_all(
        self,
        command_type: str,
        payload: BaseModel | Mapping[str, Any] | None = None,
        *,
        expect: Iterable[str] | None = None,
        command_id: str | None = None,
        deadline: float | datetime | timedelta | None = None,
        timeout: float = 5.0,
    ) -> list[Result]:
        """Send one command to every host (target ``all``) and collect one result per host: until
        ``timeout``, or until every host in ``expect`` (e.g. ``HostsView.up()``) has answered."""
        body, encoded = self._command(command_type, payload, command_id, deadline)
        return [parse_result(raw) for raw in await self._collect_all(body, encoded, timeout, set(expect or ()))]

    async def request_raw(
        self,
        command_type: str,
        payload: BaseModel | Mapping[str, Any] | None = None,
        *,
        host: str | None = None,
        command_id: str | None = None,
        deadline: float | datetime | timedelta | None = None,
        timeout: float | None = None,
        retry: Retry | None = None,
    ) -> list[bytes]:
        """The reply bodies exactly as the workers sent them (one, or one per host for ``all``),
        for tools that relay them; an empty list when none came in time."""
        body, encoded = self._command(command_type, payload, command_id, deadline)
        target = self._target(host)
        if target == ALL:
            return await self._collect_all(body, encoded, timeout if timeout is not None else 5.0, set())
        try:
            return [await self._call(body, target, timeout, retry, encoded)]
        except ReplyTimeout:
            return []

    def _target(self, host: str | None) -> str:
        target = host or self.target
        if not target:
            raise ValueError("no target: pass host=... (a host id or 'any') to the call or to Client(...)")
        return target

    def _body(self, command_type: str, raw: bytes) -> Any:
        data = json.loads(raw)
        status = data.get("status")
        if status != "succeeded":
            result = parse_result(data)
            error = result.error
            raise ERRORS_BY_STATUS.get(str(status), CommandError)(
                error.message if error else "no error given",
                code=error.code.value if error else "internal",
                status=str(status),
                retryable=error.retryable if error else False,
                host_id=result.host_id,
                command_id=result.command_id,
                command_type=command_type,
                result=result,
            )
        return _lenient(RESULT_MODELS[command_type], data.get("result"))

    async def _call(
        self,
        body: dict[str, Any],
        target: str,
        timeout: float | None,
        retry: Retry | None,
        encoded: bytes | None = None,
    ) -> bytes:
        """Publish ``body`` (as ``encoded``, when the caller has it) to ``target`` and return its
        reply; retry with the same command id."""
        if target == ALL:
            raise ValueError("target 'all' answers once per host: use request_all()")
        policy = retry or self.retry
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (timeout if timeout is not None else self.timeout)
        if encoded is None:
            encoded = json.dumps(body).encode()
        correlation_id = uuid.uuid4().hex
        waiter = self._waiters[correlation_id] = _Waiter(many=False)
        assert waiter.future is not None
        routing_key = f"{target}.{body['type']}"
        try:
            attempt = 0
            while True:
                attempt += 1
                wait_s = min(policy.reply_timeout_s, deadline - loop.time())
                try:
                    link = await self._get_link()
                    await self._publish(link, encoded, routing_key, correlation_id, body["command_id"])
                    raw = await self._wait(waiter, link, wait_s)
                    if attempt >= policy.attempts or not _retryable(raw):
                        return raw
                    why = "retryable error"
                except (TimeoutError, _LinkLost, BrokerUnavailable, AMQPError, ConnectionError) as err:
                    if isinstance(err, BrokerUnavailable) and not err.transient:
                        raise  # a refused login or permission, a missing exchange: trying again will not help
                    if attempt >= policy.attempts or loop.time() >= deadline:
                        if isinstance(err, BrokerUnavailable):
                            raise
                        if isinstance(err, ChannelAccessRefused):
                            raise BrokerUnavailable(f"RabbitMQ refused: {_reason(err)}", transient=False) from err
                        raise ReplyTimeout(
                            f"no reply to {body['type']} {body['command_id']} from {target} "
                            f"({attempt} attempt{'s' * (attempt != 1)}); it may still run",
                            command_id=body["command_id"],
                            command_type=body["type"],
                        ) from err
                    why = type(err).__name__
                    if waiter.future.done() and waiter.future.exception() is not None:
                        # Timed out or lost: a reply that comes during the pause lands on a new one.
                        waiter.future = loop.create_future()
                pause = min(policy.delay(attempt), max(0.0, deadline - loop.time()))
                log.info(
                    "%s %s: attempt %d: %s; retrying in %.2f s", body["type"], body["command_id"], attempt, why, pause
                )
                await asyncio.sleep(pause)
                if waiter.future.done():  # the reply of an earlier attempt came during the pause
                    raw = waiter.future.result()
                    if not _retryable(raw):
                        return raw
                waiter.future = loop.create_future()
        finally:
            self._waiters.pop(correlation_id, None)

    async def _wait(self, waiter: _Waiter, link: _Link, wait_s: float) -> bytes:
        """The reply to this attempt: TimeoutError after ``wait_s``, _LinkLost when ``link`` goes
        (:meth:`_lose`). A timer and the loss resolve the future: no task and no asyncio.wait per call."""
        future = waiter.future
        assert future is not None
        if future.done():
            return future.result()
        if link.lost.is_set():
            raise _LinkLost
        timer = asyncio.get_running_loop().call_later(max(0.0, wait_s), _expire, future)
        waiter.link = link
        try:
            return await future
        finally:
            waiter.link = None
            timer.cancel()

    async def _publish(self, link: _Link, body: bytes, routing_key: str, correlation_id: str, command_id: str) -> None:
        exchange = await self._commands(link)
        message = aio_pika.Message(
            body,
            content_type="application/json",
            correlation_id=correlation_id,
            reply_to=link.reply_queue,
            message_id=command_id,
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            app_id=self.name,
            user_id=self.user_id,
        )
        try:
            await exchange.publish(message, routing_key=routing_key, mandatory=True)
        except PublishError as err:  # returned: no queue is bound for the routing key
            target = routing_key.split(".", 1)[0]
            who = "no worker" if target in {ANY, ALL} else f"no worker for host {target}"
            raise NoRoute(
                f"{who} has a queue on {self.prefix}.commands (routing key {routing_key} reaches no "
                "queue): check the host id and the exchange prefix"
            ) from err
        except DeliveryError as err:  # a nack: the broker did not take the message
            # Seen on a cluster right after a quorum queue's leader node died: a channel goes on
            # sending to the old leader, and its publishes are refused for many seconds. A new
            # connection looks the leader up again, so this link is given up and the retry (same
            # command id) goes over a fresh one.
            self._lose(link)
            raise BrokerUnavailable(
                f"RabbitMQ did not take {routing_key} (publish nack); trying a new connection", transient=True
            ) from err

    async def _collect_all(self, body: dict[str, Any], encoded: bytes, timeout: float, expect: set[str]) -> list[bytes]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        correlation_id = uuid.uuid4().hex
        waiter = self._waiters[correlation_id] = _Waiter(many=True)
        assert waiter.queue is not None
        replies: dict[str, bytes] = {}
        try:
            link = await self._get_link()
            try:
                await self._publish(link, encoded, f"{ALL}.{body['type']}", correlation_id, body["command_id"])
            except ChannelAccessRefused as err:  # as _call says it: the user may not publish there
                raise BrokerUnavailable(f"RabbitMQ refused: {_reason(err)}", transient=False) from err
            while not (expect and expect <= replies.keys()):
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    async with asyncio.timeout(remaining):  # not wait_for: see HostsView.wait_for
                        raw = await waiter.queue.get()
                except TimeoutError:
                    break
                host = str(json.loads(raw).get("host_id"))
                replies.setdefault(host, raw)  # one per host: a second copy is dropped
        finally:
            self._waiters.pop(correlation_id, None)
        return list(replies.values())

    # --- for tools and tests ---------------------------------------------------------------
    # What a test harness or a relaying tool needs beside the typed calls: a message exactly as
    # given (malformed on purpose, custom headers), its replies as raw bodies through this client's
    # one reply queue, and a channel of this client's connection. Not needed by applications.

    @property
    def reply_to(self) -> str | None:
        """For tools and tests: this client's reply queue (server-named; None before the client
        connects; a reconnect makes a new one)."""
        return self._link.reply_queue if self._link is not None else None

    def expect(self, correlation_id: str) -> asyncio.Queue[bytes]:
        """For tools and tests: the raw bodies of every reply with ``correlation_id`` that reaches
        this client's reply queue, in arrival order and copies included, until :meth:`forget`."""
        waiter = self._waiters.get(correlation_id)
        if waiter is None or waiter.queue is None:
            waiter = self._waiters[correlation_id] = _Waiter(many=True)
        assert waiter.queue is not None
        return waiter.queue

    def _open_stream(self, correlation_id: str) -> asyncio.Queue[bytes]:
        """Collect every reply (chunks and the result) for ``correlation_id`` (ExecStream)."""
        return self.expect(correlation_id)

    def _attach_stream(self, correlation_id: str, link: _Link) -> None:
        """Tie the stream to ``link``: its loss ends the stream (an empty body in its queue)."""
        waiter = self._waiters.get(correlation_id)
        if waiter is not None:
            waiter.link = link

    def exec_stream(
        self,
        payload: Mapping[str, Any],
        *,
        host: str | None = None,
        command_id: str | None = None,
        deadline: float | datetime | timedelta | None = None,
        timeout: float | None = None,
    ) -> ExecStream:
        """A ``workspace.exec`` with ``stream: true`` (``payload`` without it); iterate the
        returned :class:`ExecStream` for its chunks, then read its ``result``. Sent once, never
        retried (see :mod:`dockhand.client._stream`)."""
        body, encoded = self._command("workspace.exec", {**payload, "stream": True}, command_id, deadline)
        return ExecStream(self, body, encoded, self._target(host), timeout if timeout is not None else self.timeout)

    def forget(self, correlation_id: str) -> None:
        """For tools and tests: stop collecting replies for ``correlation_id``."""
        self._waiters.pop(correlation_id, None)

    async def publish_raw(
        self,
        body: bytes,
        routing_key: str,
        *,
        correlation_id: str | None = None,
        message_id: str | None = None,
        headers: Mapping[str, Any] | None = None,
        user_id: str | None = None,
        reply: bool = True,
        mandatory: bool = True,
    ) -> str:
        """For tools and tests: publish ``body`` to ``<prefix>.commands`` under ``routing_key``
        exactly as given -- not validated, confirmed, sent once (no retry). With ``reply`` its
        ``reply_to`` is this client's reply queue and its replies are collected (:meth:`expect`).
        ``user_id`` is set only when given; ``message_id`` defaults to a new one. ``mandatory``:
        :class:`NoRoute` when no queue takes it. Returns the correlation id."""
        correlation_id = correlation_id or uuid.uuid4().hex
        if reply:
            self.expect(correlation_id)
        link = await self._get_link()
        exchange = await self._commands(link)
        message = aio_pika.Message(
            body,
            content_type="application/json",
            correlation_id=correlation_id,
            reply_to=link.reply_queue if reply else None,
            message_id=message_id or uuid.uuid4().hex,
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            headers=dict(headers) if headers is not None else None,
            app_id=self.name,
            user_id=user_id,
        )
        try:
            await exchange.publish(message, routing_key=routing_key, mandatory=mandatory)
        except PublishError as err:
            raise NoRoute(f"routing key {routing_key} reaches no queue on {self.prefix}.commands") from err
        return correlation_id

    async def channel(self) -> aio_pika.abc.AbstractChannel:
        """For tools and tests: a new channel on this client's connection (closed with it), e.g. to
        read a dead-letter queue or to tap ``<prefix>.results``."""
        link = await self._get_link()
        return await link.connection.channel()

    # --- events ----------------------------------------------------------------------------

    async def events(
        self,
        *,
        hosts: Iterable[str] | None = None,
        kinds: Iterable[str] = EVENT_FAMILIES,
        queue: str | None = None,
    ) -> AsyncIterator[Event]:
        """Typed events as they come: ``async for event in dh.events(kinds=["discovery"])``.

        ``hosts``: only these (default all); ``kinds``: families of ``<prefix>.events``
        (``container``, ``network``, ``discovery``, ``workspace``) and ``health`` for heartbeats.
        ``queue``: a durable subscription of that name, which keeps events while the consumer is
        down (delete it when it is no longer needed). Each event carries ``seq`` / ``epoch``: a gap
        means missed messages (see :class:`DiscoveryView`, which resyncs by itself).
        """
        async for message in self.subscribe(bindings(hosts, kinds), queue=queue):
            yield parse_event(message.routing_key or "", message.body)

    async def subscribe(
        self,
        bindings: Iterable[tuple[str, str]],
        *,
        queue: str | None = None,
        prefetch: int = 256,
        on_connect: Any = None,
    ) -> AsyncGenerator[aio_pika.abc.AbstractIncomingMessage, None]:
        """Messages from (exchange suffix, routing key) ``bindings``, e.g. ``("events", "*.discovery.#")``.

        Without ``queue``: an exclusive queue that lives as long as the iteration (what was sent
        while it was not bound is not seen). With ``queue``: a durable queue of that name that keeps
        messages while the consumer is away; each message is acked once the loop body that got it
        has finished. A lost connection is re-established; ``on_connect`` (an async callable) runs
        after each (re)binding, e.g. to resync state.
        """
        pairs = list(bindings)
        pause = 0.0
        channel: aio_pika.abc.AbstractChannel | None = None
        while not self._closed:
            try:
                link = await self._get_link()
                if channel is not None:  # the previous round's, after a cancelled consumer
                    with contextlib.suppress(Exception):
                        await channel.close()
                channel = await link.connection.channel()
                await channel.set_qos(prefetch_count=prefetch)
                for exchange in dict.fromkeys(name for name, _ in pairs):
                    await self._ensure_exchange(link, f"{self.prefix}.{exchange}")
                if queue is None:
                    q = await channel.declare_queue(exclusive=True, auto_delete=True)
                else:
                    q = await channel.declare_queue(queue, durable=True, arguments={"x-queue-type": "quorum"})
                for exchange, key in pairs:
                    await q.bind(f"{self.prefix}.{exchange}", routing_key=key)
                if on_connect is not None:
                    await on_connect()
                pause = 0.0
                # A durable queue acks after the loop body (a crash mid-way gets the message again);
                # an exclusive one dies with the connection anyway.
                async with q.iterator(no_ack=queue is None) as messages:
                    # The broker cancels a consumer whose queue is deleted (or whose node left the
                    # cluster); aio-pika's iterator would then wait for ever (aio-pika #334): end
                    # the iteration instead and subscribe again, which lists again (on_connect).
                    cancelled = asyncio.Event()
                    closing: list[asyncio.Future[Any]] = []

                    def on_cancel(
                        _frame: Any, it: Any = messages, flag: asyncio.Event = cancelled, tasks: list[Any] = closing
                    ) -> None:
                        # Not awaited here: aiormq runs this in the channel's reader, which the
                        # close needs for its own answer.
                        flag.set()
                        tasks.append(asyncio.ensure_future(it.close()))

                    underlay = await channel.get_underlay_channel()
                    underlay.on_consumer_cancel_callbacks.add(on_cancel)
                    async for message in messages:
                        yield message
                        if queue is not None:
                            await message.ack()
                if link.lost.is_set() or channel.is_closed or cancelled.is_set():
                    raise _LinkLost
                return
            except (_LinkLost, AMQPError, ConnectionError, OSError) as err:
                if self._closed:
                    return
                if isinstance(err, ChannelAccessRefused):
                    raise BrokerUnavailable(f"RabbitMQ refused: {_reason(err)}", transient=False) from err
                if isinstance(err, BrokerUnavailable) and not err.transient:
                    raise
                pause = min(5.0, pause * 2 or 0.5)
                log.warning("event subscription lost (%s); resubscribing in %.1f s", _reason(err), pause)
                await asyncio.sleep(pause)

    async def _ensure_exchange(self, link: _Link, name: str) -> None:
        """Make sure the topic exchange ``name`` exists: looked up first (a consumer's broker user
        may read it and not configure it), else declared as the worker declares it, so that a
        consumer may start before the worker. Each try has its own channel: a failed one closes."""
        channel = await link.connection.channel()
        try:
            await channel.get_exchange(name, ensure=True)
            return
        except ChannelNotFoundEntity:
            pass
        finally:
            with contextlib.suppress(Exception):
                await channel.close()
        channel = await link.connection.channel()
        try:
            await channel.declare_exchange(name, aio_pika.ExchangeType.TOPIC, durable=True)
        except ChannelAccessRefused as err:
            raise BrokerUnavailable(
                f"exchange {name} does not exist yet and this user may not create it: start the worker first",
                transient=False,
            ) from err
        finally:
            with contextlib.suppress(Exception):
                await channel.close()


_PLAIN = frozenset({str, int, float, bool, type(None)})


def _expire(future: asyncio.Future[bytes]) -> None:
    if not future.done():
        future.set_exception(TimeoutError())


def _retryable(raw: bytes) -> bool:
    if b"true" not in raw:  # ``"retryable": true`` is JSON's literal true: most replies need no parse
        return False
    try:
        data = json.loads(raw)
    except ValueError:
        return False
    error = data.get("error") if isinstance(data, dict) else None
    return data.get("status") == "failed" and isinstance(error, dict) and bool(error.get("retryable"))


def _describe(command_type: str, error: Any) -> str:
    loc = [str(p) for p in error.get("loc", ())]
    if loc and loc[0] == command_type:  # the discriminator's tag
        loc = loc[1:]
    where = ".".join(loc) or "command"
    message = str(error.get("msg", "invalid"))
    if error.get("type") == "extra_forbidden":
        message = "unknown field"
    return f"{where}: {message}"
