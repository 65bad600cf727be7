"""What tracing costs: `workspace.inspect` round trips through a worker with tracing on, and
through one with it off, side by side in one run, requests alternating between them.

    .venv/bin/python bench/tracing_cost.py [--requests 300]

"On" is a full SDK pipeline: every span recorded and exported by a batch processor (the
console exporter, written to /dev/null, stands in for an OTLP collector). "Off" is
OTEL_SDK_DISABLED=true. Prints p50/p90/p99 per side and the on/off ratio; a script, not a test.

The calls go through ``dockhand.client`` (typed calls, retries off: one attempt is one round trip).
Its own work per call is the same on both sides, so it cancels out of the ratio; the absolute
figures include it (bench/client_cost.py measures it).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable
from pathlib import Path

import aio_pika

from dockhand.client import Client, NoRoute, ReplyTimeout, Retry

AMQP_URL = os.environ.get("DOCKHAND_TEST_AMQP_URL", "amqp://guest:guest@localhost:5672/")
IMAGE = os.environ.get("DOCKHAND_TEST_IMAGE", "dockhand-test/busybox:latest")
REPO = Path(__file__).resolve().parents[1]


def start_worker(name: str, prefix: str, tag: str, state: Path, tracing: bool) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "DOCKHAND_AMQP_URL": AMQP_URL,
        "DOCKHAND_HOST_ID": f"{tag}-{name}",
        "DOCKHAND_EXCHANGE_PREFIX": prefix,
        "DOCKHAND_DEFAULT_NETWORK": f"{prefix}-net",
        "DOCKHAND_STATE_DIR": str(state / name),
        "DOCKHAND_HTTP_ENABLED": "false",
        "DOCKHAND_LOG_LEVEL": "WARNING",
    }
    if tracing:
        env["OTEL_TRACES_EXPORTER"] = "console"
    else:
        env["OTEL_SDK_DISABLED"] = "true"
    return subprocess.Popen(
        [sys.executable, "-m", "dockhand.worker"],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


async def timed(call: Awaitable[object]) -> float:
    """Milliseconds one call took, from the caller's side (the client's own work included)."""
    began = time.perf_counter()
    await call
    return (time.perf_counter() - began) * 1000


async def until_ready(dh: Client, host: str, within_s: float = 60) -> None:
    """Until ``host`` answers: before its worker has bound its queue the publish comes back at once."""
    deadline = time.monotonic() + within_s
    while True:
        try:
            await dh.host.info(host=host, timeout=1, retry=Retry.off(1))
            return
        except (NoRoute, ReplyTimeout):
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


async def main(requests: int) -> None:
    tag = f"trc{secrets.token_hex(3)}"
    prefix = f"dhbench-{tag}"
    with tempfile.TemporaryDirectory() as tmp:
        workers = {
            "off": start_worker("off", prefix, tag, Path(tmp), tracing=False),
            "on": start_worker("on", prefix, tag, Path(tmp), tracing=True),
        }
        connection = await aio_pika.connect(AMQP_URL)  # the exchange before the workers, the clean-up after
        dh = Client(AMQP_URL, prefix=prefix, retry=Retry.off(60), timeout=60, name="dhbench-tracing-cost")
        try:
            channel = await connection.channel()
            await channel.declare_exchange(f"{prefix}.commands", aio_pika.ExchangeType.TOPIC, durable=True)
            hosts = {side: f"{tag}-{side}" for side in workers}
            for side, host in hosts.items():  # wait until each answers, then give it a workspace
                await until_ready(dh, host)
                await dh.workspaces.create(
                    workspace_id=f"{tag}-{side}", image=IMAGE, labels={"dockhand-test.session": tag}, host=host
                )
            times: dict[str, list[float]] = {"off": [], "on": []}
            for _ in range(20):  # warm-up
                for side, host in hosts.items():
                    await dh.workspaces.inspect(f"{tag}-{side}", host=host)
            for i in range(requests):
                order = ("off", "on") if i % 2 == 0 else ("on", "off")
                for side in order:
                    times[side].append(await timed(dh.workspaces.inspect(f"{tag}-{side}", host=hosts[side])))
            print(f"\ntracing cost: workspace.inspect round trip, {requests} requests per side, alternating")
            print(f"{'side':<6}{'p50 ms':>10}{'p90 ms':>10}{'p99 ms':>10}{'mean ms':>10}")
            for side in ("off", "on"):
                t = times[side]
                print(f"{side:<6}{pct(t, 50):>10.2f}{pct(t, 90):>10.2f}{pct(t, 99):>10.2f}{statistics.mean(t):>10.2f}")
            for p in (50, 99):
                print(f"ratio on/off p{p}: {pct(times['on'], p) / pct(times['off'], p):.2f}")
            for side, host in hosts.items():
                await dh.workspaces.remove(f"{tag}-{side}", force=True, host=host)
            await dh.networks.remove(f"{prefix}-net", host=hosts["off"])
        finally:
            await dh.close()
            for proc in workers.values():
                proc.send_signal(signal.SIGTERM)
            for proc in workers.values():
                proc.wait(60)
            channel = await connection.channel()
            for queue in [f"{prefix}.commands.{h}" for h in (f"{tag}-off", f"{tag}-on")] + [
                f"{prefix}.commands.any",
                f"{prefix}.commands.dead",
            ]:
                await channel.queue_delete(queue)
            for name in ("commands", "results", "events", "health", "dead"):
                await channel.exchange_delete(f"{prefix}.{name}")
            await connection.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=300)
    asyncio.run(main(parser.parse_args().requests))
