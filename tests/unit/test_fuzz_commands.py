"""Property-based fuzzing of the whole command surface, end to end, against a fake Docker.

Each example is a short *scenario*: a fresh :class:`~tests.fakes.docker_api.FakeDocker` seeded
with a small world (images, one unmanaged container squatting a workspace name, another
user's container on an unmanaged network, volumes and networks managed and not), and a
sequence of messages — body bytes and routing key — fed to the real
:class:`~worker.dispatch.Dispatcher` with a stub delivery, running the real handlers and
:class:`~worker.docker.DockerOps` through the real ``aiodocker`` client. Messages are drawn
from the committed JSON Schemas (``schemas/json/command.json`` via hypothesis-jsonschema), from
pools of values that reach the interesting parts of the host (existing workspaces, reserved
labels, host/none networks by id, bind sources through a symlink, 4e-10 cpus, …), and then made
hostile (wrong types, huge strings, control characters, path traversal, naive datetimes,
unknown fields, wrong routing keys, oversized or broken bodies).

Worlds vary: the worker's default network there or not, tenancy on (``user_id`` from a small
pool of senders, one of them an admin), messages one by one or (long runs only) as one
concurrent burst, the daemon failing a forward step now and then (503/404/409/400), and half the
time one or two workspaces already running.

The oracle, checked after every message:

* no uncaught exception: no "internal error handling message" requeue, no nack, no error
  logged with a traceback, no exception left in a task; every delivery settled exactly once;
  no log line that a sender's text could split or hide (control characters, line breaks);
* no result has the error code ``internal``;
* every message with a readable ``command_id`` (a body over the size limit: a leading plain
  one) gets exactly one result, for that id, and for its own type (an id is never answered
  with another command's result);
* a command whose result is not ``succeeded`` leaves no container, volume or network behind
  (the worker's default networks excepted, shared by every workspace);
* what a ``succeeded`` says happened did (connect/disconnect, stop, remove, create), and a create
  with nothing wrong in it (``benign-`` ids) succeeds — the safe defaults must not make Docker
  refuse ordinary workspaces;
* containment: a command never reaches an API path it does not name (an image reference never
  reaches a container route; no request misses every route), started workspaces have a CPU
  limit, bind sources resolve under the allowed root, at most 64 published ports, no discovery
  labels inherited from the image, one holder per announced domain, only managed networks and
  the workspace's own volumes are joined, no DNS name answers for two containers, nothing this
  host does not manage is changed, and under tenancy nothing another owner owns is changed.

In the suite the ``ci`` profile runs a small, derandomized (so never flaky) budget; ``scripts/fuzz``
runs the ``long`` profile (``HYPOTHESIS_PROFILE=long``, ``FUZZ_EXAMPLES``). A failure prints the
scenario; paste it into an ``@example`` to keep it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import tempfile
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pydantic_core
import pytest
import stamina
from hypothesis import HealthCheck, Phase, event, example, given, note, settings
from hypothesis import strategies as st
from hypothesis.control import currently_in_test_context
from hypothesis.database import DirectoryBasedExampleDatabase

from dockhand.schemas import COMMAND_TYPES
from dockhand.worker import services
from dockhand.worker.dispatch import Dispatcher
from dockhand.worker.docker import DockerOps
from dockhand.worker.labels import Labels
from dockhand.worker.policy import Policy
from dockhand.worker.settings import Settings
from dockhand.worker.topology import Topology
from tests.fakes.docker_api import BUSYBOX_BINARIES, FakeDocker, FakeNetwork, stable_id

REPO = Path(__file__).resolve().parents[2]
HOST = "fuzz-host"
OTHER_HOST = "other-host"
MAX_BODY = 64 * 1024
PREFIX = "dockhand-"
MANAGED = {"dockhand.managed": "true", "dockhand.host": HOST}
# Where bind mounts may come from: a real directory (the worker resolves it) holding a plain
# directory and a symlink to "/" (issue 10: a bind through it would be the host's root).
BIND_ROOT = Path(tempfile.gettempdir()) / "dockhand-fuzz-binds"

# --- hypothesis-jsonschema on current Hypothesis --------------------------------------------
#
# hypothesis-jsonschema 0.23.1 (the latest) drives Hypothesis' private ``many`` helper with
# ``more()``; current Hypothesis (6.170) only iterates it (``for _ in elements``). This adapter gives the
# old interface on the new object, so ``from_schema`` of an object schema works again.

import hypothesis_jsonschema._from_schema as _hjs_impl  # noqa: E402
from hypothesis.internal.conjecture import utils as _conjecture_utils  # noqa: E402
from hypothesis_jsonschema import from_schema  # noqa: E402


class _LegacyMany:
    def __init__(self, data: Any, **kwargs: Any) -> None:
        self._many = _conjecture_utils.many(data, **kwargs)
        self._many.__enter__()
        self._elements = iter(self._many)

    def more(self) -> bool:
        if next(self._elements, StopIteration) is StopIteration:
            self._many.__exit__(None)
            return False
        return True

    def reject(self, why: str | None = None) -> None:
        self._many.reject(why)


class _ConjectureUtils:
    many = _LegacyMany

    def __getattr__(self, name: str) -> Any:
        return getattr(_conjecture_utils, name)


if not hasattr(_conjecture_utils.many, "more"):
    _hjs_impl.cu = _ConjectureUtils()  # type: ignore[assignment]


# --- profiles ---------------------------------------------------------------------------------

settings.register_profile(
    "ci",
    max_examples=int(os.environ.get("FUZZ_EXAMPLES", "60")),
    deadline=None,
    derandomize=True,  # the same examples every run: the suite is never flaky
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)
settings.register_profile(
    "long",
    max_examples=int(os.environ.get("FUZZ_EXAMPLES", "2000")),
    deadline=None,
    database=DirectoryBasedExampleDatabase(str(REPO / ".cache" / "hypothesis" / "examples")),  # failures first
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)
PROFILE = settings.get_profile("long" if os.environ.get("HYPOTHESIS_PROFILE") == "long" else "ci")
# Concurrent bursts only in long runs: how their Docker calls interleave depends on timing, and
# the suite must give the same verdict every time.
BURSTS = os.environ.get("HYPOTHESIS_PROFILE") == "long"


# --- the world ----------------------------------------------------------------------------------

BUSYBOX_ID = "sha256:" + stable_id("image", "busybox:1.36", "busybox:latest")
HOST_NET_ID = stable_id("network", "host", "1")
NONE_NET_ID = stable_id("network", "none", "2")
SHARED_NET_ID = stable_id("network", "shared", "3")  # the fourth network seeded
DEFAULT_NETWORK = "dockhand"


def _bind_root() -> Path:
    (BIND_ROOT / "data").mkdir(parents=True, exist_ok=True)
    escape = BIND_ROOT / "escape"
    if not escape.is_symlink():
        with contextlib.suppress(FileExistsError):
            escape.symlink_to("/")
    return BIND_ROOT


def seed(fake: FakeDocker, *, default_network: bool) -> None:
    """Images, networks, volumes and containers every scenario starts from."""
    fake.host_paths.add(str(BIND_ROOT))
    fake.add_image("busybox:1.36", "busybox:latest", cmd=["sh"])
    fake.add_image("nginx:1.25", cmd=["nginx", "-g", "daemon off;"], exposed_ports=["80/tcp"], binaries=_with("nginx"))
    fake.add_image("wide:1", cmd=["sleep", "1d"], exposed_ports=[f"{p}/tcp" for p in range(20000, 20300)])
    fake.add_image(
        "labelled:1",
        cmd=["sleep", "1d"],
        labels={
            "dockhand.enabled": "true",
            "dockhand.domain": "victim.example",
            "dockhand.port": "80",
            "dockhand.managed": "true",
            "dockhand.host": HOST,
        },
    )
    fake.add_image("broken:1", cmd=["/app/server"])  # start fails: no such executable
    fake.add_image("alpine:3.20", cmd=["sh"], pullable_only=True)
    fake.add_image("127.0.0.1:5055/team/private:2", cmd=["sleep", "1d"], pullable_only=True)
    fake.add_network("shared", labels=dict(MANAGED))
    fake.add_network("othernet", labels={"owner": "someone-else"})
    fake.add_network("other-host-net", labels={"dockhand.managed": "true", "dockhand.host": OTHER_HOST})
    if default_network:
        fake.add_network(DEFAULT_NETWORK, labels=dict(MANAGED))
    fake.add_volume("vol-ws2", {**MANAGED, "dockhand.workspace.id": "ws2"})
    fake.add_volume("othervol", {"owner": "someone-else"})
    fake.add_container(f"{PREFIX}squat", "busybox:1.36")  # takes workspace "squat"'s name, unmanaged
    fake.add_container("victim", "busybox:1.36", network="othernet")
    # Leftovers of an older worker: managed, created, and failing to start the way Docker fails
    # (network gone: 404; sctp port: 500; a CPU quota under 1 ms: 500).
    for workspace, host_config in (
        ("ws3", {"NetworkMode": "gone-net"}),
        ("ws4", {"PortBindings": {"132/sctp": [{"HostIp": "127.0.0.1", "HostPort": ""}]}}),
        ("ws5", {"NanoCpus": 5_000_000}),
    ):
        leftover = fake.add_container(
            f"{PREFIX}{workspace}",
            "busybox:1.36",
            labels={**MANAGED, "dockhand.workspace.id": workspace},
            running=False,
        )
        leftover.host_config.update(host_config)
    fake.add_container(
        f"{PREFIX}ws9",
        "busybox:1.36",
        labels={"dockhand.managed": "true", "dockhand.host": OTHER_HOST, "dockhand.workspace.id": "ws9"},
    )


def _with(*binaries: str) -> frozenset[str]:
    return BUSYBOX_BINARIES | set(binaries)


def make_settings(*, tenancy: bool = False) -> Settings:
    return Settings(
        tenancy="user" if tenancy else "none",
        admin_users=["admin"],
        host_id=HOST,
        worker_id=f"{HOST}-1",
        docker_host=None,
        state_dir=None,
        http_enabled=False,
        max_body_bytes=MAX_BODY,
        max_file_bytes=4096,
        max_concurrency=4,
        docker_retry_attempts=2,
        allowed_bind_roots=[str(BIND_ROOT)],
        allowed_capabilities=["NET_ADMIN"],
        default_network=DEFAULT_NETWORK,
        exec_output_limit_bytes=4096,
    )


# --- messages and scenarios ---------------------------------------------------------------------


@dataclass(frozen=True)
class Msg:
    """One delivery: the routing key it came with and its body, as bytes."""

    routing_key: str
    body: bytes
    user_id: str | None = None  # the AMQP user_id property (what tenancy trusts)


@dataclass(frozen=True)
class Scenario:
    """A world variant and the messages sent to it: one by one, or all at once (``concurrent``)."""

    messages: tuple[Msg, ...]
    default_network: bool = False
    tenancy: bool = False
    concurrent: bool = False
    faults: tuple[tuple[str, int], ...] = ()  # (route, status): the first such request fails


TYPES = sorted(COMMAND_TYPES)

_COMMAND_SCHEMA = json.loads((REPO / "schemas" / "json" / "command.json").read_text())
_SCHEMA_BY_TYPE = {
    type_: {"$defs": _COMMAND_SCHEMA["$defs"], **_COMMAND_SCHEMA["$defs"][ref.rsplit("/", 1)[1]]}
    for type_, ref in _COMMAND_SCHEMA["discriminator"]["mapping"].items()
}
# Deferred: canonicalising the schemas takes seconds, and collection should not pay for it.
SCHEMA_COMMANDS = {
    type_: st.deferred(lambda schema=schema: from_schema(schema)) for type_, schema in _SCHEMA_BY_TYPE.items()
}

WORKSPACES = ["ws1", "ws1", "ws1", "ws2", "ws2", "squat", "ws9", "ws3", "ws4", "ws5"]
IMAGES = [
    "busybox:1.36",
    "busybox:1.36",
    "busybox",
    "nginx:1.25",
    "wide:1",
    "labelled:1",
    "broken:1",
    "alpine:3.20",
    "missing:1",
    "127.0.0.1:5055/team/private:2",
    "docker.io/library/busybox:1.36",
    BUSYBOX_ID,
    BUSYBOX_ID[7:19],
    f"x/../../containers/{PREFIX}squat",
    "x/../../containers/victim",
    "a//b",
    "ABC",
    "busybox:1.36@sha256:" + "0" * 64,
    "localhost/x",
    "busybox/../../info",
]
NETWORKS = [
    "shared",
    "shared",
    DEFAULT_NETWORK,
    "othernet",
    "other-host-net",
    "bridge",
    "host",
    "none",
    "HOST",
    "NONE",
    "Bridge",
    HOST_NET_ID,
    NONE_NET_ID,
    HOST_NET_ID[:12],
    SHARED_NET_ID,
    "newnet1",
    "newnet2",
    "victim",
]
VOLUMES = ["newvol1", "newvol1", "vol-ws2", "othervol", "data", "a b", "../x"]
TARGETS = ["/data", "/data", "/data/", "/srv", "/proc", "/proc/sys", "/dev", "/", "/sys", "/data/../proc", "rel"]
PORTS: list[Any] = [80, "80", "53/udp", "132/sctp", "8080/tcp", 0, 65535, 70000, "1-5", -1, "80/foo"]
CPUS: list[Any] = [4e-10, 1e-9, 1e-6, 0.001, 0.005, 0.009999, 0.01, 0.5, 1, 2, 2.5, 3, 1024, 5e-324, 0, -1]
MEMORY: list[Any] = [6 * 1024 * 1024, 6 * 1024 * 1024 - 1, 2**30, 2**50, 0]
USERS = ["root", "nobody", "1000", "1000:1000", "nosuchuser", "root:nosuchgroup", "0:0"]
LABELS: list[dict[str, str]] = [
    {},
    {"team": "a"},
    {"dockhand.managed": "true"},
    {"Dockhand.managed": "true"},
    {"DOCKHAND.host": HOST},
    {"com.docker.compose.project": "p"},
    {"dockhand": "x"},
    {"dockhand.enabled": "true", "dockhand.domain": "x.example", "dockhand.port": "80"},
]
ARGV: list[list[str]] = [["sleep", "1d"], ["echo", "hi"], ["/nonexistent"], ["sh", "-c", "true"], ["true"], []]
CAPS = ["NET_ADMIN", "CAP_NET_ADMIN", "SYS_ADMIN", "NET_RAW", "ALL"]
HOSTILE_STRINGS = [
    "",
    " ",
    "a\nb",
    "\x1b[31mred",
    "\x00",
    "\u202eevil",
    "../../etc/passwd",
    "..",
    "/etc/shadow",
    "%2e%2e%2f",
    "x" * 300,
    "é" * 70,
    "x" * 70_000,
]
HOSTILE_VALUES: list[Any] = [None, True, -1, 0, 1e308, 4e-10, [], {}, [1, "a"], {"$ref": "#"}, *HOSTILE_STRINGS]
EXPIRES: list[Any] = [
    "2999-01-01T00:00:00Z",
    "2000-01-01T00:00:00Z",
    "2999-01-01T00:00:00",  # naive
    "2999-01-01T00:00:00+05:00",
    "2999-01-01",
    "tomorrow",
    12345,
    None,
]


def _mount() -> st.SearchStrategy[dict[str, Any]]:
    binds = [
        str(BIND_ROOT / "data"),
        str(BIND_ROOT / "escape"),
        str(BIND_ROOT / "escape" / "etc"),
        str(BIND_ROOT),
        f"{BIND_ROOT}/../etc",
        str(BIND_ROOT / "missing"),
        "/etc",
        "/var/run/docker.sock",
    ]
    return st.one_of(
        st.fixed_dictionaries(
            {"type": st.just("volume"), "source": st.sampled_from(VOLUMES), "target": st.sampled_from(TARGETS)},
            optional={"read_only": st.booleans()},
        ),
        st.fixed_dictionaries(
            {"type": st.just("bind"), "source": st.sampled_from(binds), "target": st.sampled_from(TARGETS)},
            optional={"read_only": st.booleans()},
        ),
        st.fixed_dictionaries({"type": st.just("tmpfs"), "target": st.sampled_from(TARGETS)}),
    )


def _create_payload() -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries(
        {"workspace_id": st.sampled_from(WORKSPACES), "image": st.sampled_from(IMAGES)},
        optional={
            "network": st.sampled_from(NETWORKS),
            "mounts": st.lists(_mount(), max_size=3),
            "ports": st.lists(st.sampled_from(PORTS), max_size=3),
            "resources": st.fixed_dictionaries(
                {},
                optional={
                    "cpus": st.sampled_from(CPUS),
                    "memory_bytes": st.sampled_from(MEMORY),
                    "pids": st.sampled_from([1, 100, 10**6]),
                },
            ),
            "labels": st.sampled_from(LABELS),
            "command": st.sampled_from(ARGV),
            "entrypoint": st.sampled_from(ARGV),
            "user": st.sampled_from(USERS),
            "working_dir": st.sampled_from(TARGETS),
            "restart_policy": st.sampled_from(["no", "on-failure", "always", "unless-stopped"]),
            "cap_add": st.lists(st.sampled_from(CAPS), max_size=2),
            "discovery": st.fixed_dictionaries({"domain": st.just("app.example"), "port": st.sampled_from([80, 0])}),
            "pull": st.sampled_from(["missing", "always", "never"]),
            "start": st.booleans(),
            "read_only": st.booleans(),
            "env": st.sampled_from([{}, {"A": "1"}, {"PATH": "/x"}]),
            "project": st.sampled_from(["p1", "p2"]),
            "registry_auth": st.just({"username": "u", "password": "s3cret-pw"}),
        },
    )


def _pool_payload(type_: str) -> st.SearchStrategy[Any]:
    ws = st.sampled_from(WORKSPACES)
    net = st.sampled_from(NETWORKS)
    if type_ == "workspace.create":
        return _create_payload()
    if type_ in {"workspace.start", "workspace.inspect"}:
        return st.fixed_dictionaries({"workspace_id": ws})
    if type_ in {"workspace.stop", "workspace.restart"}:
        return st.fixed_dictionaries({"workspace_id": ws}, optional={"timeout_s": st.sampled_from([0, 1, 3600])})
    if type_ == "workspace.remove":
        return st.fixed_dictionaries(
            {"workspace_id": ws}, optional={"force": st.booleans(), "remove_volumes": st.booleans()}
        )
    if type_ == "workspace.list":
        return st.fixed_dictionaries(
            {},
            optional={"project": st.sampled_from(["p1", "p2"]), "state": st.sampled_from(["running", "exited"])},
        )
    if type_ == "workspace.exec":
        return st.fixed_dictionaries(
            {"workspace_id": ws, "command": st.sampled_from([["echo", "hi"], ["nosuch"], ["sleep", "0.3"], ["true"]])},
            optional={
                "timeout_s": st.sampled_from([0.1, 5, 4e-10]),
                "user": st.sampled_from(USERS),
                "env": st.sampled_from([{}, {"A": "1"}]),
                "stream": st.booleans(),  # without a reply_to (as here): rejected
                "detach": st.booleans(),  # with stream: rejected; alone: answered at once
            },
        )
    if type_ == "workspace.logs":
        return st.fixed_dictionaries(
            {"workspace_id": ws},
            optional={
                "tail": st.sampled_from([0, 5, 10_000]),
                "since": st.sampled_from(["2020-01-01T00:00:00Z", "2020-01-01T00:00:00"]),
            },
        )
    if type_ == "network.ensure":
        return st.fixed_dictionaries(
            {"name": net},
            optional={
                "driver": st.sampled_from(["bridge", "overlay", "macvlan", "ipvlan"]),
                "internal": st.booleans(),
                "labels": st.sampled_from(LABELS),
            },
        )
    if type_ == "network.connect":
        return st.fixed_dictionaries(
            {"network": net, "workspace_id": ws},
            optional={"aliases": st.sampled_from([[], ["db"], ["victim"], [f"{PREFIX}squat"]])},
        )
    if type_ == "network.disconnect":
        return st.fixed_dictionaries({"network": net, "workspace_id": ws})
    if type_ == "network.remove":
        return st.fixed_dictionaries({"name": net})
    if type_ in {"image.pull", "image.inspect"}:
        return st.fixed_dictionaries({"image": st.sampled_from(IMAGES)})
    if type_ == "workspace.put_files":
        files = st.fixed_dictionaries(
            {
                # A file through a file (/tmp/a then /tmp/a/b), over a directory (/etc), traversal.
                "path": st.sampled_from(["/tmp/a", "/d/x/y", "/tmp/a/b", "/etc/motd", "/etc", "/srv/../etc/x", "rel"]),
                "content": st.sampled_from(["", "aGk=", "A" * 2000, "not base64"]),  # 3 x 2000: over the limit
            },
            optional={"mode": st.sampled_from([0o644, 0o755, 0o600, 0o4755])},
        )
        return st.fixed_dictionaries({"workspace_id": ws, "files": st.lists(files, min_size=1, max_size=3)})
    if type_ == "workspace.get_file":
        return st.fixed_dictionaries(
            {"workspace_id": ws, "path": st.sampled_from(["/tmp/a", "/tmp", "/nope", "/d/x/y", "/a/../b"])},
            optional={"max_bytes": st.sampled_from([0, 1, 10**12, -1])},
        )
    return st.just({})


def _steer(envelope: Any, workspace: str, image: str, network: str) -> Any:
    """Point a schema-drawn payload at the seeded world (half the time), so it meets objects."""
    payload = envelope.get("payload") if isinstance(envelope, dict) else None
    if isinstance(payload, dict):
        if "workspace_id" in payload:
            payload["workspace_id"] = workspace
        if "image" in payload:
            payload["image"] = image
        for key in ("network", "name"):
            if key in payload and envelope.get("type") != "workspace.create":
                payload[key] = network
    return envelope


def _set_path(tree: dict[str, Any], keys: list[str], value: Any) -> None:
    node: Any = tree
    for key in keys[:-1]:
        if not isinstance(node.get(key), dict):
            node[key] = {}
        node = node[key]
    node[keys[-1]] = value


@st.composite
def hostile(draw: st.DrawFn, envelope: dict[str, Any], routing_key: str) -> tuple[bytes, str]:
    """One hostile variation of a command: its body bytes and the routing key it comes with."""
    kind = draw(
        st.sampled_from(
            [
                "field",
                "field",
                "unknown",
                "drop",
                "routing",
                "expires",
                "oversize",
                "truncate",
                "not-json",
                "nested",
                "command-id",
                "duplicate-key",
            ]
        )
    )
    env = json.loads(json.dumps(envelope))
    payload_keys = sorted(env["payload"]) if isinstance(env.get("payload"), dict) else []
    if kind == "field":
        if payload_keys and draw(st.booleans()):
            keys = ["payload", draw(st.sampled_from(payload_keys))]
        else:
            keys = [draw(st.sampled_from(["command_id", "type", "payload", "expires_at"]))]
        _set_path(env, keys, draw(st.sampled_from(HOSTILE_VALUES)))
    elif kind == "unknown":
        where = env["payload"] if isinstance(env.get("payload"), dict) and draw(st.booleans()) else env
        where[draw(st.sampled_from(["privileged", "Privileged", "host_config", "__proto__", "x" * 200]))] = True
    elif kind == "drop":
        key = draw(st.sampled_from(["command_id", "type", "payload", *(f"payload.{k}" for k in payload_keys)]))
        if key.startswith("payload."):
            env["payload"].pop(key.removeprefix("payload."), None)
        else:
            env.pop(key, None)
    elif kind == "routing":
        type_ = str(env.get("type"))
        routing_key = draw(
            st.sampled_from(
                [
                    f"{HOST}.host.info",
                    f"{OTHER_HOST}.{type_}",
                    "",
                    type_,
                    f"{HOST}.{type_}.x",
                    "x" * 300,
                    f"{HOST}.{type_.upper()}",
                    f"any.{type_}",
                    f"all.{type_}",
                ]
            )
        )
    elif kind == "expires":
        env["expires_at"] = draw(st.sampled_from(EXPIRES))
    elif kind == "command-id":
        env["command_id"] = draw(st.sampled_from(["x" * 129, "x" * 128, "a\nb", "\x1b[2J", "", 17, None, "c 1"]))
    body = json.dumps(env).encode()
    if kind == "oversize":
        env["pad"] = "x" * (MAX_BODY + draw(st.integers(1, 1000)))
        body = json.dumps(env).encode()
    elif kind == "truncate":
        body = body[: draw(st.integers(0, max(len(body) - 1, 0)))]
    elif kind == "not-json":
        body = draw(st.sampled_from([b"\xff" + body, body + b"}", b"[" + body + b"]", body.replace(b'"', b"'")]))
    elif kind == "nested":
        depth = draw(st.sampled_from([50, 200, 5000]))
        body = body[:-1] + b', "deep": ' + b"[" * depth + b"]" * depth + b"}"
    elif kind == "duplicate-key":
        body = body[:1] + b'"command_id": "dup-first", ' + body[1:]
    return body, routing_key


BENIGN = "benign-"
"""Command id prefix of creates that must succeed on a host where their workspace is new."""


def _benign_create() -> st.SearchStrategy[dict[str, Any]]:
    """A create with nothing wrong in it: the defaults (capabilities dropped, swap off, log cap,
    ulimits, cgroupns, restart cap) must not make Docker refuse it."""
    return st.fixed_dictionaries(
        {
            "workspace_id": st.sampled_from(["ws1", "ws2", "ws6"]),
            "image": st.sampled_from(["busybox:1.36", "nginx:1.25"]),
        },
        optional={
            "network": st.sampled_from(["shared", DEFAULT_NETWORK, "newnet1"]),
            "mounts": st.sampled_from(
                [
                    [],
                    [{"type": "volume", "source": "newvol1", "target": "/data"}],
                    [{"type": "tmpfs", "target": "/tmp"}],
                ]
            ),
            "ports": st.sampled_from([[], [80], ["53/udp", 8080]]),
            "resources": st.sampled_from([{}, {"cpus": 0.5}, {"cpus": 2, "memory_bytes": 2**30, "pids": 100}]),
            "restart_policy": st.sampled_from(["no", "on-failure", "always", "unless-stopped"]),
            "user": st.sampled_from(["root", "nobody", "1000:1000"]),
            "command": st.sampled_from([["sleep", "1d"], ["httpd", "-f"]]),
            "read_only": st.booleans(),
            "labels": st.sampled_from([{}, {"team": "a"}]),
            "discovery": st.just({"domain": "app.example", "port": 80}),
            "pull": st.sampled_from(["missing", "never"]),
            "start": st.booleans(),
            "cap_add": st.sampled_from([[], ["NET_ADMIN"]]),
        },
    )


@st.composite
def message(draw: st.DrawFn, index: int) -> Msg:
    type_ = draw(st.sampled_from(TYPES))
    if draw(st.integers(0, 7)) == 0:
        payload = draw(_benign_create())
        workspace = payload["workspace_id"]
        # Nothing shared with other workspaces: a volume and a domain of its own.
        for mount in payload.get("mounts", []):
            if mount.get("source") == "newvol1":
                mount["source"] = f"{workspace}-data"
        if "discovery" in payload:
            payload["discovery"] = {"domain": f"{workspace}.example", "port": 80}
        return Msg(
            f"{HOST}.workspace.create",
            json.dumps({"command_id": f"{BENIGN}{index}", "type": "workspace.create", "payload": payload}).encode(),
        )
    if draw(st.integers(0, 3)) == 0:
        envelope = draw(SCHEMA_COMMANDS[type_])
        if draw(st.booleans()):
            envelope = _steer(
                envelope,
                draw(st.sampled_from(WORKSPACES)),
                draw(st.sampled_from(IMAGES)),
                draw(st.sampled_from(NETWORKS)),
            )
    else:
        envelope = {"command_id": f"fz-{index}", "type": type_, "payload": draw(_pool_payload(type_))}
        if draw(st.integers(0, 4)) == 0:
            envelope["expires_at"] = draw(st.sampled_from(EXPIRES[:4]))
    if draw(st.integers(0, 5)) == 0:
        envelope["command_id"] = draw(st.sampled_from(["c1", "c2"]))  # ids reused across commands
    routing_key = f"{draw(st.sampled_from([HOST, HOST, 'any', 'all']))}.{type_}"
    if draw(st.integers(0, 3)) == 0:
        body, routing_key = draw(hostile(envelope, routing_key))
    else:
        body = json.dumps(envelope).encode()
    return Msg(routing_key, body)


FAULT_ROUTES = [
    "container.create",
    "container.start",
    "network.create",
    "volume.create",
    "image.pull",
    "image.inspect",
    "network.connect",
    "exec.start",
    "container.logs",
    "info",
]

WARM_UP = [
    {"workspace_id": "ws1", "image": "busybox:1.36", "command": ["sleep", "1d"], "network": "shared"},
    {"workspace_id": "ws2", "image": "nginx:1.25", "mounts": [{"type": "volume", "source": "vol-ws2", "target": "/d"}]},
]


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    count = draw(st.integers(1, 5))
    messages = [draw(message(i)) for i in range(count)]
    if draw(st.booleans()):
        # Start from running workspaces half the time, so later commands meet real objects.
        warm = [_msg("workspace.create", payload, f"warm-{n}") for n, payload in enumerate(WARM_UP)]
        messages = warm[: draw(st.integers(1, 2))] + messages
    tenancy = draw(st.integers(0, 3)) == 0
    if tenancy:
        users = st.sampled_from(["alice", "alice", "bob", "admin", None])
        messages = [Msg(m.routing_key, m.body, draw(users)) for m in messages]
    faults: list[tuple[str, int]] = []
    if draw(st.integers(0, 4)) == 0:
        # The daemon failing a forward step (never a clean-up step: a clean-up that Docker
        # refuses cannot be made good, and is not what this checks).
        routes = st.sampled_from(FAULT_ROUTES)
        faults = draw(st.lists(st.tuples(routes, st.sampled_from([503, 404, 409, 400])), min_size=1, max_size=2))
    return Scenario(
        tuple(messages),
        default_network=draw(st.booleans()),
        tenancy=tenancy,
        concurrent=BURSTS and count > 1 and draw(st.integers(0, 3)) == 0,
        faults=tuple(faults),
    )


# --- the harness --------------------------------------------------------------------------------


class StubMessage:
    """What the dispatcher uses of a FastStream RabbitMessage: body, raw_message, settling."""

    def __init__(self, body: bytes, routing_key: str, message_id: str, user_id: str | None = None) -> None:
        self.body = body
        self.raw_message = SimpleNamespace(
            channel=None,
            delivery_tag=None,  # not from a broker: DeliveryOrder releases it at once
            routing_key=routing_key,
            message_id=message_id,
            correlation_id=message_id,
            reply_to=None,
            headers={},
            redelivered=False,
            user_id=user_id,
            type=None,
            timestamp=None,
        )
        self.settles: list[str] = []

    async def ack(self) -> None:
        self.settles.append("ack")

    async def reject(self, requeue: bool = False) -> None:
        self.settles.append("reject-requeue" if requeue else "reject")

    async def nack(self, requeue: bool = True) -> None:
        self.settles.append("nack-requeue" if requeue else "nack")


@dataclass
class StubPublisher:
    """Records what would be published, by exchange name."""

    sent: list[tuple[str, bytes, dict[str, Any]]] = field(default_factory=list)

    async def confirmed(self, payload: bytes, **options: Any) -> None:
        exchange = options.get("exchange")
        self.sent.append((getattr(exchange, "name", "") or "", payload, options))


class Recorder(logging.Handler):
    """What the worker logs: errors (with tracebacks), and lines a sender's text could forge."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.records: list[logging.LogRecord] = []
        self.forged: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.ERROR:
            self.records.append(record)
        text = record.getMessage()
        if _FORGING.search(text):
            self.forged.append(text[:300])


