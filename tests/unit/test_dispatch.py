"""worker.dispatch: parsing into commands or rejections, per-key lanes; worker.store."""

from __future__ import annotations

import asyncio
import json
import random
from collections import defaultdict
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import pytest

from schemas import ErrorCode, Result, Status
from schemas import commands as c
from worker.dispatch import Lanes, Rejection, parse
from worker.store import ResultStore

LIMIT = 64 * 1024


def _body(**fields: Any) -> bytes:
    return json.dumps(fields).encode()


def _rejection(body: bytes, routing_key: str = "host-a.host.info", limit: int = LIMIT) -> Rejection:
    with pytest.raises(Rejection) as info:
        parse(body, routing_key, limit)
    rejection = info.value
    assert rejection.error.status is Status.REJECTED
    assert rejection.error.retryable is False
    return rejection


# --- parse: rejections ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "command_id"),
    [
        (b'{"command_id": "c1", ', "c1"),  # truncated, but the id leads: the sender hears back
        (b'{"type": "host.info", "command_id": "c1", ', None),  # only a leading id is trusted
        (b'{"command_id": "c 1", ', None),  # not an id we would read back
        (b"", None),
        (b"not json", None),
        (b"\xff\xfe{}", None),
        (b'{"a":1}}', None),
    ],
)
def test_malformed_json(body: bytes, command_id: str | None) -> None:
    rejection = _rejection(body)
    assert rejection.error.code is ErrorCode.INVALID_COMMAND
    assert rejection.command_id == command_id
    assert rejection.command_type == "unknown"
    assert "not JSON" in rejection.error.message


@pytest.mark.parametrize("body", [b"[1, 2]", b'[{"command_id": "c1", "type": "host.info"}]', b"42", b'"x"', b"null"])
def test_non_object_json(body: bytes) -> None:
    rejection = _rejection(body)
    assert rejection.error.code is ErrorCode.INVALID_COMMAND
    assert rejection.command_id is None
    assert "JSON object" in rejection.error.message


def test_unknown_type() -> None:
    rejection = _rejection(_body(command_id="c1", type="workspace.explode", payload={}), "host-a.workspace.explode")
    assert rejection.error.code is ErrorCode.UNKNOWN_TYPE
    assert rejection.command_id == "c1"
    assert rejection.command_type == "workspace.explode"
    assert "workspace.explode" in rejection.error.message


def test_missing_type_is_unknown() -> None:
    rejection = _rejection(_body(command_id="c1", payload={}))
    assert rejection.error.code is ErrorCode.UNKNOWN_TYPE
    assert rejection.command_id == "c1"
    assert rejection.command_type == "unknown"


def test_overlong_type_is_not_echoed_as_the_type() -> None:
    rejection = _rejection(_body(command_id="c1", type="x" * 5000))
    assert rejection.error.code is ErrorCode.UNKNOWN_TYPE
    assert rejection.command_type == "unknown"
    assert len(rejection.error.message) < 200


@pytest.mark.parametrize("value", [42, None, True, 1.5, "HOST.INFO"])
def test_non_string_or_wrong_type_values(value: Any) -> None:
    rejection = _rejection(_body(command_id="c1", type=value))
    assert rejection.error.code is ErrorCode.UNKNOWN_TYPE
    assert rejection.command_id == "c1"


@pytest.mark.parametrize("value", [[], ["host.info"], {}, {"a": 1}])
def test_unhashable_type_values_are_rejected(value: Any) -> None:
    rejection = _rejection(_body(command_id="c1", type=value))
    assert rejection.error.code is ErrorCode.UNKNOWN_TYPE


@pytest.mark.parametrize(
    "routing_key", ["host-a.workspace.list", "host-a.host", "host.info", "host-a", "", "host-a.host.info.x"]
)
def test_routing_key_type_mismatch(routing_key: str) -> None:
    rejection = _rejection(_body(command_id="c1", type="host.info"), routing_key)
    assert rejection.error.code is ErrorCode.INVALID_COMMAND
    assert rejection.command_id == "c1"
    assert rejection.command_type == "host.info"
    assert "routing key" in rejection.error.message


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"workspace_id": "ws1"}, "image"),
        ({"workspace_id": "ws1", "image": "busybox", "privileged": True}, "privileged"),
        ({"workspace_id": "WS1", "image": "busybox"}, "workspace_id"),
        ({"workspace_id": "ws1", "image": "busybox", "ports": ["abc"]}, "ports"),
        ({"workspace_id": "ws1", "image": "busybox", "resources": {"memory_bytes": "5"}}, "memory_bytes"),
        ({"workspace_id": "ws1", "image": "busybox", "network": "host"}, "network"),
    ],
)
def test_schema_violation_names_the_field(payload: dict[str, Any], field: str) -> None:
    body = _body(command_id="c1", type="workspace.create", payload=payload)
    rejection = _rejection(body, "host-a.workspace.create")
    assert rejection.error.code is ErrorCode.INVALID_COMMAND
    assert rejection.command_id == "c1"
    assert rejection.command_type == "workspace.create"
    assert field in rejection.error.message
    assert rejection.error.message.startswith("invalid workspace.create")


