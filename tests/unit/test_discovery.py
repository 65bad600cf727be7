"""worker.discovery without Docker: label parsing, list/inspect equivalence, the Discovery state machine.

Docker is :class:`tests.fakes.FakeDockerClient`, which answers with Docker Engine API 1.41 shapes:
``GET /containers/{id}/json`` (inspect) and ``GET /containers/json`` (list, honouring the ``label``
and ``status`` filters the way the daemon does: a paused container's state is ``paused``, not
``running``).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest
import stamina
from hypothesis import given, settings
from hypothesis import strategies as st

from dockhand.schemas import DiscoverySnapshot, Service
from dockhand.worker.discovery import Discovery, list_services
from dockhand.worker.docker import DockerOps
from dockhand.worker.labels import Labels
from dockhand.worker.policy import Policy
from dockhand.worker.services import InvalidLabels, from_list_entry, is_enabled, parse_service
from dockhand.worker.settings import Settings
from tests.fakes import Box, FakeDockerClient, Recorder

HOST = "host-a"
ANY4 = "0.0.0.0"  # noqa: S104 - a port binding as Docker reports it, nothing binds here
ANY6 = "::"
NAMES = Labels("dockhand", "dockhand")


@pytest.fixture(autouse=True)
def stamina_testing() -> Iterator[None]:
    with stamina.set_testing(True):
        yield


def enabled(domain: str = "app.example.com", port: str = "8080", **more: str) -> dict[str, str]:
    labels = {
        "com.docker.compose.project": "shop",
        "maintainer": "NGINX Docker Maintainers <docker-maint@nginx.com>",
        "dockhand.enabled": "true",
        "dockhand.domain": domain,
        "dockhand.port": port,
    }
    labels.update({f"dockhand.{k}": v for k, v in more.items()})
    return labels


def web(**changes: Any) -> Box:
    box = Box(
        id="c0ffee" + "0" * 58,
        name="web",
        labels=enabled(description="My App"),
        ports=[(8080, "tcp", [("127.0.0.1", 32768)]), (9090, "tcp", [])],
    )
    return replace(box, **changes)


def make_ops(docker: FakeDockerClient, labels: Labels = NAMES) -> DockerOps:
    settings = Settings(host_id=HOST, worker_id=f"{HOST}-test", docker_host=None)
    return DockerOps(docker, settings, labels, Policy(settings, labels))  # type: ignore[arg-type]


def setup(*boxes: Box, require_healthy: bool = False) -> tuple[FakeDockerClient, Discovery, Recorder]:
    docker = FakeDockerClient(*boxes)
    recorder = Recorder()
    return docker, Discovery(make_ops(docker), recorder, require_healthy=require_healthy), recorder


# --- parse_service ----------------------------------------------------------------------------


def test_parse_valid_labels() -> None:
    box = web(networks={"bridge": "172.17.0.2", "app": "172.20.0.5"})
    service = parse_service(box.inspect(), NAMES)
    assert service == Service(
        container_id=box.id,
        container_name="web",
        domain="app.example.com",
        port=8080,
        description="My App",
        networks={"app": "172.20.0.5", "bridge": "172.17.0.2"},
        host_ports={"8080/tcp": 32768},  # 9090 is exposed, not published
        health=None,
    )
    assert isinstance(service.port, int)


@pytest.mark.parametrize("health", ["starting", "healthy", "unhealthy"])
def test_parse_health_from_state(health: str) -> None:
    assert parse_service(web(health=health).inspect(), NAMES).health == health


@pytest.mark.parametrize(
    "bindings",
    [
        [(ANY4, 32768), (ANY6, 32769)],
        [(ANY6, 32769), (ANY4, 32768)],
        [(ANY4, 32768), (ANY6, 32768)],
    ],
)
def test_parse_smallest_host_port_of_ipv4_and_ipv6_bindings(bindings: list[tuple[str, int]]) -> None:
    box = web(ports=[(8080, "tcp", bindings), (53, "udp", [(ANY4, 40000)])])
    assert parse_service(box.inspect(), NAMES).host_ports == {"53/udp": 40000, "8080/tcp": 32768}


def test_parse_optional_description_and_network_label() -> None:
    box = web(labels=enabled(network="app"), networks={"bridge": "172.17.0.2", "app": "172.20.0.5"})
    service = parse_service(box.inspect(), NAMES)
    assert service.description is None
    assert service.networks == {"app": "172.20.0.5"}


@pytest.mark.parametrize(
    ("labels", "label", "fragment"),
    [
        ({"dockhand.enabled": "true", "dockhand.port": "8080"}, "dockhand.domain", "missing"),
        (enabled(domain="   "), "dockhand.domain", "missing"),
        (enabled(domain="-bad.example.com"), "dockhand.domain", "not a valid domain"),
        (enabled(domain="app_example.com"), "dockhand.domain", "not a valid domain"),
        (enabled(domain="exa mple.com"), "dockhand.domain", "not a valid domain"),
        (enabled(domain="a" * 64 + ".com"), "dockhand.domain", "not a valid domain"),
        (enabled(domain=("a" * 63 + ".") * 4 + "com"), "dockhand.domain", "not a valid domain"),
        ({"dockhand.enabled": "true", "dockhand.domain": "app.example.com"}, "dockhand.port", "missing"),
        (enabled(port="abc"), "dockhand.port", "not a port"),
        (enabled(port="0"), "dockhand.port", "not a port"),
        (enabled(port="70000"), "dockhand.port", "not a port"),
        (enabled(port="-1"), "dockhand.port", "not a port"),
        (enabled(port="80.5"), "dockhand.port", "not a port"),
        (enabled(network="backend"), "dockhand.network", "not on that network"),
    ],
)
def test_parse_invalid_labels_name_the_label(labels: dict[str, str], label: str, fragment: str) -> None:
    with pytest.raises(InvalidLabels) as info:
        parse_service(web(labels=labels).inspect(), NAMES)
    assert label in str(info.value)
    assert fragment in str(info.value)


@pytest.mark.parametrize("port", ["²", "8080²"])
def test_parse_unicode_digit_port_is_invalid_labels(port: str) -> None:
    with pytest.raises(InvalidLabels, match=r"dockhand\.port"):
        parse_service(web(labels=enabled(port=port)).inspect(), NAMES)


def test_parse_custom_discovery_prefix() -> None:
    names = Labels("dockhand", "traefik")
    labels = {
        "traefik.enabled": "true",
        "traefik.domain": "shop.example.org",
        "traefik.port": "3000",
        "traefik.description": "Shop",
        # the default prefix means nothing under a custom one
        "dockhand.domain": "ignored.example.com",
    }
    box = web(labels=labels)
    assert is_enabled(labels, names)
    assert not is_enabled(labels, NAMES)
    service = parse_service(box.inspect(), names)
    assert (service.domain, service.port, service.description) == ("shop.example.org", 3000, "Shop")
    with pytest.raises(InvalidLabels, match=r"traefik\.port"):
        parse_service(web(labels={"traefik.enabled": "true", "traefik.domain": "x.org"}).inspect(), names)


# --- list entry == inspect ------------------------------------------------------------------

PAIRS = {
    "plain": web(),
    "healthy": web(health="healthy"),
    "starting": web(health="starting"),
    "unhealthy": web(health="unhealthy"),
    "no-ports-two-networks": web(ports=[], networks={"bridge": "172.17.0.2", "app": "172.20.0.5"}),
    "ipv6-duplicate": web(ports=[(8080, "tcp", [(ANY4, 32768), (ANY6, 32768)])]),
    "ipv6-different": web(ports=[(8080, "tcp", [(ANY4, 32770), (ANY6, 32771)])], health="healthy"),
    "ipv6-first": web(ports=[(8080, "tcp", [(ANY6, 32771), (ANY4, 32770)])]),
    "udp-and-tcp": web(ports=[(53, "udp", [("127.0.0.1", 5353)]), (8080, "tcp", [("127.0.0.1", 32768)])]),
    "network-label": web(labels=enabled(network="app"), networks={"bridge": "172.17.0.2", "app": "172.20.0.5"}),
    "no-ip-yet": web(networks={"app": ""}),
}


@pytest.mark.parametrize("box", PAIRS.values(), ids=PAIRS.keys())
def test_list_entry_and_inspect_yield_the_same_service(box: Box) -> None:
    from_inspect = parse_service(box.inspect(), NAMES)
    from_list = parse_service(from_list_entry(box.list_entry()), NAMES)
    assert from_list == from_inspect
    assert from_list.model_dump() == from_inspect.model_dump()


def test_list_entry_health_parsing() -> None:
    assert from_list_entry(web(health="starting").list_entry())["State"]["Health"] == {"Status": "starting"}
    assert "Health" not in from_list_entry(web().list_entry())["State"]


@pytest.mark.parametrize("box", PAIRS.values(), ids=PAIRS.keys())
async def test_reconcile_after_incremental_start_publishes_no_update(box: Box) -> None:
    _docker, discovery, rec = setup(box)
    await discovery.on_container_event("start", box.id, box.attributes())
    assert rec.keys == [f"{HOST}.discovery.added"]
    rec.clear()
    await discovery.reconcile("periodic")
    assert rec.keys == [f"{HOST}.discovery.snapshot"]


# --- Discovery: incremental ----------------------------------------------------------------


async def test_start_publishes_one_added() -> None:
    box = web(health="healthy")
    docker, discovery, rec = setup(box)
    await discovery.on_container_event("start", box.id, box.attributes())
    assert rec.keys == [f"{HOST}.discovery.added"]
    (event,) = rec.events()
    assert event.type == "discovery.added"
    assert event.host_id == HOST
    assert event.service == parse_service(box.inspect(), NAMES)
    assert docker.show_calls == [box.id]
    assert discovery.current() == [event.service]


async def test_repeated_start_and_health_of_unchanged_service_publish_nothing() -> None:
    box = web(health="healthy")
    _docker, discovery, rec = setup(box)
    await discovery.on_container_event("start", box.id, box.attributes())
    rec.clear()
    await discovery.on_container_event("start", box.id, box.attributes())
    await discovery.on_container_event("health_status: healthy", box.id, box.attributes())
    await discovery.on_container_event("exec_start: sh -c true", box.id, box.attributes())
    assert rec.messages == []


async def test_health_change_publishes_updated() -> None:
    box = web(health="starting")
    docker, discovery, rec = setup(box)
    await discovery.on_container_event("start", box.id, box.attributes())
    docker.put(replace(box, health="healthy"))
    await discovery.on_container_event("health_status: healthy", box.id, box.attributes())
    assert rec.keys == [f"{HOST}.discovery.added", f"{HOST}.discovery.updated"]
    assert rec.events()[-1].service is not None
    assert rec.events()[-1].service.health == "healthy"


async def test_die_removes_and_stop_destroy_publish_nothing_more() -> None:
    box = web()
    docker, discovery, rec = setup(box)
    await discovery.on_container_event("start", box.id, box.attributes())
    docker.put(replace(box, state="exited", networks={"bridge": ""}))
    await discovery.on_container_event("kill", box.id, box.attributes(signal="15"))
    await discovery.on_container_event("die", box.id, box.attributes(exitCode="0"))
    await discovery.on_container_event("stop", box.id, box.attributes())
    del docker.boxes[box.id]
    await discovery.on_container_event("destroy", box.id, box.attributes())
    assert rec.keys == [f"{HOST}.discovery.added", f"{HOST}.discovery.removed"]
    assert rec.events()[1].service == rec.events()[0].service
    assert discovery.services == {}


async def test_start_of_a_container_already_gone_is_announced_from_the_event() -> None:
    box = web()
    _docker, discovery, rec = setup()  # inspect answers 404
    await discovery.on_container_event("start", box.id, box.attributes())
    assert rec.keys == [f"{HOST}.discovery.added"]
    service = rec.events()[0].service
    assert service is not None
    assert (service.container_id, service.container_name, service.domain, service.port) == (
        box.id,
        "web",
        "app.example.com",
        8080,
    )
    assert service.description == "My App"
    await discovery.on_container_event("die", box.id, box.attributes(exitCode="137"))
    assert rec.keys == [f"{HOST}.discovery.added", f"{HOST}.discovery.removed"]


async def test_container_without_enabled_label_is_never_inspected() -> None:
    box = web(labels={"com.docker.compose.project": "shop", "dockhand.domain": "x.example.com", "dockhand.port": "80"})
    box2 = web(id="d" * 64, labels={**enabled(), "dockhand.enabled": "false"})
    docker, discovery, rec = setup(box, box2)
    for b in (box, box2):
        for action in ("create", "start", "health_status: healthy", "rename", "die", "destroy"):
            await discovery.on_container_event(action, b.id, b.attributes())
        await discovery.on_network_event("connect", b.id)
    assert docker.show_calls == []
    assert rec.messages == []


async def test_invalid_labels_publish_invalid_with_reason() -> None:
    box = web(labels=enabled(port="abc"))
    _docker, discovery, rec = setup(box)
    await discovery.on_container_event("start", box.id, box.attributes())
    assert rec.keys == [f"{HOST}.discovery.invalid"]
    event = rec.events()[0]
    assert event.type == "discovery.invalid"
    assert event.service is None
    assert event.container is not None
    assert (event.container.container_id, event.container.container_name) == (box.id, "web")
    assert event.reason is not None
    assert "dockhand.port" in event.reason
    assert discovery.services == {}
    assert discovery.invalid == {box.id: event.reason}


@pytest.mark.parametrize("again", ["start", "reconcile"])
async def test_invalid_labels_published_once_per_reason(again: str) -> None:
    box = web(labels=enabled(port="abc"))
    _docker, discovery, rec = setup(box)
    await discovery.on_container_event("start", box.id, box.attributes())
    if again == "start":
        await discovery.on_container_event("start", box.id, box.attributes())
    else:
        await discovery.reconcile("periodic")
    assert rec.keys.count(f"{HOST}.discovery.invalid") == 1


async def test_invalid_reason_change_is_published_again() -> None:
    box = web(labels=enabled(port="abc"))
    docker, discovery, rec = setup(box)
    await discovery.on_container_event("start", box.id, box.attributes())
    docker.put(replace(box, labels=enabled(port="0")))
    await discovery.on_container_event("start", box.id, box.attributes())
    reasons = [e.reason or "" for e in rec.events()]
    assert len(reasons) == 2
    assert "'abc'" in reasons[0]
    assert "'0'" in reasons[1]


async def test_network_connect_of_known_service_publishes_updated() -> None:
    box = web()
    docker, discovery, rec = setup(box)
    await discovery.on_container_event("start", box.id, box.attributes())
    docker.put(replace(box, networks={"bridge": "172.17.0.2", "app": "172.20.0.7"}))
    await discovery.on_network_event("connect", box.id)
    assert rec.keys == [f"{HOST}.discovery.added", f"{HOST}.discovery.updated"]
    assert rec.events()[1].service is not None
    assert rec.events()[1].service.networks == {"app": "172.20.0.7", "bridge": "172.17.0.2"}
    # the same connect again (nothing changed) publishes nothing
    await discovery.on_network_event("connect", box.id)
    assert len(rec.messages) == 2


async def test_disconnect_from_the_labelled_network_makes_it_invalid() -> None:
    box = web(labels=enabled(network="app"), networks={"bridge": "172.17.0.2", "app": "172.20.0.5"})
    docker, discovery, rec = setup(box)
    await discovery.on_container_event("start", box.id, box.attributes())
    docker.put(replace(box, networks={"bridge": "172.17.0.2"}))
    await discovery.on_network_event("disconnect", box.id)
    assert rec.keys == [f"{HOST}.discovery.added", f"{HOST}.discovery.removed", f"{HOST}.discovery.invalid"]


async def test_network_events_for_unknown_containers_publish_nothing() -> None:
    box = web()
    docker, discovery, rec = setup(box)
    await discovery.on_network_event("disconnect", box.id)
    await discovery.on_network_event("connect", "f" * 64)
    await discovery.on_network_event("disconnect", None)
    await discovery.on_network_event("create", None)
    assert rec.messages == []
    assert docker.show_calls == []


async def test_network_connect_makes_an_invalid_container_valid() -> None:
    box = web(labels=enabled(network="app"), networks={"bridge": "172.17.0.2"})
    docker, discovery, rec = setup(box)
    await discovery.on_container_event("start", box.id, box.attributes())  # docker run ...
    assert rec.keys == [f"{HOST}.discovery.invalid"]
    docker.put(replace(box, networks={"bridge": "172.17.0.2", "app": "172.20.0.5"}))
    await discovery.on_network_event("connect", box.id)  # docker network connect app web
    assert rec.keys == [f"{HOST}.discovery.invalid", f"{HOST}.discovery.added"]


async def test_pause_resync_unpause_keeps_the_service() -> None:
    box = web()
    docker, discovery, _rec = setup(box)
    await discovery.on_container_event("start", box.id, box.attributes())
    docker.put(replace(box, state="paused"))
    await discovery.on_container_event("pause", box.id, box.attributes())
    await discovery.reconcile("resync")
    docker.put(box)
    await discovery.on_container_event("unpause", box.id, box.attributes())
    assert box.id in discovery.services


# --- Discovery: require_healthy ------------------------------------------------------------


async def test_require_healthy_waits_for_healthy_and_removes_on_unhealthy() -> None:
    box = web(health="starting")
    docker, discovery, rec = setup(box, require_healthy=True)
    await discovery.on_container_event("start", box.id, box.attributes())
    assert rec.messages == []
    docker.put(replace(box, health="healthy"))
    await discovery.on_container_event("health_status: healthy", box.id, box.attributes())
    assert rec.keys == [f"{HOST}.discovery.added"]
    assert rec.events()[0].service is not None
    assert rec.events()[0].service.health == "healthy"
    docker.put(replace(box, health="unhealthy"))
    await discovery.on_container_event("health_status: unhealthy", box.id, box.attributes())
    assert rec.keys == [f"{HOST}.discovery.added", f"{HOST}.discovery.removed"]
    # and back
    docker.put(replace(box, health="healthy"))
    await discovery.on_container_event("health_status: healthy", box.id, box.attributes())
    assert rec.keys[-1] == f"{HOST}.discovery.added"


async def test_require_healthy_container_without_healthcheck_added_on_start() -> None:
    box = web(health=None)
    _docker, discovery, rec = setup(box, require_healthy=True)
    await discovery.on_container_event("start", box.id, box.attributes())
    assert rec.keys == [f"{HOST}.discovery.added"]


async def test_require_healthy_reconcile_skips_unhealthy_containers() -> None:
    ok = web(health="healthy")
    waiting = web(id="e" * 64, name="api", labels=enabled(domain="api.example.com"), health="starting")
    _docker, discovery, rec = setup(ok, waiting, require_healthy=True)
    services = await discovery.reconcile("startup")
    assert [s.container_name for s in services] == ["web"]
    assert rec.keys == [f"{HOST}.discovery.added", f"{HOST}.discovery.snapshot"]
    assert [s.container_name for s in await list_services(discovery.ops, require_healthy=True)] == ["web"]
    assert len(await list_services(discovery.ops)) == 2


# --- Discovery: reconcile ------------------------------------------------------------------


async def test_reconcile_resync_publishes_differences_then_one_snapshot() -> None:
    kept = web(id="a" * 64, name="kept", labels=enabled(domain="m.example.com"), health="healthy")
    gone = web(id="b" * 64, name="gone", labels=enabled(domain="g.example.com"))
    new = web(id="c" * 64, name="new", labels=enabled(domain="b.example.com"))
    last = web(id="d" * 64, name="last", labels=enabled(domain="z.example.com"))
    other = Box(id="9" * 64, name="db", labels={"com.docker.compose.project": "shop"})
    docker, discovery, rec = setup(kept, gone, other)
    for box in (kept, gone):
        await discovery.on_container_event("start", box.id, box.attributes())
    rec.clear()
    # events missed: gone died, new and last started
    del docker.boxes[gone.id]
    docker.put(last)
    docker.put(new)
    docker.show_calls.clear()

    services = await discovery.reconcile("resync")

    assert docker.show_calls == []  # a full list, no inspects
    (call,) = docker.list_calls
    assert json.loads(call["filters"]) == {"label": ["dockhand.enabled=true"], "status": ["running", "paused"]}
    kinds = [(m.type, m.service.container_name) for m in rec.events() if m.service is not None]
    assert sorted(kinds) == [
        ("discovery.added", "last"),
        ("discovery.added", "new"),
        ("discovery.removed", "gone"),
    ]
    assert rec.keys[-1] == f"{HOST}.discovery.snapshot"
    snapshots = [m for _, m in rec.messages if isinstance(m, DiscoverySnapshot)]
    assert len(snapshots) == 1
    snapshot = snapshots[0]
    assert snapshot.reason == "resync"
    assert snapshot.host_id == HOST
    assert [s.domain for s in snapshot.services] == ["b.example.com", "m.example.com", "z.example.com"]
    assert snapshot.services == services == discovery.current()


async def test_reconcile_with_custom_prefix_lists_by_that_label() -> None:
    labels = Labels("dockhand", "traefik")
    box = web(labels={"traefik.enabled": "true", "traefik.domain": "t.example.com", "traefik.port": "80"})
    docker = FakeDockerClient(box)
    rec = Recorder()
    discovery = Discovery(make_ops(docker, labels), rec)
    services = await discovery.reconcile("startup")
    assert [s.domain for s in services] == ["t.example.com"]
    assert json.loads(docker.list_calls[0]["filters"])["label"] == ["traefik.enabled=true"]


async def test_one_bad_port_label_does_not_break_reconcile() -> None:
    good = web()
    bad = web(id="b" * 64, name="bad", labels=enabled(domain="bad.example.com", port="²"))
    _docker, discovery, rec = setup(good, bad)
    services = await discovery.reconcile("startup")
    assert [s.container_name for s in services] == ["web"]
    assert rec.keys[-1] == f"{HOST}.discovery.snapshot"


# --- one holder per domain (issue 10: "duplicate domains are all announced") ------------------

OLD, NEW = 1714557600, 1714557700


def _claimant(letter: str, created: int, domain: str = "app.example.com", **changes: Any) -> Box:
    return web(id=letter * 64, name=f"c-{letter}", labels=enabled(domain=domain), created=created, **changes)


def _kinds(rec: Recorder) -> list[tuple[str, str]]:
    out = []
    for event in rec.events():
        subject = event.service or event.container
        assert subject is not None
        out.append((event.type, subject.container_name))
    return out


async def test_second_claimant_of_a_domain_is_invalid_naming_the_holder() -> None:
    holder, second = _claimant("a", OLD), _claimant("b", NEW)
    _docker, discovery, rec = setup(holder, second)
    await discovery.on_container_event("start", holder.id, holder.attributes())
    await discovery.on_container_event("start", second.id, second.attributes())
    assert _kinds(rec) == [("discovery.added", "c-a"), ("discovery.invalid", "c-b")]
    reason = rec.events()[-1].reason or ""
    assert "app.example.com" in reason
    assert "c-a" in reason
    assert holder.id[:12] in reason
    assert [s.container_name for s in discovery.current()] == ["c-a"]
    # repeated events of the loser publish nothing new
    rec.clear()
    await discovery.on_container_event("start", second.id, second.attributes())
    await discovery.on_container_event("health_status: healthy", second.id, second.attributes())
    await discovery.reconcile("periodic")
    assert rec.keys == [f"{HOST}.discovery.snapshot"]


async def test_when_the_holder_goes_the_next_claimant_is_announced() -> None:
    holder, second, third = _claimant("a", OLD), _claimant("b", NEW), _claimant("c", NEW + 50)
    docker, discovery, rec = setup(holder, second, third)
    for box in (holder, second, third):
        await discovery.on_container_event("start", box.id, box.attributes())
    rec.clear()
    docker.put(replace(holder, state="exited"))
    await discovery.on_container_event("die", holder.id, holder.attributes(exitCode="0"))
    # removed first: a consumer never sees two holders; then the next oldest, and the reason
    # of the one still waiting now names the new holder
    assert _kinds(rec) == [("discovery.removed", "c-a"), ("discovery.added", "c-b"), ("discovery.invalid", "c-c")]
    assert "c-b" in (rec.events()[-1].reason or "")
    assert second.id not in discovery.invalid
    assert [s.container_name for s in discovery.current()] == ["c-b"]


async def test_an_older_claimant_takes_the_domain_over() -> None:
    # The rule is the age of the claim, not the order events came in: every worker (and a
    # restarted one, and discovery.list) reaches the same holder.
    newer, older = _claimant("b", NEW), _claimant("a", OLD)
    _docker, discovery, rec = setup(newer, older)
    await discovery.on_container_event("start", newer.id, newer.attributes())
    await discovery.on_container_event("start", older.id, older.attributes())
    assert _kinds(rec) == [
        ("discovery.added", "c-b"),
        ("discovery.removed", "c-b"),
        ("discovery.added", "c-a"),
        ("discovery.invalid", "c-b"),
    ]
    assert [s.container_name for s in discovery.current()] == ["c-a"]


async def test_domains_are_compared_case_insensitively() -> None:
    holder, second = _claimant("a", OLD), _claimant("b", NEW, domain="APP.Example.COM")
    _docker, discovery, _rec = setup(holder, second)
    await discovery.on_container_event("start", second.id, second.attributes())
    await discovery.on_container_event("start", holder.id, holder.attributes())
    assert [s.container_name for s in discovery.current()] == ["c-a"]
    assert second.id in discovery.invalid


async def test_same_second_ties_go_to_the_smaller_id() -> None:
    b, a = _claimant("b", OLD), _claimant("a", OLD)
    _docker, discovery, _rec = setup(b, a)
    await discovery.on_container_event("start", b.id, b.attributes())
    await discovery.on_container_event("start", a.id, a.attributes())
    assert [s.container_name for s in discovery.current()] == ["c-a"]


async def test_startup_reconcile_announces_only_the_oldest_claim() -> None:
    claimants = [_claimant("c", NEW + 50), _claimant("a", OLD), _claimant("b", NEW)]
    other = _claimant("d", NEW, domain="other.example.com")
    _docker, discovery, rec = setup(*claimants, other)
    services = await discovery.reconcile("startup")
    assert [(s.domain, s.container_name) for s in services] == [
        ("app.example.com", "c-a"),
        ("other.example.com", "c-d"),
    ]
    # no transient holder: exactly one added per domain, the others invalid, then the snapshot
    assert sorted(k for k in _kinds(rec) if k[0] == "discovery.added") == [
        ("discovery.added", "c-a"),
        ("discovery.added", "c-d"),
    ]
    assert sorted(k for k in _kinds(rec) if k[0] == "discovery.invalid") == [
        ("discovery.invalid", "c-b"),
        ("discovery.invalid", "c-c"),
    ]
    assert rec.keys[-1] == f"{HOST}.discovery.snapshot"
    assert [s.container_name for s in await list_services(discovery.ops)] == ["c-a", "c-d"]


async def test_resync_after_the_holder_vanished_promotes_the_next() -> None:
    holder, second = _claimant("a", OLD), _claimant("b", NEW)
    docker, discovery, rec = setup(holder, second)
    await discovery.reconcile("startup")
    rec.clear()
    del docker.boxes[holder.id]  # its die/destroy events were missed
    await discovery.reconcile("resync")
    assert _kinds(rec) == [("discovery.removed", "c-a"), ("discovery.added", "c-b")]
    assert discovery.invalid == {}


async def test_holder_turning_invalid_releases_the_domain() -> None:
    holder = _claimant("a", OLD, networks={"bridge": "172.17.0.2", "app": "172.20.0.5"})
    holder = replace(holder, labels={**holder.labels, "dockhand.network": "app"})
    second = _claimant("b", NEW)
    docker, discovery, rec = setup(holder, second)
    for box in (holder, second):
        await discovery.on_container_event("start", box.id, box.attributes())
    rec.clear()
    docker.put(replace(holder, networks={"bridge": "172.17.0.2"}))
    await discovery.on_network_event("disconnect", holder.id)
    assert _kinds(rec) == [("discovery.removed", "c-a"), ("discovery.invalid", "c-a"), ("discovery.added", "c-b")]


async def test_list_services_answers_the_holder_only() -> None:
    _docker, discovery, _rec = setup(_claimant("b", NEW), _claimant("a", OLD), _claimant("c", NEW + 1))
    assert [s.container_name for s in await list_services(discovery.ops)] == ["c-a"]


async def test_neutralised_image_labels_announce_nothing() -> None:
    # What a workspace whose image carried dockhand.* labels looks like: overridden with "".
    box = web(labels={"dockhand.enabled": "", "dockhand.domain": "", "dockhand.port": "", "dockhand.managed": "true"})
    docker, discovery, rec = setup(box)
    await discovery.on_container_event("start", box.id, box.attributes())
    assert await discovery.reconcile("startup") == []
    assert docker.show_calls == []
    assert rec.keys == [f"{HOST}.discovery.snapshot"]


def test_an_empty_description_is_none() -> None:
    box = web(labels=enabled(description=""))
    assert parse_service(box.inspect(), NAMES).description is None


_OPS = st.lists(st.tuples(st.sampled_from(["start", "die", "reconcile"]), st.integers(0, 5)), min_size=1, max_size=30)


@settings(max_examples=60, deadline=None)
@given(ops=_OPS)
def test_one_holder_per_domain_whatever_the_order(ops: list[tuple[str, int]]) -> None:
    # Six containers on two domains, created at distinct times (index 0 the oldest); started and
    # stopped in any order, with reconciles in between: the announced set is always the oldest
    # running claim per domain, the same that discovery.list and a fresh worker would report.
    boxes = [
        _claimant("abcdef"[i], OLD + 10 * i, domain="one.example.com" if i % 2 else "two.example.com", state="exited")
        for i in range(6)
    ]

    async def run() -> None:
        docker, discovery, _rec = setup(*boxes)
        for action, index in ops:
            box = boxes[index]
            if action == "start":
                docker.put(replace(box, state="running"))
                await discovery.on_container_event("start", box.id, box.attributes())
            elif action == "die":
                docker.put(replace(box, state="exited"))
                await discovery.on_container_event("die", box.id, box.attributes(exitCode="0"))
            else:
                await discovery.reconcile("periodic")
            running = [b for b in docker.boxes.values() if b.state == "running"]
            expected = {}
            for b in sorted(running, key=lambda b: (b.created, b.id)):
                expected.setdefault(b.labels["dockhand.domain"], b.name)
            assert {s.domain: s.container_name for s in discovery.current()} == expected
            assert len(discovery.current()) == len(expected)
            assert {s.domain: s.container_name for s in await list_services(discovery.ops)} == expected
            losers = {b.id for b in running} - set(discovery.services)
            assert set(discovery.invalid) == losers
            fresh = Discovery(discovery.ops, Recorder())
            assert await fresh.reconcile("startup") == discovery.current()

    asyncio.run(run())


# --- events older than the last list (issue 18: a daemon's replay after its restart) ----------


def _before(discovery: Discovery, ns: int = 1_000_000) -> int:
    """A Docker ``timeNano`` from before the discovery's last list."""
    assert discovery.listed_at_ns is not None
    return discovery.listed_at_ns - ns


