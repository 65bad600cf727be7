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

from dockhand.schemas import ErrorCode, Result, Status
from dockhand.schemas import commands as c
from dockhand.worker.dispatch import Dispatcher
from dockhand.worker.intake import Rejection, parse, printable, redact
from dockhand.worker.ordering import Lanes
from dockhand.worker.settings import Settings
from dockhand.worker.store import ResultStore
from dockhand.worker.topology import Topology
from tests.fakes import FakeMessage, FakeOps, FakePublisher, FakeTxChannel

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
    # The id leads the body: the sender is answered instead of left to time out.
    assert rejection.command_id == "c1"
    assert "exceeds" in rejection.error.message


def test_oversize_body_without_a_leading_id_is_unreadable() -> None:
    body = _body(type="host.info", command_id="c1", pad="x" * 2000)
    assert _rejection(body, limit=1024).command_id is None


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
    ("command_id", "shown"),
    [
        ("c", "c"),
        ("x" * 128, "x" * 128),
        # Readable but invalid: answered under an escaped id cut to 128 characters.
        ("x" * 129, "x" * 125 + "..."),
        ("x" * 200, "x" * 125 + "..."),
        ("a\nb", "a\\nb"),
        ("a\x1b[2Jb\x85\u2028", "a\\x1b[2Jb\\x85\\u2028"),
        ("", None),
        (17, None),
        (None, None),
    ],
)
def test_command_id_readability(command_id: Any, shown: str | None) -> None:
    rejection = _rejection(_body(command_id=command_id, type="no.such"))
    assert rejection.command_id == shown
    if shown is not None:
        # What a result carries is itself a valid id: no control characters, at most 128.
        assert 1 <= len(shown) <= 128
        assert shown.isprintable()


@pytest.mark.parametrize("command_id", ["x" * 129, "c\n2026-01-01 INFO forged", "c\r1", "c\x00", "c\x7f", "c\u202e"])
def test_invalid_command_id_is_rejected_with_a_clear_reason(command_id: str) -> None:
    rejection = _rejection(_body(command_id=command_id, type="host.info"))
    assert rejection.error.code is ErrorCode.INVALID_COMMAND
    assert "command_id must be 1 to 128 printable characters" in rejection.error.message
    assert rejection.command_type == "host.info"
    assert rejection.command_id is not None
    assert rejection.command_id.isprintable()


@pytest.mark.parametrize("command_id", ["c 1", "ünï-1", "a/b:c@d", "x" * 128])
def test_printable_command_ids_stay_valid(command_id: str) -> None:
    assert parse(_body(command_id=command_id, type="host.info"), "host-a.host.info", LIMIT).command_id == command_id


@pytest.mark.parametrize(
    ("field", "payload_type", "payload"),
    [
        ("expires_at", "host.info", None),
        ("since", "workspace.logs", {"workspace_id": "ws1"}),
    ],
)
def test_naive_datetimes_are_rejected(field: str, payload_type: str, payload: dict[str, Any] | None) -> None:
    fields: dict[str, Any] = {"command_id": "c1", "type": payload_type}
    if field == "expires_at":
        fields["expires_at"] = "2026-11-23T08:00:00"
    else:
        fields["payload"] = {**(payload or {}), field: "2026-11-23T08:00:00"}
    rejection = _rejection(_body(**fields), f"host-a.{payload_type}")
    assert rejection.error.code is ErrorCode.INVALID_COMMAND
    assert rejection.command_id == "c1"
    assert field in rejection.error.message
    assert "timezone" in rejection.error.message


def test_aware_datetimes_in_any_zone_are_accepted() -> None:
    command = parse(
        _body(command_id="c1", type="host.info", expires_at="2026-11-23T09:00:00+01:00"), "host-a.host.info", LIMIT
    )
    assert command.expires_at == datetime(2026, 11, 23, 8, 0, tzinfo=UTC)


