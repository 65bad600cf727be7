"""The container config a create sends (issue 10): hardening defaults, CPU floor, image labels
under dockhand's prefixes neutralised, the port cap applied to the image's EXPOSE too.

No Docker here: ``container_config`` is pure. The integration tests
(tests/integration/test_containment_create.py) check the same against the real daemon."""

from __future__ import annotations

from typing import Any

import pytest

from dockhand.schemas import ErrorCode, Status
from dockhand.schemas.commands import WorkspaceCreate
from dockhand.worker.docker import DockerOps, ulimits
from dockhand.worker.docker.container_config import Target, container_config, published_ports
from dockhand.worker.errors import DockhandError
from dockhand.worker.labels import Labels
from dockhand.worker.policy import Policy
from dockhand.worker.settings import DEFAULT_CAP_DROP, Settings

LABELS = Labels(prefix="dockhand", discovery_prefix="dockhand")


def _ops(**overrides: Any) -> DockerOps:
    settings = Settings(
        host_id="host-a",
        worker_id="host-a-test",
        docker_host=None,
        allowed_capabilities=["NET_RAW", "NET_ADMIN"],
        **overrides,
    )
    return DockerOps(None, settings, LABELS, Policy(settings, LABELS))  # type: ignore[arg-type]


def _image(labels: dict[str, str] | None = None, ports: list[str] | None = None) -> dict[str, Any]:
    return {
        "Id": "sha256:" + "ab" * 32,
        "Config": {"Labels": labels, "ExposedPorts": {p: {} for p in ports or []}},
    }


def _create(**payload: Any) -> WorkspaceCreate:
    return WorkspaceCreate.model_validate({"workspace_id": "ws1", "image": "busybox", **payload})


def _config(p: WorkspaceCreate, image: dict[str, Any] | None = None, ops: DockerOps | None = None) -> dict[str, Any]:
    ops = ops or _ops()
    target = Target("net", "netid", 4.0, ops.managed_labels(), "hash")
    return container_config(p, image or _image(), ops.settings, ops.labels, target)


# --- hardening defaults -----------------------------------------------------------------------


def test_defaults_are_applied() -> None:
    host = _config(_create(restart_policy="on-failure"))["HostConfig"]
    assert host["CapDrop"] == sorted(DEFAULT_CAP_DROP)
    assert {"NET_RAW", "MKNOD", "AUDIT_WRITE", "SETFCAP"} <= set(host["CapDrop"])
    assert host["MemorySwap"] == host["Memory"] == 512 * 1024 * 1024
    assert host["RestartPolicy"] == {"Name": "on-failure", "MaximumRetryCount": 5}
    assert host["Ulimits"] == [{"Name": "nofile", "Soft": 1024, "Hard": 4096}, {"Name": "core", "Soft": 0, "Hard": 0}]
    assert host["LogConfig"] == {"Type": "json-file", "Config": {"max-size": "10m", "max-file": "3"}}
    assert host["CgroupnsMode"] == "private"
    assert host["SecurityOpt"] == ["no-new-privileges:true"]


@pytest.mark.parametrize("policy", ["no", "always", "unless-stopped"])
def test_retry_count_only_for_on_failure(policy: str) -> None:
    # Docker refuses a MaximumRetryCount with any other policy.
    assert _config(_create(restart_policy=policy))["HostConfig"]["RestartPolicy"] == {"Name": policy}


def test_an_allowed_cap_add_is_not_dropped() -> None:
    host = _config(_create(cap_add=["CAP_NET_RAW"]))["HostConfig"]
    assert host["CapAdd"] == ["NET_RAW"]
    assert "NET_RAW" not in host["CapDrop"]
    assert "MKNOD" in host["CapDrop"]


def test_settings_change_the_defaults() -> None:
    ops = _ops(
        cap_drop="all",
        disable_swap=False,
        restart_max_retries=2,
        ulimits="nofile=4096,nproc=100:200",
        log_max_size="",
        cgroupns="host",
    )
    host = _config(_create(restart_policy="on-failure"), ops=ops)["HostConfig"]
    assert host["CapDrop"] == ["ALL"]
    assert "MemorySwap" not in host
    assert host["RestartPolicy"]["MaximumRetryCount"] == 2
    assert host["Ulimits"] == [
        {"Name": "nofile", "Soft": 4096, "Hard": 4096},
        {"Name": "nproc", "Soft": 100, "Hard": 200},
    ]
    assert "LogConfig" not in host
    assert host["CgroupnsMode"] == "host"


