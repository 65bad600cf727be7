"""worker.health without Docker: the probe, the derived status, the heartbeat; DockerOps fail-fast."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import aiohttp
import pytest
import stamina
from aiodocker.exceptions import DockerError

from dockhand.schemas import ErrorCode, Heartbeat, Status
from dockhand.worker.docker import DockerOps
from dockhand.worker.errors import DockhandError
from dockhand.worker.events import StreamState
from dockhand.worker.health import HealthMonitor
from dockhand.worker.labels import Labels
from dockhand.worker.policy import Policy
from dockhand.worker.settings import Settings
from dockhand.worker.settle import Counters
from tests.fakes import VERSION, FakeDockerClient, Recorder

HOST = "host-a"
NAMES = Labels("dockhand", "dockhand")


@pytest.fixture(autouse=True)
def stamina_testing() -> Iterator[None]:
    with stamina.set_testing(True):
        yield


def make(**settings: Any) -> tuple[HealthMonitor, DockerOps, FakeDockerClient, StreamState, Counters]:
    config = Settings(host_id=HOST, worker_id=f"{HOST}-7f3c", docker_host=None, **settings)
    docker = FakeDockerClient()
    ops = DockerOps(docker, config, NAMES, Policy(config, NAMES))  # type: ignore[arg-type]
    stream = StreamState(connected=True)
    counters = Counters()
    monitor = HealthMonitor(ops, config, counters, stream, Recorder(), version="0.1.0")
    return monitor, ops, docker, stream, counters


FAILURES = [
    aiohttp.ClientConnectionError("Cannot connect to host localhost:2375"),
    ConnectionRefusedError(111, "Connection refused"),
    FileNotFoundError(2, "No such file or directory: '/var/run/docker.sock'"),
    DockerError(503, "Service Unavailable"),
    TimeoutError(),
]


async def test_probe_success_marks_docker_available() -> None:
    monitor, ops, docker, _, _ = make()
    ops.available = False
    health = await monitor.probe()
    assert ops.available is True
    assert health.reachable is True
    assert (health.version, health.api_version) == ("20.10.24", "1.41")
    assert health.latency_ms is not None
    assert health.latency_ms >= 0
    assert docker.version_calls == 1


@pytest.mark.parametrize("failure", FAILURES, ids=lambda e: type(e).__name__)
async def test_probe_failure_marks_docker_unavailable(failure: Exception) -> None:
    monitor, ops, docker, _, _ = make()
    docker.fail = failure
    health = await monitor.probe()
    assert ops.available is False
    assert health.reachable is False
    assert health.version is None
    # and back
    docker.fail = None
    monitor.docker = health
    assert (await monitor.probe()).reachable is True
    assert ops.available is True


async def test_derive_status() -> None:
    monitor, _, docker, stream, _ = make()
    monitor.docker = await monitor.probe()
    stream.connected = True
    assert monitor._derive() == "healthy"
    stream.connected = False
    assert monitor._derive() == "degraded"
    docker.fail = ConnectionRefusedError(111, "Connection refused")
    monitor.docker = await monitor.probe()
    assert monitor._derive() == "unhealthy"
    stream.connected = True  # the stream state does not matter while Docker is down
    assert monitor._derive() == "unhealthy"


async def test_heartbeat_validates_and_reports_counters() -> None:
    monitor, _, _, stream, counters = make()
    monitor.docker = (await monitor.probe()).model_copy(update={"containers_running": 3})
    counters.in_flight = 2
    counters.by_status[Status.SUCCEEDED] = 12
    counters.by_status[Status.FAILED] = 1
    counters.by_status[Status.REJECTED] = 4
    counters.by_status[Status.EXPIRED] = 5
    stream.last_event_at = datetime(2024, 5, 1, 10, 0, tzinfo=UTC)
    stream.lag_ms = 2.1
    stream.published = 40

    heartbeat = monitor.heartbeat()

    wire = heartbeat.model_dump_json()
    assert Heartbeat.model_validate_json(wire) == heartbeat
    assert heartbeat.host_id == HOST
    assert heartbeat.worker_id == f"{HOST}-7f3c"
    assert heartbeat.status == "healthy"  # derived, before the loop has set a status
    assert heartbeat.version == "0.1.0"
    assert heartbeat.uptime_s >= 0
    assert heartbeat.time.tzinfo is not None
    assert heartbeat.docker.reachable is True
    assert heartbeat.docker.containers_running == 3
    assert heartbeat.commands.model_dump() == {
        "in_flight": 2,
        "succeeded": 12,
        "failed": 1,
        "rejected": 4,
        "expired": 5,
    }
    assert heartbeat.events.model_dump() == {
        "stream_connected": True,
        "last_event_at": datetime(2024, 5, 1, 10, 0, tzinfo=UTC),
        "lag_ms": 2.1,
        "published": 40,
    }
    # every key of the contract's example heartbeat is there
    body = json.loads(wire)
    assert {"host_id", "worker_id", "status", "time", "uptime_s", "version", "docker", "commands", "events"} <= set(
        body
    )
    assert {"reachable", "version", "api_version", "latency_ms", "containers_running"} <= set(body["docker"])
    assert {"in_flight", "succeeded", "failed", "rejected"} <= set(body["commands"])
    assert {"stream_connected", "last_event_at", "lag_ms", "published"} <= set(body["events"])


async def test_heartbeat_while_docker_down_is_unhealthy() -> None:
    monitor, _, docker, _, _ = make()
    docker.fail = ConnectionRefusedError(111, "Connection refused")
    monitor.docker = await monitor.probe()
    heartbeat = monitor.heartbeat()
    assert heartbeat.status == "unhealthy"
    assert heartbeat.docker.model_dump() == {
        "reachable": False,
        "version": None,
        "api_version": None,
        "latency_ms": None,
        "containers_running": None,
    }
    Heartbeat.model_validate_json(heartbeat.model_dump_json())


async def test_heartbeat_uses_the_published_status() -> None:
    monitor, _, _, _stream, _ = make()
    monitor.status = "degraded"
    assert monitor.heartbeat().status == "degraded"


# --- DockerOps fail-fast ---------------------------------------------------------------------


async def test_call_fails_fast_while_docker_unavailable() -> None:
    monitor, ops, docker, _, _ = make()
    calls: list[str] = []

    async def fn() -> str:
        calls.append("called")
        return "ok"

    docker.fail = ConnectionRefusedError(111, "Connection refused")
    await monitor.probe()
    assert ops.available is False

    with pytest.raises(DockhandError) as info:
        await ops.call("container.inspect", fn, subject="workspace ws1 on host-a")
    error = info.value
    assert error.code is ErrorCode.DOCKER_UNAVAILABLE
    assert error.retryable is True
    assert error.status is Status.FAILED
    assert "workspace ws1 on host-a" in error.message
    # maybe() does not mistake it for "absent"
    with pytest.raises(DockhandError) as info:
        await ops.maybe("container.inspect", fn, subject="workspace ws1 on host-a")
    assert info.value.code is ErrorCode.DOCKER_UNAVAILABLE
    assert calls == []

    docker.fail = None
    await monitor.probe()
    assert await ops.call("container.inspect", fn, subject="workspace ws1 on host-a") == "ok"
    assert calls == ["called"]


# --- availability follows any proof, not only the probe (issue 18) ----------------------------


async def test_a_call_while_marked_down_goes_ahead_when_docker_answers_again() -> None:
    monitor, ops, docker, _, _ = make()
    flips: list[bool] = []
    ops.on_availability(flips.append)
    docker.fail = ConnectionRefusedError(111, "Connection refused")
    await monitor.probe()
    assert ops.available is False
    docker.fail = None  # the daemon is back; the next probe is up to a second away
    calls = 0

    async def fn() -> str:
        nonlocal calls
        calls += 1
        return "ok"

    docker.version_calls = 0
    results = await asyncio.gather(*(ops.call("system.info", fn, subject="host host-a") for _ in range(5)))
    assert results == ["ok"] * 5
    assert calls == 5
    assert docker.version_calls == 1  # one shared check for the calls waiting together
    assert ops.available is True
    assert flips == [False, True]


async def test_a_stale_probe_failure_does_not_undo_a_fresher_success() -> None:
    # The probe's request went out while the daemon was down and failed after the event stream
    # had reconnected: Docker stays available, and the probe asks again rather than report down.
    monitor, ops, docker, _, _ = make()
    answered = asyncio.Event()
    attempts = 0

    async def version() -> dict[str, Any]:
        nonlocal attempts
        attempts += 1
        if attempts == 1:
            await answered.wait()
            raise ConnectionRefusedError(111, "Connection refused")
        return dict(VERSION)

    docker.version = version  # type: ignore[method-assign]
    ops.available = False
    probing = asyncio.ensure_future(monitor.probe())
    await asyncio.sleep(0)
    ops.mark_available()  # the stream reconnected meanwhile
    answered.set()
    health = await probing
    assert health.reachable is True
    assert ops.available is True
    assert attempts == 2


def test_mark_unavailable_ignores_a_request_older_than_the_last_answer() -> None:
    _, ops, _, _, _ = make()
    began = time.monotonic()
    ops.mark_available()
    assert ops.mark_unavailable(began) is False
    assert ops.available is True
    assert ops.mark_unavailable(time.monotonic()) is True
    assert ops.available is False


async def test_a_4xx_from_docker_proves_it_answers() -> None:
    _, ops, _, _, _ = make()
    began = time.monotonic()

    async def missing() -> None:
        raise DockerError(404, "No such container: x")

    assert await ops.maybe("container.inspect", missing, subject="container x") is None
    assert ops.mark_unavailable(began) is False


async def test_heartbeat_follows_the_stream_at_once_not_at_the_next_tick() -> None:
    # health_interval_s=10: the loop ticks every second; a status change is published at once.
    monitor, _, _, stream, _ = make(health_interval_s=10)
    recorder = monitor._publish
    assert isinstance(recorder, Recorder)
    monitor.start()
    try:
        async with asyncio.timeout(2):
            while not recorder.messages:
                await asyncio.sleep(0.01)
        assert recorder.messages[-1][1].status == "healthy"  # type: ignore[attr-defined]
        await asyncio.sleep(0.1)  # the loop now waits for its next tick
        for connected, status in ((False, "degraded"), (True, "healthy")):
            began = time.monotonic()
            stream.set_connected(connected)
            async with asyncio.timeout(0.5):
                while recorder.messages[-1][1].status != status:  # type: ignore[attr-defined]
                    await asyncio.sleep(0.005)
            assert time.monotonic() - began < 0.5
    finally:
        await monitor.stop()


async def test_stop_is_not_lost_when_woken_at_the_same_moment() -> None:
    # stream.stop() flips `connected` (a wake) right before health.stop() cancels the loop:
    # asyncio.wait_for on 3.11 would swallow that cancel and stop() would never return.
    monitor, _, _, stream, _ = make(health_interval_s=10)
    monitor.start()
    await asyncio.sleep(0.2)
    stream.set_connected(False)
    async with asyncio.timeout(2):
        await monitor.stop()
    assert not monitor.running  # its task ended
