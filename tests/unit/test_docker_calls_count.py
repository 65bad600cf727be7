"""The Docker API calls each workspace command makes (issue 15, item 3), pinned: a change that adds
a call fails here. Counted on the in-memory Engine (tests/fakes/docker_api.py), which records every
HTTP request the real aiodocker client sends; tests/integration/test_docker_call_count.py counts
the same against dockerd.

With the event stream connected (``ops.watch(True)``, as the active worker runs), the worker
remembers what Docker never changes — a container's id, labels and mounts, a network's and an
image's inspect — and acts first where Docker's answer says enough (304 for a start of a running
container, 409 for a remove of a running one). The rest of this file checks that remembering
never weakens a check: a container replaced behind the cache, another sender, an alias made since.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable
from typing import Any

import pytest

from dockhand.schemas import ErrorCode
from dockhand.schemas.commands import (
    NetworkEnsure,
    WorkspaceCreate,
    WorkspaceExtend,
    WorkspaceRemove,
    WorkspaceStop,
)
from dockhand.worker import tenancy
from dockhand.worker.discovery import Discovery
from dockhand.worker.docker import DockerOps
from dockhand.worker.docker.calls import Remembered
from dockhand.worker.errors import DockhandError
from dockhand.worker.events import EventStream
from tests.fakes import Recorder
from tests.fakes.docker_api import FakeDocker
from tests.fakes.engine_ops import IMAGE, ops_over

MANAGED = {"dockhand.managed": "true", "dockhand.host": "host-a"}


def _ops(fake: FakeDocker, **settings: Any) -> DockerOps:
    return ops_over(fake, **{"docker_retry_attempts": 1, **settings})


async def _watched(fake: FakeDocker, **settings: Any) -> DockerOps:
    """Ops as the active worker has them: the event stream connected, the census and the
    deadlines read, one workspace made (the default network exists)."""
    ops = _ops(fake, **settings)
    ops.watch(True)
    ops.census.replace(set())
    await ops.leases.scan()
    await ops.workspaces.create(_create("w0"))
    return ops


def _create(workspace_id: str = "ws1", **payload: Any) -> WorkspaceCreate:
    return WorkspaceCreate.model_validate({"workspace_id": workspace_id, "image": IMAGE, **payload})


async def _calls(fake: FakeDocker, step: Awaitable[Any]) -> list[str]:
    """The routes of the Docker requests ``step`` makes."""
    sent = len(fake.requests)
    await step
    return [r.route for r in fake.requests[sent:]]


async def _refused(fake: FakeDocker, step: Awaitable[Any], code: ErrorCode) -> tuple[DockhandError, list[str]]:
    sent = len(fake.requests)
    with pytest.raises(DockhandError) as exc:
        await step
    assert exc.value.code is code, exc.value
    return exc.value, [r.route for r in fake.requests[sent:]]


def _event(kind: str, action: str, actor_id: str, **attributes: str) -> dict[str, Any]:
    return {"Type": kind, "Action": action, "Actor": {"ID": actor_id, "Attributes": attributes}, "timeNano": 1}


# --- the counts -----------------------------------------------------------------------------------

CREATE = ["container.list", "container.create", "container.inspect"]  # the alias check's list
CREATE_STARTED = ["container.list", "container.create", "container.start", "container.inspect"]


async def test_a_lifecycle_makes_one_call_per_step_beyond_the_inspects_its_results_need(fake: FakeDocker) -> None:
    ops = await _watched(fake)
    ws = ops.workspaces
    assert await _calls(fake, ws.create(_create(start=False))) == CREATE
    assert await _calls(fake, ws.start("ws1")) == ["container.start", "container.inspect"]
    assert await _calls(fake, ws.stop(WorkspaceStop(workspace_id="ws1"))) == ["container.stop", "container.inspect"]
    assert await _calls(fake, ws.remove(WorkspaceRemove(workspace_id="ws1"))) == ["container.delete"]
    assert fake.container_by_name("dockhand-ws1") is None


async def test_every_workspace_command_is_counted(fake: FakeDocker) -> None:
    ops = await _watched(fake)
    ws = ops.workspaces
    assert await _calls(fake, ws.create(_create())) == CREATE_STARTED
    assert await _calls(fake, ws.create(_create())) == ["container.inspect"]  # adopted
    assert await _calls(fake, ws.start("ws1")) == ["container.start", "container.inspect"]  # 304
    assert await _calls(fake, ws.restart(WorkspaceStop(workspace_id="ws1"))) == [
        "container.restart",
        "container.inspect",
    ]
    assert await _calls(fake, ws.inspect("ws1")) == ["container.inspect"]
    assert await _calls(fake, ws.stop(WorkspaceStop(workspace_id="ws1"))) == ["container.stop", "container.inspect"]
    assert await _calls(fake, ws.stop(WorkspaceStop(workspace_id="ws1"))) == ["container.stop", "container.inspect"]
    assert await _calls(fake, ws.start("ws1")) == ["container.start", "container.inspect"]
    assert await _calls(fake, ws.remove(WorkspaceRemove(workspace_id="ws1", force=True))) == ["container.delete"]
    assert await _calls(fake, ws.remove(WorkspaceRemove(workspace_id="ws1"))) == ["container.inspect"]  # absent
    assert await _calls(fake, ws.create(_create())) == CREATE_STARTED  # made again


async def test_creates_on_a_named_network_and_with_a_volume_are_counted(fake: FakeDocker) -> None:
    ops = await _watched(fake)
    ws = ops.workspaces
    assert await _calls(fake, ops.networks.ensure(NetworkEnsure(name="dh-n1"))) == [
        "network.inspect",
        "network.create",
    ]
    # Made since the last look: inspected once, then remembered (by name and id).
    assert await _calls(fake, ws.create(_create("ws2", network="dh-n1"))) == ["network.inspect", *CREATE_STARTED]
    assert await _calls(fake, ws.create(_create("ws3", network="dh-n1"))) == CREATE_STARTED
    volume = {"mounts": [{"source": "v4", "target": "/data"}]}
    # The default network was forgotten with dh-n1's create (any network made: all forgotten).
    assert await _calls(fake, ws.create(_create("ws4", **volume))) == [
        "volume.inspect",
        "network.inspect",
        "container.list",
        "volume.create",
        "volume.inspect",
        "container.create",
        "container.start",
        "container.inspect",
    ]
    assert await _calls(fake, ws.remove(WorkspaceRemove(workspace_id="ws4", force=True, remove_volumes=True))) == [
        "container.delete",
        "volume.inspect",
        "volume.delete",
    ]
    assert "v4" not in fake.volumes


async def test_without_the_event_stream_every_command_looks_first_as_before(fake: FakeDocker) -> None:
    """A worker whose event stream is down (or a standby) trusts nothing it remembers; only the
    aliases of a listed endpoint (checked against its id in the list itself) are reused."""
    ops = _ops(fake)
    ws = ops.workspaces
    await ws.create(_create("w0"))
    cold_create = ["container.inspect", "image.inspect", "network.inspect", "container.list"]
    assert await _calls(fake, ws.create(_create(start=False))) == [
        *cold_create,
        "container.create",
        "container.inspect",
    ]
    looked = ["container.inspect", "container.start", "container.inspect"]
    assert await _calls(fake, ws.start("ws1")) == looked
    assert await _calls(fake, ws.start("ws1")) == ["container.inspect"]  # running: as it is
    assert await _calls(fake, ws.stop(WorkspaceStop(workspace_id="ws1"))) == [
        "container.inspect",
        "container.stop",
        "container.inspect",
    ]
    assert await _calls(fake, ws.remove(WorkspaceRemove(workspace_id="ws1"))) == [
        "container.inspect",
        "container.delete",
        "volume.list",  # its leases: none known without a scan
    ]


# --- what the cache must never weaken -------------------------------------------------------------


@pytest.mark.parametrize("command", ["start", "stop", "restart", "remove", "remove_force"])
async def test_a_container_replaced_behind_the_cache_is_left_untouched(fake: FakeDocker, command: str) -> None:
    ops = await _watched(fake)
    made = await ops.workspaces.create(_create(start=command == "stop"))
    # Removed and made again under the same name, unmanaged, with no event heard (yet).
    del fake.containers[made.container_id]
    other = fake.add_container("dockhand-ws1", IMAGE, labels={"someone": "else"}, running=command != "start")
    steps = {
        "start": lambda: ops.workspaces.start("ws1"),
        "stop": lambda: ops.workspaces.stop(WorkspaceStop(workspace_id="ws1")),
        "restart": lambda: ops.workspaces.restart(WorkspaceStop(workspace_id="ws1")),
        "remove": lambda: ops.workspaces.remove(WorkspaceRemove(workspace_id="ws1")),
        "remove_force": lambda: ops.workspaces.remove(WorkspaceRemove(workspace_id="ws1", force=True)),
    }
    before = (other.status, other.started_at, other.finished_at)
    error, calls = await _refused(fake, steps[command](), ErrorCode.FORBIDDEN)
    assert "not a workspace managed by this host" in error.message
    assert calls[-1] == "container.inspect"  # the remembered id answered 404: looked up by name
    assert fake.containers.get(other.id) is other
    assert (other.status, other.started_at, other.finished_at) == before
    # Forgotten: the next command looks by name first, and is refused before any action.
    _, calls = await _refused(fake, steps[command](), ErrorCode.FORBIDDEN)
    assert calls == ["container.inspect"]


async def test_a_workspace_made_again_is_found_by_name(fake: FakeDocker) -> None:
    ops = await _watched(fake)
    made = await ops.workspaces.create(_create(start=False))
    del fake.containers[made.container_id]
    again = fake.add_container("dockhand-ws1", IMAGE, labels={**MANAGED, "dockhand.workspace.id": "ws1"}, running=False)
    calls = await _calls(fake, ops.workspaces.start("ws1"))
    assert calls == ["container.start", "container.inspect", "container.start", "container.inspect"]
    assert again.status == "running"


async def test_the_remembered_labels_are_checked_for_each_sender(fake: FakeDocker) -> None:
    ops = await _watched(fake, tenancy="user")
    try:
        tenancy.SENDER.set(tenancy.Sender("alice", admin=False))
        await ops.workspaces.create(_create(start=False))
        tenancy.SENDER.set(tenancy.Sender("bob", admin=False))
        for step in (
            ops.workspaces.start("ws1"),
            ops.workspaces.stop(WorkspaceStop(workspace_id="ws1")),
            ops.workspaces.restart(WorkspaceStop(workspace_id="ws1")),
            ops.workspaces.remove(WorkspaceRemove(workspace_id="ws1", force=True)),
        ):
            _, calls = await _refused(fake, step, ErrorCode.FORBIDDEN)
            assert calls == []  # refused on the remembered labels, before any Docker call
        assert fake.container_by_name("dockhand-ws1") is not None
        tenancy.SENDER.set(tenancy.Sender("alice", admin=False))
        assert (await ops.workspaces.start("ws1")).state == "running"
    finally:
        tenancy.SENDER.set(None)


async def test_a_remove_of_a_running_workspace_without_force_is_a_conflict_as_before(fake: FakeDocker) -> None:
    ops = await _watched(fake)
    await ops.workspaces.create(_create())
    error, calls = await _refused(fake, ops.workspaces.remove(WorkspaceRemove(workspace_id="ws1")), ErrorCode.CONFLICT)
    assert error.message == "workspace ws1 on host-a is running; stop it first or set force"
    assert calls == ["container.delete", "container.inspect"]  # Docker's 409, then the old check
    container = fake.container_by_name("dockhand-ws1")
    assert container is not None
    assert container.status == "running"


async def test_a_start_of_a_paused_workspace_leaves_it_paused_as_before(fake: FakeDocker) -> None:
    ops = await _watched(fake)
    made = await ops.workspaces.create(_create())
    fake.containers[made.container_id].status = "paused"
    calls = await _calls(fake, ops.workspaces.start("ws1"))
    assert calls == ["container.start", "container.inspect"]  # 409 (paused): looked, as it is
    assert fake.containers[made.container_id].status == "paused"
    assert (await ops.workspaces.inspect("ws1")).state == "paused"


@pytest.mark.parametrize("action", ["destroy", "rename"])
async def test_a_destroy_or_rename_event_forgets_the_container(fake: FakeDocker, action: str) -> None:
    ops = await _watched(fake)
    made = await ops.workspaces.create(_create(start=False))
    ops.saw(_event("container", action, made.container_id, **{"dockhand.workspace.id": "ws1", **MANAGED}))
    assert await _calls(fake, ops.workspaces.start("ws1")) == [
        "container.inspect",
        "container.start",
        "container.inspect",
    ]


async def test_events_and_gaps_keep_the_image_and_network_caches_current(fake: FakeDocker) -> None:
    ops = await _watched(fake)
    ws = ops.workspaces
    assert await _calls(fake, ws.create(_create("ws1"))) == CREATE_STARTED
    ops.saw(_event("image", "tag", "sha256:1", name=IMAGE))
    assert await _calls(fake, ws.create(_create("ws2"))) == ["image.inspect", *CREATE_STARTED]
    ops.saw(_event("network", "destroy", "n1", name="elsewhere", type="bridge"))
    assert await _calls(fake, ws.create(_create("ws3"))) == ["network.inspect", *CREATE_STARTED]
    ops.saw(_event("network", "connect", "n1", container="c1", name="elsewhere", type="bridge"))
    assert await _calls(fake, ws.create(_create("ws4"))) == CREATE_STARTED  # joins change nothing
    ops.watch(False)  # the stream is lost: nothing remembered is used
    assert await _calls(fake, ws.create(_create("ws5"))) == [
        "container.inspect",
        "image.inspect",
        "network.inspect",
        *CREATE_STARTED,
    ]
    ops.watch(True)  # reconnected: everything forgotten across the gap
    assert await _calls(fake, ws.start("ws5")) == ["container.inspect"]


async def test_an_alias_taken_since_the_last_look_is_seen(fake: FakeDocker) -> None:
    """A member's aliases are reused only for the endpoint they were read from: a reconnect
    (a new endpoint, with a new id) under another alias is inspected again."""
    ops = await _watched(fake)
    other = fake.add_container("someone", IMAGE, network="dh-default")
    net = fake.find_network("dh-default")
    other.endpoints[net.id] = {"Aliases": ["a1"]}
    other.ips[net.id] = "172.99.0.9"
    assert (await _refused(fake, ops.workspaces.create(_create("a1")), ErrorCode.FORBIDDEN))[1][-1] == (
        "container.inspect"
    )
    _, calls = await _refused(fake, ops.workspaces.create(_create("a1")), ErrorCode.FORBIDDEN)
    assert calls == ["container.list"]  # its aliases known for this endpoint
    docker = fake.client()
    await docker._query_json(f"networks/{net.id}/disconnect", method="POST", data={"Container": other.id})
    await docker._query_json(
        f"networks/{net.id}/connect",
        method="POST",
        data={"Container": other.id, "EndpointConfig": {"Aliases": ["a2"]}},
    )
    assert (await ops.workspaces.create(_create("a1"))).created is True
    error, calls = await _refused(fake, ops.workspaces.create(_create("a2")), ErrorCode.FORBIDDEN)
    assert "a2 already names container someone" in error.message
    assert fake.container_by_name("dockhand-a2") is None


async def test_a_create_the_census_does_not_know_finds_the_holder_of_the_name(fake: FakeDocker) -> None:
    """No inspect before the create when the census has no such workspace; a container holding
    the name anyway is found by the create's 409: refused (not managed) with nothing left
    behind, or adopted (the same workspace, made a moment ago) without anything made."""
    ops = await _watched(fake)
    fake.add_container("dockhand-ws9", IMAGE, labels={"someone": "else"}, network="dh-default")
    before = fake.snapshot()
    error, calls = await _refused(
        fake, ops.workspaces.create(_create("ws9", mounts=[{"source": "v9", "target": "/d"}])), ErrorCode.FORBIDDEN
    )
    assert "not a workspace managed by this host" in error.message
    assert calls[0] != "container.inspect"
    assert "container.create" in calls
    assert fake.snapshot() == before, fake.describe(fake.snapshot() ^ before)  # the volume made is removed

    made = await ops.workspaces.create(_create("ws8", mounts=[{"source": "v8", "target": "/d"}]))
    ops.census.discard("ws8")  # as if the census had not heard of it yet
    before = fake.snapshot()
    again = await ops.workspaces.create(_create("ws8", mounts=[{"source": "v8", "target": "/d"}]))
    assert (again.created, again.container_id) == (False, made.container_id)
    assert fake.snapshot() == before


async def test_a_remove_lists_leases_only_for_a_workspace_that_may_have_some(fake: FakeDocker) -> None:
    ops = await _watched(fake)
    await ops.workspaces.create(_create("ws1"))
    await ops.workspaces.create(_create("ws2"))
    await ops.workspaces.extend(_extend("ws2"))
    assert any(v.startswith("dockhand-lease-ws2-") for v in fake.volumes)
    calls = await _calls(fake, ops.workspaces.remove(WorkspaceRemove(workspace_id="ws2", force=True)))
    assert calls == ["container.delete", "volume.list", "volume.delete"]
    assert not any(v.startswith("dockhand-lease-") for v in fake.volumes)
    assert await _calls(fake, ops.workspaces.remove(WorkspaceRemove(workspace_id="ws1", force=True))) == [
        "container.delete"
    ]


def _extend(workspace_id: str) -> WorkspaceExtend:
    return WorkspaceExtend(workspace_id=workspace_id, ttl_s=3600)


# --- the cache itself -----------------------------------------------------------------------------


class _Ops:
    def __init__(self) -> None:
        self.watching = True
        self.listeners: list[Any] = []

    def on_event(self, listener: Any) -> None:
        self.listeners.append(listener)


def test_a_value_read_while_its_key_was_invalidated_is_not_stored() -> None:
    ops = _Ops()
    cache: Remembered[str, int] = Remembered(ops, 2, lambda c, e: c.drop(e["key"]))  # type: ignore[arg-type]
    token = cache.token()  # a Docker call begins ...
    ops.listeners[0]({"key": "a"})  # ... an event about "a" is read meanwhile ...
    cache.put("a", 1, token)  # ... its answer may predate the change: not kept
    cache.put("b", 2, token)  # another key is
    assert (cache.get("a"), cache.get("b")) == (None, 2)
    token = cache.token()
    ops.listeners[0](None)  # the stream reconnected: everything forgotten, in flight too
    cache.put("a", 1, token)
    assert (cache.get("a"), cache.get("b")) == (None, None)
    token = cache.token()
    for key, value in (("a", 1), ("b", 2), ("c", 3)):
        cache.put(key, value, token)
    assert [k for k, _ in cache.items()] == ["b", "c"]  # bounded, least recently used out
    ops.watching = False
    assert cache.get("c") is None
    cache.put("d", 4, cache.token())
    ops.watching = True
    assert cache.get("d") is None


def test_forgetting_more_keys_than_it_holds_refuses_every_older_value() -> None:
    ops = _Ops()
    cache: Remembered[str, int] = Remembered(ops, 2, lambda c, e: None)  # type: ignore[arg-type]
    token = cache.token()
    for key in ("a", "b", "c"):  # "a"'s drop is forgotten: no longer known which keys changed
        cache.drop(key)
    cache.put("a", 1, token)
    assert cache.get("a") is None
    cache.put("a", 1, cache.token())
    assert cache.get("a") == 1


async def test_a_network_removed_unheard_fails_one_create_and_is_looked_at_again(fake: FakeDocker) -> None:
    """The one cost of remembering a network: removed in the moment before its destroy event is
    read, a create fails to start (and is undone); the next one looks again."""
    ops = await _watched(fake)
    await ops.workspaces.remove(WorkspaceRemove(workspace_id="w0", force=True))
    del fake.networks[fake.find_network("dh-default").id]  # no event
    before = fake.snapshot()
    error, _ = await _refused(fake, ops.workspaces.create(_create("ws1")), ErrorCode.NOT_FOUND)
    assert "cannot start" in error.message
    assert fake.snapshot() == before
    calls = await _calls(fake, ops.workspaces.create(_create("ws1")))
    assert calls[:3] == ["network.inspect", "network.inspect", "network.create"]
    assert fake.container_by_name("dockhand-ws1") is not None


# --- the event stream's hooks (worker/events.py) --------------------------------------------------


class _Stream:
    """``/events`` as aiodocker's ``_query`` gives it: lines, then the end of the stream."""

    def __init__(self, lines: list[bytes], before_each: Any) -> None:
        self.lines, self.before_each = lines, before_each

    async def __aenter__(self) -> _Stream:
        return self

    async def __aexit__(self, *_: object) -> None:
        return None

    @property
    def content(self) -> Any:
        async def read() -> Any:
            for index, line in enumerate(self.lines):
                self.before_each(index)
                yield line

        return read()

    def close(self) -> None:
        return None


