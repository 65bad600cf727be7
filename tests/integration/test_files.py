"""workspace.put_files / workspace.get_file on a real worker, broker and dockerd (issue 13):
a 3 MiB binary round-trips byte-identical with its mode, parents are made, stopped and read-only
workspaces, missing workspaces and paths, the size limit, truncation; the worker answers after."""

from __future__ import annotations

import base64
import hashlib
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from dockhand.client import Client as DockhandClient
from dockhand.client import CommandFailed

from .conftest import AMQP_URL, Client, WorkerProcess

MiB = 1024 * 1024


@pytest.fixture
async def dh(worker: WorkerProcess) -> AsyncIterator[DockhandClient]:
    async with DockhandClient.connect(AMQP_URL, prefix=worker.prefix, host=worker.host_id, timeout=120) as client:
        yield client


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


async def _workspace(client: Client, test_image: str, name: str, **extra: Any) -> str:
    ws = client.ws_id(name)
    payload = {"workspace_id": ws, "image": test_image, "command": ["sleep", "300"], "labels": client.labels()}
    reply = await client.send("workspace.create", {**payload, **extra})
    assert reply["status"] == "succeeded", reply
    return ws


async def _remove(client: Client, ws: str) -> None:
    reply = await client.send("workspace.remove", {"workspace_id": ws, "force": True, "remove_volumes": True})
    assert reply["status"] == "succeeded", reply


async def _exec(client: Client, ws: str, *argv: str) -> str:
    reply = await client.send("workspace.exec", {"workspace_id": ws, "command": list(argv)})
    assert reply["status"] == "succeeded", reply
    assert reply["result"]["exit_code"] == 0, reply
    stdout: str = reply["result"]["stdout"]
    return stdout


async def _worker_answers(client: Client) -> None:
    reply = await client.send("host.info", {})
    assert reply["status"] == "succeeded", reply


async def test_a_3_mib_binary_round_trips_byte_identical(client: Client, test_image: str) -> None:
    ws = await _workspace(client, test_image, "files")
    try:
        data = os.urandom(3 * MiB)
        digest = hashlib.sha256(data).hexdigest()
        put = await client.send(
            "workspace.put_files",
            {
                "workspace_id": ws,
                "files": [
                    {"path": "/srv/deep/er/blob.bin", "content": _b64(data), "mode": 0o750},
                    {"path": "/tmp/note.txt", "content": _b64(b"hi\n")},
                ],
            },
        )
        assert put["status"] == "succeeded", put
        assert put["result"] == {
            "workspace_id": ws,
            "paths": ["/srv/deep/er/blob.bin", "/tmp/note.txt"],
            "bytes": 3 * MiB + 3,
        }
        got = await client.send(
            "workspace.get_file", {"workspace_id": ws, "path": "/srv/deep/er/blob.bin", "max_bytes": 4 * MiB}
        )
        assert got["status"] == "succeeded", {**got, "result": "..."}
        result = got["result"]
        assert hashlib.sha256(base64.b64decode(result["content"])).hexdigest() == digest
        assert (result["path"], result["size"], result["mode"], result["truncated"]) == (
            "/srv/deep/er/blob.bin",
            3 * MiB,
            0o750,
            False,
        )
        # What the container itself sees: the same bytes, the mode, parents made, /tmp untouched.
        assert (await _exec(client, ws, "sha256sum", "/srv/deep/er/blob.bin")).split()[0] == digest
        assert (await _exec(client, ws, "stat", "-c", "%a", "/srv/deep/er/blob.bin", "/srv/deep", "/tmp")).split() == [
            "750",
            "755",
            "1777",
        ]
        assert (await _exec(client, ws, "stat", "-c", "%a", "/tmp/note.txt")).strip() == "644"
        assert (await _exec(client, ws, "cat", "/tmp/note.txt")) == "hi\n"
    finally:
        await _remove(client, ws)


