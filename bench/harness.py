"""What bench/run.py brings up and drives: the workers, the four ways to reach Docker, cleanup.

Four "systems" do the same Docker work, each behind the same small interface
(``inspect(slot)``, and ``steps(key)`` / ``lifecycle(key)`` for the three that make workspaces):

- ``Dockhand``: the typed calls of ``dockhand.client`` (one connection, one reply queue, confirmed
  ``mandatory`` publishes) to the bench worker; their client-side cost is bench/client_cost.py's.
- the floor: the same ``Dockhand`` class and the same ``Client``, aimed at the host id of
  bench/peers/floor.py (``FloorWorker``), so the client side costs the same and only the worker differs.
- ``Direct``: aiodocker in this process, the fewest Docker calls that do the job.
- ``CeleryPeer``: ``task.delay(...).get()`` against the Celery + docker-py worker in bench/peers/,
  from one thread per concurrency slot (the way a synchronous Celery client is used).

``DockerCallCounter`` is a Unix-socket proxy in front of dockerd that counts the HTTP requests a
worker makes (run.py's P5: Docker API calls per lifecycle step).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import re
import secrets
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aio_pika
import aiodocker

from dockhand.client import Client, Retry

AMQP_URL = os.environ.get("DOCKHAND_TEST_AMQP_URL", "amqp://guest:guest@localhost:5672/")
IMAGE = os.environ.get("DOCKHAND_TEST_IMAGE", "dockhand-test/busybox:latest")
SESSION_LABEL = "dockhand-test.session"
REPO = Path(__file__).resolve().parents[1]
CONTAINER_PREFIX = "dockhand-"  # the worker's default DOCKHAND_CONTAINER_NAME_PREFIX
STOP_TIMEOUT_S = 5  # the test image's shell traps TERM: a stop takes milliseconds, not this
# What dockhand's create does by default (settings' defaults): the baselines get the same.
NANO_CPUS = 1_000_000_000
MEMORY_BYTES = 512 * 1024 * 1024
PIDS = 512
PUBLISH_HOST_IP = "127.0.0.1"
EXPOSED_PORT = 8080  # the test image's EXPOSE


def log(message: str) -> None:
    """Progress goes to stderr; stdout is the table."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest rank (the same method as bench/event_latency.py)."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


@dataclass(frozen=True)
class Names:
    """Every name this run uses, all derived from one random tag."""

    tag: str = field(default_factory=lambda: secrets.token_hex(3))

    @property
    def host_id(self) -> str:
        return f"bench-{self.tag}"

    @property
    def floor_host(self) -> str:
        """The floor's host id: its own command queue under this run's prefix."""
        return f"bench-{self.tag}-floor"

    @property
    def session(self) -> str:
        return f"bench-{self.tag}"

    @property
    def prefix(self) -> str:
        return f"dhbench-{self.tag}"

    @property
    def network(self) -> str:
        return f"dhbench-{self.tag}"

    @property
    def vhost(self) -> str:
        return f"dhbench-{self.tag}"

    def workspace(self, key: str) -> str:
        return f"b{self.tag}-{key}"

    def container(self, workspace_id: str) -> str:
        return CONTAINER_PREFIX + workspace_id


