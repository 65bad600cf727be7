"""The floor: the leanest hand-written aio-pika worker with the guarantees of dockhand's cheap path.

It consumes a host's quorum command queue, declared as dockhand's worker/topology.py declares it
(``<prefix>.commands.<host>``, bound to ``<prefix>.commands`` with ``<host>.#`` and ``all.#``, the
same queue arguments), with manual acks and dockhand's default prefetch (slots x 2). Per message:
``json.loads``, one container inspect through aiodocker (``<name prefix><workspace_id>``), a result
in dockhand's ``Result`` shape (a ``workspace`` body, or ``failed`` / ``not_found``) published
persistent and confirmed to ``<prefix>.results``, then confirmed to ``reply_to`` with the
``correlation_id``, and only then the ack. So dockhand's ``Client`` reads its answers as it reads
dockhand's (``workspaces.inspect(ws, host=<floor host>)``): the bench's client side is the same code.

It does not do what dockhand does besides: no validation, no journal (a redelivery runs again),
no tracing or logging per message, no per-workspace order, no command type but an inspect.

Run: python bench/peers/floor.py --prefix P --host-id H [--prefetch N] [--name-prefix dockhand-]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
from datetime import UTC, datetime

import aio_pika
import aiodocker


def now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


async def main(args: argparse.Namespace) -> None:
    docker = aiodocker.Docker()
    connection = await aio_pika.connect(args.amqp_url)
    channel = await connection.channel()  # publisher confirms on
    await channel.set_qos(prefetch_count=args.prefetch)
    commands = await channel.declare_exchange(f"{args.prefix}.commands", aio_pika.ExchangeType.TOPIC, durable=True)
    results = await channel.declare_exchange(f"{args.prefix}.results", aio_pika.ExchangeType.TOPIC, durable=True)
    queue = await channel.declare_queue(
        f"{args.prefix}.commands.{args.host_id}",
        durable=True,
        arguments={
            "x-queue-type": "quorum",
            "x-dead-letter-exchange": f"{args.prefix}.dead",
            "x-dead-letter-strategy": "at-least-once",
            "x-overflow": "reject-publish",
            "x-delivery-limit": 5,
            "x-single-active-consumer": True,
        },
    )
    for key in (f"{args.host_id}.#", "all.#"):
        await queue.bind(commands, routing_key=key)

    async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
        started = now()
        command = json.loads(message.body)
        result, error = None, None
        try:
            info = (await docker.containers.get(args.name_prefix + command["payload"]["workspace_id"]))._container
            networks = (info.get("NetworkSettings") or {}).get("Networks") or {}
            result = {
                "workspace_id": command["payload"]["workspace_id"],
                "container_id": info["Id"],
                "container_name": info["Name"].lstrip("/"),
                "host_id": args.host_id,
                "image": info["Config"]["Image"],
                "image_id": info["Image"],
                "state": info["State"]["Status"],
                "labels": info["Config"].get("Labels") or {},
                "networks": {name: ep.get("IPAddress") or "" for name, ep in networks.items()},
            }
        except aiodocker.DockerError as exc:
            code = "not_found" if exc.status == 404 else "docker_unavailable"
            error = {"code": code, "message": str(exc.message), "retryable": exc.status >= 500}
        status = "succeeded" if error is None else "failed"
        body = json.dumps({
            "command_id": command["command_id"], "type": command["type"], "status": status,
            "host_id": args.host_id, "worker_id": args.host_id, "result": result, "error": error,
            "started_at": started, "finished_at": now(), "duration_ms": 0.0,
        }).encode()  # fmt: skip
        persistent = aio_pika.Message(
            body, content_type="application/json", correlation_id=message.correlation_id, delivery_mode=2
        )
        await results.publish(persistent, routing_key=f"{args.host_id}.{command['type']}.{status}", mandatory=False)
        if message.reply_to:
            reply = aio_pika.Message(body, content_type="application/json", correlation_id=message.correlation_id)
            await channel.default_exchange.publish(reply, routing_key=message.reply_to, mandatory=False)
        await message.ack()

    await queue.consume(on_message)
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(signum, stop.set)
    print("floor ready", flush=True)
    await stop.wait()
    await connection.close()
    await docker.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--amqp-url", default="amqp://guest:guest@localhost:5672/")
    parser.add_argument("--prefix", required=True, help="exchange prefix (DOCKHAND_EXCHANGE_PREFIX)")
    parser.add_argument("--host-id", required=True, help="the host id whose command queue it consumes")
    parser.add_argument("--prefetch", type=int, default=32, help="dockhand: max_concurrency x prefetch_per_slot")
    parser.add_argument("--name-prefix", default="dockhand-", help="DOCKHAND_CONTAINER_NAME_PREFIX")
    asyncio.run(main(parser.parse_args()))