def _after(discovery: Discovery) -> int:
    assert discovery.listed_at_ns is not None
    return discovery.listed_at_ns + 1_000_000


async def test_a_replayed_die_of_a_container_running_now_publishes_nothing() -> None:
    # What dockerd replays after a restart, all older than the resync list that shows the
    # container (restart: always) running again: kill, die, stop, network connect, start.
    box = web()
    docker, discovery, rec = setup(box)
    await discovery.reconcile("resync")
    assert [s.container_id for s in discovery.current()] == [box.id]
    rec.clear()
    docker.show_calls.clear()
    t = _before(discovery, 50_000_000)
    for offset, action in enumerate(["kill", "die", "stop"]):
        await discovery.on_container_event(action, box.id, box.attributes(exitCode="0"), time_nano=t + offset)
    await discovery.on_network_event("connect", box.id, time_nano=t + 3)
    await discovery.on_container_event("start", box.id, box.attributes(), time_nano=t + 4)
    assert rec.keys == []
    assert [s.container_id for s in discovery.current()] == [box.id]
    assert docker.show_calls == [box.id]  # decided from its current state: one inspect per list


async def test_the_same_die_newer_than_the_list_still_removes() -> None:
    box = web()
    docker, discovery, rec = setup(box)
    await discovery.reconcile("resync")
    rec.clear()
    docker.put(replace(box, state="exited"))
    await discovery.on_container_event("die", box.id, box.attributes(exitCode="0"), time_nano=_after(discovery))
    assert rec.keys == [f"{HOST}.discovery.removed"]
    assert discovery.current() == []


