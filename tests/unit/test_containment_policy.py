"""Containment rules for binds, volumes and networks that need no Docker daemon (issue 10).

The same rules are exercised against the real daemon in
tests/integration/test_containment_mounts_networks.py.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from dockhand.schemas import ErrorCode, Status
from dockhand.schemas.commands import NetworkEnsure, WorkspaceCreate
from dockhand.worker.docker import DockerOps
from dockhand.worker.errors import DockhandError
from dockhand.worker.labels import Labels
from dockhand.worker.policy import Policy, binds_conflict
from dockhand.worker.settings import Settings

LABELS = Labels(prefix="dockhand", discovery_prefix="dockhand")


def _settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {"host_id": "host-a", "worker_id": "host-a-test", "docker_host": None}
    values.update(overrides)
    return Settings(**values)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """An allowed bind root with a sub-directory, and one symlink of each kind inside it."""
    shared = tmp_path / "shared"
    (shared / "sub" / "deep").mkdir(parents=True)
    (tmp_path / "outside").mkdir()
    (shared / "to-host-root").symlink_to("/")
    (shared / "to-outside").symlink_to(tmp_path / "outside")
    (shared / "to-sub").symlink_to(shared / "sub")  # stays inside the root: fine
    (shared / "loop").symlink_to(shared / "loop")
    (shared / "file").write_text("x")
    return shared


def _policy(root: Path, **overrides: Any) -> Policy:
    return Policy(_settings(allowed_bind_roots=[str(root)], **overrides), LABELS)


def _ops(root: Path, **overrides: Any) -> DockerOps:
    settings = _settings(allowed_bind_roots=[str(root)], **overrides)
    return DockerOps(None, settings, LABELS, Policy(settings, LABELS))  # type: ignore[arg-type]


# --- bind sources are resolved as Docker resolves them -----------------------------------


@pytest.mark.parametrize("link", ["to-host-root", "to-host-root/etc", "to-outside", "to-outside/."])
def test_a_symlink_out_of_the_root_is_forbidden(root: Path, link: str) -> None:
    with pytest.raises(DockhandError, match=r"resolves to .*outside DOCKHAND_ALLOWED_BIND_ROOTS") as exc:
        _policy(root).check_bind(f"{root}/{link}", "workspace ws1 on host-a")
    assert exc.value.code is ErrorCode.FORBIDDEN
    assert exc.value.status is Status.REJECTED


def test_a_symlink_inside_the_root_gives_the_resolved_path(root: Path) -> None:
    assert _policy(root).check_bind(f"{root}/to-sub/deep", "ws1") == f"{root}/sub/deep"
    assert _policy(root).check_bind(f"{root}/file", "ws1") == f"{root}/file"


@pytest.mark.parametrize("missing", ["nope", "sub/nope", "loop", "file/below"])
def test_a_source_that_does_not_resolve_is_invalid(root: Path, missing: str) -> None:
    with pytest.raises(DockhandError, match="does not resolve to an existing path") as exc:
        _policy(root).check_bind(f"{root}/{missing}", "ws1")
    assert exc.value.code is ErrorCode.INVALID_COMMAND
    assert exc.value.status is Status.REJECTED


def test_a_root_that_is_itself_a_symlink_is_compared_resolved(tmp_path: Path, root: Path) -> None:
    alias = tmp_path / "alias"
    alias.symlink_to(root)
    policy = Policy(_settings(allowed_bind_roots=[str(alias)]), LABELS)
    assert policy.check_bind(f"{alias}/sub", "ws1") == f"{root}/sub"
    with pytest.raises(DockhandError, match="resolves to"):
        policy.check_bind(f"{alias}/to-host-root", "ws1")


def test_a_missing_root_admits_nothing(tmp_path: Path) -> None:
    policy = Policy(_settings(allowed_bind_roots=[str(tmp_path / "gone")]), LABELS)
    assert policy.resolved_bind_roots() == []
    with pytest.raises(DockhandError):
        policy.check_bind(str(tmp_path / "gone" / "x"), "ws1")


# --- nesting --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("a", "a_ro", "b", "b_ro", "conflict"),
    [
        ("/r/a", False, "/r/a/b", False, True),
        ("/r/a", False, "/r/a/b", True, True),
        ("/r/a", True, "/r/a/b", False, True),
        ("/r/a/b", True, "/r/a", False, True),  # symmetric
        ("/r/a", True, "/r/a/b", True, False),  # two read-only binds may nest
        ("/r/a", False, "/r/a", False, False),  # equal: a mount point cannot be swapped
        ("/r/a", False, "/r/ab", False, False),  # a sibling with a common prefix
        ("/r/a", False, "/r/b", False, False),
    ],
)
def test_binds_conflict(a: str, a_ro: bool, b: str, b_ro: bool, conflict: bool) -> None:
    assert binds_conflict(a, a_ro, b, b_ro) is conflict


def _create(**payload: Any) -> WorkspaceCreate:
    return WorkspaceCreate.model_validate({"workspace_id": "ws1", "image": "busybox", **payload})


def test_check_create_gives_docker_the_resolved_sources(root: Path) -> None:
    payload = _create(
        mounts=[
            {"type": "bind", "source": f"{root}/to-sub/deep", "target": "/a"},
            {"type": "volume", "source": "v1", "target": "/v"},
        ]
    )
    resolved = _ops(root).check_create(payload)
    assert [m.source for m in resolved.mounts] == [f"{root}/sub/deep", "v1"]
    assert payload.mounts[0].source == f"{root}/to-sub/deep"  # the request itself is unchanged


def test_check_create_refuses_binds_nesting_within_one_create(root: Path) -> None:
    payload = _create(
        mounts=[
            {"type": "bind", "source": f"{root}/sub", "target": "/a"},
            {"type": "bind", "source": f"{root}/to-sub/deep", "target": "/b", "read_only": True},
        ]
    )
    with pytest.raises(DockhandError, match="nest") as exc:
        _ops(root).check_create(payload)
    assert exc.value.code is ErrorCode.FORBIDDEN
    both_ro = _create(
        mounts=[
            {"type": "bind", "source": f"{root}/sub", "target": "/a", "read_only": True},
            {"type": "bind", "source": f"{root}/sub/deep", "target": "/b", "read_only": True},
        ]
    )
    _ops(root).check_create(both_ro)


# --- volumes ----------------------------------------------------------------------------------


def _volume_labels(**extra: str) -> dict[str, str]:
    return {"dockhand.managed": "true", "dockhand.host": "host-a", "dockhand.workspace.id": "owner", **extra}


@pytest.mark.parametrize(
    ("labels", "workspace_id", "project", "allowed"),
    [
        (_volume_labels(), "owner", None, True),
        (_volume_labels(), "other", None, False),
        (_volume_labels(), "other", "p1", False),  # not shared: a project does not help
        (_volume_labels(**{"dockhand.volume.share": "project", "dockhand.project": "p1"}), "other", "p1", True),
        (_volume_labels(**{"dockhand.volume.share": "project", "dockhand.project": "p1"}), "other", "p2", False),
        (_volume_labels(**{"dockhand.volume.share": "project", "dockhand.project": "p1"}), "other", None, False),
        (_volume_labels(**{"dockhand.project": "p1"}), "other", "p1", False),  # same project, not shared
        (_volume_labels(**{"dockhand.host": "host-b"}), "owner", None, False),  # another host's
        ({"app": "x"}, "owner", None, False),  # unmanaged
    ],
)
def test_volume_access(
    tmp_path: Path, labels: dict[str, str], workspace_id: str, project: str | None, allowed: bool
) -> None:
    payload = _create(workspace_id=workspace_id, project=project)
    ops = _ops(tmp_path)
    if allowed:
        ops.volumes.check_access(labels, payload, "volume v1 on host-a")
    else:
        with pytest.raises(DockhandError) as exc:
            ops.volumes.check_access(labels, payload, "volume v1 on host-a")
        assert exc.value.code is ErrorCode.FORBIDDEN


def test_mount_share_field() -> None:
    shared = _create(project="p1", mounts=[{"source": "v1", "target": "/v", "share": "project"}])
    assert shared.mounts[0].share == "project"
    assert _create(mounts=[{"source": "v1", "target": "/v"}]).mounts[0].share == "none"
    with pytest.raises(ValidationError, match="needs the workspace's project"):
        _create(mounts=[{"source": "v1", "target": "/v", "share": "project"}])
    with pytest.raises(ValidationError, match="only a named volume"):
        _create(project="p1", mounts=[{"type": "bind", "source": "/x", "target": "/v", "share": "project"}])
    with pytest.raises(ValidationError):
        _create(mounts=[{"source": "v1", "target": "/v", "share": "everyone"}])


@pytest.mark.parametrize("targets", [["/data", "/data"], ["/data", "/data/"]])
def test_two_mounts_on_one_target_are_invalid(targets: list[str]) -> None:
    with pytest.raises(ValidationError, match="two mounts on one target"):
        _create(mounts=[{"source": f"v{i}", "target": t} for i, t in enumerate(targets)])


# --- networks ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["host", "HOST", "Host", "none", "NONE", "bridge", "BRIDGE", "Bridge"])
def test_predefined_network_names_are_forbidden(tmp_path: Path, name: str) -> None:
    with pytest.raises(DockhandError, match="Docker's") as exc:
        _ops(tmp_path).policy.check_network_name(name, "ws1")
    assert exc.value.code is ErrorCode.FORBIDDEN
    assert exc.value.status is Status.REJECTED


def test_bridge_only_when_allowed(tmp_path: Path) -> None:
    policy = _ops(tmp_path, allowed_networks="bridge,shared-net").policy
    policy.check_network_name("bridge", "ws1")
    assert policy.network_allowed("shared-net")
    assert not policy.network_allowed("other-net")
    assert policy.network_allowed(_settings().default_network)  # the operator's own choice
    with pytest.raises(DockhandError):
        policy.check_network_name("HOST", "ws1")


@pytest.mark.parametrize("name", ["host", "NONE"])
def test_host_and_none_can_never_be_allowed(name: str) -> None:
    with pytest.raises(ValidationError, match="can never be allowed"):
        _settings(allowed_networks=f"a,{name}")


def test_network_drivers(tmp_path: Path) -> None:
    policy = _ops(tmp_path).policy
    policy.check_network_driver("bridge", "network n1")
    for driver in ("macvlan", "ipvlan", "overlay"):
        with pytest.raises(DockhandError, match="DOCKHAND_ALLOWED_NETWORK_DRIVERS") as exc:
            policy.check_network_driver(driver, "network n1")
        assert exc.value.code is ErrorCode.FORBIDDEN
    _ops(tmp_path, allowed_network_drivers="bridge,overlay").policy.check_network_driver("overlay", "n1")
    with pytest.raises(ValidationError):
        _settings(allowed_network_drivers="host")


@pytest.mark.parametrize("name", ["host", "HOST", "none", "None", "bridge", "BRIDGE"])
def test_reserved_names_for_network_ensure(name: str) -> None:
    with pytest.raises(ValidationError, match="reserved"):
        NetworkEnsure(name=name)


@pytest.mark.parametrize("name", ["HOST", "none", "NoNe"])
def test_workspace_network_host_or_none_in_any_case_is_invalid(name: str) -> None:
    with pytest.raises(ValidationError, match="not allowed"):
        _create(network=name)


def test_settings_split_lists() -> None:
    settings = _settings(allowed_networks=" a, b ,", allowed_network_drivers="bridge")
    assert settings.allowed_networks == ["a", "b"]
    assert _settings().allowed_network_drivers == ["bridge"]
    assert os.path.isabs(str(_settings(allowed_bind_roots="/srv").allowed_bind_roots[0]))
