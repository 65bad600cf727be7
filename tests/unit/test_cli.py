"""The ``dockhand`` CLI without a broker: help, local validation, payload files, output, exit codes."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from dockhand import cli
from dockhand.client import BrokerUnavailable, Client, NoRoute, Retry

runner = CliRunner()


def invoke(*args: str, stdin: str | None = None) -> Any:
    return runner.invoke(cli.app, list(args), input=stdin, prog_name="dockhand")


def result(status: str = "succeeded", **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "command_id": "c1",
        "type": "host.info",
        "status": status,
        "host_id": "host-a",
        "worker_id": "host-a-1234",
        "result": None,
        "error": None,
        "started_at": "2026-11-23T08:00:00Z",
        "finished_at": "2026-11-23T08:00:00.412Z",
        "duration_ms": 412.3,
        "attempt": 1,
    }
    if status != "succeeded":
        body["error"] = {"code": "not_found", "message": "workspace ws1 not found on host-a", "retryable": False}
    body.update(extra)
    return body


class FakeBroker:
    """Stands in for the broker round trip (``cli._send``: the client's ``request_raw``): records
    what would be published and by which client, answers ``replies``."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []
        self.replies: list[dict[str, Any]] = []

    def reply(self, *items: dict[str, Any]) -> None:
        self.replies = list(items)

    async def send(self, client: Client, target: str, body: dict[str, Any], wait_s: float) -> list[bytes]:
        self.calls.append(
            {
                "url": ",".join(client.urls),
                "prefix": client.prefix,
                "target": target,
                "body": body,
                "wait_s": wait_s,
                "context": client.ssl_context,
            }
        )
        return [json.dumps(r).encode() for r in self.replies]


@pytest.fixture
def broker(monkeypatch: pytest.MonkeyPatch) -> FakeBroker:
    fake = FakeBroker()
    monkeypatch.setattr(cli, "_send", fake.send)
    return fake


# --- help -----------------------------------------------------------------------------------


def test_top_level_help_lists_every_command() -> None:
    out = invoke("--help")
    assert out.exit_code == 0
    for name in ("run", "schema", "send", "events"):
        assert name in out.stdout


def test_send_help_documents_options_and_exit_codes() -> None:
    out = invoke("send", "--help")
    assert out.exit_code == 0
    text = " ".join(out.stdout.split())
    for option in ("--host", "--payload", "--id", "--timeout", "--json", "--amqp-url", "--exchange-prefix"):
        assert option in text
    assert "DOCKHAND_AMQP_URL" in text
    assert "DOCKHAND_HOST_ID" in text
    assert "124 no reply" in text
    # The default URL's password is not printed, even in help.
    assert "guest:guest" not in text
    assert "amqp://guest:***@localhost:5672/" in text


def test_events_help_lists_kinds() -> None:
    out = invoke("events", "--help")
    assert out.exit_code == 0
    for kind in ("container", "network", "discovery", "health", "--count"):
        assert kind in out.stdout


def test_send_list_prints_every_type() -> None:
    out = invoke("send", "--list")
    assert out.exit_code == 0
    assert "host.info" in out.stdout.split()
    assert "workspace.create" in out.stdout.split()


def test_schema_writes_files(tmp_path: Path) -> None:
    out = invoke("schema", str(tmp_path))
    assert out.exit_code == 0, out.output
    assert (tmp_path / "command.json").exists()


def test_python_m_worker_cli_runs_main() -> None:
    source = Path(cli.__file__).read_text()
    assert 'if __name__ == "__main__":\n    main()' in source


# --- local validation: nothing is sent ---------------------------------------------------------


def test_unknown_type_is_rejected_locally(broker: FakeBroker) -> None:
    out = invoke("send", "workspace.frobnicate", "--host", "host-a")
    assert out.exit_code == 2
    assert out.stderr.startswith("dockhand: unknown command type 'workspace.frobnicate'")
    assert "workspace.create" in out.stderr
    assert broker.calls == []


def test_schema_violation_is_one_readable_line(broker: FakeBroker) -> None:
    out = invoke("send", "workspace.create", "--host", "host-a", "--payload", '{"workspace_id": "Bad Id", "imag": "x"}')
    assert out.exit_code == 2
    assert out.stdout == ""
    line = out.stderr.strip()
    assert "\n" not in line
    assert line.startswith("dockhand: invalid workspace.create command: ")
    assert "payload.workspace_id: String should match pattern" in line
    assert "payload.image: Field required" in line
    assert "payload.imag: unknown field" in line
    assert "Traceback" not in out.output
    assert broker.calls == []


def test_missing_payload_for_a_type_that_needs_one(broker: FakeBroker) -> None:
    out = invoke("send", "workspace.start", "--host", "host-a")
    assert out.exit_code == 2
    assert "payload: Field required" in out.stderr
    assert broker.calls == []


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ("{not json", "is not valid JSON"),
        ("[1, 2]", "must be a JSON object, not list"),
    ],
)
def test_payload_must_be_a_json_object(broker: FakeBroker, payload: str, message: str) -> None:
    out = invoke("send", "workspace.start", "--host", "host-a", "--payload", payload)
    assert out.exit_code == 2
    assert message in out.stderr
    assert broker.calls == []