async def test_without_a_list_yet_events_apply_as_they_come() -> None:
    box = web()
    _docker, discovery, rec = setup(box)
    assert discovery.predates_list(1) is False
    await discovery.on_container_event("start", box.id, box.attributes(), time_nano=1)
    assert rec.keys == [f"{HOST}.discovery.added"]


async def test_a_replayed_event_of_a_container_gone_since_is_removed_once() -> None:
    # The list showed it running; it died after the list (a live die is on its way) and a stale
    # event of it comes first: removed now, from its current state, and the live die adds nothing.
    box = web()
    docker, discovery, rec = setup(box)
    await discovery.reconcile("resync")
    rec.clear()
    docker.put(replace(box, state="exited"))
    await discovery.on_container_event("start", box.id, box.attributes(), time_nano=_before(discovery))
    assert rec.keys == [f"{HOST}.discovery.removed"]
    await discovery.on_container_event("die", box.id, box.attributes(exitCode="0"), time_nano=_after(discovery))
    assert rec.keys == [f"{HOST}.discovery.removed"]


async def test_a_replayed_event_announces_only_what_differs_from_the_list() -> None:
    # Its addresses changed after the list (the connect event proper is still to come): the
    # stale event publishes the current state once, as an update, never removed + added.
    box = web()
    docker, discovery, rec = setup(box)
    await discovery.reconcile("resync")
    rec.clear()
    docker.put(replace(box, networks={"bridge": "172.17.0.9"}))
    await discovery.on_container_event("die", box.id, box.attributes(exitCode="0"), time_nano=_before(discovery))
    assert rec.keys == [f"{HOST}.discovery.updated"]
    assert rec.events()[0].service is not None
    assert rec.events()[0].service.networks == {"bridge": "172.17.0.9"}