def test_printable_escapes_what_would_forge_a_log_line() -> None:
    assert printable("a\nb\r\x1b\x85\u2028\u202e ok ü") == "a\\nb\\r\\x1b\\x85\\u2028\\u202e ok ü"
    assert "\n" not in printable("x\n" * 10)


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
    assert store.get("a") == newer  # kept as JSON now (store.Entry), so an equal copy, not the object
    assert store.get("a").attempt == 2  # type: ignore[union-attr]
    assert store.get("b") is None


def test_store_capacity_zero_stores_nothing() -> None:
    store = ResultStore(0)
    store.put(_result("a"))
    assert len(store) == 0
    assert store.get("a") is None


def test_store_miss() -> None:
    assert ResultStore(5).get("nope") is None


# --- redact: what a dead letter may keep ------------------------------------------------


def test_redact_removes_registry_passwords_and_tokens() -> None:
    body = _body(
        command_id="c1",
        type="workspace.create",
        payload={
            "workspace_id": "ws1",
            "image": "reg.example/a:1",
            "registry_auth": {"username": "u", "password": "hunter2"},
            "env": {"GITHUB_TOKEN": "ghp_abc", "PLAIN": "keep-me"},
        },
    )
    redaction = redact(body, LIMIT)
    assert redaction is not None
    cleaned, found = redaction
    assert b"hunter2" not in cleaned
    assert b"ghp_abc" not in cleaned
    assert b"keep-me" in cleaned
    assert b'"command_id": "c1"' in cleaned
    assert found == ["payload.registry_auth.password", "payload.env.GITHUB_TOKEN"]


def test_redact_cuts_an_unparseable_body_before_the_secret() -> None:
    body = b'{"command_id": "c1", "payload": {"registry_auth": {"username": "u", "password": "hunter2'
    cleaned, found = redact(body, LIMIT) or (b"", [])
    assert b"hunter2" not in cleaned
    assert cleaned.startswith(b'{"command_id": "c1"')
    assert found
    assert found[0].startswith("body[")


def test_redact_cuts_an_oversize_body_without_parsing_it() -> None:
    body = _body(command_id="c1", registry_auth={"password": "hunter2"}, pad="x" * 5000)
    cleaned, _ = redact(body, 1024) or (b"", [])
    assert b"hunter2" not in cleaned
    assert cleaned.startswith(b'{"command_id": "c1"')


@pytest.mark.parametrize(
    "body",
    [
        _body(command_id="c1", type="host.info"),
        _body(command_id="c1", type="workspace.exec", payload={"command": ["echo", "my password"]}),
        b"\xff\xfe not json at all",
    ],
)
def test_redact_leaves_bodies_without_secrets_alone(body: bytes) -> None:
    assert redact(body, LIMIT) is None


# --- the dispatcher with fakes: conflicts, the exec pool, redacted dead letters ------------


def _dispatcher(**overrides: Any) -> tuple[Dispatcher, FakePublisher, FakeOps]:
    base: dict[str, Any] = {"host_id": "host-a", "worker_id": "host-a-t", "docker_host": None, "state_dir": None}
    settings = Settings(**{**base, **overrides})
    publisher = FakePublisher()
    dispatcher = Dispatcher(settings, Topology(settings), publisher)  # type: ignore[arg-type]
    ops = FakeOps()
    dispatcher.ops = ops  # type: ignore[assignment]
    return dispatcher, publisher, ops


def _submit(dispatcher: Dispatcher, body: bytes | dict[str, Any], command_type: str) -> FakeMessage:
    message = FakeMessage(body, f"host-a.{command_type}", headers={"x-trace": "t1"})
    dispatcher.submit(message.body, message)  # type: ignore[arg-type]
    return message


async def _settled(message: FakeMessage, timeout: float = 5) -> list[str]:
    await asyncio.wait_for(message.done.wait(), timeout)
    return message.settled


def _exec(command_id: str, workspace_id: str, *argv: str) -> dict[str, Any]:
    return {
        "command_id": command_id,
        "type": "workspace.exec",
        "payload": {"workspace_id": workspace_id, "command": list(argv)},
    }


