"""dockhand against direct aiodocker and against Celery + docker-py, in one run, as ratios.

Brings up its own dockhand worker (unique host id, exchange prefix, network and state dir, at
WARNING) and a Celery worker from bench/peers/ (threads pool, on a RabbitMQ vhost of its own),
then measures, every figure against a baseline taken in the same run:

    P1  workspace.inspect round trip through dockhand vs a direct aiodocker inspect (c=1)
    P2  workspace.inspect throughput at c=1, 16, 64: dockhand / direct aiodocker / Celery
    P3  lifecycle throughput (create, start, stop, remove) at c=8: the same three
    P4  Docker event -> AMQP event latency (bench/event_latency.py's round, against this worker)
    P6  worker RSS: idle, and with 1,000 managed containers after workspace.list + discovery.list

It prints one table (stdout; progress goes to stderr) with a PASS/MISS per target, then removes
everything it made: containers, networks, the bench prefix's queues and exchanges, the Celery
vhost, the state dir. The exit status is 1 only when the run itself failed (a missed target is
a figure, not a failure).

Run: .venv/bin/python bench/run.py [--quick] [--phases P1,P2] [--profile DIR] [--worker-dir DIR]
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
import time
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
    SESSION_LABEL,
    CeleryPeer,
    CeleryWorker,
    Direct,
    Dockhand,
    DockhandWorker,
    Names,
    Profiler,
    Rate,
    batch_async,
    batch_threads,
    closed_loop_async,
    closed_loop_threads,
    delete_topology,
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
PHASES = ("P1", "P2", "P3", "P4", "P6")


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

    @staticmethod
    def of(quick: bool, managed: int | None) -> Plan:
        if quick:
            return Plan(300, 2, 0.2, 0.8, 1, 16, 20, managed or 300)
        return Plan(1000, 3, 0.3, 2.0, 2, 40, 50, managed or 1000)


@dataclass
class Figures:
    """Everything measured; the table is printed from here."""

    p1_dockhand: list[float] = field(default_factory=list)
    p1_direct: list[float] = field(default_factory=list)
    p1_added: list[float] = field(default_factory=list)
    p2: dict[tuple[str, int], list[Rate]] = field(default_factory=dict)
    p2_cpu_ms: dict[tuple[str, int], list[float]] = field(default_factory=dict)
    p3: dict[str, list[Rate]] = field(default_factory=dict)
    p3_cpu_ms: dict[str, list[float]] = field(default_factory=dict)
    p4: dict[str, list[float]] = field(default_factory=dict)
    p4_expected: int = 0
    p4_dups: dict[str, int] = field(default_factory=dict)
    mem: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


# --- phases ---------------------------------------------------------------------------------------


async def p1_latency(fig: Figures, dockhand: Dockhand, direct: Direct, pairs: int) -> None:
    """Pairs of (dockhand round trip, direct inspect) of one container, alternating which goes first."""
    log(f"P1: {pairs} paired workspace.inspect round trips (dockhand vs direct), c=1")
    warmup = 50
    for i in range(pairs + warmup):
        took: dict[str, float] = {}
        for system in (dockhand, direct) if i % 2 == 0 else (direct, dockhand):
            start = time.perf_counter()
            await system.inspect(0)
            took[system.name] = (time.perf_counter() - start) * 1000
        if i >= warmup:
            fig.p1_dockhand.append(took["dockhand"])
            fig.p1_direct.append(took["direct"])
            fig.p1_added.append(took["dockhand"] - took["direct"])


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
    for r in range(plan.p3_rounds):
        for system in systems if r % 2 == 0 else systems[::-1]:
            keys = [f"r{r}-{i}" for i in range(plan.p3_per_round)]
            pid = pids.get(system.name)
            cpu = proc_cpu_s(pid) if pid else 0.0
            profiled = system.name == "dockhand" and r == 0
            async with profiler.record("p3") if profiled else contextlib.nullcontext():
                if isinstance(system, CeleryPeer):
                    rate = await asyncio.to_thread(batch_threads, system.pool, system.lifecycle, keys, P3_CONCURRENCY)
                else:
                    rate = await batch_async(system.lifecycle, keys, P3_CONCURRENCY)
            fig.p3.setdefault(system.name, []).append(rate)
            if pid:
                fig.p3_cpu_ms.setdefault(system.name, []).append((proc_cpu_s(pid) - cpu) * 1000 / max(rate.ops, 1))
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
        config = {"Image": IMAGE, "Labels": labels, "HostConfig": {"NetworkMode": names.network}}
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

        async with asyncio.TaskGroup() as group:  # one failing cancels the other
            group.create_task(bring_up_dockhand())
            group.create_task(bring_up_celery())
        dockhand, direct = Dockhand(client, names, targets), Direct(docker, names, targets)
        systems.extend([dockhand, direct])
        if celery is not None:
            systems.append(CeleryPeer(names, targets, max(P2_LEVELS)))
        pids = {"dockhand": worker.pid, **({"celery": celery.pid} if celery else {})}
        profiler = Profiler(args.profile, worker.pid)

        if "P1" in args.phases:
            async with profiler.record("p1"):
                await p1_latency(fig, dockhand, direct, plan.p1_pairs)
        if "P2" in args.phases:
            await p2_throughput(fig, systems, plan, pids, profiler)
        if "P3" in args.phases:
            await p3_lifecycle(fig, systems, plan, pids, profiler)
        if "P4" in args.phases:
            await p4_events(fig, docker, names, client, plan.p4_containers)
        fig.mem["idle_after_load"] = await settled_rss(worker.pid)
        if celery is not None:
            fig.mem["celery_after_load"] = await settled_rss(celery.pid, 1.0)
        if "P6" in args.phases:
            await p6_memory(fig, docker, names, client, worker.pid, plan.p6_containers)
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


def table(fig: Figures, names: Names, plan: Plan, elapsed_s: float, args: argparse.Namespace) -> str:
    head = ("id", "measure", "dockhand", "direct", "celery", "dh/direct", "dh/celery", "target", "verdict")
    rows: list[tuple[str, ...]] = []

    def row(
        pid: str,
        measure: str,
        dh: str,
        di: str = "",
        ce: str = "",
        r1: str = "",
        r2: str = "",
        target: str = "",
        ok: str = "",
    ) -> None:
        rows.append((pid, measure, dh, di, ce, r1, r2, target, ok))

    if fig.p1_added:
        dh, di, added = fig.p1_dockhand, fig.p1_direct, fig.p1_added
        for p in (50, 99):
            rt_dh, rt_di = percentile(dh, p), percentile(di, p)
            row("P1", f"inspect round trip p{p} (ms)", num(rt_dh), num(rt_di), "", f"{rt_dh / rt_di:.1f}x slower")
        a50, a99 = percentile(added, 50), percentile(added, 99)
        row("P1", f"added latency p50 (ms, {len(added)} pairs)", num(a50), target="<= 2 ms", ok=verdict(a50 <= 2))
        row("P1", "added latency p99 (ms)", num(a99), target="<= 8 ms", ok=verdict(a99 <= 8))

    for level in P2_LEVELS:
        mine = fig.p2.get(("dockhand", level))
        if not mine:
            continue
        di_rates, ce_rates = fig.p2.get(("direct", level)), fig.p2.get(("celery", level))
        vs_direct, direct_text = ratio(mine, di_rates, as_percent=True)
        vs_celery, celery_text = ratio(mine, ce_rates, as_percent=False)
        target, ok = "", ""
        if level == P2_LEVELS[-1]:
            target = ">= 50 % direct; >= 3x celery"
            ok = "; ".join(verdict(None if v is None else v >= t) for v, t in ((vs_direct, 0.5), (vs_celery, 3.0)))
        row(
            "P2",
            f"workspace.inspect ops/s, c={level}",
            num(mean_rate(mine), 0),
            num(mean_rate(di_rates), 0),
            num(mean_rate(ce_rates), 0),
            direct_text,
            celery_text,
            target,
            ok,
        )
    for level in P2_LEVELS:
        dh_cpu, ce_cpu = fig.p2_cpu_ms.get(("dockhand", level)), fig.p2_cpu_ms.get(("celery", level))
        if dh_cpu:
            dh_ms = sum(dh_cpu) / len(dh_cpu)
            ce_ms = sum(ce_cpu) / len(ce_cpu) if ce_cpu else None
            row(
                "P2",
                f"worker CPU ms per inspect, c={level}",
                num(dh_ms),
                "",
                num(ce_ms),
                "",
                f"{dh_ms / ce_ms:.2f}x" if ce_ms else "-",
            )

    if fig.p3.get("dockhand"):
        mine = fig.p3["dockhand"]
        vs_direct, direct_text = ratio(mine, fig.p3.get("direct"), as_percent=True)
        vs_celery, celery_text = ratio(mine, fig.p3.get("celery"), as_percent=False)
        ok = "; ".join(verdict(None if v is None else v >= t) for v, t in ((vs_direct, 0.95), (vs_celery, 1.2)))
        n = sum(r.ops for r in mine)
        row(
            "P3",
            f"lifecycle workspaces/s, c={P3_CONCURRENCY} ({n} per system)",
            num(mean_rate(mine), 1),
            num(mean_rate(fig.p3.get("direct")), 1),
            num(mean_rate(fig.p3.get("celery")), 1),
            direct_text,
            celery_text,
            ">= 95 % direct; >= 1.2x celery",
            ok,
        )
        dh_cpu, ce_cpu = fig.p3_cpu_ms.get("dockhand"), fig.p3_cpu_ms.get("celery")
        if dh_cpu:
            dh_ms = sum(dh_cpu) / len(dh_cpu)
            ce_ms = sum(ce_cpu) / len(ce_cpu) if ce_cpu else None
            row(
                "P3",
                "worker CPU ms per workspace lifecycle",
                num(dh_ms, 1),
                "",
                num(ce_ms, 1),
                "",
                f"{dh_ms / ce_ms:.2f}x" if ce_ms else "-",
            )

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
                target, ok = f"<= {limit:g} ms (events issue)", verdict(percentile(deltas, 99) <= limit)
            row("P4", f"{label} p{p} (ms{extra})", num(percentile(deltas, p)), target=target, ok=ok)

    mem = fig.mem
    if "idle" in mem:
        celery_idle = mem.get("celery_idle")
        row(
            "P6",
            "worker RSS idle, after start (MB)",
            num(mem["idle"], 1),
            "",
            num(celery_idle, 1),
            "",
            f"{mem['idle'] / celery_idle:.2f}x" if celery_idle else "-",
            "<= 100 MB",
            verdict(mem["idle"] <= 100),
        )
    if "idle_after_load" in mem:
        celery_after = mem.get("celery_after_load")
        row(
            "P6",
            "worker RSS idle, after P1-P4 (MB)",
            num(mem["idle_after_load"], 1),
            "",
            num(celery_after, 1),
            "",
            f"{mem['idle_after_load'] / celery_after:.2f}x" if celery_after else "-",
            "(<= 100 MB)",
            verdict(mem["idle_after_load"] <= 100),
        )
    if "with_managed" in mem:
        row("P6", f"worker RSS, {plan.p6_containers} managed, after list (MB)", num(mem["with_managed"], 1))
        row(
            "P6",
            "  workspace.list / discovery.list (ms)",
            f"{mem['list_ms']:.0f} / {mem['discovery_ms']:.0f}",
            f"listed {int(mem['listed'])}",
        )
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
        f"workers: dockhand DOCKHAND_MAX_CONCURRENCY={args.worker_concurrency}, celery --pool threads --concurrency "
        f"{args.worker_concurrency}; P2 {plan.p2_rounds} round(s) of {plan.p2_run_s:g} s per cell, ratio (range of "
        f"rounds); P3 {plan.p3_rounds} x {plan.p3_per_round}; P4 {plan.p4_containers}; P6 {plan.p6_containers}",
        "  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)).rstrip(),
        "  ".join("-" * w for w in widths),
    ]
    previous = ""
    for r in rows:
        if previous and r[0] != previous:
            lines.append("")
        previous = r[0]
        lines.append("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
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