# A log line with these in its message text is two lines (or hides text) on a terminal.
_FORGING = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


@dataclass
class Outcome:
    msg: Msg
    results: list[dict[str, Any]]
    settles: list[str]
    new_objects: frozenset[tuple[str, str]]
    routes: list[str]
    errors: list[str]
    timed_out: bool = False


_LEADING_ID = re.compile(rb'^\s*\{\s*"command_id"\s*:\s*"([A-Za-z0-9_.:@/+=-]{1,128})"')


def _readable_id(body: bytes) -> tuple[str | None, str | None]:
    """``(command_id, type)`` as a sender would read them from its own message; the id only
    when it is the kind a sender can be answered under (a non-empty string)."""
    if len(body) > MAX_BODY:
        # Too big to parse: answered when the id leads the body as a plain token.
        sniffed = _LEADING_ID.match(body[:4096])
        return (sniffed.group(1).decode() if sniffed else None), None
    try:
        raw = pydantic_core.from_json(body)
    except ValueError:
        return None, None
    if not isinstance(raw, dict):
        return None, None
    command_id = raw.get("command_id")
    type_ = raw.get("type") if isinstance(raw.get("type"), str) else None
    return (command_id if isinstance(command_id, str) and command_id else None), type_


# What the contract lets a command_id hold (schemas/_base.py): results echo such an id verbatim.
_VALID_ID = re.compile(r"^[^\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]{1,128}$")


