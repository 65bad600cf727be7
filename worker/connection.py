"""Broker connections that follow a list of cluster nodes (contract v1.1: several broker nodes).

``DOCKHAND_AMQP_URL`` may name several nodes of one RabbitMQ cluster. aio-pika's robust
connection takes one URL (aio-pika #141) and retries only it, every ``reconnect_interval``; a
worker whose node died answered nothing until that node was back. Here:

* :class:`NodeCycle` holds the node URLs in a shuffled order (so that a fleet of workers spreads
  over the nodes, and the workers of a dead node spread over the rest) and moves on to the next
  node after every failed attempt and every lost connection.
* :class:`MultiNodeConnection` is aio-pika's ``RobustConnection`` with that cycle: the URL of each
  (re)connect attempt is the cycle's current node. After a lost connection the next node is tried
  at once, and after each failed attempt the next one follows at once too; only when every node
  has failed in a row does it wait ``reconnect_interval`` before the next round. Each attempt is
  bounded by ``attempt_timeout_s`` (a node that does not answer costs that, not a TCP time-out).
  Channels, queues, bindings and consumers are restored on the new node by aio-pika as on any
  reconnect. At start-up it gives up after one failed round (``fail_fast``), with every node's
  reason in one :class:`NodesUnreachable` (an ``AMQPConnectionError``, which ``dockhand run``
  turns into one line).
* :class:`MultiNodeBroker` is FastStream's ``RabbitBroker`` connecting through it, and
  :func:`connect_any` one plain connection to the first node that answers (the leader lock).

Why a subclass and not FastStream's own hooks: FastStream 0.7 builds its connection with
``aio_pika.connect_robust(**kwargs)`` from one URL and has no option for several; it does pass
``connection_class`` through, which is how :class:`MultiNodeBroker` plugs in.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import logging
import random
from collections.abc import Sequence
from ssl import SSLContext
from typing import Any
from urllib.parse import urlsplit

import aio_pika
import aio_pika.abc
from aio_pika import RobustConnection
from aiormq.connection import parse_bool
from aiormq.exceptions import AMQPConnectionError, ProbableAuthenticationError
from faststream.rabbit import RabbitBroker
from yarl import URL

from dockhand.amqp import error_reason, split_urls

log = logging.getLogger("dockhand.broker")

DEFAULT_ATTEMPT_TIMEOUT_S = 5.0
# After a successful (re)connect aio-pika's reconnect loop still sleeps ``reconnect_interval``;
# while it does, a second loss would wait that long. Short, but not zero: the same loop retries a
# consumer the broker cancelled, and must not spin on one that cannot be restored yet.
_SETTLE_S = 0.2


class NodesUnreachable(AMQPConnectionError):
    """No node of the list answered in one round; the message names each node's reason."""

    def __init__(self, reasons: dict[str, str]) -> None:
        self.reasons = dict(reasons)
        if len(reasons) == 1:  # one node: the caller's message already names it
            text = next(iter(reasons.values()))
        else:
            text = "; ".join(f"{node}: {reason}" for node, reason in reasons.items()) or "no broker node given"
        super().__init__(text)

    def __str__(self) -> str:
        return str(self.args[0])


def node_label(url: str | URL) -> str:
    """``host:port`` of a node URL, for logs, readiness and heartbeats (never credentials)."""
    parts = urlsplit(str(url))
    port = parts.port or (5671 if parts.scheme == "amqps" else 5672)
    return f"{parts.hostname or 'localhost'}:{port}"