async def test_truncated_reads_and_what_get_file_refuses(client: Client, test_image: str) -> None:
    ws = await _workspace(client, test_image, "get")
    try:
        await _exec(client, ws, "sh", "-c", "head -c 5000 /dev/zero | tr '\\0' x > /tmp/x; chmod 600 /tmp/x")
        cut = await client.send("workspace.get_file", {"workspace_id": ws, "path": "/tmp/x", "max_bytes": 10})
        assert cut["status"] == "succeeded", cut
        assert cut["result"] == {
            "path": "/tmp/x",
            "content": _b64(b"x" * 10),
            "size": 5000,
            "mode": 0o600,
            "truncated": True,
        }
        # A symlink is read through (busybox's /bin/sh -> /bin/busybox).
        link = await client.send("workspace.get_file", {"workspace_id": ws, "path": "/bin/sh", "max_bytes": 4})
        assert link["status"] == "succeeded", link
        assert base64.b64decode(link["result"]["content"]) == b"\x7fELF"
        directory = await client.send("workspace.get_file", {"workspace_id": ws, "path": "/etc"})
        assert directory["status"] == "failed", directory
        assert directory["error"]["code"] == "invalid_command"
        assert "directory" in directory["error"]["message"]
        missing = await client.send("workspace.get_file", {"workspace_id": ws, "path": "/no/such/file"})
        assert missing["status"] == "failed", missing
        assert missing["error"]["code"] == "not_found"
        assert "/no/such/file" in missing["error"]["message"]
        relative = await client.send("workspace.get_file", {"workspace_id": ws, "path": "etc/passwd"})
        assert (relative["status"], relative["error"]["code"]) == ("rejected", "invalid_command")
        await _worker_answers(client)
    finally:
        await _remove(client, ws)


async def test_put_into_a_stopped_workspace(client: Client, test_image: str) -> None:
    ws = await _workspace(client, test_image, "stopped", start=False)
    try:
        put = await client.send(
            "workspace.put_files",
            {
                "workspace_id": ws,
                "files": [{"path": "/opt/app/run.sh", "content": _b64(b"#!/bin/sh\necho ok\n"), "mode": 0o755}],
            },
        )
        assert put["status"] == "succeeded", put
        got = await client.send("workspace.get_file", {"workspace_id": ws, "path": "/opt/app/run.sh"})
        assert got["status"] == "succeeded", got
        assert (base64.b64decode(got["result"]["content"]), got["result"]["mode"]) == (b"#!/bin/sh\necho ok\n", 0o755)
        assert (await client.send("workspace.start", {"workspace_id": ws}))["status"] == "succeeded"
        assert await _exec(client, ws, "/opt/app/run.sh") == "ok\n"
    finally:
        await _remove(client, ws)


async def test_read_only_workspace_is_forbidden_but_its_volume_is_not(client: Client, test_image: str) -> None:
    volume = client.ws_id("rovol")  # made by the create (managed labels), removed with the workspace
    ws = await _workspace(
        client,
        test_image,
        "ro",
        read_only=True,
        mounts=[{"source": volume, "target": "/data"}, {"type": "tmpfs", "target": "/scratch"}],
    )
    try:
        refused = await client.send(
            "workspace.put_files", {"workspace_id": ws, "files": [{"path": "/etc/x", "content": _b64(b"x")}]}
        )
        assert refused["status"] == "failed", refused
        assert refused["error"]["code"] == "forbidden"
        assert "read-only" in refused["error"]["message"]
        into_volume = await client.send(
            "workspace.put_files", {"workspace_id": ws, "files": [{"path": "/data/a/b", "content": _b64(b"vol")}]}
        )
        assert into_volume["status"] == "succeeded", into_volume
        assert await _exec(client, ws, "cat", "/data/a/b") == "vol"
        # Docker would accept a file on a tmpfs mount and hide it under the tmpfs: refused instead.
        for command_type, payload in [
            ("workspace.put_files", {"files": [{"path": "/scratch/x", "content": _b64(b"t")}]}),
            ("workspace.get_file", {"path": "/scratch/x"}),
        ]:
            tmpfs = await client.send(command_type, {"workspace_id": ws, **payload})
            assert (tmpfs["status"], tmpfs["error"]["code"]) == ("failed", "invalid_command"), tmpfs
            assert "tmpfs" in tmpfs["error"]["message"]
        await _worker_answers(client)
    finally:
        await _remove(client, ws)


