"""``dockhand cp`` as a person runs it (a real subprocess against the session's worker): into and
out of a workspace, standard input and output, modes kept, and the exit codes of its failures."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from .conftest import REPO, Client, WorkerProcess
from .test_cli import cli_args, dockhand


@dataclass
class Ran:
    code: int
    stdout: bytes
    stderr: str


async def cp(worker: WorkerProcess, *args: str, stdin: bytes | None = None, timeout: float = 60) -> Ran:
    """``dockhand cp ARGS --host <worker's host>``; binary standard input and output."""
    proc = await asyncio.create_subprocess_exec(
        *cli_args(worker, "cp", *args, "--host", worker.host_id),
        cwd=REPO,
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(stdin), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return Ran(proc.returncode, out, err.decode())


async def _workspace(client: Client, test_image: str) -> str:
    ws = client.ws_id("cp")
    reply = await client.send(
        "workspace.create",
        {"workspace_id": ws, "image": test_image, "command": ["sleep", "300"], "labels": client.labels()},
    )
    assert reply["status"] == "succeeded", reply
    return ws


async def test_cp_in_and_out(client: Client, worker: WorkerProcess, test_image: str, tmp_path: Path) -> None:
    ws = await _workspace(client, test_image)
    try:
        data = os.urandom(512 * 1024)
        local = tmp_path / "blob.bin"
        local.write_bytes(data)
        local.chmod(0o640)
        put = await cp(worker, str(local), f"{ws}:/srv/in/")  # a trailing / takes the file's name
        assert (put.code, put.stderr) == (0, ""), put
        got = await client.send(
            "workspace.get_file", {"workspace_id": ws, "path": "/srv/in/blob.bin", "max_bytes": 10**6}
        )
        assert got["status"] == "succeeded", got
        assert base64.b64decode(got["result"]["content"]) == data
        assert got["result"]["mode"] == 0o640

        back = tmp_path / "back"
        back.mkdir()
        out = await cp(worker, f"{ws}:/srv/in/blob.bin", str(back))  # into a directory: its own name
        assert (out.code, out.stderr) == (0, ""), out
        copied = back / "blob.bin"
        assert hashlib.sha256(copied.read_bytes()).hexdigest() == hashlib.sha256(data).hexdigest()
        assert copied.stat().st_mode & 0o777 == 0o640

        piped = await cp(worker, "-", f"{ws}:/etc/motd", stdin=b"hello\x00world\n")
        assert piped.code == 0, piped
        shown = await cp(worker, f"{ws}:/etc/motd", "-")
        assert (shown.code, shown.stdout) == (0, b"hello\x00world\n"), shown
        # `dockhand send workspace.get_file` summarises instead of printing the base64.
        payload = json.dumps({"workspace_id": ws, "path": "/etc/motd", "max_bytes": 5})
        sent = await dockhand(worker, "send", "workspace.get_file", "-p", payload, "--host", worker.host_id)
        assert sent.code == 0, sent
        assert "/etc/motd  12 bytes, first 5 bytes (truncated), mode 644" in sent.stdout, sent.stdout
    finally:
        await client.send("workspace.remove", {"workspace_id": ws, "force": True})


async def test_cp_failures_have_their_exit_codes(
    client: Client, worker: WorkerProcess, test_image: str, tmp_path: Path
) -> None:
    ws = await _workspace(client, test_image)
    try:
        missing = await cp(worker, f"{ws}:/no/such", str(tmp_path / "x"))
        assert missing.code == 1, missing
        assert "not_found" in missing.stderr
        assert not (tmp_path / "x").exists()
        directory = await cp(worker, f"{ws}:/etc", str(tmp_path / "x"))
        assert directory.code == 1, directory
        assert "directory" in directory.stderr
        nowhere = await cp(worker, "-", f"{client.ws_id('gone')}:/tmp/x", stdin=b"x")
        assert nowhere.code == 1, nowhere
        assert "not_found" in nowhere.stderr
        bad = await cp(worker, "-", f"{ws}:/tmp/../etc/x", stdin=b"x")  # refused locally: nothing sent
        assert bad.code == 2, bad
        neither = await cp(worker, str(tmp_path), str(tmp_path / "y"))
        assert neither.code == 2, neither
        assert "WORKSPACE:/PATH" in neither.stderr
    finally:
        await client.send("workspace.remove", {"workspace_id": ws, "force": True})
