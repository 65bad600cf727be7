"""Issue 10, the dispatcher's rows: each offending message is published raw, as an untrusted
sender would, through the real broker to a real worker (and Docker where it matters)."""

from __future__ import annotations

import asyncio
import json
import socket
import time
import uuid
from typing import Any

import aiodocker
import pytest

from dockhand.worker import exec_kill
from dockhand.worker.settings import Settings

from .conftest import REGISTRY_PASSWORD, TEST_LABEL, Client, WorkerFactory, WorkerProcess, connect_client


def _key(client: Client, command_type: str) -> str:
    return f"{client.worker.host_id}.{command_type}"


# --- a command id is bound to its type and payload -----------------------------------------


async def test_reused_command_id_with_another_type_or_payload_is_a_conflict(client: Client) -> None:
    command_id = f"squat-{uuid.uuid4().hex[:8]}"
    original = await client.send("host.info", command_id=command_id)
    assert original["status"] == "succeeded"

    other_type = await client.send("workspace.list", {"project": "p1"}, command_id=command_id)
    assert other_type["status"] == "failed"
    assert other_type["error"]["code"] == "conflict"
    assert other_type["error"]["retryable"] is False
    assert other_type["result"] is None  # the other command's result is not handed over
    other_payload = await client.send("discovery.list", {}, command_id=command_id)
    assert other_payload["error"]["code"] == "conflict"

    # The true repeat is still answered verbatim: the conflicts did not overwrite it.
    assert await client.send("host.info", command_id=command_id) == original


async def test_reused_exec_id_runs_nothing(client: Client, docker: aiodocker.Docker, test_image: str) -> None:
    ws = client.ws_id("squat")
    created = await client.send(
        "workspace.create", {"workspace_id": ws, "image": test_image, "labels": client.labels()}
    )
    assert created["status"] == "succeeded", created
    try:
        command_id = f"squat-exec-{uuid.uuid4().hex[:8]}"
        first = await client.send(
            "workspace.exec", {"workspace_id": ws, "command": ["echo", "a"]}, command_id=command_id
        )
        assert first["result"]["stdout"] == "a\n"
        squat = await client.send(
            "workspace.exec",
            {"workspace_id": ws, "command": ["sh", "-c", "touch /tmp/ran"]},
            command_id=command_id,
        )
        assert squat["error"]["code"] == "conflict"
        check = await client.send("workspace.exec", {"workspace_id": ws, "command": ["ls", "/tmp"]})
        assert "ran" not in check["result"]["stdout"]
    finally:
        await client.send("workspace.remove", {"workspace_id": ws, "force": True})


# --- naive datetimes ----------------------------------------------------------------------


async def test_naive_expires_at_is_rejected_at_once(client: Client) -> None:
    command_id = f"naive-{uuid.uuid4().hex[:8]}"
    raw = json.dumps({"command_id": command_id, "type": "host.info", "expires_at": "2030-01-01T00:00:00"}).encode()
    message_id = uuid.uuid4().hex
    began = time.monotonic()
    reply = await client.reply(await client.publish(raw, _key(client, "host.info"), message_id=message_id), timeout=10)
    assert time.monotonic() - began < 5  # not requeued to the delivery limit
    assert reply["status"] == "rejected"
    assert reply["error"]["code"] == "invalid_command"
    assert "expires_at" in reply["error"]["message"]
    assert "timezone" in reply["error"]["message"]
    assert json.loads((await client.dead_letter(message_id)).body)["command_id"] == command_id
    assert "Traceback" not in client.worker.log()


async def test_naive_logs_since_is_rejected(client: Client) -> None:
    reply = await client.send("workspace.logs", {"workspace_id": "ws-naive", "since": "2030-01-01T00:00:00"})
    assert reply["status"] == "rejected"
    assert "since" in reply["error"]["message"]
    assert "timezone" in reply["error"]["message"]


# --- control characters in command_id -----------------------------------------------------


async def test_control_characters_in_command_id_forge_no_log_line(client: Client) -> None:
    marker = uuid.uuid4().hex[:8]
    forged = f"c-{marker}\n2026-12-01 00:00:00,000 ERROR dockhand.commands: forged-{marker}"
    raw = json.dumps({"command_id": forged, "type": "host.info"}).encode()
    reply = await client.reply(await client.publish(raw, _key(client, "host.info"), message_id=f"m\n{marker}"))
    assert reply["status"] == "rejected"
    assert reply["error"]["code"] == "invalid_command"
    assert "printable" in reply["error"]["message"]
    assert reply["command_id"] == forged.replace("\n", "\\n")  # escaped, never a line break
    await asyncio.sleep(0.3)
    lines = client.worker.log().splitlines()
    assert not any(line.startswith("2026-12-01 00:00:00,000") for line in lines)
    assert any(f"forged-{marker}" in line and "\\n2026-12-01" in line for line in lines)


