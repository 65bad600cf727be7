"""The ``dockhand`` command line: run the worker, send it commands, tail its events.

``dockhand send`` and ``dockhand events`` are built on the Python client, :mod:`dockhand.client`
(one client implementation in the repo): it validates and publishes commands, collects their
replies and subscribes to events. The CLI parses options and prints. They read
``DOCKHAND_AMQP_URL``, ``DOCKHAND_EXCHANGE_PREFIX`` and ``DOCKHAND_HOST_ID`` like the worker
does; options override.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import signal
import ssl
import sys
from collections.abc import Awaitable, Callable, Iterator
from datetime import datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer

from dockhand.amqp import error_reason, mask_url

if TYPE_CHECKING:
    from dockhand.client import Client

# Exit codes of `dockhand send`, by result status (see `dockhand send --help`).
EXIT_CODES: dict[str, int] = {"succeeded": 0, "failed": 1, "rejected": 2, "expired": 3}
EXIT_INVALID = 2  # a command that is not valid is not sent: the same code as `rejected`
EXIT_UNAVAILABLE = 69  # the broker is unreachable, refuses the login, or lacks the exchange (EX_UNAVAILABLE)
EXIT_TIMEOUT = 124  # no reply in time (like timeout(1))

DEFAULT_AMQP_URL = "amqp://guest:guest@localhost:5672/"
CONNECT_TIMEOUT_S = 10.0
_HOST_ID = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")

app = typer.Typer(
    help="dockhand: run Docker through RabbitMQ.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)


class CliError(Exception):
    """A failure the user gets as one line on stderr, with an exit code."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


def fail(message: str, code: int = 1) -> NoReturn:
    raise CliError(message, code)


# --- options shared by send and events ----------------------------------------------------

AmqpUrl = Annotated[
    str,
    typer.Option(
        "--amqp-url",
        envvar="DOCKHAND_AMQP_URL",
        show_envvar=True,
        show_default=False,
        help=f"Broker URL [default: {mask_url(DEFAULT_AMQP_URL)}].",
    ),
]
ExchangePrefix = Annotated[
    str,
    typer.Option(
        "--exchange-prefix",
        envvar="DOCKHAND_EXCHANGE_PREFIX",
        show_envvar=True,
        help="Prefix of the exchange names (<prefix>.commands, .results, .events, .health).",
    ),
]
AmqpCaFile = Annotated[
    Path | None,
    typer.Option(
        "--amqp-ca-file",
        envvar="DOCKHAND_AMQP_CA_FILE",
        show_envvar=True,
        help="amqps://: the CA that verifies the broker [default: the system's CAs].",
    ),
]
AmqpCertFile = Annotated[
    Path | None,
    typer.Option(
        "--amqp-cert-file",
        envvar="DOCKHAND_AMQP_CERT_FILE",
        show_envvar=True,
        help="amqps://: client certificate (PEM), for brokers that require one.",
    ),
]
AmqpKeyFile = Annotated[
    Path | None,
    typer.Option(
        "--amqp-key-file", envvar="DOCKHAND_AMQP_KEY_FILE", show_envvar=True, help="amqps://: its private key (PEM)."
    ),
]


def amqp_tls(url: str, ca_file: Path | None, cert_file: Path | None, key_file: Path | None) -> ssl.SSLContext | None:
    """The TLS context for ``url``, built as the worker builds its own (worker/tls.py)."""
    from dockhand.worker.tls import TlsConfigError, amqp_context

    try:
        return amqp_context(url, ca_file, cert_file, key_file)
    except TlsConfigError as err:
        fail(str(err), EXIT_INVALID)


# --- run, schema ----------------------------------------------------------------------------


@app.command()
def run() -> None:
    """Run the worker (configured by DOCKHAND_* environment variables)."""
    from pydantic import ValidationError

    from dockhand.worker.settings import Settings

    try:
        settings = Settings()
    except ValidationError as err:
        problems = "; ".join(
            # A check across settings (no loc) names its settings in its own message.
            f"DOCKHAND_{'_'.join(str(p) for p in e['loc']).upper()}: {e['msg']}"
            if e["loc"]
            else str(e["msg"]).removeprefix("Value error, ")
            for e in err.errors()
        )
        _die(f"invalid settings: {problems}", EXIT_INVALID)
    from dockhand.worker.logs import setup_logging

    setup_logging(settings.log_level, settings.log_json, settings.host_id)
    from aiormq.exceptions import AMQPConnectionError, ProbableAuthenticationError

    from dockhand.worker.app import create_app, tune_gc

    worker = create_app(settings)
    tune_gc()
    try:
        asyncio.run(worker.run())
    except ProbableAuthenticationError as err:
        _die(f"RabbitMQ at {mask_url(settings.amqp_url)} refused the login: {error_reason(err)}", EXIT_UNAVAILABLE)
    except AMQPConnectionError as err:
        # At start-up only: once connected, the broker connection reconnects by itself.
        _die(f"cannot reach RabbitMQ at {mask_url(settings.amqp_url)}: {error_reason(err)}", EXIT_UNAVAILABLE)


