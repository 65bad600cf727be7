"""Tenancy (DOCKHAND_TENANCY=user): sender from user_id, owner labels and checks, per-owner ids.

Fakes stand in for Docker and the broker here; tests/integration/test_tenancy.py sends the same
commands to a real worker with real RabbitMQ users.
"""

from __future__ import annotations

import asyncio
import copy
import json
import logging
import re
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from aiodocker.exceptions import DockerError

from dockhand.schemas import ErrorCode, Result, Status, utcnow
from dockhand.schemas.commands import (
    NetworkEnsure,
    WorkspaceCreate,
    WorkspaceExec,
    WorkspaceListQuery,
    WorkspaceRemove,
    WorkspaceStop,
)
from dockhand.schemas.results import HostInfo
from dockhand.worker import tenancy
from dockhand.worker.dispatch import Dispatcher
from dockhand.worker.docker import DockerOps
from dockhand.worker.errors import DockhandError
from dockhand.worker.labels import Labels
from dockhand.worker.logs import ContextFilter
from dockhand.worker.policy import Policy
from dockhand.worker.settings import Settings
from dockhand.worker.store import ResultStore, store_key
from dockhand.worker.topology import Topology
from tests.fakes import FakeMessage, FakePublisher

HOST = "host-a"
NAMES = Labels("dockhand", "dockhand")


def _settings(**overrides: Any) -> Settings:
    base: dict[str, Any] = {"host_id": HOST, "worker_id": f"{HOST}-t", "docker_host": None, "state_dir": None}
    return Settings(**{**base, **overrides})


@pytest.fixture
def as_sender() -> Iterator[Any]:
    """Run the test body as a given sender (what the dispatcher does per message)."""

    def act(user: str | None, admin: bool = False) -> None:
        tenancy.SENDER.set(tenancy.Sender(user, admin) if user else None)

    yield act
    # An async test ran in a context of its own; a sync one set it here: clear it either way.
    tenancy.SENDER.set(None)


# --- sender, slug, store key -----------------------------------------------------------------


def test_sender_is_none_with_tenancy_off_even_with_a_user_id() -> None:
    assert tenancy.sender_of("alice", _settings()) is None
    assert tenancy.sender_of(None, _settings()) is None


@pytest.mark.parametrize("user_id", [None, ""])
def test_tenancy_on_without_user_id_is_rejected_forbidden(user_id: str | None) -> None:
    with pytest.raises(DockhandError) as info:
        tenancy.sender_of(user_id, _settings(tenancy="user"))
    assert info.value.status is Status.REJECTED
    assert info.value.code is ErrorCode.FORBIDDEN
    assert "user_id" in info.value.message


def test_admin_users_are_marked() -> None:
    settings = _settings(tenancy="user", admin_users=["root-ops"])
    assert tenancy.sender_of("alice", settings) == tenancy.Sender("alice", admin=False)
    assert tenancy.sender_of("root-ops", settings) == tenancy.Sender("root-ops", admin=True)