@pytest.mark.parametrize("host", ["Host_A", "-a", "x" * 64])
def test_bad_host_is_rejected_locally(broker: FakeBroker, host: str) -> None:
    out = invoke("send", "host.info", "--host", host)
    assert out.exit_code == 2
    assert "is not a host id" in out.stderr
    assert broker.calls == []


def test_bad_command_id_is_rejected_locally(broker: FakeBroker) -> None:
    out = invoke("send", "host.info", "--host", "host-a", "--id", "x" * 129)
    assert out.exit_code == 2
    assert "command_id: String should have at most 128 characters" in out.stderr
    assert broker.calls == []


def test_missing_type(broker: FakeBroker) -> None:
    out = invoke("send")
    assert out.exit_code == 2
    assert "missing TYPE" in out.stderr


# --- payload files ---------------------------------------------------------------------------


def test_payload_from_file(broker: FakeBroker, tmp_path: Path) -> None:
    broker.reply(result(type="workspace.inspect", status="failed"))
    path = tmp_path / "ws.json"
    path.write_text(json.dumps({"workspace_id": "ws1"}))
    out = invoke("send", "workspace.inspect", "--host", "host-a", "--payload", f"@{path}", "--id", "my-id")
    assert out.exit_code == 1
    assert broker.calls[0]["body"] == {
        "command_id": "my-id",
        "type": "workspace.inspect",
        "payload": {"workspace_id": "ws1"},
    }
    assert broker.calls[0]["target"] == "host-a"


def test_payload_from_stdin(broker: FakeBroker) -> None:
    broker.reply(result(type="workspace.start"))
    out = invoke("send", "workspace.start", "--host", "host-a", "-p", "@-", stdin='{"workspace_id": "ws1"}')
    assert out.exit_code == 0, out.output
    assert broker.calls[0]["body"]["payload"] == {"workspace_id": "ws1"}


def test_missing_payload_file(broker: FakeBroker, tmp_path: Path) -> None:
    out = invoke("send", "workspace.start", "--host", "host-a", "-p", f"@{tmp_path}/nope.json")
    assert out.exit_code == 2
    assert out.stderr.strip() == f"dockhand: cannot read payload file {tmp_path}/nope.json: No such file or directory"
    assert broker.calls == []


def test_registry_password_is_sent_as_given(broker: FakeBroker) -> None:
    # Local validation must not replace the secret with pydantic's mask.
    broker.reply(result(type="image.pull"))
    payload = {"image": "r.example/x:1", "registry_auth": {"username": "u", "password": "pw"}}
    out = invoke("send", "image.pull", "--host", "host-a", "-p", json.dumps(payload))
    assert out.exit_code == 0
    assert broker.calls[0]["body"]["payload"]["registry_auth"]["password"] == "pw"


def test_expires_in_sets_expires_at(broker: FakeBroker) -> None:
    broker.reply(result())
    out = invoke("send", "host.info", "--host", "host-a", "--expires-in", "60")
    assert out.exit_code == 0
    assert broker.calls[0]["body"]["expires_at"].endswith("Z")


# --- settings from the environment -------------------------------------------------------------