@app.command()
def schema(
    directory: Annotated[Path | None, typer.Argument(help="Where to write (default: schemas/json).")] = None,
) -> None:
    """Write the JSON Schema of every message kind."""
    from dockhand.schemas.export import SCHEMA_DIR, write

    for path in write(directory or SCHEMA_DIR):
        typer.echo(path)


# --- send -------------------------------------------------------------------------------------


def _command_types() -> list[str]:
    from dockhand.schemas import COMMAND_TYPES

    return sorted(COMMAND_TYPES)


def load_payload(value: str | None) -> dict[str, Any] | None:
    """``--payload``: inline JSON, ``@file``, or ``@-`` for standard input."""
    if value is None:
        return None
    source = "--payload"
    text = value
    if value.startswith("@"):
        name = value[1:]
        if name == "-":
            source, text = "standard input", sys.stdin.read()
        else:
            source = name
            try:
                text = Path(name).read_text(encoding="utf-8")
            except OSError as err:
                fail(f"cannot read payload file {name}: {err.strerror or err}", EXIT_INVALID)
            except UnicodeDecodeError:
                fail(f"payload file {name} is not UTF-8 text", EXIT_INVALID)
    try:
        payload = json.loads(text)
    except json.JSONDecodeError as err:
        fail(f"payload from {source} is not valid JSON: {err}", EXIT_INVALID)
    if not isinstance(payload, dict):
        fail(f"payload from {source} must be a JSON object, not {type(payload).__name__}", EXIT_INVALID)
    return payload


def make_client(
    url: str, prefix: str, ca_file: Path | None = None, cert_file: Path | None = None, key_file: Path | None = None
) -> Client:
    """The client behind ``send`` and ``events``: the URL list checked (exit 2 when it does not
    parse), TLS built as the worker builds it. It connects when used."""
    from dockhand.amqp import UrlError, split_urls
    from dockhand.client import Client

    try:
        split_urls(url)
    except UrlError as err:
        fail(f"--amqp-url / DOCKHAND_AMQP_URL: {err}", EXIT_INVALID)
    context = amqp_tls(url, ca_file, cert_file, key_file)
    return Client(url, prefix=prefix, ssl_context=context, connect_timeout=CONNECT_TIMEOUT_S, name="dockhand-cli")


class HostTarget:
    """The two ``--host`` values that are not host ids (contract: routing key targets)."""

    ANY = "any"
    ALL = "all"


def resolve_host(host: str | None) -> str:
    """``--host``: a host id, ``any`` or ``all``; default DOCKHAND_HOST_ID, else this machine's id."""
    if host is None:
        from dockhand.worker.settings import default_host_id

        host = default_host_id()
    if host not in {HostTarget.ANY, HostTarget.ALL} and not _HOST_ID.match(host):
        fail(f"host {host!r} is not a host id ({_HOST_ID.pattern}), 'any' or 'all'", EXIT_INVALID)
    return host


