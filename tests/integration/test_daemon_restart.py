"""The worker against a Docker daemon that stops and restarts under it (a second dockerd of
the test's own, so the shared daemon is never disturbed)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiodocker
import pytest

from .conftest import TEST_IMAGE, TEST_LABEL, WorkerFactory, WorkerProcess, connect_client, listen, service_of
from .dockerd2 import SecondDockerd, unique_name

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def dockerd2(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecondDockerd]:
    daemon = SecondDockerd(Path(tmp_path_factory.mktemp("dockerd2")), name=unique_name("dhr"))
    with daemon:
        daemon.load_image(TEST_IMAGE)
        yield daemon


def labels_for(session_id: str, domain: str) -> dict[str, str]:
    return {
        TEST_LABEL: session_id,
        "dockhand.enabled": "true",
        "dockhand.domain": domain,
        "dockhand.port": "8080",
    }


async def _run(docker: aiodocker.Docker, labels: dict[str, str], restart: str) -> str:
    container = await docker.containers.create(
        {"Image": TEST_IMAGE, "Labels": labels, "HostConfig": {"RestartPolicy": {"Name": restart}}}
    )
    await container.start()
    return container.id


@contextlib.asynccontextmanager
async def worker_on(workers: WorkerFactory, daemon: SecondDockerd, name: str) -> AsyncIterator[WorkerProcess]:
    worker = workers.start(name, DOCKHAND_DOCKER_HOST=daemon.url, DOCKHAND_HEALTH_INTERVAL_S="1")
    try:
        yield worker
    finally:
        assert worker.stop() == 0, worker.log()[-3000:]


async def test_daemon_restart_resyncs_and_removes_what_is_gone(
    workers: WorkerFactory, dockerd2: SecondDockerd, session_id: str
) -> None:
    docker = aiodocker.Docker(url=dockerd2.url)
    try:
        async with listen(workers.prefix) as log, worker_on(workers, dockerd2, "restart") as worker:
            mine = lambda b: b["host_id"] == worker.host_id  # noqa: E731
            await log.wait_for("discovery.snapshot", lambda b: mine(b) and b["reason"] == "startup")
            stays = await _run(docker, labels_for(session_id, "stays.example.test"), "always")
            goes = await _run(docker, labels_for(session_id, "goes.example.test"), "no")
            for container_id in (stays, goes):
                await log.wait_for("discovery.added", lambda b, c=container_id: mine(b) and service_of(c)(b))

            # The daemon goes away: every container dies; only `stays` comes back with it.
            await asyncio.to_thread(dockerd2.restart)
            [resync] = await log.wait_for(
                "discovery.snapshot", lambda b: mine(b) and b["reason"] == "resync", timeout=60
            )
            # dockerd restarts `stays` (restart: always) while it boots, before it serves the API.
            assert [s["container_id"] for s in resync["services"]] == [stays]
            removed = await log.wait_for("discovery.removed", lambda b: mine(b) and service_of(goes)(b))
            assert len(removed) == 1
            # `stays` is announced again if it was taken down and came back; never twice in a row.
            await asyncio.sleep(1)
            for container_id in (stays, goes):
                sequence = [
                    key.rsplit(".", 1)[1]
                    for key, body, _ in log.items
                    if key.split(".", 1)[1] in {"discovery.added", "discovery.removed"}
                    and mine(body)
                    and service_of(container_id)(body)
                ]
                assert all(a != b for a, b in itertools.pairwise(sequence)), sequence
                assert sequence[0] == "added"
            # The worker kept serving on its own: a command reaches the restarted daemon.
            async with connect_client(worker, session_id) as client:
                listed = await client.send("discovery.list")
                assert [s["container_id"] for s in listed["result"]["services"]] == [stays]
    finally:
        for container in await docker.containers.list(all=True, filters={"label": [f"{TEST_LABEL}={session_id}"]}):
            await container.delete(force=True)
        await docker.close()


async def test_heartbeat_turns_unhealthy_and_back_when_dockerd_stops(
    workers: WorkerFactory, dockerd2: SecondDockerd
) -> None:
    async with listen(workers.prefix) as log, worker_on(workers, dockerd2, "health") as worker:
        mine = lambda b: b["host_id"] == worker.host_id  # noqa: E731
        await log.wait_for("heartbeat", lambda b: mine(b) and b["status"] == "healthy")
        async with connect_client(worker, worker.host_id) as client:
            await asyncio.to_thread(dockerd2.stop)
            stopped = time.monotonic()
            [down] = await log.wait_for("heartbeat", lambda b: mine(b) and b["status"] == "unhealthy", timeout=10)
            assert time.monotonic() - stopped < 2.5  # within about one interval (1 s) of the stop
            assert down["docker"]["reachable"] is False

            began = time.monotonic()
            reply = await client.send("workspace.list")
            assert reply["status"] == "failed"
            assert reply["error"]["code"] == "docker_unavailable"
            assert reply["error"]["retryable"] is True
            assert time.monotonic() - began < 2  # fails fast instead of waiting out retries

            await asyncio.to_thread(dockerd2.start)
            await log.wait_for("heartbeat", lambda b: mine(b) and b["status"] == "healthy" and b["time"] > down["time"])
            again = await client.send("workspace.list")
            assert again["status"] == "succeeded", again
