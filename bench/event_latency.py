"""Event latency: how long after Docker does the worker publish container and discovery events?

Starts its own worker (unique host id, exchange prefix and network), a private queue on
``<prefix>.events`` bound before the worker starts, and a direct Docker ``/events`` subscriber
in this process as the baseline. Then it runs N labelled containers, stops and removes them,
and compares arrival times on one clock (``time.perf_counter``):

    container.start   (AMQP) - start (direct Docker stream)
    discovery.added   (AMQP) - start (direct)
    discovery.removed (AMQP) - die   (direct)
    direct arrival - Docker's timeNano (wall clock): the baseline's own delay, as context

Run: .venv/bin/python bench/event_latency.py [--containers N] [--rounds R] [--concurrency C]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import secrets
import signal
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aio_pika
import aio_pika.abc
import aiodocker
import aiohttp

from dockhand.client import Client

AMQP_URL = os.environ.get("DOCKHAND_TEST_AMQP_URL", "amqp://guest:guest@localhost:5672/")
IMAGE = os.environ.get("DOCKHAND_TEST_IMAGE", "dockhand-test/busybox:latest")
SESSION_LABEL = "dockhand-test.session"
REPO = Path(__file__).resolve().parents[1]
TARGET_P99_ADDED_MS = 5.0
WAIT_S = 120.0


@dataclass
class Recorder:
    """Arrival times (perf_counter) of direct Docker events and of the worker's AMQP messages."""

    direct: dict[tuple[str, str], float] = field(default_factory=dict)  # (container id, action)
    docker_lag_ms: dict[tuple[str, str], float] = field(default_factory=dict)  # wall arrival - timeNano
    amqp: defaultdict[tuple[str, str], list[float]] = field(default_factory=lambda: defaultdict(list))  # (id, type)
    startup_snapshot: asyncio.Event = field(default_factory=asyncio.Event)
    stream_live: asyncio.Event = field(default_factory=asyncio.Event)

    async def on_amqp(self, message: aio_pika.abc.AbstractIncomingMessage) -> None:
        arrived = time.perf_counter()
        body = json.loads(message.body)
        if (message.routing_key or "").endswith(".discovery.snapshot") and body.get("reason") == "startup":
            self.startup_snapshot.set()
        subject = body.get("service") or body.get("container") or {}
        container_id = subject.get("container_id") or subject.get("id")
        if container_id:
            self.amqp[(container_id, body.get("type", ""))].append(arrived)

    async def watch_docker(self, docker: aiodocker.Docker, session: str) -> None:
        """The baseline: Docker's own event stream, read line by line (no queue in between)."""
        filters = {"type": ["container"], "label": [f"{SESSION_LABEL}={session}"]}
        timeout = aiohttp.ClientTimeout(total=None, sock_read=None, connect=10)
        params = {"filters": json.dumps(filters)}
        async with docker._query("events", method="GET", params=params, timeout=timeout) as response:
            self.stream_live.set()
            async for line in response.content:
                arrived, wall = time.perf_counter(), time.time()
                if not line.strip():
                    continue
                event = json.loads(line)
                key = ((event.get("Actor") or {}).get("ID", ""), event.get("Action", ""))
                if key not in self.direct:
                    self.direct[key] = arrived
                    self.docker_lag_ms[key] = (wall - int(event["timeNano"]) / 1e9) * 1000

    def dump(self, ids: list[str]) -> list[dict[str, Any]]:
        """Raw arrivals per container (perf_counter is CLOCK_MONOTONIC: comparable across processes)."""
        return [
            {
                "id": cid,
                "direct": {a: t for (c, a), t in self.direct.items() if c == cid},
                "amqp": {k: ts for (c, k), ts in self.amqp.items() if c == cid},
            }
            for cid in ids
        ]

    def done(self, ids: list[str], kind: str) -> bool:
        return all((cid, kind) in self.amqp for cid in ids)


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile (with N=50, p99 is the maximum)."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


async def wait_until(check: Callable[[], bool], what: str, within_s: float = WAIT_S) -> None:
    deadline = time.monotonic() + within_s
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {within_s:.0f} s waiting for {what}")
        await asyncio.sleep(0.02)


