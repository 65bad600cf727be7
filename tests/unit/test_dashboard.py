"""The dashboard without a browser or a broker: its state model, its HTTP side, its CLI guard."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from typer.testing import CliRunner

from dockhand import cli
from dockhand.dashboard import DashboardServer, FleetState, check_exposure, parse_bind
from dockhand.dashboard.state import CLOSE, FEED_SIZE, LISTENER_QUEUE


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def heartbeat(host: str = "h1", worker: str = "h1-w", status: str = "healthy", **extra: Any) -> dict[str, Any]:
    return {
        "host_id": host,
        "worker_id": worker,
        "status": status,
        "role": "active",
        "docker": {"reachable": status != "unhealthy", "latency_ms": 1.5, "containers_running": 2},
        "commands": {"succeeded": 4, "failed": 1},
        **extra,
    }


def workspace(ws_id: str, state: str = "running", **extra: Any) -> dict[str, Any]:
    return {
        "workspace_id": ws_id,
        "state": state,
        "image": "busybox:latest",
        "ports": [{"container_port": 80, "protocol": "tcp", "host_ip": "127.0.0.1", "host_port": 32768}],
        "labels": {},
        **extra,
    }


def frames(queue: asyncio.Queue[bytes]) -> list[tuple[str, Any]]:
    out = []
    while not queue.empty():
        raw = queue.get_nowait()
        if raw == CLOSE:
            out.append(("close", None))
            continue
        kind, data = raw.decode().split("\n")[:2]
        out.append((kind.removeprefix("event: "), json.loads(data.removeprefix("data: "))))
    return out


# --- state ---------------------------------------------------------------------------------------


async def test_a_host_turns_silent_after_its_learnt_interval() -> None:
    clock = Clock()
    state = FleetState(silent_intervals=3, default_interval_s=10, clock=clock)
    for _ in range(4):  # every 2 s: the interval learnt is 2 s, so silent after 6 s
        state.heartbeat(heartbeat())
        clock.now += 2
    host = state.snapshot()["hosts"][0]
    assert (host["status"], host["interval_s"], host["silent_after_s"]) == ("healthy", 2.0, 6.0)
    queue = state.listen()
    clock.now += 3.5  # 5.5 s since the last one
    state.tick()
    assert state.snapshot()["hosts"][0]["status"] == "healthy"
    clock.now += 1.0
    state.tick()
    assert state.snapshot()["hosts"][0]["status"] == "silent"
    sent = frames(queue)
    assert ("host", "silent") in [(k, d.get("status")) for k, d in sent if k == "host"]
    assert any(k == "feed" and d["text"] == "healthy → silent" for k, d in sent)
    assert state.live_hosts() == []
    state.heartbeat(heartbeat())  # heard again
    assert state.snapshot()["hosts"][0]["status"] == "healthy"


async def test_the_status_is_the_active_workers_and_standbys_are_counted() -> None:
    state = FleetState(clock=Clock())
    state.heartbeat(heartbeat(worker="w1", status="degraded"))
    state.heartbeat(heartbeat(worker="w2", role="standby"))
    host = state.snapshot()["hosts"][0]
    assert (host["status"], host["role"], host["worker_id"], host["standbys"]) == ("degraded", "active", "w1", 1)
    state.heartbeat(heartbeat(worker="w3", status="unhealthy", broker={"node": "127.0.0.1:5672", "consuming": False}))
    host = state.snapshot()["hosts"][0]
    assert host["broker"] == {"node": "127.0.0.1:5672", "consuming": False}  # the page says "not consuming"
    assert (host["status"], host["docker"]["reachable"]) == ("unhealthy", False)
    assert host["spark"]["latency_ms"] == [1.5, 1.5]  # one sample per active heartbeat


async def test_workspace_lists_send_only_what_changed() -> None:
    state = FleetState(clock=Clock())
    state.workspaces("h1", [workspace("a"), workspace("b")])
    queue = state.listen()
    state.workspaces("h1", [workspace("a"), workspace("c", labels={"dockhand.expires-at": "2026-12-02T01:00:00Z"})])
    [(kind, data)] = frames(queue)
    assert kind == "workspaces"
    assert data["remove"] == ["b"]
    assert [w["workspace_id"] for w in data["upsert"]] == ["c"]
    assert data["upsert"][0]["expires_at"] == "2026-12-02T01:00:00Z"
    assert data["upsert"][0]["ports"] == ["127.0.0.1:32768->80/tcp"]
    state.workspaces("h1", [workspace("a"), workspace("c", labels={"dockhand.expires-at": "2026-12-02T01:00:00Z"})])
    assert frames(queue) == []  # the same list again: nothing to send


async def test_container_events_move_workspaces_and_ask_for_a_list() -> None:
    state = FleetState(clock=Clock())
    state.workspaces("h1", [workspace("a")])
    event = {"host_id": "h1", "type": "container.die", "container": {"id": "c" * 64, "workspace_id": "a"}}
    assert state.event("h1.container.die", event) is False
    assert state.snapshot()["workspaces"]["h1"][0]["state"] == "exited"
    new = {"host_id": "h1", "type": "container.create", "container": {"id": "d" * 64, "workspace_id": "b"}}
    assert state.event("h1.container.create", new) is True  # unknown workspace: list the host
    gone = {"host_id": "h1", "type": "container.destroy", "container": {"id": "c" * 64, "workspace_id": "a"}}
    state.event("h1.container.destroy", gone)
    assert state.snapshot()["workspaces"]["h1"] == []
    expired = {"host_id": "h1", "type": "workspace.expired", "workspace_id": "x", "action": "removed"}
    assert state.event("h1.workspace.expired", expired) is True
    texts = [item["text"] for item in state.snapshot()["feed"]]
    assert texts == ["a die", "b create", "a destroy", "x expired (removed)"]


async def test_failed_results_reach_the_feed_with_their_code_and_the_feed_is_bounded() -> None:
    state = FleetState(clock=Clock())
    state.result(
        "h1.workspace.create.failed",
        {
            "host_id": "h1",
            "type": "workspace.create",
            "status": "failed",
            "command_id": "c1",
            "error": {"code": "conflict", "message": "ws1 exists with another spec", "retryable": False},
        },
    )
    state.result("h1.host.info.succeeded", {"host_id": "h1", "type": "host.info", "status": "succeeded"})
    [item] = state.snapshot()["feed"]
    assert (item["kind"], item["code"], item["status"], item["type"]) == (
        "failure",
        "conflict",
        "failed",
        "workspace.create",
    )
    for i in range(FEED_SIZE + 50):
        state.add_feed(kind="event", host_id="h1", type="container.start", text=str(i))
    feed = state.snapshot()["feed"]
    assert len(feed) == FEED_SIZE
    assert feed[-1]["text"] == str(FEED_SIZE + 49)


async def test_a_listener_that_falls_behind_is_cut_off() -> None:
    state = FleetState(clock=Clock())
    slow = state.listen()
    for i in range(LISTENER_QUEUE + 10):
        state.add_feed(kind="event", host_id="h1", type="t", text=str(i))
    assert slow.qsize() <= LISTENER_QUEUE
    items = [slow.get_nowait() for _ in range(slow.qsize())]
    assert items[-1] == CLOSE  # its stream ends; the page reconnects and gets a snapshot
    state.add_feed(kind="event", host_id="h1", type="t", text="after")
    assert slow.empty()


# --- HTTP ------------------------------------------------------------------------------------------


@pytest.fixture
async def page() -> AsyncIterator[tuple[TestClient[Any, Any], FleetState]]:
    state = FleetState()
    state.heartbeat(heartbeat())
    async with TestClient(TestServer(DashboardServer(state).app(), host="127.0.0.1")) as client:
        yield client, state


async def test_the_page_and_its_files_are_served_with_a_strict_policy(
    page: tuple[TestClient[Any, Any], FleetState],
) -> None:
    client, _ = page
    index = await client.get("/")
    assert index.status == 200
    assert "script-src 'self'" in index.headers["Content-Security-Policy"]
    assert '<script src="/static/app.js"' in await index.text()
    for name in ("app.js", "app.css"):
        assert (await client.get(f"/static/{name}")).status == 200
    assert (await client.get("/static/../server.py")).status == 404
    assert (await client.post("/api/state")).status == 405  # read-only
    state = await (await client.get("/api/state")).json()
    assert [h["host_id"] for h in state["hosts"]] == ["h1"]


async def test_the_event_stream_starts_with_a_snapshot_then_sends_changes(
    page: tuple[TestClient[Any, Any], FleetState],
) -> None:
    client, state = page
    response = await client.get("/api/events")
    assert response.headers["Content-Type"].startswith("text/event-stream")
    first = b""
    while b"event: snapshot" not in first or not first.endswith(b"\n\n"):
        first += await asyncio.wait_for(response.content.readany(), 5)
    snapshot = json.loads(first.split(b"event: snapshot\ndata: ", 1)[1].split(b"\n", 1)[0])
    assert snapshot["hosts"][0]["status"] == "healthy"
    state.heartbeat(heartbeat(status="unhealthy"))
    seen = b""
    while b'"status":"unhealthy"' not in seen:
        seen += await asyncio.wait_for(response.content.readany(), 5)
    assert b"event: host" in seen
    response.close()


async def test_a_foreign_host_name_is_refused_without_a_token(page: tuple[TestClient[Any, Any], FleetState]) -> None:
    client, _ = page
    # DNS rebinding: a page of evil.example whose name now resolves to 127.0.0.1
    assert (await client.get("/api/state", headers={"Host": "evil.example:8090"})).status == 403
    assert (await client.get("/api/state", headers={"Host": "localhost:8090"})).status == 200
    assert (await client.get("/api/state", headers={"Host": "[::1]:8090"})).status == 200


async def test_a_token_is_required_by_header_or_by_the_cookie_the_page_link_sets() -> None:
    state = FleetState()
    async with TestClient(TestServer(DashboardServer(state, token="s3cret").app(), host="127.0.0.1")) as client:
        assert (await client.get("/api/state")).status == 401
        assert (await client.get("/api/state", headers={"Authorization": "Bearer wrong"})).status == 401
        assert (await client.get("/api/state", headers={"Authorization": "Bearer s3cret"})).status == 200
        assert (await client.get("/?token=wrong", allow_redirects=False)).status == 401
        login = await client.get("/?token=s3cret", allow_redirects=False)
        assert login.status == 303
        assert login.headers["Location"] == "/"
        assert "HttpOnly" in login.headers["Set-Cookie"]
        assert (await client.get("/api/events", timeout=5)).status == 200  # the cookie now
        # with a token, any host name may be used (it is what a remote bind needs)
        assert (await client.get("/api/state", headers={"Host": "fleet.example"})).status == 200


@pytest.mark.parametrize(
    ("bind", "expected"),
    [
        ("127.0.0.1:8090", ("127.0.0.1", 8090)),
        (":9000", ("127.0.0.1", 9000)),
        ("[::1]:8090", ("::1", 8090)),
        ("localhost:0", ("localhost", 0)),
    ],
)
def test_bind_values(bind: str, expected: tuple[str, int]) -> None:
    assert parse_bind(bind) == expected


@pytest.mark.parametrize("bind", ["8090", "host:", "host:99999", "host:http"])
def test_bad_bind_values(bind: str) -> None:
    with pytest.raises(ValueError, match="HOST:PORT"):
        parse_bind(bind)


def test_only_loopback_without_a_token() -> None:
    for host in ("127.0.0.1", "::1", "localhost", "127.0.0.2"):
        check_exposure(host, None)
    for host in ("0.0.0.0", "::", "192.0.2.10", "fleet.example"):  # noqa: S104 -- what is being refused
        with pytest.raises(ValueError, match="DOCKHAND_DASHBOARD_TOKEN"):
            check_exposure(host, None)
        check_exposure(host, "s3cret")


def test_the_cli_refuses_a_public_bind_without_a_token_in_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DOCKHAND_DASHBOARD_TOKEN", raising=False)
    out = CliRunner().invoke(cli.app, ["dashboard", "--bind", "0.0.0.0:8090"], prog_name="dockhand")
    assert out.exit_code == cli.EXIT_INVALID
    lines = out.output.strip().splitlines()
    assert len(lines) == 1, out.output
    assert lines[0].startswith("dockhand: --bind 0.0.0.0:")
    assert "--token" in lines[0]


def test_the_cli_names_an_unreachable_broker_in_one_line() -> None:
    out = CliRunner().invoke(
        cli.app,
        ["dashboard", "--bind", "127.0.0.1:0", "--amqp-url", "amqp://guest:guest@127.0.0.1:1/"],
        prog_name="dockhand",
    )
    assert out.exit_code == cli.EXIT_UNAVAILABLE, out.output
    assert out.output.strip().count("\n") == 0, out.output
    assert "cannot reach RabbitMQ" in out.output


async def test_a_worker_no_longer_heard_is_no_longer_counted_as_a_standby() -> None:
    clock = Clock()
    state = FleetState(silent_intervals=3, default_interval_s=1, clock=clock)
    state.heartbeat(heartbeat(worker="w1"))
    state.heartbeat(heartbeat(worker="w2", role="standby"))
    assert state.snapshot()["hosts"][0]["standbys"] == 1
    for _ in range(5):
        clock.now += 1
        state.heartbeat(heartbeat(worker="w1"))
        state.tick()
    host = state.snapshot()["hosts"][0]
    assert (host["standbys"], host["status"]) == (0, "healthy")


async def test_a_heartbeat_says_when_a_host_becomes_live_and_long_silence_forgets_it() -> None:
    clock = Clock()
    state = FleetState(silent_intervals=3, default_interval_s=1, forget_after_s=60, clock=clock)
    assert state.heartbeat(heartbeat()) is True  # new: list its workspaces
    clock.now += 1
    assert state.heartbeat(heartbeat()) is False
    clock.now += 10
    state.tick()
    assert state.live_hosts() == []
    assert state.heartbeat(heartbeat()) is True  # back after silence
    queue = state.listen()
    clock.now += 61
    state.tick()
    assert state.snapshot()["hosts"] == []
    assert ("forget", {"host_id": "h1"}) in frames(queue)


class FakeWorkspaces:
    def __init__(self) -> None:
        self.calls: list[tuple[float, str]] = []

    async def list(self, *, host: str, **options: Any) -> Any:
        assert options["command_id"].startswith("dashboard-")
        self.calls.append((asyncio.get_running_loop().time(), host))
        return type("Listed", (), {"workspaces": []})()


async def test_busy_hosts_do_not_hold_back_the_round_of_every_live_host() -> None:
    from dockhand.dashboard import BusFeed

    state = FleetState()
    for host in ("busy", "quiet"):
        state.heartbeat(heartbeat(host=host, worker=f"{host}-w"))
    client: Any = type("FakeClient", (), {"workspaces": FakeWorkspaces()})()
    feed = BusFeed(client, state, list_interval_s=0.5, debounce_s=0.01)
    feed._everyone = False
    task = asyncio.create_task(feed._poll())
    began = asyncio.get_running_loop().time()
    try:
        while asyncio.get_running_loop().time() - began < 1.2:  # an event on "busy" every 20 ms
            feed._relist("busy")
            await asyncio.sleep(0.02)
    finally:
        task.cancel()
    calls = client.workspaces.calls
    assert sum(1 for _, h in calls if h == "busy") >= 10  # each burst of events lists it soon
    quiet = [t - began for t, h in calls if h == "quiet"]
    assert 1 <= len(quiet) <= 3, quiet  # the periodic round still came, about every 0.5 s
    assert quiet[0] < 0.8, quiet
