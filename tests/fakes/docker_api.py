"""An in-memory Docker Engine for unit tests, spoken to over a real unix socket.

:class:`FakeDocker` serves the subset of the Docker Engine API 1.41 that dockhand uses
(``worker/docker/`` and ``worker/discovery.py``) from an aiohttp server on a unix
socket, so the real ``aiodocker`` client — and :class:`~worker.docker.DockerOps` on top of
it, unmodified — talk to it exactly as they talk to ``dockerd``::

    async with FakeDocker(tmp_path / "docker.sock") as fake:
        fake.add_image("busybox:1.36", cmd=["sh"])  # busybox's binaries by default
        docker = fake.client()          # an aiodocker.Docker bound to the socket
        ...
        assert fake.snapshot() == before  # containers, networks and volumes, by id

What it models: containers (create / inspect / list / start / stop / restart / delete / exec /
logs), networks (create / inspect / list / connect / disconnect / delete), volumes (create /
inspect / delete), images (inspect / pull), ``/info`` and ``/version``. Events are not served.

Answers follow what Docker 20.10 (API 1.41) really does — status codes and messages were taken
from a real 20.10.24 daemon — including where it is surprising:

* ``POST /containers/create`` validates the host config (CPU range against ``NCPU``, 6 MB
  memory minimum, swap vs memory, capability names, restart policy, cgroupns, log options,
  ``--security-opt`` syntax — a *500*), mounts (absolute target, not ``/``, no duplicate
  target, bind source must exist, tmpfs takes no source, volume names), the image reference
  (``400 invalid reference format``, ``404 No such image``) and the name (``400``, ``409``
  conflict). It does *not* check that the ``NetworkMode`` network exists, nor ports protocols,
  ulimits, users or the executable: those fail at start, and the created container stays.
  Named volumes that do not exist are created by the container create itself (unlabelled).
* ``POST /containers/{id}/start`` fails with ``404 network … not found``, ``400`` for a
  network-scoped alias on a predefined network or a host/none network joined by id, ``500``
  for an unsupported port protocol or ``sctp`` (no userland proxy), ``400`` for a mount on
  ``/proc`` or ``/dev`` and for a missing executable, ``500`` for an unknown user, a bad
  ulimit, or a CPU quota under 1 ms per 100 ms period (``NanoCpus`` 10⁴…10⁷ exclusive). Below
  10⁴ ``NanoCpus`` the quota rounds to 0 and the container runs **without a CPU limit**.
* Networks: names are not validated; ``CheckDuplicate`` gives ``409``, without it a duplicate
  name is created and later lookups by that name are ``400 … is ambiguous``; ``macvlan`` /
  ``ipvlan`` give ``500 operation not supported`` and ``overlay`` a ``500`` (no swarm),
  unknown drivers ``404 plugin not found``; ``host``/``none`` names are ``403``. Lookups match
  an exact id, then a name, then an id prefix. A second connect is ``403``, disconnecting what
  is not connected is ``500``, removing a network with running endpoints ``403``.
* Volumes: create of an existing name returns it unchanged (labels are *not* updated);
  removing one that any container uses is ``409``; ``Labels`` is ``null`` when empty.
* Paths are cleaned Go-style: a request path with ``//``, ``.`` or ``..`` segments gets a
  ``301`` with a relative ``Location`` (which aiohttp refuses to follow, as it does dockerd's);
  ``..`` in a name is resolved by the client before the request (``images/x/../../containers/c``
  is a container inspect). Unknown routes are ``404 page not found``, recorded in
  :attr:`FakeDocker.unrouted`.

Every request is recorded in :attr:`FakeDocker.requests` with the route it matched, so a test
can assert that, say, an ``image.inspect`` never reached a container route. Processes are a
small model: ``echo``/``true``/``false`` exit at once, anything else keeps running; ``exec``
runs ``echo``, ``true``, ``false``, ``sleep N``, ``timeout [-s S] N cmd…`` and the in-container
cleanup ``sh -c '… grep -q "MARKER" "$d/environ" … kill -9 …'`` (it ends the execs whose
environment has the marker); other known binaries exit 0 with no output, unknown ones exit 126
with Docker's OCI message. As with dockerd, an exec whose client went away keeps running.
Exec ``Pid`` values are above any kernel's ``pid_max``, so code that signals them can never hit
a real process. Ids are deterministic (seeded objects: :func:`stable_id`; objects made through
the API: a counter), so a scenario replays identically. :meth:`FakeDocker.fail_next` injects an
error answer on a route, for retry and rollback tests.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import io
import json
import posixpath
import re
import struct
import tarfile
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any

import aiodocker
from aiohttp import web

API_VERSION = "1.41"
ENGINE_VERSION = "20.10.24+dfsg1"
NEVER = "0001-01-01T00:00:00Z"
_VERSION_PREFIX = re.compile(r"^/v(\d+\.\d+)(/.*)$")

# distribution/reference, as Docker parses image references.
_ALNUM = r"[a-z0-9]+"
_SEP = r"(?:[._]|__|[-]*)"
_COMPONENT = rf"{_ALNUM}(?:{_SEP}{_ALNUM})*"
_DOMAIN_PART = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = rf"{_DOMAIN_PART}(?:\.{_DOMAIN_PART})*(?::[0-9]+)?"
_TAG = r"[\w][\w.-]{0,127}"
_DIGEST = r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}"
_REFERENCE = re.compile(rf"^((?:{_DOMAIN}/)?{_COMPONENT}(?:/{_COMPONENT})*)(?::({_TAG}))?(?:@({_DIGEST}))?$")
_PATH = re.compile(rf"^{_COMPONENT}(?:/{_COMPONENT})*$")
_HEX = re.compile(r"^[0-9a-f]{1,64}$")
_CONTAINER_NAME = re.compile(r"^/?[a-zA-Z0-9][a-zA-Z0-9_.-]+$")
_VOLUME_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]+$")


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


CAPABILITIES = _words(
    "CHOWN DAC_OVERRIDE DAC_READ_SEARCH FOWNER FSETID KILL SETGID SETUID SETPCAP LINUX_IMMUTABLE "
    "NET_BIND_SERVICE NET_BROADCAST NET_ADMIN NET_RAW IPC_LOCK IPC_OWNER SYS_MODULE SYS_RAWIO SYS_CHROOT "
    "SYS_PTRACE SYS_PACCT SYS_ADMIN SYS_BOOT SYS_NICE SYS_RESOURCE SYS_TIME SYS_TTY_CONFIG MKNOD LEASE "
    "AUDIT_WRITE AUDIT_CONTROL SETFCAP MAC_OVERRIDE MAC_ADMIN SYSLOG WAKE_ALARM BLOCK_SUSPEND AUDIT_READ "
    "PERFMON BPF CHECKPOINT_RESTORE"
)
ULIMITS = _words("core cpu data fsize locks memlock msgqueue nice nofile nproc rss rtprio rttime sigpending stack")
_ULIMIT_TYPE = {name: index for index, name in enumerate(sorted(ULIMITS))}
_JSON_FILE_OPTS = frozenset({"max-size", "max-file", "compress", "labels", "labels-regex", "env", "env-regex", "tag"})
_LOCAL_OPTS = frozenset({"max-size", "max-file", "compress"})
_SECURITY_KEYS = frozenset({"label", "apparmor", "seccomp", "no-new-privileges", "systempaths", "writable-cgroups"})
_STATES = frozenset({"created", "restarting", "running", "removing", "paused", "exited", "dead"})
_PREDEFINED = frozenset({"bridge", "host", "none"})
BUSYBOX_BINARIES = _words(
    "sh ash echo sleep true false cat ls env id kill timeout httpd nc wget ps top printf test hostname "
    "whoami mkdir rm touch tail head grep sed awk"
)


class DockerAPIError(Exception):
    """An error answer: HTTP status and Docker's ``{"message": ...}``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class InvalidReference(ValueError):
    """An image reference Docker's parser refuses; ``str()`` is Docker's message."""


