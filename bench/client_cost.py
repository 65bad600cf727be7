"""What the dockhand client costs its caller: client-side CPU per call, dockhand.client vs the
leanest correct hand-written aio-pika RPC, in one run, against one worker.

    .venv/bin/python bench/client_cost.py [--calls 1000] [--rounds 5] [--target missing|real]

Both sides send ``--calls`` concurrent ``workspace.inspect`` commands to the same worker (a
``python -m dockhand.worker`` of its own, as bench/run.py starts it) and wait for every reply:

- ``dockhand``: ``Client.workspaces.inspect(ws)``, the typed call a user writes: local validation
  of the command, a confirmed ``mandatory`` publish, the reply matched to its waiter, the result
  parsed into a ``Workspace`` (or, for a missing workspace, a ``CommandFailed`` raised).
- ``bare``: one connection, one channel with publisher confirms, one exclusive reply queue consumed
  with ``no_ack``, a dict of futures by correlation id, a persistent ``mandatory`` publish, a
  per-call timeout, ``json.loads`` of the reply. No validation, no retry, no typed result.

Client CPU is ``time.process_time()`` of this process around each batch (the worker is another
process, so only the client side counts). Rounds alternate which side goes first, after a warm-up
batch of each. Prints per-call CPU (µs), the ratio dockhand / bare (target <= 1.1x), throughput
and p50 / p99 latency (a call's latency includes waiting behind the other calls of its batch).
A script that prints figures, not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import gc
import importlib.util
import json
import os
import pstats
import resource
import shutil
import statistics
import sys
import time
import timeit
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import aio_pika
import aio_pika.abc
import aiodocker

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout's dockhand package first

from harness import (
    AMQP_URL,
    IMAGE,
    SESSION_LABEL,
    DockhandWorker,
    Names,
    delete_topology,
    log,
    percentile,
    remove_everything,
)

from dockhand.client import Client, CommandFailed, parse_result

TARGET_RATIO = 1.1


class BareRpc:
    """The leanest correct hand-written RPC over aio-pika: what the client is measured against."""

    def __init__(self, names: Names) -> None:
        self.names = names
        self.pending: dict[str, asyncio.Future[bytes]] = {}
        self.last_reply = b""

    async def start(self) -> None:
        self.connection = await aio_pika.connect(AMQP_URL)
        # publisher_confirms is aio-pika's default; on_return_raises turns a returned mandatory
        # publish (no queue for the routing key) into an error instead of a silent loss.
        channel = await self.connection.channel(publisher_confirms=True, on_return_raises=True)
        self.exchange = await channel.get_exchange(f"{self.names.prefix}.commands", ensure=True)
        queue = await channel.declare_queue(exclusive=True, auto_delete=True)
        self.reply_to = queue.name
        await queue.consume(self._on_reply, no_ack=True)

    async def _on_reply(self, message: aio_pika.abc.AbstractIncomingMessage) -> None:
        future = self.pending.get(message.correlation_id or "")
        if future is not None and not future.done():
            future.set_result(message.body)
            self.last_reply = message.body

    async def call(self, command_type: str, payload: dict[str, Any], host: str, timeout_s: float = 60) -> Any:
        correlation_id = uuid.uuid4().hex
        body = {"command_id": uuid.uuid4().hex, "type": command_type, "payload": payload}
        future = self.pending[correlation_id] = asyncio.get_running_loop().create_future()
        try:
            await self.exchange.publish(
                aio_pika.Message(
                    json.dumps(body).encode(),
                    content_type="application/json",
                    correlation_id=correlation_id,
                    reply_to=self.reply_to,
                    delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                ),
                routing_key=f"{host}.{command_type}",
                mandatory=True,
            )
            return json.loads(await asyncio.wait_for(future, timeout_s))
        finally:
            del self.pending[correlation_id]

    async def close(self) -> None:
        await self.connection.close()


@dataclass
class Batch:
    """One batch of one side: client CPU (user and system), wall time and every call's latency."""

    calls: int
    user_s: float = 0.0
    sys_s: float = 0.0
    wall_s: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)
    errors: int = 0
    first_error: str = ""
    gc_s: float = 0.0  # of the CPU, spent in the cycle collector
    gc_full: int = 0  # full (generation 2) collections

    @property
    def cpu_s(self) -> float:
        return self.user_s + self.sys_s

    @property
    def cpu_us_per_call(self) -> float:
        return self.cpu_s / self.calls * 1e6

    @property
    def per_s(self) -> float:
        return self.calls / self.wall_s


