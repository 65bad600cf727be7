"""examples/proxy_routes.py against a real worker, broker, daemon and nginx: a workspace created
through the client with a ``discovery`` block becomes reachable through nginx by its domain;
after ``workspace.stop`` it is not.

nginx runs unprivileged-port on 127.0.0.1 with its own prefix, conf, pid and logs under
tmp_path (never the system nginx), and is stopped by its PID."""

from __future__ import annotations

import asyncio
import http.client
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from dockhand.client import Client

from .conftest import AMQP_URL, REPO, TEST_LABEL, WorkerProcess

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
pytestmark = pytest.mark.skipif(not Path(NGINX).exists(), reason="nginx is not installed (scripts/infra.sh)")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Proxy:
    port: int
    routes: Path
    pid_file: Path
    root: Path

    def get(self, domain: str) -> tuple[int, str]:
        """GET / through nginx with ``Host: domain``: (status, body); (0, why) when nginx is not up."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        try:
            conn.request("GET", "/", headers={"Host": domain})
            response = conn.getresponse()
            return response.status, response.read().decode(errors="replace")
        except OSError as err:
            return 0, str(err)
        finally:
            conn.close()

    def log(self, name: str) -> str:
        path = self.root / name
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


@pytest.fixture
def proxy(worker: WorkerProcess, tmp_path: Path) -> Iterator[Proxy]:
    """The example following ``worker``'s host, and an nginx of its own including its conf file."""
    root = tmp_path / "nginx"
    for sub in ("logs", "temp"):
        (root / sub).mkdir(parents=True)
    proxy = Proxy(free_port(), root / "routes.conf", root / "nginx.pid", root)
    example_log = (root / "example.log").open("wb")
    example = subprocess.Popen(
        [
            sys.executable,
            str(REPO / "examples" / "proxy_routes.py"),
            "--amqp-url",
            AMQP_URL,
            "--prefix",
            worker.prefix,
            "--host",
            worker.host_id,
            "--nginx-conf",
            str(proxy.routes),
            "--nginx-pid-file",
            str(proxy.pid_file),
            "--listen",
            f"127.0.0.1:{proxy.port}",
            "--debounce",
            "0.2",
        ],
        cwd=REPO,
        stdout=example_log,
        stderr=subprocess.STDOUT,
    )
    nginx: subprocess.Popen[bytes] | None = None
    try:
        deadline = time.monotonic() + 30
        while not proxy.routes.exists():  # the example writes its file once its view has a state
            assert example.poll() is None, f"the example exited:\n{proxy.log('example.log')}"
            assert time.monotonic() < deadline, f"no routes file within 30 s:\n{proxy.log('example.log')}"
            time.sleep(0.1)
        temp = root / "temp"
        (root / "nginx.conf").write_text(
            f"""
pid {proxy.pid_file};
error_log {root / "logs" / "error.log"} info;
events {{ worker_connections 64; }}
http {{
    access_log {root / "logs" / "access.log"};
    client_body_temp_path {temp / "body"};
    proxy_temp_path {temp / "proxy"};
    fastcgi_temp_path {temp / "fastcgi"};
    uwsgi_temp_path {temp / "uwsgi"};
    scgi_temp_path {temp / "scgi"};
    include {proxy.routes};
}}
"""
        )
        nginx = subprocess.Popen(
            [
                NGINX,
                "-p",
                str(root),
                "-c",
                str(root / "nginx.conf"),
                "-e",
                str(root / "logs" / "error.log"),
                "-g",
                "daemon off;",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 15
        while proxy.get("nobody.example.test")[0] != 404:  # up: its default server answers
            assert nginx.poll() is None, f"nginx exited:\n{proxy.log('logs/error.log')}"
            assert time.monotonic() < deadline, f"nginx did not answer:\n{proxy.log('logs/error.log')}"
            time.sleep(0.1)
        yield proxy
    finally:
        stop(example)
        example_log.close()
        if nginx is not None:
            stop(nginx, signal.SIGQUIT)  # nginx's graceful stop; its master takes its workers along


async def poll(proxy: Proxy, domain: str, want: Callable[[int, str], bool], timeout: float = 30) -> tuple[int, str]:
    """GET ``domain`` through nginx until ``want(status, body)``; the last answer."""
    deadline = time.monotonic() + timeout
    while True:
        status, body = await asyncio.to_thread(proxy.get, domain)
        if want(status, body):
            return status, body
        if time.monotonic() > deadline:
            raise AssertionError(
                f"{domain}: last answer {status} {body[:200]!r}\nroutes:\n{proxy.routes.read_text()}\n"
                f"example:\n{proxy.log('example.log')}\nnginx:\n{proxy.log('logs/error.log')}"
            )
        await asyncio.sleep(0.2)


async def test_a_discovered_workspace_is_routed_by_domain_until_it_stops(
    proxy: Proxy, worker: WorkerProcess, session_id: str, test_image: str
) -> None:
    ws = f"t{session_id}-px-{secrets.token_hex(2)}"
    domain = f"{ws}.example.test"
    page = f"hello from {ws}"
    async with Client.connect(AMQP_URL, prefix=worker.prefix, host=worker.host_id) as dh:
        try:
            created = await dh.workspaces.create(
                workspace_id=ws,
                image=test_image,
                command=["sh", "-c", f"echo '{page}' > /tmp/index.html; exec httpd -f -p 8080 -h /tmp"],
                labels={TEST_LABEL: session_id},
                discovery={"domain": domain, "port": 8080},
            )
            assert created.state == "running"
            _, body = await poll(proxy, domain, lambda s, b: s == 200)
            assert body.strip() == page
            # Its route goes to the container's address on the worker's default network.
            assert "server_name " + domain in proxy.routes.read_text()
            # Another domain still gets the default server's 404, not this workspace.
            assert (await asyncio.to_thread(proxy.get, f"other-{domain}"))[0] == 404

            await dh.workspaces.stop(ws, timeout_s=1)
            _, body = await poll(proxy, domain, lambda s, b: s == 404)
            assert page not in body
            assert domain not in proxy.routes.read_text()
        finally:
            await dh.workspaces.remove(ws, force=True)
