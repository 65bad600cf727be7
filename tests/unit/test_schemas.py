"""The wire models: generated JSON Schema files, the contract's type list, strictness."""

from __future__ import annotations

import json
import os
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from dockhand.schemas import COMMAND_ADAPTER, COMMAND_TYPES, RESULT_MODELS, ErrorCode, ErrorInfo, Result, Status
from dockhand.schemas.commands import Empty, Mount, WorkspaceCreate, WorkspaceListQuery
from dockhand.schemas.export import SCHEMA_DIR, render
from dockhand.schemas.results import Workspace
from dockhand.worker.handlers import HANDLERS

REPO = Path(__file__).resolve().parents[2]

CONTRACT_TYPES = frozenset(
    {
        "workspace.create",
        "workspace.start",
        "workspace.stop",
        "workspace.restart",
        "workspace.remove",
        "workspace.inspect",
        "workspace.list",
        "workspace.exec",
        "workspace.logs",
        "network.ensure",
        "network.connect",
        "network.disconnect",
        "network.remove",
        "image.pull",
        "image.inspect",
        "discovery.list",
        "host.info",
    }
)
V1_1_TYPES = frozenset(
    {"workspace.put_files", "workspace.get_file", "workspace.extend", "workspace.snapshot", "image.remove"}
)
"""The v1.1 "Commands added" that this worker implements so far."""


def _contract_path() -> Path | None:
    candidates = [
        os.environ.get("DOCKHAND_CONTRACT"),
        REPO / "shared" / "contract.md",
        REPO.parent / "shared" / "contract.md",
    ]
    for candidate in candidates:
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    return None


def _types_from_contract(text: str) -> set[str]:
    """The first cell of every row of the "Types and payloads" table; ``a.b`` / ``.c`` rows
    expand to ``a.b`` and ``a.c``."""
    section = text.split("### Types and payloads", 1)[1]
    names: set[str] = set()
    for line in section.splitlines():
        if not line.startswith("| `"):
            if names and not line.startswith("|"):
                break  # the end of the table
            continue
        cell = line.split("|")[1]
        parts = re.findall(r"`([^`]+)`", cell)
        head = parts[0]
        names.add(head)
        family = head.rsplit(".", 1)[0]
        names.update(family + part for part in parts[1:] if part.startswith("."))
    return names


def _create(**payload: Any) -> WorkspaceCreate:
    return WorkspaceCreate.model_validate({"workspace_id": "ws1", "image": "busybox:1.36", **payload})


def _error_types(exc: ValidationError) -> set[str]:
    return {error["type"] for error in exc.errors()}


# --- generated files and the type list --------------------------------------------------


def test_committed_json_schemas_are_up_to_date() -> None:
    rendered = render()
    committed = {path.name: path.read_text(encoding="utf-8") for path in SCHEMA_DIR.glob("*.json")}
    stale = sorted(name for name in rendered.keys() | committed.keys() if rendered.get(name) != committed.get(name))
    assert not stale, f"schemas/json is out of date ({', '.join(stale)}): run `python -m dockhand.schemas`"


def test_rendered_schemas_are_valid_json_with_ids() -> None:
    for name, text in render().items():
        schema = json.loads(text)
        assert schema["$id"].endswith("/" + name)
        assert schema["$schema"].startswith("https://json-schema.org/")


def test_contract_type_table_matches_the_known_list() -> None:
    path = _contract_path()
    if path is None:
        pytest.skip("contract.md not found (set DOCKHAND_CONTRACT)")
    assert _types_from_contract(path.read_text(encoding="utf-8")) == CONTRACT_TYPES


def test_v1_1_types_are_in_the_contract_table() -> None:
    path = _contract_path()
    if path is None:
        pytest.skip("contract.md not found (set DOCKHAND_CONTRACT)")
    added = path.read_text(encoding="utf-8").split("### Commands added", 1)[1].split("\n\n", 2)[1]
    assert {t for t in V1_1_TYPES if f"| `{t}` |" in added} == V1_1_TYPES