async def batch(call: Callable[[int], Awaitable[None]], calls: int) -> Batch:
    """``calls`` concurrent calls; CPU and wall time from before the first is made to after the
    last has returned. A call that raises anything but the expected outcome is an error."""
    out = Batch(calls)

    async def one(i: int) -> None:
        began = time.perf_counter()
        try:
            await call(i)
        except Exception as exc:
            out.errors += 1
            out.first_error = out.first_error or repr(exc)[:300]
        out.latencies_ms.append((time.perf_counter() - began) * 1000)

    # getrusage, not process_time(): the same CPU, with user and system apart. System time is
    # mostly the loopback TCP stack, whose cost per call depends on how replies bunch up.
    gc_began = 0.0

    def on_gc(phase: str, info: dict[str, int]) -> None:
        nonlocal gc_began
        if phase == "start":
            gc_began = time.process_time()
        else:
            out.gc_s += time.process_time() - gc_began
            out.gc_full += info["generation"] == 2

    gc.callbacks.append(on_gc)
    before, wall0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    try:
        await asyncio.gather(*(one(i) for i in range(calls)))
    finally:
        after, out.wall_s = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter() - wall0
        gc.callbacks.remove(on_gc)
    out.user_s, out.sys_s = after.ru_utime - before.ru_utime, after.ru_stime - before.ru_stime
    return out


def summary(batches: list[Batch]) -> dict[str, float]:
    """Pooled over the batches: total CPU over total calls, calls over total wall time."""
    latencies = [ms for b in batches for ms in b.latencies_ms]
    calls = sum(b.calls for b in batches)
    return {
        "cpu_us": sum(b.cpu_s for b in batches) / calls * 1e6,
        "user_us": sum(b.user_s for b in batches) / calls * 1e6,
        "sys_us": sum(b.sys_s for b in batches) / calls * 1e6,
        "gc_us": sum(b.gc_s for b in batches) / calls * 1e6,
        "gc_full": sum(b.gc_full for b in batches) / len(batches),
        "per_s": calls / sum(b.wall_s for b in batches),
        "p50": percentile(latencies, 50),
        "p99": percentile(latencies, 99),
    }


class Echo:
    """A stand-in for the commands exchange: each publish is answered at once (no broker, no I/O)."""

    def __init__(self, answer: Callable[[str], None]) -> None:
        self.answer = answer

    async def publish(self, message: aio_pika.Message, routing_key: str, mandatory: bool = False) -> None:
        self.answer(message.correlation_id or "")


def offline_client(like: Any, reply: bytes) -> Any:
    """A client of ``like``'s package whose link publishes to an :class:`Echo` of ``reply``.
    (It sets the client's private link: a bench may look inside, a service should not.)"""
    client = type(like)(AMQP_URL, prefix=like.prefix, host=like.target)
    link_type = sys.modules[type(like).__module__]._Link
    echo = Echo(lambda correlation_id: client._waiters[correlation_id].deliver(reply))
    client._link = link_type(None, None, "offline", "offline", commands=echo)
    return client


def offline_bare(names: Names, reply: bytes) -> BareRpc:
    rpc = BareRpc(names)
    rpc.reply_to = "offline"
    rpc.exchange = Echo(lambda correlation_id: rpc.pending[correlation_id].set_result(reply))  # type: ignore[assignment]
    return rpc