async def test_a_reused_command_id_with_another_payload_is_a_conflict_and_runs_nothing() -> None:
    dispatcher, publisher, ops = _dispatcher()
    assert await _settled(_submit(dispatcher, _exec("c1", "ws1", "echo", "a"), "workspace.exec")) == ["ack"]
    original = publisher.results("c1")[0]
    assert original["status"] == "succeeded"

    squat = _submit(dispatcher, _exec("c1", "ws1", "echo", "b"), "workspace.exec")
    assert await _settled(squat) == ["ack"]
    other_type = _submit(dispatcher, {"command_id": "c1", "type": "host.info"}, "host.info")
    assert await _settled(other_type) == ["ack"]
    for conflict in publisher.results("c1")[1:]:
        assert conflict["status"] == "failed"
        assert conflict["error"]["code"] == "conflict"
        assert conflict["error"]["retryable"] is False
        assert conflict["result"] is None  # the other command's result is not handed over
    assert ops.execs == [["echo", "a"]]

    # The original is still what a true repeat gets, verbatim.
    assert await _settled(_submit(dispatcher, _exec("c1", "ws1", "echo", "a"), "workspace.exec")) == ["ack"]
    assert publisher.results("c1")[-1] == original
    assert ops.execs == [["echo", "a"]]


async def test_exec_pool_is_separate_and_bounded() -> None:
    dispatcher, publisher, ops = _dispatcher(max_concurrency=1, max_concurrent_execs=2)
    ops.gate.clear()
    running = [_submit(dispatcher, _exec(f"e{i}", f"ws{i}", "sleep", "30"), "workspace.exec") for i in range(2)]
    extra = _submit(dispatcher, _exec("e2", "ws2", "sleep", "30"), "workspace.exec")
    assert await _settled(extra, timeout=1) == ["ack"]
    refused = publisher.results("e2")[0]
    assert refused["status"] == "failed"
    assert refused["error"]["code"] == "capacity"
    assert refused["error"]["retryable"] is True
    # The one command slot is free for everything else while both execs run.
    info = _submit(dispatcher, {"command_id": "h1", "type": "host.info"}, "host.info")
    assert await _settled(info, timeout=1) == ["ack"]
    assert publisher.results("h1")[0]["status"] == "succeeded"
    assert not any(m.done.is_set() for m in running)
    ops.gate.set()
    for message in running:
        assert await _settled(message) == ["ack"]
    # The pool is free again; a refused exec is not remembered, so its id can be sent again.
    assert await _settled(_submit(dispatcher, _exec("e2", "ws2", "true"), "workspace.exec")) == ["ack"]
    assert publisher.results("e2")[-1]["status"] == "succeeded"


async def test_exec_waiting_in_its_lane_counts_against_the_pool() -> None:
    dispatcher, publisher, ops = _dispatcher(max_concurrent_execs=2)
    ops.gate.clear()
    first = _submit(dispatcher, _exec("l0", "ws1", "sleep", "30"), "workspace.exec")
    second = _submit(dispatcher, _exec("l1", "ws1", "sleep", "30"), "workspace.exec")  # waits behind l0
    third = _submit(dispatcher, _exec("l2", "ws1", "sleep", "30"), "workspace.exec")
    assert await _settled(third, timeout=1) == ["ack"]
    assert publisher.results("l2")[0]["error"]["code"] == "capacity"
    ops.gate.set()
    assert await _settled(first) == ["ack"]
    assert await _settled(second) == ["ack"]


async def test_an_exec_leaves_the_pool_when_answered_not_when_its_commit_returns() -> None:
    # The broker may deliver the next exec (its prefetch freed by the ack) before the commit-ok
    # of the reply and ack reaches the worker: that exec must find the pool free.
    dispatcher, publisher, _ops = _dispatcher(max_concurrent_execs=1)
    channel = FakeTxChannel()
    channel.gate.clear()  # the commit-ok is on its way
    first = FakeMessage(_exec("p0", "ws1", "true"), "host-a.workspace.exec", channel=channel)
    dispatcher.submit(first.body, first)  # type: ignore[arg-type]
    assert await _settled(first) == ["ack"]  # written into the transaction, not committed yet
    second = _submit(dispatcher, _exec("p1", "ws2", "true"), "workspace.exec")
    assert await _settled(second) == ["ack"]
    assert publisher.results("p1")[0]["status"] == "succeeded"  # not capacity
    channel.gate.set()
    await asyncio.sleep(0.01)
    assert channel.settles() == [("ack", False)]


