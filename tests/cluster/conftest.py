"""Fixtures for the cluster tests: a real 3-node RabbitMQ cluster (scripts/cluster.sh) next to the
main broker, workers given all three nodes, and fault injection by node (kill -9, stop_app).

Marker ``cluster`` (added to every test here): ``scripts/test`` skips these unless
``DOCKHAND_TEST_CLUSTER=1`` or ``DOCKHAND_TEST_FAULTS=1`` (which ``.ci/run`` sets). The cluster is
started if it is not running and stopped again at the end if this session started it
(``DOCKHAND_TEST_CLUSTER_KEEP=1`` leaves it running). The measured figures of every fault are
printed in the terminal summary and appended to ``<cluster dir>/figures.jsonl``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aio_pika
import pytest

# tests/ is on sys.path (tests/integration is a package): the integration suite's worker factory.
from integration.conftest import REPO, WorkerFactory, WorkerProcess

SCRIPT = REPO / "scripts" / "cluster.sh"
CLUSTER_DIR = Path(os.environ.get("DOCKHAND_CLUSTER_DIR", REPO / ".cache" / "cluster"))
NODES = (1, 2, 3)
PORTS = {n: int(os.environ.get("DOCKHAND_CLUSTER_PORT", "5701")) + n - 1 for n in NODES}
FIGURES: list[dict[str, Any]] = []


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "cluster" in item.path.parts:
            item.add_marker(pytest.mark.cluster)
            item.add_marker(pytest.mark.docker)
            item.add_marker(pytest.mark.rabbitmq)
            item.add_marker(pytest.mark.slow)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not FIGURES:
        return
    terminalreporter.section("cluster fault figures (issue 12)")
    terminalreporter.write_line(
        "| fault | commands sent | answered late (> 60 s) | longest gap | back on a node | attempt > 1 | copies |"
    )
    terminalreporter.write_line("|---|---|---|---|---|---|---|")
    for f in FIGURES:
        back = f"{f['back_s']:.2f} s" if f.get("back_s") is not None else "-"
        terminalreporter.write_line(
            f"| {f['fault']} | {f['sent']} | {f['late']} | {f['longest_gap_s']:.2f} s | {back} "
            f"| {f['retried']} | {f['copies']} |"
        )


def node_url(n: int) -> str:
    # guest: RabbitMQ lets it in over loopback only, which is where the cluster listens.
    return f"amqp://guest:guest@127.0.0.1:{PORTS[n]}/"


def urls(nodes: tuple[int, ...] = NODES) -> str:
    return ",".join(node_url(n) for n in nodes)


def node_of(label: str | None) -> int | None:
    """The node number of a ``host:port`` label (readiness, heartbeat)."""
    if label is None:
        return None
    port = int(label.rsplit(":", 1)[1])
    return next((n for n, p in PORTS.items() if p == port), None)


class Cluster:
    """``scripts/cluster.sh`` from Python."""

    def sh(self, *args: str, timeout: float = 180, check: bool = True) -> str:
        out = subprocess.run(
            ["bash", str(SCRIPT), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            env={**os.environ, "DOCKHAND_CLUSTER_DIR": str(CLUSTER_DIR)},
        )
        if check and out.returncode != 0:
            raise AssertionError(f"cluster.sh {' '.join(args)} failed ({out.returncode}):\n{out.stdout}{out.stderr}")
        return out.stdout

    def status(self) -> dict[int, str]:
        """Node -> ``running`` / ``app stopped`` / ``down``."""
        states = {}
        for line in self.sh("status").splitlines():
            name = line.split()[0]
            n = int(name.split("@")[0].removeprefix("dockhand-c"))
            states[n] = "down" if line.endswith("down") else ("app stopped" if "app stopped" in line else "running")
        return states

    def all_running(self) -> bool:
        return all(state == "running" for state in self.status().values())

    def kill(self, n: int) -> float:
        """kill -9 node n's VM; the monotonic time of the kill."""
        pid = int(self.sh("pid", str(n)).strip())
        t = time.monotonic()
        # Ours: started by cluster.sh, the pid from the node's pidfile. Its helper processes exit
        # with it; `cluster.sh start N` (heal) finds none left.
        os.kill(pid, 9)
        return t

    def start(self, n: int) -> None:
        self.sh("start", str(n))

    def stop_app(self, n: int) -> float:
        t = time.monotonic()
        self.sh("stop_app", str(n))
        return t

    def start_app(self, n: int) -> None:
        self.sh("start_app", str(n))

    def heal(self) -> None:
        """Every node running, its app started."""
        for n, state in self.status().items():
            if state == "down":
                self.start(n)
            elif state == "app stopped":
                self.start_app(n)

    def leader(self, queue: str) -> int:
        """The node that leads quorum queue ``queue`` now."""
        alive = next(n for n, s in self.status().items() if s == "running")
        for line in self.sh("ctl", str(alive), "-q", "list_queues", "name", "leader").splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[0] == queue:
                return int(parts[1].split("@")[0].removeprefix("dockhand-c"))
        raise AssertionError(f"queue {queue} has no leader")

    def move_leader_off(self, queue: str, n: int) -> None:
        """Make another node lead ``queue``: remove node n's member (a new election among the
        others) and add it back as a follower."""
        alive = next(m for m, s in self.status().items() if s == "running" and m != n)
        node = self.sh("node", str(n)).strip()
        self.sh("queues", str(alive), "delete_member", "-p", "/", queue, node)
        self.sh("queues", str(alive), "add_member", "-p", "/", queue, node)

    def sync_ra_names(self) -> None:
        """Flush Ra's name table on every node: a quorum queue declared less than ~3 s before a
        kill -9 otherwise comes back broken on that node (see tests/integration/rabbit2.py)."""
        for n, state in self.status().items():
            if state == "running":
                self.sh("ctl", str(n), "-q", "eval", "ok = dets:sync(ra_directory_reverse).")


