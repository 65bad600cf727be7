"""TLS end to end: a worker on ``amqps://`` (CA-verified, with a client certificate) and on a
``dockerd --tlsverify`` over ``tcp://``, both with certificates made by openssl right here; a
client without a certificate, or one that trusts another CA, gets nowhere."""

from __future__ import annotations

import asyncio
import gc
import json
import secrets
import ssl
import subprocess
import sys
import uuid
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aio_pika
import aiodocker
import aiohttp
import pytest

from dockhand.worker import tls

from .certs import Pki, make_pki
from .conftest import REPO, TEST_IMAGE, TEST_LABEL, WorkerFactory, WorkerProcess, request
from .dockerd2 import SecondDockerd, unique_name
from .rabbit2 import SecondRabbit

pytestmark = pytest.mark.slow  # a RabbitMQ node of its own: ~6-8 s to start


@dataclass
class TlsSetup:
    pki: Pki
    rabbit: SecondRabbit
    dockerd: SecondDockerd
    cert_path: Path  # DOCKER_CERT_PATH-style directory of the client


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsSetup]:
    root = tmp_path_factory.mktemp("tls")
    pki = make_pki(root / "pki")
    rabbit = SecondRabbit(root / "rabbit", tls=pki.server)
    dockerd = SecondDockerd(root / "dockerd", name=unique_name("dht"), tls=pki.server)
    try:
        rabbit.start()
        dockerd.start()
        dockerd.load_image(TEST_IMAGE)
        yield TlsSetup(pki, rabbit, dockerd, pki.docker_cert_path(root / "docker-client"))
    finally:
        try:
            dockerd.cleanup()
        finally:
            rabbit.cleanup()


def client_context(setup: TlsSetup, *, ca: Path | None = None, with_cert: bool = True) -> ssl.SSLContext:
    """A client context built by the worker's own function (worker/tls.py)."""
    pki = setup.pki
    return tls.client_context(
        ca or pki.client.ca,
        pki.client.cert if with_cert else None,
        pki.client.key if with_cert else None,
        what="test",
    )


@pytest.fixture(scope="module")
def tls_worker(workers: WorkerFactory, setup: TlsSetup) -> Iterator[WorkerProcess]:
    pki = setup.pki
    worker = workers.start(
        "tls",
        DOCKHAND_AMQP_URL=setup.rabbit.ssl_url,
        DOCKHAND_AMQP_CA_FILE=str(pki.client.ca),
        DOCKHAND_AMQP_CERT_FILE=str(pki.client.cert),
        DOCKHAND_AMQP_KEY_FILE=str(pki.client.key),
        DOCKHAND_DOCKER_HOST=setup.dockerd.tcp_url,
        DOCKHAND_DOCKER_TLS_VERIFY="1",
        DOCKHAND_DOCKER_CERT_PATH=str(setup.cert_path),
        DOCKHAND_HEALTH_INTERVAL_S="1",
    )
    yield worker
    assert worker.stop() == 0, worker.log()[-3000:]


async def send(setup: TlsSetup, worker: WorkerProcess, command_type: str, payload: Any) -> Any:
    """One command over ``amqps://`` with a client certificate, through a dockhand client."""
    body: dict[str, Any] = {"command_id": uuid.uuid4().hex, "type": command_type}
    if payload is not None:
        body["payload"] = payload
    return await request(setup.rabbit.ssl_url, worker.prefix, worker.host_id, body, ssl_context=client_context(setup))


def _containers(dockerd: SecondDockerd, name: str) -> tuple[int, int]:
    """How many containers named like ``name`` the TLS daemon and the machine's own daemon have."""
    here = dockerd.cli("ps", "-aq", "--filter", f"name={name}").stdout.split()
    primary = subprocess.run(["docker", "ps", "-aq", "--filter", f"name={name}"], capture_output=True, text=True)
    return len(here), len(primary.stdout.split())


async def test_worker_over_amqps_and_docker_tls(tls_worker: WorkerProcess, setup: TlsSetup, session_id: str) -> None:
    info = await send(setup, tls_worker, "host.info", None)
    assert info["status"] == "succeeded", info
    assert info["result"]["host_id"] == tls_worker.host_id

    # A workspace made through both TLS links lands on the TLS daemon (not the machine's own).
    ws = f"t{session_id}-tls-{secrets.token_hex(2)}"
    payload = {"workspace_id": ws, "image": TEST_IMAGE, "labels": {TEST_LABEL: session_id}}
    created = await send(setup, tls_worker, "workspace.create", payload)
    assert created["status"] == "succeeded", created
    try:
        assert await asyncio.to_thread(_containers, setup.dockerd, ws) == (1, 0)
    finally:
        removed = await send(setup, tls_worker, "workspace.remove", {"workspace_id": ws, "force": True})
    assert removed["status"] == "succeeded", removed
    assert await asyncio.to_thread(_containers, setup.dockerd, ws) == (0, 0)
    assert "INSECURE" not in tls_worker.log()


