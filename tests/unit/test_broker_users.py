"""scripts/broker-users: the permission regexes of each role, matched against the names the
worker and clients use (the real broker runs them in tests/integration/test_broker_roles.py)."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "broker-users"


def _load() -> ModuleType:
    loader = importlib.machinery.SourceFileLoader("broker_users", str(SCRIPT))
    spec = importlib.util.spec_from_loader("broker_users", loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["broker_users"] = module  # dataclasses look their module up there
    loader.exec_module(module)
    return module


bu = _load()


def ok(pattern: str, name: str) -> bool:
    return re.search(pattern, name) is not None


def test_worker_is_confined_to_its_host() -> None:
    g = bu.worker_grant("dh", "host-a")
    for name in ("dh.commands", "dh.events", "dh.commands.host-a", "dh.commands.any", "dh.leader.host-a"):
        assert ok(g.configure, name), name
    for name in ("dh.commands.host-b", "dh.leader.host-b", "dhx.commands", "other.events", "amq.gen-x"):
        assert not ok(g.configure, name), name
    assert ok(g.write, "amq.default")  # replies
    assert not ok(g.write, "dh.commands")  # no commands of its own
    assert not ok(g.read, "dh.commands.host-b")
    write, _ = g.topics["dh.events"]
    assert ok(write, "host-a.container.start")
    assert not ok(write, "host-ab.container.start")
    assert not ok(write, "host-b.container.start")
    _, read = g.topics["dh.commands"]
    assert [ok(read, k) for k in ("host-a.#", "all.#", "any.#", "#", "host-b.#")] == [True, True, True, False, False]


def test_sender_may_not_publish_events_or_replies() -> None:
    g = bu.sender_grant("dh", None, read_results=False)
    assert ok(g.write, "dh.commands")
    for name in ("dh.events", "dh.health", "dh.results", "amq.default", "dh.commands.host-a"):
        assert not ok(g.write, name), name
    assert ok(g.configure, "amq.gen-abc")
    assert not ok(g.configure, "dh.commands")
    assert not ok(g.read, "dh.results")
    assert ok(bu.sender_grant("dh", None, read_results=True).read, "dh.results")
    write, _ = bu.sender_grant("dh", ["host-a", "any"], read_results=False).topics["dh.commands"]
    assert ok(write, "any.host.info")
    assert not ok(write, "all.host.info")


def test_consumer_reads_events_and_publishes_nothing() -> None:
    g = bu.consumer_grant("dh", "proxy", None)
    for name in ("dh.events", "dh.health", "amq.gen-x", "dh.sub.proxy.main"):
        assert ok(g.read, name), name
    for name in ("dh.commands", "dh.events", "dh.results", "amq.default"):
        assert not ok(g.write, name), name
    assert not ok(g.configure, "dh.sub.proxyx.main")
    assert not ok(g.read, "dh.results")


def test_password_never_on_argv() -> None:
    out = subprocess.run(
        [sys.executable, str(SCRIPT), "sender", "s1", "--prefix", "dh", "--dry-run"],
        capture_output=True,
        text=True,
        check=True,
    )
    lines = out.stdout.splitlines()
    assert lines[0].endswith("add_user s1  # password on stdin")
    assert any("set_topic_permissions -p / s1 dh.commands" in line for line in lines)


@pytest.mark.parametrize(
    "args", [["worker", "w"], ["worker", "w", "--host-id", "any"], ["sender", "s", "--prefix", "A"]]
)
def test_bad_arguments(args: list[str]) -> None:
    out = subprocess.run([sys.executable, str(SCRIPT), *args, "--dry-run"], capture_output=True, text=True)
    assert out.returncode == 2, out
