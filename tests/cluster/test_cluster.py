"""Issue 12 on a real 3-node RabbitMQ cluster: a worker given all three nodes loses no time and no
command when any node dies.

Each trial sends ``discovery.list`` every 100 ms through a :class:`dockhand.client.Client` on the
nodes that stay up, injects one fault, keeps sending while the node is down
(``DOCKHAND_TEST_CLUSTER_DOWN_S``, default 10 s), brings the node back and keeps sending a little
longer. It then checks: every command answered (none later than 60 s), no gap between two answers
longer than 5 s, the worker consuming on a surviving node within 5 s (from its readiness endpoint:
``node`` and ``consuming``), the same worker process throughout, and copies of one answer (the
contract's at-least-once) telling the same outcome. The figures go to the terminal summary (the
issue's table).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import signal
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest

from dockhand.client import Client, Retry

from .conftest import NODES, Cluster, ClusterWorkers, Figures, WorkerProcess, node_of, urls

DOWN_S = float(os.environ.get("DOCKHAND_TEST_CLUSTER_DOWN_S", "10"))
INTERVAL_S = 0.1
MAX_GAP_S = 5.0
BACK_WITHIN_S = 5.0
LATE_S = 60.0


async def readiness(worker: WorkerProcess) -> dict[str, Any]:
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as http,
        http.get(worker.http_url + "/readyz") as response,
    ):
        body: dict[str, Any] = await response.json()
        return body


async def wait_consuming(
    worker: WorkerProcess, *, not_on: int | None = None, timeout: float = 30, since: float | None = None
) -> tuple[int, float]:
    """Wait until ``worker`` consumes on a node other than ``not_on``: (node, seconds since ``since``)."""
    since = time.monotonic() if since is None else since
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        with contextlib.suppress(aiohttp.ClientError, TimeoutError, ValueError):
            last = await readiness(worker)
            node = node_of(last.get("node"))
            if last.get("consuming") and node is not None and node != not_on:
                return node, time.monotonic() - since
        assert worker.proc.poll() is None, f"the worker exited:\n{worker.log()[-3000:]}"
        await asyncio.sleep(0.05)
    raise AssertionError(f"worker not consuming off node {not_on} within {timeout} s: {last}\n{worker.log()[-3000:]}")


@dataclass
class Traffic:
    """``discovery.list`` every 100 ms to ``host`` through ``dh``; every reply's arrival."""

    dh: Client
    host: str
    sent: dict[str, float] = field(default_factory=dict)
    answers: dict[str, list[tuple[float, dict[str, Any]]]] = field(default_factory=dict)
    send_errors: list[str] = field(default_factory=list)
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)
    _loop: asyncio.Task[None] | None = None
    _stop: asyncio.Event = field(default_factory=asyncio.Event)

    def start(self) -> None:
        self._loop = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while not self._stop.is_set():
            command_id = uuid.uuid4().hex
            body = json.dumps({"command_id": command_id, "type": "discovery.list"}).encode()
            box = self.dh.expect(command_id)
            self.sent[command_id] = time.monotonic()
            try:
                await self.dh.publish_raw(body, f"{self.host}.discovery.list", correlation_id=command_id)
            except Exception as exc:
                self.send_errors.append(f"{type(exc).__name__}: {exc}")
            task = asyncio.create_task(self._collect(command_id, box))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(INTERVAL_S):
                    await self._stop.wait()

    async def _collect(self, command_id: str, box: asyncio.Queue[bytes]) -> None:
        deadline = self.sent[command_id] + LATE_S
        with contextlib.suppress(TimeoutError):
            while True:
                async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                    raw = await box.get()
                self.answers.setdefault(command_id, []).append((time.monotonic(), json.loads(raw)))

    async def finish(self) -> None:
        """Stop sending and wait for every answer (60 s at most per command)."""
        assert self._loop is not None
        self._stop.set()  # not a cancel: a command is either sent and counted, or neither
        await self._loop
        # Answers still arriving, and copies a moment after them: wait until the last one is due.
        deadline = time.monotonic() + LATE_S
        while any(c not in self.answers for c in self.sent) and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        await asyncio.sleep(2)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def figures(self, fault: str, back_s: float | None) -> Figures:
        firsts = sorted(replies[0][0] for replies in self.answers.values())
        start, end = min(self.sent.values()), max(self.sent.values())
        # The longest time without any answer while commands were being sent.
        points = [start, *[t for t in firsts if t <= end + MAX_GAP_S], end]
        gap = max((b - a for a, b in itertools.pairwise(points)), default=0.0)
        return Figures(
            fault=fault,
            sent=len(self.sent),
            late=sum(1 for c in self.sent if c not in self.answers),
            longest_gap_s=round(gap, 2),
            back_s=round(back_s, 2) if back_s is not None else None,
            retried=sum(1 for replies in self.answers.values() if replies[0][1].get("attempt", 1) > 1),
            copies=sum(len(replies) - 1 for replies in self.answers.values()),
        )

    def check(self, figures: Figures) -> None:
        assert not self.send_errors, f"publishing through a surviving node failed: {self.send_errors[:5]}"
        unanswered = [
            f"{c} (sent at +{t - min(self.sent.values()):.2f} s)" for c, t in self.sent.items() if c not in self.answers
        ]
        assert figures.late == 0, (
            f"{figures.late} of {figures.sent} commands unanswered within {LATE_S} s: {unanswered[:10]}"
        )
        assert figures.longest_gap_s <= MAX_GAP_S, f"a {figures.longest_gap_s} s gap in answers: {figures}"
        for command_id, replies in self.answers.items():
            outcomes = {(r["status"], json.dumps(r.get("result"), sort_keys=True)) for _, r in replies}
            statuses = {r["status"] for _, r in replies}
            assert statuses == {"succeeded"}, f"{command_id}: {[r for _, r in replies]}"
            assert len(outcomes) == 1 or len(replies) == 1, f"copies of {command_id} differ: {replies}"