def report_offline(results: dict[str, list[Batch]]) -> str:
    figures = {name: summary(bs) for name, bs in results.items()}
    bare = figures["bare"]["cpu_us"]
    lines = ["without the broker (each publish answered at once; the Python work of each side):"]
    for name, f in figures.items():
        extra = f", {f['cpu_us'] - bare:+.1f} µs vs bare ({f['cpu_us'] / bare:.2f}x)" if name != "bare" else ""
        lines.append(f"  {name:<10}{f['cpu_us']:>8.1f} µs CPU per call{extra}")
    return "\n".join(lines)


def own_work(client: Any, workspace_id: str, reply: bytes, n: int = 2000) -> list[str]:
    """The client's own Python work per call without any I/O (timeit, so much less noisy than the
    batches): the command built and validated against the bare loop's ``json.dumps``, the reply
    parsed into a ``Result`` against its ``json.loads``."""
    payload = {"workspace_id": workspace_id}

    def per_call(fn: Callable[[], object]) -> float:
        fn()
        return min(timeit.repeat(fn, number=n, repeat=5)) / n * 1e6

    bare_body = {"command_id": uuid.uuid4().hex, "type": "workspace.inspect", "payload": payload}
    rows = [
        ("command(): body, validation, JSON", per_call(lambda: client.command("workspace.inspect", payload))),
        ("bare: json.dumps(body).encode()", per_call(lambda: json.dumps(bare_body).encode())),
        ("parse_result(reply)", per_call(lambda: parse_result(reply))),
        ("bare: json.loads(reply)", per_call(lambda: json.loads(reply))),
    ]
    return [f"  {name:<36}{us:>8.1f} µs" for name, us in rows]


def load_client(directory: Path) -> ModuleType:
    """Another copy of the dockhand/client package (e.g. before a change), importable beside the
    checkout's own: A/B of a client change in one run, against one worker."""
    spec = importlib.util.spec_from_file_location(
        "dhbench_client_alt", directory / "__init__.py", submodule_search_locations=[str(directory)]
    )
    if spec is None or spec.loader is None:
        raise RuntimeError(f"{directory} is not a copy of dockhand/client")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


