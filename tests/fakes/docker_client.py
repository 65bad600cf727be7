"""An in-process stand-in for ``aiodocker.Docker``: the few calls that discovery, the event
stream, the health probe and single-flight pulls make, without a socket.

Where :mod:`tests.fakes.docker_api` serves the whole Engine API over a unix socket (the real
client on top), :class:`FakeDockerClient` *is* the client: ``containers.container(id).show()``,
``containers.list(filters=...)``, ``images.pull(ref, auth=...)``, ``system.info()`` and
``version()``, answering with Docker Engine API 1.41 shapes, so a unit test can drive
:class:`~dockhand.worker.docker.DockerOps` (and what is built on it) in microseconds and see
every call it made::

    docker = FakeDockerClient(Box(id="c0ffee" + "0" * 58, name="web", labels={...}))
    ops = DockerOps(docker, settings, labels, policy)  # type: ignore[arg-type]
    ...
    assert docker.show_calls == ["c0ffee..."]

Containers are :class:`Box` objects, each rendering its inspect and its list entry. A list
honours the ``label`` and ``status`` filters as the daemon does (a paused container's state is
``paused``, not ``running``); a box put with ``listed=False`` is inspectable but left out of
lists, as a container started just after the list was taken. Failures: :attr:`~FakeDockerClient.fail`
makes every call raise (the daemon is down), :attr:`~FakeDockerClient.failures` one operation
(``"images.pull"``, ``"containers.list"``, ...); clearing :attr:`~FakeDockerClient.gate` holds
every call until it is set again.
"""

from __future__ import annotations

import asyncio
import copy
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiodocker.exceptions import DockerError

VERSION: dict[str, Any] = {
    "Platform": {"Name": "Docker Engine - Community"},
    "Version": "20.10.24",
    "ApiVersion": "1.41",
    "MinAPIVersion": "1.12",
    "GitCommit": "5d6db84",
    "GoVersion": "go1.19.7",
    "Os": "linux",
    "Arch": "amd64",
    "KernelVersion": "6.1.0-18-amd64",
}
"""What ``GET /version`` answers (a Docker 20.10.24 daemon)."""

_NETWORK_IDS = {"bridge": "5e1c", "app": "9a0f", "backend": "77d2"}


