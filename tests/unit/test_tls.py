"""TLS settings (worker/tls.py): which combinations are accepted, and what they build.

The real handshakes (amqps:// with a client certificate, dockerd --tlsverify) are in
tests/integration/test_tls.py; here only what needs no certificate files or servers."""

from __future__ import annotations

import logging
import os
import ssl
from pathlib import Path

import pytest
from pydantic import ValidationError

from dockhand.worker import tls
from dockhand.worker.settings import Settings


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in list(os.environ):
        if name.startswith(("DOCKHAND_", "DOCKER_")):
            monkeypatch.delenv(name)
    return monkeypatch


def test_plain_amqp_has_no_context(clean_env: pytest.MonkeyPatch) -> None:
    assert Settings().amqp_ssl_context is None


def test_amqps_verifies_with_the_system_cas_by_default(clean_env: pytest.MonkeyPatch) -> None:
    context = Settings(amqp_url="amqps://u:p@broker.example:5671/").amqp_ssl_context
    assert context is not None
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname
    assert context.minimum_version >= ssl.TLSVersion.TLSv1_2


@pytest.mark.parametrize("option", ["cafile=/x.pem", "certfile=/c.pem&keyfile=/k.pem", "no_verify_ssl=1"])
def test_tls_options_in_the_url_are_refused(clean_env: pytest.MonkeyPatch, option: str) -> None:
    # aiormq would read these only when no context is passed: one mechanism, the settings.
    with pytest.raises(ValidationError, match="DOCKHAND_AMQP_CA_FILE"):
        Settings(amqp_url=f"amqps://u:p@broker:5671/?{option}")


def test_tls_files_without_amqps_are_refused(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("x")
    with pytest.raises(ValidationError, match="not amqps://"):
        Settings(amqp_ca_file=ca)


def test_missing_or_half_client_certificates_are_refused(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="is not a readable file"):
        Settings(amqp_url="amqps://broker/", amqp_ca_file=tmp_path / "nope.pem")
    cert = tmp_path / "cert.pem"
    cert.write_text("x")
    with pytest.raises(ValidationError, match="both its certificate and its key"):
        Settings(amqp_url="amqps://broker/", amqp_cert_file=cert)
    with pytest.raises(ValidationError, match="cannot load certificates"):
        Settings(amqp_url="amqps://broker/", amqp_cert_file=cert, amqp_key_file=cert)


def test_unix_socket_needs_no_tls(clean_env: pytest.MonkeyPatch) -> None:
    endpoint = Settings(docker_host="unix:///run/docker.sock", docker_tls_verify=True).docker_endpoint
    assert (endpoint.url, endpoint.tcp, endpoint.tls, endpoint.connector()) == (
        "unix:///run/docker.sock",
        False,
        None,
        None,
    )


@pytest.mark.parametrize("host", ["tcp://docker.example:2375", "http://docker:2375"])
def test_plain_tcp_docker_is_refused(clean_env: pytest.MonkeyPatch, host: str) -> None:
    with pytest.raises(ValidationError, match="TCP without TLS"):
        Settings(docker_host=host)


async def test_plain_tcp_docker_when_allowed_is_loud(
    clean_env: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # DOCKER_TLS_VERIFY in the environment does not sneak TLS back in: the settings decide.
    clean_env.setenv("DOCKER_TLS_VERIFY", "1")
    settings = Settings(docker_host="tcp://docker:2375", docker_tls_verify=False, docker_allow_plaintext_tcp=True)
    endpoint = settings.docker_endpoint
    assert (endpoint.url, endpoint.tcp, endpoint.tls) == ("http://docker:2375", True, None)
    connector = endpoint.connector()
    assert connector is not None
    try:
        assert connector._ssl is False  # type: ignore[attr-defined]
    finally:
        await connector.close()
    with caplog.at_level(logging.WARNING, "dockhand.tls"):
        tls.warn_plaintext(endpoint)
    assert "WITHOUT TLS" in caplog.text


def test_https_without_verification_is_refused(clean_env: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValidationError, match="TLS_VERIFY is off"):
        Settings(docker_host="https://docker:2376")


def test_docker_tls_defaults_follow_docker_env(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    clean_env.setenv("DOCKER_TLS_VERIFY", "1")
    clean_env.setenv("DOCKER_CERT_PATH", str(tmp_path))
    clean_env.setenv("DOCKER_HOST", "tcp://docker:2376")
    # Docker's own convention, so the certificates are looked for under DOCKER_CERT_PATH.
    with pytest.raises(ValidationError, match=f"{tmp_path}/ca.pem is not a readable file"):
        Settings()
    # The DOCKHAND_ settings win over DOCKER_*.
    clean_env.setenv("DOCKHAND_DOCKER_TLS_VERIFY", "false")
    clean_env.setenv("DOCKHAND_DOCKER_ALLOW_PLAINTEXT_TCP", "true")
    assert Settings().docker_endpoint.tls is None
    clean_env.setenv("DOCKHAND_DOCKER_CERT_PATH", "/elsewhere")
    assert Settings().docker_cert_path == Path("/elsewhere")


def test_cli_builds_its_context_like_the_worker(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from dockhand import cli

    sent: list[object] = []

    async def fake_send(*args: object) -> list[bytes]:
        sent.append(args[0].ssl_context)  # type: ignore[attr-defined]  # the client's SSL context
        return [b'{"status": "succeeded", "type": "host.info", "command_id": "c"}']

    clean_env.setattr(cli, "_send", fake_send)
    runner = CliRunner()
    ok = runner.invoke(cli.app, ["send", "host.info", "-H", "h", "--amqp-url", "amqps://u:p@broker/"])
    assert ok.exit_code == 0, ok.output
    assert isinstance(sent[0], ssl.SSLContext)
    bad = runner.invoke(cli.app, ["send", "host.info", "-H", "h", "--amqp-url", "amqps://u:p@b/?no_verify_ssl=1"])
    assert bad.exit_code == 2
    assert "DOCKHAND_AMQP_CA_FILE" in bad.output
    clean_env.setenv("DOCKHAND_AMQP_CA_FILE", str(tmp_path / "missing.pem"))
    missing = runner.invoke(cli.app, ["send", "host.info", "-H", "h", "--amqp-url", "amqps://u:p@broker/"])
    assert missing.exit_code == 2
    assert "missing.pem is not a readable file" in missing.output
