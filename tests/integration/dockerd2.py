"""A second, independent Docker daemon that tests can start, stop, restart and kill.

``SecondDockerd(root, name)`` runs ``dockerd`` with everything of its own: data-root, exec-root,
pidfile, API socket, log, bridge (``br-<name>``), managed containerd and containerd namespace.
The machine's primary daemon (``/var/run/docker.sock``, ``docker0``) is never touched.

What was found out on Debian 12's docker.io 20.10.24 (containerd 1.6.20), and why the flags are
what they are:

* **iptables must be off** (``--iptables=false``). At start-up the bridge driver of *every*
  dockerd flushes and re-creates the shared chains ``DOCKER`` (nat and filter) and
  ``DOCKER-ISOLATION-STAGE-1/2`` (libnetwork ``removeIPChains`` + ``setupIPChains``): a second
  daemon with iptables on would wipe the primary's port-forwarding and isolation rules.
  ``--ip-forward=false`` and ``--ip-masq=false`` keep it off the sysctl and the nat table as well.
* **Published ports on 127.0.0.1 still work** without iptables: ``docker-proxy`` (the userland
  proxy, on by default) listens on the host port and connects to the container over the bridge,
  which is host-local traffic (OUTPUT/INPUT, policy ACCEPT). What does *not* work on this bridge:
  masquerading to the outside world, and container-to-container traffic on ``br-<name>`` (with
  ``br_netfilter`` loaded, bridged frames traverse the FORWARD chain, whose policy the primary set
  to DROP, and no daemon adds an ACCEPT for this bridge). Host ports are allocated by each daemon
  on its own, sequentially from the start of ``ip_local_port_range``, so the two daemons can pick
  the same port; dockerd then retries the next one (up to 10 times), so random ports still work.
* **Never pass ``--default-address-pool`` (or ``--bridge=none``).** On every start after the
  first on a data-root, dockerd deletes its persisted default "bridge" network and then, *if
  default address pools are configured and live-restore is off*, deletes the link named
  ``docker0`` -- hard-coded, whatever ``--bridge`` says (``removeDefaultBridgeInterface`` in
  ``daemon/daemon_unix.go``). That is the primary's bridge. ``start()`` therefore checks that
  ``docker0`` still exists after every start and fails loudly if it does not.
* **The bridge needs an IPv4 address.** ``--bridge`` only accepts an existing device
  (``ip link add br-<name> type bridge``), and ``--bip`` cannot be combined with it. When the
  device has no address, dockerd takes the first of its default pools not overlapping a host route
  (the second /16 of the 172 block here) and puts it on the bridge. Instead each instance gets a
  /24 outside docker's default pools (the rest of that block and the 192 block, which the primary
  draws its user-defined networks from) and outside the 10 block: by default the first /24 of
  ``DEFAULT_SUBNET_BASE`` that no host route or nameserver overlaps. The addresses stay on this
  machine's own bridge; tests reach containers only through ports published on 127.0.0.1. It is put on the device before
  dockerd starts, under a lock file, so the route claims it and concurrent sessions get different
  ones; dockerd keeps it across restarts. User-defined networks on this daemon still come from the
  default pools; both daemons skip subnets that overlap an existing host route when picking one.
* **Containerd**: without ``--containerd`` (and with no ``/run/containerd/containerd.sock``, where
  dockerd would otherwise use a system containerd) dockerd starts its own managed containerd,
  with its socket and state under the exec-root and its root under the data-root. It works fine
  alongside the primary's (which lives under ``/var/run/docker/containerd``). A separate
  containerd namespace (``dockhand-<name>``) is passed anyway, so even a shared containerd could
  not mix the two daemons' containers. On a graceful stop dockerd stops its containers, then its
  containerd; nothing is left behind.
* **kill()** (SIGKILL to dockerd): its containerd and its ``docker-proxy`` processes die with it
  (both are started with a parent-death signal), so published ports stop answering at once. The
  ``containerd-shim-runc-v2`` processes and the containers themselves keep running (re-parented to
  init), and their overlay/netns mounts stay. On the next ``start()`` the new containerd
  reconnects to the shims and dockerd (no live-restore) stops those containers: they come back as
  ``exited``. ``cleanup()`` after a ``kill()`` without a restart removes such orphans with
  ``runc delete --force`` and SIGKILLs the shims.
* **Mounts**: dockerd bind-mounts the data-root onto itself (``/`` is a private mount here) and
  mounts overlays and netns files under the data-/exec-root; a graceful stop removes them all,
  a kill leaves them, so ``cleanup()`` unmounts everything under its directories, deepest first,
  and refuses to ``rm -rf`` a tree that still has a mount in it.
* **Engine ID**: by default both daemons would read ``/etc/docker/key.json`` and report the same
  ``docker info`` ID; the daemon config file points ``deprecated-key-path`` into the root, so this
  one gets its own ID. A private config file also keeps a future ``/etc/docker/daemon.json`` away.
* **Zombies**: when dockerd dies first, its children are re-parented to PID 1, which here reaps
  them only after a few seconds. Liveness checks here treat a zombie as dead -- but dockerd's own
  supervisor does not: on start it reads ``<exec-root>/containerd/containerd.pid``, finds the
  zombie "alive" (``kill(pid, 0)``), waits 15 s for a socket nobody serves and exits with
  "timeout waiting for containerd to start". So ``start()`` deletes that file when its pid is not
  a live containerd of ours (which also covers a recycled pid).

Timings here: start 0.15-0.4 s (first one included), stop 1.0-1.2 s (3 s seen once with a running
container), kill + start about 0.3 s, loading the 2 MB test image about 0.3-0.4 s.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import ipaddress
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

from .certs import TlsFiles

__all__ = ["DockerdError", "SecondDockerd", "unique_name"]

# The first /16 of the 172 block: outside docker's default address pools and the 10 block.
DEFAULT_SUBNET_BASE = ipaddress.IPv4Network("172.16.0.0/16")
BLOCK_PREFIX = 24
PRIMARY_BRIDGE = Path("/sys/class/net/docker0")
LOCK_FILE = Path(tempfile.gettempdir()) / "dockhand-dockerd2.lock"
# Longest socket path dockerd/containerd create under the exec-root, plus slack.
_LONGEST_SOCKET_SUFFIX = len("/containerd/containerd.sock.ttrpc") + 8
_SUN_PATH_MAX = 107  # sizeof(sockaddr_un.sun_path) - 1 on Linux
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,11}$")  # "br-" + name must fit IFNAMSIZ-1 (15)
_SBIN = ("/usr/local/sbin", "/usr/sbin", "/sbin")
# Client settings of the caller (dockerd reads DOCKER_TLS_VERIFY / DOCKER_CERT_PATH as defaults of
# its own --tlsverify / cert flags) and systemd's readiness / socket-activation protocol.
_CLIENT_ENV = frozenset(
    {
        "DOCKER_HOST",
        "DOCKER_CONTEXT",
        "DOCKER_TLS_VERIFY",
        "DOCKER_CERT_PATH",
        "NOTIFY_SOCKET",
        "LISTEN_FDS",
        "LISTEN_PID",
    }
)


class DockerdError(RuntimeError):
    """The second dockerd failed to start or stop; the message ends with its log tail."""


def _unescape_mount_path(path: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), path)


def _mount_points_under(paths: list[Path]) -> list[str]:
    """Mount points at or below any of ``paths``, deepest first (stacked mounts repeat)."""
    prefixes = [os.path.realpath(p) for p in paths]
    found = []
    with open("/proc/self/mounts", encoding="utf-8", errors="surrogateescape") as f:
        for line in f:
            mount_point = _unescape_mount_path(line.split()[1])
            if any(mount_point == p or mount_point.startswith(p + "/") for p in prefixes):
                found.append(mount_point)
    return sorted(found, key=len, reverse=True)


def _proc_state(pid: int) -> str | None:
    """The state letter of ``pid`` (R, S, Z, ...) or None when there is no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return stat.rpartition(")")[2].split()[0]


