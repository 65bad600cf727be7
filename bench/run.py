"""dockhand against the floor, direct aiodocker and Celery + docker-py, in one run, as ratios.

Brings up its own dockhand worker (unique host id, exchange prefix, network and state dir, at
WARNING), the floor (bench/peers/floor.py: the leanest aio-pika worker with the same guarantees
for an inspect, on its own host id under the same prefix) and a Celery worker from bench/peers/
(threads pool, on a RabbitMQ vhost of its own), then measures, every figure against a baseline
taken in the same run:

    P1  workspace.inspect round trip through dockhand and through the floor vs a direct aiodocker inspect (c=1)
    P2  workspace.inspect throughput at c=1, 16, 64, and worker CPU per inspect: dockhand / floor / direct / Celery
    P3  lifecycle throughput (create, start, stop, remove) at c=8: dockhand / direct / Celery
    P4  Docker event -> AMQP event latency (bench/event_latency.py's round, against this worker)
    P6  worker RSS: idle, and with 1,000 managed containers after workspace.list + discovery.list
    P5  Docker API calls per lifecycle step, counted by a proxy on the Docker socket (run last: it
        restarts the dockhand and Celery workers behind the proxy)

It prints one table (stdout; progress goes to stderr) with a PASS/MISS per target, then removes
everything it made: containers, networks, the bench prefix's queues and exchanges, the Celery
vhost, the state dir. The exit status is 1 only when the run itself failed (a missed target is
a figure, not a failure).

Run: .venv/bin/python bench/run.py [--quick] [--phases P1,P2] [--no-floor] [--profile DIR] [--worker-dir DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aio_pika
import aiodocker

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench.peers, for Celery's client side

import event_latency
from harness import (
    AMQP_URL,
    IMAGE,
    LIFECYCLE_STEPS,
    SESSION_LABEL,
    CeleryPeer,
    CeleryWorker,
    Direct,
    DockerCallCounter,
    Dockhand,
    DockhandWorker,
    FloorWorker,
    Names,
    Profiler,
    Rate,
    batch_async,
    batch_threads,
    closed_loop_async,
    closed_loop_threads,
    delete_topology,
    docker_socket,
    dockhand_client,
    log,
    percentile,
    proc_cpu_s,
    proc_status,
    remove_everything,
    summarize_profile,
)

from dockhand.client import Client, Retry

REPO = Path(__file__).resolve().parents[1]
P2_LEVELS = (1, 16, 64)
P3_CONCURRENCY = 8
MB = 1024 * 1024
PHASES = ("P1", "P2", "P3", "P4", "P6", "P5")
P5_SETTLE_S = 0.3  # after a step's reply: the calls the worker makes on the step's Docker events
P5_IDLE_S = 5.0  # P5's idle window: what the worker calls in the background
# The dockhand worker's health loop (worker/health.py): /version every second, /info with a
# heartbeat. Left out of the steps' counts; every other call in a step's window is the step's.
HEALTH_PROBES = frozenset({"GET /version", "GET /info"})


@dataclass(frozen=True)
class Plan:
    p1_pairs: int
    p2_rounds: int
    p2_warmup_s: float
    p2_run_s: float
    p3_rounds: int
    p3_per_round: int
    p4_containers: int
    p6_containers: int
    p5_lifecycles: int

    @staticmethod
    def of(quick: bool, managed: int | None) -> Plan:
        if quick:
            return Plan(300, 2, 0.2, 0.8, 1, 16, 20, managed or 300, 3)
        return Plan(1000, 3, 0.3, 2.0, 2, 40, 50, managed or 1000, 5)


@dataclass
class Figures:
    """Everything measured; the table is printed from here."""

    p1: dict[str, list[float]] = field(default_factory=dict)  # round trip (ms) per system
    p1_added: dict[str, list[float]] = field(default_factory=dict)  # minus direct's, same round
    p2: dict[tuple[str, int], list[Rate]] = field(default_factory=dict)
    p2_cpu_ms: dict[tuple[str, int], list[float]] = field(default_factory=dict)
    p3: dict[str, list[Rate]] = field(default_factory=dict)
    p3_cpu_ms: dict[str, list[float]] = field(default_factory=dict)
    p3_dockerd_ms: dict[str, list[float]] = field(default_factory=dict)
    # P5: Docker calls per (system, step), summed over the lifecycles: during the step, and in
    # the P5_SETTLE_S after its answer (what the worker does on the step's events).
    p5_in: dict[tuple[str, str], Counter[str]] = field(default_factory=dict)
    p5_after: dict[tuple[str, str], Counter[str]] = field(default_factory=dict)
    p5_n: int = 0
    # Per (system, step): each lifecycle's (in command, after) totals, for the medians in the table.
    p5_each: dict[tuple[str, str], list[tuple[int, int]]] = field(default_factory=dict)
    p5_background: dict[str, Counter[str]] = field(default_factory=dict)
    p5_background_s: float = 0.0
    p4: dict[str, list[float]] = field(default_factory=dict)
    p4_expected: int = 0
    p4_dups: dict[str, int] = field(default_factory=dict)
    mem: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


# --- phases ---------------------------------------------------------------------------------------


async def p1_latency(fig: Figures, systems: list[Any], pairs: int) -> None:
    """Rounds of one inspect of the same container per system (dockhand, the floor, direct), the
    order rotating every round; "added" is a system's round trip minus direct's in that round."""
    log(f"P1: {pairs} rounds of workspace.inspect ({', '.join(s.name for s in systems)}), c=1")
    warmup = 50
    for i in range(pairs + warmup):
        took: dict[str, float] = {}
        k = i % len(systems)
        for system in systems[k:] + systems[:k]:
            start = time.perf_counter()
            await system.inspect(0)
            took[system.name] = (time.perf_counter() - start) * 1000
        if i >= warmup:
            for name, ms in took.items():
                fig.p1.setdefault(name, []).append(ms)
                if name != "direct":
                    fig.p1_added.setdefault(name, []).append(ms - took["direct"])


async def p2_throughput(fig: Figures, systems: list[Any], plan: Plan, pids: dict[str, int], profiler: Profiler) -> None:
    """Closed loop: each slot sends its next inspect when the last is answered; slot k inspects
    workspace k, so dockhand's one-command-per-workspace rule never serialises two slots."""
    for level in P2_LEVELS:
        for r in range(plan.p2_rounds):
            # Alternate the order between rounds: drift on a shared machine hits everyone alike.
            for system in systems if r % 2 == 0 else systems[::-1]:
                pid = pids.get(system.name)
                cpu = proc_cpu_s(pid) if pid else 0.0
                profiled = system.name == "dockhand" and level == P2_LEVELS[-1] and r == 0
                async with profiler.record(f"p2-c{level}") if profiled else contextlib.nullcontext():
                    if isinstance(system, CeleryPeer):
                        rate = await asyncio.to_thread(
                            closed_loop_threads, system.pool, system.inspect, level, plan.p2_warmup_s, plan.p2_run_s
                        )
                    else:
                        rate = await closed_loop_async(system.inspect, level, plan.p2_warmup_s, plan.p2_run_s)
                fig.p2.setdefault((system.name, level), []).append(rate)
                if pid:
                    cpu_ms = (proc_cpu_s(pid) - cpu) * 1000
                    fig.p2_cpu_ms.setdefault((system.name, level), []).append(cpu_ms / max(rate.total, 1))
                log(f"P2: c={level} round {r + 1} {system.name}: {rate.per_s:.0f} ops/s ({rate.errors} errors)")


