"""TLS for the broker (``amqps://``) and the Docker Engine (``tcp://`` with ``--tlsverify``).

One function builds every client :class:`ssl.SSLContext` — the worker's FastStream broker, its
leader-lock connection, its Docker client and the CLI all get theirs from here — so verification
is configured once: the server's certificate is checked against the given CA (else the system's
trust store) *and* its name against the host in the URL; TLS 1.2 at least; an optional client
certificate for servers that require one.

Certificates come from settings only (``DOCKHAND_AMQP_CA_FILE`` / ``_CERT_FILE`` / ``_KEY_FILE``,
``DOCKHAND_DOCKER_TLS_VERIFY`` / ``DOCKHAND_DOCKER_CERT_PATH``). aiormq also reads ``cafile``,
``certfile``, ``keyfile`` and ``no_verify_ssl`` from the URL's query, but only when no context is
passed: two mechanisms where one silently wins, and one of them turns verification off, so such a
URL is refused instead. Likewise aiodocker would build its own context from ``DOCKER_TLS_VERIFY``
/ ``DOCKER_CERT_PATH`` behind the settings' back: the worker hands it a connector of its own.
"""

from __future__ import annotations

import logging
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl, urlsplit

if TYPE_CHECKING:
    import aiohttp

log = logging.getLogger("dockhand.tls")

# aiormq's TLS options in the URL query (see aiormq/connection.py), refused in favour of settings.
URL_TLS_OPTIONS = ("cafile", "capath", "certfile", "keyfile", "no_verify_ssl")
# The file names of Docker's DOCKER_CERT_PATH convention.
DOCKER_CA, DOCKER_CERT, DOCKER_KEY = "ca.pem", "cert.pem", "key.pem"
DEFAULT_DOCKER_URL = "unix:///var/run/docker.sock"


class TlsConfigError(ValueError):
    """TLS settings that do not fit together, or certificate files that cannot be loaded."""


def client_context(ca_file: Path | None, cert_file: Path | None, key_file: Path | None, *, what: str) -> ssl.SSLContext:
    """A client context that verifies the server (against ``ca_file``, else the system CAs, and
    its host name) and presents ``cert_file``/``key_file`` when given. ``what`` names the
    settings in error messages."""
    if (cert_file is None) != (key_file is None):
        raise TlsConfigError(f"{what}: a client certificate needs both its certificate and its key file")
    for path in (ca_file, cert_file, key_file):
        if path is not None and not path.is_file():
            raise TlsConfigError(f"{what}: {path} is not a readable file")
    try:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca_file) if ca_file else None)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        if cert_file is not None:
            context.load_cert_chain(str(cert_file), str(key_file))
    except (OSError, ssl.SSLError) as err:
        raise TlsConfigError(f"{what}: cannot load certificates: {err}") from err
    return context


def url_scheme(url: str) -> str:
    return urlsplit(url).scheme.lower()


def amqp_context(
    url: str, ca_file: Path | None = None, cert_file: Path | None = None, key_file: Path | None = None
) -> ssl.SSLContext | None:
    """The context for ``url``: one for ``amqps://``, None for ``amqp://`` (TLS files given with an
    ``amqp://`` URL are an error: the operator means TLS and would not get it)."""
    query = {key.lower() for key, _ in parse_qsl(urlsplit(url).query, keep_blank_values=True)}
    if found := sorted(query & set(URL_TLS_OPTIONS)):
        raise TlsConfigError(
            f"DOCKHAND_AMQP_URL: TLS options in the URL query ({', '.join(found)}) are not used; "
            "set DOCKHAND_AMQP_CA_FILE, DOCKHAND_AMQP_CERT_FILE and DOCKHAND_AMQP_KEY_FILE instead"
        )
    scheme = url_scheme(url)
    if scheme != "amqps":
        if ca_file or cert_file or key_file:
            raise TlsConfigError(
                "DOCKHAND_AMQP_CA_FILE/CERT_FILE/KEY_FILE are set but DOCKHAND_AMQP_URL is not amqps://"
            )
        return None
    return client_context(ca_file, cert_file, key_file, what="DOCKHAND_AMQP_CA_FILE/CERT_FILE/KEY_FILE")


@dataclass(frozen=True)
class DockerEndpoint:
    """How to reach the Docker Engine: the URL for aiodocker and, for TCP, the connector to use."""

    url: str
    tls: ssl.SSLContext | None
    tcp: bool

    def connector(self) -> aiohttp.BaseConnector | None:
        """A fresh connector for a TCP endpoint (TLS exactly as configured); None for a socket."""
        if not self.tcp:
            return None
        import aiohttp  # here: settings (and the CLI) import this module, the connector is the worker's

        return aiohttp.TCPConnector(ssl=self.tls if self.tls is not None else False)


def docker_endpoint(
    host: str, *, tls_verify: bool, cert_path: Path | None, allow_plaintext_tcp: bool = False
) -> DockerEndpoint:
    """The endpoint for ``host`` (``unix://…``, ``tcp://``/``https://``/``http://host:port``).

    With ``tls_verify`` a TCP endpoint speaks TLS, verifies the daemon against
    ``<cert_path>/ca.pem`` (and its name) and presents ``cert.pem``/``key.pem``, as the docker CLI
    does. A TCP endpoint without TLS is refused unless ``allow_plaintext_tcp``: whoever can reach
    that port owns the host."""
    scheme = url_scheme(host)
    if scheme not in {"tcp", "http", "https"}:
        return DockerEndpoint(host, None, tcp=False)
    address = host.split("://", 1)[1].rstrip("/")
    if tls_verify:
        base = cert_path if cert_path is not None else Path.home() / ".docker"
        context = client_context(
            base / DOCKER_CA, base / DOCKER_CERT, base / DOCKER_KEY, what="DOCKHAND_DOCKER_CERT_PATH"
        )
        return DockerEndpoint(f"https://{address}", context, tcp=True)
    if scheme == "https":
        raise TlsConfigError(
            "DOCKHAND_DOCKER_HOST is https:// but DOCKHAND_DOCKER_TLS_VERIFY is off: "
            "set it (with DOCKHAND_DOCKER_CERT_PATH) so the daemon is verified"
        )
    if not allow_plaintext_tcp:
        raise TlsConfigError(
            f"DOCKHAND_DOCKER_HOST {host} is TCP without TLS: anyone who can reach it controls the host. "
            "Set DOCKHAND_DOCKER_TLS_VERIFY=1 and DOCKHAND_DOCKER_CERT_PATH, "
            "or DOCKHAND_DOCKER_ALLOW_PLAINTEXT_TCP=true to accept the risk"
        )
    return DockerEndpoint(f"http://{address}", None, tcp=True)


def warn_plaintext(endpoint: DockerEndpoint) -> None:
    """The loud start-up line for an accepted plain-TCP Docker endpoint."""
    if endpoint.tcp and endpoint.tls is None:
        log.warning(
            "INSECURE: the Docker Engine at %s is reached over TCP WITHOUT TLS "
            "(DOCKHAND_DOCKER_ALLOW_PLAINTEXT_TCP): anyone on that network path can run containers as root",
            endpoint.url,
        )