@pytest.fixture(scope="session")
def session_id() -> str:
    return secrets.token_hex(3)


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    c = Cluster()
    was_running = c.all_running()
    t0 = time.monotonic()
    c.sh("start", timeout=300)
    if not was_running:
        print(f"cluster started in {time.monotonic() - t0:.1f} s")
    try:
        yield c
    finally:
        if not was_running and os.environ.get("DOCKHAND_TEST_CLUSTER_KEEP") != "1":
            c.sh("stop", timeout=300, check=False)


class ClusterWorkers(WorkerFactory):
    """Workers on the cluster (all three nodes), cleaned up there."""

    def start(self, name: str = "a", *, wait: bool = True, **overrides: str) -> WorkerProcess:
        return super().start(name, wait=wait, **{"DOCKHAND_AMQP_URL": urls(), **overrides})

    def cleanup(self) -> None:
        for worker in self.workers:
            worker.stop()
        asyncio.run(delete_topology(self.prefix, sorted({w.host_id for w in self.workers})))


async def delete_topology(prefix: str, host_ids: list[str]) -> None:
    for n in NODES:
        try:
            connection = await aio_pika.connect(node_url(n), timeout=5)
        except Exception as exc:
            print(f"cleanup: node {n} unreachable ({exc}); trying the next")
            continue
        async with connection:
            channel = await connection.channel()
            queues = [f"{prefix}.commands.{h}" for h in host_ids]
            queues += [f"{prefix}.commands.any", f"{prefix}.commands.dead"]
            for queue in queues:
                with contextlib.suppress(Exception):
                    await channel.queue_delete(queue)
            for name in ("commands", "results", "events", "health", "dead"):
                with contextlib.suppress(Exception):
                    await channel.exchange_delete(f"{prefix}.{name}")
        return


@pytest.fixture
def cluster_workers(
    cluster: Cluster, session_id: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ClusterWorkers]:
    """A worker factory per test (own prefix), with every node of the cluster up before."""
    cluster.heal()
    factory = ClusterWorkers(f"{session_id}{len(FIGURES):02d}", tmp_path_factory.mktemp("cworkers"))
    try:
        yield factory
    finally:
        factory.cleanup()
        cluster.heal()


@dataclass
class Figures:
    """What one fault trial measured (the issue's table, one row)."""

    fault: str
    sent: int
    late: int
    longest_gap_s: float
    back_s: float | None
    retried: int
    copies: int

    def record(self) -> None:
        row = self.__dict__ | {"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        FIGURES.append(row)
        with contextlib.suppress(OSError), (CLUSTER_DIR / "figures.jsonl").open("a") as f:
            f.write(json.dumps(row) + "\n")
        print(f"CLUSTER FIGURES {json.dumps(row)}")