async def test_missing_workspace_bad_paths_and_the_size_limit(client: Client, test_image: str) -> None:
    missing = await client.send(
        "workspace.put_files",
        {"workspace_id": client.ws_id("nowhere"), "files": [{"path": "/tmp/x", "content": _b64(b"x")}]},
    )
    assert (missing["status"], missing["error"]["code"]) == ("failed", "not_found"), missing
    ws = await _workspace(client, test_image, "limit")
    try:
        for path in ["tmp/x", "/tmp/../etc/x", "/tmp/a\x00b", "/"]:
            bad = await client.send(
                "workspace.put_files", {"workspace_id": ws, "files": [{"path": path, "content": _b64(b"x")}]}
            )
            assert (bad["status"], bad["error"]["code"]) == ("rejected", "invalid_command"), (path, bad)
        # Just over DOCKHAND_MAX_FILE_BYTES (8 MiB): the body still fits the derived body limit.
        over = await client.send(
            "workspace.put_files",
            {"workspace_id": ws, "files": [{"path": "/tmp/big", "content": _b64(b"\x00" * (8 * MiB + 1))}]},
        )
        assert (over["status"], over["error"]["code"]) == ("rejected", "invalid_command"), over
        assert "DOCKHAND_MAX_FILE_BYTES" in over["error"]["message"]
        # Through a file: Docker's 500 is the request's fault, not an internal error.
        await _exec(client, ws, "touch", "/tmp/plain")
        through = await client.send(
            "workspace.put_files", {"workspace_id": ws, "files": [{"path": "/tmp/plain/x", "content": _b64(b"x")}]}
        )
        assert (through["status"], through["error"]["code"]) == ("failed", "invalid_command"), through
        over_dir = await client.send(
            "workspace.put_files", {"workspace_id": ws, "files": [{"path": "/tmp", "content": _b64(b"x")}]}
        )
        assert (over_dir["status"], over_dir["error"]["code"]) == ("failed", "invalid_command"), over_dir
        assert "1777" in await _exec(client, ws, "stat", "-c", "%a", "/tmp")  # the directory is still there
        await _worker_answers(client)
    finally:
        await _remove(client, ws)


async def test_typed_client_put_files_and_get_file(
    client: Client, dh: DockhandClient, test_image: str, tmp_path: Path
) -> None:
    ws = await _workspace(client, test_image, "typed")
    try:
        local = tmp_path / "tool.sh"
        local.write_bytes(b"#!/bin/sh\necho tool\n")
        local.chmod(0o700)
        written = await dh.workspaces.put_files(ws, {"/usr/local/bin/tool": local, "/etc/app.conf": b"k=v\n"})
        assert (written.paths, written.bytes) == (["/usr/local/bin/tool", "/etc/app.conf"], 20 + 4)
        tool = await dh.workspaces.get_file(ws, "/usr/local/bin/tool")
        assert (tool.data, tool.mode, tool.size, tool.truncated) == (local.read_bytes(), 0o700, 20, False)
        conf = await dh.workspaces.get_file(ws, "/etc/app.conf", max_bytes=1)
        assert (conf.data, conf.mode, conf.truncated) == (b"k", 0o644, True)
        await dh.workspaces.put_files(ws, [("/etc/app.conf", b"x")], mode=0o600)
        assert (await dh.workspaces.get_file(ws, "/etc/app.conf")).mode == 0o600
        with pytest.raises(CommandFailed) as info:
            await dh.workspaces.get_file(ws, "/nope")
        assert info.value.code == "not_found"
    finally:
        await _remove(client, ws)