def _printable_id(command_id: str) -> bool:
    return _VALID_ID.fullmatch(command_id) is not None


class World:
    """One scenario's fake daemon, worker objects and bookkeeping."""

    def __init__(self, fake: FakeDocker, dispatcher: Dispatcher, publisher: StubPublisher, recorder: Recorder) -> None:
        self.fake = fake
        self.dispatcher = dispatcher
        self.publisher = publisher
        self.recorder = recorder
        self.loop_errors: list[str] = []
        self.default_network_ids = {n.id for n in fake.networks.values() if n.name == DEFAULT_NETWORK}
        self.foreign = self._foreign_state()
        self.tenancy = False
        self.concurrent = False
        self.faulty = False  # the daemon fails on purpose: even good commands may fail
        self.created_before: set[str] = set()  # workspaces that had a container before the message
        self.reported: set[str] = set()
        self.owned_before: dict[str, tuple[str, Any]] = {}

    def _owned_state(self) -> dict[str, tuple[str, Any]]:
        """Objects with an owner label (tenancy): ``key -> (owner, state)``."""
        fake = self.fake
        state: dict[str, tuple[str, Any]] = {}
        for c in fake.containers.values():
            owner = (c.config.get("Labels") or {}).get("dockhand.owner")
            if owner:
                state[f"container {c.name}"] = (owner, (c.id, c.status, sorted(c.endpoints)))
        for n in fake.networks.values():
            if n.labels.get("dockhand.owner"):
                state[f"network {n.name} {n.id[:12]}"] = (n.labels["dockhand.owner"], n.id)
        for v in fake.volumes.values():
            if v.labels.get("dockhand.owner"):
                state[f"volume {v.name}"] = (v.labels["dockhand.owner"], dict(v.labels))
        return state

    def _foreign_state(self) -> dict[str, Any]:
        """What this host does not manage, as it must stay."""
        fake = self.fake
        state: dict[str, Any] = {}
        for c in fake.containers.values():
            labels = c.config.get("Labels") or {}
            if labels.get("dockhand.managed") != "true" or labels.get("dockhand.host") != HOST:
                state[f"container {c.name}"] = (c.status, sorted(c.endpoints))
        for n in fake.networks.values():
            if n.labels.get("dockhand.host") != HOST:
                state[f"network {n.name}"] = n.id
        for v in fake.volumes.values():
            if v.labels.get("dockhand.host") != HOST:
                state[f"volume {v.name}"] = dict(v.labels)
        return state

    async def deliver(self, msgs: list[Msg], first: int) -> list[Outcome]:
        """Deliver ``msgs`` at once (one, or a concurrent burst) and wait until all are settled."""
        fake, dispatcher = self.fake, self.dispatcher
        before = fake.snapshot()
        self.owned_before = self._owned_state()
        self.created_before = {
            (c.config.get("Labels") or {}).get("dockhand.workspace.id", c.name) for c in fake.containers.values()
        } | {c.name.removeprefix(PREFIX) for c in fake.containers.values()}
        requests_before = len(fake.requests)
        errors_before = len(self.recorder.records)
        forged_before = len(self.recorder.forged)
        self.publisher.sent.clear()
        stubs = []
        for offset, msg in enumerate(msgs):
            stub = StubMessage(msg.body, msg.routing_key, f"m{first + offset}", msg.user_id)
            stubs.append(stub)
            dispatcher.submit(msg.body, stub)  # type: ignore[arg-type]
        timed_out = False
        try:
            async with asyncio.timeout(30):
                while dispatcher.lanes.tasks:
                    await asyncio.wait(set(dispatcher.lanes.tasks))
        except TimeoutError:
            timed_out = True
        results_exchange = dispatcher.topology.results.name
        self.default_network_ids |= {
            n.id for n in fake.networks.values() if n.name.split("-")[0] == DEFAULT_NETWORK and n.labels
        }
        new = fake.snapshot() - before
        errors = [
            record.getMessage()
            + ("\n" + "".join(traceback.format_exception(*record.exc_info)) if record.exc_info else "")
            for record in self.recorder.records[errors_before:]
        ]
        errors += [
            f"a log line with a control character or line break: {line!r}"
            for line in self.recorder.forged[forged_before:]
        ]
        routes = [r.route for r in fake.requests[requests_before:]]
        outcomes = []
        for msg, stub in zip(msgs, stubs, strict=True):
            results = [
                json.loads(payload)
                for name, payload, options in self.publisher.sent
                if name == results_exchange and options.get("correlation_id") == stub.raw_message.message_id
            ]
            outcomes.append(Outcome(msg, results, stub.settles, new, routes, errors, timed_out))
            errors = []  # reported once per burst
        return outcomes

    # --- the oracle ---------------------------------------------------------------------

    def check(self, outcome: Outcome, *, burst_succeeded: bool) -> list[str]:
        problems: list[str] = []
        if outcome.timed_out:
            problems.append("the command did not finish within 30 s")
        for error in outcome.errors + self.loop_errors:
            problems.append(f"logged: {error}")
        self.loop_errors.clear()
        if outcome.settles.count("ack") + outcome.settles.count("reject") != 1 or len(outcome.settles) != 1:
            problems.append(f"delivery settled {outcome.settles} (want exactly one ack or reject, no requeue)")
        for result in outcome.results:
            code = (result.get("error") or {}).get("code")
            if code == "internal":
                problems.append(f"result with error code internal: {result['error'].get('message')}")
        command_id, type_ = _readable_id(outcome.msg.body)
        if command_id is not None:
            if len(outcome.results) != 1:
                problems.append(f"{len(outcome.results)} results for readable command_id {command_id[:60]!r}")
            elif _printable_id(command_id) and outcome.results[0]["command_id"] != command_id:
                problems.append(f"result for {outcome.results[0]['command_id']!r}, not {command_id!r}")
            elif type_ is not None and type_ in TYPES and outcome.results[0]["type"] != type_:
                problems.append(f"a {type_} answered with the result of a {outcome.results[0]['type']}")
        elif len(outcome.results) > 1:
            problems.append(f"{len(outcome.results)} results for one message")
        # In a concurrent burst, objects cannot be told apart per message: nothing may be new
        # unless something in the burst succeeded.
        succeeded = burst_succeeded
        left = {obj for obj in outcome.new_objects if not (obj[0] == "network" and obj[1] in self.default_network_ids)}
        if not succeeded and left:
            status = [f"{r.get('status')}/{(r.get('error') or {}).get('code')}" for r in outcome.results]
            problems.append(f"a command that did not succeed ({status}) left {self.fake.describe(left)}")
        if not self.concurrent:
            problems.extend(self.postconditions(outcome))
        # A standing violation is reported by the message that caused it, not by every later one.
        fresh = [p for p in self.containment(outcome, type_) if p not in self.reported]
        self.reported.update(fresh)
        return problems + fresh

    def workspace_container(self, workspace: str) -> Any:
        return next(
            (
                c
                for c in self.fake.containers.values()
                if (c.config.get("Labels") or {}).get("dockhand.workspace.id") == workspace
                and (c.config.get("Labels") or {}).get("dockhand.host") == HOST
            ),
            None,
        )

    def postconditions(self, outcome: Outcome) -> list[str]:
        """What a succeeded result says happened, checked on the fake (and benign creates succeed)."""
        try:
            raw = pydantic_core.from_json(outcome.msg.body)
        except ValueError:  # not JSON, or nested too deep
            return []
        if not isinstance(raw, dict) or not isinstance(raw.get("payload"), dict) or len(outcome.results) != 1:
            return []
        result, payload, type_ = outcome.results[0], raw["payload"], raw.get("type")
        workspace = payload.get("workspace_id")
        problems = []
        if str(raw.get("command_id", "")).startswith(BENIGN) and not (self.tenancy or self.faulty):
            existed = workspace in self.created_before
            if not existed and result["status"] != "succeeded":
                problems.append(f"a create with nothing wrong in it did not succeed: {result.get('error')}")
        if result["status"] != "succeeded":
            return problems
        container = self.workspace_container(workspace) if isinstance(workspace, str) else None
        with contextlib.suppress(Exception):
            if type_ in {"network.connect", "network.disconnect"} and container is not None:
                net = self.fake.find_network(payload["network"])
                attached = net.id in container.endpoints
                if attached != (type_ == "network.connect"):
                    problems.append(f"{type_} succeeded but the workspace is {'' if attached else 'not '}attached")
        if type_ == "workspace.stop" and container is not None and container.running:
            problems.append("workspace.stop succeeded but the container still runs")
        if type_ == "workspace.remove" and (result.get("result") or {}).get("removed") and container is not None:
            problems.append("workspace.remove said removed but the container is still there")
        if type_ == "workspace.create" and container is None:
            problems.append("workspace.create succeeded but there is no container")
        if type_ == "workspace.create" and container is not None and container.running and payload.get("discovery"):
            try:
                services.parse_service(self.fake._container_json(container), Labels("dockhand", "dockhand"))
            except services.InvalidLabels as exc:
                problems.append(f"a workspace created with discovery announces nothing: {exc}")
        return problems

    def containment(self, outcome: Outcome, type_: str | None) -> list[str]:
        fake = self.fake
        problems = []
        if "unrouted" in outcome.routes:
            problems.append(f"a request reached no API route: {outcome.routes}")
        if type_ in {"image.pull", "image.inspect"} and not self.concurrent:
            stray = [
                r for r in outcome.routes if r not in {"version", "info", "image.inspect", "image.pull", "redirect"}
            ]
            if stray:
                problems.append(f"an image reference reached other API paths: {stray}")
        root = os.path.realpath(BIND_ROOT)
        managed_nets = {n.id for n in fake.networks.values() if n.labels.get("dockhand.host") == HOST}
        bridge = {n.id for n in fake.networks.values() if n.name == "bridge" and n.predefined}
        for c in fake.containers.values():
            labels = c.config.get("Labels") or {}
            if labels.get("dockhand.managed") != "true" or labels.get("dockhand.host") != HOST:
                continue
            workspace = labels.get("dockhand.workspace.id", "?")
            what = f"workspace {workspace} ({c.status})"
            nano = int(c.host_config.get("NanoCpus") or 0)
            if c.running and nano * 100_000 // 1_000_000_000 < 1000 and not c.host_config.get("CpuQuota"):
                problems.append(f"{what} runs without an effective CPU limit (NanoCpus={nano})")
            for mount in c.mounts:
                if mount["Type"] == "bind":
                    real = os.path.realpath(mount["Source"])
                    if real != root and not real.startswith(root + os.sep):
                        problems.append(f"{what} binds {mount['Source']} which resolves to {real}, outside {root}")
                if mount["Type"] == "volume" and mount["Name"] in fake.volumes:
                    vlabels = fake.volumes[mount["Name"]].labels
                    if vlabels.get("dockhand.host") != HOST:
                        problems.append(f"{what} mounts volume {mount['Name']}, which this host does not manage")
                    elif vlabels.get("dockhand.workspace.id") not in {workspace, None} and not any(
                        "share" in key for key in vlabels
                    ):
                        problems.append(
                            f"{what} mounts volume {mount['Name']} of workspace {vlabels.get('dockhand.workspace.id')}"
                        )
            if len(c.host_config.get("PortBindings") or {}) > 64:
                problems.append(f"{what} publishes {len(c.host_config['PortBindings'])} ports (cap: 64)")
            inherited = c.image.labels.get("dockhand.domain")
            if inherited and labels.get("dockhand.domain") == inherited and labels.get("dockhand.enabled") == "true":
                problems.append(f"{what} announces {inherited} with discovery labels inherited from its image")
            for net_id in c.endpoints:
                net: FakeNetwork | None = fake.networks.get(net_id)
                if net is None or net_id in managed_nets or net_id in bridge:
                    continue
                problems.append(f"{what} is on network {net.name} ({net.driver}), which this host does not manage")
        # One holder per domain: what discovery.list answers never names a domain twice.
        for result in outcome.results if type_ == "discovery.list" else []:
            announced = [str(svc.get("domain", "")).lower() for svc in (result.get("result") or {}).get("services", [])]
            twice = sorted({d for d in announced if announced.count(d) > 1})
            if twice:
                problems.append(f"discovery.list announces {twice} more than once")
        for net in fake.networks.values():
            if not net.user_defined:
                continue
            owners: dict[str, set[str]] = {}
            for c in fake.containers.values():
                if net.id in c.endpoints:
                    for name in {c.name, *((c.endpoints[net.id] or {}).get("Aliases") or [])}:
                        owners.setdefault(name, set()).add(c.name)
            for name, holders in sorted(owners.items()):
                if len(holders) > 1:
                    problems.append(f"on network {net.name}, DNS name {name} answers for {sorted(holders)}")
        sender = outcome.msg.user_id
        if self.tenancy and sender != "admin" and not self.concurrent:
            owned_now = self._owned_state()
            for key, (owner, state) in self.owned_before.items():
                if owner != sender and owned_now.get(key, (owner, None))[1] != state:
                    problems.append(f"{sender or 'a sender without user_id'} changed {key}, owned by {owner}")
        now = self._foreign_state()
        for key, value in self.foreign.items():
            if now.get(key) != value:
                problems.append(f"{key}, not managed by this host, changed: {value} -> {now.get(key, 'gone')}")
        return problems