async def p3_lifecycle(fig: Figures, systems: list[Any], plan: Plan, pids: dict[str, int], profiler: Profiler) -> None:
    dockerd = dockerd_pid()
    for r in range(plan.p3_rounds):
        for system in systems if r % 2 == 0 else systems[::-1]:
            keys = [f"r{r}-{i}" for i in range(plan.p3_per_round)]
            pid = pids.get(system.name)
            cpu = proc_cpu_s(pid) if pid else 0.0
            dockerd_cpu = proc_cpu_s(dockerd) if dockerd else 0.0
            profiled = system.name == "dockhand" and r == 0
            async with profiler.record("p3") if profiled else contextlib.nullcontext():
                if isinstance(system, CeleryPeer):
                    rate = await asyncio.to_thread(batch_threads, system.pool, system.lifecycle, keys, P3_CONCURRENCY)
                else:
                    rate = await batch_async(system.lifecycle, keys, P3_CONCURRENCY)
            fig.p3.setdefault(system.name, []).append(rate)
            if pid:
                fig.p3_cpu_ms.setdefault(system.name, []).append((proc_cpu_s(pid) - cpu) * 1000 / max(rate.ops, 1))
            if dockerd:
                used = (proc_cpu_s(dockerd) - dockerd_cpu) * 1000 / max(rate.ops, 1)
                fig.p3_dockerd_ms.setdefault(system.name, []).append(used)
            log(f"P3: round {r + 1} {system.name}: {rate.per_s:.1f} workspaces/s ({rate.errors} errors)")


async def p4_events(fig: Figures, docker: aiodocker.Docker, names: Names, client: Client, n: int) -> None:
    """bench/event_latency.py's round (its Recorder, subscription and run_round), against this run's worker."""
    log(f"P4: event latency, {n} labelled containers one at a time (bench/event_latency.py)")
    rec = event_latency.Recorder()
    watcher = asyncio.create_task(rec.watch_docker(docker, names.session))
    bound = asyncio.Event()
    follower = asyncio.create_task(event_latency.follow(client, rec, bound))
    try:
        await asyncio.wait_for(bound.wait(), 10)
        await asyncio.wait_for(rec.stream_live.wait(), 10)
        ids = await event_latency.run_round(docker, rec, names.session, n, 1)
    finally:
        for task in (watcher, follower):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
    fig.p4_expected = len(ids)
    for kind, action in (("container.start", "start"), ("discovery.added", "start"), ("discovery.removed", "die")):
        deltas, dups = [], 0
        for cid in ids:
            arrivals, base = rec.amqp.get((cid, kind), []), rec.direct.get((cid, action))
            dups += max(0, len(arrivals) - 1)
            if arrivals and base is not None:
                deltas.append((arrivals[0] - base) * 1000)
        fig.p4[kind] = deltas
        fig.p4_dups[kind] = dups


