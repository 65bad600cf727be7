"""The dashboard's page in a real Chromium (Debian's, through playwright), over synthetic state:
50 hosts and 2,000 workspaces (time to first paint, heap, a bounded DOM), keyboard use, status
words, a stream that is lost and comes back, a tab that is frozen and wakes."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import time
from collections.abc import AsyncIterator
from typing import Any

import playwright.async_api as playwright_api
import pytest

from dockhand.dashboard import DashboardServer, FleetState
from dockhand.dashboard.server import start_site
from tests.browser import CHROMIUM, CHROMIUM_ARGS

pytestmark = pytest.mark.browser

HOSTS = 50
WORKSPACES = 2000
BIG_HOST_SHARE = 1000  # one host holds half of them: its list must still be bounded


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def fleet(clock: Clock) -> FleetState:
    """50 hosts with 60 heartbeats each (full sparklines), 2,000 workspaces, 300 services, a full feed."""
    state = FleetState(clock=clock, default_interval_s=10)
    start = clock.now
    clock.now = start - 600
    for beat in range(60):
        for h in range(HOSTS):
            status = "unhealthy" if h == 7 else "degraded" if h == 8 else "healthy"
            state.heartbeat(
                {
                    "host_id": f"host-{h:02d}",
                    "worker_id": f"host-{h:02d}-w",
                    "status": status,
                    "role": "active",
                    "docker": {
                        "reachable": h != 7,
                        "latency_ms": 0.5 + (beat * h) % 7,
                        "containers_running": 20 + beat % 5,
                    },
                    "commands": {"succeeded": beat * 3, "failed": beat % 4, "rejected": 0, "in_flight": 1},
                }
            )
        clock.now += 10
    clock.now = start
    per_host = (WORKSPACES - BIG_HOST_SHARE) // (HOSTS - 1)
    for h in range(HOSTS):
        count = BIG_HOST_SHARE if h == 0 else per_host
        state.workspaces(
            f"host-{h:02d}",
            [
                {
                    "workspace_id": f"ws-{h:02d}-{i:04d}",
                    "state": "running" if i % 10 else "exited",
                    "image": "registry.example/team/app:1.2.3",
                    "ports": [
                        {"container_port": 8080, "protocol": "tcp", "host_ip": "127.0.0.1", "host_port": 30000 + i}
                    ],
                    "labels": {"dockhand.expires-at": "2030-01-01T00:00:00Z"} if i % 3 == 0 else {},
                    "project": "demo",
                }
                for i in range(count)
            ],
        )
        state.services(
            f"host-{h:02d}",
            [
                {
                    "container_id": f"{h:02d}{i:02d}" * 8,
                    "container_name": f"web-{h}-{i}",
                    "domain": f"app{i}.host{h}.example.test",
                    "port": 8080,
                    "networks": {"bridge": f"198.51.100.{i + 1}"},
                    "host_ports": {"8080/tcp": 31000 + i},
                }
                for i in range(6)
            ],
        )
    for i in range(250):
        state.result(
            f"host-{i % HOSTS:02d}.workspace.create.failed",
            {
                "host_id": f"host-{i % HOSTS:02d}",
                "type": "workspace.create",
                "status": "failed",
                "command_id": f"c{i}",
                "error": {"code": "image_not_found", "message": f"image nope:{i} not found"},
            },
        )
    total = sum(len(ws) for ws in state.snapshot()["workspaces"].values())
    assert total >= WORKSPACES - HOSTS
    return state


@contextlib.asynccontextmanager
async def serving(state: FleetState, port: int = 0) -> AsyncIterator[tuple[DashboardServer, int]]:
    server = DashboardServer(state)
    runner, bound = await start_site(server, "127.0.0.1", port)
    try:
        yield server, bound
    finally:
        await runner.cleanup()


def require_chromium() -> None:
    if not os.path.exists(CHROMIUM):
        pytest.fail(f"{CHROMIUM} is missing: scripts/infra.sh installs Debian's chromium for the browser tests")


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    require_chromium()
    async with playwright_api.async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            await browser.close()


async def open_page(browser: Any, url: str) -> tuple[Any, list[str]]:
    page = await browser.new_page(viewport={"width": 1400, "height": 900})
    errors: list[str] = []
    page.on("pageerror", lambda err: errors.append(str(err)))
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    await page.goto(url)
    await page.wait_for_function("() => window.__dashboard && window.__dashboard.rendered > 0", timeout=15000)
    return page, errors


async def element_count(page: Any) -> int:
    return int(await page.evaluate("document.getElementsByTagName('*').length"))


async def test_fifty_hosts_and_two_thousand_workspaces(browser: Any) -> None:
    clock = Clock()
    state = fleet(clock)
    snapshot_bytes = len(json.dumps(state.snapshot()))
    async with serving(state) as (_, port):
        page = await browser.new_page(viewport={"width": 1400, "height": 900})
        cdp = await page.context.new_cdp_session(page)
        await cdp.send("Performance.enable")
        errors: list[str] = []
        page.on("pageerror", lambda err: errors.append(str(err)))
        await page.goto(f"http://127.0.0.1:{port}/")
        await page.wait_for_function("() => window.__dashboard && window.__dashboard.rendered > 0", timeout=15000)
        timing = await page.evaluate(
            """() => ({
                fcp: (performance.getEntriesByName('first-contentful-paint')[0] || {}).startTime || null,
                rendered: window.__dashboard.rendered,
                snapshot: window.__dashboard.snapshotAt,
            })"""
        )
        await page.wait_for_timeout(300)  # a paint after the render
        metrics = {m["name"]: m["value"] for m in (await cdp.send("Performance.getMetrics"))["metrics"]}
        collapsed = await element_count(page)
        rows = await page.locator("#host-rows tr.host").count()
        summary = await page.inner_text("#summary")

        # Every host expanded: each shows at most one page of its workspaces.
        await page.evaluate("document.querySelectorAll('button.toggle').forEach(b => b.click())")
        await page.wait_for_selector('#ws-host-49 tr[data-workspace="ws-49-0019"]')
        expanded = await element_count(page)
        big = page.locator("#ws-host-00 tbody tr")
        assert await big.count() == 50
        await page.click("#ws-host-00 button.more")
        await page.wait_for_function("() => document.querySelectorAll('#ws-host-00 tbody tr').length === 100")
        more = await page.locator("#ws-host-00 button.more").inner_text()
        metrics_after = {m["name"]: m["value"] for m in (await cdp.send("Performance.getMetrics"))["metrics"]}

        # A heartbeat round of all 50 hosts and 100 workspace changes reach the page quickly.
        began = time.perf_counter()
        for h in range(HOSTS):
            state.heartbeat(
                {
                    "host_id": f"host-{h:02d}",
                    "worker_id": f"host-{h:02d}-w",
                    "status": "healthy",
                    "role": "active",
                    "docker": {"reachable": True, "latency_ms": 99.0, "containers_running": 1},
                    "commands": {},
                }
            )
        state.workspaces(
            "host-01", [{"workspace_id": f"new-{i}", "state": "running", "image": "x"} for i in range(100)]
        )
        await page.wait_for_selector('tr[data-host="host-07"][data-status="healthy"]')
        await page.wait_for_selector('#ws-host-01 tr[data-workspace="new-9"]')
        update_ms = (time.perf_counter() - began) * 1000
        await page.close()

    figures = {
        "hosts": rows,
        "snapshot_kib": round(snapshot_bytes / 1024),
        "first_contentful_paint_ms": round(timing["fcp"]) if timing["fcp"] else None,
        "state_rendered_ms": round(timing["rendered"]),
        "snapshot_parsed_ms": round(timing["snapshot"]),
        "js_heap_used_mib": round(metrics["JSHeapUsedSize"] / 2**20, 1),
        "js_heap_used_all_expanded_mib": round(metrics_after["JSHeapUsedSize"] / 2**20, 1),
        "dom_nodes_cdp": int(metrics["Nodes"]),
        "elements_collapsed": collapsed,
        "elements_all_expanded": expanded,
        "update_50_heartbeats_100_workspaces_ms": round(update_ms),
    }
    print("\ndashboard figures:", json.dumps(figures))
    assert not errors, errors
    assert rows == HOSTS
    assert "50 hosts" in summary
    assert "1 unhealthy" in summary
    # Bounded DOM: collapsed, no workspace row at all; expanded, at most a page (50) per host.
    assert collapsed < 3000, figures
    assert expanded < HOSTS * 50 * 12 + 3000, figures
    assert "not shown" in more
    assert timing["rendered"] < 10000, figures  # generous: a loaded 2-core machine


async def test_keyboard_status_words_and_show_more(browser: Any) -> None:
    clock = Clock()
    state = fleet(clock)
    async with serving(state) as (_, port):
        page, errors = await open_page(browser, f"http://127.0.0.1:{port}/")
        # The status is a word, not only a colour.
        assert await page.inner_text('tr[data-host="host-07"] [data-field="status"]') == "unhealthy"
        assert await page.inner_text('tr[data-host="host-08"] [data-field="status"]') == "degraded"
        # Keyboard only: Tab reaches the first host's toggle, Enter expands it, focus stays on it.
        for _ in range(10):
            await page.keyboard.press("Tab")
            if await page.evaluate("document.activeElement.classList.contains('toggle')"):
                break
        assert await page.evaluate("document.activeElement.dataset.focus") == "toggle:host-00"
        await page.keyboard.press("Enter")
        await page.wait_for_selector("#ws-host-00:not([hidden])")
        assert await page.get_attribute('tr[data-host="host-00"] button.toggle', "aria-expanded") == "true"
        # A workspace's row: state word, image, ports and its expiry (from the expires-at label).
        row = await page.inner_text('#ws-host-00 tr[data-workspace="ws-00-0000"]')
        assert "exited" in row
        assert "127.0.0.1:30000->8080/tcp" in row
        assert re.search(r"in \d+ h", row), row
        assert "\u2013" in await page.inner_text('#ws-host-00 tr[data-workspace="ws-00-0001"] td:nth-child(5)')
        outline = await page.evaluate("getComputedStyle(document.activeElement).outlineStyle")
        assert outline != "none"  # focus is visible
        # A live update of that host keeps the focus where it was.
        state.heartbeat(
            {"host_id": "host-00", "worker_id": "host-00-w", "status": "degraded", "docker": {"reachable": True}}
        )
        await page.wait_for_selector('tr[data-host="host-00"][data-status="degraded"]')
        assert await page.evaluate("document.activeElement.dataset.focus") == "toggle:host-00"
        # Filter by workspace id.
        await page.fill("#filter", "ws-03-0001")
        await page.wait_for_function("() => document.querySelectorAll('#host-rows tr.host:not([hidden])').length === 1")
        assert not errors, errors


async def test_a_lost_stream_and_a_frozen_tab_come_back_with_the_current_state(browser: Any) -> None:
    clock = Clock()
    state = fleet(clock)
    async with serving(state) as (_, port):
        page, errors = await open_page(browser, f"http://127.0.0.1:{port}/")
        snapshots = await page.evaluate("window.__dashboard.snapshots")

        # Frozen (as a sleeping background tab): changes made meanwhile show once it wakes.
        cdp = await page.context.new_cdp_session(page)
        await cdp.send("Page.setWebLifecycleState", {"state": "frozen"})
        state.workspaces("host-05", [{"workspace_id": "made-while-asleep", "state": "running", "image": "x"}])
        state.heartbeat(
            {"host_id": "host-05", "worker_id": "host-05-w", "status": "unhealthy", "docker": {"reachable": False}}
        )
        await asyncio.sleep(6)
        await cdp.send("Page.setWebLifecycleState", {"state": "active"})
        await page.wait_for_selector('tr[data-host="host-05"][data-status="unhealthy"]', timeout=5000)
        assert "1 workspace " in await page.inner_text('tr[data-host="host-05"] button.toggle')

    # The server goes away: the page says so ...
    await page.wait_for_selector('#conn[data-state="reconnecting"]', timeout=5000)
    assert "reconnecting" in await page.inner_text("#conn")
    # ... and a server that comes back (on the same port) with other state is shown as it is now.
    state.heartbeat({"host_id": "host-new", "worker_id": "w", "status": "healthy", "docker": {"reachable": True}})
    async with serving(state, port):
        await page.wait_for_selector('tr[data-host="host-new"]', timeout=10000)
        assert await page.evaluate("window.__dashboard.snapshots") > snapshots
    assert not [e for e in errors if "ERR_CONNECTION_REFUSED" not in e and "Failed to load" not in e], errors
