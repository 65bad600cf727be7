"""dockhand.client without a broker: URL lists, command bodies, forward-compatible parsing of
results and events, and the DiscoveryView / HostsView state logic fed by hand (a fake client
answers ``discovery.list``). The same paths against the real worker: tests/integration/test_client.py
and test_views.py."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from dockhand.amqp import UrlError, split_urls
from dockhand.client import (
    Client,
    CommandRejected,
    DiscoveryView,
    HostState,
    HostsView,
    OtherEvent,
    ServiceChange,
    bindings,
    expires_at,
    parse_event,
    parse_result,
)
from dockhand.client._parse import _lenient
from dockhand.client.errors import DockhandError
from dockhand.schemas import ContainerEvent, DiscoveryEvent, DiscoverySnapshot, Heartbeat, Result, Service
from dockhand.schemas.commands import ImagePull, RegistryAuth
from dockhand.schemas.events import WorkspaceExpired
from dockhand.schemas.results import ServiceList

NOW = datetime(2026, 1, 1, tzinfo=UTC)

# --- broker URL lists ---------------------------------------------------------------------------


def test_split_urls_takes_a_comma_separated_list() -> None:
    assert split_urls("amqp://a:5672/, amqps://u:p@b:5671/vh") == ["amqp://a:5672/", "amqps://u:p@b:5671/vh"]
    assert split_urls("amqp://guest:guest@localhost:5672/") == ["amqp://guest:guest@localhost:5672/"]


def test_split_urls_expands_the_short_form_with_shared_credentials_and_vhost() -> None:
    assert split_urls("amqp://u:p@h1:5701,h2:5702/vh") == ["amqp://u:p@h1:5701/vh", "amqp://u:p@h2:5702/vh"]
    assert split_urls("amqp://h1,h2,h3/") == ["amqp://h1/", "amqp://h2/", "amqp://h3/"]


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("", "no broker URL"),
        (" , ", "no broker URL"),
        ("amqp://a/,,amqp://b/", "empty entry"),
        ("h1:5672", "not an amqp:// or amqps:// URL"),
        ("http://a/", "scheme must be amqp"),
        ("amqp://a:notaport/", "amqp://a:notaport/"),
    ],
)
def test_split_urls_refuses_what_does_not_parse(value: str, message: str) -> None:
    with pytest.raises(UrlError, match=message):
        split_urls(value)


def test_split_urls_masks_the_password_in_errors() -> None:
    with pytest.raises(UrlError) as caught:
        split_urls("ftp://user:hunter2@a/")
    assert "hunter2" not in str(caught.value)


def test_the_client_takes_the_list_in_either_form() -> None:
    assert Client("amqp://u:p@h1:5701,h2:5702/vh").urls == ["amqp://u:p@h1:5701/vh", "amqp://u:p@h2:5702/vh"]
    assert Client(["amqp://a/", "amqp://b/,amqp://c/"]).urls == ["amqp://a/", "amqp://b/", "amqp://c/"]
    assert Client("amqp://alice:pw@a/").user_id == "alice"  # the sender RabbitMQ checks with tenancy on


# --- command bodies -----------------------------------------------------------------------------


def test_command_body_is_validated_before_anything_is_sent() -> None:
    dh = Client()
    with pytest.raises(CommandRejected) as unknown:
        dh.command("workspace.teleport")
    assert (unknown.value.code, unknown.value.status, unknown.value.result) == ("unknown_type", "rejected", None)
    with pytest.raises(CommandRejected) as invalid:
        dh.command("workspace.create", {"workspace_id": "Bad Id", "image": "busybox"}, command_id="c-1")
    assert invalid.value.code == "invalid_command"
    assert invalid.value.command_id == "c-1"
    assert "workspace_id" in str(invalid.value)
    with pytest.raises(CommandRejected, match="unknown field"):
        dh.command("workspace.inspect", {"workspace_id": "ws1", "colour": "red"})


def test_command_body_carries_the_given_id_and_a_fresh_one_otherwise() -> None:
    dh = Client()
    body = dh.command("workspace.inspect", {"workspace_id": "ws1"}, command_id="my-id")
    assert body == {"command_id": "my-id", "type": "workspace.inspect", "payload": {"workspace_id": "ws1"}}
    first, second = dh.command("host.info"), dh.command("host.info")
    assert first["command_id"] != second["command_id"]
    assert "payload" not in first


def test_expires_at_from_a_deadline() -> None:
    before = datetime.now(UTC)
    body = Client().command("host.info", deadline=30)
    when = datetime.fromisoformat(body["expires_at"].replace("Z", "+00:00"))
    assert body["expires_at"].endswith("Z")
    assert before + timedelta(seconds=29) < when < datetime.now(UTC) + timedelta(seconds=31)
    at = datetime(2030, 5, 6, 7, 8, 9, tzinfo=UTC)
    assert Client().command("host.info", deadline=at)["expires_at"] == "2030-05-06T07:08:09Z"
    assert expires_at(None) is None
    assert expires_at(at) is at
    span = expires_at(timedelta(minutes=2))
    assert span is not None
    assert abs((span - datetime.now(UTC)).total_seconds() - 120) < 2


def test_a_registry_password_is_sent_as_given_not_masked() -> None:
    dh = Client()
    secret = "s3cret-pw"
    as_dict = dh.command("image.pull", {"image": "busybox", "registry_auth": {"username": "u", "password": secret}})
    auth = RegistryAuth(username="u", password=secret)  # type: ignore[arg-type]
    as_model = dh.command("image.pull", ImagePull(image="busybox", registry_auth=auth))
    for body in (as_dict, as_model):
        assert body["payload"]["registry_auth"]["password"] == secret
        assert "**" not in json.dumps(body)


# --- forward-compatible parsing -----------------------------------------------------------------


def result_body(**extra: Any) -> dict[str, Any]:
    return {
        "command_id": "c1",
        "type": "workspace.inspect",
        "status": "failed",
        "host_id": "h1",
        "worker_id": "h1-w",
        "error": {"code": "not_found", "message": "no such workspace", "retryable": False},
        "started_at": "2026-01-01T00:00:00Z",
        "finished_at": "2026-01-01T00:00:01Z",
        "duration_ms": 1000.0,
        **extra,
    }


def test_lenient_ignores_fields_a_newer_worker_adds_at_any_depth() -> None:
    data = result_body(shard="eu-1")
    data["error"]["hint"] = "try another host"
    result = _lenient(Result, data)
    assert result.command_id == "c1"
    assert result.error is not None
    assert result.error.code == "not_found"
    assert parse_result(json.dumps(result_body(new_field=1)).encode()).status == "failed"


def test_lenient_still_refuses_what_is_wrong() -> None:
    data = result_body(extra_one=1)
    del data["host_id"]
    with pytest.raises(ValueError, match="host_id"):
        _lenient(Result, data)


def service(cid: str, domain: str | None = None, ip: str = "172.20.0.2") -> Service:
    return Service(
        container_id=cid,
        container_name=f"dockhand-{cid}",
        domain=domain or f"{cid}.example.test",
        port=8080,
        networks={"net": ip},
    )


def discovery(kind: str, svc: Service, seq: int | None, epoch: str | None = "e1", host: str = "h1") -> DiscoveryEvent:
    return DiscoveryEvent(
        event_id=f"{kind}-{seq}",
        host_id=host,
        type=kind,
        time=NOW,
        service=svc,
        seq=seq,
        epoch=epoch,  # type: ignore[arg-type]
    )


def snapshot(services: list[Service], seq: int | None, epoch: str | None = "e1", host: str = "h1") -> DiscoverySnapshot:
    return DiscoverySnapshot(
        event_id=f"snap-{seq}", host_id=host, time=NOW, services=services, reason="periodic", seq=seq, epoch=epoch
    )


def wire(model: Any) -> bytes:
    return model.model_dump_json().encode()


def test_parse_event_types_each_family_by_routing_key() -> None:
    container = {
        "event_id": "e",
        "host_id": "h1",
        "type": "container.start",
        "time": "2026-01-01T00:00:00Z",
        "container": {"id": "abc", "name": "x"},
        "seq": 7,
        "epoch": "ep",
        "added_later": True,  # unknown: ignored
    }
    event = parse_event("h1.container.start", json.dumps(container).encode())
    assert isinstance(event, ContainerEvent)
    assert (event.seq, event.epoch) == (7, "ep")
    added = parse_event("h1.discovery.added", wire(discovery("discovery.added", service("c1"), 3)))
    assert isinstance(added, DiscoveryEvent)
    assert added.service is not None
    assert added.seq == 3
    snap = parse_event("h1.discovery.snapshot", wire(snapshot([service("c1")], 4)))
    assert isinstance(snap, DiscoverySnapshot)
    assert [s.container_id for s in snap.services] == ["c1"]
    beat = {
        "host_id": "h1",
        "worker_id": "h1-w",
        "status": "healthy",
        "role": "standby",
        "time": "2026-01-01T00:00:00Z",
        "uptime_s": 1.0,
        "version": "1",
        "docker": {"reachable": True},
        "commands": {},
        "events": {"stream_connected": True},
    }
    heartbeat = parse_event("h1.heartbeat", json.dumps(beat).encode())
    assert isinstance(heartbeat, Heartbeat)
    assert heartbeat.role == "standby"
    expired = {"event_id": "e", "host_id": "h1", "type": "workspace.expired", "time": "2026-01-01T00:00:00Z"}
    event = parse_event(
        "h1.workspace.expired", json.dumps({**expired, "workspace_id": "w", "action": "removed"}).encode()
    )
    assert isinstance(event, WorkspaceExpired)
    assert (event.workspace_id, event.action) == ("w", "removed")


def test_parse_event_gives_other_event_for_what_it_has_no_model_for() -> None:
    newer = parse_event("h1.workspace.expired", b'{"type": "workspace.expired", "workspace_id": "w"}')
    assert isinstance(newer, OtherEvent)
    assert (newer.host_id, newer.type) == ("h1", "workspace.expired")
    assert newer.body["workspace_id"] == "w"
    broken = parse_event("h1.discovery.added", b'{"type": "discovery.added"}')  # required fields missing
    assert isinstance(broken, OtherEvent)
    assert broken.host_id == "h1"
    garbage = parse_event("h1.container.start", b"not json")
    assert isinstance(garbage, OtherEvent)
    assert garbage.body == {"raw": "not json"}
    assert isinstance(parse_event("h1.container.start", b"[1, 2]"), OtherEvent)


def test_bindings_select_hosts_and_kinds() -> None:
    assert bindings(None, ["discovery", "health"]) == [("events", "*.discovery.#"), ("health", "*.heartbeat")]
    assert bindings(["a", "b"], ["container"]) == [("events", "a.container.#"), ("events", "b.container.#")]
    with pytest.raises(ValueError, match="unknown event kind"):
        bindings(None, ["weather"])


# --- DiscoveryView's state logic ----------------------------------------------------------------


class FakeDiscovery:
    def __init__(self, owner: FakeClient) -> None:
        self.owner = owner

    async def list(self, *, host: str, timeout: float) -> ServiceList:
        self.owner.listed.append(host)
        if self.owner.fail_lists:
            self.owner.fail_lists -= 1
            raise DockhandError("no reply")
        return ServiceList(services=list(self.owner.truth.get(host, [])))


class FakeClient:
    """What DiscoveryView asks of a client: ``discovery.list`` and ``request_all``."""

    def __init__(self, truth: dict[str, list[Service]] | None = None) -> None:
        self.truth = truth or {}
        self.listed: list[str] = []
        self.fail_lists = 0
        self.discovery = FakeDiscovery(self)

    async def request_all(self, command_type: str, *args: Any, **kwargs: Any) -> list[Result]:
        assert command_type == "discovery.list"
        return [
            parse_result(
                {
                    "command_id": "c",
                    "type": "discovery.list",
                    "status": "succeeded",
                    "host_id": host,
                    "worker_id": f"{host}-w",
                    "result": ServiceList(services=services).model_dump(mode="json"),
                    "started_at": "2026-01-01T00:00:00Z",
                    "finished_at": "2026-01-01T00:00:00Z",
                    "duration_ms": 1.0,
                }
            )
            for host, services in self.truth.items()
        ]


def view_of(fake: FakeClient, **options: Any) -> tuple[DiscoveryView, list[ServiceChange]]:
    seen: list[ServiceChange] = []
    view = DiscoveryView(fake, on_add=seen.append, on_remove=seen.append, on_update=seen.append, **options)  # type: ignore[arg-type]
    return view, seen


def ids(view: DiscoveryView) -> set[str]:
    return {cid for _, cid in view.services}


async def test_first_sight_of_a_host_lists_it_then_applies_the_delta() -> None:
    fake = FakeClient({"h1": [service("c1")]})
    view, seen = view_of(fake)
    await view._apply(discovery("discovery.added", service("c2"), 5))
    assert fake.listed == ["h1"]
    assert view.resyncs == 1
    assert ids(view) == {"c1", "c2"}
    assert [(c.kind, c.service.container_id) for c in seen] == [("added", "c1"), ("added", "c2")]


async def test_consecutive_seqs_apply_without_listing_and_a_copy_is_ignored() -> None:
    fake = FakeClient({"h1": []})
    view, seen = view_of(fake)
    await view._apply(discovery("discovery.added", service("c1"), 1))
    await view._apply(discovery("discovery.added", service("c2"), 2))
    await view._apply(discovery("discovery.removed", service("c1"), 3))
    assert fake.listed == ["h1"]  # only the first sight
    await view._apply(discovery("discovery.added", service("c1"), 1))  # a redelivered copy
    await view._apply(discovery("discovery.removed", service("c1"), 3))
    assert ids(view) == {"c2"}
    assert fake.listed == ["h1"]
    assert [(c.kind, c.service.container_id) for c in seen] == [("added", "c1"), ("added", "c2"), ("removed", "c1")]


async def test_an_update_is_reported_as_updated() -> None:
    view, seen = view_of(FakeClient({"h1": [service("c1")]}))
    await view._apply(discovery("discovery.updated", service("c1", ip="172.20.0.9"), 1))
    assert seen[-1].kind == "updated"
    assert seen[-1].service.networks == {"net": "172.20.0.9"}
    assert view.domains() == {"c1.example.test": [service("c1", ip="172.20.0.9")]}


async def test_a_gap_in_seq_lists_the_host_again_and_converges() -> None:
    fake = FakeClient({"h1": []})
    view, seen = view_of(fake)
    await view._apply(discovery("discovery.added", service("c1"), 1))
    await view._apply(discovery("discovery.added", service("c2"), 2))
    # seq 3 (c3 added) and 4 (c1 removed) are lost; the truth has moved on.
    fake.truth["h1"] = [service("c2"), service("c3"), service("c4")]
    await view._apply(discovery("discovery.added", service("c4"), 5))
    assert fake.listed == ["h1", "h1"]
    assert view.resyncs == 2
    assert ids(view) == {"c2", "c3", "c4"}
    assert ("removed", "c1") in [(c.kind, c.service.container_id) for c in seen]
    await view._apply(discovery("discovery.removed", service("c4"), 6))  # 6 follows 5: no list
    assert fake.listed == ["h1", "h1"]
    assert ids(view) == {"c2", "c3"}


async def test_a_new_epoch_lists_the_host_again() -> None:
    fake = FakeClient({"h1": []})
    view, _ = view_of(fake)
    await view._apply(discovery("discovery.added", service("c1"), 1, epoch="e1"))
    await view._apply(discovery("discovery.added", service("c2"), 2, epoch="e1"))
    fake.truth["h1"] = [service("c2")]  # c1 went away while the host changed workers
    await view._apply(discovery("discovery.added", service("c2"), 1, epoch="e2"))  # seq starts again
    assert fake.listed == ["h1", "h1"]
    assert ids(view) == {"c2"}
    await view._apply(discovery("discovery.added", service("c3"), 2, epoch="e2"))
    assert fake.listed == ["h1", "h1"]
    assert ids(view) == {"c2", "c3"}


async def test_a_new_epoch_right_after_a_list_is_noticed_too() -> None:
    fake = FakeClient({"h1": []})
    view, _ = view_of(fake)
    await view._apply(discovery("discovery.added", service("c1"), 1, epoch="e1"))
    await view._resync_all()  # e.g. a reconnect: the list has no seq, the next message sets it
    fake.truth["h1"] = [service("c2")]
    await view._apply(discovery("discovery.added", service("c2"), 1, epoch="e2"))
    assert ids(view) == {"c2"}
    assert view.resyncs == 2  # first sight, then the new epoch


async def test_a_snapshot_replaces_the_host_state_and_sets_the_baseline() -> None:
    fake = FakeClient({"h1": [service("c1"), service("c2")]})
    view, seen = view_of(fake)
    await view._apply(discovery("discovery.added", service("c2"), 1))
    await view._apply(snapshot([service("c2"), service("c3")], 9))
    assert ids(view) == {"c2", "c3"}
    assert fake.listed == ["h1"]
    assert [(c.kind, c.service.container_id) for c in seen][-2:] == [("removed", "c1"), ("added", "c3")]
    await view._apply(discovery("discovery.removed", service("c3"), 10))  # follows the snapshot's seq
    assert ids(view) == {"c2"}
    assert fake.listed == ["h1"]
    await view._apply(snapshot([service("c2"), service("c3")], 9))  # a copy of the older snapshot
    assert ids(view) == {"c2"}
    other = snapshot([service("x1")], 1, host="h2")  # a snapshot of a new host needs no list
    await view._apply(other)
    assert ("h2", "x1") in view.services
    assert fake.listed == ["h1"]


async def test_a_failed_list_is_tried_again_at_the_next_message() -> None:
    fake = FakeClient({"h1": [service("c1")]})
    fake.fail_lists = 1
    view, _ = view_of(fake)
    await view._apply(discovery("discovery.added", service("c2"), 1))
    assert fake.listed == ["h1"]
    assert ids(view) == {"c2"}
    await view._apply(discovery("discovery.added", service("c3"), 2))
    assert fake.listed == ["h1", "h1"]
    assert ids(view) == {"c1", "c3"}


async def test_unsequenced_v1_messages_are_applied_as_they_come() -> None:
    fake = FakeClient({"h1": []})
    view, _ = view_of(fake)
    await view._apply(discovery("discovery.added", service("c1"), None, epoch=None))
    await view._apply(discovery("discovery.added", service("c2"), None, epoch=None))
    assert ids(view) == {"c1", "c2"}
    assert fake.listed == ["h1"]


async def test_resync_all_lists_every_host_through_request_all() -> None:
    fake = FakeClient({"h1": [service("c1")], "h2": [service("c2")]})
    view, seen = view_of(fake)
    await view._resync_all()
    assert view.services.keys() == {("h1", "c1"), ("h2", "c2")}
    assert fake.listed == []
    assert sorted(view.domains()) == ["c1.example.test", "c2.example.test"]
    assert {c.kind for c in seen} == {"added"}
    fake.truth = {"h1": [service("c1")]}  # h2 silent now: asked by name
    await view._resync_all()
    assert fake.listed == ["h2"]


async def test_changes_start_when_asked_for_and_callbacks_may_fail_or_be_async() -> None:
    fake = FakeClient({"h1": []})
    got: list[str] = []

    async def on_add(change: ServiceChange) -> None:
        await asyncio.sleep(0)
        got.append(change.service.container_id)

    def on_remove(change: ServiceChange) -> None:
        raise RuntimeError("a consumer bug")

    view = DiscoveryView(fake, on_add=on_add, on_remove=on_remove)  # type: ignore[arg-type]
    changes = view.changes()  # registered now, before the first anext
    await view._apply(discovery("discovery.added", service("c1"), 1))
    await view._apply(discovery("discovery.removed", service("c1"), 2))
    first = await asyncio.wait_for(anext(changes), 2)  # before the fix: registered too late, so it hung
    second = await asyncio.wait_for(anext(changes), 2)
    assert (first.kind, second.kind) == ("added", "removed")
    assert got == ["c1"]
    await changes.aclose()  # type: ignore[attr-defined]
    assert view._listeners == []


# --- HostsView ----------------------------------------------------------------------------------


def host_state(host: str, role: str = "active", age_s: float = 0.0) -> HostState:
    return HostState(host, f"{host}-w", "healthy", role, None, time.monotonic() - age_s)  # type: ignore[arg-type]


async def test_hosts_view_up_counts_only_fresh_active_workers() -> None:
    view = HostsView(FakeClient(), stale_after_s=5)  # type: ignore[arg-type]
    view._workers = {
        ("h1", "h1-w"): host_state("h1"),
        ("h2", "h2-w"): host_state("h2", role="standby"),
        ("h3", "h3-w"): host_state("h3", age_s=10),
    }
    assert view.up() == {"h1"}
    h2 = view.host("h2")
    assert h2 is not None
    assert h2.role == "standby"
    assert view.host("nope") is None


async def test_hosts_view_wait_for_sees_a_host_go_stale_without_any_message() -> None:
    view = HostsView(FakeClient(), stale_after_s=0.3)  # type: ignore[arg-type]
    view._workers = {("h1", "h1-w"): host_state("h1")}
    assert view.up() == {"h1"}
    started = time.monotonic()
    await view.wait_for(lambda v: "h1" not in v.up(), timeout=5)  # no heartbeat comes: time alone
    assert 0.25 < time.monotonic() - started < 2
    with pytest.raises(TimeoutError):
        await view.wait_for(lambda v: "h1" in v.up(), timeout=0.3)