def test_environment_is_read_and_options_override(broker: FakeBroker, monkeypatch: pytest.MonkeyPatch) -> None:
    broker.reply(result())
    monkeypatch.setenv("DOCKHAND_AMQP_URL", "amqp://u:p@broker:5672/")
    monkeypatch.setenv("DOCKHAND_EXCHANGE_PREFIX", "fleet")
    monkeypatch.setenv("DOCKHAND_HOST_ID", "host-b")
    assert invoke("send", "host.info").exit_code == 0
    assert (broker.calls[0]["url"], broker.calls[0]["prefix"], broker.calls[0]["target"]) == (
        "amqp://u:p@broker:5672/",
        "fleet",
        "host-b",
    )
    assert invoke("send", "host.info", "--host", "all", "--exchange-prefix", "other", "-t", "2").exit_code == 0
    assert (broker.calls[1]["prefix"], broker.calls[1]["target"], broker.calls[1]["wait_s"]) == ("other", "all", 2.0)


def test_host_defaults_to_this_machine(broker: FakeBroker, monkeypatch: pytest.MonkeyPatch) -> None:
    from dockhand.worker.settings import default_host_id

    broker.reply(result())
    monkeypatch.delenv("DOCKHAND_HOST_ID", raising=False)
    assert invoke("send", "host.info").exit_code == 0
    assert broker.calls[0]["target"] == default_host_id()


# --- output and exit codes ----------------------------------------------------------------------


@pytest.mark.parametrize(("status", "code"), [("succeeded", 0), ("failed", 1), ("rejected", 2), ("expired", 3)])
def test_exit_code_by_status(broker: FakeBroker, status: str, code: int) -> None:
    broker.reply(result(status))
    out = invoke("send", "host.info", "--host", "host-a")
    assert out.exit_code == code
    assert out.stdout.startswith(f"host-a host.info {status} in 412 ms")


def test_failure_is_printed_readably(broker: FakeBroker) -> None:
    broker.reply(result("failed", type="workspace.start"))
    out = invoke("send", "workspace.start", "--host", "host-a", "-p", '{"workspace_id": "ws1"}')
    assert out.stdout.splitlines() == [
        "host-a workspace.start failed in 412 ms",
        "failed: not_found: workspace ws1 not found on host-a (retryable: no)",
    ]


def test_json_prints_the_raw_result(broker: FakeBroker) -> None:
    body = result("failed")
    broker.reply(body)
    out = invoke("send", "host.info", "--host", "host-a", "--json")
    assert out.exit_code == 1
    assert json.loads(out.stdout) == body


def test_timeout_is_exit_124_with_one_line(broker: FakeBroker) -> None:
    broker.reply()
    out = invoke("send", "host.info", "--host", "host-a", "--id", "c9", "-t", "0.5")
    assert out.exit_code == 124
    assert out.stderr.strip() == "dockhand: no reply from host-a within 0.5 s (host.info c9; it may still run)"


def test_all_hosts_exit_zero_only_if_all_succeeded(broker: FakeBroker) -> None:
    broker.reply(result(host_id="host-a"), result(host_id="host-b"))
    out = invoke("send", "host.info", "--host", "all", "-t", "1")
    assert out.exit_code == 0
    assert out.stdout.splitlines()[-1] == "2 hosts replied: 2 succeeded"

    broker.reply(result(host_id="host-a"), result("failed", host_id="host-b"), result("expired", host_id="host-c"))
    out = invoke("send", "host.info", "--host", "all", "-t", "1")
    assert out.exit_code == 3
    assert "host-b host.info failed in 412 ms" in out.stdout
    assert out.stdout.splitlines()[-1] == "3 hosts replied: 1 expired, 1 failed, 1 succeeded"


def test_all_hosts_no_reply(broker: FakeBroker) -> None:
    broker.reply()
    out = invoke("send", "host.info", "--host", "all", "-t", "0.2", "--id", "c1")
    assert out.exit_code == 124
    assert out.stderr.strip() == "dockhand: no host replied within 0.2 s (host.info c1)"