def _now() -> str:
    """Docker's timestamp form: RFC 3339 with nanoseconds."""
    ns = time.time_ns()
    stamp = datetime.fromtimestamp(ns // 1_000_000_000, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{stamp}.{ns % 1_000_000_000:09d}Z"


def _stable_id(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()


def stable_id(kind: str, *parts: str) -> str:
    """The id :class:`FakeDocker` gives a seeded object: ``stable_id("network", "host", "1")``
    is the predefined ``host`` network (the second one seeded), ``stable_id("image", "busybox:1.36")``
    an image added with that single reference (without ``sha256:``)."""
    return _stable_id(kind, *parts)


def parse_reference(ref: str) -> tuple[str, str | None, str | None]:
    """``(familiar name, tag, digest)`` of an image reference, Docker's way; the tag defaults
    to ``latest`` when there is neither tag nor digest. Raises :class:`InvalidReference`."""
    match = _REFERENCE.match(ref)
    if match is None:
        lowered = _REFERENCE.match(ref.lower())
        if lowered is not None and ref.lower() != ref:
            raise InvalidReference("invalid reference format: repository name must be lowercase")
        raise InvalidReference("invalid reference format")
    name, tag, digest = match.group(1), match.group(2), match.group(3)
    if len(name) > 255:
        raise InvalidReference("invalid reference format: repository name must not be more than 255 characters")
    first, slash, rest = name.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost"):
        domain, path = first, rest
    else:
        domain, path = "docker.io", name
    if not _PATH.match(path):
        if _PATH.match(path.lower()):
            raise InvalidReference("invalid reference format: repository name must be lowercase")
        raise InvalidReference("invalid reference format")
    if re.fullmatch(r"[0-9a-f]{64}", path):
        raise InvalidReference(f"invalid repository name ({path}), cannot specify 64-byte hexadecimal strings")
    if domain in {"docker.io", "index.docker.io"}:
        familiar = path.removeprefix("library/") if path.count("/") == 1 else path
    else:
        familiar = f"{domain}/{path}"
    if tag is None and digest is None:
        tag = "latest"
    return familiar, tag, digest


@dataclass
class FakeImage:
    """An image: what inspect shows, plus what the process model needs (binaries, users)."""

    id: str
    tags: list[str] = field(default_factory=list)
    digests: list[str] = field(default_factory=list)
    exposed_ports: list[str] = field(default_factory=list)
    labels: dict[str, str] = field(default_factory=dict)
    cmd: list[str] | None = None
    entrypoint: list[str] | None = None
    env: list[str] = field(
        default_factory=lambda: ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]
    )
    user: str = ""
    healthcheck: dict[str, Any] | None = None
    binaries: frozenset[str] = BUSYBOX_BINARIES
    users: frozenset[str] = frozenset({"root", "daemon", "bin", "sys", "nobody", "www-data"})
    groups: frozenset[str] = frozenset({"root", "daemon", "bin", "sys", "nogroup", "nobody", "www-data"})
    created: str = "2024-05-20T10:00:00.123456789Z"
    size: int = 4_261_550

    def inspect(self) -> dict[str, Any]:
        return {
            "Id": self.id,
            "RepoTags": list(self.tags),
            "RepoDigests": list(self.digests),
            "Parent": "",
            "Comment": "",
            "Created": self.created,
            "DockerVersion": "",
            "Author": "",
            "Config": {
                "Hostname": "",
                "User": self.user,
                "ExposedPorts": {port: {} for port in self.exposed_ports} or None,
                "Env": list(self.env),
                "Cmd": self.cmd,
                "Entrypoint": self.entrypoint,
                "Labels": dict(self.labels) or None,
                "Healthcheck": self.healthcheck,
                "WorkingDir": "",
            },
            "Architecture": "amd64",
            "Os": "linux",
            "Size": self.size,
            "VirtualSize": self.size,
        }


@dataclass
class FakeNetwork:
    id: str
    name: str
    driver: str = "bridge"
    internal: bool = False
    attachable: bool = False
    labels: dict[str, str] = field(default_factory=dict)
    created: str = field(default_factory=_now)
    subnet: int = 18

    @property
    def predefined(self) -> bool:
        return self.name in _PREDEFINED and self.driver in {"bridge", "host", "null"}

    @property
    def user_defined(self) -> bool:
        return not self.predefined


@dataclass
class FakeVolume:
    name: str
    labels: dict[str, str] = field(default_factory=dict)
    created: str = field(default_factory=lambda: _now()[:19] + "Z")
    anonymous: bool = False

    def inspect(self) -> dict[str, Any]:
        return {
            "CreatedAt": self.created,
            "Driver": "local",
            "Labels": dict(self.labels) or None,
            "Mountpoint": f"/var/lib/docker/volumes/{self.name}/_data",
            "Name": self.name,
            "Options": None,
            "Scope": "local",
        }


@dataclass
class FakeContainer:
    id: str
    name: str
    image: FakeImage
    config: dict[str, Any]
    host_config: dict[str, Any]
    mounts: list[dict[str, Any]]
    endpoints: dict[str, dict[str, Any]]  # network id -> endpoint config (aliases)
    created: str = field(default_factory=_now)
    status: str = "created"
    exit_code: int = 0
    error: str = ""
    pid: int = 0
    started_at: str = NEVER
    finished_at: str = NEVER
    ports: dict[str, list[dict[str, str]] | None] = field(default_factory=dict)
    ips: dict[str, str] = field(default_factory=dict)  # network id -> address while running
    logs: list[tuple[float, int, bytes]] = field(default_factory=list)

    @property
    def running(self) -> bool:
        return self.status in {"running", "paused", "restarting"}

    def argv(self) -> list[str]:
        entrypoint = self.config.get("Entrypoint")
        cmd = self.config.get("Cmd")
        if entrypoint is None:
            entrypoint = self.image.entrypoint or []
            if cmd is None:
                cmd = self.image.cmd
        return [*(entrypoint or []), *(cmd or [])]


@dataclass
class FakeExec:
    id: str
    container: FakeContainer
    argv: list[str]
    user: str
    env: list[str]
    working_dir: str
    running: bool = False
    started: bool = False
    exit_code: int | None = None
    pid: int = 0
    task: asyncio.Task[None] | None = None


@dataclass(frozen=True)
class FakeRequest:
    """One request the fake answered: method, path (after the version prefix), route, status."""

    method: str
    path: str
    route: str
    status: int
    query: dict[str, str]


@dataclass
class _Fault:
    route: str
    status: int
    message: str
    times: int


Handler = Callable[[web.Request, dict[str, str]], Awaitable[web.StreamResponse]]


class FakeDocker:
    """The fake daemon: its state (containers, networks, volumes, images, execs) and its server.

    ``host_paths`` are the host paths a bind mount may name (each with everything under it);
    ``registry`` holds the images a pull can fetch (by familiar reference, ``name:tag``).
    """

    def __init__(
        self,
        socket_path: str | Path,
        *,
        ncpu: int = 2,
        mem_total: int = 8 * 1024**3,
        host_paths: Iterable[str] = ("/etc", "/tmp", "/srv", "/var/run/docker.sock"),
    ) -> None:
        self.socket_path = str(socket_path)
        self.ncpu = ncpu
        self.mem_total = mem_total
        self.host_paths: set[str] = {posixpath.normpath(p) for p in host_paths}
        self.images: dict[str, FakeImage] = {}
        self.registry: dict[str, FakeImage] = {}
        self.containers: dict[str, FakeContainer] = {}
        self.networks: dict[str, FakeNetwork] = {}
        self.volumes: dict[str, FakeVolume] = {}
        self.execs: dict[str, FakeExec] = {}
        # container id -> (files: path -> (bytes, mode), directories); see _archive_put
        self.filesystems: dict[str, tuple[dict[str, tuple[bytes, int]], set[str]]] = {}
        self.requests: list[FakeRequest] = []
        self.unrouted: list[FakeRequest] = []
        self.pull_auth: list[str | None] = []
        self._faults: list[_Fault] = []
        self._ids = 0
        self._next_port = 32768
        # Far above any kernel's pid_max (2^22): code that signals an exec's host Pid (the
        # worker's exec kill) can never reach a real process.
        self._next_pid = 2_000_000_000
        self._next_ip: dict[str, int] = {}
        self._runner: web.AppRunner | None = None
        self._clients: list[aiodocker.Docker] = []
        self._routes: list[tuple[str, re.Pattern[str], str, Handler]] = []
        self._register_routes()
        for name, driver in (("bridge", "bridge"), ("host", "host"), ("none", "null")):
            self.add_network(name, driver=driver, subnet=17)

    def _new_id(self) -> str:
        """Ids of objects made through the API: unique, and the same in every run (so an id
        prefix a test names matches the same objects each time)."""
        self._ids += 1
        return _stable_id("object", str(self._ids))

    # --- lifecycle ----------------------------------------------------------------------

    async def start(self) -> FakeDocker:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._dispatch)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        await web.UnixSite(self._runner, self.socket_path).start()
        return self

    async def close(self) -> None:
        for client in self._clients:
            await client.close()
        self._clients.clear()
        for execution in self.execs.values():
            if execution.task is not None:
                execution.task.cancel()
        tasks = [e.task for e in self.execs.values() if e.task is not None]
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FakeDocker:
        return await self.start()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    @property
    def url(self) -> str:
        return f"unix://{self.socket_path}"

    def client(self, **kwargs: Any) -> aiodocker.Docker:
        """An ``aiodocker.Docker`` bound to this fake (closed with it)."""
        client = aiodocker.Docker(url=self.url, **kwargs)
        self._clients.append(client)
        return client

    # --- seeding and inspection by tests ------------------------------------------------

    def add_image(self, *refs: str, pullable_only: bool = False, **attributes: Any) -> FakeImage:
        """An image known by these references (``name:tag``); local, or only in the registry.
        Its id and digests derive from the references, so tests can name them in advance."""
        image = FakeImage(id=f"sha256:{_stable_id('image', *refs)}", **attributes)
        for ref in refs:
            familiar, tag, digest = parse_reference(ref)
            if digest is None:
                image.tags.append(f"{familiar}:{tag}")
            digest = digest or f"sha256:{_stable_id('digest', ref)}"
            image.digests.append(f"{familiar}@{digest}")
            self.registry[f"{familiar}:{tag}"] = image
        if not pullable_only:
            self.images[image.id] = image
        return image

    def add_network(
        self,
        name: str,
        *,
        driver: str = "bridge",
        subnet: int | None = None,
        network_id: str | None = None,
        **attributes: Any,
    ) -> FakeNetwork:
        """A network; seeded ones get an id derived from their name (see :func:`stable_id`)."""
        network = FakeNetwork(
            id=network_id or _stable_id("network", name, str(len(self.networks))),
            name=name,
            driver=driver,
            subnet=subnet or 18 + len(self.networks) % 200,
            **attributes,
        )
        self.networks[network.id] = network
        return network

    def add_volume(self, name: str, labels: dict[str, str] | None = None) -> FakeVolume:
        volume = FakeVolume(name=name, labels=dict(labels or {}))
        self.volumes[name] = volume
        return volume

    def add_container(
        self,
        name: str,
        image: str,
        *,
        labels: dict[str, str] | None = None,
        running: bool = True,
        network: str = "bridge",
    ) -> FakeContainer:
        """A container made outside the code under test (another user's, say)."""
        found = self.find_image(image)
        net = self.find_network(network)
        container = FakeContainer(
            id=self._new_id(),
            name=name,
            image=found,
            config={"Image": image, "Labels": {**found.labels, **(labels or {})}, "Cmd": ["sleep", "1d"]},
            host_config={"NetworkMode": network},
            mounts=[],
            endpoints={net.id: {"Aliases": None}},
        )
        self.containers[container.id] = container
        if running:
            self._start(container)
        return container

    def snapshot(self) -> frozenset[tuple[str, str]]:
        """Every container, network and volume now: ``(kind, id or name)`` pairs."""
        return frozenset(
            [("container", c) for c in self.containers]
            + [("network", n) for n in self.networks]
            + [("volume", v) for v in self.volumes]
        )

    def describe(self, objects: Iterable[tuple[str, str]]) -> list[str]:
        """Readable names for snapshot entries (for assertion messages)."""
        out = []
        for kind, key in sorted(objects):
            if kind == "container" and key in self.containers:
                c = self.containers[key]
                out.append(f"container {c.name} ({c.status})")
            elif kind == "network" and key in self.networks:
                out.append(f"network {self.networks[key].name}")
            else:
                out.append(f"{kind} {key}")
        return out

    def fail_next(self, route: str, status: int = 500, message: str = "injected failure", times: int = 1) -> None:
        """Answer the next ``times`` requests on ``route`` (e.g. ``container.create``) with an error."""
        self._faults.append(_Fault(route, status, message, times))

    def container_by_name(self, name: str) -> FakeContainer | None:
        return next((c for c in self.containers.values() if c.name == name.lstrip("/")), None)

    # --- lookups (Docker's resolution order) --------------------------------------------

    def find_image(self, ref: str) -> FakeImage:
        """By reference (tag or digest), then by id or id prefix. 400 for a bad reference."""
        try:
            familiar, tag, digest = parse_reference(ref)
        except InvalidReference as exc:
            if not _HEX.match(ref.removeprefix("sha256:")):
                raise DockerAPIError(400, f"no such image: {ref}: {exc}") from None
        else:
            for image in self.images.values():
                if (digest and f"{familiar}@{digest}" in image.digests) or (
                    not digest and f"{familiar}:{tag}" in image.tags
                ):
                    return image
        bare = ref.removeprefix("sha256:")
        if _HEX.match(bare):
            matches = [i for i in self.images.values() if i.id.removeprefix("sha256:").startswith(bare)]
            if len(matches) == 1:
                return matches[0]
        raise DockerAPIError(404, f"No such image: {ref}")

    def find_container(self, ref: str) -> FakeContainer:
        if ref in self.containers:
            return self.containers[ref]
        named = self.container_by_name(ref)
        if named is not None:
            return named
        if ref and _HEX.match(ref):
            matches = [c for c in self.containers.values() if c.id.startswith(ref)]
            if len(matches) == 1:
                return matches[0]
        raise DockerAPIError(404, f"No such container: {ref}")

    def find_network(self, ref: str, *, ambiguous: str | None = None) -> FakeNetwork:
        if ref in self.networks:
            return self.networks[ref]
        named = [n for n in self.networks.values() if n.name == ref]
        if len(named) == 1:
            return named[0]
        if len(named) > 1:
            raise DockerAPIError(
                400,
                (ambiguous or "{n} matches found based on name: network {ref} is ambiguous").format(
                    n=len(named), ref=ref
                ),
            )
        if ref and _HEX.match(ref):
            matches = [n for n in self.networks.values() if n.id.startswith(ref)]
            if len(matches) == 1:
                return matches[0]
            if len(matches) > 1:
                raise DockerAPIError(
                    400, f"network {ref} is ambiguous ({len(matches)} matches found based on ID prefix)"
                )
        raise DockerAPIError(404, f"network {ref} not found")

    def find_volume(self, name: str) -> FakeVolume:
        if name not in self.volumes:
            raise DockerAPIError(404, f"get {name}: no such volume")
        return self.volumes[name]

    def path_exists(self, path: str) -> bool:
        clean = posixpath.normpath(path)
        return any(clean == p or clean.startswith(p.rstrip("/") + "/") for p in self.host_paths)

    # --- archive (put_files / get_file) --------------------------------------------------
    # A small model of each container's filesystem: regular files (bytes, mode) and
    # directories. Answers as a 20.10.24 daemon does (taken from one): the PUT path must be an
    # existing directory (404, "extraction point is not a directory" 500); a read-only root
    # filesystem refuses every path outside a mount (500 "container rootfs is marked read-only");
    # a member under a file is a 500 "Error processing tar file"; missing parents are created;
    # GET answers a tar of the path with its stat in X-Docker-Container-Path-Stat, 404 if absent.

    def _fs(self, c: FakeContainer) -> tuple[dict[str, tuple[bytes, int]], set[str]]:
        state = self.filesystems.setdefault(c.id, ({}, {"/", "/bin", "/etc", "/tmp", "/root", "/var"}))
        state[1].update(str(m.get("Destination")) for m in c.mounts if m.get("Destination"))
        return state

    async def _archive_put(self, request: web.Request, m: dict[str, str]) -> web.StreamResponse:
        c = self.find_container(m["id"])
        files, dirs = self._fs(c)
        root = request.query.get("path", "")
        if root not in dirs:
            if root in files:
                raise DockerAPIError(500, "extraction point is not a directory")
            raise DockerAPIError(404, f"Could not find the file {root} in container {m['id']}")
        mounts = [str(x.get("Destination")) for x in c.mounts]
        in_mount = any(root == p or root.startswith(p + "/") for p in mounts)
        if c.host_config.get("ReadonlyRootfs") and not in_mount:
            raise DockerAPIError(500, "container rootfs is marked read-only")
        try:
            with tarfile.open(fileobj=io.BytesIO(await request.read()), mode="r:") as tar:
                members = [(tm, tar.extractfile(tm).read() if tm.isreg() else b"") for tm in tar]  # type: ignore[union-attr]
        except tarfile.TarError as exc:
            raise DockerAPIError(500, f"Error processing tar file(exit status 1): {exc}") from None
        for tm, data in members:
            path = posixpath.normpath(posixpath.join(root, tm.name))
            parents = [posixpath.dirname(path)]
            while parents[-1] != "/":
                parents.append(posixpath.dirname(parents[-1]))
            blocked = next((p for p in parents if p in files), None)
            if blocked is not None:
                raise DockerAPIError(500, f"Error processing tar file(exit status 1): open {path}: not a directory")
            if tm.isdir():
                dirs.add(path)
            elif path in dirs:
                raise DockerAPIError(500, f"cannot overwrite directory {path!r} with non-directory {path!r}")
            else:
                files[path] = (data, tm.mode & 0o7777)
            dirs.update(parents)
        return web.Response(status=200)

    async def _archive_get(self, request: web.Request, m: dict[str, str]) -> web.StreamResponse:
        c = self.find_container(m["id"])
        files, dirs = self._fs(c)
        path = posixpath.normpath(request.query.get("path", "") or ".")
        out = io.BytesIO()
        with tarfile.open(fileobj=out, mode="w") as tar:
            info = tarfile.TarInfo(posixpath.basename(path) or "/")
            if path in files:
                data, mode = files[path]
                info.size, info.mode = len(data), mode
                tar.addfile(info, io.BytesIO(data))
                stat = {"name": info.name, "size": len(data), "mode": mode, "linkTarget": ""}
            elif path in dirs:
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
                stat = {"name": info.name, "size": 4096, "mode": (1 << 31) | 0o755, "linkTarget": ""}
            else:
                raise DockerAPIError(404, f"Could not find the file {path} in container {m['id']}")
        header = base64.b64encode(json.dumps(stat).encode()).decode()
        return web.Response(
            body=out.getvalue(),
            content_type="application/x-tar",
            headers={"X-Docker-Container-Path-Stat": header},
        )

    # --- HTTP plumbing ------------------------------------------------------------------

    def _register_routes(self) -> None:
        r = self._route
        r("GET", r"/_ping", "ping", self._ping)
        r("GET", r"/version", "version", self._version)
        r("GET", r"/info", "info", self._info)
        r("POST", r"/containers/create", "container.create", self._container_create)
        r("GET", r"/containers/json", "container.list", self._container_list)
        r("GET", r"/containers/(?P<id>[^/]+)/json", "container.inspect", self._container_inspect)
        r("POST", r"/containers/(?P<id>[^/]+)/start", "container.start", self._container_start)
        r("POST", r"/containers/(?P<id>[^/]+)/stop", "container.stop", self._container_stop)
        r("POST", r"/containers/(?P<id>[^/]+)/restart", "container.restart", self._container_restart)
        r("POST", r"/containers/(?P<id>[^/]+)/kill", "container.kill", self._container_kill)
        r("DELETE", r"/containers/(?P<id>[^/]+)", "container.delete", self._container_delete)
        r("POST", r"/containers/(?P<id>[^/]+)/exec", "container.exec", self._exec_create)
        r("GET", r"/containers/(?P<id>[^/]+)/logs", "container.logs", self._container_logs)
        r("PUT", r"/containers/(?P<id>[^/]+)/archive", "container.put_archive", self._archive_put)
        r("GET", r"/containers/(?P<id>[^/]+)/archive", "container.get_archive", self._archive_get)
        r("POST", r"/exec/(?P<id>[^/]+)/start", "exec.start", self._exec_start)
        r("GET", r"/exec/(?P<id>[^/]+)/json", "exec.inspect", self._exec_inspect)
        r("GET", r"/networks", "network.list", self._network_list)
        r("POST", r"/networks/create", "network.create", self._network_create)
        r("GET", r"/networks/(?P<id>[^/]+)", "network.inspect", self._network_inspect)
        r("DELETE", r"/networks/(?P<id>[^/]+)", "network.delete", self._network_delete)
        r("POST", r"/networks/(?P<id>[^/]+)/connect", "network.connect", self._network_connect)
        r("POST", r"/networks/(?P<id>[^/]+)/disconnect", "network.disconnect", self._network_disconnect)
        r("GET", r"/volumes", "volume.list", self._volume_list)
        r("POST", r"/volumes/create", "volume.create", self._volume_create)
        r("GET", r"/volumes/(?P<name>[^/]+)", "volume.inspect", self._volume_inspect)
        r("DELETE", r"/volumes/(?P<name>[^/]+)", "volume.delete", self._volume_delete)
        r("POST", r"/images/create", "image.pull", self._image_pull)
        r("GET", r"/images/(?P<name>.+)/json", "image.inspect", self._image_inspect)

    def _route(self, method: str, pattern: str, name: str, handler: Handler) -> None:
        self._routes.append((method, re.compile(f"^{pattern}$"), name, handler))

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        query = dict(request.query.items())
        cleaned = posixpath.normpath(path) if path not in {"", "/"} else "/"
        if path.startswith("//"):
            cleaned = "/" + cleaned.lstrip("/")
        if cleaned != path:
            # Go's mux cleans the path with a redirect, as dockerd does.
            location = cleaned + (f"?{request.query_string}" if request.query_string else "")
            self.requests.append(FakeRequest(request.method, path, "redirect", 301, query))
            return web.Response(status=301, headers={"Location": location})
        versioned = _VERSION_PREFIX.match(path)
        tail = versioned.group(2) if versioned else path
        for method, pattern, name, handler in self._routes:
            match = pattern.match(tail)
            if match is None or method != request.method:
                continue
            fault = next((f for f in self._faults if f.route == name and f.times > 0), None)
            if fault is not None:
                fault.times -= 1
                response: web.StreamResponse = _error(fault.status, fault.message)
            else:
                try:
                    response = await handler(request, match.groupdict())
                except DockerAPIError as exc:
                    response = _error(exc.status, exc.message)
            self.requests.append(FakeRequest(request.method, tail, name, response.status, query))
            return response
        entry = FakeRequest(request.method, tail, "unrouted", 404, query)
        self.requests.append(entry)
        self.unrouted.append(entry)
        return _error(404, "page not found")

    # --- system -------------------------------------------------------------------------

    async def _ping(self, request: web.Request, _: dict[str, str]) -> web.StreamResponse:
        return web.Response(text="OK", headers={"Api-Version": API_VERSION})

    async def _version(self, request: web.Request, _: dict[str, str]) -> web.StreamResponse:
        return _json(
            {
                "Version": ENGINE_VERSION,
                "ApiVersion": API_VERSION,
                "MinAPIVersion": "1.12",
                "Os": "linux",
                "Arch": "amd64",
                "KernelVersion": "6.1.0-fake",
                "GoVersion": "go1.19.8",
            }
        )

    async def _info(self, request: web.Request, _: dict[str, str]) -> web.StreamResponse:
        states = [c.status for c in self.containers.values()]
        return _json(
            {
                "ID": "FAKE:DOCK:ER00",
                "Containers": len(states),
                "ContainersRunning": states.count("running"),
                "ContainersPaused": states.count("paused"),
                "ContainersStopped": len(states) - states.count("running") - states.count("paused"),
                "Images": len(self.images),
                "Driver": "overlay2",
                "NCPU": self.ncpu,
                "MemTotal": self.mem_total,
                "OperatingSystem": "Fake Docker (dockhand tests)",
                "OSType": "linux",
                "ServerVersion": ENGINE_VERSION,
                "Name": "fake-docker",
                "CgroupVersion": "1",
                "SecurityOptions": ["name=seccomp,profile=default"],
            }
        )

    # --- containers ---------------------------------------------------------------------

    async def _container_create(self, request: web.Request, _: dict[str, str]) -> web.StreamResponse:
        body = await _body(request, "ContainerConfigWrapper")
        name = request.query.get("name", "")
        if name and not _CONTAINER_NAME.match(name):
            raise DockerAPIError(400, f"Invalid container name ({name}), only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed")
        host_config = _typed(body.get("HostConfig") or {}, dict, "HostConfig")
        networking = _typed(body.get("NetworkingConfig") or {}, dict, "NetworkingConfig")
        _check_types(body)
        self._verify_host_config(host_config, body)
        endpoints = _typed(networking.get("EndpointsConfig") or {}, dict, "EndpointsConfig")
        if len(endpoints) > 1:
            names = ", ".join(sorted(endpoints))
            raise DockerAPIError(400, f"Container cannot be connected to network endpoints: {names}")
        image_ref = body.get("Image")
        if not isinstance(image_ref, str) or not image_ref:
            raise DockerAPIError(400, "No image specified")  # what the 20.10 daemon says for an empty Image
        try:
            parse_reference(image_ref)
        except InvalidReference as exc:
            if not _HEX.match(image_ref.removeprefix("sha256:")):
                raise DockerAPIError(400, str(exc)) from None
        image = self.find_image(image_ref)
        if name:
            clash = self.container_by_name(name)
            if clash is not None:
                raise DockerAPIError(
                    409,
                    f'Conflict. The container name "/{name.lstrip("/")}" is already in use by container "{clash.id}". '
                    "You have to remove (or rename) that container to be able to reuse that name.",
                )
        config = {k: v for k, v in body.items() if k not in {"HostConfig", "NetworkingConfig"}}
        config["Labels"] = {**image.labels, **(config.get("Labels") or {})}
        config["ExposedPorts"] = {p: {} for p in image.exposed_ports} | dict(config.get("ExposedPorts") or {})
        config.setdefault("Tty", False)
        probe = FakeContainer("", "", image, config, host_config, [], {})
        if not probe.argv():
            raise DockerAPIError(400, "No command specified")
        mounts = self._register_mounts(host_config)
        mode = host_config.get("NetworkMode") or "default"
        endpoint_ids: dict[str, dict[str, Any]] = {}
        net_ref = "bridge" if mode == "default" else mode
        if not net_ref.startswith("container:"):
            with contextlib.suppress(DockerAPIError):  # an unknown network fails at start, not here
                net = self.find_network(net_ref)
                endpoint_ids[net.id] = next(iter(endpoints.values()), None) or {}
            if not endpoint_ids:
                endpoint_ids[net_ref] = next(iter(endpoints.values()), None) or {}
        container = FakeContainer(
            id=self._new_id(),
            name=(name or f"fake_{self._new_id()[:8]}").lstrip("/"),
            image=image,
            config=config,
            host_config=host_config,
            mounts=mounts,
            endpoints=endpoint_ids,
        )
        self.containers[container.id] = container
        return _json({"Id": container.id, "Warnings": []}, status=201)

    def _verify_host_config(self, hc: dict[str, Any], body: dict[str, Any]) -> None:
        """The create-time checks of ``daemon.verifyContainerSettings`` (20.10)."""
        working_dir = body.get("WorkingDir") or ""
        if working_dir and not working_dir.startswith("/"):
            raise DockerAPIError(
                400, f"the working directory '{working_dir}' is invalid, it needs to be an absolute path"
            )
        for port in [*(body.get("ExposedPorts") or {}), *(hc.get("PortBindings") or {})]:
            number = str(port).partition("/")[0]
            if not (number.isascii() and number.isdigit()) or int(number) > 65535:
                raise DockerAPIError(400, f'invalid port specification: "{number}"')
        for bindings in (hc.get("PortBindings") or {}).values():
            for binding in bindings or []:
                host_port = str((binding or {}).get("HostPort") or "")
                low, _, high = host_port.partition("-")
                for part in filter(None, (low, high)):
                    if not (part.isascii() and part.isdigit()) or int(part) > 65535:
                        raise DockerAPIError(400, f'invalid port specification: "{host_port}"')
        nano = _int(hc.get("NanoCpus"), "NanoCpus")
        if nano and (hc.get("CpuPeriod") or hc.get("CpuQuota")):
            raise DockerAPIError(400, "Conflicting options: Nano CPUs and CPU Period cannot both be set")
        if nano < 0 or nano > self.ncpu * 1_000_000_000:
            raise DockerAPIError(
                400, f"Range of CPUs is from 0.01 to {self.ncpu:.2f}, as there are only {self.ncpu} CPUs available"
            )
        memory = _int(hc.get("Memory"), "Memory")
        if 0 < memory < 6 * 1024 * 1024:
            raise DockerAPIError(400, "Minimum memory limit allowed is 6MB")
        swap = _int(hc.get("MemorySwap"), "MemorySwap")
        if swap > 0 and memory == 0:
            raise DockerAPIError(400, "You should always set the Memory limit when using Memoryswap limit, see usage")
        if swap > 0 and swap < memory:
            raise DockerAPIError(400, "Minimum memoryswap limit should be larger than memory limit, see usage")
        for key in ("CapAdd", "CapDrop"):
            for cap in hc.get(key) or []:
                bare = str(cap).upper().removeprefix("CAP_")
                if bare != "ALL" and bare not in CAPABILITIES:
                    raise DockerAPIError(400, f'invalid {key}: unknown capability: "CAP_{bare}"')
        policy = hc.get("RestartPolicy") or {}
        policy_name = policy.get("Name") or ""
        retries = _int(policy.get("MaximumRetryCount"), "MaximumRetryCount")
        if policy_name not in {"", "no", "always", "unless-stopped", "on-failure"}:
            raise DockerAPIError(400, f"invalid restart policy '{policy_name}'")
        if retries < 0:
            raise DockerAPIError(400, "maximum retry count cannot be negative")
        if retries > 0 and policy_name != "on-failure":
            raise DockerAPIError(400, f"maximum retry count cannot be used with restart policy '{policy_name}'")
        cgroupns = hc.get("CgroupnsMode") or ""
        if cgroupns not in {"", "private", "host"}:
            raise DockerAPIError(400, f"invalid cgroup namespace mode: {cgroupns}")
        log_config = hc.get("LogConfig") or {}
        driver = log_config.get("Type") or "json-file"
        allowed = {"json-file": _JSON_FILE_OPTS, "local": _LOCAL_OPTS, "none": frozenset()}.get(driver)
        if allowed is None:
            raise DockerAPIError(400, f"logger: no log driver named '{driver}' is registered")
        for option in log_config.get("Config") or {}:
            if option not in allowed:
                raise DockerAPIError(400, f"unknown log opt '{option}' for {driver} log driver")
        for index, option in enumerate(hc.get("SecurityOpt") or [], start=1):
            key, sep, _ = _split_opt(str(option))
            if key not in _SECURITY_KEYS or (not sep and key != "no-new-privileges"):
                raise DockerAPIError(500, f'invalid --security-opt {index}: "{option}"')
        for ulimit in hc.get("Ulimits") or []:
            if not isinstance(ulimit, dict) or not isinstance(ulimit.get("Name"), str):
                raise DockerAPIError(400, "json: cannot unmarshal into Go struct field HostConfig.Ulimits")

    def _register_mounts(self, hc: dict[str, Any]) -> list[dict[str, Any]]:
        """Validate ``HostConfig.Mounts`` (and legacy ``Binds``) as the daemon does; create missing
        named volumes (unlabelled, as Docker does) only once every mount is valid."""
        specs: list[dict[str, Any]] = []
        for bind in hc.get("Binds") or []:
            source, _, rest = str(bind).partition(":")
            target, _, mode = rest.partition(":")
            kind = "bind" if source.startswith("/") else "volume"
            specs.append({"Type": kind, "Source": source, "Target": target, "ReadOnly": "ro" in mode.split(",")})
        specs.extend(_typed(m, dict, "Mounts") for m in hc.get("Mounts") or [])
        seen: set[str] = set()
        mounts: list[dict[str, Any]] = []
        for spec in specs:
            kind = spec.get("Type") or ""
            target = spec.get("Target") or ""
            source = spec.get("Source") or ""
            where = f'invalid mount config for type "{kind}"'
            if kind not in {"bind", "volume", "tmpfs"}:
                raise DockerAPIError(400, f"invalid mount config: mount type unknown: {kind!r}")
            if not target:
                raise DockerAPIError(400, f"{where}: field Target must not be empty")
            if not target.startswith("/"):
                raise DockerAPIError(400, f"{where}: invalid mount path: '{target}' mount path must be absolute")
            if posixpath.normpath(target) == "/":
                raise DockerAPIError(400, f"{where}: invalid specification: destination can't be '/'")
            if kind == "tmpfs" and source:
                raise DockerAPIError(400, f"{where}: field Source must not be specified")
            if kind == "bind":
                if not source:
                    raise DockerAPIError(400, f"{where}: field Source must not be empty")
                if not source.startswith("/"):
                    raise DockerAPIError(400, f"{where}: invalid mount path: '{source}' mount path must be absolute")
                if not self.path_exists(source):
                    raise DockerAPIError(400, f"{where}: bind source path does not exist: {source}")
            if kind == "volume" and source and not _VOLUME_NAME.match(source):
                raise DockerAPIError(400, _bad_volume_name(source))
            clean = posixpath.normpath(target)
            if clean in seen:
                raise DockerAPIError(400, f"Duplicate mount point: {target}")
            seen.add(clean)
            mounts.append(
                {
                    "Type": kind,
                    "Name": source if kind == "volume" else "",
                    "Source": source,
                    "Destination": target,
                    "Driver": "local" if kind == "volume" else "",
                    "Mode": "",
                    "RW": not spec.get("ReadOnly", False),
                    "Propagation": "rprivate" if kind == "bind" else "",
                }
            )
        for mount in mounts:
            if mount["Type"] != "volume":
                continue
            if not mount["Name"]:
                mount["Name"] = self._new_id()
                self.volumes[mount["Name"]] = FakeVolume(name=mount["Name"], anonymous=True)
            elif mount["Name"] not in self.volumes:
                self.volumes[mount["Name"]] = FakeVolume(name=mount["Name"])
            mount["Source"] = self.volumes[mount["Name"]].inspect()["Mountpoint"]
        return mounts

    def _start(self, c: FakeContainer) -> None:
        """Start a created or exited container, failing the way runc and libnetwork do."""
        hc = c.host_config
        mode = hc.get("NetworkMode") or "default"
        networks: list[FakeNetwork] = []
        if mode.startswith("container:"):
            other = self.find_container(mode.partition(":")[2])
            if not other.running:
                raise DockerAPIError(409, f"cannot join network of a non running container: {other.id}")
        else:
            primary = self.find_network("bridge" if mode == "default" else mode)
            if primary.driver in {"host", "null"} and mode not in {"host", "none"}:
                raise DockerAPIError(
                    400, "container cannot be disconnected from host network or connected to host network"
                )
            networks.append(primary)
        for key in c.endpoints:
            if networks and key in {networks[0].id, mode}:
                continue
            networks.append(self.find_network(key))
        for net in networks:
            aliases = (c.endpoints.get(net.id) or c.endpoints.get(mode) or {}).get("Aliases")
            if aliases and not net.user_defined:
                raise DockerAPIError(
                    400, "network-scoped alias is supported only for containers in user defined networks"
                )
        bridged = any(n.driver == "bridge" for n in networks)
        for port in (hc.get("PortBindings") or {}) if bridged else {}:
            proto = port.partition("/")[2] or "tcp"
            prefix = f"driver failed programming external connectivity on endpoint {c.name} ({self._new_id()})"
            if proto not in {"tcp", "udp", "sctp"}:
                raise DockerAPIError(500, f"{prefix}: invalid transport protocol: 0")
            if proto == "sctp":
                raise DockerAPIError(500, f"{prefix}: Error starting userland proxy: protocol not supported")
        for mount in c.mounts:
            target = posixpath.normpath(mount["Destination"])
            if target == "/proc" or target.startswith("/proc/"):
                raise DockerAPIError(
                    400,
                    "failed to create shim task: OCI runtime create failed: runc create failed: unable to start "
                    "container process: error during container init: "
                    "open /proc/sys/net/ipv4/ip_unprivileged_port_start: no such file or directory: unknown",
                )
            if target == "/dev":
                raise DockerAPIError(
                    400,
                    "failed to create shim task: OCI runtime create failed: runc create failed: unable to start "
                    "container process: error during container init: error reopening /dev/null inside container: "
                    "open /dev/null: permission denied: unknown",
                )
        user = c.config.get("User") or c.image.user or ""
        name, _, group = user.partition(":")
        if name and not name.isdigit() and name not in c.image.users:
            raise DockerAPIError(500, f"unable to find user {name}: no matching entries in passwd file")
        if group and not group.isdigit() and group not in c.image.groups:
            raise DockerAPIError(500, f"unable to find group {group}: no matching entries in group file")
        for ulimit in hc.get("Ulimits") or []:
            if ulimit["Name"] not in ULIMITS:
                raise DockerAPIError(
                    500,
                    "failed to create shim task: OCI runtime create failed: runc create failed: wrong rlimit value: "
                    f"RLIMIT_{ulimit['Name'].upper()}: unknown",
                )
            if int(ulimit.get("Soft") or 0) > int(ulimit.get("Hard") or 0):
                raise DockerAPIError(
                    500,
                    "failed to create shim task: OCI runtime create failed: runc create failed: unable to start "
                    "container process: error during container init: error setting rlimits for ready process: "
                    f"error setting rlimit type {_ULIMIT_TYPE[ulimit['Name']]}: invalid argument: unknown",
                )
        quota = int(hc.get("NanoCpus") or 0) * 100_000 // 1_000_000_000
        if 0 < quota < 1000:
            raise DockerAPIError(
                500,
                "failed to create shim task: OCI runtime create failed: runc create failed: unable to start "
                "container process: error during container init: error setting cgroup config for procHooks process: "
                f'failed to write "{quota}": write /sys/fs/cgroup/cpu/docker/{c.id}/cpu.cfs_quota_us: '
                "invalid argument: unknown",
            )
        argv = c.argv()
        if not self._executable(c.image, argv[0]):
            raise DockerAPIError(
                400,
                "failed to create shim task: OCI runtime create failed: runc create failed: unable to start container "
                f'process: exec: "{argv[0]}": executable file not found in $PATH: unknown',
            )
        # Started: endpoints, addresses, published ports.
        c.status = "running"
        c.exit_code = 0
        c.error = ""
        c.pid = self._pid()
        c.started_at = _now()
        c.ips = {n.id: self._ip(n) for n in networks if n.driver not in {"host", "null"}}
        for n in networks:
            c.endpoints.setdefault(n.id, {})
        c.ports = {}
        bindings = hc.get("PortBindings") or {}
        for port in sorted(set(c.config.get("ExposedPorts") or {}) | set(bindings)):
            key = port if "/" in port else f"{port}/tcp"
            chosen = bindings.get(port)
            if chosen and bridged:
                c.ports[key] = [
                    {"HostIp": b.get("HostIp") or "0.0.0.0", "HostPort": b.get("HostPort") or str(self._port())}  # noqa: S104
                    for b in chosen
                ]
            else:
                c.ports[key] = None
        program = posixpath.basename(argv[0])
        if program == "echo":
            c.logs.append((time.time(), 1, (" ".join(argv[1:]) + "\n").encode()))
        if program in {"echo", "true", "false"}:
            self._exit(c, 1 if program == "false" else 0)

    def _exit(self, c: FakeContainer, code: int) -> None:
        c.status = "exited"
        c.exit_code = code
        c.pid = 0
        c.finished_at = _now()
        c.ips = {}
        c.ports = {}
        for execution in self.execs.values():
            if execution.container is c and execution.task is not None:
                execution.task.cancel()

    @staticmethod
    def _executable(image: FakeImage, program: str) -> bool:
        if "/" in program:
            return posixpath.basename(program) in image.binaries and posixpath.dirname(program) in {
                "/bin",
                "/sbin",
                "/usr/bin",
                "/usr/sbin",
                "/usr/local/bin",
            }
        return program in image.binaries

    def _pid(self) -> int:
        self._next_pid += 1
        return self._next_pid

    def _port(self) -> int:
        self._next_port += 1
        return self._next_port

    def _ip(self, net: FakeNetwork) -> str:
        self._next_ip[net.id] = self._next_ip.get(net.id, 1) + 1
        return f"172.{net.subnet}.0.{self._next_ip[net.id]}"

    def _on_network(self, c: FakeContainer, value: str) -> bool:
        """Docker's ``network`` list filter: a network name of the container, or an id prefix."""
        nets = [self.networks.get(key) for key in c.endpoints]
        return any(n is not None and (n.name == value or n.id.startswith(value)) for n in nets) or value in c.endpoints

    def _container_json(self, c: FakeContainer) -> dict[str, Any]:
        networks = {}
        for key, endpoint in c.endpoints.items():
            net = self.networks.get(key)
            networks[net.name if net else key] = {
                "IPAMConfig": None,
                "Links": None,
                "Aliases": (endpoint or {}).get("Aliases"),
                "NetworkID": net.id if net else "",
                # One id per endpoint, for as long as it lives (a start or connect makes a new one).
                "EndpointID": _stable_id("endpoint", c.id, net.id, c.ips.get(net.id, "")) if c.running and net else "",
                "Gateway": f"172.{net.subnet}.0.1" if c.running and net else "",
                "IPAddress": c.ips.get(key, ""),
                "IPPrefixLen": 16 if key in c.ips else 0,
                "MacAddress": "02:42:ac:11:00:02" if key in c.ips else "",
            }
        argv = c.argv()
        return {
            "Id": c.id,
            "Created": c.created,
            "Path": argv[0] if argv else "",
            "Args": argv[1:],
            "State": {
                "Status": c.status,
                "Running": c.running,
                "Paused": c.status == "paused",
                "Restarting": c.status == "restarting",
                "OOMKilled": False,
                "Dead": c.status == "dead",
                "Pid": c.pid,
                "ExitCode": c.exit_code,
                "Error": c.error,
                "StartedAt": c.started_at,
                "FinishedAt": c.finished_at,
            },
            "Image": c.image.id,
            "Name": f"/{c.name}",
            "RestartCount": 0,
            "Driver": "overlay2",
            "HostConfig": {"NetworkMode": "default", **c.host_config},
            "Mounts": [dict(m) for m in c.mounts],
            "Config": {
                "Hostname": c.id[:12],
                "User": c.config.get("User") or c.image.user,
                "Env": [*c.image.env, *(c.config.get("Env") or [])],
                "Cmd": c.config.get("Cmd") if c.config.get("Cmd") is not None else c.image.cmd,
                "Entrypoint": c.config.get("Entrypoint"),
                "Image": c.config.get("Image"),
                "WorkingDir": c.config.get("WorkingDir") or "",
                "Labels": dict(c.config.get("Labels") or {}),
                "ExposedPorts": dict(c.config.get("ExposedPorts") or {}) or None,
                "Tty": bool(c.config.get("Tty")),
                "OpenStdin": False,
                "Healthcheck": c.image.healthcheck,
            },
            "NetworkSettings": {"Ports": dict(c.ports), "Networks": networks},
        }

    async def _container_inspect(self, request: web.Request, m: dict[str, str]) -> web.StreamResponse:
        return _json(self._container_json(self.find_container(m["id"])))

    async def _container_list(self, request: web.Request, _: dict[str, str]) -> web.StreamResponse:
        filters = _filters(request.query.get("filters"), {"label", "status", "name", "id", "network", "ancestor"})
        for status in filters.get("status", []):
            if status not in _STATES:
                raise DockerAPIError(400, f"Invalid filter 'status={status}'")
        show_all = request.query.get("all", "0") in {"1", "true", "True"}
        out = []
        for c in sorted(self.containers.values(), key=lambda c: c.created, reverse=True):
            if not show_all and not filters.get("status") and not c.running:
                continue
            labels = c.config.get("Labels") or {}
            if not all(_label_matches(labels, want) for want in filters.get("label", [])):
                continue
            if filters.get("network") and not any(self._on_network(c, value) for value in filters["network"]):
                continue
            if filters.get("status") and c.status not in filters["status"]:
                continue
            if filters.get("name") and not any(re.search(n, c.name) for n in filters["name"]):
                continue
            if filters.get("id") and not any(c.id.startswith(i) for i in filters["id"]):
                continue
            info = self._container_json(c)
            out.append(
                {
                    "Id": c.id,
                    "Names": [f"/{c.name}"],
                    "Image": c.config.get("Image"),
                    "ImageID": c.image.id,
                    "Command": " ".join(c.argv()),
                    "Created": int(time.time()),
                    "Ports": [
                        {
                            "IP": b["HostIp"],
                            "PrivatePort": int(port.split("/")[0]),
                            "PublicPort": int(b["HostPort"]),
                            "Type": port.split("/")[1],
                        }
                        for port, bindings in c.ports.items()
                        for b in bindings or []
                    ],
                    "Labels": labels,
                    "State": c.status,
                    "Status": "Up 1 second"
                    if c.running
                    else ("Created" if c.status == "created" else "Exited (0) 1 second ago"),
                    "HostConfig": {"NetworkMode": c.host_config.get("NetworkMode") or "default"},
                    # Docker's list leaves the aliases out (null): only an inspect has them.
                    "NetworkSettings": {
                        "Networks": {k: {**v, "Aliases": None} for k, v in info["NetworkSettings"]["Networks"].items()}
                    },
                    "Mounts": info["Mounts"],
                }
            )
        return _json(out)

    async def _container_start(self, request: web.Request, m: dict[str, str]) -> web.StreamResponse:
        c = self.find_container(m["id"])
        if c.status == "paused":
            raise DockerAPIError(409, "cannot start a paused container, try unpause instead")
        if c.running:
            return web.Response(status=304)
        try:
            self._start(c)
        except DockerAPIError as exc:
            c.exit_code = 128
            c.error = exc.message
            raise
        return web.Response(status=204)

    async def _container_stop(self, request: web.Request, m: dict[str, str]) -> web.StreamResponse:
        c = self.find_container(m["id"])
        if not c.running:
            return web.Response(status=304)
        self._exit(c, 137 if request.query.get("t") == "0" else 0)
        return web.Response(status=204)

    async def _container_kill(self, request: web.Request, m: dict[str, str]) -> web.StreamResponse:
        c = self.find_container(m["id"])
        if not c.running:
            raise DockerAPIError(409, f"Container {c.id} is not running")
        self._exit(c, 137)
        return web.Response(status=204)

    async def _container_restart(self, request: web.Request, m: dict[str, str]) -> web.StreamResponse:
        c = self.find_container(m["id"])
        if c.running:
            self._exit(c, 0)
        try:
            self._start(c)
        except DockerAPIError as exc:
            c.exit_code = 128
            c.error = exc.message
            raise DockerAPIError(500, f"Cannot restart container {m['id']}: {exc.message}") from None
        return web.Response(status=204)

    async def _container_delete(self, request: web.Request, m: dict[str, str]) -> web.StreamResponse:
        c = self.find_container(m["id"])
        force = request.query.get("force") in {"1", "true", "True"}
        if c.running and not force:
            raise DockerAPIError(
                409,
                f"You cannot remove a running container {c.id}. Stop the container before attempting removal or "
                "force remove",
            )
        if c.running:
            self._exit(c, 137)
        del self.containers[c.id]
        if request.query.get("v") in {"1", "true", "True"}:
            for mount in c.mounts:
                volume = self.volumes.get(mount.get("Name") or "")
                if volume is not None and volume.anonymous and not self._volume_users(volume.name):
                    del self.volumes[volume.name]
        return web.Response(status=204)

    async def _container_logs(self, request: web.Request, m: dict[str, str]) -> web.StreamResponse:
        c = self.find_container(m["id"])
        streams = {1} if request.query.get("stdout") in {"1", "true"} else set()
        if request.query.get("stderr") in {"1", "true"}:
            streams.add(2)
        if not streams:
            raise DockerAPIError(400, "Bad parameters: you must choose at least one stream")
        since = float(request.query.get("since") or 0) if _is_number(request.query.get("since") or "0") else 0
        entries = [(s, data) for ts, s, data in c.logs if s in streams and ts >= since]
        tail = request.query.get("tail", "all")
        if tail.isdigit():
            entries = entries[len(entries) - int(tail) :] if int(tail) else []
        frames = b"".join(_frame(s, data) for s, data in entries)
        return web.Response(body=frames, content_type="application/vnd.docker.raw-stream")

    # --- exec ---------------------------------------------------------------------------

    async def _exec_create(self, request: web.Request, m: dict[str, str]) -> web.StreamResponse:
        c = self.find_container(m["id"])
        body = await _body(request, "ExecConfig")
        if not c.running:
            raise DockerAPIError(409, f"Container {c.id} is not running")
        if c.status == "paused":
            raise DockerAPIError(409, f"Container {c.id} is paused, unpause the container before exec")
        argv = body.get("Cmd") or []
        if not isinstance(argv, list) or not argv:
            raise DockerAPIError(400, "No exec command specified")
        execution = FakeExec(
            id=self._new_id(),
            container=c,
            argv=[str(a) for a in argv],
            user=str(body.get("User") or ""),
            env=list(body.get("Env") or []),
            working_dir=str(body.get("WorkingDir") or ""),
        )
        self.execs[execution.id] = execution
        return _json({"Id": execution.id}, status=201)

    async def _exec_inspect(self, request: web.Request, m: dict[str, str]) -> web.StreamResponse:
        execution = self.execs.get(m["id"])
        if execution is None:
            raise DockerAPIError(404, f"No such exec instance: {m['id']}")
        return _json(
            {
                "ID": execution.id,
                "Running": execution.running,
                "ExitCode": execution.exit_code,
                "ProcessConfig": {
                    "tty": False,
                    "entrypoint": execution.argv[0],
                    "arguments": execution.argv[1:],
                    "privileged": False,
                    "user": execution.user,
                },
                "OpenStdin": False,
                "OpenStderr": True,
                "OpenStdout": True,
                "CanRemove": False,
                "ContainerID": execution.container.id,
                "DetachKeys": "",
                "Pid": execution.pid,
            }
        )

    async def _exec_start(self, request: web.Request, m: dict[str, str]) -> web.StreamResponse:
        execution = self.execs.get(m["id"])
        if execution is None:
            raise DockerAPIError(404, f"No such exec instance: {m['id']}")
        if execution.started:
            raise DockerAPIError(409, f"Error: Exec command {execution.id} is already running")
        if not execution.container.running:
            raise DockerAPIError(409, f"Container {execution.container.id} is not running")
        execution.started = execution.running = True
        execution.pid = self._pid()
        output: asyncio.Queue[bytes | None] = asyncio.Queue()
        execution.task = asyncio.get_running_loop().create_task(self._run_exec(execution, output))
        if (await _body(request, "ExecStartConfig")).get("Detach"):
            # As dockerd: 200 with no body, the process runs on and its output is discarded.
            return web.Response(status=200)
        response = web.StreamResponse(
            status=101,
            headers={"Content-Type": "application/vnd.docker.raw-stream", "Connection": "Upgrade", "Upgrade": "tcp"},
        )
        response.force_close()
        await response.prepare(request)
        await response.write_eof()
        transport = request.transport
        # The upgraded connection carries the multiplexed stream until the process ends; a
        # client that goes away does not stop the process (as with dockerd).
        while (chunk := await output.get()) is not None:
            if transport is None or transport.is_closing():
                continue
            transport.write(chunk)
        return response

    async def _run_exec(self, execution: FakeExec, output: asyncio.Queue[bytes | None]) -> None:
        try:
            execution.exit_code = await self._process(execution, execution.argv, output)
        except asyncio.CancelledError:
            execution.exit_code = 137
            raise
        finally:
            execution.running = False
            output.put_nowait(None)

    async def _process(self, execution: FakeExec, argv: list[str], output: asyncio.Queue[bytes | None]) -> int:
        image = execution.container.image
        program = argv[0]
        name, _, _ = execution.user.partition(":")
        if name and not name.isdigit() and name not in image.users:
            output.put_nowait(_frame(1, f"unable to find user {name}: no matching entries in passwd file\r\n".encode()))
            return 126
        if not self._executable(image, program):
            message = (
                "OCI runtime exec failed: exec failed: unable to start container process: exec: "
                f'"{program}": executable file not found in $PATH: unknown\r\n'
            )
            output.put_nowait(_frame(1, message.encode()))
            return 126
        base = posixpath.basename(program)
        args = argv[1:]
        if base in {"sh", "ash"} and args[:1] == ["-c"] and len(args) > 1:
            # The one shell script the model runs: "kill every process whose environ has X"
            # (grep -q "X" "$d/environ" ... kill -9), as a cleanup exec would.
            marker = re.search(r'grep -q "([^"]+)" "\$d/environ"', args[1])
            if marker and "kill" in args[1]:
                for other in self.execs.values():
                    same_container = other is not execution and other.container is execution.container
                    if same_container and other.task is not None and marker.group(1) in other.env:
                        other.task.cancel()
            return 0
        if base == "echo":
            output.put_nowait(_frame(1, (" ".join(args) + "\n").encode()))
            return 0
        if base == "false":
            return 1
        if base == "sleep":
            await asyncio.sleep(_duration(args[0] if args else "0"))
            return 0
        if base == "timeout":
            while args and args[0].startswith("-"):
                args = args[2:] if args[0] in {"-s", "-k"} else args[1:]
            if len(args) < 2:
                return 125
            try:
                return await asyncio.wait_for(self._process(execution, args[1:], output), _duration(args[0]))
            except TimeoutError:
                return 124
        return 0

    # --- networks -----------------------------------------------------------------------

    def _network_json(self, net: FakeNetwork) -> dict[str, Any]:
        containers = {
            c.id: {
                "Name": c.name,
                "EndpointID": _stable_id("endpoint", c.id, net.id, c.ips[net.id]),
                "MacAddress": "02:42:ac:11:00:02",
                "IPv4Address": f"{c.ips[net.id]}/16",
                "IPv6Address": "",
            }
            for c in self.containers.values()
            if c.running and net.id in c.ips
        }
        return {
            "Name": net.name,
            "Id": net.id,
            "Created": net.created,
            "Scope": "local",
            "Driver": net.driver,
            "EnableIPv6": False,
            "IPAM": {"Driver": "default", "Options": None, "Config": [{"Subnet": f"172.{net.subnet}.0.0/16"}]},
            "Internal": net.internal,
            "Attachable": net.attachable,
            "Ingress": False,
            "ConfigFrom": {"Network": ""},
            "ConfigOnly": False,
            "Containers": containers,
            "Options": {},
            "Labels": dict(net.labels),
        }

    async def _network_list(self, request: web.Request, _: dict[str, str]) -> web.StreamResponse:
        filters = _filters(request.query.get("filters"), {"name", "id", "label", "driver", "type", "scope", "dangling"})
        out = []
        for net in self.networks.values():
            if filters.get("name") and not any(n in net.name for n in filters["name"]):
                continue
            if filters.get("id") and not any(net.id.startswith(i) for i in filters["id"]):
                continue
            if filters.get("driver") and net.driver not in filters["driver"]:
                continue
            if not all(_label_matches(net.labels, want) for want in filters.get("label", [])):
                continue
            info = self._network_json(net)
            info["Containers"] = {}
            out.append(info)
        return _json(out)

    async def _network_create(self, request: web.Request, _: dict[str, str]) -> web.StreamResponse:
        body = await _body(request, "NetworkCreateRequest")
        name = body.get("Name")
        if not isinstance(name, str) or not name:
            raise DockerAPIError(400, "invalid name: name is empty")
        driver = body.get("Driver") or "bridge"
        labels = body.get("Labels") or {}
        if not isinstance(labels, dict) or not all(isinstance(v, str) for v in labels.values()):
            raise DockerAPIError(400, "json: cannot unmarshal into Go struct field NetworkCreateRequest.Labels")
        if name in {"host", "none"} or driver in {"host", "null"}:
            kind = "null" if name == "none" or driver == "null" else "host"
            raise DockerAPIError(403, f"operation is not permitted on predefined {kind} network ")
        existing = [n for n in self.networks.values() if n.name == name]
        if existing and (body.get("CheckDuplicate") or name == "bridge"):
            raise DockerAPIError(409, f"network with name {name} already exists")
        if driver in {"macvlan", "ipvlan"}:
            raise DockerAPIError(500, "operation not supported")
        if driver == "overlay":
            raise DockerAPIError(
                500,
                'This node is not a swarm manager. Use "docker swarm init" or "docker swarm join" to connect this '
                "node to swarm and try again.",
            )
        if driver != "bridge":
            raise DockerAPIError(404, f'plugin "{driver}" not found')
        net = self.add_network(
            name,
            network_id=self._new_id(),
            driver=driver,
            internal=bool(body.get("Internal")),
            attachable=bool(body.get("Attachable")),
            labels=labels,
        )
        warning = f"Network with name {name} (id : {existing[0].id}) already exists" if existing else ""
        return _json({"Id": net.id, "Warning": warning}, status=201)

    async def _network_inspect(self, request: web.Request, m: dict[str, str]) -> web.StreamResponse:
        return _json(self._network_json(self.find_network(m["id"])))

    async def _network_delete(self, request: web.Request, m: dict[str, str]) -> web.StreamResponse:
        net = self.find_network(m["id"], ambiguous="network {ref} is ambiguous ({n} matches found based on name)")
        if net.predefined:
            raise DockerAPIError(403, f"{net.name} is a pre-defined network and cannot be removed")
        if any(c.running and net.id in c.ips for c in self.containers.values()):
            raise DockerAPIError(
                403, f"error while removing network: network {net.name} id {net.id} has active endpoints"
            )
        del self.networks[net.id]
        for c in self.containers.values():
            c.endpoints.pop(net.id, None)
        return web.Response(status=204)

    async def _network_connect(self, request: web.Request, m: dict[str, str]) -> web.StreamResponse:
        net = self.find_network(m["id"])
        body = await _body(request, "NetworkConnect")
        c = self.find_container(str(body.get("Container") or ""))
        endpoint = body.get("EndpointConfig") or {}
        mode = c.host_config.get("NetworkMode") or "default"
        if net.driver == "host" or mode == "host":
            raise DockerAPIError(400, "container cannot be disconnected from host network or connected to host network")
        if net.driver == "null" or mode == "none":
            raise DockerAPIError(
                400,
                "container cannot be connected to multiple networks with one of the networks in private (none) mode",
            )
        if net.id in c.endpoints:
            raise DockerAPIError(403, f"endpoint with name {c.name} already exists in network {net.name}")
        if endpoint.get("Aliases") and not net.user_defined:
            raise DockerAPIError(400, "network-scoped alias is supported only for containers in user defined networks")
        c.endpoints[net.id] = {"Aliases": endpoint.get("Aliases")}
        if c.running:
            c.ips[net.id] = self._ip(net)
        return web.Response(status=200)

    async def _network_disconnect(self, request: web.Request, m: dict[str, str]) -> web.StreamResponse:
        net = self.find_network(m["id"])
        body = await _body(request, "NetworkDisconnect")
        c = self.find_container(str(body.get("Container") or ""))
        if net.driver == "host":
            raise DockerAPIError(400, "container cannot be disconnected from host network or connected to host network")
        if net.id not in c.endpoints:
            raise DockerAPIError(500, f"container {c.id} is not connected to network {net.name}")
        del c.endpoints[net.id]
        c.ips.pop(net.id, None)
        return web.Response(status=200)

    # --- volumes ------------------------------------------------------------------------

    def _volume_users(self, name: str) -> list[str]:
        return [c.id for c in self.containers.values() if any(m.get("Name") == name for m in c.mounts)]

    async def _volume_list(self, request: web.Request, _: dict[str, str]) -> web.StreamResponse:
        filters = _filters(request.query.get("filters"), {"label", "name", "dangling", "driver"})
        volumes = [
            v.inspect()
            for v in self.volumes.values()
            if all(_label_matches(v.inspect().get("Labels") or {}, want) for want in filters.get("label", []))
        ]
        return _json({"Volumes": volumes, "Warnings": None})

    async def _volume_create(self, request: web.Request, _: dict[str, str]) -> web.StreamResponse:
        body = await _body(request, "VolumeCreateBody")
        name = body.get("Name") or self._new_id()
        labels = body.get("Labels") or {}
        if not isinstance(name, str) or not isinstance(labels, dict):
            raise DockerAPIError(400, "json: cannot unmarshal into Go struct field VolumeCreateBody")
        if not _VOLUME_NAME.match(name):
            raise DockerAPIError(400, _bad_volume_name(name))
        if name not in self.volumes:
            self.volumes[name] = FakeVolume(name=name, labels={str(k): str(v) for k, v in labels.items()})
        return _json(self.volumes[name].inspect(), status=201)

    async def _volume_inspect(self, request: web.Request, m: dict[str, str]) -> web.StreamResponse:
        return _json(self.find_volume(m["name"]).inspect())

    async def _volume_delete(self, request: web.Request, m: dict[str, str]) -> web.StreamResponse:
        volume = self.find_volume(m["name"])
        users = self._volume_users(volume.name)
        if users:
            raise DockerAPIError(409, f"remove {volume.name}: volume is in use - [{', '.join(users)}]")
        del self.volumes[volume.name]
        return web.Response(status=204)

    # --- images -------------------------------------------------------------------------

    async def _image_inspect(self, request: web.Request, m: dict[str, str]) -> web.StreamResponse:
        return _json(self.find_image(m["name"]).inspect())

    async def _image_pull(self, request: web.Request, _: dict[str, str]) -> web.StreamResponse:
        from_image = request.query.get("fromImage", "")
        tag = request.query.get("tag", "")
        self.pull_auth.append(request.headers.get("X-Registry-Auth"))
        ref = from_image
        if tag:
            ref = f"{from_image}@{tag}" if tag.startswith("sha256:") else f"{from_image}:{tag}"
        try:
            familiar, parsed_tag, digest = parse_reference(ref)
        except InvalidReference as exc:
            raise DockerAPIError(400, str(exc)) from None
        wanted = f"{familiar}@{digest}" if digest else f"{familiar}:{parsed_tag}"
        image = next(
            (i for i in self.registry.values() if wanted in i.digests or wanted in i.tags),
            None,
        )
        if image is None:
            repo_known = any(t.rpartition(":")[0] == familiar for i in self.registry.values() for t in i.tags)
            first = familiar.partition("/")[0]
            if repo_known:
                raise DockerAPIError(404, f"manifest for {wanted} not found: manifest unknown: manifest unknown")
            if "/" in familiar and ("." in first or ":" in first or first == "localhost"):
                raise DockerAPIError(
                    500, f'Get "https://{first}/v2/": dial tcp: lookup {first.partition(":")[0]}: no such host'
                )
            raise DockerAPIError(
                404,
                f"pull access denied for {familiar}, repository does not exist or may require 'docker login': "
                "denied: requested access to the resource is denied",
            )
        self.images[image.id] = image
        if not digest and wanted not in image.tags:
            image.tags.append(wanted)
        digest_line = (image.digests or [f"x@sha256:{'0' * 64}"])[0].partition("@")[2]
        lines = [
            {"status": f"Pulling from {familiar}", "id": parsed_tag or digest},
            {"status": f"Digest: {digest_line}"},
            {"status": f"Status: Downloaded newer image for {wanted}"},
        ]
        body = "".join(json.dumps(line) + "\r\n" for line in lines)
        return web.Response(body=body.encode(), content_type="application/json")