@app.command(
    epilog=(
        "Exit codes: 0 succeeded, 1 failed, 2 rejected (or invalid locally: nothing was sent), "
        "3 expired, 124 no reply within --timeout, 69 broker unreachable. "
        "With --host all: 0 only if every reply succeeded, else the highest code among the replies."
    )
)
def send(
    command_type: Annotated[
        str,
        typer.Argument(
            metavar="TYPE",
            help="Command type, e.g. host.info, workspace.create (`dockhand send --list` shows all).",
            show_default=False,
        ),
    ] = "",
    host: Annotated[
        str | None,
        typer.Option(
            "--host",
            "-H",
            envvar="DOCKHAND_HOST_ID",
            show_envvar=True,
            show_default=False,
            help="Target: a host id, 'any' (one worker of any host) or 'all' (every host). "
            "[default: this machine's host id]",
        ),
    ] = None,
    payload: Annotated[
        str | None,
        typer.Option("--payload", "-p", help="Payload: a JSON object, @FILE, or @- for standard input."),
    ] = None,
    command_id: Annotated[
        str | None, typer.Option("--id", help="command_id (the idempotency key) [default: random]")
    ] = None,
    timeout: Annotated[
        float, typer.Option("--timeout", "-t", min=0.1, help="Seconds to wait for the reply (for 'all': for replies).")
    ] = 30.0,
    expires_in: Annotated[
        float | None,
        typer.Option("--expires-in", min=0, help="Set expires_at this many seconds from now."),
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print each result as raw JSON (one line per reply).")
    ] = False,
    list_types: Annotated[bool, typer.Option("--list", help="List the command types and exit.")] = False,
    stream: Annotated[
        bool,
        typer.Option(
            "--stream",
            help="workspace.exec only: print the output live (stdout to stdout, stderr to stderr), "
            "then the result; --timeout is then for the whole run.",
        ),
    ] = False,
    amqp_url: AmqpUrl = DEFAULT_AMQP_URL,
    exchange_prefix: ExchangePrefix = "dockhand",
    amqp_ca_file: AmqpCaFile = None,
    amqp_cert_file: AmqpCertFile = None,
    amqp_key_file: AmqpKeyFile = None,
) -> None:
    """Send one command and print its result.

    Publishes to <prefix>.commands with routing key <host>.<TYPE>, a reply_to queue and a
    correlation_id, then waits for the reply.
    """
    if list_types:
        for name in _command_types():
            typer.echo(name)
        return
    with _errors():
        if not command_type:
            fail("missing TYPE (e.g. `dockhand send host.info`; `dockhand send --list` shows all)", EXIT_INVALID)
        target = resolve_host(host)
        data = load_payload(payload)
        client = make_client(amqp_url, exchange_prefix, amqp_ca_file, amqp_cert_file, amqp_key_file)
        deadline = timedelta(seconds=expires_in) if expires_in is not None else None
        # Validated locally as the worker will validate it: CommandRejected (exit 2), nothing sent.
        if stream:
            if command_type != "workspace.exec":
                fail("--stream works only with workspace.exec", EXIT_INVALID)
            if target == HostTarget.ALL:
                fail("--stream needs one target (a host id or 'any'), not 'all'", EXIT_INVALID)
            data = {**(data or {}), "stream": True}
        body = client.command(command_type, data, command_id=command_id, deadline=deadline)
        if stream:
            replies = _run_async(_send_streamed(client, target, body, timeout))
        else:
            replies = _run_async(_send(client, target, body, timeout))
        if not replies:
            what = f"{command_type} {body['command_id']}"
            if target == HostTarget.ALL:
                fail(f"no host replied within {timeout:g} s ({what})", EXIT_TIMEOUT)
            fail(f"no reply from {target} within {timeout:g} s ({what}; it may still run)", EXIT_TIMEOUT)
        codes = []
        for raw in replies:
            result = _parse_result(raw)
            codes.append(EXIT_CODES.get(str(result.get("status")), 1))
            if as_json:
                typer.echo(raw.decode("utf-8", errors="replace"))
            else:
                typer.echo(format_result(result))
        if target == HostTarget.ALL and not as_json:
            counts: dict[str, int] = {}
            for raw in replies:
                status = str(_parse_result(raw).get("status"))
                counts[status] = counts.get(status, 0) + 1
            summary = ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
            typer.echo(f"{len(replies)} host{'s' if len(replies) != 1 else ''} replied: {summary}")
    code = max(codes)
    if code:
        raise typer.Exit(code)


def _parse_result(raw: bytes) -> dict[str, Any]:
    try:
        result = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return {"status": "failed", "error": {"code": "internal", "message": "reply is not JSON"}}
    return result if isinstance(result, dict) else {"status": "failed", "error": {"message": "reply is not an object"}}


async def _send(client: Client, target: str, body: dict[str, Any], wait_s: float) -> list[bytes]:
    """Publish ``body`` once to ``target`` and wait up to ``wait_s`` for the reply (for ``all``:
    one per host until ``wait_s``); the raw reply bodies, [] when none came."""
    from dockhand.client import NoRoute, Retry

    expires = body.get("expires_at")
    async with client:
        try:
            return await client.request_raw(
                body["type"],
                body.get("payload"),
                host=target,
                command_id=body["command_id"],
                deadline=datetime.fromisoformat(expires) if expires else None,
                timeout=wait_s,
                retry=Retry.off(wait_s),
            )
        except NoRoute:
            who = "no worker" if target in {HostTarget.ANY, HostTarget.ALL} else f"no worker for host {target}"
            fail(
                f"{who} has a queue on {client.prefix}.commands (routing key {target}.{body['type']} reaches "
                "no queue): check --host and --exchange-prefix",
                EXIT_UNAVAILABLE,
            )