class FakeWire:
    """The client behind ``send`` without a broker: no connection, and each publish is answered
    at once by ``replies`` (copies included, as at-least-once delivery may bring them)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.replies: list[bytes] = []
        self.published: list[str] = []

        async def get_link(client: Client) -> Any:
            return types.SimpleNamespace(lost=asyncio.Event())  # a link that stays up

        async def publish(
            client: Client, link: Any, body: bytes, routing_key: str, correlation_id: str, *_: Any
        ) -> None:
            self.published.append(routing_key)
            for raw in self.replies:
                client._waiters[correlation_id].deliver(raw)

        monkeypatch.setattr(Client, "_get_link", get_link)
        monkeypatch.setattr(Client, "_publish", publish)


async def test_collect_keeps_one_reply_per_host(monkeypatch: pytest.MonkeyPatch) -> None:
    wire = FakeWire(monkeypatch)
    client = cli.make_client(cli.DEFAULT_AMQP_URL, "dockhand")
    wire.replies = [json.dumps(result(host_id=host)).encode() for host in ("host-a", "host-a", "host-b")]
    got = await client.request_raw("host.info", host="all", timeout=0.2)
    assert [json.loads(g)["host_id"] for g in got] == ["host-a", "host-b"]
    wire.replies = [b"{}", b"[]"]
    assert await client.request_raw("host.info", host="host-a", timeout=0.2, retry=Retry.off(0.2)) == [b"{}"]


def test_send_through_the_client_prints_one_result_per_host(monkeypatch: pytest.MonkeyPatch) -> None:
    # The real `_send`, over the client: a copy of host-a's reply is dropped, one publish.
    wire = FakeWire(monkeypatch)
    wire.replies = [json.dumps(result(host_id=host)).encode() for host in ("host-a", "host-a", "host-b")]
    out = invoke("send", "host.info", "--host", "all", "-t", "0.3")
    assert out.exit_code == 0, out.output
    assert out.stdout.splitlines()[-1] == "2 hosts replied: 2 succeeded"
    assert wire.published == ["all.host.info"]
    wire.replies = []
    out = invoke("send", "host.info", "--host", "host-a", "-t", "0.2", "--id", "c7")
    assert out.exit_code == 124
    assert out.stderr == "dockhand: no reply from host-a within 0.2 s (host.info c7; it may still run)\n"


def test_workspace_result_view() -> None:
    ws = {
        "workspace_id": "ws1",
        "container_id": "3f2a1b9c4d5e6f708192",
        "container_name": "dockhand-ws1",
        "host_id": "host-a",
        "image": "nginx:1.27",
        "image_id": "sha256:abcdef0123456789",
        "state": "running",
        "created": True,
        "ports": [{"container_port": 80, "protocol": "tcp", "host_ip": "127.0.0.1", "host_port": 32768}],
        "networks": {"dockhand": "172.18.0.2"},
        "labels": {},
    }
    text = cli.format_result(result(type="workspace.create", result=ws))
    assert text.splitlines() == [
        "host-a workspace.create succeeded in 412 ms",
        "  workspace  ws1 (created)",
        "  container  dockhand-ws1 3f2a1b9c4d5e",
        "  image      nginx:1.27 abcdef012345",
        "  state      running",
        "  ports      80/tcp → 127.0.0.1:32768",
        "  networks   dockhand 172.18.0.2",
    ]


def test_other_result_views() -> None:
    info = {
        "host_id": "host-a",
        "docker_version": "20.10.24",
        "api_version": "1.41",
        "os": "Debian GNU/Linux 12",
        "cpus": 2,
        "memory_bytes": 2 * 2**30,
        "containers": 3,
    }
    assert cli.format_result(result(result=info)).splitlines()[1] == (
        "  docker 20.10.24 (API 1.41), Debian GNU/Linux 12, 2 CPUs, 2.0 GiB, 3 containers"
    )
    services = {"services": [{"container_id": "c" * 64, "container_name": "web", "domain": "app.example.com",
                              "port": 8080, "networks": {"bridge": "172.17.0.3"}, "host_ports": {}}]}  # fmt: skip
    assert cli.format_result(result(type="discovery.list", result=services)).splitlines()[1] == (
        "  app.example.com → 172.17.0.3:8080 (web)"
    )
    removed = {"workspace_id": "ws1", "removed": True}
    assert cli.format_result(result(type="workspace.remove", result=removed)).splitlines()[1:] == [
        "  workspace_id ws1",
        "  removed    yes",
    ]


# --- events -------------------------------------------------------------------------------------


def test_bindings() -> None:
    assert cli.bindings("dockhand", None, []) == [
        ("dockhand.events", "*.container.#"),
        ("dockhand.events", "*.network.#"),
        ("dockhand.events", "*.discovery.#"),
        ("dockhand.events", "*.workspace.#"),
        ("dockhand.health", "*.heartbeat"),
    ]
    assert cli.bindings("p", "host-a", [cli.Kind.health, cli.Kind.discovery]) == [
        ("p.health", "host-a.heartbeat"),
        ("p.events", "host-a.discovery.#"),
    ]


@pytest.fixture
def utc(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Event times print in local time: make that UTC for the test."""
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


