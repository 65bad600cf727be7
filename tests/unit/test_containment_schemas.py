"""Issue 10, schema side: image references in Docker's grammar, resource minima, mount targets,
ports Docker cannot publish. Each case is something an untrusted sender sent."""

from __future__ import annotations

import re
from typing import Any

import pytest
from pydantic import TypeAdapter, ValidationError

from dockhand.schemas import COMMAND_ADAPTER
from dockhand.schemas._base import IMAGE_REF_PATTERN, ImageRef
from dockhand.schemas.commands import MAX_PORTS, ImageRef_, Mount, Resources, WorkspaceCreate, normalise_target

DIGEST = "sha256:" + "0123456789abcdef" * 4
IMAGE = TypeAdapter(ImageRef)


def _create(**payload: Any) -> WorkspaceCreate:
    return WorkspaceCreate.model_validate({"workspace_id": "ws1", "image": "busybox", **payload})


# --- image references ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "image",
    [
        "busybox",
        "busybox:1.36",
        "library/busybox",
        "acme/app:1",
        "docker.io/library/busybox",
        "index.docker.io/library/busybox",
        "localhost/x",
        "localhost:5000/x",
        "127.0.0.1:5055/dockhand-test/busybox:latest",
        f"ghcr.io/a/b@{DIGEST}",
        f"busybox:1@{DIGEST}",
        "registry.example.com/team/app:2",
        "GHCR.io/team/app",  # a domain may have upper case (DNS does not care)
        "a__b/c-d/e.f_g",
        "a---b",
        "my.image",  # one component: a Docker Hub name with a dot
        "x:" + "T" * 128,
        "sha256:" + "ab" * 32,  # an image id is a name:tag in the grammar
        "a" * 255,
    ],
)
def test_docker_references_accepted(image: str) -> None:
    assert IMAGE.validate_python(image) == image
    assert ImageRef_.model_validate({"image": image}).image == image


@pytest.mark.parametrize(
    "image",
    [
        "x/../../containers/abc",  # what reached the API URL path
        "x/../../containers/abc/json?",
        "..",
        "a//b",
        "/a",
        "a/",
        "a..b",
        "a_.b",
        "ghcr.io/a/../b",
        "ghcr.io./a",
        "Foo/bar",  # upper case is a path (Docker 20.10) or a domain (newer): never ours to guess
        "Localhost/x",
        "a_b.c/x",  # a dotted first component must be a valid host
        "a:b/c",  # a colon in the first component must be a port
        "[::1]:5000/x",  # no IPv6 literals (Docker 20.10 has none)
        "localhost:0/x",
        "localhost:05000/x",  # a leading zero: the same port to Go, another registry string to us
        "localhost:99999/x",
        "x:" + "a" * 129,
        "x:-tag",
        "x:tag:tag",
        "x@sha256:" + "A" * 64,
        "x@sha256:" + "a" * 63,
        "x@md5:" + "a" * 32,
        "a b",
        "a/B",
        "x:\u00e9",
        "\u00e9",
        "ghcr.io%2F/a",
        "a" * 256,  # Docker's name limit is 255
        "ghcr.io/" + "a" * 250,
    ],
)
def test_non_references_rejected(image: str) -> None:
    with pytest.raises(ValidationError):
        IMAGE.validate_python(image)
    with pytest.raises(ValidationError):
        _create(image=image)


def test_pattern_is_the_json_schema_pattern() -> None:
    schema = WorkspaceCreate.model_json_schema()
    assert schema["properties"]["image"]["pattern"] == IMAGE_REF_PATTERN
    # and it needs no lookaround (portable to every JSON Schema validator)
    assert "(?=" not in IMAGE_REF_PATTERN
    assert "(?!" not in IMAGE_REF_PATTERN
    assert re.match(IMAGE_REF_PATTERN, "ghcr.io/a/b:1")


def test_image_inspect_of_a_path_traversal_is_invalid_command_on_the_wire() -> None:
    with pytest.raises(ValidationError):
        COMMAND_ADAPTER.validate_python(
            {"command_id": "c1", "type": "image.inspect", "payload": {"image": "x/../../containers/victim"}}
        )


# --- resources ----------------------------------------------------------------------------


@pytest.mark.parametrize("cpus", [4e-10, 0.0099, 0.001, -1.0, float("nan"), float("inf")])
def test_cpus_below_dockers_minimum_rejected(cpus: float) -> None:
    with pytest.raises(ValidationError):
        Resources(cpus=cpus)


def test_cpus_minimum_accepted() -> None:
    assert Resources(cpus=0.01).cpus == 0.01


@pytest.mark.parametrize(
    "resources", [{"memory_bytes": 6 * 1024 * 1024 - 1}, {"memory_bytes": 0}, {"pids": 0}, {"pids": -1}]
)
def test_memory_and_pids_minima(resources: dict[str, int]) -> None:
    with pytest.raises(ValidationError):
        Resources.model_validate(resources)


# --- ports --------------------------------------------------------------------------------


@pytest.mark.parametrize("port", ["132/sctp", "5000/sctp"])
def test_sctp_ports_rejected_with_a_reason(port: str) -> None:
    with pytest.raises(ValidationError, match="sctp ports cannot be published"):
        _create(ports=[port])


def test_at_most_max_ports() -> None:
    assert len(_create(ports=list(range(1, MAX_PORTS + 1))).ports or []) == MAX_PORTS
    with pytest.raises(ValidationError):
        _create(ports=list(range(1, MAX_PORTS + 2)))


# --- mount targets ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("target", "clean"),
    [
        ("/data", "/data"),
        ("/data/", "/data"),
        ("//data//x/", "/data/x"),
        ("/a/./b", "/a/b"),
        ("/a/../b", "/b"),
        ("/../a", "/a"),
        ("/", "/"),
    ],
)
def test_targets_are_cleaned_like_go_path_clean(target: str, clean: str) -> None:
    assert normalise_target(target) == clean


@pytest.mark.parametrize(
    "target",
    [
        "/",
        "//",
        "/.",
        "/x/..",
        "/proc",
        "/proc/",
        "//proc",
        "/x/../proc",
        "/proc/sys",
        "/sys",
        "/sys/fs/cgroup",
        "/dev",
        "/dev/pts",
        "/dev/mqueue",
        "/dev/../dev/null",
    ],
)
@pytest.mark.parametrize("kind", ["tmpfs", "volume"])
def test_runtime_targets_rejected(target: str, kind: str) -> None:
    mount: dict[str, Any] = {"type": kind, "target": target}
    if kind == "volume":
        mount["source"] = "data"
    with pytest.raises(ValidationError, match="mount target"):
        _create(mounts=[mount])


@pytest.mark.parametrize("target", ["/dev/shm", "/dev/shm/x", "/devices", "/proc2", "/system", "/data/proc"])
def test_ordinary_targets_accepted(target: str) -> None:
    assert Mount(type="tmpfs", target=target).target == target


def test_target_is_stored_cleaned() -> None:
    assert _create(mounts=[{"type": "tmpfs", "target": "/tmp//cache/"}]).mounts[0].target == "/tmp/cache"


@pytest.mark.parametrize(
    "targets", [("/a", "/a"), ("/a", "/a/"), ("/a", "//a"), ("/a", "/b/../a"), ("/a/b", "/a/./b")], ids=repr
)
def test_two_mounts_on_one_target_rejected(targets: tuple[str, str]) -> None:
    with pytest.raises(ValidationError, match="two mounts on one target"):
        _create(mounts=[{"type": "tmpfs", "target": t} for t in targets])