async def _send_streamed(client: Client, target: str, body: dict[str, Any], wait_s: float) -> list[bytes]:
    """:func:`_send` for ``workspace.exec --stream``: each chunk written as it arrives (stdout's
    to stdout, stderr's to stderr, bytes as sent), then the result's raw body ([] when none came)."""
    from dockhand.client import CommandError, NoRoute, ReplyTimeout

    expires = body.get("expires_at")
    payload = {k: v for k, v in (body.get("payload") or {}).items() if k != "stream"}
    async with client:
        stream = client.exec_stream(
            payload,
            host=target,
            command_id=body["command_id"],
            deadline=datetime.fromisoformat(expires) if expires else None,
            timeout=wait_s,
        )
        ends_line = {"stdout": True, "stderr": True}
        try:
            async for chunk in stream:
                sink = sys.stdout if chunk.stream == "stdout" else sys.stderr
                data = chunk.content()
                sink.buffer.write(data)
                sink.flush()
                ends_line[chunk.stream] = data.endswith(b"\n")
        except CommandError:
            pass  # its result is printed below, as for any other command
        except ReplyTimeout:
            return []
        except NoRoute:
            who = "no worker" if target == HostTarget.ANY else f"no worker for host {target}"
            fail(f"{who} has a queue on {client.prefix}.commands: check --host and --exchange-prefix", EXIT_UNAVAILABLE)
        finally:
            for name, sink in (("stdout", sys.stdout), ("stderr", sys.stderr)):
                if not ends_line[name]:  # the summary (or an error line) starts on a line of its own
                    sink.write("\n")
                    sink.flush()
        return [stream.raw] if stream.raw is not None else []


# --- result formatting --------------------------------------------------------------------


def format_error(status: str, error: dict[str, Any] | None) -> str:
    """``failed: not_found: workspace ws1 not found on host-a (retryable: no)``."""
    error = error or {}
    retryable = "yes" if error.get("retryable") else "no"
    return f"{status}: {error.get('code', 'unknown')}: {error.get('message', '')} (retryable: {retryable})"


def format_result(result: dict[str, Any]) -> str:
    """A result as a header line plus a compact view of its body or error."""
    status = str(result.get("status", "?"))
    duration = result.get("duration_ms")
    took = f" in {duration:.0f} ms" if isinstance(duration, int | float) else ""
    attempt = result.get("attempt")
    retry = f" (attempt {attempt})" if isinstance(attempt, int) and attempt > 1 else ""
    header = f"{result.get('host_id', '?')} {result.get('type', '?')} {status}{took}{retry}"
    if status != "succeeded":
        return f"{header}\n{format_error(status, result.get('error'))}"
    body = result.get("result")
    lines = _format_body(str(result.get("type", "")), body) if isinstance(body, dict) else []
    return "\n".join([header, *lines])


def _short_id(value: Any) -> str:
    text = str(value or "")
    return text.removeprefix("sha256:")[:12]


def _ports(ports: Any) -> str:
    parts = []
    for port in ports or []:
        if isinstance(port, dict):
            parts.append(
                f"{port.get('container_port')}/{port.get('protocol', 'tcp')} → "
                f"{port.get('host_ip')}:{port.get('host_port')}"
            )
    return ", ".join(parts)


def _pairs(mapping: Any, sep: str = " ") -> str:
    if not isinstance(mapping, dict):
        return ""
    return ", ".join(f"{k}{sep}{v}" if v not in (None, "") else str(k) for k, v in mapping.items())


def _gib(value: Any) -> str:
    return f"{value / 2**30:.1f} GiB" if isinstance(value, int | float) else "?"


def _workspace_lines(ws: dict[str, Any]) -> list[str]:
    created = {True: " (created)", False: " (existed)"}.get(ws["created"], "") if "created" in ws else ""
    rows = [
        ("workspace", f"{ws.get('workspace_id')}{created}"),
        ("container", f"{ws.get('container_name')} {_short_id(ws.get('container_id'))}"),
        ("image", f"{ws.get('image')} {_short_id(ws.get('image_id'))}"),
        ("state", f"{ws.get('state')}" + (f", {ws['health']}" if ws.get("health") else "")),
        ("ports", _ports(ws.get("ports"))),
        ("networks", _pairs(ws.get("networks"))),
        ("project", " / ".join(str(ws[k]) for k in ("project", "stage") if ws.get(k))),
    ]
    return [f"  {name:<10} {value}" for name, value in rows if value]


def _workspace_row(ws: dict[str, Any]) -> str:
    ports = _ports(ws.get("ports"))
    return f"  {ws.get('workspace_id')}  {ws.get('state')}  {ws.get('image')}" + (f"  {ports}" if ports else "")


def service_line(service: dict[str, Any]) -> str:
    """``app.example.com → 172.17.0.3:8080 (web)``."""
    port = service.get("port")
    addresses = [f"{ip}:{port}" for ip in (service.get("networks") or {}).values() if ip]
    if not addresses:
        addresses = [f"host port {p}" for p in (service.get("host_ports") or {}).values()] or ["no address"]
    name = service.get("container_name") or _short_id(service.get("container_id"))
    health = f", {service['health']}" if service.get("health") else ""
    return f"{service.get('domain')} → {', '.join(addresses)} ({name}{health})"