async def p6_memory(fig: Figures, docker: aiodocker.Docker, names: Names, client: Client, pid: int, n: int) -> None:
    """N created-not-started containers with this host's managed labels (through aiodocker, for
    speed), then workspace.list and discovery.list through the worker; RSS sampled throughout."""
    log(f"P6: {n} managed containers (created, not started), then workspace.list and discovery.list")
    peak = 0

    async def sample() -> None:
        nonlocal peak
        while True:
            peak = max(peak, proc_status(pid)["VmRSS"])
            await asyncio.sleep(0.1)

    sampler = asyncio.create_task(sample())
    now = datetime.now(UTC).isoformat().replace("+00:00", "Z")
    limit = asyncio.Semaphore(16)
    created: list[Any] = []

    async def create(i: int) -> None:
        ws = names.workspace(f"m{i}")
        labels = {
            "dockhand.managed": "true",
            "dockhand.host": names.host_id,
            "dockhand.workspace.id": ws,
            "dockhand.workspace.name": ws,
            "dockhand.project": f"p6-{names.tag}",
            "dockhand.created": now,
            "dockhand.spec-hash": "bench",
            SESSION_LABEL: names.session,
        }
        config: dict[str, Any] = {"Image": IMAGE, "Labels": labels, "HostConfig": {"NetworkMode": names.network}}
        async with limit:
            created.append(await docker.containers.create(config, name=names.container(ws)))

    async def remove(container: Any) -> None:
        async with limit:
            await container.delete(force=True)

    try:
        start = time.perf_counter()
        await asyncio.gather(*(create(i) for i in range(n)))
        log(f"P6: created {len(created)} in {time.perf_counter() - start:.1f} s")
        await asyncio.sleep(1)  # the worker's event pipeline takes in the create events
        start = time.perf_counter()
        listed = await client.workspaces.list(timeout=300, retry=Retry.off(300))
        fig.mem["list_ms"] = (time.perf_counter() - start) * 1000
        fig.mem["listed"] = len(listed.workspaces)
        start = time.perf_counter()
        await client.discovery.list(timeout=300, retry=Retry.off(300))
        fig.mem["discovery_ms"] = (time.perf_counter() - start) * 1000
        fig.mem["with_managed"] = await settled_rss(pid, 1.0)
        start = time.perf_counter()
        await asyncio.gather(*(remove(c) for c in created))
        log(f"P6: removed {len(created)} in {time.perf_counter() - start:.1f} s")
        await asyncio.sleep(1)
        fig.mem["after_removal"] = await settled_rss(pid, 1.0)
    finally:
        sampler.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sampler
        fig.mem["peak_p6"] = peak / MB
        fig.mem["hwm"] = proc_status(pid)["VmHWM"] / MB