async def run_round(docker: aiodocker.Docker, rec: Recorder, session: str, n: int, concurrency: int) -> list[str]:
    """Start, stop and remove N labelled containers; return their ids."""
    limit = asyncio.Semaphore(concurrency)
    containers: list[Any] = []

    async def start_one(i: int) -> None:
        async with limit:
            config: dict[str, Any] = {
                "Image": IMAGE,
                "Labels": {
                    SESSION_LABEL: session,
                    "dockhand.enabled": "true",
                    "dockhand.domain": f"{session}-{secrets.token_hex(3)}-{i}.example.test",
                    "dockhand.port": "8080",
                },
                "ExposedPorts": {"8080/tcp": {}},
                "HostConfig": {"PortBindings": {"8080/tcp": [{"HostIp": "127.0.0.1", "HostPort": ""}]}},
            }
            container = await docker.containers.create(config)
            containers.append(container)
            await container.start()

    async def stop_one(container: Any) -> None:
        async with limit:
            await container.stop(t=5)

    await asyncio.gather(*(start_one(i) for i in range(n)))
    ids = [c.id for c in containers]
    await wait_until(lambda: rec.done(ids, "discovery.added"), "discovery.added of every container")
    await asyncio.gather(*(stop_one(c) for c in containers))
    await wait_until(lambda: rec.done(ids, "discovery.removed"), "discovery.removed of every container")
    await asyncio.gather(*(c.delete(force=True) for c in containers))
    # The worker has drained the round once every destroy is out; duplicates would be in by then.
    await wait_until(lambda: rec.done(ids, "container.destroy"), "container.destroy of every container")
    await asyncio.sleep(0.5)
    return ids


def report(rec: Recorder, ids: list[str], title: str) -> bool:
    """Print one round's table and the target verdict; True when every count is N and no dups."""
    rows: list[tuple[str, str, str, list[float]]] = [
        ("container.start  - docker start", "container.start", "start", []),
        ("discovery.added  - docker start", "discovery.added", "start", []),
        ("discovery.removed - docker die", "discovery.removed", "die", []),
    ]
    print(f"\n{title}")
    print(f"{'measure (ms)':34} {'count':>9} {'dups':>5} {'p50':>8} {'p90':>8} {'p99':>8} {'max':>8}")
    complete = True
    for label, kind, action, deltas in rows:
        dups = 0
        for cid in ids:
            arrivals, base = rec.amqp.get((cid, kind), []), rec.direct.get((cid, action))
            dups += max(0, len(arrivals) - 1)
            if arrivals and base is not None:
                deltas.append((arrivals[0] - base) * 1000)
        print_row(label, deltas, len(ids), dups)
        complete = complete and dups == 0 and len(deltas) == len(ids)
    lag = [rec.docker_lag_ms[(cid, a)] for cid in ids for a in ("start", "die") if (cid, a) in rec.docker_lag_ms]
    print_row("direct start/die - timeNano", lag, 2 * len(ids), None)
    added = rows[1][3]
    met = bool(added) and len(added) == len(ids) and percentile(added, 99) <= TARGET_P99_ADDED_MS
    p99 = f"{percentile(added, 99):.2f} ms" if added else "n/a"
    print(f"target: p99 discovery.added <= {TARGET_P99_ADDED_MS:g} ms -> {'MET' if met else 'NOT MET'} (p99 {p99})")
    return complete


def print_row(label: str, deltas: list[float], expected: int, dups: int | None) -> None:
    figures = [f"{percentile(deltas, p):8.2f}" for p in (50, 90, 99, 100)] if deltas else [f"{'-':>8}"] * 4
    print(f"{label:34} {f'{len(deltas)}/{expected}':>9} {'' if dups is None else dups:>5} {' '.join(figures)}")


async def stop(worker: asyncio.subprocess.Process) -> int | None:
    """SIGTERM (the worker drains and exits 0); SIGKILL after 60 s, reported as None."""
    if worker.returncode is None:
        worker.send_signal(signal.SIGTERM)
    try:
        return await asyncio.wait_for(worker.wait(), 60)
    except TimeoutError:
        worker.kill()
        await worker.wait()
        return None


async def cleanup(docker: aiodocker.Docker, channel: Any, prefix: str, host_id: str, session: str) -> None:
    for container in await docker.containers.list(all=True, filters={"label": [f"{SESSION_LABEL}={session}"]}):
        with contextlib.suppress(aiodocker.DockerError):
            await container.delete(force=True)
    for network in await docker.networks.list(filters={"label": [f"dockhand.host={host_id}"]}):
        with contextlib.suppress(aiodocker.DockerError):
            await (await docker.networks.get(network["Id"])).delete()
    for queue in (f"{prefix}.commands.{host_id}", f"{prefix}.commands.any", f"{prefix}.commands.dead"):
        with contextlib.suppress(Exception):
            await channel.queue_delete(queue)
    for name in ("commands", "results", "events", "health", "dead"):
        with contextlib.suppress(Exception):
            await channel.exchange_delete(f"{prefix}.{name}")


