"""Container events, label discovery and heartbeats, from containers started the way users do
(plain `docker run -l dockhand.enabled=true …`), against the real daemon and broker."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import secrets
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import aiodocker
import pytest

from .conftest import TEST_LABEL, Client, EventLog, WorkerFactory, listen, service_of


def discovery_labels(domain: str, port: str = "8080", **extra: str) -> dict[str, str]:
    """Discovery labels; ``extra`` names more of them without the prefix (``description=…``)."""
    return {
        "dockhand.enabled": "true",
        "dockhand.domain": domain,
        "dockhand.port": port,
        **{f"dockhand.{key}": value for key, value in extra.items()},
    }


async def run_container(
    docker: aiodocker.Docker, session_id: str, labels: dict[str, str], image: str, *, start: bool = True
) -> aiodocker.containers.DockerContainer:
    """Like `docker run -d -l … -p 127.0.0.1::8080 IMAGE`."""
    container = await docker.containers.create(
        {
            "Image": image,
            "Labels": {TEST_LABEL: session_id, **labels},
            "ExposedPorts": {"8080/tcp": {}},
            "HostConfig": {"PortBindings": {"8080/tcp": [{"HostIp": "127.0.0.1", "HostPort": ""}]}},
        }
    )
    if start:
        await container.start()
    return container


@contextlib.asynccontextmanager
async def containers_removed(docker: aiodocker.Docker) -> AsyncIterator[list[Any]]:
    made: list[Any] = []
    try:
        yield made
    finally:
        for container in made:
            with contextlib.suppress(aiodocker.DockerError):
                await container.delete(force=True)


async def test_labelled_container_is_added_then_removed(
    client: Client, events: EventLog, docker: aiodocker.Docker, test_image: str
) -> None:
    domain = f"web-{client.session_id}-{secrets.token_hex(2)}.example.test"
    async with containers_removed(docker) as made:
        container = await run_container(
            docker, client.session_id, discovery_labels(domain, description="Web"), test_image
        )
        made.append(container)
        [added] = await events.wait_for("discovery.added", service_of(container.id))
        service = added["service"]
        info = await container.show()
        assert service["domain"] == domain
        assert service["port"] == 8080
        assert service["description"] == "Web"
        assert service["container_name"] == info["Name"].lstrip("/")
        assert service["host_ports"] == {"8080/tcp": int(info["NetworkSettings"]["Ports"]["8080/tcp"][0]["HostPort"])}
        assert service["networks"] == {"bridge": info["NetworkSettings"]["Networks"]["bridge"]["IPAddress"]}
        assert added["host_id"] == client.worker.host_id

        listed = await client.send("discovery.list")
        assert [s["domain"] for s in listed["result"]["services"] if s["container_id"] == container.id] == [domain]

        await container.stop()
        await events.wait_for("discovery.removed", service_of(container.id))
        await events.wait_for("container.stop", lambda b: b["container"]["id"] == container.id)
        # Container events were published too, in Docker's order, cause before effect.
        kinds = [b["type"] for b in events.select("", lambda b: (b.get("container") or {}).get("id") == container.id)]
        assert kinds[:2] == ["container.create", "container.start"]
        assert {"container.kill", "container.die", "container.stop"} <= set(kinds)
        die = events.select("container.die", lambda b: b["container"]["id"] == container.id)[0]
        assert die["attributes"]["exit_code"] == 0
        await asyncio.sleep(0.5)
        assert len(events.select("discovery.added", service_of(container.id))) == 1
        assert len(events.select("discovery.removed", service_of(container.id))) == 1


async def test_bad_labels_are_invalid_and_do_not_block_others(
    client: Client, events: EventLog, docker: aiodocker.Docker, test_image: str
) -> None:
    tag = f"{client.session_id}-{secrets.token_hex(2)}"
    async with containers_removed(docker) as made:
        bad = await run_container(
            docker, client.session_id, discovery_labels(f"bad-{tag}.example.test", "http"), test_image
        )
        made.append(bad)
        no_domain = await run_container(
            docker, client.session_id, {"dockhand.enabled": "true", "dockhand.port": "80"}, test_image
        )
        made.append(no_domain)
        good = await run_container(docker, client.session_id, discovery_labels(f"good-{tag}.example.test"), test_image)
        made.append(good)
        [invalid] = await events.wait_for("discovery.invalid", service_of(bad.id))
        assert "dockhand.port" in invalid["reason"]
        assert invalid["container"]["container_id"] == bad.id
        [missing] = await events.wait_for("discovery.invalid", service_of(no_domain.id))
        assert "dockhand.domain" in missing["reason"]
        await events.wait_for("discovery.added", service_of(good.id))
        assert events.select("discovery.added", service_of(bad.id)) == []


async def test_network_connect_updates_the_service(
    client: Client, events: EventLog, docker: aiodocker.Docker, test_image: str
) -> None:
    async with containers_removed(docker) as made:
        container = await run_container(
            docker, client.session_id, discovery_labels(f"net-{client.session_id}.example.test"), test_image
        )
        made.append(container)
        await events.wait_for("discovery.added", service_of(container.id))
        network = await docker.networks.create({"Name": f"dhtest-{client.session_id}-upd", "Labels": client.labels()})
        try:
            await network.connect({"Container": container.id})
            [updated] = await events.wait_for("discovery.updated", service_of(container.id))
            assert set(updated["service"]["networks"]) == {"bridge", f"dhtest-{client.session_id}-upd"}
            await network.disconnect({"Container": container.id})
            await events.wait_for("discovery.updated", service_of(container.id), count=2)
        finally:
            await container.delete(force=True)
            await network.delete()


async def test_managed_workspace_events_carry_the_workspace_id(
    client: Client, events: EventLog, test_image: str
) -> None:
    ws = client.ws_id()
    reply = await client.send("workspace.create", {"workspace_id": ws, "image": test_image, "labels": client.labels()})
    container_id = reply["result"]["container_id"]
    [start] = await events.wait_for("container.start", lambda b: b["container"]["id"] == container_id)
    assert start["container"]["workspace_id"] == ws
    connects = await events.wait_for("network.connect", lambda b: b["container_id"] == container_id)
    assert connects[0]["network"]["name"] == f"dhtest-{client.session_id}"
    await client.send("workspace.remove", {"workspace_id": ws, "force": True})
    [destroy] = await events.wait_for("container.destroy", lambda b: b["container"]["id"] == container_id)
    assert destroy["container"]["workspace_id"] == ws


async def test_container_present_before_start_is_in_the_startup_snapshot(
    workers: WorkerFactory, session_id: str, docker: aiodocker.Docker, test_image: str
) -> None:
    domain = f"early-{session_id}.example.test"
    async with containers_removed(docker) as made:
        container = await run_container(docker, session_id, discovery_labels(domain), test_image)
        made.append(container)
        async with listen(workers.prefix) as log:
            worker = workers.start("early")
            try:
                [snapshot] = await log.wait_for(
                    "discovery.snapshot", lambda b: b["host_id"] == worker.host_id and b["reason"] == "startup"
                )
                assert container.id in [s["container_id"] for s in snapshot["services"]]
                added = await log.wait_for(
                    "discovery.added", lambda b: b["host_id"] == worker.host_id and service_of(container.id)(b)
                )
                assert added[0]["service"]["domain"] == domain
            finally:
                assert worker.stop() == 0


async def test_heartbeats_arrive_on_time_with_counters(workers: WorkerFactory) -> None:
    async with listen(workers.prefix) as log:
        worker = workers.start("beat", DOCKHAND_HEALTH_INTERVAL_S="1")
        try:
            mine = lambda b: b["host_id"] == worker.host_id  # noqa: E731
            # Start-up publishes at once on each status change (elected, stream up); after
            # that, one heartbeat per interval.
            settled = len(await log.wait_for("heartbeat", lambda b: mine(b) and b["role"] == "active"))
            beats = await log.wait_for("heartbeat", mine, count=settled + 5, timeout=20)
            times = [t for key, body, t in log.items if key.endswith("heartbeat") and mine(body)][settled + 1 :]
            gaps = [b - a for a, b in itertools.pairwise(times)]
            assert all(0.5 < gap < 2.0 for gap in gaps), gaps
            # (A start-up beat may say "degraded": elected, event stream not connected yet.)
            assert all(b["status"] == "healthy" for b in beats[settled:])
            beat = beats[-1]
            assert beat["docker"]["reachable"] is True
            assert beat["docker"]["api_version"]
            assert beat["docker"]["latency_ms"] > 0
            assert beat["events"]["stream_connected"] is True
            assert beat["worker_id"].startswith(worker.host_id)
        finally:
            assert worker.stop() == 0


@pytest.mark.slow
async def test_burst_of_200_containers_is_announced_exactly_once_each(
    client: Client, workers: WorkerFactory, docker: aiodocker.Docker, test_image: str
) -> None:
    # A worker of its own that lists every half second, so full lists land in the middle of the
    # burst (between a container's die and its list view catching up, which once announced a
    # stopping container again) instead of once every five minutes.
    count = 200
    tag = f"burst-{client.session_id}"
    limit = asyncio.Semaphore(16)
    async with listen(workers.prefix) as events, containers_removed(docker) as made:
        worker = workers.start("burst", DOCKHAND_RECONCILE_INTERVAL_S="0.5")
        try:

            async def start_one(i: int) -> None:
                async with limit:
                    made.append(
                        await run_container(
                            docker, client.session_id, discovery_labels(f"{tag}-{i}.example.test"), test_image
                        )
                    )

            await asyncio.gather(*(start_one(i) for i in range(count)))
            mine = lambda b: b["host_id"] == worker.host_id and b["service"]["domain"].startswith(tag)  # noqa: E731
            await events.wait_for("discovery.added", mine, count=count, timeout=120)

            async def stop_one(container: Any) -> None:
                async with limit:
                    await container.stop(t=5)

            await asyncio.gather(*(stop_one(c) for c in made))
            await events.wait_for("discovery.removed", mine, count=count, timeout=120)
            await asyncio.sleep(1)  # any duplicate would have arrived by now
            added = Counter(b["service"]["container_id"] for b in events.select("discovery.added", mine))
            removed = Counter(b["service"]["container_id"] for b in events.select("discovery.removed", mine))
            odd = sorted(c for c, n in (added + removed).items() if n != 2)
            # On failure: what the first containers not announced exactly once saw (kind, seq).
            history = {
                c[:12]: [
                    (key.rsplit(".", 1)[-1], b.get("seq"))
                    for key, b, _ in events.items
                    if service_of(c)(b) and b["host_id"] == worker.host_id
                ]
                for c in odd[:3]
            }
            assert len(added) == len(removed) == count
            assert set(added.values()) == set(removed.values()) == {1}, history
            assert set(added) == {c.id for c in made}
            assert " ERROR " not in worker.log()
        finally:
            assert worker.stop() == 0