async def quiet(counter: DockerCallCounter, limit_s: float = 90) -> None:
    """Until the worker behind ``counter`` makes no Docker call but its health probes for 2 s: its
    startup scans (each lists and inspects every managed container) are over."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        mark = len(counter.calls)
        await asyncio.sleep(2.0)
        if not set(counter.since(mark)) - HEALTH_PROBES:
            return
    log(f"P5: the worker still makes Docker calls after {limit_s:.0f} s: its counts include background work")


def dockerd_pid() -> int | None:
    """The one dockerd this machine runs (its CPU is only read, from /proc), or None."""
    found = []
    for entry in Path("/proc").iterdir():
        with contextlib.suppress(OSError):
            if entry.name.isdigit() and (entry / "comm").read_text().strip() == "dockerd":
                found.append(int(entry.name))
    return found[0] if len(found) == 1 else None


async def p5_calls(
    fig: Figures,
    names: Names,
    plan: Plan,
    worker: DockhandWorker,
    celery: CeleryWorker | None,
    channel: aio_pika.abc.AbstractChannel,
    client: Client,
    targets: list[str],
    proxies: list[DockerCallCounter],
) -> bool:
    """Each system's lifecycles again, one step at a time (c=1), each system reaching dockerd
    through a DockerCallCounter of its own; the dockhand and Celery workers are restarted
    pointed at theirs, direct uses a second aiodocker client. An idle window first shows the
    worker's background calls (none expected). False when the stopped worker did not exit 0."""
    upstream = docker_socket()
    if upstream is None:
        fig.notes.append("P5 skipped: the Docker host is not a Unix socket (the proxy speaks only those)")
        return True
    log(f"P5: {plan.p5_lifecycles} lifecycles per system, one step at a time, through counting proxies")
    tmp = Path(tempfile.gettempdir())
    systems = ["dockhand", "direct"] + (["celery"] if celery else [])
    counters = {s: DockerCallCounter(tmp / f"dhbench-{names.tag}-{s}.sock", upstream) for s in systems}
    for counter in counters.values():
        await counter.start()
        # They outlive this phase (run() closes them): the workers behind them run to the end.
        proxies.append(counter)
    via_proxy = aiodocker.Docker(url=counters["direct"].url)
    try:
        code = await worker.restart(channel, {"DOCKHAND_DOCKER_HOST": counters["dockhand"].url})
        if code != 0:
            fig.notes.append(f"dockhand worker exited with {code} when P5 restarted it; see {worker.log_path}")
        log(f"P5: dockhand worker restarted behind {counters['dockhand'].path} (pid {worker.pid})")
        runners: dict[str, Any] = {
            "dockhand": Dockhand(client, names, targets, names.host_id),
            "direct": Direct(via_proxy, names, targets),
        }
        if celery is not None:
            await celery.stop()
            celery.env["DOCKER_HOST"] = counters["celery"].url
            await celery.start()
            runners["celery"] = CeleryPeer(names, targets, 1)
        # One inspect each first: a new Docker client's version negotiation (aiodocker's and
        # docker-py's first GET /version) is not a lifecycle's. Then the restarted workers'
        # startup calls settle, and an idle window shows what their background loops call.
        for name, runner in runners.items():
            await (asyncio.to_thread(runner.inspect, 0) if name == "celery" else runner.inspect(0))
        await quiet(counters["dockhand"])
        marks = {s: len(c.calls) for s, c in counters.items()}
        fig.p5_background_s = P5_IDLE_S
        await asyncio.sleep(P5_IDLE_S)
        fig.p5_background = {s: c.since(marks[s]) for s, c in counters.items()}
        for name, runner in runners.items():
            counter = counters[name]
            background = HEALTH_PROBES if name == "dockhand" else frozenset()
            for k in range(plan.p5_lifecycles):
                for step, call in runner.steps(f"p5-{k}"):
                    start = len(counter.calls)
                    if name == "celery":
                        await asyncio.to_thread(call)
                    else:
                        await call()
                    answered = len(counter.calls)
                    await asyncio.sleep(P5_SETTLE_S)
                    inside, after = (
                        Counter({t: n for t, n in counts.items() if t not in background})
                        for counts in (counter.between(start, answered), counter.since(answered))
                    )
                    fig.p5_in.setdefault((name, step), Counter()).update(inside)
                    fig.p5_after.setdefault((name, step), Counter()).update(after)
                    fig.p5_each.setdefault((name, step), []).append((inside.total(), after.total()))
            if isinstance(runner, CeleryPeer):
                runner.pool.shutdown(wait=False)
        fig.p5_n = plan.p5_lifecycles
        streaming = "GET /events" in counters["dockhand"].open_connections.values()
        errors = [f"{s}: {e}" for s, c in counters.items() for e in c.errors[:1]]
        fig.notes.append(
            "P5 proxy: the dockhand worker's GET /events stream "
            + ("stayed open through it" if streaming else "was NOT open through it at the end")
            + f"; proxy errors: {sum(len(c.errors) for c in counters.values())}"
            + "".join(f"; {e}" for e in errors)
        )
    finally:
        await via_proxy.close()
    return code == 0


async def settled_rss(pid: int, seconds: float = 2.0) -> float:
    """The median of RSS samples over a quiet interval, in MB."""
    samples = []
    for _ in range(max(1, int(seconds / 0.2))):
        samples.append(proc_status(pid)["VmRSS"])
        await asyncio.sleep(0.2)
    return percentile(samples, 50) / MB


# --- the run --------------------------------------------------------------------------------------


