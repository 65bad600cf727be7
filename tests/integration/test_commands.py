"""The command path's guarantees: bad input dead-lettered, idempotency, order, expiry, routing."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from typing import Any

import aiodocker
import pytest

from .conftest import Client


def _key(client: Client, command_type: str) -> str:
    return f"{client.worker.host_id}.{command_type}"


BAD_INPUT = [
    # (name, body, routing type, expected code or None when no command_id is readable)
    ("malformed-json", b'{"type": "host.info", "command_id": "x", ', "host.info", None),
    ("not-an-object", b'["host.info"]', "host.info", None),
    ("random-bytes", bytes(range(256)), "host.info", None),
    (
        "schema",
        {"type": "workspace.start", "payload": {"workspace_id": "UPPER/case"}},
        "workspace.start",
        "invalid_command",
    ),
    (
        "extra-field",
        {"type": "workspace.start", "payload": {"workspace_id": "ok", "privileged": True}},
        "workspace.start",
        "invalid_command",
    ),
    ("unknown-type", {"type": "workspace.explode", "payload": {}}, "workspace.explode", "unknown_type"),
    (
        "type-mismatch",
        {"type": "workspace.remove", "payload": {"workspace_id": "ok"}},
        "workspace.start",
        "invalid_command",
    ),
    (
        "wrong-type",
        {"type": "workspace.logs", "payload": {"workspace_id": "ok", "tail": "10"}},
        "workspace.logs",
        "invalid_command",
    ),
]


@pytest.mark.parametrize(("name", "body", "routing_type", "code"), BAD_INPUT, ids=[case[0] for case in BAD_INPUT])
async def test_bad_input_is_rejected_and_dead_lettered(
    client: Client, name: str, body: bytes | dict[str, Any], routing_type: str, code: str | None
) -> None:
    command_id = f"bad-{name}-{uuid.uuid4().hex[:8]}"
    raw = body if isinstance(body, bytes) else json.dumps({"command_id": command_id, **body}).encode()
    message_id = uuid.uuid4().hex
    correlation_id = await client.publish(raw, _key(client, routing_type), message_id=message_id)

    dead = await client.dead_letter(message_id)
    assert dead.body == raw  # untouched
    assert dead.routing_key == _key(client, routing_type)
    assert dead.headers.get("x-death") or dead.headers.get("x-first-death-reason") == "rejected"

    if code is None:
        await client.no_reply(correlation_id, wait=0.5)
    else:
        reply = await client.reply(correlation_id)
        assert reply["status"] == "rejected"
        assert reply["command_id"] == command_id
        assert reply["error"]["code"] == code
        assert reply["error"]["retryable"] is False
        published = await client.results_for(command_id)
        assert published[0][0] == f"{client.worker.host_id}.{reply['type']}.rejected"
    # ... and the worker keeps serving.
    assert (await client.send("host.info"))["status"] == "succeeded"


async def test_truncated_body_with_a_leading_id_is_answered(client: Client) -> None:
    command_id = f"trunc-{uuid.uuid4().hex[:8]}"
    raw = f'{{"command_id": "{command_id}", "type": "host.info", "payl'.encode()
    message_id = uuid.uuid4().hex
    reply = await client.reply(await client.publish(raw, _key(client, "host.info"), message_id=message_id))
    assert reply["status"] == "rejected"
    assert reply["command_id"] == command_id
    assert reply["error"]["code"] == "invalid_command"
    assert (await client.dead_letter(message_id)).body == raw


async def test_oversized_body_is_dead_lettered(client: Client) -> None:
    raw = json.dumps({"command_id": "big", "type": "host.info", "payload": {}, "pad": "x" * (1024 * 1024)}).encode()
    message_id = uuid.uuid4().hex
    await client.publish(raw, _key(client, "host.info"), message_id=message_id)
    dead = await client.dead_letter(message_id)
    assert len(dead.body) == len(raw)


POLICY_VIOLATIONS = [
    ("bind-outside-roots", {"mounts": [{"type": "bind", "source": "/etc", "target": "/x"}]}),
    ("bind-dotdot", {"mounts": [{"type": "bind", "source": "/{root}/../etc", "target": "/x"}]}),
    ("capability", {"cap_add": ["SYS_ADMIN"]}),
    ("reserved-label", {"labels": {"dockhand.managed": "false"}}),
]


@pytest.mark.parametrize(("name", "extra"), POLICY_VIOLATIONS, ids=[case[0] for case in POLICY_VIOLATIONS])
async def test_policy_violation_is_rejected_before_any_docker_call(
    client: Client, docker: aiodocker.Docker, test_image: str, name: str, extra: dict[str, Any]
) -> None:
    ws = client.ws_id()
    volume = f"{ws}-vol"
    extra = json.loads(json.dumps(extra).replace("/{root}", str(client.worker.bind_root)))
    labels = {**client.labels(), **extra.pop("labels", {})}
    payload = {
        "workspace_id": ws,
        "image": test_image,
        "labels": labels,
        **extra,
    }
    payload["mounts"] = [*payload.get("mounts", []), {"type": "volume", "source": volume, "target": "/v"}]
    body = client.command("workspace.create", payload)
    message_id = uuid.uuid4().hex
    correlation_id = await client.publish(
        json.dumps(body).encode(), _key(client, "workspace.create"), message_id=message_id
    )
    reply = await client.reply(correlation_id)
    assert reply["status"] == "rejected", reply
    assert reply["error"]["code"] == "forbidden"
    await client.dead_letter(message_id)
    # Nothing was created: no container, and not even the volume that came first in line.
    assert await docker.containers.list(all=True, filters={"name": [f"dockhand-{ws}"]}) == []
    with pytest.raises(aiodocker.DockerError):
        await docker.volumes.get(volume)


async def test_expired_command_is_not_executed(client: Client, docker: aiodocker.Docker, test_image: str) -> None:
    ws = client.ws_id()
    past = (datetime.now(UTC) - timedelta(seconds=5)).isoformat().replace("+00:00", "Z")
    reply = await client.send(
        "workspace.create", {"workspace_id": ws, "image": test_image, "labels": client.labels()}, expires_at=past
    )
    assert reply["status"] == "expired", reply
    assert await docker.containers.list(all=True, filters={"name": [f"dockhand-{ws}"]}) == []
    future = (datetime.now(UTC) + timedelta(minutes=5)).isoformat()
    ok = await client.send("host.info", expires_at=future)
    assert ok["status"] == "succeeded"


async def test_redelivered_command_id_does_not_repeat_side_effects(client: Client, test_image: str) -> None:
    ws = client.ws_id()
    await client.send("workspace.create", {"workspace_id": ws, "image": test_image, "labels": client.labels()})
    body = client.command("workspace.exec", {"workspace_id": ws, "command": ["sh", "-c", "echo once >> /tmp/count"]})
    first = await client.reply(await client.publish(body, _key(client, "workspace.exec")))
    second = await client.reply(await client.publish(body, _key(client, "workspace.exec")))
    assert first["status"] == "succeeded"
    assert second == first  # the stored result, verbatim
    count = await client.send("workspace.exec", {"workspace_id": ws, "command": ["cat", "/tmp/count"]})
    assert count["result"]["stdout"] == "once\n"

    create = client.command(
        "workspace.create", {"workspace_id": client.ws_id(), "image": test_image, "labels": client.labels()}
    )
    replies = [await client.reply(await client.publish(create, _key(client, "workspace.create"))) for _ in range(2)]
    assert replies[0] == replies[1]
    assert replies[0]["result"]["created"] is True


async def test_per_workspace_order_under_concurrency(client: Client, test_image: str) -> None:
    """20 commands over 4 workspaces, published back to back: each workspace sees its own in
    queue order, while different workspaces run at the same time."""
    workspaces = [client.ws_id(f"o{i}") for i in range(4)]
    await asyncio.gather(
        *(
            client.send("workspace.create", {"workspace_id": ws, "image": test_image, "labels": client.labels()})
            for ws in workspaces
        )
    )

    def append(ws: str, n: int) -> tuple[str, dict[str, Any]]:
        return "workspace.exec", {"workspace_id": ws, "command": ["sh", "-c", f"sleep 0.2; echo {n} >> /tmp/order"]}

    steps = [
        lambda ws: append(ws, 1),
        lambda ws: ("workspace.stop", {"workspace_id": ws, "timeout_s": 5}),
        lambda ws: ("workspace.start", {"workspace_id": ws}),
        lambda ws: append(ws, 2),
        lambda ws: append(ws, 3),
    ]
    sent: dict[str, list[str]] = {ws: [] for ws in workspaces}
    correlation: list[str] = []
    for step in steps:  # interleaved: step 1 of every workspace, then step 2, ...
        for ws in workspaces:
            command_type, payload = step(ws)
            body = client.command(command_type, payload)
            sent[ws].append(body["command_id"])
            correlation.append(await client.publish(body, _key(client, command_type)))
    replies = [await client.reply(c, timeout=120) for c in correlation]
    assert all(r["status"] == "succeeded" for r in replies), [r for r in replies if r["status"] != "succeeded"]

    by_id = {r["command_id"]: r for r in replies}
    for ws in workspaces:
        ordered = [by_id[c] for c in sent[ws]]
        finished = [r["finished_at"] for r in ordered]
        assert finished == sorted(finished), f"{ws} ran out of order"
        assert all(a["finished_at"] <= b["started_at"] for a, b in pairwise(ordered))
        content = await client.send("workspace.exec", {"workspace_id": ws, "command": ["cat", "/tmp/order"]})
        assert content["result"]["stdout"] == "1\n2\n3\n"
        state = await client.send("workspace.inspect", {"workspace_id": ws})
        assert state["result"]["state"] == "running"

    # Different workspaces overlapped in time (they are not serialised globally).
    intervals = sorted((r["started_at"], r["finished_at"]) for r in replies)
    assert any(b_start < a_end for (_, a_end), (b_start, _) in pairwise(intervals))


async def test_all_and_any_targets_reach_the_worker(client: Client) -> None:
    everywhere = await client.send("host.info", target="all")
    assert everywhere["status"] == "succeeded"
    assert everywhere["host_id"] == client.worker.host_id
    anywhere = await client.send("host.info", target="any")
    assert anywhere["status"] == "succeeded"
    published = await client.results_for(anywhere["command_id"])
    assert published[0][0] == f"{client.worker.host_id}.host.info.succeeded"