@pytest.mark.parametrize(
    "overrides",
    [
        {"restart_max_retries": 0},  # Docker's "unlimited"
        {"ulimits": "nofile=10:5"},
        {"ulimits": "bogus=1"},
        {"ulimits": "nofile"},
        {"log_max_size": "10 MB"},
        {"cap_drop": "net raw"},
        {"cgroupns": "shared"},
        {"default_cpus": 0.001, "max_cpus": 0.001},
        {"default_memory_bytes": 1024},
    ],
    ids=repr,
)
def test_unsafe_settings_refused(overrides: dict[str, Any]) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - pydantic's ValidationError, any field
        _ops(**overrides)


def test_ulimits_helper() -> None:
    assert ulimits(["core=0", "nofile=1:2"]) == [
        {"Name": "core", "Soft": 0, "Hard": 0},
        {"Name": "nofile", "Soft": 1, "Hard": 2},
    ]


# --- CPU floor --------------------------------------------------------------------------------


@pytest.mark.parametrize(("cpus", "nano"), [(0.01, 10_000_000), (0.5, 500_000_000), (1.0, 1_000_000_000)])
def test_nano_cpus_never_zero(cpus: float, nano: int) -> None:
    assert _config(_create(resources={"cpus": cpus}))["HostConfig"]["NanoCpus"] == nano


def test_nano_cpus_floor_holds_even_past_the_schema() -> None:
    # model_construct skips validation: what if a tiny value ever got through?
    p = _create()
    p.resources = p.resources.model_construct(cpus=4e-10, memory_bytes=None, pids=None)
    assert _config(p)["HostConfig"]["NanoCpus"] == 10_000_000


# --- image labels under dockhand's prefixes -----------------------------------------------------


def test_inherited_reserved_labels_are_overridden_empty() -> None:
    image = _image(
        labels={
            "dockhand.enabled": "true",
            "dockhand.domain": "victim.example.com",
            "dockhand.port": "80",
            "dockhand.managed": "true",
            "dockhand.host": "other-host",
            "dockhand.project": "victim",
            "dockhand.owner": "victim",
            "Dockhand.Enabled": "true",
            "org.opencontainers.image.title": "kept",
        }
    )
    labels = _config(_create(labels={"app": "x"}), image)["Labels"]
    assert labels["dockhand.enabled"] == labels["dockhand.domain"] == labels["dockhand.port"] == ""
    assert labels["dockhand.project"] == labels["dockhand.owner"] == labels["Dockhand.Enabled"] == ""
    # the managed labels are ours, never the image's
    assert labels["dockhand.managed"] == "true"
    assert labels["dockhand.host"] == "host-a"
    assert labels["dockhand.workspace.id"] == "ws1"
    # other image labels are left to Docker's merge
    assert "org.opencontainers.image.title" not in labels
    assert labels["app"] == "x"


def test_own_discovery_labels_win_over_the_images() -> None:
    image = _image(labels={"dockhand.domain": "victim.example.com", "dockhand.description": "evil"})
    labels = _config(_create(discovery={"domain": "mine.example.com", "port": 8080}), image)["Labels"]
    assert labels["dockhand.domain"] == "mine.example.com"
    assert labels["dockhand.enabled"] == "true"
    assert labels["dockhand.description"] == ""


def test_a_neutralised_project_label_reads_as_none() -> None:
    ops = _ops()
    info = {
        "Id": "c" * 64,
        "Name": "/dockhand-ws1",
        "Config": {
            "Labels": {
                "dockhand.workspace.id": "ws1",
                "dockhand.project": "",
                "dockhand.stage": "",
                "dockhand.owner": "",
            }
        },
        "State": {"Status": "created"},
    }
    workspace = ops.containers.workspace(info)
    assert workspace.project is None
    assert workspace.stage is None
    assert workspace.owner is None


# --- the port cap and the image's EXPOSE ------------------------------------------------------


def test_image_expose_over_the_cap_is_refused() -> None:
    image = _image(ports=[f"{p}/tcp" for p in range(20000, 20300)])
    with pytest.raises(DockhandError, match=r"exposes 300 ports.*name the ones to publish in `ports`") as exc:
        published_ports(_create(), image, "workspace ws1 on host-a")
    assert exc.value.code is ErrorCode.INVALID_COMMAND
    assert exc.value.status is Status.REJECTED
    # naming ports is the way out
    assert published_ports(_create(ports=[20000]), image, "workspace ws1 on host-a") == ["20000/tcp"]


def test_image_expose_at_the_cap_is_published() -> None:
    image = _image(ports=[f"{p}/tcp" for p in range(20000, 20064)])
    assert len(_config(_create(), image)["HostConfig"]["PortBindings"]) == 64


def test_image_expose_of_sctp_is_refused() -> None:
    with pytest.raises(DockhandError, match="sctp") as exc:
        published_ports(_create(), _image(ports=["132/sctp", "80/tcp"]), "workspace ws1 on host-a")
    assert exc.value.code is ErrorCode.INVALID_COMMAND
