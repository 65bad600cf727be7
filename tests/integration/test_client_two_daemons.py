"""``all`` over two real daemons: one worker on the machine's dockerd, one on a second dockerd of its
own (``dockerd2.py``), same exchange prefix; ``request_all`` collects one result from each, and
returns as soon as both have answered."""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path

import aiodocker
import pytest

from dockhand.client import Client
from dockhand.schemas.results import HostInfo

from .conftest import AMQP_URL, TEST_IMAGE, TEST_LABEL, WorkerFactory, WorkerProcess
from .dockerd2 import SecondDockerd, unique_name

pytestmark = pytest.mark.slow  # a dockerd of its own and a worker on it


async def test_all_over_two_daemons_collects_both(
    workers: WorkerFactory, worker: WorkerProcess, session_id: str, tmp_path: Path, docker: aiodocker.Docker
) -> None:
    d = SecondDockerd(tmp_path / "dockerd2", name=unique_name("dhc"))
    other: WorkerProcess | None = None
    try:
        await asyncio.to_thread(d.start)
        await asyncio.to_thread(d.load_image, TEST_IMAGE)
        other = await asyncio.to_thread(workers.start, "d2", DOCKHAND_DOCKER_HOST=d.url)
        assert other.prefix == worker.prefix
        assert other.host_id != worker.host_id
        async with aiodocker.Docker(url=d.url) as docker2:
            # Two containers on the second daemon only (made there directly: a workspace would make the
            # worker's default network, whose bridge and address pool outlive this daemon).
            for _ in range(2):
                await docker2.containers.create({"Image": TEST_IMAGE, "Labels": {TEST_LABEL: session_id}})
            on_second = (await docker2.system.info())["Containers"]
        assert on_second == 2

        async with Client.connect(AMQP_URL, prefix=worker.prefix) as dh:
            timeout = 20.0
            started = time.monotonic()
            results = await dh.request_all("host.info", expect=[worker.host_id, other.host_id], timeout=timeout)
            took = time.monotonic() - started
        assert took < timeout / 2, f"request_all waited {took:.1f} s: it should return once both answered"
        by_host = {r.host_id: r for r in results}
        assert {worker.host_id, other.host_id} <= by_host.keys(), by_host.keys()
        assert len(by_host) == len(results)  # one result per host
        infos = {}
        for host in (worker.host_id, other.host_id):
            result = by_host[host]
            assert result.status == "succeeded", result
            assert isinstance(result.result, HostInfo)
            assert result.result.host_id == host
            infos[host] = result.result
        # Two daemons, not one seen twice: the second host reports exactly the second daemon's two.
        assert infos[other.host_id].containers == 2
        here = len(await docker.containers.list(all=True, filters={"label": [f"{TEST_LABEL}={session_id}"]}))
        assert infos[worker.host_id].containers >= here  # the machine's daemon: ours and everybody's
    finally:
        if other is not None:
            await asyncio.to_thread(other.stop)  # else its events would reach other tests of the prefix
        if d.running:
            await _empty(d)
        await asyncio.to_thread(d.cleanup)


async def _empty(d: SecondDockerd) -> None:
    """Remove every container and user-defined network of the second daemon (all of it is ours):
    dockerd keeps a network's bridge device on the machine after it stops, and its subnet, taken
    from the same default address pools as the machine's daemon, with it."""
    async with aiodocker.Docker(url=d.url) as docker2:
        for container in await docker2.containers.list(all=True):
            with contextlib.suppress(aiodocker.DockerError):
                await container.delete(force=True, v=True)
        for network in await docker2.networks.list():
            if network["Name"] not in {"bridge", "host", "none"}:
                with contextlib.suppress(aiodocker.DockerError):
                    await (await docker2.networks.get(network["Id"])).delete()
