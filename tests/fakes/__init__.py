"""Shipped test doubles: fakes that the real code talks to through its real clients.

- :mod:`tests.fakes.docker_api`: an in-memory Docker Engine (API 1.41, the subset dockhand uses)
  served over a unix socket, so ``aiodocker`` and :class:`worker.docker.DockerOps` run
  unmodified against it (import it from there: it starts an aiohttp server).
- :class:`FakeDockerClient` (:mod:`tests.fakes.docker_client`): an in-process ``aiodocker.Docker``
  for the calls discovery, the event stream, the health probe and pulls make; containers are
  :class:`Box` objects rendering their inspect and list entry.
- :class:`FakeMessage`, :class:`FakePublisher` and :class:`Recorder` (:mod:`tests.fakes.messages`):
  a delivered ``RabbitMessage`` recording its ack / nack / reject, a confirmed publisher that
  records what it sent and can be made to fail, and a ``publish(routing_key, model)`` recorder;
  :class:`FakeTxChannel`, a consumer channel in transaction mode (what commits, what is discarded).
- :class:`FakeOps` (:mod:`tests.fakes.ops`): just enough of DockerOps for dispatcher tests.
"""

from .docker_client import VERSION, Box, FakeDockerClient
from .messages import FakeMessage, FakePublisher, FakeTxChannel, Recorder, is_dead_letter, is_reply, is_result
from .ops import FakeOps

__all__ = [
    "VERSION",
    "Box",
    "FakeDockerClient",
    "FakeMessage",
    "FakeOps",
    "FakePublisher",
    "FakeTxChannel",
    "Recorder",
    "is_dead_letter",
    "is_reply",
    "is_result",
]