@pytest.mark.usefixtures("utc")
def test_event_lines() -> None:
    t = "2026-11-23T08:12:01.5Z"
    container = {"id": "c" * 64, "name": "web", "image": "nginx", "labels": {}, "workspace_id": "ws1"}
    assert (
        cli.format_event(
            "host-a.container.start",
            {"event_id": "e", "host_id": "host-a", "type": "container.start", "time": t, "container": container},
        )
        == "08:12:01 host-a container.start web (ws1)"
    )
    die = {"host_id": "host-a", "type": "container.die", "time": t, "container": container}
    die["attributes"] = {"exit_code": 137}
    assert cli.format_event("", die) == "08:12:01 host-a container.die web (ws1) exit 137"
    service = {"container_id": "c", "container_name": "web", "domain": "app.example.com", "port": 8080,
               "networks": {"bridge": "172.17.0.3"}}  # fmt: skip
    assert (
        cli.format_event("", {"host_id": "host-a", "type": "discovery.added", "time": t, "service": service})
        == "08:12:01 host-a discovery.added app.example.com → 172.17.0.3:8080 (web)"
    )
    snapshot = {"host_id": "host-a", "type": "discovery.snapshot", "time": t, "reason": "startup", "services": []}
    assert cli.format_event("", snapshot) == "08:12:01 host-a discovery.snapshot (startup) 0 services"
    invalid = {"host_id": "host-a", "type": "discovery.invalid", "time": t, "reason": "port is not a number",
               "container": {"container_id": "c", "container_name": "bad"}}  # fmt: skip
    assert cli.format_event("", invalid) == "08:12:01 host-a discovery.invalid bad: port is not a number"
    network = {"host_id": "host-a", "type": "network.connect", "time": t, "network": {"id": "n", "name": "dockhand"},
               "container_id": "c", "workspace_id": "ws1"}  # fmt: skip
    assert cli.format_event("", network) == "08:12:01 host-a network.connect dockhand ws1"
    heartbeat = {
        "host_id": "host-a",
        "worker_id": "w",
        "status": "healthy",
        "time": t,
        "uptime_s": 1.0,
        "version": "0.1.0",
        "docker": {"reachable": True, "version": "20.10.24", "latency_ms": 0.84, "containers_running": 3},
        "commands": {"in_flight": 0},
        "events": {"stream_connected": True},
    }
    assert cli.format_event("host-a.heartbeat", heartbeat) == (
        "08:12:01 host-a heartbeat healthy docker 20.10.24 latency 0.8 ms running 3"
    )
    heartbeat["role"] = "standby"
    assert cli.format_event("host-a.heartbeat", heartbeat) == (
        "08:12:01 host-a heartbeat healthy standby w docker 20.10.24 latency 0.8 ms running 3"
    )
    heartbeat.update(role="active", status="unhealthy", docker={"reachable": False}, events={"stream_connected": False})
    assert cli.format_event("host-a.heartbeat", heartbeat) == (
        "08:12:01 host-a heartbeat unhealthy docker unreachable event stream down"
    )
    assert cli.format_event("host-a.container.start", None).endswith("host-a.container.start (not a JSON object)")


def test_events_rejects_bad_host_and_kind() -> None:
    out = invoke("events", "--host", "Bad Host")
    assert out.exit_code == 2
    assert "is not a host id" in out.stderr
    assert invoke("events", "--kind", "volume").exit_code == 2