async def run(args: argparse.Namespace) -> int:
    names = Names()
    docker = aiodocker.Docker()
    worker = DockhandWorker(names, args.worker_concurrency)
    bare = BareRpc(names)
    clients: dict[str, Any] = {
        "dockhand": Client(AMQP_URL, prefix=names.prefix, host=names.host_id, name="dhbench-client-cost")
    }
    failed: dict[str, type[Exception]] = {"dockhand": CommandFailed}
    if args.compare_client is not None:
        alt = load_client(args.compare_client)
        clients["alt"] = alt.Client(AMQP_URL, prefix=names.prefix, host=names.host_id, name="dhbench-client-alt")
        failed["alt"] = alt.CommandFailed
    setup = await aio_pika.connect(AMQP_URL)
    ok = True
    try:
        log(f"run {names.tag}: host {names.host_id}, prefix {names.prefix}, target {args.target}, load {load()}")
        await worker.start(await setup.channel())
        log(f"dockhand worker pid {worker.pid} ready (log {worker.log_path})")
        for client in clients.values():
            await client.open()
        await bare.start()
        dh = clients["dockhand"]
        if args.target == "real":
            await dh.networks.ensure(names.network, labels={SESSION_LABEL: names.session})
            targets = [names.workspace(f"cc{k}") for k in range(args.workspaces)]
            for ws in targets:
                await dh.workspaces.create(
                    workspace_id=ws, image=IMAGE, network=names.network, labels={SESSION_LABEL: names.session}
                )
            log(f"{len(targets)} target workspaces running")
        else:
            # Distinct ids: one lane each in the worker, so no call waits behind another there.
            targets = [names.workspace(f"missing{k}") for k in range(args.calls)]

        def typed(client: Any, expected: type[Exception]) -> Callable[[int], Awaitable[None]]:
            """The typed call; a missing workspace's not_found is the expected outcome."""
            if args.target == "real":

                async def inspect(i: int) -> None:
                    await client.workspaces.inspect(targets[i % len(targets)])

                return inspect

            async def inspect_missing(i: int) -> None:
                try:
                    await client.workspaces.inspect(targets[i % len(targets)])
                except expected:
                    return
                raise RuntimeError("a missing workspace was found")

            return inspect_missing

        expected_status = "failed" if args.target == "missing" else "succeeded"

        def untyped(rpc: BareRpc) -> Callable[[int], Awaitable[None]]:
            async def bare_call(i: int) -> None:
                reply = await rpc.call("workspace.inspect", {"workspace_id": targets[i % len(targets)]}, names.host_id)
                if reply.get("status") != expected_status:
                    raise RuntimeError(f"unexpected reply: {reply}")

            return bare_call

        sides = {name: typed(client, failed[name]) for name, client in clients.items()}
        sides["bare"] = untyped(bare)
        for name, call in sides.items():  # warm-up: connections, caches, the worker's first commands
            warm = await batch(call, args.calls)
            log(f"warm-up {name}: {warm.cpu_us_per_call:.0f} µs CPU per call, {warm.errors} errors")
        results: dict[str, list[Batch]] = {name: [] for name in sides}
        for r in range(args.rounds):
            order = list(sides) if r % 2 == 0 else list(sides)[::-1]
            for name in order:
                b = await batch(sides[name], args.calls)
                results[name].append(b)
                log(
                    f"round {r + 1} {name}: {b.cpu_us_per_call:.0f} µs CPU per call "
                    f"({b.user_s / b.calls * 1e6:.0f} user), {b.per_s:.0f} calls/s, {b.errors} errors"
                )
        profiles = []
        if args.profile is not None:  # after the measured rounds: cProfile slows what it watches
            args.profile.mkdir(parents=True, exist_ok=True)
            for name, call in sides.items():
                profiler = cProfile.Profile()
                profiler.enable()
                await batch(call, args.calls)
                profiler.disable()
                profiles.append(args.profile / f"{name}.prof")
                profiler.dump_stats(profiles[-1])
                log(f"cProfile of one {name} batch: {profiles[-1]}")
        print(report(names, args, results))
        # The same calls with the broker taken out: each publish is answered at once with a real
        # reply of this run, so what is left is the Python work of each side, without I/O.
        offline_sides = {
            name: typed(offline_client(client, bare.last_reply), failed[name]) for name, client in clients.items()
        }
        offline_sides["bare"] = untyped(offline_bare(names, bare.last_reply))
        offline: dict[str, list[Batch]] = {name: [] for name in offline_sides}
        for r in range(args.rounds + 1):
            for name in list(offline_sides) if r % 2 == 0 else list(offline_sides)[::-1]:
                b = await batch(offline_sides[name], args.calls)
                if r > 0:  # the first is the warm-up
                    offline[name].append(b)
        print(report_offline(offline))
        print(f"the client's own work per call, no I/O (best of 5 x 2000, {len(bare.last_reply)}-byte reply):")
        print("\n".join(own_work(dh, targets[0], bare.last_reply)))
        if profiles:  # Python function calls per call: a count, so steadier than CPU time
            counts = {path.stem: pstats.Stats(str(path)).total_calls / args.calls for path in profiles}  # type: ignore[attr-defined]
            calls_text = ", ".join(f"{name} {n:.0f}" for name, n in counts.items())
            print(f"under cProfile, Python function calls per call: {calls_text}")
        for path in profiles:
            print(f"\n{path.stem}: one batch under cProfile, top functions by own time")
            pstats.Stats(str(path), stream=sys.stdout).sort_stats("tottime").print_stats(20)
        ok = not any(b.errors for bs in results.values() for b in bs)
    except Exception as exc:
        ok = False
        log(f"FAILED: {type(exc).__name__}: {exc}")
    finally:
        log("cleaning up")
        for client in clients.values():
            with contextlib.suppress(Exception):
                await client.close()
        with contextlib.suppress(Exception):
            await bare.close()
        code = await worker.stop()
        log(f"dockhand worker exit code {code}")
        ok = ok and code == 0
        containers, networks = await remove_everything(docker, names)
        log(f"removed {containers} containers and {networks} networks")
        await delete_topology(names)
        shutil.rmtree(worker.state_dir, ignore_errors=True)
        await setup.close()
        await docker.close()
    return 0 if ok else 1