@contextlib.contextmanager
def _recording() -> Iterator[Recorder]:
    recorder = Recorder()
    logger = logging.getLogger("dockhand")
    level, propagate = logger.level, logger.propagate
    # The worker's log goes to the recorder only: thousands of examples' lines would swamp the
    # captured output, and the oracle reports what matters (errors, forged lines) itself.
    logger.addHandler(recorder)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        yield recorder
    finally:
        logger.removeHandler(recorder)
        logger.setLevel(level)
        logger.propagate = propagate


async def run_scenario(scenario: Scenario) -> list[str]:
    """Run every message of ``scenario``; the oracle's complaints, one line each."""
    _bind_root()
    problems: list[str] = []
    with tempfile.TemporaryDirectory(prefix="dhfz") as tmp, _recording() as recorder:
        fake = FakeDocker(Path(tmp) / "docker.sock")
        seed(fake, default_network=scenario.default_network)
        for route, status in scenario.faults:
            fake.fail_next(route, status, f"injected {status} on {route}")
        await fake.start()
        try:
            config = make_settings(tenancy=scenario.tenancy)
            labels = Labels(config.label_prefix, config.discovery_label_prefix)
            publisher = StubPublisher()
            dispatcher = Dispatcher(config, Topology(config), publisher)  # type: ignore[arg-type]
            dispatcher.ops = DockerOps(fake.client(), config, labels, Policy(config, labels))
            world = World(fake, dispatcher, publisher, recorder)
            world.tenancy, world.concurrent = scenario.tenancy, scenario.concurrent
            world.faulty = bool(scenario.faults)
            loop = asyncio.get_running_loop()
            loop.set_exception_handler(lambda _, context: world.loop_errors.append(str(context.get("message"))))
            bursts = [list(scenario.messages)] if scenario.concurrent else [[m] for m in scenario.messages]
            index = 0
            for burst in bursts:
                outcomes = await world.deliver(burst, index)
                burst_succeeded = any(r.get("status") == "succeeded" for o in outcomes for r in o.results)
                for offset, outcome in enumerate(outcomes):
                    msg = outcome.msg
                    for problem in world.check(outcome, burst_succeeded=burst_succeeded):
                        problems.append(f"message {index + offset} ({msg.routing_key}): {problem}")
                    if currently_in_test_context():
                        for result in outcome.results:
                            code = (result.get("error") or {}).get("code")
                            event(f"{result.get('type')}: {result.get('status')}{f'/{code}' if code else ''}")
                        note(f"message {index + offset}: {msg.routing_key} {msg.body[:300]!r} -> {outcome.results}")
                index += len(burst)
        finally:
            await fake.close()
            with contextlib.suppress(Exception):
                dispatcher.store.close()
    return problems