def test_schema_violation_message_is_bounded() -> None:
    payload = {f"extra{i}": i for i in range(50)} | {"workspace_id": "ws1", "image": "busybox"}
    body = _body(command_id="c1", type="workspace.create", payload=payload)
    rejection = _rejection(body, "host-a.workspace.create")
    assert "and 45 more" in rejection.error.message
    assert len(rejection.error.message) < 2000


def test_oversize_body() -> None:
    body = _body(command_id="c1", type="host.info", payload={}, pad="x" * 2000)
    rejection = _rejection(body, limit=1024)
    assert rejection.error.code is ErrorCode.INVALID_COMMAND
    assert rejection.command_id is None
    assert "exceeds" in rejection.error.message


def test_body_at_the_limit_is_accepted() -> None:
    body = _body(command_id="c1", type="host.info")
    assert parse(body, "host-a.host.info", len(body)).command_id == "c1"
    _rejection(body, limit=len(body) - 1)


@pytest.mark.parametrize(("opening", "closing"), [(b"[", b"]"), (b'{"a":', b"}")])
def test_deeply_nested_json_is_rejected_not_crashing(opening: bytes, closing: bytes) -> None:
    depth = 100_000
    body = (
        b'{"command_id": "c1", "type": "host.info", "payload": {"x": '
        + opening * depth
        + b"1"
        + closing * depth
        + b"}}"
    )
    rejection = _rejection(body, limit=len(body) + 1)
    assert rejection.error.code is ErrorCode.INVALID_COMMAND


def test_moderately_nested_payload_keeps_the_command_id() -> None:
    body = b'{"command_id": "c1", "type": "host.info", "payload": {"x": ' + b"[" * 150 + b"]" * 150 + b"}}"
    rejection = _rejection(body)
    assert rejection.error.code is ErrorCode.INVALID_COMMAND
    assert rejection.command_id == "c1"
    assert "payload.x" in rejection.error.message


def _outcomes(bodies: list[bytes], routing_key: str = "host-a.workspace.create") -> dict[str, int]:
    """Parse every body; anything but a command or a Rejection fails the test."""
    outcomes: dict[str, int] = defaultdict(int)
    for body in bodies:
        rejection: Rejection | None = None
        try:
            parse(body, routing_key, LIMIT)
        except Rejection as exc:
            rejection = exc
        if rejection is None:
            outcomes["accepted"] += 1
            continue
        assert rejection.error.status is Status.REJECTED
        assert rejection.command_id is None or 1 <= len(rejection.command_id) <= 128
        outcomes[rejection.error.code.value] += 1
    return outcomes


def test_random_bytes_are_always_rejections() -> None:
    rng = random.Random(20240601)
    bodies = [rng.randbytes(rng.randrange(0, 300)) for _ in range(500)]
    outcomes = _outcomes(bodies)
    assert set(outcomes) == {"invalid_command"}
    assert sum(outcomes.values()) == 500


VALID_CREATE = _body(
    command_id="c1",
    type="workspace.create",
    payload={"workspace_id": "ws1", "image": "busybox:1.36", "ports": [80, "53/udp"], "env": {"A": "1"}},
    expires_at="2026-11-23T08:00:00Z",
)


def test_mutated_valid_bodies_are_commands_or_rejections() -> None:
    rng = random.Random(7)
    bodies = []
    for _ in range(500):
        body = bytearray(VALID_CREATE)
        for _ in range(rng.randrange(1, 4)):
            where = rng.randrange(len(body))
            action = rng.randrange(3)
            if action == 0:
                body[where] = rng.randrange(256)
            elif action == 1:
                del body[where]
            else:
                body.insert(where, rng.choice(b'{}[]",:0aZ\\ '))
        bodies.append(bytes(body))
    outcomes = _outcomes(bodies)
    # The mutations reach every stage of parse, not just the JSON decoder.
    assert outcomes["invalid_command"] > 0
    assert outcomes["unknown_type"] + outcomes["accepted"] > 0