async def test_cli_over_amqps(tls_worker: WorkerProcess, setup: TlsSetup) -> None:
    pki = setup.pki
    args = ["--amqp-ca-file", str(pki.client.ca), "--amqp-cert-file", str(pki.client.cert)]
    args += ["--amqp-key-file", str(pki.client.key), "--amqp-url", setup.rabbit.ssl_url]
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "dockhand.cli",
        "send",
        "host.info",
        "--host",
        tls_worker.host_id,
        "--exchange-prefix",
        tls_worker.prefix,
        "--json",
        *args,
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    assert json.loads(out)["status"] == "succeeded"


async def _amqp_connect(url: str, context: ssl.SSLContext) -> str | None:
    """None if a connection opens (it is closed again), else the repr of what stopped it (and
    of its cause)."""
    try:
        connection = await aio_pika.connect(url, ssl_context=context, timeout=10)
    except Exception as err:
        failure = f"{err!r} {err.__cause__!r}"
    else:
        await connection.close()
        return None
    # aiormq leaves the socket of a connection that failed after the TLS handshake to the GC
    # (the exception is gone with the except block, so it is collectable now).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()
    return failure


async def test_broker_refuses_a_client_without_a_certificate(setup: TlsSetup) -> None:
    url = setup.rabbit.ssl_url
    # fail_if_no_peer_cert: the handshake (or, with TLS 1.3, the first read after it) fails.
    refused = await _amqp_connect(url, client_context(setup, with_cert=False))
    assert refused is not None
    # A client that trusts another CA refuses the broker itself.
    untrusted = await _amqp_connect(url, client_context(setup, ca=setup.pki.other_ca))
    assert untrusted is not None
    assert "CERTIFICATE_VERIFY_FAILED" in untrusted, untrusted
    # With the certificate it works: the refusals above are about certificates, nothing else.
    assert await _amqp_connect(url, client_context(setup)) is None


async def _ping(url: str, context: ssl.SSLContext | bool) -> int | BaseException:
    """The status of ``GET url`` or the error that stopped it."""
    try:
        async with aiohttp.ClientSession() as session, session.get(url, ssl=context) as reply:
            return reply.status
    except Exception as err:
        return err


async def test_dockerd_refuses_a_client_without_a_certificate(setup: TlsSetup) -> None:
    address = setup.dockerd.tcp_url.removeprefix("tcp://")
    # No client certificate: the TLS handshake fails (RequireAndVerifyClientCert).
    refused = await _ping(f"https://{address}/_ping", client_context(setup, with_cert=False))
    assert isinstance(refused, aiohttp.ClientError | ssl.SSLError | ConnectionError), refused
    # Plain HTTP to the TLS port: Go answers 400 "Client sent an HTTP request to an HTTPS server".
    plain = await _ping(f"http://{address}/_ping", False)
    assert plain != 200, plain
    # Another CA: the client refuses the daemon.
    untrusted = await _ping(f"https://{address}/_ping", client_context(setup, ca=setup.pki.other_ca))
    assert isinstance(untrusted, aiohttp.ClientConnectorCertificateError), untrusted
    # With the certificate: the daemon answers, through the worker's own endpoint code.
    assert await _ping(f"https://{address}/_ping", client_context(setup)) == 200
    endpoint = tls.docker_endpoint(setup.dockerd.tcp_url, tls_verify=True, cert_path=setup.cert_path)
    connector = endpoint.connector()
    try:
        async with aiodocker.Docker(url=endpoint.url, connector=connector) as docker:
            assert (await docker.version())["ApiVersion"]
    finally:
        assert connector is not None
        await connector.close()  # a connector passed in is the caller's to close


def test_plain_tcp_docker_host_is_refused_at_start(setup: TlsSetup, tmp_path: Path) -> None:
    """A ``tcp://`` Docker host without TLS settings: the worker exits with one line, not a traceback."""
    proc = subprocess.run(
        [sys.executable, "-m", "dockhand.worker"],
        cwd=REPO,
        env={
            "PATH": "/usr/bin:/bin",
            "HOME": str(tmp_path),
            "DOCKHAND_DOCKER_HOST": setup.dockerd.tcp_url,
            "DOCKHAND_AMQP_URL": setup.rabbit.ssl_url,
        },
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2, proc
    assert "TCP without TLS" in proc.stderr
    assert "Traceback" not in proc.stderr
