"""What tracing costs: `workspace.inspect` round trips through a worker with tracing on, and
through one with it off, side by side in one run, requests alternating between them.

    .venv/bin/python bench/tracing_cost.py [--requests 300]

"On" is a full SDK pipeline: every span recorded and exported by a batch processor (the
console exporter, written to /dev/null, stands in for an OTLP collector). "Off" is
OTEL_SDK_DISABLED=true. Prints p50/p90/p99 per side and the on/off ratio; a script, not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import aio_pika

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


class Caller:
    def __init__(self, channel: aio_pika.abc.AbstractChannel, exchange: aio_pika.abc.AbstractExchange) -> None:
        self.channel = channel
        self.exchange = exchange
        self.waiting: dict[str, asyncio.Future[dict[str, object]]] = {}

    async def setup(self) -> None:
        self.queue = await self.channel.declare_queue(exclusive=True)
        await self.queue.consume(self._on_reply, no_ack=True)

    async def _on_reply(self, message: aio_pika.abc.AbstractIncomingMessage) -> None:
        future = self.waiting.pop(message.correlation_id or "", None)
        if future is not None:
            future.set_result(json.loads(message.body))

    async def call(self, host: str, command_type: str, payload: dict[str, object]) -> tuple[float, dict[str, object]]:
        command_id = uuid.uuid4().hex
        future: asyncio.Future[dict[str, object]] = asyncio.get_running_loop().create_future()
        self.waiting[command_id] = future
        began = time.perf_counter()
        body = {"command_id": command_id, "type": command_type, "payload": payload}
        await self.exchange.publish(
            aio_pika.Message(json.dumps(body).encode(), reply_to=self.queue.name, correlation_id=command_id),
            routing_key=f"{host}.{command_type}",
        )
        result = await asyncio.wait_for(future, 60)
        return (time.perf_counter() - began) * 1000, result


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
        connection = await aio_pika.connect(AMQP_URL)
        try:
            channel = await connection.channel()
            exchange = await channel.declare_exchange(f"{prefix}.commands", aio_pika.ExchangeType.TOPIC, durable=True)
            caller = Caller(channel, exchange)
            await caller.setup()
            hosts = {side: f"{tag}-{side}" for side in workers}
            for side, host in hosts.items():  # wait until each answers, then give it a workspace
                for _ in range(100):
                    try:
                        await asyncio.wait_for(caller.call(host, "host.info", {}), 1)
                        break
                    except TimeoutError:
                        continue
                _, created = await caller.call(
                    host,
                    "workspace.create",
                    {"workspace_id": f"{tag}-{side}", "image": IMAGE, "labels": {"dockhand-test.session": tag}},
                )
                assert created["status"] == "succeeded", created
            times: dict[str, list[float]] = {"off": [], "on": []}
            for _ in range(20):  # warm-up
                for side, host in hosts.items():
                    await caller.call(host, "workspace.inspect", {"workspace_id": f"{tag}-{side}"})
            for i in range(requests):
                order = ("off", "on") if i % 2 == 0 else ("on", "off")
                for side in order:
                    took, _ = await caller.call(hosts[side], "workspace.inspect", {"workspace_id": f"{tag}-{side}"})
                    times[side].append(took)
            print(f"\ntracing cost: workspace.inspect round trip, {requests} requests per side, alternating")
            print(f"{'side':<6}{'p50 ms':>10}{'p90 ms':>10}{'p99 ms':>10}{'mean ms':>10}")
            for side in ("off", "on"):
                t = times[side]
                print(f"{side:<6}{pct(t, 50):>10.2f}{pct(t, 90):>10.2f}{pct(t, 99):>10.2f}{statistics.mean(t):>10.2f}")
            for p in (50, 99):
                print(f"ratio on/off p{p}: {pct(times['on'], p) / pct(times['off'], p):.2f}")
            for side, host in hosts.items():
                await caller.call(host, "workspace.remove", {"workspace_id": f"{tag}-{side}", "force": True})
            await caller.call(hosts["off"], "network.remove", {"name": f"{prefix}-net"})
        finally:
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