class NodeCycle:
    """The nodes of one cluster in the order to try them: shuffled once, then round-robin.

    ``failed()`` after each failed attempt or lost connection moves to the next node and says
    whether every node has now failed in a row (a round); ``succeeded()`` starts counting anew.
    """

    def __init__(self, urls: str | Sequence[str], rng: random.Random | None = None) -> None:
        nodes = split_urls(urls) if isinstance(urls, str) else [u for part in urls for u in split_urls(part)]
        # Not for secrecy: only so that workers spread over the nodes.
        (rng or random.Random()).shuffle(nodes)  # noqa: S311
        self.urls: tuple[str, ...] = tuple(nodes)
        self._index = 0
        self._failures = 0
        self.reasons: dict[str, str] = {}

    def __len__(self) -> int:
        return len(self.urls)

    @property
    def current(self) -> str:
        """The URL to try (or that is connected) now."""
        return self.urls[self._index]

    @property
    def label(self) -> str:
        return node_label(self.current)

    def failed(self, error: BaseException | None) -> bool:
        """Record why the current node failed and move on; True when a whole round has failed."""
        self.reasons[self.label] = error_reason(error) if error is not None else "connection closed"
        self._index = (self._index + 1) % len(self.urls)
        self._failures += 1
        return self._failures % len(self.urls) == 0

    def succeeded(self) -> None:
        self._failures = 0
        self.reasons.clear()

    @property
    def failures(self) -> int:
        """Failed attempts (and lost connections) since the last success."""
        return self._failures


