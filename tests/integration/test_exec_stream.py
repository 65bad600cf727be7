"""Streamed and detached ``workspace.exec`` (contract v1.1) against a real worker, broker and daemon."""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiodocker
import pytest

from dockhand.client import Client as DockhandClient
from dockhand.client import CommandFailed
from dockhand.schemas.results import ExecOutput, ExecOutputChunk

from .conftest import AMQP_URL, Client, WorkerFactory, WorkerProcess, connect_client

MiB = 1024 * 1024


@contextlib.asynccontextmanager
async def workspace(client: Client, test_image: str, name: str = "st") -> AsyncIterator[str]:
    """A running workspace of the session (test label), removed (force) afterwards."""
    ws = client.ws_id(name)
    await client.dh.workspaces.create(
        workspace_id=ws, image=test_image, command=["sleep", "600"], labels=client.labels()
    )
    try:
        yield ws
    finally:
        with contextlib.suppress(Exception):
            await client.dh.workspaces.remove(ws, force=True)


async def ps(docker: aiodocker.Docker, client: Client, ws: str) -> str:
    """``ps`` in the workspace's container, through Docker directly (not through the worker)."""
    info = await client.dh.workspaces.inspect(ws)
    container = docker.containers.container(info.container_id)
    execution = await container.exec(["ps", "-o", "pid,args"], stdout=True, stderr=True)
    out = bytearray()
    async with execution.start(detach=False) as stream:
        while (message := await stream.read_out()) is not None:
            out.extend(message.data)
    return out.decode()


