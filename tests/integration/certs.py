"""Throwaway X.509 material for TLS tests, made with the ``openssl`` CLI (OpenSSL 3).

``make_pki(dir)`` writes a CA, a server certificate for ``localhost`` / ``127.0.0.1`` and a client
certificate, all ECDSA P-256 (fast to generate), valid for two days. Also a second, unrelated CA,
for checking that a server the client does not trust is refused.
"""

from __future__ import annotations

import secrets
import subprocess
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Pki", "TlsFiles", "make_pki"]


@dataclass(frozen=True)
class TlsFiles:
    """A certificate, its key and the CA that signed it (PEM files)."""

    ca: Path
    cert: Path
    key: Path


@dataclass(frozen=True)
class Pki:
    server: TlsFiles
    client: TlsFiles
    other_ca: Path  # signed nothing here: trusting only it must fail verification

    def docker_cert_path(self, directory: Path) -> Path:
        """A ``DOCKER_CERT_PATH`` directory: ``ca.pem``, ``cert.pem``, ``key.pem`` of the client."""
        directory.mkdir(parents=True, exist_ok=True)
        for name, source in (("ca.pem", self.client.ca), ("cert.pem", self.client.cert), ("key.pem", self.client.key)):
            (directory / name).write_bytes(source.read_bytes())
        (directory / "key.pem").chmod(0o600)
        return directory


def _openssl(*args: str, cwd: Path) -> None:
    out = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(args)} failed: {out.stderr.strip()}")


_KEY = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]


def _ca(directory: Path, name: str) -> tuple[Path, Path]:
    cert, key = directory / f"{name}.pem", directory / f"{name}.key"
    _openssl(
        "req", "-x509", *_KEY, "-keyout", str(key), "-out", str(cert), "-days", "2",
        "-subj", f"/CN=dockhand test {name}",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        cwd=directory,
    )  # fmt: skip
    return cert, key


def _leaf(directory: Path, name: str, ca: tuple[Path, Path], extensions: str) -> TlsFiles:
    cert, key, csr, ext = (directory / f"{name}{s}" for s in (".pem", ".key", ".csr", ".ext"))
    _openssl("req", *_KEY, "-keyout", str(key), "-out", str(csr), "-subj", f"/CN=dockhand-test-{name}", cwd=directory)
    ext.write_text(extensions)
    _openssl(
        "x509", "-req", "-in", str(csr), "-CA", str(ca[0]), "-CAkey", str(ca[1]),
        "-set_serial", f"0x{secrets.token_hex(8)}", "-days", "2", "-extfile", str(ext), "-out", str(cert),
        cwd=directory,
    )  # fmt: skip
    csr.unlink()
    ext.unlink()
    return TlsFiles(ca=ca[0], cert=cert, key=key)


def make_pki(directory: Path) -> Pki:
    """CA, server (SAN ``localhost``, ``127.0.0.1``) and client certificates under ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o700)
    ca = _ca(directory, "ca")
    common = "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n"
    server = _leaf(
        directory, "server", ca, common + "extendedKeyUsage=serverAuth\nsubjectAltName=DNS:localhost,IP:127.0.0.1\n"
    )
    client = _leaf(directory, "client", ca, common + "extendedKeyUsage=clientAuth\n")
    other_ca, _ = _ca(directory, "other-ca")
    return Pki(server=server, client=client, other_ca=other_ca)
