"""DockerOps.pull shares one pull among concurrent callers; spec_hash; parse_docker_time."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
import stamina
from aiodocker.exceptions import DockerError

from dockhand.schemas import ErrorCode, RegistryAuth
from dockhand.schemas.commands import WorkspaceCreate
from dockhand.worker.docker import DockerOps, parse_docker_time, spec_hash
from dockhand.worker.errors import DockhandError
from dockhand.worker.labels import Labels
from dockhand.worker.policy import Policy
from dockhand.worker.settings import Settings
from tests.fakes import FakeDockerClient

PULL_S = 0.05


@pytest.fixture(autouse=True)
def stamina_testing() -> Iterator[None]:
    """No backoff (and one attempt) while testing; restores the previous mode afterwards."""
    with stamina.set_testing(True):
        yield


def _ops(docker: FakeDockerClient, **settings: Any) -> DockerOps:
    config = Settings(host_id="host-a", worker_id="host-a-test", docker_host=None, **settings)
    labels = Labels("dockhand", "dockhand")
    return DockerOps(docker, config, labels, Policy(config, labels))  # type: ignore[arg-type]


def _failing(error: Exception) -> FakeDockerClient:
    """Docker whose every pull fails with ``error`` (after taking its time)."""
    docker = FakeDockerClient(pull_s=PULL_S)
    docker.failures["images.pull"] = error
    return docker


async def test_concurrent_pulls_of_one_image_share_one_call() -> None:
    docker = FakeDockerClient(pull_s=PULL_S)
    ops = _ops(docker)
    await asyncio.gather(*(ops.images.pull("busybox:1.36", None) for _ in range(10)))
    assert docker.pull_calls == [("busybox:1.36", None)]
    assert not ops.images._pulls  # the finished pull is forgotten


async def test_two_images_two_calls() -> None:
    docker = FakeDockerClient(pull_s=PULL_S)
    ops = _ops(docker)
    images = ["busybox:1.36", "alpine:3.20"] * 5
    await asyncio.gather(*(ops.images.pull(image, None) for image in images))
    assert sorted(ref for ref, _ in docker.pull_calls) == ["alpine:3.20", "busybox:1.36"]


async def test_pulls_overlap_in_time() -> None:
    docker = FakeDockerClient(pull_s=PULL_S)
    ops = _ops(docker)
    loop = asyncio.get_running_loop()
    started = loop.time()
    await asyncio.gather(*(ops.images.pull(f"img{i}:1", None) for i in range(5)))
    assert len(docker.pull_calls) == 5
    assert loop.time() - started < PULL_S * 4  # concurrent, not one after another


async def test_a_later_round_pulls_again() -> None:
    docker = FakeDockerClient(pull_s=PULL_S)
    ops = _ops(docker)
    await asyncio.gather(*(ops.images.pull("busybox", None) for _ in range(3)))
    await asyncio.sleep(0)
    await asyncio.gather(*(ops.images.pull("busybox", None) for _ in range(3)))
    assert len(docker.pull_calls) == 2


async def test_different_identities_do_not_share() -> None:
    docker = FakeDockerClient(pull_s=PULL_S)
    ops = _ops(docker)
    alice = RegistryAuth(username="alice", password="a-secret")
    await asyncio.gather(
        ops.images.pull("ghcr.io/a/b", None),
        ops.images.pull("ghcr.io/a/b", alice),
        ops.images.pull("ghcr.io/a/b", alice),
    )
    assert len(docker.pull_calls) == 2


async def test_failed_pull_fails_every_waiter() -> None:
    docker = _failing(DockerError(500, "boom"))
    ops = _ops(docker)
    outcomes = await asyncio.gather(*(ops.images.pull("busybox", None) for _ in range(10)), return_exceptions=True)
    assert len(docker.pull_calls) == 1
    for outcome in outcomes:
        assert isinstance(outcome, DockhandError)
        assert outcome.code is ErrorCode.IMAGE_PULL_FAILED
        assert "boom" in outcome.message
        assert "busybox" in outcome.message
    assert not ops.images._pulls


async def test_failed_pull_is_retried_by_the_next_round() -> None:
    docker = _failing(DockerError(404, "manifest unknown"))
    ops = _ops(docker)
    with pytest.raises(DockhandError):
        await ops.images.pull("busybox", None)
    await asyncio.sleep(0)
    del docker.failures["images.pull"]
    await ops.images.pull("busybox", None)
    assert len(docker.pull_calls) == 2


async def test_transient_failures_are_retried_within_one_pull() -> None:
    docker = _failing(DockerError(503, "registry hiccup"))
    ops = _ops(docker, docker_retry_attempts=3)
    with stamina.set_testing(True, attempts=3, cap=True):
        outcomes = await asyncio.gather(
            ops.images.pull("busybox", None), ops.images.pull("busybox", None), return_exceptions=True
        )
    assert len(docker.pull_calls) == 3
    assert all(isinstance(o, DockhandError) and o.retryable for o in outcomes)


async def test_cancelling_one_waiter_does_not_cancel_the_pull() -> None:
    docker = FakeDockerClient(pull_s=PULL_S)
    ops = _ops(docker)
    first = asyncio.ensure_future(ops.images.pull("busybox", None))
    second = asyncio.ensure_future(ops.images.pull("busybox", None))
    await asyncio.sleep(PULL_S / 5)
    first.cancel()
    await second
    assert first.cancelled()
    assert len(docker.pull_calls) == 1


async def test_pull_checks_the_registry_policy_first() -> None:
    docker = FakeDockerClient(pull_s=PULL_S)
    ops = _ops(docker, allowed_registries=["ghcr.io"])
    with pytest.raises(DockhandError) as exc:
        await ops.images.pull("quay.io/a/b", None)
    assert exc.value.code is ErrorCode.FORBIDDEN
    assert docker.pull_calls == []


@pytest.mark.parametrize(
    ("image", "server_address", "reference", "serveraddress"),
    [
        ("busybox", None, "docker.io/library/busybox", "docker.io"),
        ("busybox:1.36", None, "docker.io/library/busybox:1.36", "docker.io"),
        ("ghcr.io/acme/app:1", None, "ghcr.io/acme/app:1", "ghcr.io"),
        ("localhost:5000/app", None, "localhost:5000/app", "localhost:5000"),
        (
            "registry.example.com/app",
            "https://registry.example.com",
            "registry.example.com/app",
            "https://registry.example.com",
        ),
    ],
)
async def test_registry_auth_header(image: str, server_address: str | None, reference: str, serveraddress: str) -> None:
    docker = FakeDockerClient(pull_s=PULL_S)
    ops = _ops(docker)
    auth = RegistryAuth(username="bob", password="s3cret-pw", server_address=server_address)
    await asyncio.gather(*(ops.images.pull(image, auth) for _ in range(3)))
    assert docker.pull_calls == [
        (reference, {"username": "bob", "password": "s3cret-pw", "serveraddress": serveraddress})
    ]


async def test_registry_password_not_in_the_error() -> None:
    docker = _failing(DockerError(401, "unauthorized: authentication required"))
    ops = _ops(docker)
    with pytest.raises(DockhandError) as exc:
        await ops.images.pull("ghcr.io/a/b", RegistryAuth(username="bob", password="s3cret-pw"))
    assert "s3cret-pw" not in str(exc.value)
    assert "s3cret-pw" not in repr(exc.value)


# --- spec_hash --------------------------------------------------------------------------


def _spec(**payload: Any) -> WorkspaceCreate:
    return WorkspaceCreate.model_validate({"workspace_id": "ws1", "image": "busybox:1.36", **payload})


def test_spec_hash_is_stable_under_dict_ordering() -> None:
    one = _spec(env={"A": "1", "B": "2", "C": "3"}, labels={"x": "1", "y": "2"}, resources={"cpus": 1.0, "pids": 5})
    two = _spec(resources={"pids": 5, "cpus": 1.0}, labels={"y": "2", "x": "1"}, env={"C": "3", "A": "1", "B": "2"})
    assert spec_hash(one) == spec_hash(two)
    assert len(spec_hash(one)) == 32
    assert spec_hash(one) == spec_hash(
        _spec(env={"A": "1", "B": "2", "C": "3"}, labels={"x": "1", "y": "2"}, resources={"cpus": 1.0, "pids": 5})
    )


def test_spec_hash_ignores_pull_auth_and_start() -> None:
    base = spec_hash(_spec())
    assert spec_hash(_spec(pull="always")) == base
    assert spec_hash(_spec(pull="never", start=False)) == base
    assert spec_hash(_spec(registry_auth={"username": "u", "password": "p"})) == base


@pytest.mark.parametrize(
    "change",
    [
        {"image": "busybox:1.37"},
        {"env": {"A": "1"}},
        {"ports": [80]},
        {"read_only": True},
        {"command": ["sleep", "1"]},
        {"resources": {"memory_bytes": 64 * 1024 * 1024}},
        {"mounts": [{"type": "tmpfs", "target": "/tmp"}]},
        {"workspace_id": "ws2"},
    ],
    ids=repr,
)
def test_spec_hash_changes_with_the_spec(change: dict[str, Any]) -> None:
    assert spec_hash(_spec(**change)) != spec_hash(_spec())


# --- parse_docker_time ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2024-01-02T03:04:05.123456789Z", datetime(2024, 1, 2, 3, 4, 5, 123456, tzinfo=UTC)),
        ("2024-01-02T03:04:05.1234567Z", datetime(2024, 1, 2, 3, 4, 5, 123456, tzinfo=UTC)),
        ("2024-01-02T03:04:05.5Z", datetime(2024, 1, 2, 3, 4, 5, 500000, tzinfo=UTC)),
        ("2024-01-02T03:04:05Z", datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)),
        ("2024-01-02T03:04:05+00:00", datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)),
        ("2024-01-02T03:04:05+02:00", datetime(2024, 1, 2, 1, 4, 5, tzinfo=UTC)),
    ],
)
def test_parse_docker_time(text: str, expected: datetime) -> None:
    parsed = parse_docker_time(text)
    assert parsed == expected
    assert parsed is not None
    assert parsed.tzinfo is UTC


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2024-01-02T03:04:05.5+02:00", datetime(2024, 1, 2, 1, 4, 5, 500000, tzinfo=UTC)),
        ("2024-01-02T03:04:05.123456789-07:00", datetime(2024, 1, 2, 10, 4, 5, 123456, tzinfo=UTC)),
    ],
)
def test_parse_docker_time_fraction_with_offset(text: str, expected: datetime) -> None:
    assert parse_docker_time(text) == expected


@pytest.mark.parametrize("text", ["0001-01-01T00:00:00Z", "0001-01-01T00:00:00.000000000Z", "", None])
def test_parse_docker_time_zero_and_empty(text: str | None) -> None:
    assert parse_docker_time(text) is None


@pytest.mark.parametrize(
    ("payload", "v1_hash"),
    [
        # The hashes v0.1.0's worker wrote on these workspaces' containers.
        ({"workspace_id": "ws1", "image": "busybox:1"}, "dc63370948394a5c90a432bacfe7c953"),
        (
            {
                "workspace_id": "ws1",
                "image": "busybox:1",
                "mounts": [{"type": "volume", "source": "data", "target": "/data"}],
            },
            "7692732ef2c0e282a739dfc2b87ba282",
        ),
    ],
)
def test_spec_hash_of_an_unchanged_create_survives_the_upgrade(payload: dict[str, object], v1_hash: str) -> None:
    # A field added since (Mount.share) must not turn a re-sent create of an existing workspace into a conflict.
    assert spec_hash(WorkspaceCreate.model_validate(payload)) == v1_hash
    shared = {
        **payload,
        "project": "p",
        "mounts": [{"type": "volume", "source": "data", "target": "/d", "share": "project"}],
    }
    assert spec_hash(WorkspaceCreate.model_validate(shared)) != v1_hash