async def run(args: argparse.Namespace, names: Names, plan: Plan, fig: Figures) -> bool:
    """Every phase in one run; True when it completed. Cleans up whatever happens."""
    docker = aiodocker.Docker()
    extra_env = dict(item.split("=", 1) for item in args.worker_env)
    worker = DockhandWorker(names, args.worker_concurrency, args.worker_dir, extra_env)
    celery = None if args.no_celery else CeleryWorker(names, args.worker_concurrency)
    floor = None if args.no_floor else FloorWorker(names, args.worker_concurrency)
    proxies: list[DockerCallCounter] = []
    client = dockhand_client(names)
    connection = await aio_pika.connect(AMQP_URL)
    systems: list[Any] = []
    ok = True
    try:
        channel = await connection.channel()
        log(f"run {names.tag}: host {names.host_id}, prefix {names.prefix}, image {IMAGE}, load {load()}")
        targets = [names.workspace(f"t{k}") for k in range(max(P2_LEVELS))]

        async def bring_up_dockhand() -> None:
            await worker.start(channel)
            log(f"dockhand worker pid {worker.pid} ready (log {worker.log_path})")
            fig.mem["idle"] = await settled_rss(worker.pid)
            await client.open()
            # The network every workspace joins, made through dockhand so it has the session label.
            await client.networks.ensure(names.network, labels={SESSION_LABEL: names.session})

            # P1/P2 targets: one running workspace per concurrency slot.
            async def make(ws: str) -> None:
                labels = {SESSION_LABEL: names.session}
                await client.workspaces.create(workspace_id=ws, image=IMAGE, network=names.network, labels=labels)

            made = await batch_async(make, targets, 8)
            if made.errors:
                raise RuntimeError(f"could not create the inspect targets: {made.first_error}")
            log(f"{len(targets)} target workspaces running ({made.seconds:.1f} s)")

        async def bring_up_celery() -> None:
            if celery is not None:
                await celery.create_vhost()
                await celery.start()
                log(f"celery worker pid {celery.pid} ready on vhost {names.vhost} (log {celery.log_path})")
                fig.mem["celery_idle"] = await settled_rss(celery.pid)

        async def bring_up_floor() -> None:
            if floor is not None:
                await floor.start()
                log(f"floor pid {floor.pid} ready on {floor.queue} (log {floor.log_path})")
                fig.mem["floor_idle"] = await settled_rss(floor.pid)

        async with asyncio.TaskGroup() as group:  # one failing cancels the others
            group.create_task(bring_up_dockhand())
            group.create_task(bring_up_celery())
            group.create_task(bring_up_floor())
        dockhand, direct = Dockhand(client, names, targets, names.host_id), Direct(docker, names, targets)
        floor_side = None if floor is None else Dockhand(client, names, targets, names.floor_host, name="floor")
        systems.extend([dockhand, *([floor_side] if floor_side else []), direct])
        if celery is not None:
            systems.append(CeleryPeer(names, targets, max(P2_LEVELS)))
        pids = {"dockhand": worker.pid}
        pids.update({"celery": celery.pid} if celery else {})
        pids.update({"floor": floor.pid} if floor else {})
        profiler = Profiler(args.profile, worker.pid)

        if "P1" in args.phases:
            async with profiler.record("p1"):
                await p1_latency(fig, [s for s in systems if not isinstance(s, CeleryPeer)], plan.p1_pairs)
        if "P2" in args.phases:
            await p2_throughput(fig, systems, plan, pids, profiler)
        if "P3" in args.phases:
            await p3_lifecycle(fig, [s for s in systems if s.name != "floor"], plan, pids, profiler)
        if "P4" in args.phases:
            await p4_events(fig, docker, names, client, plan.p4_containers)
        fig.mem["idle_after_load"] = await settled_rss(worker.pid)
        if celery is not None:
            fig.mem["celery_after_load"] = await settled_rss(celery.pid, 1.0)
        if floor is not None:
            fig.mem["floor_after_load"] = await settled_rss(floor.pid, 1.0)
        if "P6" in args.phases:
            await p6_memory(fig, docker, names, client, worker.pid, plan.p6_containers)
        if "P5" in args.phases and not await p5_calls(
            fig, names, plan, worker, celery, channel, client, targets, proxies
        ):
            ok = False
    except Exception as exc:
        ok = False
        if isinstance(exc, ExceptionGroup):
            exc = exc.exceptions[0]
        log(f"FAILED: {type(exc).__name__}: {exc}")
        fig.notes.append(f"run failed: {type(exc).__name__}: {str(exc)[:300]}")
    finally:
        log("cleaning up")
        with contextlib.suppress(Exception):
            await client.close()
        for system in systems:
            if isinstance(system, CeleryPeer):
                system.pool.shutdown(wait=False, cancel_futures=True)
        if celery is not None:
            log(f"celery worker exit code {await celery.stop()}")
        if floor is not None:
            floor_code = await floor.stop()
            log(f"floor exit code {floor_code}")
            if floor.proc is not None and floor_code != 0:
                fig.notes.append(f"the floor exited with {floor_code}; see {floor.log_path}")
        code = await worker.stop()
        log(f"dockhand worker exit code {code}")
        if worker.proc is not None and code != 0:
            ok = False
            fig.notes.append(f"dockhand worker exited with {code}; see {worker.log_path}")
        containers, networks = await remove_everything(docker, names)
        log(f"removed {containers} containers and {networks} networks")
        await delete_topology(names)
        if celery is not None:
            await celery.delete_vhost()
        for proxy in proxies:
            await proxy.close()
        shutil.rmtree(worker.state_dir, ignore_errors=True)
        await connection.close()
        await docker.close()
    return ok


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def revision(directory: Path) -> str:
    """The worker's git revision (with ``+dirty`` when worker/ or schemas/ have local changes)."""
    try:
        head = subprocess.run(
            ["git", "-C", str(directory), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(directory), "status", "--porcelain", "--", "worker", "schemas"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (head or "unknown") + ("+dirty" if dirty else "")


# --- the table ------------------------------------------------------------------------------------


def num(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def verdict(ok: bool | None) -> str:
    return "-" if ok is None else ("PASS" if ok else "MISS")


def mean_rate(rates: list[Rate] | None) -> float | None:
    """All rounds pooled: total operations over total measured time."""
    if not rates:
        return None
    return sum(r.ops for r in rates) / sum(r.seconds for r in rates)


def ratio(mine: list[Rate] | None, theirs: list[Rate] | None, as_percent: bool) -> tuple[float | None, str]:
    """The pooled ratio, and the text with the per-round range when there are several rounds
    (round i of both ran back to back, so each round's ratio is a paired estimate)."""
    a, b = mean_rate(mine), mean_rate(theirs)
    if a is None or not b:
        return None, "-"
    value = a / b
    text = f"{100 * value:.0f} %" if as_percent else f"{value:.2f}x"
    if mine and theirs and len(mine) > 1 and len(mine) == len(theirs):
        per_round = [m.per_s / t.per_s for m, t in zip(mine, theirs, strict=True) if t.per_s]
        if per_round:
            lo, hi = min(per_round), max(per_round)
            text += f" ({100 * lo:.0f}-{100 * hi:.0f})" if as_percent else f" ({lo:.2f}-{hi:.2f})"
    return value, text


def avg(values: list[float] | None) -> float | None:
    return sum(values) / len(values) if values else None


def times(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}x" if a is not None and b else "-"


def p5_cell(fig: Figures, system: str, step: str | None) -> str:
    """Calls per operation, ``in command`` (+ ``after the answer``, when any): the median over the
    lifecycles, so that a periodic sweep of the worker's that fell into one step's window does not
    count as every step's; ``(max N)`` when one lifecycle's total was higher."""
    steps = LIFECYCLE_STEPS if step is None else (step,)
    each = [fig.p5_each.get((system, s)) for s in steps]
    if not fig.p5_n or any(not e for e in each):
        return "-"
    per_op = [tuple(map(sum, zip(*ops, strict=True))) for ops in zip(*(e for e in each if e), strict=True)]
    n_in, n_after = (percentile([op[i] for op in per_op], 50) for i in (0, 1))
    top = max(a + b for a, b in per_op)
    text = amount(n_in) + (f" + {amount(n_after)}" if n_after else "")
    return text + (f" (max {top})" if top > n_in + n_after else "")


def amount(value: float) -> str:
    """A count averaged over a few operations: ``3``, ``2.33``."""
    return f"{value:.2f}".rstrip("0").rstrip(".")


def p5_breakdown(fig: Figures) -> list[str]:
    """Every kind of call per step and system, per operation."""
    if not fig.p5_n:
        return []
    lines = [
        "",
        f"P5 Docker API calls per operation, by kind: the mean of {fig.p5_n} lifecycles per system, one step at a "
        f"time (the table above: the median); 'after' = in the {P5_SETTLE_S:g} s after the answer",
    ]
    systems = sorted({s for s, _ in fig.p5_in}, key=["direct", "celery", "dockhand"].index)
    for system in systems:
        for step in LIFECYCLE_STEPS:
            for label, counts in (("", fig.p5_in.get((system, step))), ("after: ", fig.p5_after.get((system, step)))):
                if counts:
                    ranked = sorted(counts.items(), key=lambda kv: -kv[1])
                    kinds = ", ".join(f"{amount(n / fig.p5_n)}x {t}" for t, n in ranked)
                    lines.append(f"  {system:9} {step:7} {label}{kinds}")
    for system, counts in fig.p5_background.items():
        total = counts.total()
        what = ", ".join(f"{n}x {t}" for t, n in counts.most_common()) if total else "none"
        lines.append(f"  {system:9} idle    {fig.p5_background_s:g} s before the steps: {what}")
    lines.append(f"  (left out of dockhand's step counts: its health probes, {', '.join(sorted(HEALTH_PROBES))})")
    return lines


def table(fig: Figures, names: Names, plan: Plan, elapsed_s: float, args: argparse.Namespace) -> str:
    head = (
        "id", "measure", "dockhand", "floor", "direct", "celery", "dh/floor", "dh/direct", "dh/celery", "target",
        "verdict",
    )  # fmt: skip
    rows: list[tuple[str, ...]] = []

    def row(pid: str, measure: str, dh: str, **cells: str) -> None:
        keys = ("floor", "direct", "celery", "r_floor", "r_direct", "r_celery", "target", "ok")
        rows.append((pid, measure, dh, *(cells.get(k, "") for k in keys)))

    if fig.p1_added.get("dockhand"):
        rt, added = fig.p1, fig.p1_added
        for p in (50, 99):
            dh, fl, di = (percentile(rt[s], p) if rt.get(s) else None for s in ("dockhand", "floor", "direct"))
            row(
                "P1", f"inspect round trip p{p} (ms)", num(dh), floor=num(fl), direct=num(di),
                r_floor=times(dh, fl), r_direct=times(dh, di),
            )  # fmt: skip
        n = len(added["dockhand"])
        a50, f50 = percentile(added["dockhand"], 50), percentile(added["floor"], 50) if added.get("floor") else None
        row(
            "P1", f"added latency p50 (ms, {n} rounds)", num(a50), floor=num(f50),
            r_floor="-" if f50 is None else f"{a50 - f50:+.2f} ms", target="<= floor + 0.3 ms",
            ok=verdict(None if f50 is None else a50 <= f50 + 0.3),
        )  # fmt: skip
        a99, f99 = percentile(added["dockhand"], 99), percentile(added["floor"], 99) if added.get("floor") else None
        row(
            "P1", "added latency p99 (ms)", num(a99), floor=num(f99),
            r_floor="-" if f99 is None else f"{a99 - f99:+.2f} ms", target="<= 8 ms", ok=verdict(a99 <= 8),
        )  # fmt: skip

    top = P2_LEVELS[-1]
    for level in P2_LEVELS:
        mine = fig.p2.get(("dockhand", level))
        if not mine:
            continue
        fl_rates, di_rates, ce_rates = (fig.p2.get((s, level)) for s in ("floor", "direct", "celery"))
        vs_floor, floor_text = ratio(mine, fl_rates, as_percent=False)
        target, ok = (
            (">= 0.9x floor", verdict(None if vs_floor is None else vs_floor >= 0.9)) if level == top else ("", "")
        )
        row(
            "P2", f"workspace.inspect ops/s, c={level}", num(mean_rate(mine), 0), floor=num(mean_rate(fl_rates), 0),
            direct=num(mean_rate(di_rates), 0), celery=num(mean_rate(ce_rates), 0), r_floor=floor_text,
            r_direct=ratio(mine, di_rates, as_percent=True)[1], r_celery=ratio(mine, ce_rates, as_percent=False)[1],
            target=target, ok=ok,
        )  # fmt: skip
    for level in P2_LEVELS:
        dh_ms, fl_ms, ce_ms = (avg(fig.p2_cpu_ms.get((s, level))) for s in ("dockhand", "floor", "celery"))
        if dh_ms is None:
            continue
        target, ok = "", ""
        if level == top:
            target, ok = "<= 1.25x floor", verdict(None if not fl_ms else dh_ms / fl_ms <= 1.25)
        row(
            "P2", f"worker CPU ms per inspect, c={level}", num(dh_ms), floor=num(fl_ms), celery=num(ce_ms),
            r_floor=times(dh_ms, fl_ms), r_celery=times(dh_ms, ce_ms), target=target, ok=ok,
        )  # fmt: skip

    if fig.p3.get("dockhand"):
        mine, di_rates, ce_rates = fig.p3["dockhand"], fig.p3.get("direct"), fig.p3.get("celery")
        vs_direct, direct_text = ratio(mine, di_rates, as_percent=True)
        n = sum(r.ops for r in mine)
        row(
            "P3", f"lifecycle workspaces/s, c={P3_CONCURRENCY} ({n} per system)", num(mean_rate(mine), 1),
            direct=num(mean_rate(di_rates), 1), celery=num(mean_rate(ce_rates), 1), r_direct=direct_text,
            r_celery=ratio(mine, ce_rates, as_percent=False)[1], target=">= 97 % direct",
            ok=verdict(None if vs_direct is None else vs_direct >= 0.97),
        )  # fmt: skip
        dh_ms, ce_ms = avg(fig.p3_cpu_ms.get("dockhand")), avg(fig.p3_cpu_ms.get("celery"))
        if dh_ms is not None:
            row(
                "P3", "worker CPU ms per workspace lifecycle", num(dh_ms, 1), celery=num(ce_ms, 1),
                r_celery=times(dh_ms, ce_ms), target="<= celery's",
                ok=verdict(None if ce_ms is None else dh_ms <= ce_ms),
            )  # fmt: skip
        dockerd = {s: avg(fig.p3_dockerd_ms.get(s)) for s in ("dockhand", "direct", "celery")}
        if dockerd["dockhand"] is not None:
            row(
                "P3", "dockerd CPU ms per workspace lifecycle", num(dockerd["dockhand"], 1),
                direct=num(dockerd["direct"], 1), celery=num(dockerd["celery"], 1),
                r_direct=times(dockerd["dockhand"], dockerd["direct"]),
                r_celery=times(dockerd["dockhand"], dockerd["celery"]),
            )  # fmt: skip

    for kind, label in (
        ("container.start", "container.start - docker start"),
        ("discovery.added", "discovery.added - docker start"),
        ("discovery.removed", "discovery.removed - docker die"),
    ):
        deltas = fig.p4.get(kind)
        if not deltas:
            continue
        for p in (50, 99):
            extra = f", {len(deltas)}/{fig.p4_expected}, dups {fig.p4_dups.get(kind, 0)}" if p == 50 else ""
            target, ok = "", ""
            if kind == "discovery.added" and p == 99:
                limit = event_latency.TARGET_P99_ADDED_MS
                target, ok = f"<= {limit:g} ms", verdict(percentile(deltas, 99) <= limit)
            row("P4", f"{label} p{p} (ms{extra})", num(percentile(deltas, p)), target=target, ok=ok)

    if fig.p5_n:
        for step in (*LIFECYCLE_STEPS, None):
            row(
                "P5", f"Docker API calls per {step or 'lifecycle'} (in command + after)",
                p5_cell(fig, "dockhand", step), direct=p5_cell(fig, "direct", step),
                celery=p5_cell(fig, "celery", step),
            )  # fmt: skip

    mem = fig.mem
    if "idle" in mem:
        row(
            "P6", "worker RSS idle, after start (MB)", num(mem["idle"], 1), floor=num(mem.get("floor_idle"), 1),
            celery=num(mem.get("celery_idle"), 1), r_floor=times(mem["idle"], mem.get("floor_idle")),
            r_celery=times(mem["idle"], mem.get("celery_idle")), target="<= 100 MB", ok=verdict(mem["idle"] <= 100),
        )  # fmt: skip
    if "idle_after_load" in mem:
        after = mem["idle_after_load"]
        row(
            "P6", "worker RSS idle, after P1-P4 (MB)", num(after, 1), floor=num(mem.get("floor_after_load"), 1),
            celery=num(mem.get("celery_after_load"), 1), r_floor=times(after, mem.get("floor_after_load")),
            r_celery=times(after, mem.get("celery_after_load")), target="<= 100 MB", ok=verdict(after <= 100),
        )  # fmt: skip
    if "with_managed" in mem:
        full = plan.p6_containers >= 1000  # the target is for 1,000: fewer prove nothing
        row(
            "P6", f"worker RSS, {plan.p6_containers} managed, after list (MB)", num(mem["with_managed"], 1),
            target="<= 150 MB (1,000 managed)", ok=verdict(mem["with_managed"] <= 150) if full else "-",
        )  # fmt: skip
        row(
            "P6", "  workspace.list / discovery.list (ms)", f"{mem['list_ms']:.0f} / {mem['discovery_ms']:.0f}",
            direct=f"listed {int(mem['listed'])}",
        )  # fmt: skip
    if "after_removal" in mem:
        row("P6", "worker RSS after removing them (MB)", num(mem["after_removal"], 1))
    if "peak_p6" in mem:
        row("P6", "worker RSS peak in P6 / lifetime VmHWM (MB)", f"{mem['peak_p6']:.1f} / {mem['hwm']:.1f}")

    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    lines = [
        f"dockhand bench {names.tag}: {'quick' if args.quick else 'full'} run, {elapsed_s:.0f} s; worker "
        f"{args.worker_dir} @ {revision(args.worker_dir)}{' ' + ' '.join(args.worker_env) if args.worker_env else ''}; "
        f"{os.cpu_count()} CPUs; load average at end {load()}; "
        f"python {platform.python_version()}",
        f"workers: dockhand DOCKHAND_MAX_CONCURRENCY={args.worker_concurrency}, floor --prefetch "
        f"{2 * args.worker_concurrency}, celery --pool threads --concurrency {args.worker_concurrency}; P2 "
        f"{plan.p2_rounds} round(s) of {plan.p2_run_s:g} s per cell, ratio (range of rounds); P3 {plan.p3_rounds} x "
        f"{plan.p3_per_round}; P4 {plan.p4_containers}; P6 {plan.p6_containers}; P5 {plan.p5_lifecycles}",
        "  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)).rstrip(),
        "  ".join("-" * w for w in widths),
    ]
    previous = ""
    for r in rows:
        if previous and r[0] != previous:
            lines.append("")
        previous = r[0]
        lines.append("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    lines.extend(p5_breakdown(fig))
    failed = [(f"{name} P2 c={level}", rates) for (name, level), rates in fig.p2.items()]
    failed += [(f"{name} P3", rates) for name, rates in fig.p3.items()]
    errors = [
        f"{what}: {sum(r.errors for r in rates)} errors, first: {next(r.first_error for r in rates if r.errors)}"
        for what, rates in failed
        if any(r.errors for r in rates)
    ]
    lines.extend(f"note: {n}" for n in [*errors, *fig.notes])
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer samples and rounds, 300 containers in P6")
    parser.add_argument("--phases", default=",".join(PHASES), help="a subset, e.g. P1,P2 (default: all)")
    parser.add_argument("--no-celery", action="store_true", help="leave the Celery peer out")
    parser.add_argument("--no-floor", action="store_true", help="leave the floor (bench/peers/floor.py) out")
    parser.add_argument("--managed", type=int, help="containers in P6 (default 1000; --quick 300)")
    parser.add_argument(
        "--worker-concurrency", type=int, default=max(P2_LEVELS), help="dockhand and Celery slots (default 64)"
    )
    parser.add_argument("--worker-dir", type=Path, default=REPO, help="checkout whose worker/ runs (A/B a change)")
    parser.add_argument(
        "--worker-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra environment for the dockhand worker, e.g. OTEL_SDK_DISABLED=true (repeatable)",
    )
    parser.add_argument("--profile", type=Path, help="py-spy the worker in P1, P2 c=64 and P3; raw stacks to DIR")
    args = parser.parse_args()
    args.phases = {p.strip().upper() for p in args.phases.split(",")}
    names, plan, fig = Names(), Plan.of(args.quick, args.managed), Figures()
    started = time.perf_counter()
    ok = asyncio.run(run(args, names, plan, fig))
    print(table(fig, names, plan, time.perf_counter() - started, args))
    if args.profile is not None:
        for path in sorted(args.profile.glob("*.txt")):
            print()
            print(summarize_profile(path))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