async def test_a_replayed_start_of_a_container_that_is_not_running_announces_nothing() -> None:
    # A `restart: no` container that did not come back: the list left it out (removed once); the
    # replayed start of its earlier life must not bring it back, not even from the event's labels.
    box = web(state="exited")
    docker, discovery, rec = setup(box)
    await discovery.reconcile("resync")
    rec.clear()
    await discovery.on_container_event("start", box.id, box.attributes(), time_nano=_before(discovery))
    docker.boxes.pop(box.id)
    other = replace(box, id="d1" + "0" * 62)
    await discovery.on_container_event("start", other.id, other.attributes(), time_nano=_before(discovery))
    assert rec.keys == []
    assert discovery.current() == []


async def test_each_list_allows_one_more_inspect_per_container() -> None:
    box = web()
    docker, discovery, _rec = setup(box)
    await discovery.reconcile("resync")
    docker.show_calls.clear()
    await discovery.on_container_event("die", box.id, box.attributes(), time_nano=_before(discovery))
    await discovery.on_container_event("die", box.id, box.attributes(), time_nano=_before(discovery))
    await discovery.reconcile("periodic")
    await discovery.on_container_event("die", box.id, box.attributes(), time_nano=_before(discovery))
    assert docker.show_calls == [box.id, box.id]


