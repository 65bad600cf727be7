"""dockhand.client against a real worker, broker and daemon: every command type through the typed
calls, many concurrent calls over one client, routing errors at once, the raw mode."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator

import aio_pika
import aiodocker
import pytest

from dockhand.client import (
    Client,
    CommandFailed,
    CommandRejected,
    NoRoute,
    ReplyTimeout,
    Retry,
)
from dockhand.schemas.commands import WorkspaceCreate
from dockhand.schemas.results import ExecOutput, Workspace

from .conftest import AMQP_URL, REGISTRY_IMAGE, REGISTRY_PASSWORD, REGISTRY_USER, TEST_LABEL, WorkerProcess


@pytest.fixture
async def dh(worker: WorkerProcess) -> AsyncIterator[Client]:
    async with Client.connect(AMQP_URL, prefix=worker.prefix, host=worker.host_id) as client:
        yield client


def ws_id(session_id: str, name: str = "cl") -> str:
    return f"t{session_id}-{name}-{secrets.token_hex(2)}"


async def test_every_command_type_through_the_typed_client(
    dh: Client, worker: WorkerProcess, session_id: str, test_image: str, docker: aiodocker.Docker
) -> None:
    labels = {TEST_LABEL: session_id}
    ws = ws_id(session_id)
    network = f"dhtest-{session_id}-cl-{secrets.token_hex(2)}"

    info = await dh.host.info()
    assert info.host_id == worker.host_id
    assert info.docker_version
    image = await dh.images.inspect(test_image)
    assert image.image_id.startswith("sha256:")
    pulled = await dh.images.pull(
        REGISTRY_IMAGE, registry_auth={"username": REGISTRY_USER, "password": REGISTRY_PASSWORD}
    )
    assert pulled.image == REGISTRY_IMAGE
    assert pulled.image_id.startswith("sha256:")

    created = await dh.workspaces.create(
        workspace_id=ws, image=test_image, command=["sleep", "300"], labels=labels, start=False
    )
    assert isinstance(created, Workspace)
    assert created.created is True
    assert created.state == "created"
    # The same spec again: created=False; as a model payload too.
    again = await dh.workspaces.create(
        WorkspaceCreate(workspace_id=ws, image=test_image, command=["sleep", "300"], labels=labels, start=False)
    )
    assert again.created is False
    assert again.container_id == created.container_id
    assert (await dh.workspaces.start(ws)).state == "running"
    out = await dh.workspaces.exec(ws, ["sh", "-c", "echo out; echo err >&2; exit 3"])
    assert isinstance(out, ExecOutput)
    assert (out.exit_code, out.stdout, out.stderr) == (3, "out\n", "err\n")
    assert isinstance((await dh.workspaces.logs(ws, tail=10)).lines, list)
    assert (await dh.workspaces.inspect(ws)).workspace_id == ws
    listed = await dh.workspaces.list(state="running")
    assert ws in {w.workspace_id for w in listed.workspaces}

    ensured = await dh.networks.ensure(network, labels=labels)
    assert ensured.created is True
    attached = await dh.networks.connect(network, ws, aliases=["web"])
    assert attached.network == network
    container = await docker.containers.get(created.container_id)
    assert network in (await container.show())["NetworkSettings"]["Networks"]
    await dh.networks.disconnect(network, ws)
    assert (await dh.networks.remove(network)).removed is True

    services = await dh.discovery.list()
    assert isinstance(services.services, list)
    assert (await dh.workspaces.restart(ws, timeout_s=1)).state == "running"
    assert (await dh.workspaces.stop(ws, timeout_s=1)).state == "exited"
    removed = await dh.workspaces.remove(ws, force=True)
    assert removed.removed is True
    assert (await dh.workspaces.remove(ws)).removed is False


async def test_failed_results_raise_one_exception_family_and_raw_mode_returns_them(
    dh: Client, worker: WorkerProcess
) -> None:
    with pytest.raises(CommandFailed) as caught:
        await dh.workspaces.inspect("no-such-workspace-x")
    err = caught.value
    assert (err.code, err.status, err.retryable, err.host_id) == ("not_found", "failed", False, worker.host_id)
    assert err.command_id
    assert err.result is not None
    assert err.result.command_id == err.command_id

    result = await dh.request("workspace.inspect", {"workspace_id": "no-such-workspace-x"}, command_id="raw-1")
    assert result.status == "failed"
    assert result.error is not None
    assert result.error.code == "not_found"
    assert result.command_id == "raw-1"

    # A policy refusal by the worker is `rejected` (here: a privileged-style bind outside the roots).
    with pytest.raises(CommandRejected) as refused:
        await dh.workspaces.create(
            workspace_id="cl-forbidden",
            image="busybox:latest",
            mounts=[{"type": "bind", "source": "/etc", "target": "/x"}],
        )
    assert refused.value.code == "forbidden"
    assert refused.value.result is not None


async def test_invalid_payload_is_refused_before_sending(dh: Client) -> None:
    with pytest.raises(CommandRejected) as caught:
        await dh.workspaces.create(workspace_id="Bad Id", image="busybox:latest")
    assert caught.value.code == "invalid_command"
    assert caught.value.result is None
    assert "workspace_id" in str(caught.value)
    with pytest.raises(CommandRejected, match="unknown command type"):
        await dh.call("workspace.teleport", {})


async def test_unknown_host_is_an_error_within_a_second(dh: Client) -> None:
    started = time.monotonic()
    with pytest.raises(NoRoute, match="no worker for host nobody-here"):
        await dh.host.info(host="nobody-here")
    assert time.monotonic() - started < 1.0


async def test_a_thousand_concurrent_calls_over_one_client_are_all_answered_and_matched(
    dh: Client, worker: WorkerProcess
) -> None:
    ids = [f"many-{secrets.token_hex(4)}-{i}" for i in range(1000)]
    results = await asyncio.gather(
        *(dh.request("workspace.inspect", {"workspace_id": f"nope-{i}"}, command_id=cid) for i, cid in enumerate(ids)),
    )
    assert [r.command_id for r in results] == ids  # each caller got its own answer
    assert {r.status for r in results} == {"failed"}
    assert all(r.error is not None and r.error.code == "not_found" for r in results)
    assert all(r.host_id == worker.host_id for r in results)


async def test_any_target_says_which_host_took_it(dh: Client, worker: WorkerProcess) -> None:
    info = await dh.host.info(host="any")
    assert info.host_id == worker.host_id


async def test_all_target_collects_one_result_per_host(dh: Client, worker: WorkerProcess) -> None:
    started = time.monotonic()
    results = await dh.request_all("host.info", expect=[worker.host_id], timeout=10)
    assert [r.host_id for r in results] == [worker.host_id]
    assert time.monotonic() - started < 5  # returned when the expected host answered, not at the timeout


async def test_reply_timeout_without_retry_names_the_command(worker: WorkerProcess, session_id: str) -> None:
    # A queue bound for a host that has no worker: the command is routed, and nobody answers.
    ghost = f"t{session_id}-ghost"
    connection = await aio_pika.connect(AMQP_URL)
    async with connection:
        channel = await connection.channel()
        queue = await channel.declare_queue(exclusive=True, auto_delete=True)
        await queue.bind(f"{worker.prefix}.commands", routing_key=f"{ghost}.#")
        async with Client.connect(AMQP_URL, prefix=worker.prefix, host=ghost, retry=Retry.off(0.5)) as dh:
            started = time.monotonic()
            with pytest.raises(ReplyTimeout) as caught:
                await dh.host.info(timeout=0.5)
            assert time.monotonic() - started < 3
            assert caught.value.command_type == "host.info"
        # With retries: each attempt is the same command (one command id), sent again.
        async with Client.connect(
            AMQP_URL, prefix=worker.prefix, host=ghost, retry=Retry(attempts=3, reply_timeout_s=0.3, backoff_s=0.01)
        ) as dh:
            with pytest.raises(ReplyTimeout):
                await dh.host.info(command_id="same-id-1", timeout=5)
        sent = []
        while (message := await queue.get(fail=False, no_ack=True)) is not None:
            sent.append(message.message_id)
        assert sent[-3:] == ["same-id-1"] * 3