async def follow(client: Client, rec: Recorder, bound: asyncio.Event) -> None:
    """Every message of ``<prefix>.events`` into ``rec``, through the client's subscription.

    ``subscribe`` (raw messages), not ``events()``: the arrival is stamped before anything parses
    the body, as with the callback consumer this replaced. Its iterator hands each message over
    through a queue, one loop hop, as aio-pika's callback consumer does through a task of its own.
    """

    async def on_connect() -> None:
        bound.set()

    async for message in client.subscribe([("events", "#")], on_connect=on_connect):
        await rec.on_amqp(message)


async def main(n: int, rounds: int, concurrency: int, dump: Path | None) -> int:
    tag = secrets.token_hex(3)
    host_id, prefix, session = f"bench-{tag}", f"dhbench-{tag}", f"bench-{tag}"
    env = {
        **os.environ,
        "DOCKHAND_AMQP_URL": AMQP_URL,
        "DOCKHAND_HOST_ID": host_id,
        "DOCKHAND_EXCHANGE_PREFIX": prefix,
        "DOCKHAND_DEFAULT_NETWORK": f"dhbench-{tag}",
        "DOCKHAND_LOG_LEVEL": "WARNING",
    }
    log_path = Path(tempfile.gettempdir()) / f"dhbench-{tag}-worker.log"
    rec, ok = Recorder(), True
    dumped: list[dict[str, Any]] = []
    docker = aiodocker.Docker()
    client = Client(AMQP_URL, prefix=prefix, name="dhbench-event-latency")
    connection = await aio_pika.connect(AMQP_URL)  # for the clean-up of the prefix's queues and exchanges
    channel = await connection.channel()
    worker: asyncio.subprocess.Process | None = None
    watcher = asyncio.create_task(rec.watch_docker(docker, session))
    bound = asyncio.Event()
    # Bound before the worker starts (the client declares the exchange if it does not exist yet).
    follower = asyncio.create_task(follow(client, rec, bound))
    try:
        await asyncio.wait_for(bound.wait(), 10)
        await asyncio.wait_for(rec.stream_live.wait(), 10)
        with log_path.open("wb") as log:
            worker = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "dockhand.worker", cwd=REPO, env=env, stdout=log, stderr=asyncio.subprocess.STDOUT
            )
        # " ready: host " is logged at INFO, which WARNING hides: the startup snapshot (event
        # pipeline live, first reconcile done) is the readiness signal that always comes.
        proc = worker
        await wait_until(
            lambda: (
                proc.returncode is not None
                or rec.startup_snapshot.is_set()
                or " ready: host " in log_path.read_text(errors="replace")
            ),
            "worker readiness",
            30,
        )
        if proc.returncode is not None:
            raise RuntimeError(f"worker exited with {proc.returncode}:\n{log_path.read_text(errors='replace')[-3000:]}")
        await wait_until(rec.startup_snapshot.is_set, "startup discovery snapshot", 30)
        print(f"worker {host_id} (prefix {prefix}) ready; image {IMAGE}; log {log_path}")
        for r in range(1, rounds + 1):
            ids = await run_round(docker, rec, session, n, concurrency)
            load = " ".join(f"{x:.2f}" for x in os.getloadavg())
            title = f"round {r}/{rounds}: {n} containers, concurrency {concurrency}, load average {load}"
            ok = report(rec, ids, title) and ok
            dumped.extend(rec.dump(ids))
        if dump is not None:
            await asyncio.to_thread(dump.write_text, json.dumps(dumped))
    finally:
        for task in (watcher, follower):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await client.close()
        if worker is not None:
            code = await stop(worker)
            print(f"worker exit code {code} ({'ok' if code == 0 else 'FAILED, see ' + str(log_path)})")
            ok = ok and code == 0
        await cleanup(docker, channel, prefix, host_id, session)
        await connection.close()
        await docker.close()
    return 0 if ok else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--containers", type=int, default=50, help="containers per round (default 50)")
    parser.add_argument("--rounds", type=int, default=1, help="rounds, each printed (default 1)")
    parser.add_argument("--concurrency", type=int, default=1, help="Docker calls in flight (default 1)")
    parser.add_argument("--dump", type=Path, help="write the raw arrival times (JSON) here")
    args = parser.parse_args()
    sys.exit(asyncio.run(main(args.containers, args.rounds, args.concurrency, args.dump)))