def _alive(pid: int) -> bool:
    state = _proc_state(pid)
    return state is not None and state not in ("Z", "X")


def _argv(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return []
    return [a.decode(errors="replace") for a in raw.split(b"\0") if a]


def _signal(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def _wait_gone(pids: list[int], timeout: float) -> list[int]:
    """Wait until none of ``pids`` is alive; return those still alive after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        left = [p for p in pids if _alive(p)]
        if not left or time.monotonic() >= deadline:
            return left
        time.sleep(0.05)


class SecondDockerd:
    """A dockerd of its own under ``root``, with bridge ``br-<name>``; see the module docstring.

    ``subnet`` is the bridge's IPv4 subnet (the bridge gets its first address); the default is
    the first /24 of 172.16.0.0/16 that no host route overlaps.

    With ``tls`` (server certificate, key, and the CA client certificates must chain to) the daemon
    also listens on ``tcp://127.0.0.1:<free port>`` (``tcp_url``) with ``--tlsverify``: TLS, and
    only clients with a certificate from that CA. The unix socket stays (``cli``, ``load_image``).
    """

    def __init__(
        self, root: Path, name: str = "dh2", *, subnet: str | None = None, tls: TlsFiles | None = None
    ) -> None:
        if not _NAME_RE.match(name):
            raise ValueError(f"name {name!r}: 1-12 characters of [a-z0-9-] (the bridge is br-<name>)")
        self.root = Path(root).absolute()
        self.name = name
        self.bridge = f"br-{name}"
        self.namespace = f"dockhand-{name}"
        self.data_root = self.root / "data"
        self.pidfile = self.root / "dockerd.pid"
        self.log_path = self.root / "dockerd.log"
        self.config_file = self.root / "daemon.json"
        self._short_dir: Path | None = None
        if len(str(self.root / "exec")) + _LONGEST_SOCKET_SUFFIX > _SUN_PATH_MAX:
            # Unix socket paths are limited to 107 bytes: socket and exec-root go to a short
            # directory, created by start(), named after the root so that another object for
            # the same root and name (say, a cleanup after a crashed session) finds it again.
            digest = hashlib.sha256(str(self.root).encode()).hexdigest()[:10]
            self._short_dir = Path(f"/tmp/dh-{name}-{digest}")
        sock_dir = self._short_dir or self.root
        self.exec_root = sock_dir / "exec"
        self.socket_path = sock_dir / "docker.sock"
        self._subnet = ipaddress.IPv4Network(subnet) if subnet else None
        if self._subnet is not None and self._subnet.prefixlen > 29:
            raise ValueError(f"subnet {subnet}: too small")
        self._proc: subprocess.Popen[bytes] | None = None
        self.last_start_seconds: float | None = None
        self.last_stop_seconds: float | None = None
        self.tls = tls
        self.tcp_port: int | None = None
        if tls is not None:  # kept across restarts
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                s.bind(("127.0.0.1", 0))
                self.tcp_port = int(s.getsockname()[1])

    # -- public API -------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """``unix:///…/docker.sock``, for ``aiodocker.Docker(url=…)`` / ``DOCKHAND_DOCKER_HOST``."""
        return f"unix://{self.socket_path}"

    @property
    def tcp_url(self) -> str:
        """``tcp://127.0.0.1:<port>``, the TLS endpoint (only with ``tls``)."""
        if self.tcp_port is None:
            raise DockerdError(f"{self} has no TCP listener (SecondDockerd(..., tls=...))")
        return f"tcp://127.0.0.1:{self.tcp_port}"

    @property
    def bip(self) -> str | None:
        """The bridge's address with prefix (``172.16.0.1/24``), once chosen by ``start()``."""
        return None if self._subnet is None else f"{self._subnet.network_address + 1}/{self._subnet.prefixlen}"

    @property
    def running(self) -> bool:
        pid = self._daemon_pid()
        return pid is not None and _alive(pid)

    def start(self, timeout: float = 60) -> None:
        """Start dockerd in a new session and wait until ``GET /_ping`` answers."""
        if self.running:
            raise DockerdError(f"{self} is already running")
        t0 = time.monotonic()
        had_docker0 = PRIMARY_BRIDGE.exists()
        if self._short_dir is not None:
            self._short_dir.mkdir(mode=0o700, exist_ok=True)
        for d in (self.root, self.data_root, self.exec_root):
            d.mkdir(parents=True, exist_ok=True)
        self._write_config()
        self._setup_bridge()
        self._clear_stale_pidfile()
        # A containerd left from a kill() would still hold its socket and metadata database.
        self._kill_leftover_containerd()
        self._clear_stale_containerd_pidfile()

        with self.log_path.open("ab") as log:
            log.write(f"\n===== dockerd2 start {time.strftime('%Y-%m-%dT%H:%M:%S')} =====\n".encode())
            log.flush()
            log_offset = log.tell()
            self._proc = subprocess.Popen(
                self._dockerd_argv(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self._env(),
                cwd=self.root,
                start_new_session=True,  # setsid(): no signals from our terminal / process group
            )
        deadline = time.monotonic() + timeout
        while not self._ping(timeout=min(2.0, max(0.1, deadline - time.monotonic()))):
            if self._proc.poll() is not None:
                self._abort_start()
                raise DockerdError(
                    f"{self}: dockerd exited with {self._proc.returncode} before answering /_ping\n"
                    + self.log_tail(offset=log_offset)
                )
            if time.monotonic() >= deadline:
                self._abort_start()
                raise DockerdError(
                    f"{self}: no answer on {self.socket_path} within {timeout}s\n" + self.log_tail(offset=log_offset)
                )
            time.sleep(0.05)
        self.last_start_seconds = time.monotonic() - t0
        if had_docker0 and not PRIMARY_BRIDGE.exists():
            self.stop()
            raise DockerdError(f"{self}: docker0, the primary daemon's bridge, vanished\n{self.log_tail()}")

    def _abort_start(self) -> None:
        with contextlib.suppress(DockerdError):
            self.stop(timeout=10)

    def stop(self, timeout: float = 30) -> None:
        """SIGTERM dockerd (SIGKILL after ``timeout``), then make sure its containerd is gone too."""
        t0 = time.monotonic()
        pid = self._daemon_pid()
        if pid is not None and _alive(pid):
            _signal(pid, signal.SIGTERM)
            if not self._wait_daemon(pid, timeout):
                _signal(pid, signal.SIGKILL)
                if not self._wait_daemon(pid, 10):
                    raise DockerdError(f"{self}: dockerd (pid {pid}) survived SIGKILL")
        self._reap()
        # On a graceful stop dockerd stops its containerd; after SIGKILL the parent-death signal does.
        self._kill_leftover_containerd(grace=10)
        self.last_stop_seconds = time.monotonic() - t0

    def restart(self, stop_timeout: float = 30, start_timeout: float = 60) -> None:
        """Stop, then start on the same data-root: containers come back ``exited`` (no live-restore)."""
        self.stop(stop_timeout)
        self.start(start_timeout)

    def kill(self) -> None:
        """SIGKILL dockerd, as in a crash. Its containerd and docker-proxies die with it; the
        shims and containers keep running until the next ``start()`` (or ``cleanup()``)."""
        pid = self._daemon_pid()
        if pid is None or not _alive(pid):
            raise DockerdError(f"{self} is not running")
        _signal(pid, signal.SIGKILL)
        if not self._wait_daemon(pid, 10):
            raise DockerdError(f"{self}: dockerd (pid {pid}) survived SIGKILL")
        self._reap()
        self._kill_leftover_containerd(grace=5)

    def cli(self, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """Run the docker CLI against this daemon."""
        return subprocess.run(
            ["docker", "-H", self.url, *args], capture_output=True, text=True, timeout=timeout, check=check
        )

    def load_image(self, tag: str, timeout: float = 300) -> None:
        """Copy ``tag`` from the primary daemon: ``docker save TAG | docker -H <this> load``."""
        with tempfile.TemporaryFile() as save_err:
            save = subprocess.Popen(["docker", "save", tag], stdout=subprocess.PIPE, stderr=save_err)
            try:
                load = subprocess.run(
                    ["docker", "-H", self.url, "load", "-q"],
                    stdin=save.stdout,
                    capture_output=True,
                    text=True,
                    timeout=timeout,
                    check=False,
                )
            finally:
                assert save.stdout is not None
                save.stdout.close()
                try:
                    save_rc = save.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    save.kill()
                    save_rc = save.wait()
            save_err.seek(0)
            save_msg = save_err.read().decode(errors="replace").strip()
        if save_rc != 0:
            raise DockerdError(
                f"docker save {tag} failed ({save_rc}): {save_msg}\n"
                "(the test image is built by `bash scripts/infra.sh`)"
            )
        if load.returncode != 0:
            raise DockerdError(f"docker load into {self} failed ({load.returncode}): {load.stderr.strip()}")

    def cleanup(self, keep_log: bool = False) -> None:
        """Stop the daemon, remove what a kill() may have orphaned, unmount everything under its
        directories, delete ``br-<name>`` (only that bridge) and remove the root and short dirs.
        Safe to call more than once and on a daemon that never started."""
        errors: list[str] = []
        self._remove_networks()
        try:
            self.stop()
        except (DockerdError, OSError, subprocess.SubprocessError) as e:
            errors.append(f"stop: {e}")
        self._kill_orphans()
        self._unmount_all(errors)
        self._delete_bridge(errors)
        self._remove_dirs(keep_log, errors)
        if errors:
            raise DockerdError(f"{self}: cleanup incomplete:\n" + "\n".join(errors))

    def _remove_networks(self) -> None:
        """Have the daemon remove its own networks (and so their ``br-<id>`` bridges and routes)
        while it still runs: once it is stopped nothing deletes them, and leaked bridges use up the
        address pools that this machine's daemons share. Everything on this daemon is ours."""
        if not self.running or not self._ping():
            return
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            ids = self.cli("ps", "-aq", check=False, timeout=30).stdout.split()
            if ids:
                self.cli("rm", "-f", *ids, check=False, timeout=60)
            self.cli("network", "prune", "-f", check=False, timeout=60)

    def log_tail(self, lines: int = 40, offset: int = 0) -> str:
        try:
            with self.log_path.open("rb") as f:
                f.seek(offset)
                text = f.read().decode(errors="replace")
        except FileNotFoundError:
            return "(no dockerd log)"
        return "--- dockerd log tail ---\n" + "\n".join(text.splitlines()[-lines:])

    def __enter__(self) -> SecondDockerd:
        try:
            self.start()
        except BaseException:
            self.cleanup()
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.cleanup()

    def __repr__(self) -> str:
        return f"SecondDockerd(name={self.name!r}, url={self.url!r})"

    # -- starting ---------------------------------------------------------------------------

    def _dockerd_argv(self) -> list[str]:
        # No --default-address-pool and no --bridge=none: either makes dockerd delete docker0.
        tls = []
        if self.tls is not None:
            tls = [
                "--tlsverify",
                f"--tlscacert={self.tls.ca}",
                f"--tlscert={self.tls.cert}",
                f"--tlskey={self.tls.key}",
                f"--host=tcp://127.0.0.1:{self.tcp_port}",
            ]
        return [
            "dockerd",
            f"--config-file={self.config_file}",
            f"--data-root={self.data_root}",
            f"--exec-root={self.exec_root}",
            f"--pidfile={self.pidfile}",
            f"--host=unix://{self.socket_path}",
            f"--bridge={self.bridge}",
            "--iptables=false",  # see the module docstring: it would flush the primary's chains
            "--ip-forward=false",
            "--ip-masq=false",
            f"--containerd-namespace={self.namespace}",
            f"--containerd-plugins-namespace={self.namespace}-plugins",
            *tls,
        ]

    def _env(self) -> dict[str, str]:
        env = {
            k: v
            for k, v in os.environ.items()
            # not the primary's client settings, and no systemd readiness/socket-activation protocol
            if k not in _CLIENT_ENV
        }
        path = env.get("PATH", "/usr/bin:/bin").split(":")
        env["PATH"] = ":".join(path + [d for d in _SBIN if d not in path])  # containerd, docker-proxy, runc
        return env

    def _write_config(self) -> None:
        # Its own trust key, hence its own engine ID (``docker info``), not the primary's.
        config = {"deprecated-key-path": str(self.root / "key.json")}
        self.config_file.write_text(json.dumps(config, indent=2) + "\n")

    def _ping(self, timeout: float = 2) -> bool:
        # dockerd listens early but answers only once initialised: the connect succeeds, recv waits.
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.settimeout(timeout)
                s.connect(str(self.socket_path))
                s.sendall(b"GET /_ping HTTP/1.0\r\nHost: dockerd2\r\n\r\n")
                reply = b""
                while chunk := s.recv(4096):
                    reply += chunk
        except OSError:
            return False
        status_line = reply.split(b"\r\n", 1)[0]
        return status_line.startswith(b"HTTP/1.") and b" 200 " in status_line + b" "

    def _clear_stale_pidfile(self) -> None:
        try:
            pid = int(self.pidfile.read_text().strip())
        except (FileNotFoundError, ValueError):
            return
        argv = _argv(pid)
        if _alive(pid) and argv and os.path.basename(argv[0]) == "dockerd":
            raise DockerdError(f"{self}: a dockerd (pid {pid}) is already running with pidfile {self.pidfile}")
        self.pidfile.unlink(missing_ok=True)  # left by a kill(); dockerd would refuse a live-looking one

    def _clear_stale_containerd_pidfile(self) -> None:
        # dockerd's supervisor reuses "its" containerd when kill(pid, 0) succeeds on the pid in this
        # file, which it does for a zombie: after kill() the dead containerd stays a zombie until
        # PID 1 reaps it (seconds, here), and dockerd would wait 15 s for it and then give up.
        pidfile = self.exec_root / "containerd" / "containerd.pid"
        try:
            pid = int(pidfile.read_text().strip())
        except (FileNotFoundError, ValueError):
            return
        if not (_alive(pid) and any(str(self.exec_root) in a for a in _argv(pid))):
            pidfile.unlink(missing_ok=True)

    # -- network ----------------------------------------------------------------------------

    def _setup_bridge(self) -> None:
        with LOCK_FILE.open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not Path(f"/sys/class/net/{self.bridge}").exists():
                subprocess.run(["ip", "link", "add", self.bridge, "type", "bridge"], check=True, capture_output=True)
            if self._subnet is None:
                self._subnet = self._free_subnet()
            # Claim the subnet (its route makes other instances skip it); dockerd uses the bridge's address.
            want = self.bip
            assert want is not None
            have = self._bridge_addresses()
            if have != [want]:
                subprocess.run(["ip", "-4", "addr", "flush", "dev", self.bridge], check=True, capture_output=True)
                subprocess.run(["ip", "addr", "add", want, "dev", self.bridge], check=True, capture_output=True)

    def _bridge_addresses(self) -> list[str]:
        out = subprocess.run(
            ["ip", "-j", "-4", "addr", "show", "dev", self.bridge], check=True, capture_output=True, text=True
        ).stdout
        return [f"{a['local']}/{a['prefixlen']}" for link in json.loads(out or "[]") for a in link.get("addr_info", [])]

    def _free_subnet(self) -> ipaddress.IPv4Network:
        out = subprocess.run(
            ["ip", "-j", "-4", "route", "show", "table", "main"], check=True, capture_output=True, text=True
        ).stdout
        taken = [
            ipaddress.IPv4Network(r["dst"], strict=False)
            for r in json.loads(out or "[]")
            if r.get("dst") not in (None, "default") and r.get("dev") != self.bridge
        ]
        taken += [ipaddress.IPv4Network(ns) for ns in self._nameservers()]
        for candidate in DEFAULT_SUBNET_BASE.subnets(new_prefix=BLOCK_PREFIX):
            if not any(candidate.overlaps(t) for t in taken):
                return candidate
        raise DockerdError(f"no free /{BLOCK_PREFIX} left in {DEFAULT_SUBNET_BASE} for {self.bridge}")

    @staticmethod
    def _nameservers() -> list[str]:
        try:
            lines = Path("/etc/resolv.conf").read_text().splitlines()
        except OSError:
            return []
        found = []
        for line in lines:
            parts = line.split()
            if len(parts) >= 2 and parts[0] == "nameserver":
                with contextlib.suppress(ValueError):
                    found.append(str(ipaddress.IPv4Address(parts[1])))
        return found

    def _delete_bridge(self, errors: list[str]) -> None:
        if self.bridge in ("docker0", "") or not self.bridge.startswith("br-"):
            return
        if Path(f"/sys/class/net/{self.bridge}/bridge").exists():
            out = subprocess.run(["ip", "link", "del", self.bridge], capture_output=True, text=True, check=False)
            if out.returncode != 0:
                errors.append(f"ip link del {self.bridge}: {out.stderr.strip()}")

    # -- processes --------------------------------------------------------------------------

    def _daemon_pid(self) -> int | None:
        if self._proc is not None and self._proc.poll() is None:
            return self._proc.pid
        try:
            pid = int(self.pidfile.read_text().strip())
        except (FileNotFoundError, ValueError):
            return None
        argv = _argv(pid)
        # The pidfile may be stale (kill()) and its pid reused: only trust a dockerd with our pidfile.
        if argv and os.path.basename(argv[0]) == "dockerd" and any(str(self.pidfile) in a for a in argv):
            return pid
        return None

    def _wait_daemon(self, pid: int, timeout: float) -> bool:
        if self._proc is not None and self._proc.pid == pid:
            try:
                self._proc.wait(timeout)
            except subprocess.TimeoutExpired:
                return False
            return True
        return not _wait_gone([pid], timeout)

    def _reap(self) -> None:
        if self._proc is not None and self._proc.poll() is not None:
            self._proc = None

    def _our_processes(self) -> dict[int, list[str]]:
        """Processes whose argv names our exec- or data-root: containerd, shims (never the primary's)."""
        marks = [str(self.exec_root) + "/", str(self.data_root) + "/"]
        me = os.getpid()
        found = {}
        for entry in os.listdir("/proc"):
            if not entry.isdigit() or int(entry) == me:
                continue
            argv = _argv(int(entry))
            if argv and os.path.basename(argv[0]) != "dockerd" and any(m in a for a in argv for m in marks):
                found[int(entry)] = argv
        return found

    def _kill_leftover_containerd(self, grace: float = 0) -> None:
        pids = [p for p, argv in self._our_processes().items() if os.path.basename(argv[0]) == "containerd"]
        left = _wait_gone(pids, grace)
        for pid in left:
            _signal(pid, signal.SIGKILL)
        if _wait_gone(left, 10):
            raise DockerdError(f"{self}: containerd {left} survived SIGKILL")

    def _kill_orphans(self) -> None:
        """After a kill(): containers still run under orphaned shims. Remove them with runc (which
        also removes their cgroups), then kill the shims and anything else of ours."""
        runc_root = self.exec_root / "runtime-runc" / self.namespace
        if runc_root.is_dir() and shutil.which("runc", path=self._env()["PATH"]):
            runc = ["runc", "--root", str(runc_root)]
            env = self._env()
            listed = subprocess.run([*runc, "list", "-q"], capture_output=True, text=True, check=False, env=env)
            for cid in listed.stdout.split():
                subprocess.run([*runc, "delete", "--force", cid], capture_output=True, check=False, env=env)
        pids = list(self._our_processes())
        for pid in pids:
            _signal(pid, signal.SIGKILL)
        _wait_gone(pids, 10)

    # -- files ------------------------------------------------------------------------------

    def _dirs(self) -> list[Path]:
        return [d for d in (self.root, self._short_dir) if d is not None]

    def _unmount_all(self, errors: list[str]) -> None:
        for _ in range(10):  # mounts can be stacked on the same point (the data-root's self-bind)
            mounts = _mount_points_under(self._dirs())
            if not mounts:
                return
            for mount_point in mounts:
                out = subprocess.run(["umount", mount_point], capture_output=True, text=True, check=False)
                if out.returncode != 0:
                    subprocess.run(["umount", "-l", mount_point], capture_output=True, check=False)
        errors.append(f"still mounted: {_mount_points_under(self._dirs())}")

    def _remove_dirs(self, keep_log: bool, errors: list[str]) -> None:
        if _mount_points_under(self._dirs()):
            errors.append("not removing directories that still contain mounts")
            return
        if self._short_dir is not None:
            shutil.rmtree(self._short_dir, ignore_errors=True)
        if keep_log:
            for child in self.root.iterdir() if self.root.is_dir() else []:
                if child != self.log_path:
                    if child.is_dir() and not child.is_symlink():
                        shutil.rmtree(child, ignore_errors=True)
                    else:
                        child.unlink(missing_ok=True)
        else:
            shutil.rmtree(self.root, ignore_errors=True)
        left = [str(d) for d in self._dirs() if d.exists() and not (keep_log and d == self.root)]
        if left:
            errors.append(f"could not remove {left}")


def unique_name(prefix: str = "dh2") -> str:
    """A bridge-safe name unique to this call, for concurrent test sessions (``dh2-a1b2c3``)."""
    return f"{prefix}-{secrets.token_hex(3)}"
