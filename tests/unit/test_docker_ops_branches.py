"""Branches of the Docker operations that only the integration suite reached before (issue 16):
adopting an existing workspace, the create race (409 on the container name), ``forbidden`` on
objects this host does not manage, and undoing a half-made create — against the in-memory
Docker Engine (tests/fakes/docker_api.py), through the real aiodocker client.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from dockhand.schemas import ErrorCode
from dockhand.schemas.commands import (
    NetworkEnsure,
    WorkspaceCreate,
    WorkspaceExec,
    WorkspaceRemove,
    WorkspaceStop,
)
from dockhand.worker.docker import DockerOps
from dockhand.worker.errors import DockhandError
from tests.fakes.docker_api import FakeDocker
from tests.fakes.engine_ops import IMAGE, ops_over

MANAGED = {"dockhand.managed": "true", "dockhand.host": "host-a"}


def _ops(fake: FakeDocker) -> DockerOps:
    return ops_over(fake, docker_retry_attempts=1)  # each injected fault is answered once: no retries to exhaust


def _create(**payload: Any) -> WorkspaceCreate:
    body = {"workspace_id": "ws1", "image": IMAGE, "network": "dh-new", "mounts": [{"source": "v1", "target": "/a"}]}
    return WorkspaceCreate.model_validate({**body, **payload})


async def _refused(call: Awaitable[Any], code: ErrorCode) -> DockhandError:
    with pytest.raises(DockhandError) as exc:
        await call
    assert exc.value.code is code, exc.value
    return exc.value


def _before_container_create(
    ops: DockerOps, monkeypatch: pytest.MonkeyPatch, step: Callable[[], Awaitable[Any]]
) -> None:
    """Run ``step`` just before ``ops`` sends its container create: the other side of a race."""
    real_call = ops.call

    async def call(operation: str, fn: Any, **kwargs: Any) -> Any:
        if operation == "container.create":
            await step()
        return await real_call(operation, fn, **kwargs)

    monkeypatch.setattr(ops, "call", call)


# --- adopt ------------------------------------------------------------------------------------


async def test_a_repeated_create_adopts_the_workspace_and_makes_nothing(fake: FakeDocker) -> None:
    ops = _ops(fake)
    made = await ops.workspaces.create(_create())
    assert made.created is True
    assert made.state == "running"
    before, sent = fake.snapshot(), len(fake.requests)
    again = await ops.workspaces.create(_create())
    assert again.created is False
    assert again.container_id == made.container_id
    assert fake.snapshot() == before
    assert not [r for r in fake.requests[sent:] if r.method != "GET"]


async def test_adopting_a_stopped_workspace_starts_it(fake: FakeDocker) -> None:
    ops = _ops(fake)
    made = await ops.workspaces.create(_create(start=False))
    assert made.state == "created"
    adopted = await ops.workspaces.create(_create())  # start is not part of the spec
    assert adopted.created is False
    assert adopted.state == "running"
    assert adopted.container_id == made.container_id


async def test_a_create_with_another_spec_is_a_conflict_and_changes_nothing(fake: FakeDocker) -> None:
    ops = _ops(fake)
    await ops.workspaces.create(_create())
    before = fake.snapshot()
    error = await _refused(ops.workspaces.create(_create(env={"A": "1"})), ErrorCode.CONFLICT)
    assert "different spec" in error.message
    assert fake.snapshot() == before


# --- the create race: the container name taken between the check and the create ---------------


async def test_losing_the_race_to_the_same_spec_adopts_the_winner(
    fake: FakeDocker, monkeypatch: pytest.MonkeyPatch
) -> None:
    ops, rival = _ops(fake), _ops(fake)
    won: list[str] = []

    async def rival_creates() -> None:
        if not won:
            won.append((await rival.workspaces.create(_create())).container_id)

    _before_container_create(ops, monkeypatch, rival_creates)
    adopted = await ops.workspaces.create(_create())
    assert adopted.created is False
    assert [adopted.container_id] == won
    assert any(r.route == "container.create" and r.status == 409 for r in fake.requests)
    # What this create made (network, volume) is the winner's too: kept.
    container = fake.container_by_name("dockhand-ws1")
    assert container is not None
    assert container.running
    assert "v1" in fake.volumes
    assert any(n.name == "dh-new" for n in fake.networks.values())


async def test_losing_the_race_to_another_spec_is_a_conflict_and_keeps_the_winner(
    fake: FakeDocker, monkeypatch: pytest.MonkeyPatch
) -> None:
    ops, rival = _ops(fake), _ops(fake)

    async def rival_creates() -> None:
        if fake.container_by_name("dockhand-ws1") is None:
            await rival.workspaces.create(_create(env={"B": "2"}))

    _before_container_create(ops, monkeypatch, rival_creates)
    await _refused(ops.workspaces.create(_create()), ErrorCode.CONFLICT)
    winner = fake.container_by_name("dockhand-ws1")
    assert winner is not None
    assert winner.running
    assert "v1" in fake.volumes  # the winner mounts it: not undone


async def test_losing_the_race_to_an_unmanaged_container_is_forbidden_and_undoes_the_rest(
    fake: FakeDocker, monkeypatch: pytest.MonkeyPatch
) -> None:
    ops = _ops(fake)
    before = fake.snapshot()
    squatter: list[str] = []

    async def someone_else_creates() -> None:
        if not squatter:
            squatter.append(fake.add_container("dockhand-ws1", IMAGE).id)

    _before_container_create(ops, monkeypatch, someone_else_creates)
    error = await _refused(ops.workspaces.create(_create()), ErrorCode.FORBIDDEN)
    assert "not a workspace managed by this host" in error.message
    # The network and volume this create made are gone again; only the squatter is new.
    assert fake.snapshot() - before == {("container", squatter[0])}, fake.describe(fake.snapshot() - before)


# --- forbidden: objects this host does not manage --------------------------------------------


async def test_an_unmanaged_container_under_the_name_is_never_touched(fake: FakeDocker) -> None:
    ops = _ops(fake)
    fake.add_container("dockhand-ws1", IMAGE, labels={"dockhand.managed": "true", "dockhand.host": "host-b"})
    before = fake.snapshot()
    for attempt in (
        ops.workspaces.create(_create()),
        ops.workspaces.inspect("ws1"),
        ops.workspaces.stop(WorkspaceStop(workspace_id="ws1")),
        ops.workspaces.remove(WorkspaceRemove(workspace_id="ws1", force=True)),
        ops.workspaces.exec(WorkspaceExec(workspace_id="ws1", command=["true"])),
    ):
        await _refused(attempt, ErrorCode.FORBIDDEN)
    assert fake.snapshot() == before
    assert not [r for r in fake.requests if r.method in {"POST", "DELETE", "PUT"}]


async def test_an_unmanaged_network_is_neither_removed_nor_joined(fake: FakeDocker) -> None:
    ops = _ops(fake)
    fake.add_network("theirs")
    await ops.workspaces.create(_create(network=None, mounts=[]))
    before = fake.snapshot()
    error = await _refused(ops.networks.remove("theirs"), ErrorCode.FORBIDDEN)
    assert "not managed by this host" in error.message
    error = await _refused(ops.networks.connect("theirs", "ws1", []), ErrorCode.FORBIDDEN)
    assert "DOCKHAND_ALLOWED_NETWORKS" in error.message
    error = await _refused(ops.workspaces.create(_create(workspace_id="ws2", network="theirs")), ErrorCode.FORBIDDEN)
    assert fake.snapshot() == before
    # ensure names it as it is, without claiming it
    ensured = await ops.networks.ensure(NetworkEnsure(name="theirs"))
    assert ensured.created is False
    assert not any(n.labels for n in fake.networks.values() if n.name == "theirs")


async def test_an_unmanaged_volume_is_not_mounted_and_nothing_is_made(fake: FakeDocker) -> None:
    ops = _ops(fake)
    fake.add_volume("v1")
    before = fake.snapshot()
    error = await _refused(ops.workspaces.create(_create()), ErrorCode.FORBIDDEN)
    assert error.message == "volume v1 on host-a exists and is not managed by this host"
    assert fake.snapshot() == before
    assert not [r for r in fake.requests if r.route.endswith(".create")]


async def test_remove_volumes_keeps_a_volume_the_workspace_did_not_make(fake: FakeDocker) -> None:
    ops = _ops(fake)
    fake.add_volume("shared", {**MANAGED, "dockhand.workspace.id": "ws0", "dockhand.volume.share": "project"})
    fake.volumes["shared"].labels["dockhand.project"] = "p"
    mounts = [{"source": "v1", "target": "/a"}, {"source": "shared", "target": "/s"}]
    await ops.workspaces.create(_create(project="p", mounts=mounts))
    removed = await ops.workspaces.remove(WorkspaceRemove(workspace_id="ws1", force=True, remove_volumes=True))
    assert removed.removed is True
    assert "v1" not in fake.volumes  # its own
    assert "shared" in fake.volumes  # another workspace's, shared with the project


# --- undo of a half-made create ----------------------------------------------------------------


async def test_a_failed_start_removes_container_volume_and_network(fake: FakeDocker) -> None:
    ops = _ops(fake)
    before = fake.snapshot()
    fake.fail_next("container.start", 500, "start refused for the test")
    error = await _refused(ops.workspaces.create(_create()), ErrorCode.INVALID_COMMAND)
    assert "Docker refused to start it" in error.message
    assert fake.snapshot() == before, fake.describe(fake.snapshot() - before)
    routes = [r.route for r in fake.requests]
    assert routes.index("container.delete") < routes.index("volume.delete") < routes.index("network.delete")


async def test_an_undo_that_fails_says_what_it_left_and_raises_the_original_error(
    fake: FakeDocker, caplog: pytest.LogCaptureFixture
) -> None:
    ops = _ops(fake)
    fake.fail_next("container.start", 500, "start refused for the test")
    fake.fail_next("container.delete", 500, "delete refused too")
    with caplog.at_level(logging.WARNING, logger="dockhand.docker"):
        error = await _refused(ops.workspaces.create(_create()), ErrorCode.INVALID_COMMAND)
    assert "start refused for the test" in error.message
    left = [r.getMessage() for r in caplog.records if "left" in r.getMessage()]
    assert len(left) == 1
    assert "container " in left[0]
    assert "volume v1 (conflict)" in left[0]  # the container still mounts it
    assert fake.container_by_name("dockhand-ws1") is not None
    assert "v1" in fake.volumes


async def test_an_undo_keeps_a_network_the_create_did_not_make(fake: FakeDocker) -> None:
    ops = _ops(fake)
    network = fake.add_network("dh-new", labels=dict(MANAGED))
    fake.fail_next("container.create", 500, "create refused for the test")
    await _refused(ops.workspaces.create(_create()), ErrorCode.INVALID_COMMAND)
    assert network.id in fake.networks
    assert "v1" not in fake.volumes  # made by this create: removed