# --- helpers ------------------------------------------------------------------------------


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=json.dumps(data).encode(), status=status, content_type="application/json")


def _error(status: int, message: str) -> web.Response:
    return _json({"message": message}, status=status)


def _bad_volume_name(name: str) -> str:
    return (
        f'create {name}: "{name}" includes invalid characters for a local volume name, only '
        '"[a-zA-Z0-9][a-zA-Z0-9_.-]" are allowed. If you intended to pass a host directory, use absolute path'
    )


def _frame(stream: int, data: bytes) -> bytes:
    return struct.pack(">BxxxL", stream, len(data)) + data


def _split_opt(option: str) -> tuple[str, str, str]:
    match = re.match(r"^([^=:]*)([=:]?)(.*)$", option)
    assert match is not None
    return match.group(1), match.group(2), match.group(3)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _duration(text: str) -> float:
    """``sleep`` and ``timeout`` durations: seconds, with an optional s/m/h/d suffix."""
    scale = {"s": 1, "m": 60, "h": 3600, "d": 86400}.get(text[-1:], 1)
    number = text[:-1] if text[-1:] in {"s", "m", "h", "d"} else text
    return float(number) * scale if _is_number(number) else 0.0


def _int(value: Any, name: str) -> int:
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int | float) or value != int(value):
        raise DockerAPIError(
            400, f"json: cannot unmarshal {type(value).__name__} into Go struct field .{name} of type int64"
        )
    return int(value)