async def test_replayed_events_of_non_discovery_containers_cost_nothing() -> None:
    box = web(labels={"com.example.tier": "db"})
    docker, discovery, rec = setup(box)
    await discovery.reconcile("resync")
    await discovery.on_container_event("die", box.id, box.attributes(), time_nano=_before(discovery))
    await discovery.on_network_event("connect", box.id, time_nano=_before(discovery))
    assert docker.show_calls == []
    assert rec.keys == [f"{HOST}.discovery.snapshot"]


async def test_the_list_time_is_taken_before_the_list() -> None:
    box = web()
    _docker, discovery, _rec = setup(box)
    before = time.time_ns()
    await discovery.reconcile("startup")
    assert discovery.listed_at_ns is not None
    assert before <= discovery.listed_at_ns <= time.time_ns()
    assert discovery.predates_list(before - 1)
    assert not discovery.predates_list(time.time_ns())


# --- a list that lags the events ------------------------------------------------------------------
# dockerd logs `die` before its list view stops calling the container running (the exit's cleanup
# runs in between), so a list asked for after the die may still show it: seen on the real daemon as
# added, removed (die), added (that list), removed (stop) for one container of a 200-container burst.


async def test_a_list_that_still_shows_a_container_after_its_die_does_not_announce_it_again() -> None:
    box = web()
    docker, discovery, rec = setup(box)
    await discovery.on_container_event("start", box.id, box.attributes())
    docker.put(replace(box, state="exited"))
    docker.listed_as[box.id] = box  # the list view still says running
    await discovery.on_container_event("die", box.id, box.attributes(exitCode="0"))
    docker.show_calls.clear()
    await discovery.reconcile("periodic")
    await discovery.on_container_event("stop", box.id, box.attributes(), time_nano=_after(discovery))
    assert rec.keys == [f"{HOST}.discovery.added", f"{HOST}.discovery.removed", f"{HOST}.discovery.snapshot"]
    snapshot = rec.last()
    assert isinstance(snapshot, DiscoverySnapshot)
    assert snapshot.services == []
    assert docker.show_calls == [box.id]  # the one container the list may be wrong about