# --- oversize bodies and overlong ids are answered ---------------------------------------


async def test_oversize_body_with_a_readable_id_is_answered(client: Client) -> None:
    command_id = f"big-{uuid.uuid4().hex[:8]}"
    # Past the worker's limit, which by default is derived from DOCKHAND_MAX_FILE_BYTES (the session
    # worker sets neither): the default settings' limit, plus some.
    limit = Settings.model_construct().body_limit
    raw = json.dumps({"command_id": command_id, "type": "host.info", "pad": "x" * (limit + 1024)}).encode()
    message_id = uuid.uuid4().hex
    reply = await client.reply(await client.publish(raw, _key(client, "host.info"), message_id=message_id), timeout=15)
    assert reply["status"] == "rejected"
    assert reply["command_id"] == command_id
    assert "exceeds" in reply["error"]["message"]
    assert len((await client.dead_letter(message_id)).body) == len(raw)  # dead-lettered untouched


async def test_overlong_command_id_is_answered_by_correlation_id(client: Client) -> None:
    long_id = "L" * 200
    raw = json.dumps({"command_id": long_id, "type": "host.info"}).encode()
    reply = await client.reply(await client.publish(raw, _key(client, "host.info")), timeout=10)
    assert reply["status"] == "rejected"
    assert reply["command_id"] == "L" * 125 + "..."
    assert "128" in reply["error"]["message"]


# --- a timed-out exec is killed -----------------------------------------------------------


async def test_timed_out_exec_that_ignores_sigterm_is_killed(
    client: Client, docker: aiodocker.Docker, test_image: str
) -> None:
    ws = client.ws_id("kill")
    created = await client.send(
        "workspace.create", {"workspace_id": ws, "image": test_image, "labels": client.labels()}
    )
    assert created["status"] == "succeeded", created
    container = docker.containers.container(created["result"]["container_id"])
    try:
        # A process that ignores SIGTERM, with a child in its session and one that left it.
        script = "trap '' TERM; sleep 7771 & setsid sleep 7772 & sleep 7773"
        began = time.monotonic()
        reply = await client.send(
            "workspace.exec", {"workspace_id": ws, "command": ["sh", "-c", script], "timeout_s": 1}
        )
        assert reply["status"] == "failed"
        assert reply["error"]["code"] == "timeout"
        assert "killed" in reply["error"]["message"]
        assert "could not" not in reply["error"]["message"]
        assert time.monotonic() - began < 15
        top = await container.top(ps_args="-o pid,args")
        left = [" ".join(p) for p in top["Processes"] if any(f"sleep 777{i}" in " ".join(p) for i in (1, 2, 3))]
        assert left == [], left
        # The container itself is untouched.
        assert (await client.send("workspace.exec", {"workspace_id": ws, "command": ["true"]}))["status"] == "succeeded"
    finally:
        await client.send("workspace.remove", {"workspace_id": ws, "force": True})


# --- long execs do not hold the command slots ----------------------------------------------


async def test_long_execs_do_not_starve_other_commands(
    workers: WorkerFactory, session_id: str, test_image: str
) -> None:
    worker = workers.start("pool", DOCKHAND_MAX_CONCURRENCY="2", DOCKHAND_MAX_CONCURRENT_EXECS="2")
    try:
        async with connect_client(worker, session_id) as client:
            spaces = [client.ws_id(f"p{i}") for i in range(2)]
            for ws in spaces:
                created = await client.send(
                    "workspace.create", {"workspace_id": ws, "image": test_image, "labels": client.labels()}
                )
                assert created["status"] == "succeeded", created
            try:
                long_exec = ["sh", "-c", "sleep 30"]
                # Two fill the exec pool; four more (two behind them in their lanes) are one too many.
                correlations = [
                    await client.publish(
                        client.command("workspace.exec", {"workspace_id": ws, "command": long_exec, "timeout_s": 60}),
                        f"{worker.host_id}.workspace.exec",
                    )
                    for ws in spaces * 3
                ]
                began = time.monotonic()
                excess = [await client.reply(c, timeout=5) for c in correlations[2:]]
                assert [r["error"]["code"] for r in excess] == ["capacity"] * 4
                assert all(r["error"]["retryable"] for r in excess)
                assert all(r["status"] == "failed" for r in excess)
                info = await client.send("host.info", timeout=3)
                assert info["status"] == "succeeded"
                assert time.monotonic() - began < 5
                assert all(client.replies[c].empty() for c in correlations[:2])  # still running
            finally:
                for ws in spaces:
                    await client.send("workspace.remove", {"workspace_id": ws, "force": True})
    finally:
        worker.stop()


# --- no registry password in the dead-letter queue ----------------------------------------


