"""``dockhand dashboard`` in a real Chromium against real workers: two hosts on two real dockerds;
a workspace created with the CLI shows within 2 s; stopping the second dockerd turns its host
unhealthy within one heartbeat interval; killing its worker turns it silent; a broker restart
shows "reconnecting" and then the fleet again.

Set ``DOCKHAND_DASHBOARD_SCREENSHOT=docs/dashboard.png`` to refresh the README's screenshot."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiodocker
import playwright.async_api as playwright_api
import pytest

from tests.browser import CHROMIUM, CHROMIUM_ARGS

from .conftest import AMQP_URL, REPO, TEST_IMAGE, TEST_LABEL, WorkerFactory, WorkerProcess
from .dockerd2 import SecondDockerd, unique_name
from .rabbit2 import SecondRabbit

pytestmark = [pytest.mark.browser, pytest.mark.slow]

INTERVAL_S = 3.0
"""The test workers' heartbeat interval (DOCKHAND_HEALTH_INTERVAL_S)."""


class Dashboard:
    """A ``dockhand dashboard`` subprocess on a free loopback port."""

    def __init__(self, prefix: str, log_path: Path, amqp_url: str = AMQP_URL) -> None:
        env = {**os.environ, "DOCKHAND_AMQP_URL": amqp_url, "DOCKHAND_EXCHANGE_PREFIX": prefix}
        env.pop("DOCKHAND_DASHBOARD_TOKEN", None)
        self.log_path = log_path
        with log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "dockhand.cli", "dashboard", "--bind", "127.0.0.1:0", "--list-interval", "5"],
                cwd=REPO,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            match = re.search(r"dashboard on (http://127\.0\.0\.1:\d+/)", self.log())
            if match:
                self.url = match.group(1)
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        self.stop()
        raise AssertionError(f"the dashboard did not start:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(10)


@contextlib.contextmanager
def dashboard(prefix: str, tmp_path: Path, amqp_url: str = AMQP_URL) -> Iterator[Dashboard]:
    dash = Dashboard(prefix, tmp_path / "dashboard.log", amqp_url)
    try:
        yield dash
    except BaseException:
        print(f"dashboard log:\n{dash.log()[-4000:]}")  # shown with the failure
        raise
    finally:
        code = dash.stop()
        assert code == 0, f"the dashboard exited with {code}:\n{dash.log()[-3000:]}"


def require_chromium() -> None:
    assert os.path.exists(CHROMIUM), f"{CHROMIUM} is missing: scripts/infra.sh installs Debian's chromium"


@contextlib.asynccontextmanager
async def chromium() -> AsyncIterator[Any]:
    require_chromium()
    async with playwright_api.async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            await browser.close()


def server_state(url: str) -> dict[str, Any]:
    """The dashboard's whole state (``/api/state``), for failure messages."""
    with urllib.request.urlopen(f"{url}api/state", timeout=10) as response:  # noqa: S310 -- our own http://127.0.0.1
        state: dict[str, Any] = json.loads(response.read())
    return state


def cli(prefix: str, *args: str, amqp_url: str = AMQP_URL) -> dict[str, Any]:
    env = {**os.environ, "DOCKHAND_AMQP_URL": amqp_url, "DOCKHAND_EXCHANGE_PREFIX": prefix}
    out = subprocess.run(
        [sys.executable, "-m", "dockhand.cli", "send", "--json", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert out.stdout.strip(), f"no reply: {out.stderr}"
    reply: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return reply


async def status_of(page: Any, host: str) -> str | None:
    value = await page.get_attribute(f'tr[data-host="{host}"]', "data-status")
    return str(value) if value is not None else None


async def wait_status(page: Any, host: str, status: str, timeout: float) -> float:
    """Seconds until the page shows ``status`` for ``host`` (AssertionError after ``timeout``)."""
    began = time.monotonic()
    try:
        await page.wait_for_selector(f'tr[data-host="{host}"][data-status="{status}"]', timeout=timeout * 1000)
    except playwright_api.TimeoutError:
        raise AssertionError(
            f"{host} not {status} within {timeout:g} s (shows {await status_of(page, host)!r})"
        ) from None
    return time.monotonic() - began


async def test_two_hosts_a_new_workspace_a_stopped_dockerd_and_a_killed_worker(
    workers: WorkerFactory, session_id: str, tmp_path: Path, docker: aiodocker.Docker
) -> None:
    d = SecondDockerd(tmp_path / "dockerd2", name=unique_name("dhd"))
    first: WorkerProcess | None = None
    second: WorkerProcess | None = None
    ws_id = f"t{session_id}-dash"
    domain = f"dash-{session_id}.example.test"
    figures: dict[str, float] = {}
    try:
        await asyncio.to_thread(d.start)
        await asyncio.to_thread(d.load_image, TEST_IMAGE)
        beat = {"DOCKHAND_HEALTH_INTERVAL_S": str(INTERVAL_S)}
        first = await asyncio.to_thread(workers.start, "dash1", **beat)
        second = await asyncio.to_thread(workers.start, "dash2", DOCKHAND_DOCKER_HOST=d.url, **beat)
        with dashboard(workers.prefix, tmp_path) as dash:
            async with chromium() as browser:
                page = await browser.new_page(viewport={"width": 1400, "height": 1000})
                errors: list[str] = []
                page.on("pageerror", lambda err: errors.append(str(err)))
                await page.goto(dash.url)

                # Both hosts, healthy, live.
                # (set-up, not a measured property: generous on a loaded machine)
                await page.wait_for_selector('#conn[data-state="live"]', timeout=60000)
                for host in (first.host_id, second.host_id):
                    await wait_status(page, host, "healthy", 60)
                shown = await page.eval_on_selector_all("#host-rows tr.host", "rows => rows.map(r => r.dataset.host)")
                assert {first.host_id, second.host_id} <= set(shown), shown
                assert await page.inner_text(f'tr[data-host="{second.host_id}"] [data-field="status"]') == "healthy"

                # A workspace created with the CLI shows within 2 s (the host's list is open).
                await page.click(f'tr[data-host="{first.host_id}"] button.toggle')
                await page.wait_for_selector(f"#ws-{first.host_id}:not([hidden])")
                payload = {
                    "workspace_id": ws_id,
                    "image": TEST_IMAGE,
                    "command": ["sleep", "300"],
                    "labels": {TEST_LABEL: session_id},
                    "discovery": {"domain": domain, "port": 8080},
                }
                sent = time.monotonic()
                reply = await asyncio.to_thread(
                    cli, workers.prefix, "workspace.create", "--host", first.host_id, "--payload", json.dumps(payload)
                )
                replied = time.monotonic()
                assert reply["status"] == "succeeded", reply
                row = f'#ws-{first.host_id} tr[data-workspace="{ws_id}"]'
                try:
                    await page.wait_for_selector(row, timeout=2000)
                except playwright_api.TimeoutError:
                    raise AssertionError(f"workspace {ws_id} not on the page within 2 s:\n{dash.log()}") from None
                figures["workspace_shown_after_reply_s"] = round(time.monotonic() - replied, 2)
                figures["workspace_shown_after_cli_start_s"] = round(time.monotonic() - sent, 2)
                assert "running" in await page.inner_text(row)
                try:
                    await page.wait_for_selector(f'#service-rows tr[data-domain="{domain}"]', timeout=15000)
                except playwright_api.TimeoutError:
                    services = (await asyncio.to_thread(server_state, dash.url))["services"]
                    raise AssertionError(f"{domain} not among the services shown; the server has {services}") from None
                # A failed command reaches the feed with its error code.
                missing = await asyncio.to_thread(
                    cli, workers.prefix, "workspace.inspect", "--host", first.host_id, "--payload",
                    json.dumps({"workspace_id": f"t{session_id}-missing"}),
                )  # fmt: skip
                assert missing["status"] == "failed"
                # (failures only: the machine's daemon may be busy with other runs' containers, whose
                # events would push it out of the 100 entries shown)
                await page.check("#failures-only")
                await page.wait_for_selector('#feed-list li[data-kind="failure"] code:text("not_found")', timeout=15000)
                assert await page.locator('#feed-list li:not([data-kind="failure"])').count() == 0
                await page.uncheck("#failures-only")

                # The second dockerd stops: its host is unhealthy within one heartbeat interval of
                # the daemon going away (a graceful stop takes about a second of its own).
                stopping = time.monotonic()
                await asyncio.to_thread(d.stop)
                figures["dockerd_stop_took_s"] = round(time.monotonic() - stopping, 2)
                figures["unhealthy_after_dockerd_stopped_s"] = round(
                    await wait_status(page, second.host_id, "unhealthy", INTERVAL_S), 2
                )
                figures["unhealthy_after_dockerd_stop_began_s"] = round(time.monotonic() - stopping, 2)
                assert (
                    await page.inner_text(f'tr[data-host="{second.host_id}"] [data-field="latency"]') == "unreachable"
                )
                assert await status_of(page, first.host_id) == "healthy"
                shot = Path(os.environ.get("DOCKHAND_DASHBOARD_SCREENSHOT") or tmp_path / "dashboard.png")
                await page.screenshot(path=str(REPO / shot if not shot.is_absolute() else shot), full_page=True)

                # Its worker is killed: silent after a few intervals (3, as learnt) without a heartbeat.
                second.stop(signal.SIGKILL)
                figures["silent_after_worker_kill_s"] = round(
                    await wait_status(page, second.host_id, "silent", 3 * INTERVAL_S * 1.5 + 3), 2
                )
                assert await page.inner_text(f'tr[data-host="{second.host_id}"] [data-field="status"]') == "silent"
                assert await status_of(page, first.host_id) == "healthy"
                assert not errors, errors
        print("\ndashboard integration figures:", json.dumps(figures))
    finally:
        with contextlib.suppress(Exception):
            for container in await docker.containers.list(
                all=True, filters={"label": [f"{TEST_LABEL}={session_id}", f"dockhand.workspace.id={ws_id}"]}
            ):
                await container.delete(force=True, v=True)
        for w in (first, second):
            if w is not None:
                await asyncio.to_thread(w.stop)  # its events would reach other tests of the prefix
        await asyncio.to_thread(d.cleanup)


async def test_a_broker_restart_shows_reconnecting_then_the_fleet(workers: WorkerFactory, tmp_path: Path) -> None:
    with SecondRabbit(tmp_path / "rabbit") as rabbit:
        worker = await asyncio.to_thread(
            workers.start, "dashbrk", DOCKHAND_AMQP_URL=rabbit.url, DOCKHAND_HEALTH_INTERVAL_S=str(INTERVAL_S)
        )
        try:
            with dashboard(workers.prefix, tmp_path, rabbit.url) as dash:
                async with chromium() as browser:
                    page = await browser.new_page()
                    await page.goto(dash.url)
                    await wait_status(page, worker.host_id, "healthy", 60)
                    await page.wait_for_selector('#conn[data-state="live"]', timeout=10000)

                    await asyncio.to_thread(rabbit.stop)
                    await page.wait_for_selector('#conn[data-state="reconnecting"]', timeout=10000)
                    assert "reconnecting to RabbitMQ" in await page.inner_text("#conn")
                    await asyncio.to_thread(rabbit.start)
                    await page.wait_for_selector('#conn[data-state="live"]', timeout=60000)
                    # Heartbeats flow again on the new connection (the worker reconnected too).
                    seen = await page.evaluate(
                        f"() => window.__dashboard.state.hosts.get({json.dumps(worker.host_id)}).seen_at"
                    )
                    await page.wait_for_function(
                        f"() => window.__dashboard.state.hosts.get({json.dumps(worker.host_id)}).seen_at > {seen}",
                        timeout=60000,
                    )
                    await wait_status(page, worker.host_id, "healthy", 30)
        finally:
            await asyncio.to_thread(worker.stop)