def report(names: Names, args: argparse.Namespace, results: dict[str, list[Batch]]) -> str:
    what = "a missing workspace each" if args.target == "missing" else f"{args.workspaces} running workspaces"
    lines = [
        f"client cost: {args.calls} concurrent workspace.inspect of {what}, {args.rounds} rounds per side "
        f"(order alternating, after a warm-up); run {names.tag}, load {load()}",
    ]
    if args.compare_client is not None:
        lines.append(f"alt = the client package at {args.compare_client}")
    lines.append(
        f"{'side':<10}{'CPU µs/call':>12}{'user':>8}{'sys':>8}{'GC':>7}{'full GCs':>9}{'calls/s':>10}"
        f"{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}"
    )
    figures = {name: summary(bs) for name, bs in results.items()}
    for name, f in figures.items():
        errors = sum(b.errors for b in results[name])
        lines.append(
            f"{name:<10}{f['cpu_us']:>12.1f}{f['user_us']:>8.1f}{f['sys_us']:>8.1f}{f['gc_us']:>7.1f}"
            f"{f['gc_full']:>9.1f}{f['per_s']:>10.0f}"
            f"{f['p50']:>9.1f}{f['p99']:>9.1f}{errors:>8}"
        )
    bare = figures["bare"]
    for name in (n for n in results if n != "bare"):
        per_round = sorted(d.cpu_s / b.cpu_s for d, b in zip(results[name], results["bare"], strict=True))
        ratio = figures[name]["cpu_us"] / bare["cpu_us"]
        verdict = "MET" if ratio <= TARGET_RATIO else "NOT MET"
        lines.append(
            f"CPU per call {name} / bare: {ratio:.2f}x pooled, median round {statistics.median(per_round):.2f}x "
            f"(rounds {per_round[0]:.2f}-{per_round[-1]:.2f}), "
            f"user only {figures[name]['user_us'] / bare['user_us']:.2f}x"
            + (f"; target <= {TARGET_RATIO:g}x -> {verdict}" if name == "dockhand" else "")
        )
    for name in results:
        lines.append(f"per round, {name} µs/call: " + ", ".join(f"{b.cpu_us_per_call:.0f}" for b in results[name]))
    for name, bs in results.items():
        if any(b.errors for b in bs):
            lines.append(f"note: {name}: first error: {next(b.first_error for b in bs if b.errors)}")
    return "\n".join(lines)


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=1000, help="concurrent calls per batch (default 1000)")
    parser.add_argument("--rounds", type=int, default=5, help="measured batches per side (default 5)")
    parser.add_argument(
        "--target",
        choices=("missing", "real"),
        default="missing",
        help="inspect missing workspaces (a not_found result each) or running ones (default missing)",
    )
    parser.add_argument("--workspaces", type=int, default=64, help="running workspaces with --target real (64)")
    parser.add_argument("--worker-concurrency", type=int, default=64, help="the worker's slots (default 64)")
    parser.add_argument(
        "--compare-client",
        type=Path,
        metavar="DIR",
        help="also measure another copy of dockhand/client (e.g. before a change) as side 'alt'",
    )
    parser.add_argument(
        "--profile", type=Path, help="cProfile one more batch of each side (after the rounds); stats to DIR/<side>.prof"
    )
    return asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