def _format_body(command_type: str, body: dict[str, Any]) -> list[str]:
    if "container_id" in body and "workspace_id" in body and "state" in body:
        return _workspace_lines(body)
    if command_type == "host.info":
        return [
            f"  docker {body.get('docker_version')} (API {body.get('api_version')}), {body.get('os')}, "
            f"{body.get('cpus')} CPUs, {_gib(body.get('memory_bytes'))}, {body.get('containers')} containers"
        ]
    if command_type == "workspace.list":
        workspaces = body.get("workspaces") or []
        return [_workspace_row(ws) for ws in workspaces if isinstance(ws, dict)] or ["  no workspaces"]
    if command_type == "discovery.list":
        services = body.get("services") or []
        return [f"  {service_line(s)}" for s in services if isinstance(s, dict)] or ["  no services"]
    if command_type == "workspace.exec":
        if body.get("exec_id") and body.get("exit_code") is None:
            return [f"  started (detached), exec id {body['exec_id']}"]
        lines = [f"  exit code {body.get('exit_code')}" + (" (output truncated)" if body.get("truncated") else "")]
        for stream in ("stdout", "stderr"):
            text = str(body.get(stream) or "")
            if text:
                lines.append(f"  {stream}:")
                lines.extend(f"    {line}" for line in text.rstrip("\n").split("\n"))
        return lines
    if command_type == "workspace.logs":
        lines = [f"  {line}" for line in body.get("lines") or []]
        return [*lines, "  (truncated)"] if body.get("truncated") else lines or ["  no log lines"]
    if command_type == "workspace.get_file" and isinstance(body.get("mode"), int):
        # The content is base64 of up to MAX_FILE_BYTES: not for a terminal (`dockhand cp` writes it).
        from dockhand.schemas.commands import base64_decoded_size

        got = base64_decoded_size(str(body.get("content") or ""))
        cut = f", first {got} bytes (truncated)" if body.get("truncated") else ""
        return [f"  {body.get('path')}  {body.get('size')} bytes{cut}, mode {body['mode']:o}  (`dockhand cp` saves it)"]
    return [f"  {key:<10} {_compact(value)}" for key, value in body.items() if value not in (None, {}, [])]


def _compact(value: Any) -> str:
    if isinstance(value, dict):
        return _pairs(value, "=")
    if isinstance(value, list):
        return ", ".join(_compact(v) for v in value)
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


# --- events -----------------------------------------------------------------------------------


class Kind(StrEnum):
    container = "container"
    network = "network"
    discovery = "discovery"
    workspace = "workspace"
    health = "health"


def bindings(prefix: str, host: str | None, kinds: list[Kind]) -> list[tuple[str, str]]:
    """(exchange, routing key) pairs for ``dockhand events``."""
    return [(f"{prefix}.{exchange}", key) for exchange, key in _bindings(host, kinds)]


def _bindings(host: str | None, kinds: list[Kind]) -> list[tuple[str, str]]:
    """The same pairs with the exchange's suffix (``events``, ``health``), as the client takes them."""
    from dockhand.client import bindings as client_bindings

    return client_bindings([host] if host else None, [kind.value for kind in kinds or list(Kind)])


def _clock(value: Any) -> str:
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            return datetime.fromisoformat(value.replace("Z", "+00:00")).astimezone().strftime("%H:%M:%S")
    return datetime.now().astimezone().strftime("%H:%M:%S")


def format_event(routing_key: str, body: Any) -> str:
    """One readable line per event or heartbeat."""
    if not isinstance(body, dict):
        return f"{datetime.now().astimezone():%H:%M:%S} {routing_key} (not a JSON object)"
    host = body.get("host_id") or routing_key.split(".", 1)[0]
    kind = str(body.get("type") or routing_key.split(".", 1)[-1])
    head = f"{_clock(body.get('time'))} {host}"
    if "status" in body and "docker" in body:  # a heartbeat
        return f"{head} heartbeat {_heartbeat(body)}"
    if kind.startswith("container."):
        container = body.get("container") or {}
        name = container.get("name") or _short_id(container.get("id"))
        ws = f" ({container['workspace_id']})" if container.get("workspace_id") else ""
        attributes = body.get("attributes") or {}
        extra = f" exit {attributes['exit_code']}" if "exit_code" in attributes else ""
        return f"{head} {kind} {name}{ws}{extra}"
    if kind.startswith("network."):
        network = body.get("network") or {}
        name = network.get("name") or _short_id(network.get("id"))
        target = body.get("workspace_id") or _short_id(body.get("container_id"))
        return f"{head} {kind} {name}" + (f" {target}" if target else "")
    if kind == "discovery.snapshot":
        services = [s for s in body.get("services") or [] if isinstance(s, dict)]
        listed = ": " + ", ".join(str(s.get("domain")) for s in services) if services else ""
        return f"{head} {kind} ({body.get('reason')}) {len(services)} service{'s' * (len(services) != 1)}{listed}"
    if kind == "discovery.invalid":
        container = body.get("container") or {}
        return f"{head} {kind} {container.get('container_name')}: {body.get('reason')}"
    if kind.startswith("discovery.") and isinstance(body.get("service"), dict):
        return f"{head} {kind} {service_line(body['service'])}"
    return f"{head} {kind}"