@contextlib.asynccontextmanager
async def traffic(worker: WorkerProcess, nodes: tuple[int, ...]) -> AsyncIterator[Traffic]:
    """Commands to ``worker`` through a client on ``nodes`` (the ones the trial leaves up)."""
    async with Client(urls(nodes), prefix=worker.prefix, host=worker.host_id, retry=Retry.off()) as dh:
        t = Traffic(dh, worker.host_id)
        t.start()
        try:
            yield t
        finally:
            await t.finish()


async def start_worker(workers: ClusterWorkers, cluster: Cluster, name: str = "a") -> tuple[WorkerProcess, int]:
    worker = workers.start(name)
    node, _ = await wait_consuming(worker)
    # The worker declared its quorum queues just now: flush Ra's names before any kill (conftest).
    await asyncio.to_thread(cluster.sync_ra_names)
    return worker, node


def others(*nodes: int) -> tuple[int, ...]:
    return tuple(n for n in NODES if n not in nodes)


@pytest.mark.parametrize("fault", ["kill", "stop_app"])
async def test_the_workers_node_dies(fault: str, cluster: Cluster, cluster_workers: ClusterWorkers) -> None:
    worker, node = await start_worker(cluster_workers, cluster)
    async with traffic(worker, others(node)) as t:
        await asyncio.sleep(2)
        if fault == "kill":
            t_fault = await asyncio.to_thread(cluster.kill, node)
        else:
            t_fault = await asyncio.to_thread(cluster.stop_app, node)
        new_node, back_s = await wait_consuming(worker, not_on=node, since=t_fault)
        await asyncio.sleep(DOWN_S)
        await asyncio.to_thread(cluster.start if fault == "kill" else cluster.start_app, node)
        await asyncio.sleep(3)
    figures = t.figures(f"{fault} of the worker's node, down {DOWN_S:.0f} s", back_s)
    figures.record()
    t.check(figures)
    assert back_s <= BACK_WITHIN_S, f"the worker took {back_s:.1f} s to consume again (on node {new_node})"
    assert worker.proc.poll() is None


async def test_the_queue_leaders_node_dies(cluster: Cluster, cluster_workers: ClusterWorkers) -> None:
    worker, node = await start_worker(cluster_workers, cluster)
    queue = f"{worker.prefix}.commands.{worker.host_id}"
    if cluster.leader(queue) == node:  # the declaring node leads: move it, the worker stays put
        await asyncio.to_thread(cluster.move_leader_off, queue, node)
    leader = cluster.leader(queue)
    assert leader != node
    async with traffic(worker, others(leader)) as t:
        await asyncio.sleep(2)
        await asyncio.to_thread(cluster.kill, leader)
        await asyncio.sleep(DOWN_S)
        assert node_of((await readiness(worker))["node"]) == node, "the worker's own node did not fail"
        await asyncio.to_thread(cluster.start, leader)
        await asyncio.sleep(3)
    figures = t.figures(f"kill of the queue leader's node (worker on another), down {DOWN_S:.0f} s", None)
    figures.record()
    t.check(figures)


