"""DiscoveryView and HostsView against a real worker, broker and daemon: the view lists what exists,
follows added / removed, notices lost messages by ``seq`` and a worker restart by ``epoch`` and
converges by itself; HostsView sees a worker come up and fall out when its heartbeats stop."""

from __future__ import annotations

import asyncio
import secrets
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from dockhand.client import Client, DiscoveryView, HostsView, ServiceChange
from dockhand.schemas.results import Workspace

from .conftest import AMQP_URL, TEST_LABEL, WorkerFactory, WorkerProcess, listen, service_of

# A periodic snapshot would repair a loss by itself (and hide whether the seq check works).
QUIET = {"DOCKHAND_RECONCILE_INTERVAL_S": "3600"}


@pytest.fixture
async def dh(worker: WorkerProcess) -> AsyncIterator[Client]:
    async with Client.connect(AMQP_URL, prefix=worker.prefix, host=worker.host_id) as client:
        yield client


async def until(
    check: Callable[[], Awaitable[bool] | bool], what: str, timeout: float = 30, detail: Callable[[], object] = str
) -> None:
    deadline = time.monotonic() + timeout
    while True:
        outcome = check()
        if outcome if isinstance(outcome, bool) else await outcome:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what} {detail()}")
        await asyncio.sleep(0.1)


class Workspaces:
    """Discoverable workspaces made for one test (removed with force at the end)."""

    def __init__(self, dh: Client, session_id: str, image: str, host: str | None = None) -> None:
        self.dh, self.session_id, self.image, self.host = dh, session_id, image, host
        self.made: list[str] = []

    async def create(self, name: str) -> Workspace:
        ws = f"t{self.session_id}-{name}-{secrets.token_hex(2)}"
        self.made.append(ws)
        return await self.dh.workspaces.create(
            host=self.host,
            workspace_id=ws,
            image=self.image,  # its own command: busybox httpd on 8080
            labels={TEST_LABEL: self.session_id},
            discovery={"domain": f"{ws}.example.test", "port": 8080},
        )

    async def remove_all(self) -> None:
        for ws in self.made:
            await self.dh.workspaces.remove(ws, force=True, host=self.host)


def on_host(view: DiscoveryView, host: str) -> set[str]:
    return {cid for h, cid in view.services if h == host}


async def truth(dh: Client, host: str) -> set[str]:
    return {s.container_id for s in (await dh.discovery.list(host=host)).services}


async def converge(view: DiscoveryView, dh: Client, host: str, timeout: float = 30) -> None:
    """Wait until the view's services of ``host`` are what ``discovery.list`` says (all of the
    daemon's discoverable containers: other tests' too, which come and go meanwhile)."""
    deadline = time.monotonic() + timeout
    while True:
        listed = await truth(dh, host)
        seen = on_host(view, host)
        if seen == listed:
            return
        if time.monotonic() > deadline:
            raise AssertionError(
                f"view != discovery.list: only in the view {seen - listed}, only listed {listed - seen}"
            )
        await asyncio.sleep(0.2)


async def next_change(changes: AsyncIterator[ServiceChange], kind: str, container_id: str) -> ServiceChange:
    """The next change of ``kind`` for ``container_id`` (others are skipped)."""
    while True:
        change = await asyncio.wait_for(anext(changes), 30)
        if change.kind == kind and change.service.container_id == container_id:
            return change


async def test_view_lists_what_exists_then_follows_added_and_removed(
    dh: Client, worker: WorkerProcess, session_id: str, test_image: str
) -> None:
    made = Workspaces(dh, session_id, test_image)
    added: list[ServiceChange] = []
    removed: list[ServiceChange] = []
    try:
        first = await made.create("v1")
        # Fleet-wide (no hosts): start-up asks every host with target `all`.
        async with DiscoveryView(dh, on_add=added.append, on_remove=removed.append) as view:
            assert (worker.host_id, first.container_id) in view.services
            assert f"{first.workspace_id}.example.test" in view.domains()
            changes = view.changes()

            second = await made.create("v2")
            change = await next_change(changes, "added", second.container_id)
            assert change.host_id == worker.host_id
            assert change.service.domain == f"{second.workspace_id}.example.test"
            assert change.service.networks  # an address on the worker's default network
            assert second.container_id in {c.service.container_id for c in added}
            assert (worker.host_id, second.container_id) in view.services

            await dh.workspaces.stop(second.workspace_id, timeout_s=1)
            await next_change(changes, "removed", second.container_id)
            assert second.container_id in {c.service.container_id for c in removed}
            assert (worker.host_id, second.container_id) not in view.services
            assert (worker.host_id, first.container_id) in view.services
            await converge(view, dh, worker.host_id)
    finally:
        await made.remove_all()