# --- broker errors: one line, password masked --------------------------------------------------


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("amqp://guest:guest@localhost:5672/", "amqp://guest:***@localhost:5672/"),
        ("amqps://user:p%40ss:w0rd@broker.example:5671/vhost", "amqps://user:***@broker.example:5671/vhost"),
        ("amqp://user@localhost/", "amqp://user@localhost/"),
        ("amqp://localhost/", "amqp://localhost/"),
    ],
)
def test_mask_url(url: str, masked: str) -> None:
    assert cli.mask_url(url) == masked


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize("command", [["send", "host.info", "--host", "host-a"], ["events"]])
def test_unreachable_broker_is_one_line_with_masked_password(command: list[str]) -> None:
    url = f"amqp://guest:s3cret@127.0.0.1:{_closed_port()}/"
    out = invoke(*command, "--amqp-url", url)
    assert out.exit_code == 69
    assert out.stdout == ""
    assert out.stderr == f"dockhand: cannot reach RabbitMQ at {url.replace('s3cret', '***')}: Connection refused\n"
    assert "s3cret" not in out.output


@pytest.mark.parametrize(("host", "who"), [("host-a", "no worker for host host-a"), ("any", "no worker")])
def test_no_route_is_exit_69_and_names_the_options(monkeypatch: pytest.MonkeyPatch, host: str, who: str) -> None:
    FakeWire(monkeypatch)

    async def returned(*_: Any) -> None:  # the broker returned the mandatory publish
        raise NoRoute("routing key reaches no queue")

    monkeypatch.setattr(Client, "_publish", returned)
    out = invoke("send", "host.info", "--host", host, "--exchange-prefix", "fleet", "-t", "5")
    assert out.exit_code == 69
    assert out.stderr == (
        f"dockhand: {who} has a queue on fleet.commands (routing key {host}.host.info reaches no queue): "
        "check --host and --exchange-prefix\n"
    )


@pytest.mark.parametrize(
    ("error", "line"),
    [
        (
            BrokerUnavailable(
                "exchange p.commands does not exist on amqp://u:***@h/: no worker has run with this exchange prefix",
                transient=False,
                exchange="p.commands",
            ),
            "exchange p.commands does not exist on amqp://u:***@h/: no worker has run with this exchange prefix "
            "(check --exchange-prefix / DOCKHAND_EXCHANGE_PREFIX)",
        ),
        (
            BrokerUnavailable("RabbitMQ at amqp://u:***@h/ refused the login: bad credentials", transient=False),
            "RabbitMQ at amqp://u:***@h/ refused the login: bad credentials",
        ),
    ],
)
@pytest.mark.parametrize("command", [["send", "host.info", "--host", "host-a"], ["events"]])
def test_broker_unavailable_is_exit_69_in_one_line(
    monkeypatch: pytest.MonkeyPatch, command: list[str], error: BrokerUnavailable, line: str
) -> None:
    async def refuse(client: Client) -> None:
        raise error

    monkeypatch.setattr(Client, "open", refuse)
    out = invoke(*command)
    assert out.exit_code == 69
    assert out.stdout == ""
    assert out.stderr == f"dockhand: {line}\n"


@pytest.mark.parametrize("command", [["send", "host.info", "--host", "host-a"], ["events"]])
def test_a_broker_url_list_that_does_not_parse_is_exit_2(broker: FakeBroker, command: list[str]) -> None:
    out = invoke(*command, "--amqp-url", "amqp://u:s3cret@node1:5672/,,amqp://node2/")
    assert out.exit_code == 2
    assert out.stderr.startswith("dockhand: --amqp-url / DOCKHAND_AMQP_URL: empty entry in the broker URL list")
    assert out.stderr.count("\n") == 1
    assert "s3cret" not in out.output
    assert broker.calls == []


def test_send_takes_a_url_list(broker: FakeBroker) -> None:
    broker.reply(result())
    out = invoke("send", "host.info", "--host", "host-a", "--amqp-url", "amqp://u:p@node1:5701,node2:5702/vh")
    assert out.exit_code == 0, out.output
    assert broker.calls[0]["url"] == "amqp://u:p@node1:5701/vh,amqp://u:p@node2:5702/vh"


