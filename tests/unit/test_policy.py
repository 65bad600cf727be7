"""worker.policy: bind roots, capabilities, registries, reserved labels."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from dockhand.schemas import ErrorCode, Status
from dockhand.schemas.commands import ImagePull, ImageRef_, NetworkEnsure, WorkspaceCreate
from dockhand.worker.docker import DockerOps
from dockhand.worker.errors import DockhandError
from dockhand.worker.handlers import check_policy
from dockhand.worker.labels import Labels
from dockhand.worker.policy import Policy, image_registry
from dockhand.worker.settings import Settings

DIGEST = "sha256:" + "0123456789abcdef" * 4


def _settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "host_id": "host-a",
        "worker_id": "host-a-test",
        "docker_host": None,
        "allowed_bind_roots": ["/srv/data", "/opt/ws/"],
        "allowed_capabilities": ["NET_ADMIN", "cap_chown"],
        "allowed_registries": ["ghcr.io", "localhost:5000", "docker.io"],
    }
    values.update(overrides)
    return Settings(**values)


LABELS = Labels(prefix="dockhand", discovery_prefix="disco")


@pytest.fixture
def policy() -> Policy:
    return Policy(_settings(), LABELS)


def _assert_forbidden(exc: pytest.ExceptionInfo[DockhandError]) -> None:
    assert exc.value.code is ErrorCode.FORBIDDEN
    assert exc.value.status is Status.REJECTED
    assert exc.value.retryable is False


# --- bind mounts ------------------------------------------------------------------------


@pytest.fixture
def bind_root(tmp_path: Path) -> Path:
    """Real directories standing in for /srv/data and /opt/ws: bind sources must now exist."""
    (tmp_path / "srv/data/ws1/deep/er").mkdir(parents=True)
    (tmp_path / "opt/ws/x").mkdir(parents=True)
    return tmp_path


def _bind_policy(root: Path, **overrides: Any) -> Policy:
    roots = [f"{root}/srv/data", f"{root}/opt/ws/"]
    return Policy(_settings(allowed_bind_roots=roots, **overrides), LABELS)


@pytest.mark.parametrize(
    ("source", "normalised"),
    [
        ("/srv/data", "/srv/data"),
        ("/srv/data/", "/srv/data"),
        ("/srv/data/ws1", "/srv/data/ws1"),
        ("/srv/data/ws1/deep/er", "/srv/data/ws1/deep/er"),
        ("/srv/data/./ws1", "/srv/data/ws1"),
        ("/opt/ws", "/opt/ws"),
        ("/opt/ws/x", "/opt/ws/x"),
    ],
)
def test_bind_under_a_root_allowed(bind_root: Path, source: str, normalised: str) -> None:
    assert _bind_policy(bind_root).check_bind(f"{bind_root}{source}", "ws1") == f"{bind_root}{normalised}"


@pytest.mark.parametrize(
    "source",
    [
        "/srv",
        "/",
        "/etc",
        "/srv/data-evil",
        "/srv/database",
        "/srv/dat",
        "/opt/wsx/y",
        "/var/run/docker.sock",
    ],
)
def test_bind_outside_roots_rejected(policy: Policy, source: str) -> None:
    with pytest.raises(DockhandError, match="outside") as exc:
        policy.check_bind(source, "workspace ws1 on host-a")
    _assert_forbidden(exc)
    assert "workspace ws1 on host-a" in exc.value.message


@pytest.mark.parametrize(
    "source", ["/srv/data/../etc", "/srv/data/ws1/../../../etc/shadow", "/srv/data/..", "srv/data/x", "data", ""]
)
def test_bind_with_dotdot_or_relative_rejected(policy: Policy, source: str) -> None:
    with pytest.raises(DockhandError, match="absolute path without") as exc:
        policy.check_bind(source, "ws1")
    _assert_forbidden(exc)


def test_no_bind_roots_means_no_binds() -> None:
    closed = Policy(_settings(allowed_bind_roots=[]), LABELS)
    with pytest.raises(DockhandError) as exc:
        closed.check_bind("/srv/data/x", "ws1")
    _assert_forbidden(exc)


# --- capabilities -----------------------------------------------------------------------


@pytest.mark.parametrize("caps", [[], ["NET_ADMIN"], ["CAP_NET_ADMIN"], ["CHOWN", "NET_ADMIN"], ["CAP_CHOWN"]])
def test_allowed_capabilities(policy: Policy, caps: list[str]) -> None:
    policy.check_capabilities(caps, "ws1")


@pytest.mark.parametrize("caps", [["SYS_ADMIN"], ["NET_ADMIN", "SYS_PTRACE"], ["CAP_SYS_MODULE"], ["ALL"]])
def test_capability_not_allowed(policy: Policy, caps: list[str]) -> None:
    with pytest.raises(DockhandError, match="not in DOCKHAND_ALLOWED_CAPABILITIES") as exc:
        policy.check_capabilities(caps, "ws1")
    _assert_forbidden(exc)


def test_no_capabilities_allowed_by_default() -> None:
    closed = Policy(_settings(allowed_capabilities=[]), LABELS)
    with pytest.raises(DockhandError) as exc:
        closed.check_capabilities(["CHOWN"], "ws1")
    _assert_forbidden(exc)


# --- registries -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("image", "registry"),
    [
        ("busybox", "docker.io"),
        ("busybox:1.36", "docker.io"),
        ("library/busybox", "docker.io"),
        ("acme/app:1", "docker.io"),
        ("docker.io/library/busybox", "docker.io"),
        ("localhost/x", "localhost"),
        ("localhost:5000/x", "localhost:5000"),
        ("127.0.0.1:5055/a/b:1", "127.0.0.1:5055"),
        (f"ghcr.io/a/b@{DIGEST}", "ghcr.io"),
        (f"busybox@{DIGEST}", "docker.io"),
        ("registry.example.com/team/app:2", "registry.example.com"),
    ],
)
def test_image_registry(image: str, registry: str) -> None:
    assert image_registry(image) == registry


@pytest.mark.parametrize("image", ["busybox", "ghcr.io/a/b:1", "localhost:5000/x", f"ghcr.io/a/b@{DIGEST}"])
def test_image_from_allowed_registry(policy: Policy, image: str) -> None:
    policy.check_image(image)


@pytest.mark.parametrize(
    "image", ["quay.io/a/b", "localhost/x", "127.0.0.1:5055/a/b:1", "ghcr.io.evil.com/a", "localhost:5001/x"]
)
def test_image_from_other_registry_rejected(policy: Policy, image: str) -> None:
    with pytest.raises(DockhandError, match="DOCKHAND_ALLOWED_REGISTRIES") as exc:
        policy.check_image(image)
    _assert_forbidden(exc)
    assert image in exc.value.message


def test_hub_not_allowed_unless_listed() -> None:
    ghcr_only = Policy(_settings(allowed_registries=["ghcr.io"]), LABELS)
    for image in ("busybox", "library/busybox", "acme/app"):
        with pytest.raises(DockhandError):
            ghcr_only.check_image(image)


def test_any_registry_when_none_configured() -> None:
    open_policy = Policy(_settings(allowed_registries=[]), LABELS)
    for image in ("quay.io/a/b", "busybox", "127.0.0.1:5055/a/b:1"):
        open_policy.check_image(image)


# --- labels -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "key", ["dockhand", "dockhand.managed", "dockhand.host", "dockhand.anything.else", "disco", "disco.domain"]
)
def test_reserved_label_prefixes_rejected(policy: Policy, key: str) -> None:
    with pytest.raises(DockhandError, match="reserved") as exc:
        policy.check_labels({"ok": "1", key: "x"}, "network n1")
    _assert_forbidden(exc)
    assert key in exc.value.message


@pytest.mark.parametrize("key", ["dockhandx.a", "discovery.a", "com.example.dockhand", "app", "traefik.enable"])
def test_other_labels_allowed(policy: Policy, key: str) -> None:
    policy.check_labels({key: "x"}, "ws1")


# --- the policy as the dispatcher applies it (no Docker call) ----------------------------


@pytest.fixture
def ops() -> DockerOps:
    settings = _settings()
    # The docker client is never touched by the policy checks.
    return DockerOps(None, settings, LABELS, Policy(settings, LABELS))  # type: ignore[arg-type]


def _create(**payload: Any) -> WorkspaceCreate:
    return WorkspaceCreate.model_validate({"workspace_id": "ws1", "image": "ghcr.io/a/b:1", **payload})


def test_check_policy_passes_a_conforming_create(bind_root: Path) -> None:
    settings = _settings(allowed_bind_roots=[f"{bind_root}/srv/data"])
    ops = DockerOps(None, settings, LABELS, Policy(settings, LABELS))  # type: ignore[arg-type]
    payload = _create(
        cap_add=["NET_ADMIN"],
        labels={"app": "x"},
        mounts=[
            {"type": "bind", "source": f"{bind_root}/srv/data/ws1", "target": "/data"},
            {"type": "volume", "source": "cache", "target": "/cache"},
            {"type": "tmpfs", "target": "/tmp"},
        ],
    )
    check_policy("workspace.create", payload, ops)


@pytest.mark.parametrize(
    "payload",
    [
        {"image": "quay.io/a/b"},
        {"labels": {"dockhand.host": "other"}},
        {"labels": {"disco.enabled": "true"}},
        {"cap_add": ["SYS_ADMIN"]},
        {"mounts": [{"type": "bind", "source": "/etc", "target": "/etc"}]},
        {"mounts": [{"type": "bind", "source": "/srv/data/../../etc", "target": "/x"}]},
    ],
    ids=repr,
)
def test_check_policy_rejects_a_create(ops: DockerOps, payload: dict[str, Any]) -> None:
    with pytest.raises(DockhandError) as exc:
        check_policy("workspace.create", _create(**payload), ops)
    _assert_forbidden(exc)


def test_check_policy_image_pull_and_network_labels(ops: DockerOps) -> None:
    with pytest.raises(DockhandError) as exc:
        check_policy("image.pull", ImagePull(image="quay.io/x/y"), ops)
    _assert_forbidden(exc)
    with pytest.raises(DockhandError) as exc:
        check_policy("network.ensure", NetworkEnsure(name="n1", labels={"dockhand.managed": "true"}), ops)
    _assert_forbidden(exc)
    check_policy("image.pull", ImagePull(image="ghcr.io/x/y"), ops)
    check_policy("network.ensure", NetworkEnsure(name="n1", labels={"team": "a"}), ops)


# --- issue 10: registries as Docker resolves them, labels in any case ------------------------


@pytest.mark.parametrize(
    ("image", "registry"),
    [
        ("GHCR.IO/a/b", "ghcr.io"),
        ("LocalHost:5000/x", "localhost:5000"),
        ("index.docker.io/library/busybox", "docker.io"),
        ("INDEX.docker.io/library/busybox", "docker.io"),
        ("Docker.IO/library/busybox", "docker.io"),
        ("sha256:" + "ab" * 32, "docker.io"),
    ],
)
def test_image_registry_normalised(image: str, registry: str) -> None:
    assert image_registry(image) == registry


@pytest.mark.parametrize("image", ["GHCR.io/a/b:1", "index.docker.io/library/busybox", "LOCALHOST:5000/x"])
def test_registry_variants_of_allowed_ones_allowed(policy: Policy, image: str) -> None:
    policy.check_image(image)


def test_allowed_registries_compared_case_insensitively() -> None:
    upper = Policy(_settings(allowed_registries=["GHCR.io", "Index.Docker.io"]), LABELS)
    upper.check_image("ghcr.io/a/b")
    upper.check_image("busybox")
    with pytest.raises(DockhandError):
        upper.check_image("quay.io/a/b")


@pytest.mark.parametrize(
    "image",
    [
        "quay.io/a/b",
        "QUAY.io/a/b",
        "ghcr.io:443/a/b",  # another registry string to Docker (credentials, mirrors): not ghcr.io
        "localhost:5001/x",
        "ghcr.io.evil.com/a",
        "evil.com/ghcr.io/a",
    ],
)
def test_registry_variants_of_others_rejected(policy: Policy, image: str) -> None:
    with pytest.raises(DockhandError, match="DOCKHAND_ALLOWED_REGISTRIES") as exc:
        policy.check_image(image)
    _assert_forbidden(exc)


@pytest.mark.parametrize("image", ["x/../../containers/victim", "a//b", "[::1]:5000/x", "Foo/bar", ""])
def test_check_image_refuses_what_is_not_a_reference(image: str) -> None:
    # Even with no registry list (and whoever calls it): the name ends up in an API URL path.
    open_policy = Policy(_settings(allowed_registries=[]), LABELS)
    with pytest.raises(DockhandError, match="not a valid image reference") as exc:
        open_policy.check_image(image)
    assert exc.value.code is ErrorCode.INVALID_COMMAND
    assert exc.value.status is Status.REJECTED


@pytest.mark.parametrize(
    "key",
    [
        "Dockhand.managed",
        "DOCKHAND.host",
        "dockHand",
        "DISCO.enabled",
        "Disco.Domain",
        "com.docker.compose.project",
        "COM.Docker.x",
        "com.docker",
        "io.docker.x",
        "org.dockerproject.x",
        "Org.DockerProject.y",
    ],
)
def test_reserved_labels_in_any_case_and_dockers_namespaces_rejected(policy: Policy, key: str) -> None:
    with pytest.raises(DockhandError, match="reserve") as exc:
        policy.check_labels({key: "x"}, "ws1")
    _assert_forbidden(exc)


@pytest.mark.parametrize("key", ["com.dockerx.a", "io.dockerhub", "org.dockerprojects", "com.example.docker"])
def test_lookalikes_of_dockers_namespaces_allowed(policy: Policy, key: str) -> None:
    policy.check_labels({key: "x"}, "ws1")


@pytest.mark.parametrize("labels", [{"Dockhand.managed": "true"}, {"com.docker.network.bridge.name": "x"}])
def test_network_ensure_labels_checked_alike(ops: DockerOps, labels: dict[str, str]) -> None:
    with pytest.raises(DockhandError) as exc:
        check_policy("network.ensure", NetworkEnsure(name="n1", labels=labels), ops)
    _assert_forbidden(exc)


def test_check_policy_applies_registries_to_image_inspect(ops: DockerOps) -> None:
    with pytest.raises(DockhandError, match="DOCKHAND_ALLOWED_REGISTRIES") as exc:
        check_policy("image.inspect", ImageRef_(image="quay.io/x/y"), ops)
    _assert_forbidden(exc)
    check_policy("image.inspect", ImageRef_(image="ghcr.io/x/y"), ops)