@pytest.mark.parametrize("command_type", sorted(CONTRACT_TYPES | V1_1_TYPES))
def test_every_contract_type_has_a_model_a_result_and_a_handler(command_type: str) -> None:
    assert command_type in COMMAND_TYPES
    assert command_type in RESULT_MODELS
    assert command_type in HANDLERS


def test_no_types_beyond_the_contract() -> None:
    assert set(COMMAND_TYPES) == CONTRACT_TYPES | V1_1_TYPES
    assert set(RESULT_MODELS) == CONTRACT_TYPES | V1_1_TYPES
    assert set(HANDLERS) == CONTRACT_TYPES | V1_1_TYPES


# --- strictness -------------------------------------------------------------------------


def test_unknown_payload_field_is_rejected() -> None:
    with pytest.raises(ValidationError) as info:
        _create(colour="blue")
    assert _error_types(info.value) == {"extra_forbidden"}


def test_unknown_envelope_field_is_rejected() -> None:
    body = {"command_id": "c1", "type": "host.info", "payload": {}, "priority": 9}
    with pytest.raises(ValidationError, match="priority"):
        COMMAND_ADAPTER.validate_json(json.dumps(body))


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("privileged", True),
        ("network_mode", "host"),
        ("pid_mode", "host"),
        ("ipc_mode", "host"),
        ("uts_mode", "host"),
        ("userns_mode", "host"),
        ("devices", ["/dev/sda:/dev/sda"]),
        ("cap_drop", ["ALL"]),
        ("security_opt", ["seccomp=unconfined"]),
        ("sysctls", {"net.ipv4.ip_forward": "1"}),
        ("host_config", {"Privileged": True}),
        ("volumes_from", ["other"]),
    ],
)
def test_privileged_like_fields_cannot_be_expressed(field: str, value: Any) -> None:
    assert field not in WorkspaceCreate.model_fields
    with pytest.raises(ValidationError) as info:
        _create(**{field: value})
    assert _error_types(info.value) == {"extra_forbidden"}


