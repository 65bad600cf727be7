"""Exchange and queue names and declarations (contract: Exchanges, Queues)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from faststream.rabbit import ExchangeType, QueueType, RabbitExchange, RabbitQueue

from .settings import Settings

if TYPE_CHECKING:
    from faststream.rabbit import RabbitBroker
    from faststream.rabbit.schemas.queue import QuorumQueueArgs


class _Exchange:
    """A durable topic exchange ``<prefix>.<suffix>`` (contract: Exchanges)."""

    def __init__(self, suffix: str) -> None:
        self.suffix = suffix

    def __get__(self, topology: Topology, owner: type | None = None) -> RabbitExchange:
        return RabbitExchange(
            f"{topology.settings.exchange_prefix}.{self.suffix}", type=ExchangeType.TOPIC, durable=True
        )


@dataclass(frozen=True)
class Topology:
    """Everything the worker declares, named from the settings' prefix and host id."""

    settings: Settings

    # Commands in (routed ``<host_id>|any|all.<type>``); results, events, heartbeats out; and
    # dead letters (commands rejected or out of delivery attempts).
    commands, results, events, health, dead = map(_Exchange, ("commands", "results", "events", "health", "dead"))

    def _command_queue_args(self, *, single_active: bool) -> QuorumQueueArgs:
        args: QuorumQueueArgs = {
            "x-dead-letter-exchange": self.dead.name,
            # at-least-once: a dead letter is only dropped from the source queue once the
            # dead-letter queue has confirmed it ("never dropped"); needs reject-publish.
            "x-dead-letter-strategy": "at-least-once",
            "x-overflow": "reject-publish",
            "x-delivery-limit": self.settings.delivery_limit,
        }
        if single_active:
            args["x-single-active-consumer"] = True
        return args

    @property
    def host_queue(self) -> RabbitQueue:
        """``<prefix>.commands.<host>``: this host's commands; hot standbys wait behind SAC."""
        return RabbitQueue(
            f"{self.settings.exchange_prefix}.commands.{self.settings.host_id}",
            queue_type=QueueType.QUORUM,
            routing_key=f"{self.settings.host_id}.#",
            arguments=self._command_queue_args(single_active=True),
        )

    @property
    def any_queue(self) -> RabbitQueue:
        """``<prefix>.commands.any``: competing consumers across every host."""
        return RabbitQueue(
            f"{self.settings.exchange_prefix}.commands.any",
            queue_type=QueueType.QUORUM,
            routing_key="any.#",
            arguments=self._command_queue_args(single_active=False),
        )

    @property
    def dead_queue(self) -> RabbitQueue:
        return RabbitQueue(
            f"{self.settings.exchange_prefix}.commands.dead", queue_type=QueueType.QUORUM, routing_key="#"
        )

    @property
    def leader_lock(self) -> str:
        """The exclusive queue whose holder publishes this host's events (see leadership.py)."""
        return f"{self.settings.exchange_prefix}.leader.{self.settings.host_id}"

    def result_key(self, command_type: str, status: str) -> str:
        return f"{self.settings.host_id}.{command_type}.{status}"

    async def declare(self, broker: RabbitBroker) -> None:
        """Declare what the subscribers do not: the out exchanges, the dead-letter pair and
        the host queue's second binding (``all.#``). Robust channels re-declare on reconnect."""
        for exchange in (self.results, self.events, self.health):
            await broker.declare_exchange(exchange)
        dead = await broker.declare_exchange(self.dead)
        dead_queue = await broker.declare_queue(self.dead_queue)
        await dead_queue.bind(dead, routing_key="#")
        commands = await broker.declare_exchange(self.commands)
        host_queue = await broker.declare_queue(self.host_queue)
        await host_queue.bind(commands, routing_key="all.#")