def check_scenario(scenario: Scenario) -> None:
    with stamina.set_testing(True, attempts=1):
        problems = asyncio.run(run_scenario(scenario))
    assert not problems, "\n".join(problems)


# --- found bugs, kept as examples ---------------------------------------------------------------


def _msg(type_: str, payload: dict[str, Any], command_id: str = "ex-1", **extra: Any) -> Msg:
    return Msg(
        f"{HOST}.{type_}", json.dumps({"command_id": command_id, "type": type_, "payload": payload, **extra}).encode()
    )


def _create(**payload: Any) -> Msg:
    return _msg("workspace.create", {"workspace_id": "ws1", "image": "busybox:1.36", **payload})


def _ws(workspace: str, command_id: str, **payload: Any) -> Msg:
    return _msg("workspace.create", {"workspace_id": workspace, "image": "busybox:1.36", **payload}, command_id)


FOUND: list[Scenario] = [
    # What the fuzzer found against the tree issue 10 started from (commit before the fixes);
    # each message names the oracle that failed there. All pass now and stay as examples.
    Scenario(
        (
            # internal + a created container left: NanoCpus 5e6 is a 0.5 ms quota, refused at start
            _ws("e1", "f1", resources={"cpus": 0.005}),
            # internal + container and network left: no userland proxy for sctp
            _ws("e2", "f2", network="newnet1", ports=["132/sctp"]),
            # a created container left: tmpfs on /proc fails at start
            _ws("e3", "f3", mounts=[{"type": "tmpfs", "target": "/proc"}]),
            # a volume left: two mounts on one target, refused after the volume was made
            _ws(
                "e4",
                "f4",
                mounts=[{"type": "volume", "source": "newvol1", "target": "/d"}, {"type": "tmpfs", "target": "/d"}],
            ),
            # a created container left: the image's command does not exist
            _ws("e5", "f5", image="broken:1"),
            # a container in host network mode left: the host network named by its id
            _ws("e6", "f6", network=HOST_NET_ID),
            # internal: network "bridge" crashed the create (ValidationError in NetworkEnsure)
            _ws("e7", "f7", network="bridge"),
            # running without a CPU limit: 4e-10 cpus is NanoCpus 0
            _ws("e8", "f8", resources={"cpus": 4e-10}),
        )
    ),
    Scenario(
        (
            _ws("e1", "g1", network="othernet"),  # joined a network this host does not manage
            _ws("e2", "g2", mounts=[{"type": "volume", "source": "vol-ws2", "target": "/d"}]),  # another's volume
            _ws("e3", "g3", mounts=[{"type": "bind", "source": str(BIND_ROOT / "escape"), "target": "/h"}]),  # -> /
            _ws("e4", "g4", image="wide:1"),  # 300 published ports from EXPOSE
            _ws("e5", "g5", image="labelled:1"),  # discovery labels inherited from the image
            _ws("e6", "g6"),
            # connected to an unmanaged network, with an alias shadowing another container's name
            _msg("network.connect", {"network": "othernet", "workspace_id": "e6", "aliases": ["victim"]}, "g7"),
        )
    ),
    Scenario(
        (
            # the image name went into the URL path: an unmanaged container's inspect came back
            _msg("image.inspect", {"image": f"x/../../containers/{PREFIX}squat"}, "h1"),
            _msg("image.inspect", {"image": "a//b"}, "h2"),  # internal (a 301 aiohttp refuses)
            _msg("network.ensure", {"name": "mv", "driver": "macvlan"}, "h3"),  # internal (Docker 500)
            # a TypeError, requeued (nack), no result: expires_at without a time zone
            _msg("host.info", {}, "h4", expires_at="2999-01-01T00:00:00"),
            _msg("host.info", {}, "c1"),
            _msg("workspace.list", {}, "c1"),  # answered with the host.info result stored under c1
            _msg("workspace.start", {"workspace_id": "ws4"}, "h5"),  # internal: a leftover that cannot start
            _msg("workspace.restart", {"workspace_id": "ws5"}, "h6"),  # internal
            _msg("host.info", {}, "h8\nforged log line"),  # the id's line break went into the text log
            Msg(
                f"{HOST}.host.info",
                json.dumps({"command_id": "h7", "type": "host.info", "pad": "x" * MAX_BODY}).encode(),
            ),
        )
    ),
    # Found against the issue-10 tree itself (fixed after): succeeded, but nothing was
    # disconnected — the network named by its id, the container's networks keyed by name.
    Scenario(
        (
            _ws("ws1", "k1", network="shared"),
            _msg("network.disconnect", {"network": SHARED_NET_ID, "workspace_id": "ws1"}, "k2"),
        )
    ),
    # ... and never announced: the dockhand.network label held the id that create was given.
    Scenario((_ws("ws1", "k3", network=SHARED_NET_ID, discovery={"domain": "app.example", "port": 80}),)),
    # Not a found failure: a fixed tour of the archive routes (issue 13), so that the small ci
    # budget always reaches them — a write, a write through a file, over a directory, on a
    # read-only root, reads of a file, a directory, a missing path, a stopped workspace.
    Scenario(
        (
            _ws("ws1", "m1"),
            _ws("ro1", "m2", read_only=True, mounts=[{"type": "volume", "source": "ro1-data", "target": "/d"}]),
            _msg(
                "workspace.put_files", {"workspace_id": "ws1", "files": [{"path": "/tmp/a", "content": "aGk="}]}, "m3"
            ),
            _msg("workspace.put_files", {"workspace_id": "ws1", "files": [{"path": "/tmp/a/b", "content": ""}]}, "m4"),
            _msg("workspace.put_files", {"workspace_id": "ws1", "files": [{"path": "/etc", "content": ""}]}, "m5"),
            _msg("workspace.put_files", {"workspace_id": "ro1", "files": [{"path": "/x", "content": ""}]}, "m6"),
            _msg("workspace.put_files", {"workspace_id": "ro1", "files": [{"path": "/d/x", "content": ""}]}, "m7"),
            _msg("workspace.get_file", {"workspace_id": "ws1", "path": "/tmp/a", "max_bytes": 1}, "m8"),
            _msg("workspace.get_file", {"workspace_id": "ws1", "path": "/tmp"}, "m9"),
            _msg("workspace.get_file", {"workspace_id": "ws1", "path": "/nope"}, "m10"),
            _msg("workspace.stop", {"workspace_id": "ws1", "timeout_s": 0}, "m11"),
            _msg("workspace.get_file", {"workspace_id": "ws1", "path": "/tmp/a"}, "m12"),
        )
    ),
]
"""Scenarios the fuzzer found failing (and that now pass); each stays as an ``@example``."""