# --- processes -------------------------------------------------------------------------------


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS / VmHWM in bytes from /proc/<pid>/status (Linux)."""
    out: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in {"VmRSS", "VmHWM"}:
            out[key] = int(value.split()[0]) * 1024
    return out


def proc_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process (and its reaped children) from /proc/<pid>/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    utime, stime, cutime, cstime = (int(x) for x in fields[11:15])
    return (utime + stime + cutime + cstime) / os.sysconf("SC_CLK_TCK")


async def stop_process(proc: asyncio.subprocess.Process, name: str, grace_s: float = 60) -> int | None:
    """SIGTERM, then SIGKILL after ``grace_s``; only ever the process this run started."""
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
    try:
        return await asyncio.wait_for(proc.wait(), grace_s)
    except TimeoutError:
        log(f"{name} (pid {proc.pid}) ignored SIGTERM for {grace_s:.0f} s; killing it")
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        return None


async def run_cli(*argv: str, timeout_s: float = 60) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout_s)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        return -1, f"{argv[0]} timed out after {timeout_s:.0f} s"
    return proc.returncode or 0, out.decode(errors="replace")


def rabbitmqctl() -> str:
    found = shutil.which("rabbitmqctl", path=os.environ.get("PATH", "") + ":/usr/local/sbin:/usr/sbin:/sbin")
    if found is None:
        raise RuntimeError("rabbitmqctl not found: the Celery peer needs it for its own vhost (or pass --no-celery)")
    return found


def amqp_url_for_vhost(vhost: str) -> str:
    return AMQP_URL.rstrip("/") + "/" + vhost


# --- the dockhand worker and its client ------------------------------------------------------


class DockhandWorker:
    """``python -m dockhand.worker`` with this run's host id, prefix, network and a temporary state dir."""

    def __init__(
        self, names: Names, concurrency: int, source: Path = REPO, extra_env: dict[str, str] | None = None
    ) -> None:
        self.names = names
        self.source = source  # the checkout whose worker/ runs (``--worker-dir``: A/B a change)
        self.state_dir = Path(tempfile.mkdtemp(prefix=f"dhbench-{names.tag}-state-"))
        self.log_path = Path(tempfile.gettempdir()) / f"dhbench-{names.tag}-worker.log"
        self.env = {
            **os.environ,
            "DOCKHAND_AMQP_URL": AMQP_URL,
            "DOCKHAND_HOST_ID": names.host_id,
            "DOCKHAND_EXCHANGE_PREFIX": names.prefix,
            "DOCKHAND_DEFAULT_NETWORK": names.network,
            "DOCKHAND_LOG_LEVEL": "WARNING",
            "DOCKHAND_STATE_DIR": str(self.state_dir),
            "DOCKHAND_MAX_CONCURRENCY": str(concurrency),
            # Never take a fixed port another worker on this machine may hold.
            "DOCKHAND_HTTP_HOST": "127.0.0.1",
            "DOCKHAND_HTTP_PORT": "0",
            **(extra_env or {}),
        }
        self.proc: asyncio.subprocess.Process | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    async def start(self, channel: aio_pika.abc.AbstractChannel, timeout_s: float = 60) -> None:
        """Start it and wait for its startup ``discovery.snapshot`` (its readiness signal at WARNING):
        by then the topology is declared and the event pipeline is live. (A one-shot probe queue on a
        channel of the caller's, bound before the worker exists; not a client: no commands, no replies.)"""
        ready = asyncio.Event()

        async def on_event(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            if (message.routing_key or "").endswith(".discovery.snapshot"):
                ready.set()

        queue = await channel.declare_queue(exclusive=True, auto_delete=True)
        events = await channel.declare_exchange(
            f"{self.names.prefix}.events", aio_pika.ExchangeType.TOPIC, durable=True
        )
        await queue.bind(events, routing_key=f"{self.names.host_id}.discovery.snapshot")
        tag = await queue.consume(on_event, no_ack=True)
        with self.log_path.open("ab") as out:  # a restart (P5) appends
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                # The one import package (a checkout older than it has only the top-level worker/).
                "dockhand.worker" if (self.source / "dockhand" / "worker").exists() else "worker",
                cwd=self.source,
                env=self.env,
                stdout=out,
                stderr=asyncio.subprocess.STDOUT,
            )
        try:
            deadline = time.monotonic() + timeout_s
            while not ready.is_set():
                if self.proc.returncode is not None:
                    raise RuntimeError(f"dockhand worker exited with {self.proc.returncode}:\n{self.tail()}")
                if time.monotonic() > deadline:
                    raise TimeoutError(f"dockhand worker not ready after {timeout_s:.0f} s:\n{self.tail()}")
                await asyncio.sleep(0.05)
        finally:
            await queue.cancel(tag)
            await queue.delete(if_unused=False, if_empty=False)

    def tail(self, chars: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.exists() else ""

    async def stop(self) -> int | None:
        if self.proc is None:
            return None
        return await stop_process(self.proc, "dockhand worker")

    async def restart(self, channel: aio_pika.abc.AbstractChannel, env: dict[str, str]) -> int | None:
        """Stop it (its exit code is returned), then start it again with ``env`` added."""
        code = await self.stop()
        self.env.update(env)
        await self.start(channel)
        return code


def dockhand_client(names: Names) -> Client:
    """The bench's dockhand side: ``dockhand.client`` as a service would use it (typed calls,
    confirmed ``mandatory`` publishes, one reply queue), with retries off: a bench counts a
    failed or unanswered command as an error instead of hiding it behind a second attempt."""
    return Client(AMQP_URL, prefix=names.prefix, host=names.host_id, retry=Retry.off(60), timeout=60, name="dhbench")


# --- the floor (bench/peers/floor.py) ------------------------------------------------------------


class FloorWorker:
    """``python bench/peers/floor.py`` on this run's prefix, with the host id ``names.floor_host``
    and dockhand's prefetch for ``concurrency`` slots (``max_concurrency x prefetch_per_slot``, 2)."""

    def __init__(self, names: Names, concurrency: int) -> None:
        self.names = names
        self.prefetch = concurrency * 2
        self.log_path = Path(tempfile.gettempdir()) / f"dhbench-{names.tag}-floor.log"
        self.proc: asyncio.subprocess.Process | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def queue(self) -> str:
        return f"{self.names.prefix}.commands.{self.names.floor_host}"

    async def start(self, timeout_s: float = 30) -> None:
        """Start it and wait for its ``floor ready`` line (printed once it consumes)."""
        argv = [
            sys.executable, str(REPO / "bench" / "peers" / "floor.py"), "--amqp-url", AMQP_URL,
            "--prefix", self.names.prefix, "--host-id", self.names.floor_host, "--prefetch", str(self.prefetch),
            "--name-prefix", CONTAINER_PREFIX,
        ]  # fmt: skip
        with self.log_path.open("wb") as out:
            self.proc = await asyncio.create_subprocess_exec(
                *argv, cwd=REPO, stdout=out, stderr=asyncio.subprocess.STDOUT
            )
        deadline = time.monotonic() + timeout_s
        while "floor ready" not in self.tail():
            if self.proc.returncode is not None:
                raise RuntimeError(f"floor exited with {self.proc.returncode}:\n{self.tail()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"floor not ready after {timeout_s:.0f} s:\n{self.tail()}")
            await asyncio.sleep(0.05)

    def tail(self, chars: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.exists() else ""

    async def stop(self) -> int | None:
        if self.proc is None:
            return None
        return await stop_process(self.proc, "floor", grace_s=10)


# --- the Celery + docker-py peer ---------------------------------------------------------------


class CeleryWorker:
    """``celery -A bench.peers.celery_app worker --pool threads`` on this run's own vhost."""

    def __init__(self, names: Names, concurrency: int) -> None:
        self.names = names
        self.concurrency = concurrency
        self.broker = amqp_url_for_vhost(names.vhost)
        self.log_path = Path(tempfile.gettempdir()) / f"dhbench-{names.tag}-celery.log"
        self.env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p),
            "DHBENCH_CELERY_BROKER": self.broker,
            "DHBENCH_CELERY_QUEUE": f"{names.prefix}.celery",
            "DHBENCH_DOCKER_POOL": str(concurrency),
        }
        self.proc: asyncio.subprocess.Process | None = None
        self.vhost_created = False

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    async def create_vhost(self) -> None:
        ctl = rabbitmqctl()
        code, out = await run_cli(ctl, "-q", "add_vhost", self.names.vhost)
        if code != 0:
            raise RuntimeError(f"rabbitmqctl add_vhost failed: {out.strip()}")
        self.vhost_created = True
        user = AMQP_URL.split("://", 1)[1].split(":", 1)[0] or "guest"
        code, out = await run_cli(ctl, "-q", "set_permissions", "-p", self.names.vhost, user, ".*", ".*", ".*")
        if code != 0:
            raise RuntimeError(f"rabbitmqctl set_permissions failed: {out.strip()}")

    async def delete_vhost(self) -> None:
        """Deletes every queue and exchange Celery made in it."""
        if self.vhost_created:
            code, out = await run_cli(rabbitmqctl(), "-q", "delete_vhost", self.names.vhost)
            if code != 0:
                log(f"rabbitmqctl delete_vhost {self.names.vhost} failed: {out.strip()}")

    async def start(self, timeout_s: float = 60) -> None:
        # The client side (this process) reads the same settings from the environment.
        os.environ.update({k: self.env[k] for k in ("DHBENCH_CELERY_BROKER", "DHBENCH_CELERY_QUEUE")})
        argv = [
            sys.executable, "-m", "celery", "-A", "bench.peers.celery_app", "worker",
            "--pool", "threads", "--concurrency", str(self.concurrency),
            "--loglevel", "WARNING", "--hostname", f"peer-{self.names.tag}@%h",
        ]  # fmt: skip
        with self.log_path.open("wb") as out:
            self.proc = await asyncio.create_subprocess_exec(
                *argv, cwd=REPO, env=self.env, stdout=out, stderr=asyncio.subprocess.STDOUT
            )
        from bench.peers import celery_app as peer

        deadline = time.monotonic() + timeout_s
        while True:
            if self.proc.returncode is not None:
                raise RuntimeError(f"celery worker exited with {self.proc.returncode}:\n{self.tail()}")
            try:
                # A task round trip is the readiness proof (at WARNING Celery does not log "ready").
                reply = await asyncio.to_thread(lambda: peer.ping.delay().get(timeout=2))
                if reply == "pong":
                    return
            except Exception as exc:
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"celery worker not ready after {timeout_s:.0f} s ({exc}):\n{self.tail()}"
                    ) from exc

    def tail(self, chars: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.exists() else ""

    async def stop(self) -> int | None:
        if self.proc is None:
            return None
        return await stop_process(self.proc, "celery worker", grace_s=30)


# --- the three systems ---------------------------------------------------------------------------


def container_config(names: Names, name: str, workspace_id: str) -> dict[str, Any]:
    """What dockhand's workspace.create sends Docker for this bench's spec, for the direct baseline."""
    port = f"{EXPOSED_PORT}/tcp"
    return {
        "Image": IMAGE,
        "Env": [],
        "Labels": {SESSION_LABEL: names.session, "dhbench.workspace": workspace_id},
        "ExposedPorts": {port: {}},
        "HostConfig": {
            "NanoCpus": NANO_CPUS,
            "Memory": MEMORY_BYTES,
            "PidsLimit": PIDS,
            "SecurityOpt": ["no-new-privileges:true"],
            "RestartPolicy": {"Name": "no"},
            "NetworkMode": names.network,
            "Mounts": [],
            "PortBindings": {port: [{"HostIp": PUBLISH_HOST_IP, "HostPort": ""}]},
        },
        "NetworkingConfig": {"EndpointsConfig": {names.network: {"Aliases": [workspace_id]}}},
    }


Step = tuple[str, Callable[[], Awaitable[Any]]]
LIFECYCLE_STEPS = ("create", "start", "stop", "remove")


class Dockhand:
    """Typed ``dockhand.client`` calls to ``host``: the dockhand worker's, or (``name="floor"``,
    ``host=names.floor_host``) the floor's, which answers ``workspace.inspect`` in the same shape."""

    def __init__(self, client: Client, names: Names, targets: list[str], host: str, name: str = "dockhand") -> None:
        self.client = client
        self.names = names
        self.targets = targets  # workspace ids, one per concurrency slot
        self.host = host
        self.name = name

    async def inspect(self, slot: int) -> None:
        await self.client.workspaces.inspect(self.targets[slot % len(self.targets)], host=self.host)

    def steps(self, key: str) -> list[Step]:
        ws = self.names.workspace(f"dh-{key}")
        labels = {SESSION_LABEL: self.names.session}
        dh, network = self.client.workspaces, self.names.network
        return [
            ("create", lambda: dh.create(workspace_id=ws, image=IMAGE, labels=labels, network=network, start=False)),
            ("start", lambda: dh.start(ws)),
            ("stop", lambda: dh.stop(ws, timeout_s=STOP_TIMEOUT_S)),
            ("remove", lambda: dh.remove(ws)),
        ]

    async def lifecycle(self, key: str) -> None:
        for _, step in self.steps(key):
            await step()


class Direct:
    name = "direct"

    def __init__(self, docker: aiodocker.Docker, names: Names, targets: list[str]) -> None:
        self.docker = docker
        self.names = names
        self.targets = [names.container(ws) for ws in targets]

    async def inspect(self, slot: int) -> None:
        await self.docker.containers.container(self.targets[slot % len(self.targets)]).show()

    def steps(self, key: str) -> list[Step]:
        ws = self.names.workspace(f"di-{key}")
        name = f"dhbench-{ws}"
        made: list[Any] = []

        async def create() -> None:
            made.append(await self.docker.containers.create(container_config(self.names, name, ws), name=name))

        return [
            ("create", create),
            ("start", lambda: made[0].start()),
            ("stop", lambda: made[0].stop(t=STOP_TIMEOUT_S)),
            ("remove", lambda: made[0].delete()),
        ]

    async def lifecycle(self, key: str) -> None:
        for _, step in self.steps(key):
            await step()


class CeleryPeer:
    """Synchronous: called from one thread per concurrency slot.

    The threads live as long as the run (``self.pool``), as a web server's or a job runner's
    would: the ``rpc://`` backend names each thread's reply queue after ``threading.get_ident()``,
    which Python reuses once a thread has exited, so short-lived client threads can end up
    sharing a reply queue with a dead thread's still-open consumer and lose their results.
    """

    name = "celery"

    def __init__(self, names: Names, targets: list[str], max_threads: int) -> None:
        from bench.peers import celery_app as peer

        self.peer = peer
        self.pool = ThreadPoolExecutor(max_workers=max_threads, thread_name_prefix="celery-client")
        self.names = names
        self.targets = [names.container(ws) for ws in targets]

    def inspect(self, slot: int) -> None:
        self.peer.inspect_workspace.delay(self.targets[slot % len(self.targets)]).get(timeout=60)

    def steps(self, key: str) -> list[tuple[str, Callable[[], Any]]]:
        """Synchronous steps (call them from a thread)."""
        ws = self.names.workspace(f"ce-{key}")
        name = f"dhbench-{ws}"
        spec = {
            "image": IMAGE,
            "network": self.names.network,
            "alias": ws,
            "labels": {SESSION_LABEL: self.names.session, "dhbench.workspace": ws},
            "ports": [EXPOSED_PORT],
            "publish_host_ip": PUBLISH_HOST_IP,
            "nano_cpus": NANO_CPUS,
            "memory_bytes": MEMORY_BYTES,
            "pids": PIDS,
        }
        p = self.peer
        return [
            ("create", lambda: p.create_workspace.delay(name, spec).get(timeout=60)),
            ("start", lambda: p.start_workspace.delay(name).get(timeout=60)),
            ("stop", lambda: p.stop_workspace.delay(name, STOP_TIMEOUT_S).get(timeout=60)),
            ("remove", lambda: p.remove_workspace.delay(name).get(timeout=60)),
        ]

    def lifecycle(self, key: str) -> None:
        for _, step in self.steps(key):
            step()


# --- Docker API calls: a counting proxy ------------------------------------------------------------

_VERSION = re.compile(r"^/v\d+(?:\.\d+)?(?=/)")
_BY_ID = {"containers", "networks", "exec", "volumes", "plugins", "services", "tasks", "nodes", "secrets", "configs"}
_NOT_ID = {"create", "json", "prune", "search", "load", "get"}
_IMAGE_ACTIONS = {"json", "history", "push", "tag", "get"}


def call_template(method: str, target: str) -> str:
    """``GET /v1.43/containers/abc/json?size=0`` -> ``GET /containers/{id}/json``: one row per
    kind of call. An image name may hold slashes: ``/images/{name}`` plus its action, if any."""
    path = _VERSION.sub("", target.split("?", 1)[0])
    parts = path.strip("/").split("/")
    if len(parts) >= 2 and parts[1] not in _NOT_ID:
        if parts[0] in _BY_ID:
            parts[1] = "{id}"
        elif parts[0] == "images":
            parts = ["images", "{name}", *([parts[-1]] if parts[-1] in _IMAGE_ACTIONS and len(parts) > 2 else [])]
    return f"{method} /{'/'.join(parts)}"


class RequestHeads:
    """An incremental parser of the client -> daemon byte stream of one HTTP/1.1 connection: calls
    ``on_request(method, target)`` for every request head, keep-alive and pipelined ones included,
    and skips bodies (``Content-Length`` or chunked). After an ``Upgrade`` (a hijacked attach or
    exec stream) the rest is raw stream bytes and is not parsed. It only reads: the proxy forwards
    every byte as it came, whatever this makes of it."""

    def __init__(self, on_request: Callable[[str, str], None]) -> None:
        self.on_request = on_request
        self.buf = bytearray()
        self.state = "head"
        self.remaining = 0

    def feed(self, data: bytes) -> None:
        if self.state == "raw":
            return
        self.buf += data
        while self._step():
            pass

    def _step(self) -> bool:
        """One state transition; False when it needs more bytes."""
        buf = self.buf
        if self.state == "head":
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return False
            lines = bytes(buf[:end]).decode("latin-1").split("\r\n")
            del buf[: end + 4]
            method, target = lines[0].split(" ", 2)[:2]
            headers = {k.strip().lower(): v.strip().lower() for k, _, v in (line.partition(":") for line in lines[1:])}
            self.on_request(method, target)
            if "upgrade" in headers.get("connection", ""):
                self.state = "raw"
                buf.clear()
                return False
            if "chunked" in headers.get("transfer-encoding", ""):
                self.state = "chunk-size"
            else:
                self.remaining = int(headers.get("content-length") or 0)
                self.state = "body" if self.remaining else "head"
            return True
        if self.state in ("body", "chunk-data"):
            take = min(self.remaining, len(buf))
            del buf[:take]
            self.remaining -= take
            if self.remaining:
                return False
            self.state = "head" if self.state == "body" else "chunk-size"
            return True
        end = buf.find(b"\r\n")  # chunk-size or trailers: line by line
        if end < 0:
            return False
        line = bytes(buf[:end])
        del buf[: end + 2]
        if self.state == "chunk-size":
            size = int(line.split(b";", 1)[0].strip() or b"0", 16)
            self.state, self.remaining = ("trailers", 0) if size == 0 else ("chunk-data", size + 2)
        elif not line:  # the blank line after the trailers ends the request
            self.state = "head"
        return True


@dataclass
class Call:
    at: float  # time.perf_counter() when its request head went through
    template: str
    connection: int


class DockerCallCounter:
    """A Unix-socket proxy in front of dockerd's socket that records every HTTP request a client
    sends through it (``calls``, in order, with the time its head passed). Point a worker at it with
    ``DOCKHAND_DOCKER_HOST=unix://<path>`` (docker-py: ``DOCKER_HOST``). Bytes go both ways
    untouched; only the client -> daemon direction is parsed, by ``RequestHeads``."""

    def __init__(self, path: Path, upstream: str) -> None:
        self.path = path
        self.upstream = upstream  # dockerd's socket path
        self.calls: list[Call] = []
        self.errors: list[str] = []  # parse failures, upstream connects refused
        self.open_connections: dict[int, str] = {}  # connection -> its latest request (a stream's stays)
        self._next = 0
        self._server: asyncio.AbstractServer | None = None

    @property
    def url(self) -> str:
        return f"unix://{self.path}"

    async def start(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        self._server = await asyncio.start_unix_server(self._serve, path=str(self.path))

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    def since(self, index: int) -> Counter[str]:
        """The calls from ``calls[index]`` on, by template."""
        return Counter(call.template for call in self.calls[index:])

    def between(self, start: int, end: int) -> Counter[str]:
        return Counter(call.template for call in self.calls[start:end])

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._next += 1
        conn = self._next
        try:
            up_reader, up_writer = await asyncio.open_unix_connection(self.upstream)
        except OSError as exc:
            self.errors.append(f"connect {self.upstream}: {exc}")
            writer.close()
            return

        def on_request(method: str, target: str) -> None:
            template = call_template(method, target)
            self.open_connections[conn] = template
            self.calls.append(Call(time.perf_counter(), template, conn))

        heads = RequestHeads(on_request)

        async def to_daemon() -> None:
            while data := await reader.read(65536):
                try:
                    heads.feed(data)
                except (ValueError, IndexError) as exc:  # never break the stream over the count
                    self.errors.append(f"connection {conn}: unparsable request bytes ({exc})")
                    heads.state = "raw"
                up_writer.write(data)
                await up_writer.drain()
            if up_writer.can_write_eof():
                up_writer.write_eof()  # the client's half-close, passed on

        async def to_client() -> None:
            while data := await up_reader.read(65536):
                writer.write(data)
                await writer.drain()

        sending = asyncio.create_task(to_daemon())
        try:
            with contextlib.suppress(ConnectionError):
                await to_client()  # the daemon closes (or resets) the connection: the end of it
        finally:
            sending.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionError):
                await sending
            self.open_connections.pop(conn, None)
            for w in (writer, up_writer):
                w.close()
                with contextlib.suppress(ConnectionError):
                    await w.wait_closed()


def docker_socket() -> str | None:
    """The Unix socket path a worker here would use (``DOCKHAND_DOCKER_HOST``, ``DOCKER_HOST``, the
    default), or None for a TCP daemon (the proxy speaks Unix sockets only)."""
    url = os.environ.get("DOCKHAND_DOCKER_HOST") or os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
    return url.removeprefix("unix://") if url.startswith("unix://") else None


# --- load generators -----------------------------------------------------------------------------


@dataclass
class Rate:
    ops: int  # completed inside the measured window
    seconds: float
    errors: int = 0
    first_error: str = ""
    total: int = 0  # completed at all, warm-up included (for CPU per operation)

    @property
    def per_s(self) -> float:
        return self.ops / self.seconds if self.seconds > 0 else 0.0


async def closed_loop_async(
    op: Callable[[int], Awaitable[None]], concurrency: int, warmup_s: float, run_s: float
) -> Rate:
    """``concurrency`` slots, each issuing the next op when the last one is answered; ops that
    finish inside [warmup, warmup + run] count."""
    t0 = time.perf_counter() + warmup_s
    t1 = t0 + run_s
    rate = Rate(0, run_s)

    async def slot(k: int) -> None:
        while time.perf_counter() < t1:
            try:
                await op(k)
            except Exception as exc:
                rate.errors += 1
                rate.first_error = rate.first_error or repr(exc)[:300]
                await asyncio.sleep(0.05)
                continue
            rate.total += 1
            if t0 <= time.perf_counter() <= t1:
                rate.ops += 1

    await asyncio.gather(*(slot(k) for k in range(concurrency)))
    return rate


def closed_loop_threads(
    pool: ThreadPoolExecutor, op: Callable[[int], None], concurrency: int, warmup_s: float, run_s: float
) -> Rate:
    """The same with one thread per slot (a synchronous client such as Celery's ``.get()``)."""
    t0 = time.perf_counter() + warmup_s
    t1 = t0 + run_s
    rate = Rate(0, run_s)
    lock = threading.Lock()

    def slot(k: int) -> None:
        while time.perf_counter() < t1:
            try:
                op(k)
            except Exception as exc:
                with lock:
                    rate.errors += 1
                    rate.first_error = rate.first_error or repr(exc)[:300]
                time.sleep(0.05)
                continue
            with lock:
                rate.total += 1
                if t0 <= time.perf_counter() <= t1:
                    rate.ops += 1

    for future in [pool.submit(slot, k) for k in range(concurrency)]:
        future.result()
    return rate


async def batch_async(op: Callable[[str], Awaitable[None]], keys: list[str], concurrency: int) -> Rate:
    """All ``keys`` through ``op`` with ``concurrency`` in flight; the rate is keys per second."""
    queue = list(reversed(keys))
    rate = Rate(0, 0.0)

    async def slot() -> None:
        while queue:
            key = queue.pop()
            try:
                await op(key)
                rate.ops += 1
            except Exception as exc:
                rate.errors += 1
                rate.first_error = rate.first_error or repr(exc)[:300]

    start = time.perf_counter()
    await asyncio.gather(*(slot() for _ in range(concurrency)))
    rate.seconds = time.perf_counter() - start
    return rate


def batch_threads(pool: ThreadPoolExecutor, op: Callable[[str], None], keys: list[str], concurrency: int) -> Rate:
    queue = list(reversed(keys))
    rate = Rate(0, 0.0)
    lock = threading.Lock()

    def slot() -> None:
        while True:
            with lock:
                if not queue:
                    return
                key = queue.pop()
            try:
                op(key)
                with lock:
                    rate.ops += 1
            except Exception as exc:
                with lock:
                    rate.errors += 1
                    rate.first_error = rate.first_error or repr(exc)[:300]

    start = time.perf_counter()
    for future in [pool.submit(slot) for _ in range(concurrency)]:
        future.result()
    rate.seconds = time.perf_counter() - start
    return rate


# --- profiling -----------------------------------------------------------------------------------


class Profiler:
    """``py-spy record --format raw`` against one PID for the duration of a ``with`` block."""

    def __init__(self, directory: Path | None, pid: int) -> None:
        self.directory = directory
        self.pid = pid
        self.exe = shutil.which("py-spy", path=str(Path(sys.executable).parent) + ":" + os.environ.get("PATH", ""))

    @contextlib.asynccontextmanager
    async def record(self, name: str) -> Any:
        if self.directory is None or self.exe is None:
            yield
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        out = self.directory / f"{name}.txt"
        proc = await asyncio.create_subprocess_exec(
            self.exe, "record", "--pid", str(self.pid), "--rate", "250", "--nonblocking", "--full-filenames",
            "--format", "raw",
            "--output", str(out), stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        await asyncio.sleep(0.5)  # attached
        try:
            yield
        finally:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proc.wait(), 30)
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
            log(f"py-spy profile of pid {self.pid}: {out}")


def _package(frame: str) -> str:
    """``func (path:line)`` -> the package doing the work: ``aiormq``, ``worker/store.py``, ``stdlib``."""
    path = frame[frame.rfind("(") + 1 : frame.rfind(":")]
    if "site-packages/" in path:
        return path.split("site-packages/", 1)[1].split("/", 1)[0]
    for top in ("/worker/", "/schemas/"):
        if top in path:
            return top.strip("/") + "/" + path.rsplit(top, 1)[1]
    return "stdlib"


# Inclusive buckets: a sample counts in each bucket whose frame is on its stack (alternatives
# split by ``|``: the same stage under an older name, for --worker-dir runs of older checkouts).
_BUCKETS = {
    "FastStream delivery path (SubscriberUsecase.consume)": "SubscriberUsecase.consume",
    "  fast_depends Context field -> anyio worker thread": "run_in_threadpool",
    "Dispatcher._run (one command, after delivery)": "Dispatcher._run",
    "  Dispatcher._execute (handler, Result)": "Dispatcher._execute",
    "    DockerCalls.call (Docker request + retry + span)": "DockerCalls.call",
    "  Settler.finish (publish result(s), ack)": "Dispatcher._finish|Settler.finish",
    "    Publisher.confirmed": "Publisher.confirmed",
    "  ResultStore (SQLite journal)": "ResultStore.",
    "stamina / tenacity retry contexts": "stamina/",
    "FastStream OpenTelemetry middleware (consume+publish)": "BaseTelemetryMiddleware",
}


def summarize_profile(path: Path, top: int = 12) -> str:
    """Where the worker's main thread spends its samples (py-spy raw, ``--full-filenames``):
    self time by package (the innermost non-stdlib frame) and inclusive time per bucket."""
    total = 0
    by_package: dict[str, int] = {}
    buckets: dict[str, int] = dict.fromkeys(_BUCKETS, 0)
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if "worker/__main__.py" not in stack:  # the event loop thread only
            continue
        count = int(count_text)
        total += count
        frames = stack.split(";")
        owner = next((p for p in map(_package, reversed(frames)) if p != "stdlib"), "stdlib")
        by_package[owner] = by_package.get(owner, 0) + count
        for name, keys in _BUCKETS.items():
            if any(key in stack for key in keys.split("|")):
                buckets[name] += count
    if total == 0:
        return f"{path.name}: no samples of the worker's main thread"
    lines = [f"py-spy {path.name}: {total} samples of the worker's event-loop thread"]
    lines.append(
        "  self time by package (innermost non-stdlib frame; worker/__main__.py or worker/cli.py = the event "
        "loop itself: socket reads and writes, callbacks, the idle wait)"
    )
    ranked = sorted(by_package.items(), key=lambda kv: -kv[1])[:top]
    lines.extend(f"    {100 * n / total:5.1f} %  {name}" for name, n in ranked)
    lines.append("  inclusive")
    lines.extend(f"    {100 * n / total:5.1f} %  {name}" for name, n in buckets.items())
    return "\n".join(lines)


# --- cleanup ------------------------------------------------------------------------------------


async def remove_everything(docker: aiodocker.Docker, names: Names) -> tuple[int, int]:
    """Force-remove every container and network of this run (by session label and by host id)."""
    containers: dict[str, Any] = {}
    for label in (f"{SESSION_LABEL}={names.session}", f"dockhand.host={names.host_id}"):
        for container in await docker.containers.list(all=True, filters={"label": [label]}):
            containers[container.id] = container
    limit = asyncio.Semaphore(16)

    async def remove(container: Any) -> None:
        async with limit:
            with contextlib.suppress(aiodocker.DockerError):
                await container.delete(force=True, v=True)

    await asyncio.gather(*(remove(c) for c in containers.values()))
    networks: dict[str, str] = {}
    for label in (f"{SESSION_LABEL}={names.session}", f"dockhand.host={names.host_id}"):
        for network in await docker.networks.list(filters={"label": [label]}):
            networks[network["Id"]] = network["Name"]
    removed = 0
    for network_id, name in networks.items():
        for attempt in range(5):
            try:
                await (await docker.networks.get(network_id)).delete()
                removed += 1
                break
            except aiodocker.DockerError as exc:
                if exc.status == 404:
                    break
                if attempt == 4:
                    # Seen once: dockerd kept a stale endpoint count after containers were
                    # force-removed, and refuses until it restarts. Say so; never touch it otherwise.
                    log(f"could not remove network {name}: {exc.message}; remove it by hand (docker network rm {name})")
                else:
                    await asyncio.sleep(1)  # endpoints of just-removed containers may still be going
    return len(containers), removed


async def delete_topology(names: Names) -> None:
    """Delete this run's queues (the dockhand worker's and the floor's) and exchanges."""
    connection = await aio_pika.connect(AMQP_URL)
    async with connection:
        channel = await connection.channel()
        for queue in (
            f"{names.prefix}.commands.{names.host_id}",
            f"{names.prefix}.commands.{names.floor_host}",
            f"{names.prefix}.commands.any",
        ):
            with contextlib.suppress(Exception):
                await channel.queue_delete(queue)
        with contextlib.suppress(Exception):
            await channel.queue_delete(f"{names.prefix}.commands.dead")
        for suffix in ("commands", "results", "events", "health", "dead"):
            with contextlib.suppress(Exception):
                await channel.exchange_delete(f"{names.prefix}.{suffix}")
