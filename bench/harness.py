"""What bench/run.py brings up and drives: the two workers, the three ways to reach Docker, cleanup.

Three "systems" do the same Docker work, each behind the same small interface
(``inspect(slot)`` and ``lifecycle(key)``):

- ``Dockhand``: the typed calls of ``dockhand.client`` (one connection, one reply queue, confirmed
  ``mandatory`` publishes) to the bench worker; their client-side cost is bench/client_cost.py's.
- ``Direct``: aiodocker in this process, the fewest Docker calls that do the job.
- ``CeleryPeer``: ``task.delay(...).get()`` against the Celery + docker-py worker in bench/peers/,
  from one thread per concurrency slot (the way a synchronous Celery client is used).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import secrets
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable
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


def percentile(values: list[float], p: float) -> float:
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
        with self.log_path.open("wb") as out:
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


def dockhand_client(names: Names) -> Client:
    """The bench's dockhand side: ``dockhand.client`` as a service would use it (typed calls,
    confirmed ``mandatory`` publishes, one reply queue), with retries off: a bench counts a
    failed or unanswered command as an error instead of hiding it behind a second attempt."""
    return Client(AMQP_URL, prefix=names.prefix, host=names.host_id, retry=Retry.off(60), timeout=60, name="dhbench")


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


class Dockhand:
    name = "dockhand"

    def __init__(self, client: Client, names: Names, targets: list[str]) -> None:
        self.client = client
        self.names = names
        self.targets = targets  # workspace ids, one per concurrency slot

    async def inspect(self, slot: int) -> None:
        await self.client.workspaces.inspect(self.targets[slot % len(self.targets)])

    async def lifecycle(self, key: str) -> None:
        ws = self.names.workspace(f"dh-{key}")
        labels = {SESSION_LABEL: self.names.session}
        await self.client.workspaces.create(
            workspace_id=ws, image=IMAGE, labels=labels, network=self.names.network, start=False
        )
        await self.client.workspaces.start(ws)
        await self.client.workspaces.stop(ws, timeout_s=STOP_TIMEOUT_S)
        await self.client.workspaces.remove(ws)


class Direct:
    name = "direct"

    def __init__(self, docker: aiodocker.Docker, names: Names, targets: list[str]) -> None:
        self.docker = docker
        self.names = names
        self.targets = [names.container(ws) for ws in targets]

    async def inspect(self, slot: int) -> None:
        await self.docker.containers.container(self.targets[slot % len(self.targets)]).show()

    async def lifecycle(self, key: str) -> None:
        ws = self.names.workspace(f"di-{key}")
        name = f"dhbench-{ws}"
        container = await self.docker.containers.create(container_config(self.names, name, ws), name=name)
        await container.start()
        await container.stop(t=STOP_TIMEOUT_S)
        await container.delete()


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

    def lifecycle(self, key: str) -> None:
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
        p.create_workspace.delay(name, spec).get(timeout=60)
        p.start_workspace.delay(name).get(timeout=60)
        p.stop_workspace.delay(name, STOP_TIMEOUT_S).get(timeout=60)
        p.remove_workspace.delay(name).get(timeout=60)


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


# Inclusive buckets: a sample counts in each bucket whose frame is on its stack.
_BUCKETS = {
    "FastStream delivery path (SubscriberUsecase.consume)": "SubscriberUsecase.consume",
    "  fast_depends Context field -> anyio worker thread": "run_in_threadpool",
    "Dispatcher._run (one command, after delivery)": "Dispatcher._run",
    "  Dispatcher._execute (handler, Result)": "Dispatcher._execute",
    "    DockerCalls.call (Docker request + retry + span)": "DockerCalls.call",
    "  Dispatcher._finish (publish result(s), ack)": "Dispatcher._finish",
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
        for name, key in _BUCKETS.items():
            if key in stack:
                buckets[name] += count
    if total == 0:
        return f"{path.name}: no samples of the worker's main thread"
    lines = [f"py-spy {path.name}: {total} samples of the worker's event-loop thread"]
    lines.append("  self time by package (innermost non-stdlib frame; worker/cli.py = the idle event loop)")
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
    connection = await aio_pika.connect(AMQP_URL)
    async with connection:
        channel = await connection.channel()
        for queue in (f"{names.prefix}.commands.{names.host_id}", f"{names.prefix}.commands.any"):
            with contextlib.suppress(Exception):
                await channel.queue_delete(queue)
        with contextlib.suppress(Exception):
            await channel.queue_delete(f"{names.prefix}.commands.dead")
        for suffix in ("commands", "results", "events", "health", "dead"):
            with contextlib.suppress(Exception):
                await channel.exchange_delete(f"{names.prefix}.{suffix}")