@dataclass
class Box:
    """One container as the daemon knows it; renders both its inspect and its list entry."""

    id: str
    name: str
    labels: dict[str, str]
    networks: dict[str, str] = field(default_factory=lambda: {"bridge": "172.17.0.2"})
    # (container port, protocol, [(host ip, host port), ...]); an empty list = exposed, not published
    ports: list[tuple[int, str, list[tuple[str, int]]]] = field(default_factory=list)
    health: str | None = None  # None: no healthcheck
    state: str = "running"  # running | paused | exited
    image: str = "nginx:1.25"
    created: int = 1714557600  # unix seconds (what a list entry says; an inspect adds nanoseconds)

    def _endpoint(self, network: str, ip: str, *, listing: bool) -> dict[str, Any]:
        gateway = ip.rsplit(".", 1)[0] + ".1" if ip else ""
        return {
            "IPAMConfig": None,
            "Links": None,
            "Aliases": None if listing or network == "bridge" else [self.name, self.id[:12]],
            "NetworkID": _NETWORK_IDS.get(network, "0000") * 16,
            "EndpointID": (self.id[:8] + _NETWORK_IDS.get(network, "0000")) * 5 + "abcd",
            "Gateway": gateway,
            "IPAddress": ip,
            "IPPrefixLen": 16 if ip else 0,
            "IPv6Gateway": "",
            "GlobalIPv6Address": "",
            "GlobalIPv6PrefixLen": 0,
            "MacAddress": "02:42:ac:11:00:02" if ip else "",
            "DriverOpts": None,
        }

    def inspect(self) -> dict[str, Any]:
        running = self.state in ("running", "paused")
        state: dict[str, Any] = {
            "Status": self.state,
            "Running": running,
            "Paused": self.state == "paused",
            "Restarting": False,
            "OOMKilled": False,
            "Dead": False,
            "Pid": 4242 if running else 0,
            "ExitCode": 0,
            "Error": "",
            "StartedAt": "2024-05-01T10:00:01.123456789Z",
            "FinishedAt": "0001-01-01T00:00:00Z",
        }
        if self.health is not None:
            state["Health"] = {
                "Status": self.health,
                "FailingStreak": 3 if self.health == "unhealthy" else 0,
                "Log": []
                if self.health == "starting"
                else [
                    {
                        "Start": "2024-05-01T10:00:31.000000000Z",
                        "End": "2024-05-01T10:00:31.050000000Z",
                        "ExitCode": 0 if self.health == "healthy" else 1,
                        "Output": "",
                    }
                ],
            }
        ports: dict[str, list[dict[str, str]] | None] = {}
        for port, proto, bindings in self.ports:
            ports[f"{port}/{proto}"] = [{"HostIp": ip, "HostPort": str(hp)} for ip, hp in bindings] or None
        config: dict[str, Any] = {
            "Hostname": self.id[:12],
            "Domainname": "",
            "User": "",
            "ExposedPorts": {f"{p}/{proto}": {} for p, proto, _ in self.ports},
            "Tty": False,
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "NGINX_VERSION=1.25.5"],
            "Cmd": ["nginx", "-g", "daemon off;"],
            "Image": self.image,
            "Volumes": None,
            "WorkingDir": "",
            "Entrypoint": ["/docker-entrypoint.sh"],
            "OnBuild": None,
            "Labels": dict(self.labels),
            "StopSignal": "SIGQUIT",
        }
        if self.health is not None:
            config["Healthcheck"] = {
                "Test": ["CMD-SHELL", "curl -f http://localhost/ || exit 1"],
                "Interval": 1000000000,
            }
        return {
            "Id": self.id,
            "Created": datetime.fromtimestamp(self.created, UTC).strftime("%Y-%m-%dT%H:%M:%S") + ".987654321Z",
            "Path": "/docker-entrypoint.sh",
            "Args": ["nginx", "-g", "daemon off;"],
            "State": state,
            "Image": "sha256:" + "ab" * 32,
            "Name": "/" + self.name,
            "RestartCount": 0,
            "Driver": "overlay2",
            "Platform": "linux",
            "HostConfig": {
                "NetworkMode": "default",
                "PortBindings": {
                    f"{p}/{proto}": [{"HostIp": ip, "HostPort": ""} for ip, _ in b][:1]
                    for p, proto, b in self.ports
                    if b
                },
                "RestartPolicy": {"Name": "no", "MaximumRetryCount": 0},
            },
            "Mounts": [],
            "Config": config,
            "NetworkSettings": {
                "Bridge": "",
                "SandboxID": "f" * 64,
                "HairpinMode": False,
                "LinkLocalIPv6Address": "",
                "LinkLocalIPv6PrefixLen": 0,
                "Ports": ports,
                "SandboxKey": "/var/run/docker/netns/ffffffffffff",
                "SecondaryIPAddresses": None,
                "SecondaryIPv6Addresses": None,
                "EndpointID": "",
                "Gateway": "172.17.0.1" if "bridge" in self.networks else "",
                "IPAddress": self.networks.get("bridge", ""),
                "IPPrefixLen": 16 if "bridge" in self.networks else 0,
                "MacAddress": "",
                "Networks": {n: self._endpoint(n, ip, listing=False) for n, ip in self.networks.items()},
            },
        }

    def list_entry(self) -> dict[str, Any]:
        ports: list[dict[str, Any]] = []
        for port, proto, bindings in self.ports:
            if not bindings:
                ports.append({"PrivatePort": port, "Type": proto})
            for ip, hp in bindings:
                ports.append({"IP": ip, "PrivatePort": port, "PublicPort": hp, "Type": proto})
        if self.state == "paused":
            status = "Up 3 minutes (Paused)"
        elif self.state != "running":
            status = "Exited (0) 2 seconds ago"
        else:
            status = (
                "Up 3 seconds"
                + {
                    None: "",
                    "starting": " (health: starting)",
                    "healthy": " (healthy)",
                    "unhealthy": " (unhealthy)",
                }[self.health]
            )
        return {
            "Id": self.id,
            "Names": ["/" + self.name],
            "Image": self.image,
            "ImageID": "sha256:" + "ab" * 32,
            "Command": '/docker-entrypoint.sh nginx -g "daemon off;"',
            "Created": self.created,
            "Ports": ports,
            "Labels": dict(self.labels),
            "State": self.state,
            "Status": status,
            "HostConfig": {"NetworkMode": "default"},
            "NetworkSettings": {
                "Networks": {n: self._endpoint(n, ip, listing=True) for n, ip in self.networks.items()}
            },
            "Mounts": [],
        }

    def attributes(self, **extra: str) -> dict[str, str]:
        """Actor.Attributes of a container event: the labels, plus name and image."""
        return {**self.labels, "image": self.image, "name": self.name, **extra}


class Listed:
    """What aiodocker's ``containers.list`` yields: ``c[key]`` and ``key in c`` over the entry."""

    def __init__(self, data: dict[str, Any]) -> None:
        self._data = data

    def __getitem__(self, key: str) -> Any:
        return self._data[key]

    def __contains__(self, key: str) -> bool:
        return key in self._data