def _typed(value: Any, kind: type, name: str) -> Any:
    if not isinstance(value, kind):
        raise DockerAPIError(400, f"json: cannot unmarshal {type(value).__name__} into Go value of type {name}")
    return value


def _check_types(body: dict[str, Any]) -> None:
    """The JSON shapes Go's decoder insists on for the fields dockhand sends."""
    for key in ("Cmd", "Entrypoint", "Env"):
        value = body.get(key)
        if value is not None and not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
            raise DockerAPIError(400, f"json: cannot unmarshal into Go struct field ContainerConfigWrapper.{key}")
    labels = body.get("Labels")
    if labels is not None and not (isinstance(labels, dict) and all(isinstance(v, str) for v in labels.values())):
        raise DockerAPIError(400, "json: cannot unmarshal into Go struct field ContainerConfigWrapper.Labels")


async def _body(request: web.Request, what: str) -> dict[str, Any]:
    raw = await request.read()
    if not raw:
        return {}
    try:
        body = json.loads(raw)
    except ValueError as exc:
        raise DockerAPIError(400, f"invalid character in {what}: {exc}") from None
    if not isinstance(body, dict):
        raise DockerAPIError(400, f"json: cannot unmarshal {type(body).__name__} into Go value of type {what}")
    return body


def _filters(raw: str | None, known: set[str]) -> dict[str, list[str]]:
    if not raw:
        return {}
    try:
        parsed = json.loads(raw)
    except ValueError:
        raise DockerAPIError(400, "invalid filter: invalid JSON") from None
    if not isinstance(parsed, dict):
        raise DockerAPIError(400, "invalid filter")
    out: dict[str, list[str]] = {}
    for key, values in parsed.items():
        if key not in known:
            raise DockerAPIError(400, f"Invalid filter '{key}'")
        out[key] = list(values) if isinstance(values, list) else [k for k, on in dict(values).items() if on]
    return out


def _label_matches(labels: dict[str, str], want: str) -> bool:
    key, sep, value = want.partition("=")
    return key in labels and (not sep or labels[key] == value)


__all__ = [
    "API_VERSION",
    "BUSYBOX_BINARIES",
    "DockerAPIError",
    "FakeContainer",
    "FakeDocker",
    "FakeImage",
    "FakeNetwork",
    "FakeRequest",
    "FakeVolume",
    "InvalidReference",
    "parse_reference",
    "stable_id",
]