@pytest.mark.parametrize(
    "payload",
    [
        {"ports": ["abc"]},
        {"ports": [0]},
        {"ports": [65536]},
        {"ports": ["80/icmp"]},
        {"resources": {"memory_bytes": "5"}},
        {"resources": {"memory_bytes": 1024}},  # below the 6 MiB floor
        {"resources": {"cpus": 0}},
        {"resources": {"pids": "10"}},
        {"workspace_id": "WS1"},
        {"workspace_id": "a/b"},
        {"workspace_id": "a" * 64},
        {"workspace_id": ""},
        {"workspace_id": "-ws"},
        {"workspace_id": 7},
        {"image": "busy box"},
        {"image": "busybox;rm -rf /"},
        {"image": "busybox$(id)"},
        {"image": ""},
        {"env": {"1BAD": "x"}},
        {"env": {"OK": 1}},
        {"read_only": "true"},
        {"start": 1},
        {"restart_policy": "sometimes"},
        {"pull": "maybe"},
        {"working_dir": "relative/dir"},
        {"cap_add": ["net_admin"]},
        {"command": "sh -c 'echo hi'"},
    ],
    ids=repr,
)
def test_wrong_values_are_rejected(payload: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        _create(**payload)


def test_workspace_id_of_63_chars_is_the_longest_accepted() -> None:
    assert _create(workspace_id="a" * 63).workspace_id == "a" * 63


@pytest.mark.parametrize("network", ["host", "none"])
def test_host_and_none_networks_are_rejected(network: str) -> None:
    with pytest.raises(ValidationError, match="not allowed"):
        _create(network=network)


def test_valid_create_parses_and_normalises_ports() -> None:
    payload = _create(
        image="ghcr.io/acme/app@sha256:" + "a" * 64,
        ports=[80, "53/udp", "80/tcp", "8080"],
        env={"A": "1"},
        labels={"com.example.team": "x"},
        network="backend",
        resources={"cpus": 0.5, "memory_bytes": 64 * 1024 * 1024, "pids": 100},
        mounts=[{"type": "volume", "source": "data", "target": "/data"}],
        discovery={"domain": "app.example.com", "port": 8080},
    )
    assert payload.ports == ["80/tcp", "53/udp", "8080/tcp"]
    assert payload.resources.memory_bytes == 64 * 1024 * 1024
    assert payload.start is True
    assert payload.pull == "missing"


def test_ports_of_the_brief_normalise() -> None:
    assert _create(ports=[80, "53/udp"]).ports == ["80/tcp", "53/udp"]


def test_registry_password_never_serialised() -> None:
    secret = "hunter2-very-secret"
    body = {
        "command_id": "c1",
        "type": "workspace.create",
        "payload": {
            "workspace_id": "ws1",
            "image": "registry.example.com/app:1",
            "registry_auth": {"username": "bob", "password": secret, "server_address": "registry.example.com"},
        },
    }
    command = COMMAND_ADAPTER.validate_json(json.dumps(body))
    auth = command.payload.registry_auth
    assert auth is not None
    assert auth.password.get_secret_value() == secret
    for text in (
        command.model_dump_json(),
        command.payload.model_dump_json(),
        json.dumps(command.model_dump(mode="json")),
        repr(command),
        str(command),
    ):
        assert secret not in text
    assert "bob" in command.model_dump_json()


def test_image_pull_password_never_serialised() -> None:
    body = {
        "command_id": "c1",
        "type": "image.pull",
        "payload": {"image": "ghcr.io/a/b:1", "registry_auth": {"username": "u", "password": "pw-123456"}},
    }
    command = COMMAND_ADAPTER.validate_json(json.dumps(body))
    assert "pw-123456" not in command.model_dump_json()


def test_tmpfs_mount_without_source_ok() -> None:
    assert Mount(type="tmpfs", target="/scratch").source is None


def test_tmpfs_mount_with_source_rejected() -> None:
    with pytest.raises(ValidationError, match="no source"):
        Mount(type="tmpfs", source="x", target="/scratch")


@pytest.mark.parametrize("kind", ["volume", "bind"])
def test_volume_or_bind_without_source_rejected(kind: str) -> None:
    with pytest.raises(ValidationError, match="needs a source"):
        Mount(type=kind, target="/data")


def test_mount_type_defaults_to_volume() -> None:
    with pytest.raises(ValidationError, match="needs a source"):
        Mount(target="/data")
    assert Mount(source="data", target="/data").type == "volume"


def test_bind_with_source_ok() -> None:
    mount = Mount(type="bind", source="/srv/data/ws1", target="/data", read_only=True)
    assert (mount.source, mount.read_only) == ("/srv/data/ws1", True)


@pytest.mark.parametrize("source", ["../etc", "a/b", "with space", "x" * 200])
def test_volume_with_invalid_name_rejected(source: str) -> None:
    with pytest.raises(ValidationError, match="not valid"):
        Mount(type="volume", source=source, target="/data")


def test_mount_target_must_be_absolute() -> None:
    with pytest.raises(ValidationError):
        Mount(source="data", target="data")


def test_expires_at_parses_rfc3339_z() -> None:
    body = {"command_id": "c1", "type": "host.info", "expires_at": "2026-11-23T08:00:00Z"}
    command = COMMAND_ADAPTER.validate_json(json.dumps(body))
    assert command.expires_at == datetime(2026, 11, 23, 8, 0, tzinfo=UTC)
    assert command.expires_at.utcoffset() == timedelta(0)


def test_expires_at_garbage_rejected() -> None:
    body = {"command_id": "c1", "type": "host.info", "expires_at": "next tuesday"}
    with pytest.raises(ValidationError, match="expires_at"):
        COMMAND_ADAPTER.validate_json(json.dumps(body))


@pytest.mark.parametrize(
    ("command_type", "model"),
    [("host.info", Empty), ("discovery.list", Empty), ("workspace.list", WorkspaceListQuery)],
)
def test_missing_payload_defaults(command_type: str, model: type) -> None:
    command = COMMAND_ADAPTER.validate_json(json.dumps({"command_id": "c1", "type": command_type}))
    assert type(command.payload) is model
    assert command.type == command_type


@pytest.mark.parametrize("command_type", ["workspace.start", "workspace.create", "network.ensure", "image.pull"])
def test_missing_payload_rejected_where_fields_are_required(command_type: str) -> None:
    with pytest.raises(ValidationError, match="payload"):
        COMMAND_ADAPTER.validate_json(json.dumps({"command_id": "c1", "type": command_type}))


@pytest.mark.parametrize("command_id", ["", "x" * 129])
def test_command_id_length_bounds(command_id: str) -> None:
    with pytest.raises(ValidationError, match="command_id"):
        COMMAND_ADAPTER.validate_json(json.dumps({"command_id": command_id, "type": "host.info"}))


def _times() -> tuple[datetime, datetime]:
    started = datetime(2026, 1, 2, 3, 4, 5, 123456, tzinfo=UTC)
    return started, started + timedelta(milliseconds=412)


def test_workspace_result_round_trips() -> None:
    started, finished = _times()
    workspace = Workspace(
        workspace_id="ws1",
        container_id="abc123",
        container_name="dockhand-ws1",
        host_id="host-a",
        image="busybox:1.36",
        image_id="sha256:" + "b" * 64,
        state="running",
        health="healthy",
        created=True,
        ports=[{"container_port": 80, "protocol": "tcp", "host_ip": "127.0.0.1", "host_port": 32768}],
        networks={"dockhand": "172.18.0.2"},
        labels={"dockhand.managed": "true"},
        created_at=started,
        started_at=finished,
    )
    result = Result(
        command_id="c1",
        type="workspace.create",
        status=Status.SUCCEEDED,
        host_id="host-a",
        worker_id="host-a-7f3c",
        result=workspace,
        started_at=started,
        finished_at=finished,
        duration_ms=412.0,
    )
    again = Result.model_validate_json(result.model_dump_json())
    assert again == result
    assert isinstance(again.result, Workspace)
    assert again.result.ports[0].host_port == 32768
    wire = json.loads(result.model_dump_json())
    assert wire["status"] == "succeeded"
    assert wire["error"] is None


def test_error_result_round_trips() -> None:
    started, finished = _times()
    result = Result(
        command_id="c2",
        type="workspace.inspect",
        status=Status.FAILED,
        host_id="host-a",
        worker_id="host-a-7f3c",
        error=ErrorInfo(code=ErrorCode.NOT_FOUND, message="workspace ws1 not found on host-a"),
        started_at=started,
        finished_at=finished,
        duration_ms=1.5,
        attempt=2,
    )
    again = Result.model_validate_json(result.model_dump_json())
    assert again == result
    assert again.error is not None
    assert again.error.code is ErrorCode.NOT_FOUND
    assert again.result is None
    assert json.loads(result.model_dump_json())["error"] == {
        "code": "not_found",
        "message": "workspace ws1 not found on host-a",
        "retryable": False,
    }


def test_result_rejects_unknown_status() -> None:
    started, finished = _times()
    text = json.dumps(
        {
            "command_id": "c",
            "type": "host.info",
            "status": "maybe",
            "host_id": "h",
            "worker_id": "w",
            "started_at": started.isoformat(),
            "finished_at": finished.isoformat(),
            "duration_ms": 1.0,
        }
    )
    with pytest.raises(ValidationError, match="status"):
        Result.model_validate_json(text)


def test_every_result_model_is_a_result_body() -> None:
    # A result model outside Result's union would fail validation at the worker: ``internal``.
    from typing import get_args

    from dockhand.schemas.results import ResultBody

    assert set(RESULT_MODELS.values()) <= set(get_args(ResultBody))