def _examples(test: Callable[..., None]) -> Callable[..., None]:
    for scenario in reversed(FOUND):
        test = example(scenario=scenario)(test)
    return test


# --- the tests ----------------------------------------------------------------------------------


@pytest.mark.fuzz
@settings(PROFILE)
@_examples
@given(scenario=scenarios())
def test_fuzz_command_surface(scenario: Scenario) -> None:
    check_scenario(scenario)


KNOWN_OPEN: list[Any] = []
"""Found and not fixed yet, as ``pytest.param(Scenario(...), marks=pytest.mark.xfail(strict=True,
reason=...))``: a fix turns its xfail into an XPASS failure, the cue to move it to ``FOUND``."""

if KNOWN_OPEN:

    @pytest.mark.fuzz
    @pytest.mark.parametrize("scenario", KNOWN_OPEN)
    def test_known_open_fuzz_findings(scenario: Scenario) -> None:
        check_scenario(scenario)


def test_hypothesis_jsonschema_draws_object_schemas() -> None:
    """The ``many`` adapter above works: a schema-drawn create validates as JSON."""

    @settings(max_examples=3, database=None, phases=[Phase.generate], deadline=None)
    @given(SCHEMA_COMMANDS["workspace.create"])
    def draw(envelope: Any) -> None:
        assert envelope["type"] == "workspace.create"
        assert isinstance(envelope["payload"], dict)

    draw()