class FakeSubscription:
    """``Client.subscribe`` without a broker: binds (``on_connect``), yields ``messages`` and then
    waits, as a quiet queue does. The messages have only the two attributes the CLI may read."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, *messages: tuple[str, bytes]) -> None:
        self.messages = [types.SimpleNamespace(routing_key=key, body=body) for key, body in messages]
        self.bindings: list[tuple[str, str]] = []
        self.closed = False
        fake = self

        async def open_(client: Client) -> None:
            return None

        async def subscribe(client: Client, bindings: Any, *, on_connect: Any = None, **_: Any) -> Any:
            fake.bindings = [(f"{client.prefix}.{exchange}", key) for exchange, key in bindings]
            try:
                await on_connect()
                for message in fake.messages:
                    yield message
                await asyncio.Event().wait()
            finally:
                fake.closed = True

        monkeypatch.setattr(Client, "open", open_)
        monkeypatch.setattr(Client, "subscribe", subscribe)


def test_events_count_json_and_the_listening_line(monkeypatch: pytest.MonkeyPatch) -> None:
    start = json.dumps({"host_id": "host-a", "type": "container.start"}).encode()
    fake = FakeSubscription(
        monkeypatch, ("host-a.container.start", start), ("host-a.container.die", b"{}"), ("x", b"3")
    )
    out = invoke("events", "--host", "host-a", "--kind", "container", "--count", "2", "--json")
    assert out.exit_code == 0, out.output
    assert out.stdout.splitlines() == [start.decode(), "{}"]
    assert out.stderr == "dockhand: listening on dockhand.events host-a.container.# (Ctrl-C to stop)\n"
    assert fake.bindings == cli.bindings("dockhand", "host-a", [cli.Kind.container])
    assert fake.closed  # the subscription ends with the command (its queue goes)


def test_events_timeout_before_count_is_124(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeSubscription(monkeypatch, ("host-a.heartbeat", b"not json"))
    out = invoke("events", "--count", "3", "--timeout", "0.2", "--exchange-prefix", "p")
    assert out.exit_code == 124
    assert out.stdout.splitlines()[0].endswith("host-a.heartbeat (not a JSON object)")
    assert out.stderr.splitlines() == [
        "dockhand: listening on p.events *.container.#, p.events *.network.#, p.events *.discovery.#, "
        "p.events *.workspace.#, "
        "p.health *.heartbeat (Ctrl-C to stop)",
        "dockhand: 1 of 3 messages within 0.2 s",
    ]
    assert fake.closed
    # Without --count, the timeout is a normal end.
    assert invoke("events", "--timeout", "0.2").exit_code == 0


def test_unexpected_error_is_one_line(broker: FakeBroker, monkeypatch: pytest.MonkeyPatch) -> None:
    async def boom(*args: Any) -> list[bytes]:
        raise RuntimeError("something odd")

    monkeypatch.setattr(cli, "_send", boom)
    out = invoke("send", "host.info", "--host", "host-a")
    assert out.exit_code == 1
    assert out.stderr == "dockhand: RuntimeError: something odd\n"


def test_run_reports_bad_settings_in_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKHAND_HOST_ID", "Not Valid")
    out = invoke("run")
    assert out.exit_code == 2
    assert out.stderr.startswith("dockhand: invalid settings: DOCKHAND_HOST_ID: ")
    assert "Traceback" not in out.output


def test_run_without_a_broker_is_one_line(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "DOCKHAND_AMQP_URL": f"amqp://guest:s3cret@127.0.0.1:{_closed_port()}/",
        "DOCKHAND_HOST_ID": "unit-cli",
        "DOCKHAND_HTTP_PORT": "0",
        "DOCKHAND_STATE_DIR": str(tmp_path),
    }
    done = subprocess.run(
        [sys.executable, "-m", "dockhand.cli", "run"], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 69, done.stderr
    assert done.stderr.splitlines()[-1] == (
        f"dockhand: cannot reach RabbitMQ at {env['DOCKHAND_AMQP_URL'].replace('s3cret', '***')}: Connection refused"
    )
    assert "Traceback" not in done.stderr
    assert "s3cret" not in done.stderr


@pytest.mark.parametrize(
    ("url", "user"),
    [
        ("amqp://alice:pw@localhost:5672/", "alice"),
        ("amqps://b%40corp:pw@node1:5671/,amqps://b%40corp:pw@node2:5671/", "b@corp"),
        ("amqps://node1:5671/", None),  # certificate (EXTERNAL) login: only the broker knows the name
        ("amqp://localhost/", None),
    ],
)
def test_send_names_the_url_user_as_user_id(url: str, user: str | None) -> None:
    # Tenancy takes the sender from user_id, which RabbitMQ checks against the login.
    assert cli.make_client(url, "dockhand").user_id == user