def _heartbeat(body: dict[str, Any]) -> str:
    docker = body.get("docker") or {}
    parts = [str(body.get("status"))]
    if body.get("role") == "standby":  # a hot standby: its worker id tells the replicas apart
        parts.append(f"standby {body.get('worker_id')}")
    if docker.get("reachable"):
        parts.append(f"docker {docker.get('version')}")
        if isinstance(docker.get("latency_ms"), int | float):
            parts.append(f"latency {docker['latency_ms']:.1f} ms")
        parts.append(f"running {docker.get('containers_running')}")
    else:
        parts.append("docker unreachable")
    events = body.get("events") or {}
    if events and not events.get("stream_connected", True):
        parts.append("event stream down")
    commands = body.get("commands") or {}
    if commands.get("in_flight"):
        parts.append(f"in flight {commands['in_flight']}")
    return " ".join(parts)


@app.command()
def events(
    host: Annotated[
        str | None, typer.Option("--host", "-H", show_default=False, help="Only this host's [default: every host].")
    ] = None,
    kind: Annotated[
        list[Kind] | None,
        typer.Option("--kind", "-k", show_default=False, help="Only these kinds (repeatable) [default: all]."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print each message body as raw JSON.")] = False,
    count: Annotated[int | None, typer.Option("--count", "-n", min=1, help="Exit after N messages.")] = None,
    timeout: Annotated[
        float | None,
        typer.Option("--timeout", "-t", min=0.1, help="Exit after S seconds (124 if --count was not reached)."),
    ] = None,
    amqp_url: AmqpUrl = DEFAULT_AMQP_URL,
    exchange_prefix: ExchangePrefix = "dockhand",
    amqp_ca_file: AmqpCaFile = None,
    amqp_cert_file: AmqpCertFile = None,
    amqp_key_file: AmqpKeyFile = None,
) -> None:
    """Print events and heartbeats as they come, one line each, until Ctrl-C.

    Binds an exclusive queue to <prefix>.events (<host>.container.#, .network.#, .discovery.#)
    and <prefix>.health (<host>.heartbeat). It declares those two exchanges as the worker
    does, so it may start before the worker.
    """
    with _errors():
        if host is not None and not _HOST_ID.match(host):
            fail(f"host {host!r} is not a host id ({_HOST_ID.pattern})", EXIT_INVALID)
        kinds = kind or []

        def show(routing_key: str, raw: bytes) -> None:
            if as_json:
                typer.echo(raw.decode("utf-8", errors="replace"))
                return
            try:
                body = json.loads(raw)
            except (ValueError, UnicodeDecodeError):
                body = None
            typer.echo(format_event(routing_key, body))

        client = make_client(amqp_url, exchange_prefix, amqp_ca_file, amqp_cert_file, amqp_key_file)
        keys = ", ".join(f"{exchange} {key}" for exchange, key in bindings(exchange_prefix, host, kinds))
        listening = f"dockhand: listening on {keys} (Ctrl-C to stop)"
        seen, timed_out = _run_async(_tail(client, _bindings(host, kinds), show, count, timeout, listening))
    if timed_out and count is not None and seen < count:
        typer.echo(f"dockhand: {seen} of {count} messages within {timeout:g} s", err=True)
        raise typer.Exit(EXIT_TIMEOUT)


async def _tail(
    client: Client,
    pairs: list[tuple[str, str]],
    show: Callable[[str, bytes], None],
    count: int | None,
    wait_s: float | None,
    listening: str,
) -> tuple[int, bool]:
    """Print messages until ``count``, ``wait_s``, SIGINT or SIGTERM: (how many, timed out).
    ``listening`` goes to stderr once the queue is bound (what scripts wait for)."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    seen = 0
    bound = False

    async def on_connect() -> None:  # after each (re)binding: announce the first only
        nonlocal bound
        if not bound:
            bound = True
            typer.echo(listening, err=True)

    async def consume() -> None:
        nonlocal seen
        async with contextlib.aclosing(client.subscribe(pairs, on_connect=on_connect)) as messages:
            async for message in messages:
                show(message.routing_key or "", message.body)
                seen += 1
                if count is not None and seen >= count:
                    return

    async with client:  # connects first: an unreachable broker is one line, not a retry loop
        consumer = asyncio.ensure_future(consume())
        stopped = asyncio.ensure_future(stop.wait())
        try:
            done, _ = await asyncio.wait({consumer, stopped}, timeout=wait_s, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (consumer, stopped):
                task.cancel()
            await asyncio.gather(consumer, stopped, return_exceptions=True)
        if consumer in done:
            consumer.result()  # its error, if it ended with one (a refused permission ...)
    return seen, not done


# --- dashboard --------------------------------------------------------------------------------


@app.command()
def dashboard(
    bind: Annotated[
        str, typer.Option("--bind", help="HOST:PORT to serve on; anything but loopback needs --token.")
    ] = "127.0.0.1:8090",
    token: Annotated[
        str | None,
        typer.Option(
            "--token",
            envvar="DOCKHAND_DASHBOARD_TOKEN",
            show_envvar=True,
            show_default=False,
            help="Bearer token every request must carry (open /?token=... once in the browser).",
        ),
    ] = None,
    list_interval: Annotated[
        float, typer.Option("--list-interval", min=1.0, help="Seconds between workspace.list rounds per live host.")
    ] = 15.0,
    silent_after: Annotated[
        float,
        typer.Option("--silent-after", min=1.0, help="Heartbeat intervals without one before a host is silent."),
    ] = 3.0,
    label_prefix: Annotated[
        str,
        typer.Option(
            "--label-prefix", envvar="DOCKHAND_LABEL_PREFIX", show_envvar=True, help="The workers' label prefix."
        ),
    ] = "dockhand",
    amqp_url: AmqpUrl = DEFAULT_AMQP_URL,
    exchange_prefix: ExchangePrefix = "dockhand",
    amqp_ca_file: AmqpCaFile = None,
    amqp_cert_file: AmqpCertFile = None,
    amqp_key_file: AmqpKeyFile = None,
) -> None:
    """Serve a live, read-only page of the fleet: hosts, workspaces, services, events.

    One page on 127.0.0.1:8090 by default, fed from the bus (heartbeats, events, failed results,
    workspace.list per live host) and kept live in the browser by server-sent events.
    """
    with _errors():
        from dockhand.dashboard import check_exposure, parse_bind, serve

        try:
            host, port = parse_bind(bind)
            check_exposure(host, token)
        except ValueError as err:
            fail(str(err), EXIT_INVALID)
        client = make_client(amqp_url, exchange_prefix, amqp_ca_file, amqp_cert_file, amqp_key_file)

        def ready(url: str) -> None:
            typer.echo(f"dockhand: dashboard on {url} (Ctrl-C to stop)", err=True)

        try:
            _run_async(
                serve(
                    client,
                    host=host,
                    port=port,
                    token=token,
                    list_interval_s=list_interval,
                    silent_intervals=silent_after,
                    label_prefix=label_prefix,
                    on_ready=ready,
                )
            )
        except OSError as err:
            if isinstance(err, ConnectionError):
                raise
            fail(f"cannot serve on {bind}: {err.strerror or err}", EXIT_UNAVAILABLE)


# --- cp ---------------------------------------------------------------------------------------

_WS_PATH = re.compile(r"^([a-z0-9][a-z0-9_.-]{0,62}):(/.*)$")
_WHOLE_FILE = 2**40  # get_file's largest max_bytes: the worker caps it at DOCKHAND_MAX_FILE_BYTES


def parse_cp_args(source: str, dest: str) -> tuple[str, str, str, str]:
    """``(direction, workspace_id, workspace path, local)`` of ``dockhand cp`` (direction ``in``:
    local to workspace, ``out``: workspace to local). A ``WS:/PATH`` operand names a workspace
    file (absolute path); anything else is local (``-``: standard input or output)."""
    src, dst = _WS_PATH.match(source), _WS_PATH.match(dest)
    if bool(src) == bool(dst):
        fail("give one WORKSPACE:/PATH and one local path (or -), e.g. `dockhand cp app.py ws1:/srv/app.py`", 2)
    if dst is not None:
        return "in", dst.group(1), dst.group(2), source
    assert src is not None
    return "out", src.group(1), src.group(2), dest


@app.command(
    epilog="Exit codes: 0 copied, 1 failed (not found, forbidden, the file is over the worker's limit), "
    "2 rejected or invalid, 124 no reply within --timeout, 69 broker unreachable."
)
def cp(
    source: Annotated[str, typer.Argument(metavar="SRC", help="LOCAL (- for standard input) or WORKSPACE:/PATH.")],
    dest: Annotated[str, typer.Argument(metavar="DEST", help="WORKSPACE:/PATH or LOCAL (- for standard output).")],
    host: Annotated[
        str | None,
        typer.Option(
            "--host",
            "-H",
            envvar="DOCKHAND_HOST_ID",
            show_envvar=True,
            show_default=False,
            help="The workspace's host id [default: this machine's host id].",
        ),
    ] = None,
    timeout: Annotated[float, typer.Option("--timeout", "-t", min=0.1, help="Seconds to wait for the reply.")] = 60.0,
    amqp_url: AmqpUrl = DEFAULT_AMQP_URL,
    exchange_prefix: ExchangePrefix = "dockhand",
    amqp_ca_file: AmqpCaFile = None,
    amqp_cert_file: AmqpCertFile = None,
    amqp_key_file: AmqpKeyFile = None,
) -> None:
    """Copy one file into or out of a workspace, like `docker cp` (workspace.put_files / get_file).

    A workspace path ending in / (or an existing local directory) takes the file's own name.
    The mode is kept both ways; parent directories in the workspace are made.
    """
    with _errors():
        direction, workspace_id, path, local = parse_cp_args(source, dest)
        target = resolve_host(host)
        if target == HostTarget.ALL:
            fail("cp needs one host (a host id or 'any'), not 'all'", EXIT_INVALID)
        client = make_client(amqp_url, exchange_prefix, amqp_ca_file, amqp_cert_file, amqp_key_file)
        if direction == "in":
            if local == "-":
                data: bytes | Path = sys.stdin.buffer.read()
                name = "stdin"
            else:
                data = Path(local)
                if not data.is_file():
                    fail(f"{local}: not a file", EXIT_INVALID)
                name = data.name
            if path.endswith("/"):
                path += name
            files = {path: data}
            _run_async(
                _cp_call(client, lambda: client.workspaces.put_files(workspace_id, files, host=target, timeout=timeout))
            )
            return
        result = _run_async(
            _cp_call(
                client,
                lambda: client.workspaces.get_file(
                    workspace_id, path, max_bytes=_WHOLE_FILE, host=target, timeout=timeout
                ),
            )
        )
        if result.truncated:
            fail(f"{workspace_id}:{path} is {result.size} bytes, more than the worker's DOCKHAND_MAX_FILE_BYTES", 1)
        if local == "-":
            sys.stdout.buffer.write(result.data)
            sys.stdout.buffer.flush()
            return
        out = Path(local)
        if out.is_dir():
            out = out / Path(path).name
        try:
            out.write_bytes(result.data)
            out.chmod(result.mode & 0o777)
        except OSError as err:
            fail(f"cannot write {out}: {err.strerror or err}", 1)


async def _cp_call(client: Client, call: Callable[[], Awaitable[Any]]) -> Any:
    """One typed call of ``cp``, with the client's result errors as exit codes."""
    from dockhand.client import CommandError, NoRoute, ReplyTimeout

    async with client:
        try:
            return await call()
        except CommandError as err:
            fail(f"{err.command_type} {err.status}: {err.code}: {err.message}", EXIT_CODES.get(err.status, 1))
        except ReplyTimeout as err:
            fail(f"{err} (it may still run)", EXIT_TIMEOUT)
        except NoRoute as err:
            fail(f"{err}: check --host and --exchange-prefix", EXIT_UNAVAILABLE)


# --- error handling ---------------------------------------------------------------------------


def _run_async(coro: Any) -> Any:
    """Run ``coro`` with the libraries' log records kept off stderr (their "error when creating
    transport" would precede our own one line); the client's warnings (a subscription lost and
    re-established) are printed as ``dockhand: ...`` lines."""
    root = logging.getLogger()
    quiet = logging.NullHandler()
    own = logging.StreamHandler(sys.stderr)
    own.setFormatter(logging.Formatter("dockhand: %(message)s"))
    own.setLevel(logging.WARNING)
    client_log = logging.getLogger("dockhand.client")
    root.addHandler(quiet)
    client_log.addHandler(own)
    try:
        return asyncio.run(coro)
    finally:
        root.removeHandler(quiet)
        client_log.removeHandler(own)


@contextlib.contextmanager
def _errors() -> Iterator[None]:
    """Turn failures into one line on stderr: ``dockhand: <what went wrong>``."""
    try:
        yield
    except CliError as err:
        _die(err.message, err.code)
    except KeyboardInterrupt:
        raise typer.Exit(130) from None
    except (typer.Exit, typer.Abort):
        raise
    except Exception as err:  # the last resort: still one line, never a traceback
        from dockhand.client import BrokerUnavailable, CommandRejected

        if isinstance(err, CommandRejected):  # refused locally, before anything was sent
            _die(err.message, EXIT_INVALID)
        if isinstance(err, BrokerUnavailable):  # unreachable, login or permission refused, no exchange
            hint = " (check --exchange-prefix / DOCKHAND_EXCHANGE_PREFIX)" if err.exchange else ""
            _die(f"{err}{hint}", EXIT_UNAVAILABLE)
        if isinstance(err, ConnectionError):
            _die(f"lost the connection to RabbitMQ: {error_reason(err)}", EXIT_UNAVAILABLE)
        _die(f"{type(err).__name__}: {err}", 1)


def _die(message: str, code: int) -> NoReturn:
    typer.echo(f"dockhand: {message}", err=True)
    # SystemExit rather than typer.Exit: `python -m dockhand.worker` calls run() without typer.
    raise SystemExit(code)


def main() -> None:
    app(prog_name="dockhand")


if __name__ == "__main__":
    main()
