"""``dockhand send workspace.exec --stream`` as a person runs it: output printed live, then the result."""

from __future__ import annotations

import asyncio
import json
import time

from .conftest import REPO, Client, WorkerProcess
from .test_cli import cli_args, create_payload, dockhand


async def test_send_stream_prints_the_output_live_then_the_result(
    client: Client, worker: WorkerProcess, test_image: str
) -> None:
    ws = client.ws_id("clis")
    created = await dockhand(
        worker, "send", "workspace.create", "-H", worker.host_id, "-p", create_payload(client, test_image, ws)
    )
    assert created.code == 0, created.stderr
    try:
        script = "for i in $(seq 1 10); do echo out$i; echo err$i >&2; sleep 0.2; done; exit 3"
        payload = json.dumps({"workspace_id": ws, "command": ["sh", "-c", script]})
        proc = await asyncio.create_subprocess_exec(
            *cli_args(worker, "send", "workspace.exec", "--stream", "-H", worker.host_id, "-p", payload),
            cwd=REPO,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        assert proc.stdout is not None
        assert proc.stderr is not None
        first = await asyncio.wait_for(proc.stdout.readline(), 30)
        first_at = time.monotonic()
        assert first == b"out1\n"
        rest, err = await asyncio.wait_for(asyncio.gather(proc.stdout.read(), proc.stderr.read()), 60)
        await proc.wait()
        ended_at = time.monotonic()
        # Live: the first line came while the command still had ~2 s to run.
        assert ended_at - first_at > 1.0
        out = (first + rest).decode()
        lines = out.splitlines()
        assert lines[:10] == [f"out{i}" for i in range(1, 11)]
        assert "exit code 3" in out[out.index("out10") :]  # the summary, after the output
        assert "succeeded" in out
        assert err.decode().splitlines() == [f"err{i}" for i in range(1, 11)]
        assert proc.returncode == 0  # the command succeeded (its process exited 3)
    finally:
        removed = await dockhand(
            worker,
            "send",
            "workspace.remove",
            "-H",
            worker.host_id,
            "-p",
            json.dumps({"workspace_id": ws, "force": True}),
        )
        assert removed.code == 0, removed.stderr


async def test_send_stream_is_only_for_workspace_exec(worker: WorkerProcess) -> None:
    done = await dockhand(worker, "send", "host.info", "--stream", "-H", worker.host_id)
    assert done.code == 2
    assert "--stream works only with workspace.exec" in done.stderr