def memory_kib(pid: int, field: str) -> int:
    match = re.search(rf"^{field}:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text(), re.MULTILINE)
    assert match, f"no {field} for {pid}"
    return int(match.group(1))


async def test_output_arrives_live_in_order_stdout_and_stderr_apart(client: Client, test_image: str) -> None:
    script = (
        "for i in $(seq 1 30); do echo $i; if [ $((i % 10)) = 0 ]; then echo err$i >&2; fi; sleep 0.1; done; exit 4"
    )
    async with workspace(client, test_image) as ws:
        stream = client.dh.workspaces.exec_stream(ws, ["sh", "-c", script], timeout_s=30)
        started = time.monotonic()
        arrivals: list[tuple[float, ExecOutputChunk]] = []
        async for chunk in stream:
            arrivals.append((time.monotonic() - started, chunk))
        result = stream.result
        assert result is not None
        assert (result.exit_code, result.stdout, result.stderr, result.truncated) == (4, "", "", False)
        first_at = arrivals[0][0]
        print(f"first chunk after {first_at:.3f} s, {len(arrivals)} chunks, last at {arrivals[-1][0]:.3f} s")
        assert first_at < 0.5, f"first chunk after {first_at:.3f} s"
        # Live: the chunks are spread over the ~3 s run, not delivered at its end.
        assert arrivals[-1][0] - first_at > 2.0
        chunks = [c for _, c in arrivals]
        assert [c.seq for c in chunks] == list(range(1, len(chunks) + 1))
        assert stream.missed == 0
        stdout = "".join(c.text() for c in chunks if c.stream == "stdout")
        stderr = "".join(c.text() for c in chunks if c.stream == "stderr")
        assert stdout == "".join(f"{i}\n" for i in range(1, 31))
        assert stderr == "err10\nerr20\nerr30\n"
        # Coalesced but prompt: about one chunk per line at 100 ms, never a flood.
        assert 10 <= len(chunks) <= 40, len(chunks)


async def test_a_50_mib_output_is_capped_and_the_worker_stays_small(
    client: Client, worker: WorkerProcess, test_image: str
) -> None:
    async with workspace(client, test_image) as ws:
        before = memory_kib(worker.proc.pid, "VmRSS")
        stream = client.dh.workspaces.exec_stream(
            ws, ["sh", "-c", "yes 0123456789abcdef | head -c 52428800; echo done >&2"], timeout_s=120
        )
        total = 0
        sizes = []
        async for chunk in stream:
            data = chunk.content()
            total += len(data)
            sizes.append(len(data))
        result = stream.result
        assert result is not None
        assert result.truncated is True
        # The process was drained to its end (not blocked, not killed): it exited 0.
        assert result.exit_code == 0
        assert total == 1 * MiB  # DOCKHAND_EXEC_OUTPUT_LIMIT_BYTES' default, over both streams
        assert max(sizes) <= 16 * 1024
        peak = memory_kib(worker.proc.pid, "VmHWM")
        print(f"worker VmRSS before {before} kB, VmHWM after {peak} kB, {len(sizes)} chunks, {total} bytes")
        assert peak - before < 40 * 1024, f"worker RSS {before} kB before, peak {peak} kB"


async def test_timeout_kills_the_streamed_process(client: Client, test_image: str, docker: aiodocker.Docker) -> None:
    async with workspace(client, test_image) as ws:
        # sleep is a child of the shell: the whole tree must go, not only the exec's own process.
        command = ["sh", "-c", "echo started; sleep 313; echo never"]
        stream = client.dh.workspaces.exec_stream(ws, command, timeout_s=1.5)
        seen: list[str] = []

        async def consume() -> None:
            async for chunk in stream:
                seen.append(chunk.text())

        with pytest.raises(CommandFailed) as failure:
            await consume()
        assert failure.value.code == "timeout"
        assert "killed" in failure.value.message
        assert "".join(seen) == "started\n"  # what it wrote before it was killed still came
        listing = await ps(docker, client, ws)
        assert "sleep 313" not in listing, listing


async def test_a_consumer_that_vanishes_does_not_stall_the_worker(
    client: Client, worker: WorkerProcess, session_id: str, test_image: str
) -> None:
    async with workspace(client, test_image) as ws:
        payload = {
            "workspace_id": ws,
            "command": ["sh", "-c", "for i in $(seq 1 300); do echo line $i; sleep 0.01; done"],
        }
        gone = DockhandClient(AMQP_URL, prefix=worker.prefix, host=worker.host_id, name=f"dhtest-{session_id}-gone")
        await gone.open()
        stream = gone.exec_stream(payload)
        first = await stream.__anext__()
        assert first.seq == 1
        await stream.aclose()
        started = time.monotonic()
        await gone.close()  # its exclusive reply queue is deleted with the connection, mid-stream
        info = await client.dh.host.info()
        assert info.host_id == worker.host_id
        assert time.monotonic() - started < 3.0
        # The streamed exec itself ran to its end and was answered (on the results exchange).
        found = await client.results_for(stream.command_id, timeout=30)
        assert found, "no result for the abandoned stream"
        body = found[0][1]
        assert body["status"] == "succeeded", body
        assert body["result"]["exit_code"] == 0
        assert body["result"]["stdout"] == ""
        assert body["duration_ms"] < 20_000


async def test_stream_and_detach_together_are_rejected(client: Client, test_image: str) -> None:
    payload = {"workspace_id": client.ws_id(), "command": ["true"], "stream": True, "detach": True}
    reply = await client.send("workspace.exec", payload)
    assert reply["status"] == "rejected"
    assert reply["error"]["code"] == "invalid_command"
    assert "exclude each other" in reply["error"]["message"]


async def test_a_detached_exec_survives_a_worker_restart(
    workers: WorkerFactory, session_id: str, test_image: str, docker: aiodocker.Docker
) -> None:
    first = workers.start("detach")
    second: WorkerProcess | None = None
    try:
        async with connect_client(first, session_id) as client:
            ws = client.ws_id("dt")
            await client.dh.workspaces.create(
                workspace_id=ws, image=test_image, command=["sleep", "600"], labels=client.labels()
            )
            started = time.monotonic()
            exec_id = await client.dh.workspaces.exec(ws, ["sleep", "300"], detach=True)
            assert time.monotonic() - started < 5.0  # answered at once, not after 300 s
            assert isinstance(exec_id, str)
            assert exec_id
            assert "sleep 300" in await ps(docker, client, ws)
        assert first.stop() == 0  # SIGTERM: drains and exits
        second = workers.start("detach")
        async with connect_client(second, session_id) as client:
            assert (await client.dh.workspaces.inspect(ws)).state == "running"
            listing = await ps(docker, client, ws)
            assert "sleep 300" in listing, listing
            info = await docker._query_json(f"exec/{exec_id}/json")
            assert info["Running"] is True
            await client.dh.workspaces.remove(ws, force=True)
    finally:
        for w in (first, second):
            if w is not None:
                w.stop()


async def test_detach_through_the_raw_client_answers_with_the_exec_id_alone(client: Client, test_image: str) -> None:
    async with workspace(client, test_image) as ws:
        reply = await client.send("workspace.exec", {"workspace_id": ws, "command": ["sleep", "5"], "detach": True})
        assert reply["status"] == "succeeded", reply
        exec_id = reply["result"]["exec_id"]
        assert exec_id
        # No exit_code (it has not ended), the output fields empty (not kept).
        assert reply["result"] == {"exec_id": exec_id, "stdout": "", "stderr": "", "truncated": False}


async def test_binary_output_arrives_as_base64_and_text_as_text(client: Client, test_image: str) -> None:
    async with workspace(client, test_image) as ws:
        stream = client.dh.workspaces.exec_stream(ws, ["sh", "-c", r"printf 'h\303\251'; printf '\377\000' >&2"])
        chunks = [chunk async for chunk in stream]
        out = [c for c in chunks if c.stream == "stdout"]
        err = [c for c in chunks if c.stream == "stderr"]
        assert [c.data for c in out] == ["hé"]
        assert b"".join(c.content() for c in err) == b"\xff\x00"
        assert all(c.data is None and c.data_b64 for c in err)


async def test_a_streamed_exec_that_fails_raises_from_the_loop(client: Client) -> None:
    stream = client.dh.workspaces.exec_stream(client.ws_id("none"), ["true"])
    chunks = []
    with pytest.raises(CommandFailed) as failure:
        chunks.extend([chunk async for chunk in stream])
    assert failure.value.code == "not_found"
    assert chunks == []
    assert stream.raw is not None


async def test_a_plain_call_never_takes_a_chunk_for_the_result(client: Client, test_image: str) -> None:
    """``stream: true`` through the generic call: the chunks reach the reply queue first, and the
    one-reply wait must skip them (message_type ``dockhand.exec.output``) for the result."""
    async with workspace(client, test_image) as ws:
        payload = {"workspace_id": ws, "command": ["sh", "-c", "echo one; sleep 0.2; echo two"], "stream": True}
        out = await client.dh.call("workspace.exec", payload)
        assert isinstance(out, ExecOutput)
        assert (out.exit_code, out.stdout, out.truncated) == (0, "", False)
