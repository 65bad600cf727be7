"""The ``dockhand`` CLI as a person runs it: a real subprocess against the session's worker."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import signal
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from dockhand.amqp import mask_url

from .conftest import AMQP_URL, REPO, Client, WorkerProcess, _delete_topology


@dataclass
class Done:
    code: int
    stdout: str
    stderr: str


def cli_args(worker: WorkerProcess, *args: str, url: str = AMQP_URL, prefix: str | None = None) -> list[str]:
    return [
        sys.executable,
        "-m",
        "dockhand.cli",
        *args,
        "--amqp-url",
        url,
        "--exchange-prefix",
        prefix or worker.prefix,
    ]


async def dockhand(
    worker: WorkerProcess, *args: str, timeout: float = 60, url: str = AMQP_URL, prefix: str | None = None
) -> Done:
    """Run ``dockhand ARGS`` to completion (async, so the client fixture's consumers keep running)."""
    proc = await asyncio.create_subprocess_exec(
        *cli_args(worker, *args, url=url, prefix=prefix),
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return Done(proc.returncode, out.decode(), err.decode())


@contextlib.asynccontextmanager
async def tail(worker: WorkerProcess, *args: str) -> AsyncIterator[asyncio.subprocess.Process]:
    """``dockhand events ARGS`` in the background, yielded once its queue is bound."""
    proc = await asyncio.create_subprocess_exec(
        *cli_args(worker, "events", *args), cwd=REPO, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    try:
        assert proc.stderr is not None
        line = await asyncio.wait_for(proc.stderr.readline(), 30)
        assert line.startswith(b"dockhand: listening on "), line
        yield proc
    finally:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()


def create_payload(client: Client, test_image: str, ws: str, **extra: Any) -> str:
    return json.dumps({"workspace_id": ws, "image": test_image, "labels": client.labels(), **extra})


async def test_send_host_info(worker: WorkerProcess) -> None:
    done = await dockhand(worker, "send", "host.info", "--host", worker.host_id)
    assert done.code == 0, done
    header, info = done.stdout.splitlines()
    assert re.fullmatch(rf"{worker.host_id} host\.info succeeded in \d+ ms", header), header
    assert re.fullmatch(r"  docker \S+ \(API [0-9.]+\), .+, \d+ CPUs, [0-9.]+ GiB, \d+ containers", info), info
    assert done.stderr == ""


async def test_send_to_all_hosts(worker: WorkerProcess) -> None:
    # Waits out --timeout, since it cannot know how many hosts will answer.
    done = await dockhand(worker, "send", "host.info", "--host", "all", "--timeout", "2")
    assert done.code == 0, done
    assert f"{worker.host_id} host.info succeeded in " in done.stdout
    assert re.search(r"^\d+ hosts? replied: \d+ succeeded$", done.stdout, re.MULTILINE), done.stdout


async def test_create_then_remove_with_json(client: Client, worker: WorkerProcess, test_image: str) -> None:
    ws = client.ws_id("cli")
    payload = create_payload(client, test_image, ws)
    done = await dockhand(worker, "send", "workspace.create", "--host", worker.host_id, "-p", payload, "--json")
    assert done.code == 0, done
    created = json.loads(done.stdout)
    assert created["status"] == "succeeded"
    assert created["host_id"] == worker.host_id
    assert created["result"]["workspace_id"] == ws
    assert created["result"]["created"] is True
    assert created["result"]["state"] == "running"

    remove = json.dumps({"workspace_id": ws, "force": True})
    done = await dockhand(worker, "send", "workspace.remove", "--host", worker.host_id, "-p", remove, "--json")
    assert done.code == 0, done
    removed = json.loads(done.stdout)
    assert (removed["status"], removed["result"]) == ("succeeded", {"workspace_id": ws, "removed": True})

    reply = await client.send("workspace.inspect", {"workspace_id": ws})
    assert reply["error"]["code"] == "not_found"


async def test_not_found_is_exit_1(worker: WorkerProcess, client: Client) -> None:
    ws = client.ws_id("missing")
    done = await dockhand(
        worker, "send", "workspace.stop", "--host", worker.host_id, "-p", json.dumps({"workspace_id": ws})
    )
    assert done.code == 1, done
    assert done.stdout.splitlines()[-1] == (
        f"failed: not_found: workspace {ws} not found on {worker.host_id} (retryable: no)"
    )


async def test_invalid_payload_is_not_sent(worker: WorkerProcess, client: Client) -> None:
    done = await dockhand(worker, "send", "workspace.create", "--host", worker.host_id, "-p", '{"workspace_id": "x"}')
    assert done.code == 2
    assert done.stderr == "dockhand: invalid workspace.create command: payload.image: Field required\n"
    assert client.results == []


async def test_unknown_host_fails_fast(worker: WorkerProcess) -> None:
    done = await dockhand(worker, "send", "host.info", "--host", "no-such-host", "--timeout", "30")
    assert done.code == 69
    assert "routing key no-such-host.host.info reaches no queue" in done.stderr


async def test_events_tail_shows_a_workspace_start_and_stops_on_ctrl_c(
    client: Client, worker: WorkerProcess, test_image: str
) -> None:
    ws = client.ws_id("tail")
    domain = f"{ws}.example.test"
    async with tail(worker, "--host", worker.host_id, "--kind", "container", "--kind", "discovery") as proc:
        payload = create_payload(client, test_image, ws, discovery={"domain": domain, "port": 8080})
        try:
            reply = await client.send("workspace.create", json.loads(payload))
            assert reply["status"] == "succeeded", reply
            # Other containers on this daemon (other test sessions) may add lines of their own.
            head = rf"\d\d:\d\d:\d\d {worker.host_id}"
            wanted = {
                rf"{head} container\.start dockhand-{ws} \({ws}\)",
                rf"{head} discovery\.added {re.escape(domain)} → [0-9.]+:8080 \(dockhand-{ws}\)",
            }
            assert proc.stdout is not None
            seen: list[str] = []
            while wanted:
                line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode().rstrip("\n")
                assert line, f"events ended early: {seen}"
                seen.append(line)
                wanted = {pattern for pattern in wanted if not re.fullmatch(pattern, line)}
        finally:
            await client.send("workspace.remove", {"workspace_id": ws, "force": True})
        proc.send_signal(signal.SIGINT)
        _, err = await asyncio.wait_for(proc.communicate(), 15)
        assert proc.returncode == 0
        assert b"Traceback" not in err


async def test_events_count_exits_after_n_messages(client: Client, worker: WorkerProcess, test_image: str) -> None:
    ws = client.ws_id("count")
    async with tail(worker, "--host", worker.host_id, "--kind", "container", "--count", "2", "--json") as proc:
        try:
            reply = await client.send("workspace.create", json.loads(create_payload(client, test_image, ws)))
            assert reply["status"] == "succeeded", reply
            out, _ = await asyncio.wait_for(proc.communicate(), 30)
        finally:
            await client.send("workspace.remove", {"workspace_id": ws, "force": True})
        assert proc.returncode == 0
    events = [json.loads(line) for line in out.decode().splitlines()]
    assert len(events) == 2
    assert all(e["host_id"] == worker.host_id and e["type"].startswith("container.") for e in events)


async def test_events_timeout_without_count_reached(worker: WorkerProcess) -> None:
    done = await dockhand(worker, "events", "--host", "no-such-host", "--count", "1", "--timeout", "0.5")
    assert done.code == 124
    assert done.stderr.splitlines()[-1] == "dockhand: 0 of 1 messages within 0.5 s"


async def test_unknown_exchange_prefix_names_the_setting(worker: WorkerProcess) -> None:
    # No worker has run with this prefix: its commands exchange is looked up, not created.
    prefix = f"{worker.prefix}-none"
    done = await dockhand(worker, "send", "host.info", "--host", worker.host_id, prefix=prefix)
    assert done.code == 69, done
    assert done.stderr == (
        f"dockhand: exchange {prefix}.commands does not exist on {mask_url(AMQP_URL)}: no worker has run "
        "with this exchange prefix (check --exchange-prefix / DOCKHAND_EXCHANGE_PREFIX)\n"
    )


async def test_wrong_password_is_a_refused_login(worker: WorkerProcess) -> None:
    url = re.sub(r"^(amqps?://[^:/@]+:)[^@]*@", r"\1not-the-password@", AMQP_URL)
    assert url != AMQP_URL
    for args in (["send", "host.info", "--host", worker.host_id], ["events", "--timeout", "5"]):
        done = await dockhand(worker, *args, url=url)
        assert done.code == 69, done
        assert done.stderr.startswith(f"dockhand: RabbitMQ at {mask_url(url)} refused the login: "), done
        assert done.stderr.count("\n") == 1, done
        assert "not-the-password" not in done.stderr


async def test_events_may_start_before_the_worker(worker: WorkerProcess) -> None:
    # A prefix no worker has used yet: the tail declares the exchanges as the worker does.
    prefix = f"{worker.prefix}-early"
    try:
        done = await dockhand(worker, "events", "--count", "1", "--timeout", "1", prefix=prefix)
        assert done.code == 124, done
        assert done.stderr.splitlines() == [
            f"dockhand: listening on {prefix}.events *.container.#, {prefix}.events *.network.#, "
            f"{prefix}.events *.discovery.#, {prefix}.events *.workspace.#, {prefix}.health *.heartbeat "
            "(Ctrl-C to stop)",
            "dockhand: 0 of 1 messages within 1 s",
        ]
    finally:
        await _delete_topology(prefix, [])