def _create_with_auth(client: Client, command_id: str, **payload: Any) -> bytes:
    body = {
        "command_id": command_id,
        "type": "workspace.create",
        "payload": {
            "workspace_id": client.ws_id("dl"),
            "image": "127.0.0.1:5055/dockhand-test/busybox:latest",
            "registry_auth": {"username": "dockhand", "password": REGISTRY_PASSWORD},
            **payload,
        },
    }
    return json.dumps(body).encode()


async def test_rejected_creates_are_dead_lettered_without_the_password(client: Client) -> None:
    password = REGISTRY_PASSWORD.encode()
    cases = {
        # valid, but the policy forbids it: rejected by the worker after parsing
        "policy": lambda cid: _create_with_auth(client, cid, labels={"dockhand.managed": "false"}),
        # a schema violation
        "schema": lambda cid: _create_with_auth(client, cid, privileged=True),
        # not JSON at all (cut short), but the password is in it
        "unparseable": lambda cid: _create_with_auth(client, cid)[:-3],
    }
    for name, make in cases.items():
        command_id = f"dl-{name}-{uuid.uuid4().hex[:8]}"
        raw = make(command_id)
        assert password in raw
        message_id = uuid.uuid4().hex
        correlation = await client.publish(
            raw, _key(client, "workspace.create"), message_id=message_id, headers={"x-sender-note": name}
        )
        reply = await client.reply(correlation)
        assert reply["status"] == "rejected", (name, reply)
        dead = await client.dead_letter(message_id)
        assert password not in dead.body, name
        assert command_id.encode() in dead.body, name
        assert dead.routing_key == _key(client, "workspace.create")
        assert dead.headers["x-sender-note"] == name
        assert dead.headers["x-dockhand-redacted"], name
    assert REGISTRY_PASSWORD not in client.worker.log()


# --- a taken HTTP port ---------------------------------------------------------------------


def test_taken_http_port_is_one_line_naming_the_setting(workers: WorkerFactory) -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        worker: WorkerProcess = workers.start("port", wait=False, DOCKHAND_HTTP_PORT=str(port))
        code = worker.proc.wait(30)
    output = worker.log().strip()
    assert code != 0
    assert "Traceback" not in output
    assert "DOCKHAND_HTTP_PORT" in output
    assert f"127.0.0.1:{port}" in output
    assert len(output.splitlines()) == 1, output


@pytest.mark.parametrize("user", ["", "65534:65534"])
async def test_in_container_kill_fallback_ends_the_marked_processes(
    docker: aiodocker.Docker, session_id: str, test_image: str, user: str
) -> None:
    """The path for a worker that does not share the daemon's PID namespace, against the real
    daemon: a second exec kills every process carrying the exec's marker, children included."""
    container = await docker.containers.run(
        {"Image": test_image, "Cmd": ["sleep", "300"], "Labels": {TEST_LABEL: session_id}}
    )
    try:
        token = exec_kill.new_token()
        execution = await container.exec(
            ["sh", "-c", "trap '' TERM; sleep 8881 & setsid sleep 8882 & sleep 8883"],
            environment={exec_kill.MARKER: token},
            user=user,
        )
        await execution.start(detach=True)
        await asyncio.sleep(0.5)
        assert (await execution.inspect())["Running"]
        assert await exec_kill.kill_inside(container, token, user)
        top = await container.top(ps_args="-o pid,args")
        assert not [p for p in top["Processes"] if "sleep 888" in " ".join(p)]
        assert "sleep 300" in json.dumps(top["Processes"])  # the container's own process is left alone
        await asyncio.sleep(0.5)
        assert not (await execution.inspect())["Running"]
    finally:
        await container.delete(force=True)


async def test_exec_cut_short_by_the_drain_is_killed(
    workers: WorkerFactory, session_id: str, docker: aiodocker.Docker, test_image: str
) -> None:
    """SIGTERM with a grace shorter than a running exec: the drain cancels it, and its process
    does not stay behind to run twice (the command is redelivered to the next worker)."""
    worker = workers.start("drainkill", DOCKHAND_SHUTDOWN_GRACE_S="1")
    async with connect_client(worker, session_id) as client:
        ws = client.ws_id("dk")
        created = await client.send(
            "workspace.create", {"workspace_id": ws, "image": test_image, "labels": client.labels()}
        )
        container = docker.containers.container(created["result"]["container_id"])
        try:
            await client.publish(
                client.command("workspace.exec", {"workspace_id": ws, "command": ["sleep", "9991"], "timeout_s": 600}),
                f"{worker.host_id}.workspace.exec",
            )
            deadline = time.monotonic() + 15
            while not any("sleep 9991" in " ".join(p) for p in (await container.top())["Processes"]):
                assert time.monotonic() < deadline, "the exec never started"
                await asyncio.sleep(0.1)
            assert await asyncio.to_thread(worker.stop) == 0, worker.log()[-2000:]
            top = await container.top(ps_args="-o pid,args")
            assert not [p for p in top["Processes"] if "sleep 9991" in " ".join(p)]
        finally:
            await container.delete(force=True)
