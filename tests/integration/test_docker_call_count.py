"""The Docker API requests of a workspace lifecycle, counted against the real dockerd (issue 15,
item 3): a worker whose DOCKER_HOST is a counting unix-socket proxy in front of the daemon. The
unit tests (tests/unit/test_docker_calls_count.py) pin the same counts on the in-memory Engine.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiodocker
import pytest

from .conftest import TEST_LABEL, WorkerFactory, WorkerProcess, connect_client

_UPSTREAM = (os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock").removeprefix("unix://")
_BACKGROUND = re.compile(r"^(GET /events|GET /_ping|HEAD /_ping|GET /version|GET /info)\b")
_ID = re.compile(r"\b[0-9a-f]{64}\b")
_INSPECT_BY_ID = re.compile(r"^GET /containers/([0-9a-f]{64})/json$")


class CountingProxy:
    """A unix socket that forwards every byte to dockerd and records each HTTP request line
    (method and path, API version and query left out) with its time."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.requests: list[tuple[float, str]] = []  # (monotonic time, "METHOD /path")
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.AbstractServer | None = None

    def start(self) -> None:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._listen(), self._loop).result(10)

    def stop(self) -> None:
        async def close() -> None:
            if self._server is not None:
                self._server.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if self._server is not None:
                await self._server.wait_closed()
            await asyncio.sleep(0.1)  # the closed transports release their sockets

        asyncio.run_coroutine_threadsafe(close(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    async def _listen(self) -> None:
        self._server = await asyncio.start_unix_server(self._serve, str(self.path))

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_unix_connection(_UPSTREAM)
        tasks = [
            asyncio.ensure_future(self._requests(reader, up_writer)),
            asyncio.ensure_future(self._pipe(up_reader, writer)),
        ]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for w in (writer, up_writer):
                w.close()
                with contextlib.suppress(Exception):
                    await w.wait_closed()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while chunk := await reader.read(65536):
            writer.write(chunk)
            await writer.drain()

    async def _requests(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            method, target, _ = lines[0].split(" ", 2)
            path = re.sub(r"^/v[0-9.]+", "", target.split("?", 1)[0])
            query = target.split("?", 1)[1] if "?" in target else ""
            label = f"{method} {path}"
            if method == "GET" and path == "/containers/json" and "network" in query:
                label += "?network"
            self.requests.append((time.monotonic(), label))
            headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
            writer.write(head)
            if "upgrade" in headers.get("connection", "").lower():
                await self._pipe(reader, writer)  # hijacked (an attach): raw bytes from here on
                return
            if headers.get("transfer-encoding", "").lower() == "chunked":
                while True:
                    size_line = await reader.readuntil(b"\r\n")
                    size = int(size_line.split(b";")[0], 16)
                    writer.write(size_line + await reader.readexactly(size + 2))
                    if size == 0:
                        break
            elif int(headers.get("content-length", "0") or 0):
                writer.write(await reader.readexactly(int(headers["content-length"])))
            await writer.drain()

    def since(self, began: float, container_id: str) -> list[str]:
        """The requests since ``began`` (monotonic), ids as ``{id}``, but the worker's background
        ones: its probes, and inspects of other containers by id (the Docker host is shared: the
        worker's discovery inspects other tests' discovery containers as their events arrive)."""
        out = []
        for at, label in self.requests:
            inspected = _INSPECT_BY_ID.match(label)
            if at < began or _BACKGROUND.match(label) or (inspected and inspected.group(1) != container_id):
                continue
            out.append(_ID.sub("{id}", label))
        return out

    def log(self, began: float) -> str:
        """Every request since ``began``, background ones too, with its time (for a failure)."""
        return "\n".join(f"{at - began:8.3f} {label}" for at, label in self.requests if at >= began)


@pytest.fixture
def counted(workers: WorkerFactory, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[WorkerProcess, Any]]:
    # A short path: unix socket paths are limited to about 100 bytes.
    root = Path(tmp_path_factory.mktemp("proxy", numbered=True))
    proxy = CountingProxy(root / "d.sock")
    proxy.start()
    worker: WorkerProcess | None = None
    try:
        worker = workers.start(
            "count",
            DOCKER_HOST=f"unix://{proxy.path}",
            DOCKHAND_DEFAULT_NETWORK=f"dhtest-{workers.session_id}-count",
            # Background scans far apart: what is counted is the commands' own requests.
            DOCKHAND_EXPIRY_RESCAN_S="3600",
            DOCKHAND_HEALTH_INTERVAL_S="3600",
        )
        yield worker, proxy
    finally:
        if worker is not None:
            worker.stop()  # before the proxy goes: it must not lose Docker mid-command
        proxy.stop()


async def _step(
    client: Any, proxy: CountingProxy, command: str, payload: dict[str, Any], container_id: str = ""
) -> tuple[list[str], str]:
    """The command's Docker requests, and its workspace's container id (given, or in its result)."""
    began = time.monotonic()
    reply = await client.send(command, payload)
    assert reply["status"] == "succeeded", reply
    container_id = container_id or (reply["result"] or {}).get("container_id", "")
    return proxy.since(began, container_id), container_id


async def test_a_lifecycle_makes_the_docker_requests_its_results_need(
    counted: tuple[WorkerProcess, CountingProxy], session_id: str, test_image: str
) -> None:
    worker, proxy = counted
    async with connect_client(worker, session_id) as client:
        labels = client.labels()
        warm = client.ws_id("warm")
        # The first create makes the default network (its create event then forgets every
        # network remembered) and learns the host's CPU count.
        await _step(client, proxy, "workspace.create", {"workspace_id": warm, "image": test_image, "labels": labels})
        await asyncio.sleep(0.5)  # the event stream has read that event
        began = time.monotonic()
        # The Docker host is shared: another test's network or image made meanwhile makes a
        # create look again (as it must). A lifecycle without one shows the counts; an extra
        # call of the worker's own would show in every one.
        seen: list[dict[str, list[str]]] = []
        for _ in range(4):  # the first lifecycle looks at the network once more
            ws = client.ws_id()
            name = f"/containers/dockhand-{ws}/json"
            expected = {
                "create": ["GET /containers/json?network", "POST /containers/create", f"GET {name}"],
                "start": ["POST /containers/{id}/start", f"GET {name}"],
                "stop": ["POST /containers/{id}/stop", f"GET {name}"],
                "remove": ["DELETE /containers/{id}"],
            }
            create = {"workspace_id": ws, "image": test_image, "labels": labels, "start": False}
            steps: dict[str, list[str]] = {}
            steps["create"], made = await _step(client, proxy, "workspace.create", create)
            for command, payload in (
                ("start", {"workspace_id": ws}),
                ("stop", {"workspace_id": ws, "timeout_s": 1}),
                ("remove", {"workspace_id": ws}),
            ):
                steps[command], _ = await _step(client, proxy, f"workspace.{command}", payload, made)
            seen.append(steps)
            if len(seen) > 1 and steps == expected:
                break
        await _step(client, proxy, "workspace.remove", {"workspace_id": warm, "force": True})
    assert seen[-1] == expected, f"{seen}\n{proxy.log(began)}"


async def test_a_container_replaced_behind_the_cache_is_not_acted_on(
    counted: tuple[WorkerProcess, CountingProxy], session_id: str, test_image: str, docker: aiodocker.Docker
) -> None:
    worker, _ = counted
    async with connect_client(worker, session_id) as client:
        ws = client.ws_id("swap")
        created = await client.send(
            "workspace.create", {"workspace_id": ws, "image": test_image, "labels": client.labels(), "start": False}
        )
        assert created["status"] == "succeeded", created
        await client.send("workspace.inspect", {"workspace_id": ws})  # remembered, for sure
        # Behind the worker's back: removed, and made again under its name, not managed.
        await docker.containers.container(created["result"]["container_id"]).delete(force=True)
        imposter = await docker.containers.create(
            {"Image": test_image, "Labels": {TEST_LABEL: session_id}}, name=f"dockhand-{ws}"
        )
        try:
            for command, payload in (
                ("workspace.start", {"workspace_id": ws}),
                ("workspace.restart", {"workspace_id": ws, "timeout_s": 1}),
                ("workspace.remove", {"workspace_id": ws, "force": True}),
            ):
                reply = await client.send(command, payload)
                assert reply["status"] != "succeeded", reply
                assert reply["error"]["code"] == "forbidden", reply
                assert "not a workspace managed by this host" in reply["error"]["message"], reply
            info = await imposter.show()
            assert info["State"]["Running"] is False
            assert info["State"]["StartedAt"].startswith("0001-")  # never started
        finally:
            await imposter.delete(force=True)


async def test_image_and_network_events_make_the_next_create_look_again(
    counted: tuple[WorkerProcess, CountingProxy], session_id: str, test_image: str, docker: aiodocker.Docker
) -> None:
    """What the worker remembers is forgotten on Docker's own events, not only on its changes."""
    worker, proxy = counted
    async with connect_client(worker, session_id) as client:
        labels = client.labels()
        made: list[str] = []

        async def create(kind: str = "") -> list[str]:
            """The create's image and network inspects (of ``kind``: ``images``, ``networks``)."""
            ws = client.ws_id("ev")
            made.append(ws)
            payload = {"workspace_id": ws, "image": test_image, "labels": labels, "start": False}
            calls, _ = await _step(client, proxy, "workspace.create", payload)
            return [c for c in calls if "/containers/" not in c and f"/{kind}" in c]

        async def settled() -> bool:
            """A create that inspects neither (within a few: the shared host's other tests make
            networks and images too, and each of their events makes the next create look)."""
            for _ in range(5):
                if await create() == []:
                    return True
                await asyncio.sleep(0.2)
            return False

        try:
            assert await settled()  # image and network remembered
            tag = f"dhtest-count-{session_id}"
            await docker.images.tag(test_image, repo=tag, tag="latest")  # an image event
            try:
                await asyncio.sleep(1.0)
                assert await create("images") == [f"GET /images/{test_image}/json"]
            finally:
                await docker.images.delete(f"{tag}:latest")  # untag only
            assert await settled()
            network = await docker.networks.create({"Name": f"dhtest-{session_id}-other", "Labels": labels})
            await network.delete()  # a create and a destroy event
            await asyncio.sleep(1.0)
            assert await create("networks") == [f"GET /networks/dhtest-{session_id}-count"]
            assert await settled()
        finally:
            for ws in made:
                await client.send("workspace.remove", {"workspace_id": ws, "force": True})