def test_fake_answers_like_docker_20_10(tmp_path: Path) -> None:
    """Spot checks of the fake against answers recorded from a real 20.10.24 daemon."""

    async def main() -> None:
        async with FakeDocker(tmp_path / "d.sock") as fake:
            seed(fake, default_network=False)
            docker = fake.client()
            from aiodocker.exceptions import DockerError

            async def status(call: Any) -> int:
                try:
                    await call
                except DockerError as exc:
                    return int(exc.status)
                return 200

            base = {"Image": "busybox:1.36", "Cmd": ["sleep", "1d"]}
            create = docker.containers.create
            assert await status(create({**base, "HostConfig": {"NanoCpus": 5_000_000_000}})) == 400
            assert await status(create({**base, "HostConfig": {"Memory": 1000}})) == 400
            dup = [{"Type": "tmpfs", "Target": "/d"}, {"Type": "tmpfs", "Target": "/d/"}]
            assert await status(create({**base, "HostConfig": {"Mounts": dup}})) == 400
            assert await status(create({**base, "HostConfig": {"SecurityOpt": ["bogus"]}})) == 500
            assert await status(create({**base, "Image": "nosuch:1"})) == 404
            assert await status(create({**base, "Image": "a//b"})) == 400
            # Accepted at create, refused at start — the created container stays.
            for host_config, code in [
                ({"NetworkMode": "nonet"}, 404),
                ({"NanoCpus": 5_000_000}, 500),
                ({"Mounts": [{"Type": "tmpfs", "Target": "/proc"}]}, 400),
                ({"PortBindings": {"132/sctp": [{"HostIp": "127.0.0.1", "HostPort": ""}]}}, 500),
            ]:
                container = await create({**base, "HostConfig": host_config})
                assert await status(container.start()) == code, host_config
                assert (await container.show())["State"]["Status"] == "created"
            # Below 10^4 NanoCpus the quota rounds to nothing: it runs, unlimited.
            unlimited = await create({**base, "HostConfig": {"NanoCpus": 1000}})
            await unlimited.start()
            assert (await unlimited.show())["State"]["Running"]
            # The path is cleaned with a redirect; ".." is resolved by the client already.
            assert (await docker.images.inspect(f"x/../../containers/{PREFIX}squat"))["Name"] == f"/{PREFIX}squat"
            assert fake.requests[-1].route == "container.inspect"

    asyncio.run(main())
