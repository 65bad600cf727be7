"""DockerOps over the fake Engine (:mod:`tests.fakes.docker_api`), as the unit tests build it.

``tests/unit/conftest.py`` gives a ``fake`` fixture: a :class:`FakeDocker` on a socket in the
test's temporary directory with :data:`IMAGE` present. :func:`ops_over` is the real
:class:`~dockhand.worker.docker.DockerOps` of host ``host-a`` on it; keyword arguments override
the settings::

    async def test_x(fake: FakeDocker) -> None:
        ops = ops_over(fake, docker_retry_attempts=1)
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from dockhand.worker.docker import DockerOps
from dockhand.worker.labels import Labels
from dockhand.worker.policy import Policy
from dockhand.worker.settings import Settings

from .docker_api import FakeDocker

LABELS = Labels(prefix="dockhand", discovery_prefix="dockhand")
"""The label names of a worker with the default prefixes."""

IMAGE = "busybox:1.36"
"""The image the fake Engine has (its command: ``sleep 1d``)."""


@asynccontextmanager
async def engine(directory: Path) -> AsyncIterator[FakeDocker]:
    """A fake Engine on ``directory/docker.sock`` with :data:`IMAGE`."""
    async with FakeDocker(directory / "docker.sock") as docker:
        docker.add_image(IMAGE, cmd=["sleep", "1d"])
        yield docker


def ops_over(fake: FakeDocker, **settings: Any) -> DockerOps:
    """The DockerOps of host ``host-a`` (default network ``dh-default``) over ``fake``."""
    config = Settings(
        **{
            "host_id": "host-a",
            "worker_id": "host-a-test",
            "docker_host": None,
            "default_network": "dh-default",
            **settings,
        }
    )
    return DockerOps(fake.client(), config, LABELS, Policy(config, LABELS))