def test_random_json_envelopes_are_commands_or_rejections() -> None:
    """Well-formed JSON with hashable junk in every envelope field (see the unhashable-type test above for
    unhashable ``type`` values)."""
    rng = random.Random(99)
    junk: list[Any] = [None, True, 0, -1, 1.5, "", "x" * 300, "host.info", "workspace.create", "c1", "ws1"]
    nested: list[Any] = [*junk, [], {}, {"workspace_id": "ws1"}, [1, "a"], {"image": "busybox"}]
    bodies = []
    for _ in range(500):
        envelope: dict[str, Any] = {"command_id": "c1", "type": "host.info", "payload": {}}
        for key in ("command_id", "type", "payload", "expires_at", "extra"):
            if rng.random() < 0.3:
                envelope[key] = rng.choice(junk if key == "type" else nested)
        bodies.append(json.dumps(envelope).encode())
    outcomes = _outcomes(bodies, "host-a.host.info")
    assert outcomes["unknown_type"] > 0
    assert outcomes["invalid_command"] > 0
    assert outcomes["accepted"] > 0


@pytest.mark.parametrize(
    ("command_id", "readable"),
    [("c", True), ("x" * 128, True), ("x" * 129, False), ("x" * 200, False), ("", False), (17, False), (None, False)],
)
def test_command_id_readability(command_id: Any, readable: bool) -> None:
    rejection = _rejection(_body(command_id=command_id, type="no.such"))
    assert rejection.command_id == (command_id if readable else None)


# --- parse: valid commands --------------------------------------------------------------

VALID: list[tuple[str, dict[str, Any] | None, type]] = [
    ("workspace.create", {"workspace_id": "ws1", "image": "busybox"}, c.WorkspaceCreateCommand),
    ("workspace.start", {"workspace_id": "ws1"}, c.WorkspaceStartCommand),
    ("workspace.stop", {"workspace_id": "ws1", "timeout_s": 5}, c.WorkspaceStopCommand),
    ("workspace.restart", {"workspace_id": "ws1"}, c.WorkspaceRestartCommand),
    ("workspace.remove", {"workspace_id": "ws1", "force": True}, c.WorkspaceRemoveCommand),
    ("workspace.inspect", {"workspace_id": "ws1"}, c.WorkspaceInspectCommand),
    ("workspace.list", {"project": "p1", "state": "running"}, c.WorkspaceListCommand),
    ("workspace.list", None, c.WorkspaceListCommand),
    ("workspace.exec", {"workspace_id": "ws1", "command": ["echo", "hi"]}, c.WorkspaceExecCommand),
    ("workspace.logs", {"workspace_id": "ws1", "tail": 5}, c.WorkspaceLogsCommand),
    ("network.ensure", {"name": "backend", "internal": True}, c.NetworkEnsureCommand),
    ("network.connect", {"network": "backend", "workspace_id": "ws1", "aliases": ["db"]}, c.NetworkConnectCommand),
    ("network.disconnect", {"network": "backend", "workspace_id": "ws1"}, c.NetworkDisconnectCommand),
    ("network.remove", {"name": "backend"}, c.NetworkRemoveCommand),
    ("image.pull", {"image": "ghcr.io/a/b:1"}, c.ImagePullCommand),
    ("image.inspect", {"image": "busybox"}, c.ImageInspectCommand),
    ("discovery.list", {}, c.DiscoveryListCommand),
    ("host.info", None, c.HostInfoCommand),
]


@pytest.mark.parametrize(("command_type", "payload", "cls"), VALID, ids=[v[0] for v in VALID])
@pytest.mark.parametrize("target", ["host-a", "any", "all"])
def test_valid_bodies_parse_to_the_right_class(
    command_type: str, payload: dict[str, Any] | None, cls: type, target: str
) -> None:
    fields: dict[str, Any] = {"command_id": "c-42", "type": command_type}
    if payload is not None:
        fields["payload"] = payload
    command = parse(_body(**fields), f"{target}.{command_type}", LIMIT)
    assert type(command) is cls
    assert command.command_id == "c-42"
    assert command.type == command_type


def test_valid_create_is_normalised() -> None:
    command = parse(VALID_CREATE, "host-a.workspace.create", LIMIT)
    assert isinstance(command, c.WorkspaceCreateCommand)
    assert command.payload.ports == ["80/tcp", "53/udp"]
    assert command.expires_at == datetime(2026, 11, 23, 8, 0, tzinfo=UTC)