async def test_a_container_that_came_back_after_its_die_is_taken_from_the_list() -> None:
    # restart: always, and its start event is still queued: the list and an inspect both say it
    # runs, so the list announces it and the start adds nothing.
    box = web()
    docker, discovery, rec = setup(box)
    await discovery.on_container_event("start", box.id, box.attributes())
    docker.put(replace(box, state="exited"))
    await discovery.on_container_event("die", box.id, box.attributes(exitCode="0"))
    docker.put(box)
    await discovery.reconcile("periodic")
    await discovery.on_container_event("start", box.id, box.attributes(), time_nano=_after(discovery))
    assert rec.keys == [
        f"{HOST}.discovery.added",
        f"{HOST}.discovery.removed",
        f"{HOST}.discovery.added",
        f"{HOST}.discovery.snapshot",
    ]
    assert [s.container_id for s in discovery.current()] == [box.id]


async def test_an_exited_container_costs_an_inspect_per_list_only_while_lists_show_it() -> None:
    box = web()
    docker, discovery, _rec = setup(box)
    await discovery.on_container_event("start", box.id, box.attributes())
    docker.put(replace(box, state="exited"))
    docker.listed_as[box.id] = box
    await discovery.on_container_event("die", box.id, box.attributes(exitCode="0"))
    docker.show_calls.clear()
    await discovery.reconcile("periodic")
    await discovery.reconcile("periodic")
    assert docker.show_calls == [box.id, box.id]
    del docker.listed_as[box.id]  # the list view caught up: the container is forgotten
    await discovery.reconcile("periodic")
    await discovery.reconcile("periodic")
    assert docker.show_calls == [box.id, box.id]
    assert discovery.current() == []
