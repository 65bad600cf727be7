"""The peer: a Celery app whose tasks drive Docker through docker-py, written as its users would.

- Broker: the same RabbitMQ as dockhand, on a vhost of its own (``DHBENCH_CELERY_BROKER``), so
  its queues, the ``celery.pidbox`` control exchange and the reply queues collide with nothing.
- ``task_acks_late=True`` and ``worker_prefetch_multiplier=1``: a task is acked after it ran, and a
  worker holds no more messages than it has pool slots: the at-least-once set-up that matches
  dockhand's "ack after the result".
- Result backend ``rpc://``: results travel back over AMQP to the caller's own reply queue, the
  same path as dockhand's ``reply_to``. It needs nothing but the broker both already use (Redis
  or a database would add a second service and a second hop that dockhand does not have).
- Pool: ``threads`` (started by bench/run.py with ``--pool threads --concurrency N``). Each task
  is one or two blocking HTTP calls to dockerd over its Unix socket, so the work is I/O-bound
  and the GIL is released while a thread waits; N threads in one process give N tasks in flight
  at a fraction of prefork's memory (one interpreter instead of N + 1) and without prefork's
  pipe hop from the parent to a child process. docker-py's client is shared by the threads, with
  a connection pool as large as the pool (``DHBENCH_DOCKER_POOL``), else requests would open
  and discard a connection for every call beyond its default of 10.

Every task does what a docker-py user writes: ``client.containers.get(name)`` (one inspect)
and then the action, or ``client.containers.create(...)`` (docker-py inspects after creating).
"""

from __future__ import annotations

import functools
import os
from typing import Any

import docker
from celery import Celery

BROKER = os.environ.get("DHBENCH_CELERY_BROKER", "amqp://guest:guest@localhost:5672//")
QUEUE = os.environ.get("DHBENCH_CELERY_QUEUE", "dockhand-peer")
DOCKER_POOL = int(os.environ.get("DHBENCH_DOCKER_POOL", "64"))

app = Celery("dockhand_peer", broker=BROKER, backend="rpc://")
app.conf.update(
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1,
    task_default_queue=QUEUE,
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)


@functools.cache
def client() -> docker.DockerClient:
    """One docker-py client per worker process, shared by the pool's threads."""
    return docker.from_env(max_pool_size=DOCKER_POOL)


def summary(container: Any) -> dict[str, Any]:
    """What the caller gets back: roughly dockhand's ``workspace`` object, from ``attrs``."""
    attrs = container.attrs
    settings = attrs.get("NetworkSettings") or {}
    return {
        "container_id": container.id,
        "container_name": container.name,
        "image": (attrs.get("Config") or {}).get("Image"),
        "state": (attrs.get("State") or {}).get("Status"),
        "labels": container.labels,
        "ports": settings.get("Ports") or {},
        "networks": {name: ep.get("IPAddress") for name, ep in (settings.get("Networks") or {}).items()},
    }


@app.task(name="dockhand_peer.ping")
def ping() -> str:
    return "pong"


@app.task(name="dockhand_peer.inspect_workspace")
def inspect_workspace(name: str) -> dict[str, Any]:
    return summary(client().containers.get(name))


@app.task(name="dockhand_peer.create_workspace")
def create_workspace(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    docker_client = client()
    network = spec["network"]
    container = docker_client.containers.create(
        spec["image"],
        name=name,
        labels=spec["labels"],
        ports={f"{port}/tcp": (spec["publish_host_ip"], None) for port in spec["ports"]},
        network=network,
        networking_config={network: docker_client.api.create_endpoint_config(aliases=[spec["alias"]])},
        nano_cpus=spec["nano_cpus"],
        mem_limit=spec["memory_bytes"],
        pids_limit=spec["pids"],
        security_opt=["no-new-privileges:true"],
        restart_policy={"Name": "no"},
    )
    return summary(container)


@app.task(name="dockhand_peer.start_workspace")
def start_workspace(name: str) -> str:
    container = client().containers.get(name)
    container.start()
    return container.id


@app.task(name="dockhand_peer.stop_workspace")
def stop_workspace(name: str, timeout_s: int) -> str:
    container = client().containers.get(name)
    container.stop(timeout=timeout_s)
    return container.id


@app.task(name="dockhand_peer.remove_workspace")
def remove_workspace(name: str) -> bool:
    client().containers.get(name).remove()
    return True
