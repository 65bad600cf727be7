"""Typed handles on aiodocker's network and volume objects, whose classes are unannotated.

Each name below is aiodocker's own class or attribute, seen through a signature, so the rest
of the package calls typed functions (mypy strict, no per-module override).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import aiodocker
from aiodocker.networks import DockerNetwork
from aiodocker.volumes import DockerVolume

JSON = dict[str, Any]


class Volume(Protocol):
    """One named volume (aiodocker's ``DockerVolume``)."""

    name: str

    async def show(self) -> JSON: ...

    async def delete(self) -> None: ...


class _Volumes(Protocol):
    async def create(self, config: JSON) -> Volume: ...

    async def list(self, *, filters: JSON | None = None) -> JSON: ...


network: Callable[[aiodocker.Docker, str], DockerNetwork] = DockerNetwork
"""The network with this id or name (no request is made)."""

volume: Callable[[aiodocker.Docker, str], Volume] = DockerVolume
"""The volume with this name (no request is made)."""


def volumes(docker: aiodocker.Docker) -> _Volumes:
    """Docker's volume collection (create, list)."""
    collection: _Volumes = docker.volumes
    return collection