async def test_the_event_stream_feeds_the_caches_and_turns_them_off_when_it_ends(fake: FakeDocker) -> None:
    ops = await _watched(fake)
    ops.watch(False)
    stream = EventStream(ops, ops.settings, Discovery(ops, Recorder()), Recorder())
    image = {"Type": "image", "Action": "tag", "Actor": {"ID": "sha256:1", "Attributes": {}}, "timeNano": 5}
    lines = [b"\n", json.dumps(image).encode() + b"\n", b"\n"]
    asked: list[dict[str, Any]] = []
    remembered: list[bool] = []

    def before_each(index: int) -> None:
        if index == 0:  # connected: a create's image inspect is remembered now ...
            ops.images.facts.put(IMAGE, {"Id": "sha256:1"}, ops.images.facts.token())
        remembered.append(ops.images.facts.get(IMAGE) is not None)  # ... until the image event

    def query(path: str, **kwargs: Any) -> _Stream:
        asked.append(kwargs["params"])
        return _Stream(lines, before_each)

    await ops.images.ensure(IMAGE, "never", None)  # not remembered: the stream is not connected
    assert ops.images.facts.get(IMAGE) is None
    ops.docker._query = query  # type: ignore[method-assign]
    with pytest.raises(ConnectionError):
        await stream._read_once()
    assert json.loads(asked[0]["filters"]) == {"type": ["container", "network", "image"]}
    assert remembered == [True, True, False]
    assert ops.watching is False  # ended: nothing remembered is used
    queued = [stream.queue.get_nowait() for _ in range(stream.queue.qsize())]
    assert all(not isinstance(item, tuple) for item in queued)  # the image event is not published