class FakeContainer:
    """``docker.containers.container(id)``: only ``show()`` (inspect) is modelled."""

    def __init__(self, docker: FakeDockerClient, container_id: str) -> None:
        self._docker = docker
        self._id = container_id

    async def show(self) -> dict[str, Any]:
        self._docker.show_calls.append(self._id)
        await self._docker.answer("containers.show")
        box = self._docker.boxes.get(self._id)
        if box is None:
            raise DockerError(404, f"No such container: {self._id}")
        return box.inspect()


class FakeContainers:
    """``docker.containers``: inspect by id and list with filters."""

    def __init__(self, docker: FakeDockerClient) -> None:
        self._docker = docker

    def container(self, container_id: str) -> FakeContainer:
        return FakeContainer(self._docker, container_id)

    async def list(self, **params: Any) -> list[Listed]:
        self._docker.list_calls.append(params)
        await self._docker.answer("containers.list")
        filters = json.loads(params.get("filters") or "{}")
        out = []
        for box in self._docker.boxes.values():
            if box.id in self._docker.unlisted:
                continue
            entry = self._docker.listed_as.get(box.id, box).list_entry()
            if "status" in filters and entry["State"] not in filters["status"]:
                continue
            wanted = [f.partition("=") for f in filters.get("label", [])]
            if any(entry["Labels"].get(k) != v if eq else k not in entry["Labels"] for k, eq, v in wanted):
                continue
            out.append(Listed(copy.deepcopy(entry)))
        return out


class FakeImages:
    """``docker.images``: a pull that takes :attr:`FakeDockerClient.pull_s` seconds."""

    def __init__(self, docker: FakeDockerClient) -> None:
        self._docker = docker

    async def pull(self, from_image: str, *, auth: Any = None, **params: Any) -> list[dict[str, Any]]:
        self._docker.pull_calls.append((from_image, auth))
        await asyncio.sleep(self._docker.pull_s)
        await self._docker.answer("images.pull")
        return [{"status": "Downloaded newer image"}]


class FakeSystem:
    """``docker.system``: ``GET /info``, with container counts taken from the boxes."""

    def __init__(self, docker: FakeDockerClient) -> None:
        self._docker = docker

    async def info(self) -> dict[str, Any]:
        self._docker.info_calls += 1
        await self._docker.answer("system.info")
        states = [box.state for box in self._docker.boxes.values()]
        return {
            "ID": "7TRN:IPZB:QYBB:VPBQ:UWYN:MHY3:DIMB:XT4X:DAIN:UPCG:4UQ7:XLQH",
            "Containers": len(states),
            "ContainersRunning": states.count("running"),
            "ContainersPaused": states.count("paused"),
            "ContainersStopped": len(states) - states.count("running") - states.count("paused"),
            "Images": 3,
            "Driver": "overlay2",
            "OperatingSystem": "Debian GNU/Linux 12 (bookworm)",
            "OSType": "linux",
            "Architecture": "x86_64",
            "NCPU": 2,
            "MemTotal": 8_337_170_432,
            "ServerVersion": VERSION["Version"],
        }


class FakeDockerClient:
    """An ``aiodocker.Docker`` in memory: boxes for containers, every call recorded."""

    def __init__(self, *boxes: Box, pull_s: float = 0.0) -> None:
        self.boxes: dict[str, Box] = {b.id: b for b in boxes}
        self.unlisted: set[str] = set()  # inspectable, but not (yet) in a list
        # What a list shows for a container instead of its box: dockerd logs `die` before its
        # list view stops saying "running", so for a moment a list lags the events.
        self.listed_as: dict[str, Box] = {}
        self.pull_s = pull_s
        self.fail: Exception | None = None  # every call raises it: the daemon is down
        self.failures: dict[str, Exception] = {}  # one operation raises it: "images.pull", ...
        self.gate = asyncio.Event()  # cleared: every call waits until it is set
        self.gate.set()
        self.show_calls: list[str] = []
        self.list_calls: list[dict[str, Any]] = []
        self.pull_calls: list[tuple[str, Any]] = []
        self.version_calls = 0
        self.info_calls = 0
        self.containers = FakeContainers(self)
        self.images = FakeImages(self)
        self.system = FakeSystem(self)

    def put(self, box: Box, *, listed: bool = True) -> Box:
        """Add or replace a container (a changed state, labels or networks: a new :class:`Box`)."""
        self.boxes[box.id] = box
        if listed:
            self.unlisted.discard(box.id)
        else:
            self.unlisted.add(box.id)
        return box

    async def version(self) -> dict[str, Any]:
        self.version_calls += 1
        await self.answer("version")
        return dict(VERSION)

    async def answer(self, operation: str) -> None:
        """What every call goes through: the gate, then the injected failures."""
        await self.gate.wait()
        if self.fail is not None:
            raise self.fail
        failure = self.failures.get(operation)
        if failure is not None:
            raise failure
