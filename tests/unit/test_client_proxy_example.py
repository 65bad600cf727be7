"""examples/proxy_routes.py's pure parts: which address a service is routed to, the nginx text,
the atomic write. The example against real nginx: tests/integration/test_example_proxy.py."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from dockhand.schemas import Service

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "proxy_routes.py"


def load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("proxy_routes", EXAMPLE)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["proxy_routes"] = module
    spec.loader.exec_module(module)
    return module


proxy = load()


def svc(domain: str, networks: dict[str, str] | None = None, host_ports: dict[str, int] | None = None) -> Service:
    return Service(
        container_id=f"id-{domain}-{len(networks or {})}",
        container_name="c",
        domain=domain,
        port=8080,
        networks=networks or {},
        host_ports=host_ports or {},
    )


def test_backend_prefers_a_network_address_then_a_published_port() -> None:
    assert proxy.backend(svc("a.test", {"b-net": "172.20.0.3", "a-net": "172.19.0.2"})) == "172.19.0.2:8080"
    assert proxy.backend(svc("a.test", {"a-net": "172.19.0.2", "b-net": "172.20.0.3"}), "b-net") == "172.20.0.3:8080"
    assert proxy.backend(svc("a.test", {"a-net": ""}, {"8080/tcp": 49153})) == "127.0.0.1:49153"
    assert proxy.backend(svc("a.test", {}, {"9000/tcp": 49160})) == "127.0.0.1:49160"
    assert proxy.backend(svc("a.test", {"v6": "fd00::5"})) == "[fd00::5]:8080"
    assert proxy.backend(svc("a.test", {"a-net": "not-an-ip"})) is None


def test_render_has_a_default_404_server_and_one_block_per_routable_domain() -> None:
    text = proxy.render(
        {
            "b.example.test": [svc("b.example.test", {"n": "172.20.0.2"})],
            "a.example.test": [
                svc("a.example.test", {"n": "172.20.0.3"}),
                svc("a.example.test", {"n": "172.20.0.4", "m": ""}),
            ],
            "none.example.test": [svc("none.example.test")],  # no address: skipped
            "bad;domain": [svc("bad;domain", {"n": "172.20.0.9"})],  # never reaches nginx's parser
        },
        "127.0.0.1:8088",
    )
    assert "listen 127.0.0.1:8088 default_server;\n    server_name _;\n    return 404;" in text
    assert "server_name b.example.test;" in text
    assert "proxy_pass http://172.20.0.2:8080;" in text
    assert "upstream dockhand_a_example_test {\n    server 172.20.0.3:8080;\n    server 172.20.0.4:8080;\n}" in text
    assert "proxy_pass http://dockhand_a_example_test;" in text
    assert text.index("a.example.test") < text.index("b.example.test")  # stable order: no needless reloads
    assert "none.example.test" not in text
    assert "bad;domain" not in text
    assert "172.20.0.9" not in text


@pytest.mark.skipif(shutil.which("nginx") is None, reason="nginx is not installed")
def test_rendered_text_is_valid_nginx_config(tmp_path: Path) -> None:
    routes = tmp_path / "routes.conf"
    routes.write_text(proxy.render({"a.example.test": [svc("a.example.test", {"n": "172.20.0.3"})]}, "127.0.0.1:8088"))
    conf = tmp_path / "nginx.conf"
    conf.write_text(f"pid {tmp_path}/pid;\nevents {{}}\nhttp {{ access_log off; include {routes}; }}\n")
    check = subprocess.run(
        ["nginx", "-t", "-p", str(tmp_path), "-c", str(conf), "-e", str(tmp_path / "error.log")],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert check.returncode == 0, check.stderr


def test_write_atomically_writes_only_a_change(tmp_path: Path) -> None:
    path = tmp_path / "routes.conf"
    assert proxy.write_atomically(path, "one\n") is True
    assert proxy.write_atomically(path, "one\n") is False
    assert proxy.write_atomically(path, "two\n") is True
    assert path.read_text() == "two\n"
    assert [p.name for p in tmp_path.iterdir()] == ["routes.conf"]  # no temporary file left behind