def test_admin_users_setting_is_a_comma_list(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKHAND_TENANCY", "user")
    monkeypatch.setenv("DOCKHAND_ADMIN_USERS", "ops, root ,")
    settings = Settings(host_id=HOST, docker_host=None)
    assert settings.tenancy == "user"
    assert settings.admin_users == ["ops", "root"]


def test_unknown_tenancy_mode_is_refused() -> None:
    with pytest.raises(ValueError, match="tenancy"):
        _settings(tenancy="project")


@pytest.mark.parametrize("user", ["alice", "Alice", "a.b", "a-b", "ü@example.com", "x" * 300, "@@@", "a b/c:d"])
def test_owner_slug_is_a_docker_name_part(user: str) -> None:
    slug = tenancy.owner_slug(user)
    assert re.fullmatch(r"[a-z0-9][a-z0-9-]{0,35}", slug), slug
    assert len(f"dockhand-{slug}") <= 128


def test_owner_slugs_tell_similar_users_apart() -> None:
    users = ["alice", "Alice", "a.b", "a-b", "a_b", "@@@", "###"]
    assert len({tenancy.owner_slug(u) for u in users}) == len(users)


def test_store_keys_are_scoped_per_owner_and_unambiguous() -> None:
    assert store_key(None, "1") == "1"
    assert store_key("alice", "1") != store_key("bob", "1")
    assert store_key("alice", "1") != "1"
    # An owner and an id containing the separator never produce another pair's key.
    assert store_key("a:b", "c") != store_key("a", "b:c")
    assert store_key("a", "1") != store_key("a:1", "")


def _result(command_id: str, status: Status = Status.SUCCEEDED) -> Result:
    now = utcnow()
    return Result(
        command_id=command_id,
        type="host.info",
        status=status,
        host_id=HOST,
        worker_id="w",
        started_at=now,
        finished_at=now,
        duration_ms=0.0,
    )


def test_store_keeps_scoped_keys_across_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "results.sqlite3"
    store = ResultStore(10, path)
    store.put(_result("1"), key=store_key("alice", "1"))
    store.close()
    reopened = ResultStore(10, path)
    assert reopened.get(store_key("alice", "1")) is not None
    assert reopened.get(store_key("bob", "1")) is None
    assert reopened.get("1") is None  # nor the unscoped id
    reopened.close()


# --- DockerOps with a fake daemon ------------------------------------------------------------


def _container(workspace_id: str, owner: str | None, *, host: str = HOST, managed: bool = True) -> dict[str, Any]:
    labels = {"dockhand.workspace.id": workspace_id, "dockhand.host": host}
    if managed:
        labels["dockhand.managed"] = "true"
    if owner is not None:
        labels["dockhand.owner"] = owner
    return {
        "Id": f"id-{workspace_id}",
        "Name": f"/dockhand-{workspace_id}",
        "Image": "sha256:1",
        "Created": "2026-01-01T00:00:00Z",
        "Config": {"Image": "busybox", "Labels": labels},
        "State": {"Status": "running", "Running": True, "StartedAt": "2026-01-01T00:00:01Z"},
        "NetworkSettings": {"Networks": {}, "Ports": {}},
        "Mounts": [],
    }


class FakeContainer:
    def __init__(self, docker: FakeDocker, ref: str) -> None:
        self.docker = docker
        self.ref = ref
        self.id = ref

    async def show(self) -> dict[str, Any]:
        for info in self.docker.containers_by_name.values():
            if self.ref in (info["Id"], info["Name"].lstrip("/")):
                return copy.deepcopy(info)
        raise DockerError(404, f"No such container: {self.ref}")

    async def _touch(self, **_: Any) -> None:
        self.docker.touched.append(self.ref)

    start = stop = restart = delete = _touch


class FakeContainers:
    def __init__(self, docker: FakeDocker) -> None:
        self.docker = docker

    def container(self, ref: str) -> FakeContainer:
        return FakeContainer(self.docker, ref)

    async def list(self, **params: Any) -> list[FakeContainer]:
        self.docker.list_filters.append(json.loads(params.get("filters") or "{}"))
        return [FakeContainer(self.docker, info["Id"]) for info in self.docker.containers_by_name.values()]


class FakeDocker:
    def __init__(self, *infos: dict[str, Any]) -> None:
        self.containers_by_name = {info["Name"].lstrip("/"): info for info in infos}
        self.touched: list[str] = []
        self.list_filters: list[dict[str, Any]] = []
        self.containers = FakeContainers(self)


def _ops(docker: FakeDocker, **overrides: Any) -> DockerOps:
    settings = _settings(**{"tenancy": "user", **overrides})
    return DockerOps(docker, settings, NAMES, Policy(settings, NAMES))  # type: ignore[arg-type]


async def test_find_workspace_of_another_owner_is_forbidden(as_sender: Any) -> None:
    docker = FakeDocker(_container("ws1", "alice"))
    ops = _ops(docker)
    as_sender("bob")
    with pytest.raises(DockhandError) as info:
        await ops.containers.find("ws1")
    assert info.value.code is ErrorCode.FORBIDDEN
    assert info.value.status is Status.FAILED
    assert "alice" not in info.value.message  # whose it is stays untold
    as_sender("alice")
    assert (await ops.containers.find("ws1")) is not None
    assert (await ops.workspaces.inspect("ws1")).owner == "alice"


async def test_unowned_workspace_is_only_for_admins_and_the_worker(as_sender: Any) -> None:
    ops = _ops(FakeDocker(_container("old", None)))
    assert (await ops.containers.find("old")) is not None  # no sender: the worker itself
    as_sender("alice")
    with pytest.raises(DockhandError, match="another owner"):
        await ops.containers.find("old")
    as_sender("ops", admin=True)
    assert (await ops.containers.find("old")) is not None


@pytest.mark.parametrize(
    "action",
    ["start", "stop", "restart", "remove", "exec"],
)
async def test_lifecycle_on_another_owners_workspace_touches_nothing(as_sender: Any, action: str) -> None:
    docker = FakeDocker(_container("ws1", "alice"))
    ops = _ops(docker)
    as_sender("bob")
    argument: Any = {
        "start": "ws1",
        "stop": WorkspaceStop(workspace_id="ws1"),
        "restart": WorkspaceStop(workspace_id="ws1"),
        "remove": WorkspaceRemove(workspace_id="ws1", force=True),
        "exec": WorkspaceExec(workspace_id="ws1", command=["true"]),
    }[action]
    with pytest.raises(DockhandError) as info:
        await getattr(ops.workspaces, action)(argument)
    assert info.value.code is ErrorCode.FORBIDDEN
    assert docker.touched == []


async def test_create_over_another_owners_workspace_is_forbidden_not_conflict(as_sender: Any) -> None:
    docker = FakeDocker(_container("ws1", "alice"))
    ops = _ops(docker)
    as_sender("bob")
    with pytest.raises(DockhandError) as info:
        await ops.workspaces.create(WorkspaceCreate(workspace_id="ws1", image="busybox"))
    assert info.value.code is ErrorCode.FORBIDDEN  # a conflict would tell bob the spec differs


async def test_list_is_filtered_by_owner_label(as_sender: Any) -> None:
    # The fake ignores filters (as a broken daemon would): the worker checks again itself.
    docker = FakeDocker(_container("a1", "alice"), _container("b1", "bob"), _container("u1", None))
    ops = _ops(docker)
    as_sender("bob")
    listed = await ops.workspaces.query(WorkspaceListQuery())
    assert [w.workspace_id for w in listed.workspaces] == ["b1"]
    assert "dockhand.owner=bob" in docker.list_filters[-1]["label"]
    as_sender("ops", admin=True)
    listed = await ops.workspaces.query(WorkspaceListQuery())
    assert [w.workspace_id for w in listed.workspaces] == ["a1", "b1", "u1"]
    assert not any(f.startswith("dockhand.owner=") for f in docker.list_filters[-1]["label"])


async def test_owns_needs_this_hosts_managed_labels(as_sender: Any) -> None:
    ops = _ops(FakeDocker())
    as_sender("alice")
    mine = {"dockhand.managed": "true", "dockhand.host": HOST, "dockhand.owner": "alice"}
    assert ops.owns(mine)
    assert not ops.owns({**mine, "dockhand.host": "host-b"})
    assert not ops.owns({"dockhand.owner": "alice"})  # an unmanaged container claiming alice
    assert not ops.owns({**mine, "dockhand.owner": "bob"})
    assert not ops.owns(None)


def test_created_objects_carry_the_owner_label(as_sender: Any) -> None:
    ops = _ops(FakeDocker())
    assert "dockhand.owner" not in ops.managed_labels()
    as_sender("alice")
    assert ops.managed_labels()["dockhand.owner"] == "alice"
    as_sender("ops", admin=True)
    assert ops.managed_labels()["dockhand.owner"] == "ops"


def test_each_owner_has_its_own_default_network(as_sender: Any) -> None:
    ops = _ops(FakeDocker(), default_network="dh")
    assert ops.default_network() == "dh"
    as_sender("alice")
    alice = ops.default_network()
    as_sender("bob")
    bob = ops.default_network()
    assert alice != bob
    assert alice.startswith("dh-alice-")
    NetworkEnsure(name=alice)  # a valid network name


async def test_network_of_another_owner_is_forbidden(as_sender: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    bobs = _container("b1", "bob")
    bobs["NetworkSettings"]["Networks"] = {"alice-net": {"IPAddress": "192.0.2.2"}}  # an admin put it there
    ops = _ops(FakeDocker(bobs))
    networks = {
        "alice-net": {
            "Id": "n1",
            "Name": "alice-net",
            "Driver": "bridge",
            "Containers": {},
            "Labels": {"dockhand.managed": "true", "dockhand.host": HOST, "dockhand.owner": "alice"},
        },
        "operator-net": {"Id": "n2", "Name": "operator-net", "Driver": "bridge", "Containers": {}, "Labels": {}},
    }

    async def inspect(name: str) -> dict[str, Any] | None:
        return networks.get(name)

    monkeypatch.setattr(ops.networks, "find", inspect)
    as_sender("bob")
    with pytest.raises(DockhandError) as info:
        await ops.networks.ensure(NetworkEnsure(name="alice-net"))
    assert info.value.code is ErrorCode.FORBIDDEN
    with pytest.raises(DockhandError) as info:
        await ops.networks.remove("alice-net")
    assert info.value.code is ErrorCode.FORBIDDEN
    with pytest.raises(DockhandError) as info:
        await ops.networks.disconnect("alice-net", "b1")  # (a real disconnect would fail on the fake)
    assert info.value.code is ErrorCode.FORBIDDEN
    # Not managed here: not anyone's (whether a workspace may join it is the network policy's call).
    assert (await ops.networks.ensure(NetworkEnsure(name="operator-net"))).created is False
    as_sender("alice")
    assert (await ops.networks.ensure(NetworkEnsure(name="alice-net"))).network_id == "n1"


# --- the dispatcher: user_id to sender, per-owner command ids ---------------------------------


class HostInfoOps:
    """Just enough of DockerOps for host.info; records who it ran for."""

    def __init__(self) -> None:
        self.calls: list[str | None] = []
        self.host = SimpleNamespace(info=self.host_info)  # where the handler looks: ops.host.info()

    async def host_info(self) -> HostInfo:
        sender = tenancy.current()
        self.calls.append(sender.user if sender else None)
        return HostInfo(host_id=HOST, docker_version="1", api_version="1", os="x", cpus=1, memory_bytes=1, containers=0)


def _dispatcher(**overrides: Any) -> tuple[Dispatcher, FakePublisher, HostInfoOps]:
    settings = _settings(**{"tenancy": "user", **overrides})
    publisher = FakePublisher()
    dispatcher = Dispatcher(settings, Topology(settings), publisher)  # type: ignore[arg-type]
    ops = HostInfoOps()
    dispatcher.ops = ops  # type: ignore[assignment]
    return dispatcher, publisher, ops


async def _send(dispatcher: Dispatcher, command_id: str, user_id: str | None) -> FakeMessage:
    body = {"command_id": command_id, "type": "host.info"}
    message = FakeMessage(body, f"{HOST}.host.info", user_id=user_id, correlation_id=command_id, message_id=command_id)
    dispatcher.submit(message.body, message)  # type: ignore[arg-type]
    await asyncio.wait_for(message.done.wait(), 5)
    return message


async def test_command_without_user_id_is_rejected_and_not_run() -> None:
    dispatcher, publisher, ops = _dispatcher()
    message = await _send(dispatcher, "c1", None)
    assert message.settled == ["reject"]
    assert ops.calls == []
    result = publisher.results()[-1]
    assert result["status"] == "rejected"
    assert result["error"]["code"] == "forbidden"
    assert "user_id" in result["error"]["message"]


async def test_command_ids_are_scoped_per_sender() -> None:
    dispatcher, publisher, ops = _dispatcher()
    await _send(dispatcher, "1", "alice")
    await _send(dispatcher, "1", "bob")  # bob's "1" is not alice's: it runs, for bob
    await _send(dispatcher, "1", "alice")  # alice's repeat is answered from the store
    assert ops.calls == ["alice", "bob"]
    assert [r["status"] for r in publisher.sent_bodies()] == ["succeeded"] * 3
    assert tenancy.current() is None  # nothing leaked into the caller's context


async def test_tenancy_off_ignores_user_id_and_shares_ids() -> None:
    dispatcher, _, ops = _dispatcher(tenancy="none")
    await _send(dispatcher, "1", "alice")
    await _send(dispatcher, "1", "bob")
    await _send(dispatcher, "1", None)
    assert ops.calls == [None]


def test_a_project_shared_volume_is_still_only_its_owners(as_sender: Any) -> None:
    ops = _ops(FakeDocker())
    volume = {
        "dockhand.managed": "true",
        "dockhand.host": HOST,
        "dockhand.workspace.id": "a1",
        "dockhand.volume.share": "project",
        "dockhand.project": "p",
        "dockhand.owner": "alice",
    }
    bobs = WorkspaceCreate(workspace_id="b1", image="busybox", project="p")
    as_sender("bob")
    with pytest.raises(DockhandError) as info:
        ops.volumes.check_access(volume, bobs, "volume v")
    assert info.value.code is ErrorCode.FORBIDDEN
    assert "another owner" in info.value.message
    as_sender("alice")
    ops.volumes.check_access(volume, WorkspaceCreate(workspace_id="a2", image="busybox", project="p"), "volume v")


def test_log_records_inside_a_command_name_its_sender(as_sender: Any) -> None:
    record = logging.makeLogRecord({"msg": "x"})
    ContextFilter(HOST).filter(record)
    assert not hasattr(record, "sender")
    as_sender("alice")
    ContextFilter(HOST).filter(record)
    assert record.sender == "alice"