def _create_with_auth(**payload: Any) -> dict[str, Any]:
    return {
        "command_id": "cr1",
        "type": "workspace.create",
        "payload": {
            "workspace_id": "ws1",
            "image": "reg.example/a:1",
            "registry_auth": {"username": "u", "password": "hunter2"},
            **payload,
        },
    }


@pytest.mark.parametrize(
    "body",
    [
        _create_with_auth(),  # valid, but the (fake) policy forbids it
        _create_with_auth(privileged=True),  # a schema violation
        json.dumps(_create_with_auth()).encode()[:-5],  # not JSON
    ],
    ids=["policy", "schema", "unparseable"],
)
async def test_rejected_message_with_a_secret_is_dead_lettered_redacted(body: bytes | dict[str, Any]) -> None:
    dispatcher, publisher, _ = _dispatcher()
    message = _submit(dispatcher, body, "workspace.create")
    assert await _settled(message) == ["ack"]  # not rejected: the broker's copy would keep the password
    [(dead, options)] = publisher.dead_letters()
    assert b"hunter2" not in dead
    assert b"cr1" in dead
    assert options["routing_key"] == "host-a.workspace.create"
    assert options["headers"]["x-trace"] == "t1"
    assert (
        "password" in options["headers"]["x-dockhand-redacted"] or "body[" in options["headers"]["x-dockhand-redacted"]
    )
    assert options["message_id"] == "m-1"
    assert publisher.results("cr1")[0]["status"] == "rejected"


async def test_rejected_message_without_a_secret_is_rejected_untouched() -> None:
    dispatcher, publisher, _ = _dispatcher()
    message = _submit(dispatcher, {"command_id": "x1", "type": "host.info", "junk": 1}, "host.info")
    assert await _settled(message) == ["reject"]
    assert publisher.dead_letters() == []


async def test_oversize_and_overlong_ids_are_answered() -> None:
    dispatcher, publisher, _ = _dispatcher(max_body_bytes=1024)
    big = _submit(dispatcher, {"command_id": "big-1", "type": "host.info", "pad": "x" * 2000}, "host.info")
    assert await _settled(big) == ["reject"]
    assert publisher.results("big-1")[0]["error"]["code"] == "invalid_command"
    long_id = "L" * 300
    overlong = _submit(dispatcher, {"command_id": long_id, "type": "host.info"}, "host.info")
    assert await _settled(overlong) == ["reject"]
    [answer] = publisher.results("L" * 125 + "...")
    assert answer["status"] == "rejected"
    assert "command_id must be" in answer["error"]["message"]


async def test_rejection_log_line_escapes_sender_values(caplog: pytest.LogCaptureFixture) -> None:
    dispatcher, _, _ = _dispatcher()
    body = {"command_id": "c1\n2026-01-01 00:00:00 INFO forged line", "type": "host.info"}
    message = FakeMessage(body, "host-a.host.info")
    message.raw_message.message_id = "m\r\nforged"
    dispatcher.submit(message.body, message)  # type: ignore[arg-type]
    with caplog.at_level("INFO", logger="dockhand.commands"):
        await _settled(message)
    text = "\n".join(record.getMessage() for record in caplog.records)
    assert "\n2026-01-01" not in text
    assert "\r\n" not in text
    assert "\\n2026-01-01" in text
    assert "m\\r\\nforged" in text


def test_exec_pool_defaults_to_the_command_concurrency() -> None:
    base: dict[str, Any] = {"host_id": "host-a", "docker_host": None, "state_dir": None}
    assert Settings(**base, max_concurrency=3).exec_slots == 3
    assert Settings(**base, max_concurrency=3, max_concurrent_execs=1).exec_slots == 1
