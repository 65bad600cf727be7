"""Workspace lifetime without a real daemon (issue 14): the spec hash of v1 creates is unchanged,
deadlines from labels and leases (the newest lease of this very container wins), the census that
refuses a create past DOCKHAND_MAX_WORKSPACES before any Docker call — on the in-memory Engine."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import pytest

from dockhand.schemas import ErrorCode, utcnow
from dockhand.schemas.commands import WorkspaceCreate, WorkspaceExtend, WorkspaceRemove
from dockhand.worker.docker import DockerOps, spec_hash
from dockhand.worker.docker.census import Census
from dockhand.worker.errors import DockhandError
from tests.fakes.docker_api import FakeDocker
from tests.fakes.engine_ops import IMAGE, ops_over


def _ops(fake: FakeDocker, **settings: Any) -> DockerOps:
    return ops_over(fake, **settings)


def _create(workspace_id: str = "ws1", **payload: Any) -> WorkspaceCreate:
    return WorkspaceCreate.model_validate({"workspace_id": workspace_id, "image": IMAGE, **payload})


def test_v1_creates_keep_their_spec_hash() -> None:
    # A workspace made before v1.1 is adopted by a re-sent create only if the hash is the same:
    # the new fields count only when set.
    plain = _create()
    assert spec_hash(plain) == spec_hash(_create(ttl_s=None, on_expiry="stop", egress=True))
    assert spec_hash(plain) != spec_hash(_create(ttl_s=60))
    assert spec_hash(plain) != spec_hash(_create(egress=False))


async def test_a_create_with_ttl_carries_its_deadline_and_result_shows_it(fake: FakeDocker) -> None:
    ops = _ops(fake)
    before = utcnow()
    made = await ops.workspaces.create(_create(ttl_s=60, on_expiry="remove"))
    assert made.expires_at is not None
    assert timedelta(seconds=59) < made.expires_at - before < timedelta(seconds=61)
    labels = fake.containers[made.container_id].config["Labels"]
    assert labels["dockhand.on-expiry"] == "remove"
    assert ops.leases.deadlines["ws1"].action == "remove"  # noted for the expiry loop at once
    plain = await ops.workspaces.create(_create("ws2"))
    assert plain.expires_at is None
    assert "ws2" not in ops.leases.deadlines


async def test_the_newest_lease_of_this_container_wins_after_a_rescan(fake: FakeDocker) -> None:
    ops = _ops(fake)
    made = await ops.workspaces.create(_create(ttl_s=600))
    first = await ops.workspaces.extend(_extend("ws1", 30))
    await asyncio.sleep(0.01)  # lease names count milliseconds
    second = await ops.workspaces.extend(_extend("ws1", 5))  # earlier: the newest lease still wins
    assert first.expires_at is not None
    assert second.expires_at is not None
    assert second.expires_at < first.expires_at < made.expires_at  # type: ignore[operator]
    leases = [v for v in fake.volumes.values() if v.labels.get("dockhand.lease.of") == "ws1"]
    assert len(leases) == 1  # the older one was removed
    # A new worker (no memory of the extends) reads the same deadline from Docker.
    fresh = _ops(fake)
    await fresh.leases.scan()
    assert fresh.leases.deadlines["ws1"].expires_at == second.expires_at
    # A lease of an earlier container of the same workspace id means nothing to a new one.
    await ops.workspaces.remove(WorkspaceRemove(workspace_id="ws1", force=True))
    assert not [v for v in fake.volumes.values() if v.labels.get("dockhand.lease.of") == "ws1"]
    fake.add_volume(
        "dockhand-lease-ws1-000000000000001",
        labels={
            "dockhand.managed": "true",
            "dockhand.host": "host-a",
            "dockhand.lease.of": "ws1",
            "dockhand.lease.container": "an-older-container",
            "dockhand.expires-at": "2000-01-01T00:00:00Z",
        },
    )
    again = await ops.workspaces.create(_create())
    await fresh.leases.scan()
    assert "ws1" not in fresh.leases.deadlines
    assert again.expires_at is None


def _extend(workspace_id: str, ttl_s: int) -> WorkspaceExtend:
    return WorkspaceExtend(workspace_id=workspace_id, ttl_s=ttl_s)


async def test_a_create_past_the_limit_is_capacity_before_any_docker_call(fake: FakeDocker) -> None:
    ops = _ops(fake, max_workspaces=2)
    ops.census.replace(set())
    await ops.workspaces.create(_create("ws1"))
    await ops.workspaces.create(_create("ws2"))
    requests = len(fake.requests)
    with pytest.raises(DockhandError) as refused:
        await ops.workspaces.create(_create("ws3"))
    assert refused.value.code is ErrorCode.CAPACITY
    assert refused.value.retryable is True
    assert len(fake.requests) == requests  # not one Docker call
    adopted = await ops.workspaces.create(_create("ws1"))  # an existing one takes no new place
    assert adopted.created is False
    await ops.workspaces.remove(WorkspaceRemove(workspace_id="ws1", force=True))
    assert (await ops.workspaces.create(_create("ws3"))).created is True


def test_two_creates_at_once_cannot_both_take_the_last_place() -> None:
    census = Census(limit=1, host_id="h")
    census.replace(set())
    with census.admit("a"), pytest.raises(DockhandError), census.admit("b"):
        pass
    assert census.count == 0
    with census.admit("a"):
        assert census.count == 1