class MultiNodeConnection(RobustConnection):
    """``RobustConnection`` over a :class:`NodeCycle`; see the module docstring."""

    def __init__(
        self,
        url: URL,
        loop: asyncio.AbstractEventLoop | None = None,
        *,
        nodes: NodeCycle,
        attempt_timeout_s: float = DEFAULT_ATTEMPT_TIMEOUT_S,
        **kwargs: Any,
    ) -> None:
        # aio-pika's own fail-fast ends the reconnect loop after the first failed attempt; ours
        # gives up after a whole round instead (see connect()).
        give_up = parse_bool(str(kwargs.pop("fail_fast", URL(url).query.get("fail_fast", "1"))))
        kwargs["fail_fast"] = False
        super().__init__(url, loop, **kwargs)
        self.nodes = nodes
        self.attempt_timeout_s = attempt_timeout_s
        self.round_interval = float(self.reconnect_interval)
        self._give_up = give_up
        self._round_failed = asyncio.Event()
        # The last error of each node in the current round (for the start-up error).
        self._errors: collections.deque[BaseException] = collections.deque(maxlen=len(nodes))
        # The URL aio-pika connects to on each attempt: the cycle's node, with the query (and so
        # the options: heartbeat, name, ...) that node's own URL carries.
        self.url = URL(nodes.current)

    @property
    def node(self) -> str | None:
        """``host:port`` of the node this connection is on, or None while it is not connected."""
        return self.nodes.label if self.connected.is_set() and not self.is_closed else None

    async def connect(self, timeout: aio_pika.abc.TimeoutType = None) -> None:  # noqa: ASYNC109 -- aio-pika's signature
        """Connect to the first node that answers; with fail-fast, raise :class:`NodesUnreachable`
        (or the login error, when every node refused the login) after one failed round."""
        timeout = self.attempt_timeout_s if timeout is None else timeout
        if not self._give_up or self.connection_attempt:
            await super().connect(timeout)
            return
        attempt = asyncio.ensure_future(super().connect(timeout))
        round_failed = asyncio.ensure_future(self._round_failed.wait())
        try:
            await asyncio.wait({attempt, round_failed}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            round_failed.cancel()
        if attempt.done():
            attempt.result()
            return
        attempt.cancel()
        await asyncio.gather(attempt, return_exceptions=True)
        errors = list(self._errors)
        await self.close()
        if errors and all(isinstance(e, ProbableAuthenticationError) for e in errors):
            raise errors[-1]
        raise NodesUnreachable(self.nodes.reasons)

    async def _on_connection_close(self, closing: asyncio.Future[Any]) -> None:
        # aio-pika calls this for every failed connect attempt and for every lost connection.
        if not self._close_called and not self.is_closed:
            self._next_node(_exception(closing))
        await super()._on_connection_close(closing)

    def _next_node(self, error: BaseException | None) -> None:
        lost = self.node  # set while the connection was up: this is a loss, not a failed attempt
        previous = self.nodes.label
        if error is not None:
            self._errors.append(error)
        round_failed = self.nodes.failed(error)
        self.url = URL(self.nodes.current)
        # The next attempt at once, unless every node has just failed: then wait a round.
        self.reconnect_interval = self.round_interval if round_failed else 0
        reason = error_reason(error) if error is not None else "connection closed"
        if lost is not None:
            log.warning("broker node %s lost (%s); connecting to %s", previous, reason, self.nodes.label)
        elif round_failed:
            log.warning(
                "no broker node answers (%s); next round in %.1f s",
                "; ".join(f"{n}: {r}" for n, r in self.nodes.reasons.items()),
                self.round_interval,
            )
            self._round_failed.set()
        else:
            log.info("broker node %s: %s; trying %s", previous, reason, self.nodes.label)

    async def _on_connected(self) -> None:
        await super()._on_connected()
        if self.nodes.failures:
            log.info("connected to broker node %s", self.nodes.label)
        self.nodes.succeeded()
        self._errors.clear()
        self._round_failed.clear()
        self.reconnect_interval = min(self.round_interval, _SETTLE_S)


def _exception(closing: asyncio.Future[Any]) -> BaseException | None:
    if closing.cancelled():
        return None
    return closing.exception()


class MultiNodeBroker(RabbitBroker):
    """FastStream's ``RabbitBroker`` on a :class:`MultiNodeConnection`.

    ``url`` is one URL, a comma-separated list or a sequence of them (``dockhand.amqp.split_urls``
    forms); every other argument is ``RabbitBroker``'s. ``reconnect_interval`` is the pause after a
    round in which every node failed (default 1 s); ``attempt_timeout_s`` bounds each attempt.
    """

    def __init__(
        self,
        url: str | Sequence[str],
        *,
        attempt_timeout_s: float = DEFAULT_ATTEMPT_TIMEOUT_S,
        reconnect_interval: float = 1.0,
        rng: random.Random | None = None,
        **kwargs: Any,
    ) -> None:
        self.nodes = NodeCycle(url, rng)
        super().__init__(
            self.nodes.current,
            reconnect_interval=reconnect_interval,
            timeout=kwargs.pop("timeout", attempt_timeout_s),
            **kwargs,
        )
        # connect_robust() hands connection_class the URL FastStream built (the first node's,
        # with FastStream's options in its query) and everything else it was given.
        self._connection_kwargs["connection_class"] = functools.partial(
            MultiNodeConnection, nodes=self.nodes, attempt_timeout_s=attempt_timeout_s
        )

    @property
    def node(self) -> str | None:
        """``host:port`` of the node the broker connection is on now (None: not connected)."""
        connection = self._connection
        return connection.node if isinstance(connection, MultiNodeConnection) else None


async def connect_any(
    nodes: NodeCycle,
    *,
    ssl_context: SSLContext | None = None,
    attempt_timeout_s: float = DEFAULT_ATTEMPT_TIMEOUT_S,
    **kwargs: Any,
) -> aio_pika.abc.AbstractConnection:
    """One plain (not robust) connection to the first node of ``nodes`` that answers, starting at
    the cycle's current node; :class:`NodesUnreachable` after one failed round."""
    errors: list[BaseException] = []
    for _ in range(len(nodes)):
        url = nodes.current
        try:
            async with asyncio.timeout(attempt_timeout_s):
                connection: aio_pika.abc.AbstractConnection = await aio_pika.connect(
                    url, ssl_context=ssl_context, **kwargs
                )
        except Exception as exc:  # refused, timed out, closed during the handshake: next node
            errors.append(exc)
            nodes.failed(exc)
            continue
        nodes.succeeded()
        return connection
    if errors and all(isinstance(e, ProbableAuthenticationError) for e in errors):
        raise errors[-1]
    reasons = dict(nodes.reasons)
    nodes.succeeded()  # the next call starts a fresh round, at the node after the last one tried
    raise NodesUnreachable(reasons)
