"""Transient Docker failures, injected for real: a proxy in front of the Docker socket drops
the connection under chosen requests. Transient failures are retried (bounded, jittered);
a 4xx never is."""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from .conftest import WorkerFactory, connect_client

DOCKER_SOCKET = "/var/run/docker.sock"
_REQUEST_LINE = re.compile(rb"^(GET|POST|DELETE|PUT|HEAD) (\S+) HTTP/1\.[01]\r\n")


@dataclass
class FaultyProxy:
    """A byte-for-byte proxy to the Docker socket that counts requests by path and resets the
    connection carrying the next ``resets[path]`` requests for a path (matched by regex)."""

    path: Path
    resets: dict[str, int] = field(default_factory=dict)
    seen: Counter[str] = field(default_factory=Counter)
    targets: list[str] = field(default_factory=list)

    def count(self, pattern: str) -> int:
        """Requests so far whose target (path and query) matches ``pattern``."""
        return sum(1 for target in self.targets if re.search(pattern, target))

    def _should_reset(self, target: str) -> bool:
        for pattern, left in self.resets.items():
            if left > 0 and re.search(pattern, target):
                self.resets[pattern] = left - 1
                return True
        return False

    async def _pipe_requests(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while chunk := await reader.read(65536):
            if match := _REQUEST_LINE.match(chunk):
                target = match.group(2).decode()
                self.targets.append(target)
                self.seen[re.sub(r"^/v[0-9.]+", "", target.split("?")[0])] += 1
                if self._should_reset(target):
                    raise ConnectionResetError(f"injected reset under {target}")
            writer.write(chunk)
            await writer.drain()

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while chunk := await reader.read(65536):
            writer.write(chunk)
            await writer.drain()

    async def _serve(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        docker_reader, docker_writer = await asyncio.open_unix_connection(DOCKER_SOCKET)
        upstream = asyncio.ensure_future(self._pipe_requests(client_reader, docker_writer))
        downstream = asyncio.ensure_future(self._pipe(docker_reader, client_writer))
        await asyncio.wait([upstream, downstream], return_when=asyncio.FIRST_COMPLETED)
        for task in (upstream, downstream):
            task.cancel()
        await asyncio.gather(upstream, downstream, return_exceptions=True)
        for writer in (client_writer, docker_writer):
            writer.close()

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[FaultyProxy]:
        server = await asyncio.start_unix_server(self._serve, path=str(self.path))
        try:
            yield self
        finally:
            server.close()
            await server.wait_closed()


@pytest.fixture
async def proxy(tmp_path: Path) -> AsyncIterator[FaultyProxy]:
    async with FaultyProxy(tmp_path / "docker.sock").running() as faulty:
        yield faulty


async def test_transient_failures_are_retried_and_4xx_never(
    workers: WorkerFactory, session_id: str, proxy: FaultyProxy, test_image: str
) -> None:
    worker = await asyncio.to_thread(
        workers.start, "faulty", DOCKHAND_DOCKER_HOST=f"unix://{proxy.path}", DOCKHAND_DOCKER_RETRY_ATTEMPTS="3"
    )
    try:
        async with connect_client(worker, session_id) as client:
            # Two resets under this command's list request: the third attempt gets through.
            # (The project makes its query unique among the worker's own list calls.)
            project = f"p{session_id}"
            proxy.resets[project] = 2
            reply = await client.send("workspace.list", {"project": project})
            assert reply["status"] == "succeeded", reply
            assert proxy.count(project) == 3

            # More resets than attempts: a retryable failure, not a hang and not a crash.
            proxy.resets[r"/info"] = 10
            failed = await client.send("host.info")
            assert failed["status"] == "failed", failed
            assert failed["error"]["code"] == "docker_unavailable"
            assert failed["error"]["retryable"] is True
            proxy.resets[r"/info"] = 0

            # A 404 is an answer, not a fault: asked exactly once.
            ws = client.ws_id("missing")
            path = f"/containers/dockhand-{ws}/json"
            missing = await client.send("workspace.inspect", {"workspace_id": ws})
            assert missing["error"]["code"] == "not_found"
            assert proxy.seen[path] == 1
    finally:
        await asyncio.to_thread(worker.stop)
