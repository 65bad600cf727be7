"""A create is all or nothing: what it made is removed when a later step fails (issue 10).

Against the in-memory Docker API (tests/fakes/docker_api.py), so each failure point can be
hit exactly; the same outcomes are checked on the real daemon in
tests/integration/test_containment_mounts_networks.py.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from dockhand.schemas import ErrorCode
from dockhand.schemas.commands import WorkspaceCreate, WorkspaceStop
from dockhand.worker.docker import DockerOps
from dockhand.worker.errors import DockhandError
from tests.fakes.docker_api import FakeDocker
from tests.fakes.engine_ops import IMAGE, ops_over


def _ops(fake: FakeDocker, tmp_path: Path) -> DockerOps:
    # The faults below are answered once: no retries to exhaust.
    return ops_over(fake, allowed_bind_roots=[str(tmp_path)], docker_retry_attempts=1)


def _create(**payload: Any) -> WorkspaceCreate:
    body = {
        "workspace_id": "ws1",
        "image": IMAGE,
        "network": "dh-new",
        "mounts": [{"source": "v1", "target": "/a"}, {"source": "v2", "target": "/b"}],
        **payload,
    }
    return WorkspaceCreate.model_validate(body)


async def _fails(fake: FakeDocker, ops: DockerOps, payload: WorkspaceCreate, code: ErrorCode) -> DockhandError:
    before = fake.snapshot()
    with pytest.raises(DockhandError) as exc:
        await ops.workspaces.create(payload)
    assert exc.value.code is code, exc.value
    assert fake.snapshot() == before, fake.describe(fake.snapshot() - before)
    return exc.value


@pytest.mark.parametrize("status", [400, 500])
async def test_a_refused_container_create_removes_the_network_and_volumes(
    fake: FakeDocker, tmp_path: Path, status: int
) -> None:
    fake.fail_next("container.create", status, "refused for the test")
    error = await _fails(fake, _ops(fake, tmp_path), _create(), ErrorCode.INVALID_COMMAND)
    assert "refused for the test" in error.message


async def test_a_failing_second_volume_removes_the_first(
    fake: FakeDocker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ops = _ops(fake, tmp_path)
    real_call = ops.call
    creates: list[str] = []

    async def call(operation: str, fn: Any, **kwargs: Any) -> Any:
        if operation == "volume.create":
            creates.append(kwargs["subject"])
            if len(creates) == 2:
                raise DockhandError(ErrorCode.DOCKER_UNAVAILABLE, "daemon went away", retryable=True)
        return await real_call(operation, fn, **kwargs)

    monkeypatch.setattr(ops, "call", call)
    await _fails(fake, ops, _create(), ErrorCode.DOCKER_UNAVAILABLE)
    assert len(creates) == 2


async def test_a_container_that_cannot_start_is_removed_with_what_came_with_it(
    fake: FakeDocker, tmp_path: Path
) -> None:
    error = await _fails(fake, _ops(fake, tmp_path), _create(user="nosuchuser"), ErrorCode.INVALID_COMMAND)
    assert "nosuchuser" in error.message


async def test_a_forbidden_second_mount_makes_nothing(fake: FakeDocker, tmp_path: Path) -> None:
    fake.add_volume("v2", {"dockhand.managed": "true", "dockhand.host": "host-a", "dockhand.workspace.id": "other"})
    await _fails(fake, _ops(fake, tmp_path), _create(), ErrorCode.FORBIDDEN)
    assert not any(r.route.endswith(".create") for r in fake.requests)


async def test_an_adopted_leftover_that_cannot_start_is_kept(fake: FakeDocker, tmp_path: Path) -> None:
    ops = _ops(fake, tmp_path)
    leftover = _create(user="nosuchuser", start=False)
    made = await ops.workspaces.create(leftover)
    assert made.state == "created"
    before = fake.snapshot()
    for attempt in (
        ops.workspaces.create(_create(user="nosuchuser")),
        ops.workspaces.start("ws1"),
        ops.workspaces.restart(WorkspaceStop(workspace_id="ws1")),
    ):
        with pytest.raises(DockhandError) as exc:
            await attempt
        assert exc.value.code is ErrorCode.INVALID_COMMAND, exc.value
    assert fake.snapshot() == before


async def test_an_existing_network_is_not_removed(fake: FakeDocker, tmp_path: Path) -> None:
    fake.add_network("dh-new", labels={"dockhand.managed": "true", "dockhand.host": "host-a"})
    fake.fail_next("container.create", 400, "nope")
    await _fails(fake, _ops(fake, tmp_path), _create(), ErrorCode.INVALID_COMMAND)


# --- binds against the live mounts of the host ------------------------------------------------


def _bind_create(workspace_id: str, source: Path, *, read_only: bool = False) -> WorkspaceCreate:
    mount = {"type": "bind", "source": str(source), "target": "/h", "read_only": read_only}
    return WorkspaceCreate.model_validate({"workspace_id": workspace_id, "image": IMAGE, "mounts": [mount]})


async def test_binds_nesting_with_a_live_workspace_are_forbidden(fake: FakeDocker, tmp_path: Path) -> None:
    (tmp_path / "a" / "b").mkdir(parents=True)
    fake.host_paths.add(str(tmp_path))
    ops = _ops(fake, tmp_path)
    await ops.workspaces.create(_bind_create("ws1", tmp_path / "a", read_only=False))
    for source, read_only in ((tmp_path / "a" / "b", True), (tmp_path, True), (tmp_path / "a" / "b", False)):
        error = await _fails(fake, ops, _bind_create("ws2", source, read_only=read_only), ErrorCode.FORBIDDEN)
        assert "nests with" in error.message
    await ops.workspaces.create(_bind_create("ws3", tmp_path / "a", read_only=True))  # the same source


async def test_binds_of_containers_not_made_by_dockhand_do_not_count(fake: FakeDocker, tmp_path: Path) -> None:
    (tmp_path / "c").mkdir()
    fake.host_paths.add(str(tmp_path))
    agent = fake.add_container("agent", IMAGE)
    agent.mounts = [{"Type": "bind", "Source": "/", "Destination": "/rootfs", "RW": False}]
    await _ops(fake, tmp_path).workspaces.create(_bind_create("ws1", tmp_path / "c"))


async def test_concurrent_nesting_creates_cannot_both_pass(fake: FakeDocker, tmp_path: Path) -> None:
    (tmp_path / "a" / "b").mkdir(parents=True)
    fake.host_paths.add(str(tmp_path))
    ops = _ops(fake, tmp_path)
    outcomes = await asyncio.gather(
        ops.workspaces.create(_bind_create("ws1", tmp_path / "a")),
        ops.workspaces.create(_bind_create("ws2", tmp_path / "a" / "b")),
        return_exceptions=True,
    )
    errors = [o for o in outcomes if isinstance(o, BaseException)]
    assert len(errors) == 1, outcomes
    assert isinstance(errors[0], DockhandError)
    assert errors[0].code is ErrorCode.FORBIDDEN
    assert len([c for c in fake.containers.values() if c.name.startswith("dockhand-")]) == 1


async def test_a_start_that_misses_what_the_container_needs_says_so(fake: FakeDocker, tmp_path: Path) -> None:
    # Docker answers 404 on start when, say, the container's network is gone: the workspace
    # exists, so "workspace ws1 ... not found" would send the reader the wrong way.
    ops = _ops(fake, tmp_path)
    await ops.workspaces.create(_create(start=False))
    fake.fail_next("container.start", 404, "network dh-new not found")
    with pytest.raises(DockhandError) as exc:
        await ops.workspaces.start("ws1")
    assert exc.value.code is ErrorCode.NOT_FOUND
    assert exc.value.message == "workspace ws1 on host-a cannot start: network dh-new not found"