# --- Lanes ------------------------------------------------------------------------------


async def test_lanes_keep_order_per_key_and_overlap_across_keys() -> None:
    rng = random.Random(42)
    lanes = Lanes()
    keys = [f"workspace:ws{i}" for i in range(5)]
    submitted: dict[str, list[int]] = defaultdict(list)
    finished: dict[str, list[int]] = defaultdict(list)
    running: dict[str, int] = defaultdict(int)
    state = {"now": 0, "max": 0, "max_per_key": 0}

    def make(key: str, index: int, delay: float) -> Callable[[], Awaitable[None]]:
        async def job() -> None:
            running[key] += 1
            state["now"] += 1
            state["max"] = max(state["max"], state["now"])
            state["max_per_key"] = max(state["max_per_key"], running[key])
            try:
                await asyncio.sleep(delay)
                finished[key].append(index)
            finally:
                running[key] -= 1
                state["now"] -= 1

        return job

    tasks = []
    for index in range(200):
        key = rng.choice(keys)
        submitted[key].append(index)
        tasks.append(lanes.submit(key, make(key, index, rng.uniform(0, 0.003))))
    await asyncio.gather(*tasks)

    assert finished == submitted
    assert state["max_per_key"] == 1
    assert state["max"] > 1
    await asyncio.sleep(0)
    assert not lanes.tasks


async def test_jobs_without_a_key_run_concurrently() -> None:
    lanes = Lanes()
    state = {"now": 0, "max": 0}

    async def job() -> None:
        state["now"] += 1
        state["max"] = max(state["max"], state["now"])
        await asyncio.sleep(0.01)
        state["now"] -= 1

    await asyncio.gather(*(lanes.submit(None, job) for _ in range(10)))
    assert state["max"] == 10


async def test_a_failing_job_does_not_stop_its_successors() -> None:
    lanes = Lanes()
    ran: list[str] = []

    async def fail() -> None:
        await asyncio.sleep(0.005)
        ran.append("fail")
        raise RuntimeError("boom")

    async def succeed(name: str) -> None:
        ran.append(name)

    first = lanes.submit("k", fail)
    second = lanes.submit("k", lambda: succeed("second"))
    third = lanes.submit("k", lambda: succeed("third"))
    results = await asyncio.gather(first, second, third, return_exceptions=True)
    assert isinstance(results[0], RuntimeError)
    assert results[1:] == [None, None]
    assert ran == ["fail", "second", "third"]


async def test_a_key_is_reusable_after_its_lane_drained() -> None:
    lanes = Lanes()
    ran: list[int] = []

    async def job(n: int) -> None:
        ran.append(n)

    await lanes.submit("k", lambda: job(1))
    await asyncio.sleep(0)
    await lanes.submit("k", lambda: job(2))
    assert ran == [1, 2]


# --- ResultStore ------------------------------------------------------------------------


def _result(command_id: str) -> Result:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    return Result(
        command_id=command_id,
        type="host.info",
        status=Status.SUCCEEDED,
        host_id="host-a",
        worker_id="host-a-1",
        started_at=now,
        finished_at=now,
        duration_ms=0.0,
    )


def test_store_evicts_least_recently_used() -> None:
    store = ResultStore(2)
    for command_id in ("a", "b", "c"):
        store.put(_result(command_id))
    assert len(store) == 2
    assert store.get("a") is None
    assert store.get("b") is not None
    assert store.get("c") is not None


def test_store_get_refreshes_recency() -> None:
    store = ResultStore(2)
    store.put(_result("a"))
    store.put(_result("b"))
    assert store.get("a") is not None
    store.put(_result("c"))
    assert store.get("b") is None
    assert store.get("a") is not None
    assert store.get("c") is not None


def test_store_put_replaces_and_refreshes() -> None:
    store = ResultStore(2)
    store.put(_result("a"))
    store.put(_result("b"))
    newer = _result("a").model_copy(update={"attempt": 2})
    store.put(newer)
    store.put(_result("c"))
    assert len(store) == 2
    assert store.get("a") is newer
    assert store.get("b") is None


def test_store_capacity_zero_stores_nothing() -> None:
    store = ResultStore(0)
    store.put(_result("a"))
    assert len(store) == 0
    assert store.get("a") is None


def test_store_miss() -> None:
    assert ResultStore(5).get("nope") is None