def subscription_queue(prefix: str, routing_key: str) -> str:
    """The server-named queue bound to ``<prefix>.events`` with ``routing_key`` (the view's)."""
    out = subprocess.run(
        ["rabbitmqctl", "-q", "list_bindings", "--no-table-headers", "source_name", "destination_name", "routing_key"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    found = [
        parts[1]
        for line in out.splitlines()
        if len(parts := line.split("\t")) == 3 and parts[0] == f"{prefix}.events" and parts[2] == routing_key
    ]
    assert len(found) == 1, f"bindings of {routing_key} on {prefix}.events: {found}"
    return found[0]


async def test_a_view_whose_subscription_lost_messages_notices_the_gap_by_seq_and_converges(
    workers: WorkerFactory, session_id: str, test_image: str
) -> None:
    worker = workers.start("vgap", **QUIET)
    host = worker.host_id
    async with Client.connect(AMQP_URL, prefix=worker.prefix, host=host) as dh:
        made = Workspaces(dh, session_id, test_image)
        try:
            async with DiscoveryView(dh, hosts=[host]) as view, listen(worker.prefix) as log:
                # Mid-stream: the view has had a delta (a seq) since it listed the host. (A list
                # carries no seq, so a loss right after one shows only at the next snapshot.)
                first = await made.create("g1")
                await until(lambda: first.container_id in on_host(view, host), "the view has the first workspace")
                assert view._tracks[host].seq is not None
                # The view's queue stops getting the host's discovery messages for a while: what a
                # purge, a broker hiccup or a lost route does. An exclusive queue may be changed only
                # through its own connection, which the view shares with the client.
                queue_name = subscription_queue(worker.prefix, f"{host}.discovery.#")
                channel = await dh._link.connection.channel()  # type: ignore[union-attr]
                queue = await channel.get_queue(queue_name, ensure=False)
                await queue.unbind(f"{worker.prefix}.events", f"{host}.discovery.#")

                lost = await made.create("g2")  # its discovery.added goes out and is lost to the view
                published = await log.wait_for(f"{host}.discovery.added", service_of(lost.container_id))
                assert isinstance(published[0].get("seq"), int), "the worker publishes seq"
                await asyncio.sleep(0.5)
                assert lost.container_id not in on_host(view, host)  # it really missed it

                await queue.bind(f"{worker.prefix}.events", f"{host}.discovery.#")
                resyncs = view.resyncs
                # The next message's seq is past the one the view saw last: it lists the host again.
                await dh.workspaces.stop(first.workspace_id, timeout_s=1)
                await until(
                    lambda: lost.container_id in on_host(view, host) and first.container_id not in on_host(view, host),
                    "the view converges after the gap",
                    detail=lambda: (on_host(view, host), view.resyncs, view._tracks, log.kinds()),
                )
                assert view.resyncs > resyncs
                # Other containers on the same daemon come and go meanwhile: the view follows them too.
                await converge(view, dh, host)
                await channel.close()
        finally:
            await made.remove_all()
    worker.stop()


async def test_a_new_epoch_after_a_worker_restart_makes_the_view_list_again(
    workers: WorkerFactory, session_id: str, test_image: str
) -> None:
    current = workers.start("vepoch", **QUIET)
    host = current.host_id
    async with Client.connect(AMQP_URL, prefix=current.prefix, host=host) as dh:
        made = Workspaces(dh, session_id, test_image)
        try:
            async with listen(current.prefix) as log, DiscoveryView(dh, hosts=[host]) as view:
                gone = await made.create("e1")
                kept = await made.create("e2")
                await until(lambda: {gone.container_id, kept.container_id} <= on_host(view, host), "both listed")
                old_epoch = (await log.wait_for(f"{host}.discovery.added", service_of(kept.container_id)))[0]["epoch"]
                assert old_epoch

                current.stop()
                # While no worker publishes for the host, one service goes away unannounced.
                stopped = await asyncio.create_subprocess_exec("docker", "stop", "-t", "1", gone.container_id)
                assert await stopped.wait() == 0
                resyncs = view.resyncs
                current = workers.start("vepoch", **QUIET)
                # The restarted worker announces what runs under a new epoch.
                again = await log.wait_for(
                    f"{host}.discovery.added",
                    lambda b: service_of(kept.container_id)(b) and b.get("epoch") != old_epoch,
                )
                new_epoch = again[0]["epoch"]
                assert again[0]["seq"] >= 1
                await until(
                    lambda: kept.container_id in on_host(view, host) and gone.container_id not in on_host(view, host),
                    "the view converges",
                )
                assert view.resyncs > resyncs
                assert view._tracks[host].epoch == new_epoch
                await converge(view, dh, host)
        finally:
            if current.proc.poll() is None:
                await made.remove_all()
                current.stop()


async def test_hosts_view_sees_a_worker_up_and_then_stale(workers: WorkerFactory) -> None:
    worker = workers.start("vhealth", DOCKHAND_HEALTH_INTERVAL_S="1")
    host = worker.host_id
    async with (
        Client.connect(AMQP_URL, prefix=worker.prefix) as dh,
        HostsView(dh, hosts=[host], stale_after_s=3) as view,
    ):
        await view.wait_for(lambda v: host in v.up(), timeout=15)
        state = view.host(host)
        assert state is not None
        assert state.role == "active"
        # The worker's own status word, whatever it is: on a loaded machine a healthy worker may
        # report "degraded" (slow Docker answers); what is tested here is up, then stale.
        assert state.status == state.heartbeat.status
        assert state.status in {"healthy", "degraded"}
        assert state.worker_id
        assert state.heartbeat.host_id == host
        assert [w.host_id for w in view.workers()] == [host]

        worker.stop()
        stopped = time.monotonic()
        await view.wait_for(lambda v: host not in v.up(), timeout=15)  # no message says so: time does
        assert time.monotonic() - stopped < 10
        last = view.host(host)
        assert last is not None
        assert last.age_s > 3


async def test_a_view_whose_queue_is_deleted_subscribes_again_and_lists_again(
    dh: Client, worker: WorkerProcess
) -> None:
    async with DiscoveryView(dh, hosts=[worker.host_id]) as view:
        queue_name = subscription_queue(worker.prefix, f"{worker.host_id}.discovery.#")
        resyncs = view.resyncs
        # An operator (or a broker policy) deletes the queue: the broker cancels its consumer.
        deleted = await asyncio.create_subprocess_exec("rabbitmqctl", "-q", "delete_queue", queue_name)
        assert await deleted.wait() == 0
        await until(lambda: view.resyncs > resyncs, "the view subscribes and lists again", timeout=10)
        assert subscription_queue(worker.prefix, f"{worker.host_id}.discovery.#") != queue_name
