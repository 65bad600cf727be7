"""DOCKHAND_* settings: environment parsing, host id, limits, derived values."""

from __future__ import annotations

import os
import re
import socket

import pytest
from pydantic import ValidationError

from dockhand.worker.settings import Settings, default_host_id

HOST_ID = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No DOCKHAND_* (or DOCKER_HOST/_TLS_VERIFY/_CERT_PATH) from the developer's shell leaks into these tests."""
    for name in list(os.environ):
        if name.startswith("DOCKHAND_") or name in {"DOCKER_HOST", "DOCKER_TLS_VERIFY", "DOCKER_CERT_PATH"}:
            monkeypatch.delenv(name)
    monkeypatch.setattr(socket, "gethostname", lambda: "test-box")
    return monkeypatch


def test_defaults(clean_env: pytest.MonkeyPatch) -> None:
    s = Settings()
    assert s.host_id == "test-box"
    assert s.docker_host is None
    assert s.allowed_bind_roots == []
    assert s.allowed_capabilities == []
    assert s.allowed_registries == []
    assert s.publish_host_ip == "127.0.0.1"
    assert (s.exchange_prefix, s.label_prefix, s.discovery_label_prefix) == ("dockhand", "dockhand", "dockhand")


def test_env_values_are_read(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("DOCKHAND_HOST_ID", "host-a")
    clean_env.setenv("DOCKHAND_MAX_CONCURRENCY", "3")
    clean_env.setenv("DOCKHAND_DOCKER_TIMEOUT_S", "2.5")
    clean_env.setenv("DOCKHAND_LOG_JSON", "true")
    clean_env.setenv("DOCKHAND_EXCHANGE_PREFIX", "acme")
    clean_env.setenv("DOCKHAND_AMQP_URL", "amqp://u:p@rabbit:5672/v")
    s = Settings()
    assert s.host_id == "host-a"
    assert s.max_concurrency == 3
    assert s.docker_timeout_s == 2.5
    assert s.log_json is True
    assert s.exchange_prefix == "acme"
    assert s.amqp_url == "amqp://u:p@rabbit:5672/v"


def test_docker_host_falls_back_to_docker_host_env(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("DOCKER_HOST", "tcp://docker:2375")
    clean_env.setenv("DOCKHAND_DOCKER_ALLOW_PLAINTEXT_TCP", "true")  # plain TCP is refused otherwise
    assert Settings().docker_host == "tcp://docker:2375"
    clean_env.setenv("DOCKHAND_DOCKER_HOST", "unix:///run/other.sock")
    assert Settings().docker_host == "unix:///run/other.sock"


def test_comma_lists(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("DOCKHAND_ALLOWED_BIND_ROOTS", " /srv/data, /mnt/work/ ,,")
    clean_env.setenv("DOCKHAND_ALLOWED_CAPABILITIES", "cap_net_admin, CHOWN,NET_ADMIN")
    clean_env.setenv("DOCKHAND_ALLOWED_REGISTRIES", "ghcr.io,localhost:5000 , registry.example.com")
    s = Settings()
    assert s.allowed_bind_roots == ["/srv/data", "/mnt/work"]
    assert s.allowed_capabilities == ["CHOWN", "NET_ADMIN"]
    assert s.allowed_registries == ["ghcr.io", "localhost:5000", "registry.example.com"]


def test_single_item_list(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("DOCKHAND_ALLOWED_REGISTRIES", "ghcr.io")
    assert Settings().allowed_registries == ["ghcr.io"]


def test_empty_list_variables(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("DOCKHAND_ALLOWED_BIND_ROOTS", "")
    clean_env.setenv("DOCKHAND_ALLOWED_CAPABILITIES", " , ")
    s = Settings()
    assert s.allowed_bind_roots == []
    assert s.allowed_capabilities == []


def test_lists_as_python_values() -> None:
    s = Settings(host_id="h1", allowed_capabilities=["cap_sys_time"], allowed_bind_roots=["/a/b/"])
    assert s.allowed_capabilities == ["SYS_TIME"]
    assert s.allowed_bind_roots == ["/a/b"]


def test_relative_bind_root_rejected(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("DOCKHAND_ALLOWED_BIND_ROOTS", "/srv/ok,data")
    with pytest.raises(ValidationError, match="absolute"):
        Settings()


@pytest.mark.parametrize(
    ("hostname", "expected"),
    [
        ("Build-Box-01", "build-box-01"),
        ("my_host.example.COM", "my-host-example-com"),
        ("--edge--", "edge"),
        ("host with spaces!", "host-with-spaces"),
        ("___", "host"),
        ("", "host"),
        ("ünï.côdé", "n-c-d"),
    ],
)
def test_default_host_id_makes_hostnames_valid(clean_env: pytest.MonkeyPatch, hostname: str, expected: str) -> None:
    clean_env.setattr(socket, "gethostname", lambda: hostname)
    assert default_host_id() == expected
    assert Settings().host_id == expected


def test_default_host_id_truncates_long_hostnames(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setattr(socket, "gethostname", lambda: "Node" * 40 + ".cluster.local")
    host_id = default_host_id()
    assert len(host_id) == 63
    assert HOST_ID.match(host_id)
    assert Settings().host_id == host_id


@pytest.mark.parametrize("hostname", ["any", "ALL"])
def test_default_host_id_never_yields_a_reserved_id(clean_env: pytest.MonkeyPatch, hostname: str) -> None:
    clean_env.setattr(socket, "gethostname", lambda: hostname)
    assert Settings().host_id not in {"any", "all"}


@pytest.mark.parametrize("host_id", ["Host-A", "host_a", "-host", "", "a" * 64, "any", "all", "host.a", "hôst"])
def test_invalid_host_id_rejected(clean_env: pytest.MonkeyPatch, host_id: str) -> None:
    with pytest.raises(ValidationError, match="host id"):
        Settings(host_id=host_id)
    clean_env.setenv("DOCKHAND_HOST_ID", host_id)
    with pytest.raises(ValidationError, match="host id"):
        Settings()


@pytest.mark.parametrize("host_id", ["a", "0", "host-a", "a" * 63, "anyhost", "all-1"])
def test_valid_host_ids(host_id: str) -> None:
    assert Settings(host_id=host_id).host_id == host_id


@pytest.mark.parametrize("field", ["exchange_prefix", "label_prefix", "discovery_label_prefix"])
@pytest.mark.parametrize("value", ["Dockhand", "", "has space", "a.b", "x" * 33])
def test_invalid_prefixes_rejected(field: str, value: str) -> None:
    with pytest.raises(ValidationError, match="prefix"):
        Settings(host_id="h1", **{field: value})


@pytest.mark.parametrize(
    "kwargs",
    [
        {"default_cpus": 5.0},
        {"default_memory_bytes": 9 * 1024**3},
        {"default_pids": 5000},
        {"default_cpus": 2.0, "max_cpus": 1.0},
        {"default_memory_bytes": 1024**3, "max_memory_bytes": 1024**2},
        {"default_pids": 100, "max_pids": 10},
    ],
)
def test_defaults_above_maxima_rejected(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValidationError, match="exceeds"):
        Settings(host_id="h1", **kwargs)


def test_defaults_equal_to_maxima_accepted() -> None:
    s = Settings(host_id="h1", default_cpus=2.0, max_cpus=2.0, default_pids=10, max_pids=10)
    assert (s.default_cpus, s.default_pids) == (2.0, 10)


@pytest.mark.parametrize(
    "kwargs",
    [{"max_concurrency": 0}, {"max_concurrency": 1025}, {"prefetch_per_slot": 17}, {"max_body_bytes": 100}],
)
def test_bounds_enforced(kwargs: dict[str, int]) -> None:
    with pytest.raises(ValidationError):
        Settings(host_id="h1", **kwargs)


def test_effective_worker_id_is_stable_and_prefixed() -> None:
    s = Settings(host_id="host-a")
    first = s.effective_worker_id
    assert first == s.effective_worker_id
    assert first.startswith("host-a-")
    assert re.fullmatch(r"host-a-[0-9a-f]{4}", first)


def test_effective_worker_id_from_setting(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("DOCKHAND_WORKER_ID", "host-a-blue")
    assert Settings(host_id="host-a").effective_worker_id == "host-a-blue"


def test_settings_are_frozen() -> None:
    s = Settings(host_id="h1")
    with pytest.raises(ValidationError):
        s.host_id = "h2"  # type: ignore[misc]


@pytest.mark.parametrize(("concurrency", "per_slot", "expected"), [(16, 2, 32), (1, 1, 1), (5, 3, 15)])
def test_prefetch(concurrency: int, per_slot: int, expected: int) -> None:
    s = Settings(host_id="h1", max_concurrency=concurrency, prefetch_per_slot=per_slot)
    assert s.prefetch == expected


def test_prefetch_from_env(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("DOCKHAND_MAX_CONCURRENCY", "4")
    clean_env.setenv("DOCKHAND_PREFETCH_PER_SLOT", "3")
    assert Settings().prefetch == 12