async def test_a_standby_on_another_node_takes_over(cluster: Cluster, cluster_workers: ClusterWorkers) -> None:
    active, node = await start_worker(cluster_workers, cluster)
    for _ in range(8):  # the node list is shuffled per worker: start standbys until one is elsewhere
        standby = cluster_workers.start("a")
        ready = await readiness(standby)
        if node_of(ready.get("node")) not in (node, None):
            break
        standby.stop()
    else:
        pytest.fail("8 standbys in a row connected to the active worker's node")
    standby_node = node_of(ready["node"])
    assert ready["consuming"] is False, f"the standby consumes: {ready}"
    async with traffic(active, others(node)) as t:
        await asyncio.sleep(2)
        t_fault = time.monotonic()
        active.proc.send_signal(signal.SIGKILL)  # the active worker dies with its node
        await asyncio.to_thread(cluster.kill, node)
        took_over_on, back_s = await wait_consuming(standby, not_on=node, since=t_fault)
        await asyncio.sleep(DOWN_S)
        await asyncio.to_thread(cluster.start, node)
        await asyncio.sleep(3)
    figures = t.figures(f"standby on node {standby_node} takes over (active killed with its node)", back_s)
    figures.record()
    t.check(figures)
    assert took_over_on != node
    assert back_s <= BACK_WITHIN_S, f"take-over took {back_s:.1f} s"


async def test_a_returning_node_is_used_without_a_worker_restart(
    cluster: Cluster, cluster_workers: ClusterWorkers
) -> None:
    worker, first = await start_worker(cluster_workers, cluster)
    pid = worker.proc.pid
    async with traffic(worker, others(first)) as t:
        await asyncio.sleep(2)
        await asyncio.to_thread(cluster.kill, first)
        second, _ = await wait_consuming(worker, not_on=first)
        await asyncio.to_thread(cluster.start, first)
        await asyncio.to_thread(cluster.sync_ra_names)
        assert cluster.all_running()
    # Now the node the worker moved to goes: the worker must be able to use the returned one.
    async with traffic(worker, others(second)) as t2:
        await asyncio.sleep(2)
        t_fault = await asyncio.to_thread(cluster.kill, second)
        third, back_s = await wait_consuming(worker, not_on=second, since=t_fault)
        await asyncio.sleep(3)
        await asyncio.to_thread(cluster.start, second)
        await asyncio.sleep(2)
    for trial, name in ((t, "first kill"), (t2, "second kill, after the first node returned")):
        figures = trial.figures(f"returning node: {name}", None)
        figures.record()
        trial.check(figures)
    assert back_s <= BACK_WITHIN_S
    assert third in others(second)
    assert worker.proc.pid == pid
    assert worker.proc.poll() is None


@pytest.mark.parametrize("fault", ["kill", "stop_app"])
async def test_the_client_survives_its_node_dying(
    fault: str, cluster: Cluster, cluster_workers: ClusterWorkers
) -> None:
    # The hardest case: the worker on the Client's node too (the Client tries the nodes in the
    # order given, so it starts on node 1); the worker's node list is shuffled: start until it is.
    for _ in range(10):
        worker, worker_node = await start_worker(cluster_workers, cluster)
        if worker_node == 1:
            break
        worker.stop()
    results: list[tuple[float, float, str]] = []  # (sent, answered, status)
    errors: list[str] = []
    # A retry budget of ~40 s: a channel that starts publishing to a quorum queue right after its
    # leader's node died can be refused (nack) for several seconds (seen: up to ~13 s on this
    # machine, RabbitMQ 3.10) until the cluster knows the new leader; the Client then retries.
    retry = Retry(attempts=12, reply_timeout_s=5, max_backoff_s=4)
    async with Client(urls(), prefix=worker.prefix, host=worker.host_id, retry=retry) as dh:
        assert dh.connected_url is not None
        client_node = node_of(dh.connected_url.split("@")[-1].rstrip("/"))
        assert client_node is not None

        async def call() -> None:
            sent = time.monotonic()
            try:
                result = await dh.request("discovery.list", timeout=LATE_S)
            except Exception as exc:
                errors.append(f"{type(exc).__name__}: {exc}")
                return
            results.append((sent, time.monotonic(), result.status))

        calls: list[asyncio.Task[None]] = []

        async def send(seconds: float) -> None:
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                calls.append(asyncio.create_task(call()))
                await asyncio.sleep(INTERVAL_S)

        await send(2)
        sender = asyncio.create_task(send(DOWN_S + 15))
        fault_at = cluster.kill if fault == "kill" else cluster.stop_app
        await asyncio.to_thread(fault_at, client_node)
        await asyncio.sleep(DOWN_S)
        await asyncio.to_thread(cluster.start if fault == "kill" else cluster.start_app, client_node)
        await sender
        await asyncio.gather(*calls)
    assert not errors, f"{len(errors)} calls failed: {errors[:5]}"
    answered = sorted(a for _, a, _ in results)
    gap = max(b - a for a, b in itertools.pairwise(answered))
    Figures(
        f"Client on the node that dies ({fault}; worker on node {worker_node})",
        len(calls),
        0,
        round(gap, 2),
        None,
        0,
        0,
    ).record()
    assert {s for _, _, s in results} == {"succeeded"}
    # No 5 s bound here: that is the worker's (above); the Client's gap is the broker's refusal
    # window plus its backoff, and is reported in the figures.
    assert gap <= LATE_S, f"a {gap:.1f} s gap in the Client's answers"
