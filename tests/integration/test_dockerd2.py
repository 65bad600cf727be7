"""The second-dockerd harness (``dockerd2.py``): start, restart, kill, published ports, cleanup."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import aiodocker
import pytest

from .conftest import TEST_IMAGE, TEST_LABEL
from .dockerd2 import SecondDockerd, unique_name

LABELS = {TEST_LABEL: "dockerd2"}


def _http_get(port: int, timeout: float = 15) -> bytes:
    """GET http://127.0.0.1:port/, retrying while the container's httpd comes up."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=3) as reply:
                return reply.read()
        except OSError:  # URLError, connection refused/reset while docker-proxy or httpd start
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.1)


def _host_port(info: dict[str, Any]) -> int:
    return int(info["NetworkSettings"]["Ports"]["8080/tcp"][0]["HostPort"])


def _primary_docker(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["docker", *args], capture_output=True, text=True, timeout=60, check=False)


def _assert_cleaned_up_and_primary_intact(d: SecondDockerd, tmp_path: Path) -> None:
    assert not d.root.exists()
    assert not Path(f"/sys/class/net/{d.bridge}").exists()
    with open("/proc/self/mounts") as mounts:
        assert not [line for line in mounts if str(tmp_path) in line]
    if shutil.which("iptables-save"):
        rules = subprocess.run(["iptables-save"], capture_output=True, text=True, check=False).stdout
        assert d.bridge not in rules
    # The primary daemon is untouched.
    assert Path("/sys/class/net/docker0").exists()
    assert _primary_docker("info", "--format", "{{.ServerVersion}}").returncode == 0


@pytest.mark.slow
async def test_second_dockerd_restart_kill_and_ports(tmp_path: Path) -> None:
    d = SecondDockerd(tmp_path / "dockerd2", name=unique_name())
    try:
        await asyncio.to_thread(d.start)
        await asyncio.to_thread(d.load_image, TEST_IMAGE)

        async with aiodocker.Docker(url=d.url) as docker:
            info = await docker.system.info()
            assert info["DockerRootDir"] == str(d.data_root)
            assert info["ID"] != _primary_docker("info", "--format", "{{.ID}}").stdout.strip()
            container = await docker.containers.create(
                config={
                    "Image": TEST_IMAGE,
                    "Labels": LABELS,
                    "HostConfig": {"PortBindings": {"8080/tcp": [{"HostIp": "127.0.0.1", "HostPort": ""}]}},
                },
                name=f"dockerd2-{d.name}",
            )
            cid = container.id
            await container.start()
            shown = await container.show()
            assert shown["State"]["Running"]
            assert b"dockhand test page" in await asyncio.to_thread(_http_get, _host_port(shown))

        # A graceful restart without live-restore: dockerd stops the container on the way down.
        await asyncio.to_thread(d.restart)
        async with aiodocker.Docker(url=d.url) as docker:
            container = await docker.containers.get(cid)
            shown = await container.show()
            assert shown["State"]["Status"] == "exited"
            assert not shown["State"]["Running"]
            await container.start()
            shown = await container.show()
            assert shown["State"]["Running"]
            assert b"dockhand test page" in await asyncio.to_thread(_http_get, _host_port(shown))

        # A crash: the container outlives dockerd, the next dockerd stops it.
        await asyncio.to_thread(d.kill)
        assert not d.running
        await asyncio.to_thread(d.start)
        async with aiodocker.Docker(url=d.url) as docker:
            shown = await (await docker.containers.get(cid)).show()
            assert shown["State"]["Status"] == "exited"
    finally:
        await asyncio.to_thread(d.cleanup)
    await asyncio.to_thread(_assert_cleaned_up_and_primary_intact, d, tmp_path)
