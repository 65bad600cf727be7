"""A second, independent RabbitMQ node that tests can start, stop, restart and kill.

``SecondRabbit(root, name)`` runs ``rabbitmq-server`` as its own Erlang node (``<name>@localhost``)
with everything of its own under ``root``: Mnesia/quorum data, logs, pidfile, config file, plugin
list, AMQP port and distribution port. The machine's primary node (``rabbit@<hostname>``, port
5672, data in ``/var/lib/rabbitmq``) is never touched: nothing here stops, reconfigures or writes
to it, and no command is ever sent to a node other than our own.

What was found out on Debian 12's rabbitmq-server 3.10.8 (Erlang 25.2.3, Ra 2.2.0), and why things
are done the way they are:

* **Scripts**: ``/usr/sbin/rabbitmq-server`` and ``rabbitmqctl`` are wrappers that, run as root,
  ``su`` to the rabbitmq user (who cannot enter pytest's 0700 ``tmp_path``), and the server wrapper
  sends its output to ``/var/log/rabbitmq/startup_log`` -- the primary's. We run the scripts they
  wrap (``/usr/lib/rabbitmq/bin/``) directly, as root.
* **Isolation**: every script sources ``/etc/rabbitmq/rabbitmq-env.conf`` (which could set the node
  name or ports); ``RABBITMQ_CONF_ENV_FILE`` points to an empty file of ours instead, and
  ``RABBITMQ_ADVANCED_CONFIG_FILE`` to one that does not exist. ``RABBITMQ_*`` variables of the
  caller are dropped. Data, logs, pidfile, config and plugin list (``[].``) are all under ``root``.
* **Cookie**: Erlang reads ``$HOME/.erlang.cookie``. The node and our CLI calls run with
  ``HOME=<root>``, which holds a 0400 copy of the primary's cookie
  (``/var/lib/rabbitmq/.erlang.cookie``; root has no ``~/.erlang.cookie``), so a plain
  ``rabbitmqctl -n <node> status`` from a root shell (su rabbitmq, the primary's cookie) reaches
  this node too. HOME is not ``/var/lib/rabbitmq``, so nothing is ever written there.
* **Node name**: ``dh-<hex>@localhost``. ``localhost`` resolves to 127.0.0.1 and works as a short
  node name's host, for the node and for the CLI (which calls itself
  ``rabbitmqcli-<pid>-<name>@localhost``); if it did not resolve to loopback, the short host name
  would be used.
* **Ports**: the AMQP and distribution ports are found by binding port 0 on 127.0.0.1 and kept
  across restarts; ``start()`` checks they are still free. Listeners must *not* be set in
  ``rabbitmq.conf``: ``listeners.tcp.default = N`` overrides ``RABBITMQ_NODE_IP_ADDRESS`` and binds
  ``[::]``; the env vars give ``127.0.0.1:<port>``. ``RABBITMQ_DIST_PORT`` plus
  ``-kernel inet_dist_use_interface {127,0,0,1}`` keep distribution on loopback as well. epmd (4369)
  is shared, which is fine: the node just registers its name there (a start refuses a name that is
  already registered). CLI tools take their own distribution port from 35672-35682 (not derived
  from ``RABBITMQ_DIST_PORT`` in 3.10), so those are never handed out.
* **Start-up**: without ``-detached`` the server script stays as a ``sh`` (our child, in its own
  session) with the VM as its child; the node writes the VM's pid to the pidfile. ``await_startup``
  fails at once while the node is not yet registered with epmd ("not running at all"), so
  ``start()`` first waits for the registration (~1.5 s), then runs ``await_startup`` -- the CLI's own
  boot (~0.7 s) overlaps the node's -- and then opens an aio-pika connection as guest.
* **Feature flags**: a fresh node enables all its (7) stable flags by itself, and they persist in
  ``mnesia/<node>-feature_flags``; ``enable_feature_flag all`` is still run on an object's first
  start (~0.5 s), not on restarts.
* **Stop**: SIGTERM to the VM is the same graceful shutdown as ``rabbitmqctl stop`` ("SIGTERM
  received - shutting down"; durable messages survive) and takes ~1.1 s against 2-4 s for
  ``rabbitmqctl stop <pidfile>``, so it is the default. Beware: ``rabbitmqctl stop <pidfile>`` with a
  pidfile that does not exist waits forever for it to appear.
* **Kill**: SIGKILL to the VM takes < 0.1 s; its helpers (``erl_child_setup``, ``inet_gethost``,
  the disk monitor's ``sh``) exit with it (as zombies until PID 1 reaps them; counted as dead
  here), epmd drops the name at once, the stale pidfile is ignored and replaced by the next start.
  Durable queues and the confirmed messages of quorum queues come back.
* **Ra 2.2.0 loses fresh quorum queues on a kill**: Ra records each member's name -> data-dir id in
  a dets table (``quorum/<node>/names.dets``) whose writes dets delays by up to ~3 s and Ra never
  syncs (fixed upstream later, rabbitmq/ra#443). Killed within that window after a quorum queue's
  declaration, the node comes back with a *new, empty* member for it that never elects a leader:
  ``basic.get``/consume hang, a passive declare reports 0 messages. Reproduced every time with
  declare + publish + kill within a second; fine after 3.5 s, after a clean restart, or with
  ``kill(sync_ra_names=True)``, which first runs ``dets:sync(ra_directory_reverse)`` on the node.
  Also, right after any start a quorum queue reports 0 messages until its member has recovered:
  poll rather than assert once.

Timings here (2 vCPUs under gVisor, shared with other busy sessions -- load average 5-10): first
start 5.8-8.3 s, a start on existing data 4.0-7.0 s, stop 1.1-1.2 s (``rabbitmqctl stop`` 2.0-4.2 s),
restart 6-8 s, kill < 0.1 s. A start spends ~1.5 s until the VM registers with epmd, ~1 s on
config and logging, ~2 s in "Upgrading Mnesia schema" (which loads every module of every loaded
application to scan attributes -- code loading is slow here) and ~0.2 s in the boot steps. Tried
without gain: a classic-format (no cuttlefish) config; a merged ebin directory first in the code
path (loads 40% faster, but rabbit_prelaunch then finds no config schema and the node aborts).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import secrets
import shutil
import signal
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from types import TracebackType
from typing import Any

import aio_pika

from .certs import TlsFiles

__all__ = ["RabbitError", "SecondRabbit", "epmd_names", "unique_name"]

PRIMARY_COOKIE = Path("/var/lib/rabbitmq/.erlang.cookie")
EPMD_PORT = int(os.environ.get("ERL_EPMD_PORT", "4369"))
# Ports the primary node, epmd and the CLI tools use (rabbitmqctl takes its own distribution port
# from 35672-35682): never hand one of them to the second node.
_RESERVED_PORTS = frozenset({4369, 5671, 5672, 15672, 25672, *range(35672, 35683)})
_SCRIPT_DIRS = ("/usr/lib/rabbitmq/bin", "/usr/local/lib/rabbitmq/bin")
_NAME_OK = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")
# What the wrapper scripts or the caller's environment could otherwise slip into our node.
_DROP_ENV_PREFIXES = ("RABBITMQ_", "ERL_AFLAGS", "ERL_FLAGS", "ERL_ZFLAGS")
_DROP_ENV = frozenset({"NOTIFY_SOCKET", "LISTEN_FDS", "LISTEN_PID", "CONF_ENV_FILE"})


class RabbitError(RuntimeError):
    """The second node failed to start or stop; the message ends with its log tail."""


# -- processes ------------------------------------------------------------------------------


def _proc_state(pid: int) -> str | None:
    """The state letter of ``pid`` (R, S, Z, ...) or None when there is no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:  # gone (ENOENT, or ESRCH for a process exiting right now)
        return None
    return stat.rpartition(")")[2].split()[0]


def _alive(pid: int) -> bool:
    state = _proc_state(pid)
    return state is not None and state not in ("Z", "X")


def _argv(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [a.decode(errors="replace") for a in raw.split(b"\0") if a]


def _environ_has(pid: int, entry: bytes) -> bool:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:  # gone, or not ours to read (even root gets EACCES for PID 1 under gVisor)
        return False
    return entry in raw.split(b"\0")


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
        time.sleep(0.02)


# -- network --------------------------------------------------------------------------------


def _free_port(exclude: set[int]) -> int:
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port not in exclude and port not in _RESERVED_PORTS:
            return port
    raise RabbitError("no free TCP port on 127.0.0.1")


def _port_free(port: int) -> bool:
    # SO_REUSEADDR as the broker's listeners use it: TIME_WAIT leftovers do not count as taken.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _node_host() -> str:
    """``localhost`` when it resolves to a loopback address (the node name's host must resolve,
    for the node itself and for the CLI tools), else the short host name."""
    try:
        addrs = {str(a[4][0]) for a in socket.getaddrinfo("localhost", None, socket.AF_INET)}
    except OSError:
        addrs = set()
    if addrs and all(a.startswith("127.") for a in addrs):
        return "localhost"
    return socket.gethostname().split(".")[0]


def epmd_names(timeout: float = 1.0) -> dict[str, int] | None:
    """The nodes registered with epmd (name -> distribution port), or None if epmd does not answer."""
    try:
        with socket.create_connection(("127.0.0.1", EPMD_PORT), timeout=timeout) as s:
            s.sendall(struct.pack(">H", 1) + b"n")  # NAMES_REQ
            reply = b""
            while chunk := s.recv(4096):
                reply += chunk
    except OSError:
        return None
    names = {}
    for line in reply[4:].decode(errors="replace").splitlines():
        parts = line.split()  # "name <name> at port <port>"
        if len(parts) == 5 and parts[0] == "name":
            with contextlib.suppress(ValueError):
                names[parts[1]] = int(parts[4])
    return names


def _run_in_thread(coro_factory: Callable[[], Coroutine[Any, Any, None]], timeout: float) -> None:
    """Run ``asyncio.run(coro_factory())`` in a thread of its own (works inside an event loop too)."""
    error: list[BaseException] = []

    def target() -> None:
        try:
            asyncio.run(coro_factory())
        except BaseException as e:
            error.append(e)

    t = threading.Thread(target=target, name="rabbit2-amqp-check", daemon=True)
    t.start()
    t.join(timeout)
    if t.is_alive():
        raise TimeoutError(f"AMQP check did not finish within {timeout:.0f}s")
    if error:
        raise error[0]


class SecondRabbit:
    """A RabbitMQ node of its own under ``root``; see the module docstring.

    ``name`` is the node's short name (default ``dh-<6 hex>``); the node is ``<name>@localhost``.
    Ports are picked on first use (``url`` or ``start()``) and kept across restarts.

    With ``tls`` (a server certificate, its key and the CA that client certificates must chain
    to) the node also has a TLS listener on its own 127.0.0.1 port (``ssl_url``) that requires a
    client certificate: ``ssl_options.verify = verify_peer``, ``fail_if_no_peer_cert = true``. The
    plain listener stays (the start-up check and ``ctl`` use it).
    """

    def __init__(self, root: Path, name: str | None = None, *, tls: TlsFiles | None = None) -> None:
        name = name or unique_name()
        if not name or len(name) > 40 or not set(name) <= _NAME_OK:
            raise ValueError(f"node name {name!r}: 1-40 characters of [A-Za-z0-9_-]")
        self.root = Path(root).absolute()
        self.name = name
        self.node = f"{name}@{_node_host()}"
        self.mnesia_base = self.root / "mnesia"
        self.log_base = self.root / "log"
        self.pidfile = self.root / "rabbitmq.pid"
        self.config_file = self.root / "rabbitmq.conf"
        self.advanced_config_file = self.root / "advanced.config"  # never written: keeps /etc's out
        self.env_file = self.root / "rabbitmq-env.conf"  # empty: keeps /etc/rabbitmq/rabbitmq-env.conf out
        self.plugins_file = self.root / "enabled_plugins"
        self.cookie_file = self.root / ".erlang.cookie"  # HOME is the root
        self.console_log = self.root / "console.log"
        self.log_path = self.log_base / f"{self.node}.log"
        self.port: int | None = None
        self.dist_port: int | None = None
        self.tls = tls
        self.ssl_port: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._flags_enabled = False
        self.last_start_seconds: float | None = None
        self.last_stop_seconds: float | None = None
        self.last_kill_seconds: float | None = None
        self.last_start_phases: dict[str, float] = {}

    # -- public API -------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """``amqp://guest:guest@127.0.0.1:<port>/`` (the port is picked now if not yet)."""
        self._ensure_ports()
        return f"amqp://guest:guest@127.0.0.1:{self.port}/"

    @property
    def ssl_url(self) -> str:
        """``amqps://guest:guest@127.0.0.1:<ssl port>/`` (only with ``tls``)."""
        if self.tls is None:
            raise RabbitError(f"{self} has no TLS listener (SecondRabbit(..., tls=...))")
        self._ensure_ports()
        return f"amqps://guest:guest@127.0.0.1:{self.ssl_port}/"

    @property
    def running(self) -> bool:
        return self._beam_pid() is not None

    def start(self, timeout: float = 90) -> None:
        """Start the node and wait until it has booted (``rabbitmqctl await_startup``), all feature
        flags are enabled and guest can open an AMQP connection."""
        if self.running:
            raise RabbitError(f"{self} is already running")
        t0 = time.monotonic()
        deadline = t0 + timeout
        self._reap()
        self._prepare()
        self._check_not_registered()
        log_offset = self._log_size()
        with self.console_log.open("ab") as log:
            log.write(f"\n===== rabbit2 start {time.strftime('%Y-%m-%dT%H:%M:%S')} =====\n".encode())
            log.flush()
            self._proc = subprocess.Popen(
                [self._script("rabbitmq-server")],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self._env(),
                cwd=self.root,
                start_new_session=True,  # setsid(): no signals from our terminal / process group
            )
        phases: dict[str, float] = {}
        try:
            # 1. The node's distribution is up once it is registered with epmd; await_startup
            #    before that fails at once ("node not running at all"), after it waits for the boot.
            while self.name not in (epmd_names() or {}):
                self._check_alive_or_deadline(deadline, "registering with epmd", log_offset)
                time.sleep(0.05)
            phases["epmd"] = time.monotonic() - t0
            # 2. The boot proper (Mnesia, quorum queue systems, listeners); the CLI's own start-up
            #    (~0.7 s) overlaps with it.
            remaining = max(1, int(deadline - time.monotonic()))
            out = self.ctl("await_startup", "--timeout", str(remaining), check=False, timeout=remaining + 10)
            if out.returncode != 0:
                self._check_alive_or_deadline(deadline, "booting", log_offset)
                raise RabbitError(
                    f"{self}: await_startup failed ({out.returncode}): {(out.stdout + out.stderr).strip()}\n"
                    + self.log_tail(offset=log_offset)
                )
            phases["await_startup"] = time.monotonic() - t0
            # 3. Quorum queues with at-least-once dead-lettering need every feature flag.
            #    A fresh node enables all of them itself and they stay enabled in its data dir,
            #    so this is needed (and done) once per object, not on every restart.
            if not self._flags_enabled:
                self.ctl("enable_feature_flag", "all", timeout=max(10, deadline - time.monotonic()))
                self._flags_enabled = True
                phases["feature_flags"] = time.monotonic() - t0
            # 4. A real client connection with guest/guest.
            self._await_amqp(deadline, log_offset)
            phases["amqp"] = time.monotonic() - t0
        except BaseException:
            self._abort_start()
            raise
        self.last_start_phases = phases
        self.last_start_seconds = time.monotonic() - t0

    def stop(self, timeout: float = 60, *, use_ctl: bool = False) -> None:
        """Stop the node cleanly and wait for its process to exit.

        By default with SIGTERM, which RabbitMQ turns into the same graceful shutdown as
        ``rabbitmqctl stop`` (~1.1 s instead of 2-4 s); ``use_ctl=True`` runs
        ``rabbitmqctl -n <node> stop <pidfile>`` (SIGTERM if that fails). SIGKILL when the node has
        not exited after ``timeout``."""
        t0 = time.monotonic()
        pid = self._beam_pid()
        if pid is not None:
            stopping = False
            if use_ctl:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    stopping = self.ctl("stop", str(self.pidfile), check=False, timeout=timeout).returncode == 0
            if not stopping:
                _signal(pid, signal.SIGTERM)
            if _wait_gone([pid], max(0.0, timeout - (time.monotonic() - t0))):
                _signal(pid, signal.SIGKILL)
                if _wait_gone([pid], 10):
                    raise RabbitError(f"{self}: beam (pid {pid}) survived SIGKILL")
        self._reap(timeout=10)
        self._kill_leftovers()
        self.last_stop_seconds = time.monotonic() - t0

    def kill(self, *, sync_ra_names: bool = False) -> None:
        """SIGKILL the node's Erlang VM, as in a crash (no clean shutdown of Mnesia or the queues).

        A quorum queue declared less than ~3 s before the kill comes back broken (see the module
        docstring); ``sync_ra_names=True`` first flushes Ra's name table to disk (one CLI call,
        ~0.7 s) so that such a queue survives too.
        """
        pid = self._beam_pid()
        if pid is None:
            raise RabbitError(f"{self} is not running")
        if sync_ra_names:
            self.ctl("eval", "ok = dets:sync(ra_directory_reverse).", timeout=30)
        t0 = time.monotonic()
        _signal(pid, signal.SIGKILL)
        if _wait_gone([pid], 10):
            raise RabbitError(f"{self}: beam (pid {pid}) survived SIGKILL")
        self._reap(timeout=10)
        self._kill_leftovers()
        self.last_kill_seconds = time.monotonic() - t0

    def restart(self, stop_timeout: float = 60, start_timeout: float = 90) -> None:
        """Stop cleanly and start again: same data dir, same ports."""
        self.stop(stop_timeout)
        self.start(start_timeout)

    def processes(self) -> list[int]:
        """PIDs of live processes of this node: the wrapper script, the Erlang VM and its helpers,
        CLIs run by ``ctl()`` (all carry the node's environment). Empty after ``cleanup()``."""
        return self._our_processes()

    def ctl(self, *args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """``rabbitmqctl -n <node> ARGS`` against this node (never the primary)."""
        out = subprocess.run(
            [self._script("rabbitmqctl"), "-n", self.node, *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            env=self._env(),
            cwd=self.root,
            stdin=subprocess.DEVNULL,
        )
        if check and out.returncode != 0:
            raise RabbitError(
                f"rabbitmqctl -n {self.node} {' '.join(args)} failed ({out.returncode}): "
                f"{(out.stdout + out.stderr).strip()}"
            )
        return out

    def cleanup(self, keep_logs: bool = False) -> None:
        """Stop the node (SIGKILL if that fails), kill anything of ours left and remove the root
        (all but ``log/`` and ``console.log`` with ``keep_logs``). Safe to call more than once and
        on a node that never started."""
        errors: list[str] = []
        try:
            self.stop(timeout=30)
        except (RabbitError, OSError, subprocess.SubprocessError) as e:
            errors.append(f"stop: {e}")
            with contextlib.suppress(RabbitError):
                self.kill()
        try:
            self._kill_leftovers()
        except RabbitError as e:
            errors.append(str(e))
        keep = {self.log_base, self.console_log} if keep_logs else set()
        if keep and self.root.is_dir():
            for child in self.root.iterdir():
                if child in keep:
                    continue
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child, ignore_errors=True)
                else:
                    child.unlink(missing_ok=True)
            left = [c for c in self.root.iterdir() if c not in keep]
            if left:
                errors.append(f"could not remove {left}")
        else:
            shutil.rmtree(self.root, ignore_errors=True)
            if self.root.exists():
                errors.append(f"could not remove {self.root}")
        if errors:
            raise RabbitError(f"{self}: cleanup incomplete:\n" + "\n".join(errors))

    def log_tail(self, lines: int = 40, offset: int = 0) -> str:
        """The end of the node's log (from ``offset``) and of its console output."""
        parts = []
        for path, off in ((self.log_path, offset), (self.console_log, 0)):
            try:
                with path.open("rb") as f:
                    f.seek(off)
                    text = f.read().decode(errors="replace")
            except FileNotFoundError:
                continue
            parts.append(f"--- {path.name} tail ---\n" + "\n".join(text.splitlines()[-lines:]))
        return "\n".join(parts) or "(no rabbitmq log)"

    def __enter__(self) -> SecondRabbit:
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
        return f"SecondRabbit(node={self.node!r}, port={self.port!r})"

    # -- starting ---------------------------------------------------------------------------

    def _ensure_ports(self) -> None:
        if self.port is None:
            self.port = _free_port(exclude=set())
        if self.dist_port is None:
            self.dist_port = _free_port(exclude={self.port})
        if self.tls is not None and self.ssl_port is None:
            self.ssl_port = _free_port(exclude={self.port, self.dist_port})

    @staticmethod
    def _script(name: str) -> str:
        # The /usr/sbin wrappers would su to the rabbitmq user (who cannot read a pytest tmp_path)
        # and send rabbitmq-server's output to /var/log/rabbitmq/startup_log, the primary's: use
        # the scripts they wrap.
        candidates = []
        found = shutil.which(name, path=os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"]))
        if found:
            candidates.append(Path(os.path.realpath(found)).parent / name)
        candidates += [Path(d) / name for d in _SCRIPT_DIRS]
        for c in candidates:
            if c.is_file() and os.access(c, os.X_OK) and "rabbitmq-script-wrapper" not in c.name:
                return str(c)
        raise RabbitError(f"{name} not found (is rabbitmq-server installed?)")

    def _env(self) -> dict[str, str]:
        self._ensure_ports()
        env = {k: v for k, v in os.environ.items() if k not in _DROP_ENV and not k.startswith(_DROP_ENV_PREFIXES)}
        env.update(
            HOME=str(self.root),  # the Erlang cookie is read from $HOME/.erlang.cookie
            RABBITMQ_NODENAME=self.node,
            RABBITMQ_USE_LONGNAME="false",
            RABBITMQ_NODE_IP_ADDRESS="127.0.0.1",
            RABBITMQ_NODE_PORT=str(self.port),
            RABBITMQ_DIST_PORT=str(self.dist_port),
            RABBITMQ_MNESIA_BASE=str(self.mnesia_base),
            RABBITMQ_LOG_BASE=str(self.log_base),
            RABBITMQ_PID_FILE=str(self.pidfile),
            RABBITMQ_CONFIG_FILE=str(self.config_file),
            RABBITMQ_ADVANCED_CONFIG_FILE=str(self.advanced_config_file),
            RABBITMQ_CONF_ENV_FILE=str(self.env_file),
            RABBITMQ_ENABLED_PLUGINS_FILE=str(self.plugins_file),
            # The distribution listener on loopback only, like the AMQP one.
            RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}",
        )
        return env

    def _prepare(self) -> None:
        self._ensure_ports()
        for d in (self.root, self.mnesia_base, self.log_base):
            d.mkdir(parents=True, exist_ok=True)
        self.root.chmod(0o700)
        self.config_file.write_text(
            "# written by tests/integration/rabbit2.py\n"
            "loopback_users.guest = true\n"  # the default: guest works from 127.0.0.1 only
            "log.console = false\n"
            "log.file.level = info\n" + self._tls_config()
        )
        self.plugins_file.write_text("[].\n")
        self.env_file.write_text("")
        self._write_cookie()
        self._clear_stale_pidfile()
        assert self.port is not None
        assert self.dist_port is not None
        ports = [("AMQP", self.port), ("distribution", self.dist_port)]
        if self.ssl_port is not None:
            ports.append(("AMQPS", self.ssl_port))
        for what, port in ports:
            if not _port_free(port):
                raise RabbitError(f"{self}: {what} port {port} on 127.0.0.1 is taken by another process")

    def _tls_config(self) -> str:
        if self.tls is None:
            return ""
        # An IP:port listener binds that address only (a bare port would bind [::]).
        return (
            f"listeners.ssl.local = 127.0.0.1:{self.ssl_port}\n"
            f"ssl_options.cacertfile = {self.tls.ca}\n"
            f"ssl_options.certfile = {self.tls.cert}\n"
            f"ssl_options.keyfile = {self.tls.key}\n"
            "ssl_options.verify = verify_peer\n"
            "ssl_options.fail_if_no_peer_cert = true\n"
        )

    def _write_cookie(self) -> None:
        # The primary's cookie, so that plain `rabbitmqctl -n <node>` (which su's to the rabbitmq
        # user and uses /var/lib/rabbitmq/.erlang.cookie) reaches this node as well.
        try:
            cookie = PRIMARY_COOKIE.read_bytes().strip()
        except OSError:
            cookie = b""
        if not cookie:
            if self.cookie_file.exists():
                return
            cookie = secrets.token_hex(16).upper().encode()
        if self.cookie_file.exists() and self.cookie_file.read_bytes().strip() == cookie:
            return
        self.cookie_file.unlink(missing_ok=True)
        fd = os.open(self.cookie_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o400)
        with os.fdopen(fd, "wb") as f:
            f.write(cookie)

    def _clear_stale_pidfile(self) -> None:
        # After kill() the pidfile stays; its pid may since belong to someone else.
        if self.pidfile.exists() and self._beam_pid() is None:
            self.pidfile.unlink(missing_ok=True)

    def _check_not_registered(self) -> None:
        names = epmd_names()
        if names and self.name in names:
            raise RabbitError(
                f"{self}: a node named {self.name!r} is already registered with epmd (port {names[self.name]})"
            )

    def _check_alive_or_deadline(self, deadline: float, doing: str, log_offset: int) -> None:
        if self._proc is not None and self._proc.poll() is not None:
            raise RabbitError(
                f"{self}: rabbitmq-server exited with {self._proc.returncode} while {doing}\n"
                + self.log_tail(offset=log_offset)
            )
        if time.monotonic() >= deadline:
            raise RabbitError(f"{self}: timed out while {doing}\n" + self.log_tail(offset=log_offset))

    def _await_amqp(self, deadline: float, log_offset: int) -> None:
        url = self.url

        async def connect() -> None:
            connection = await aio_pika.connect(url, timeout=10)
            await connection.close()

        last: BaseException | None = None
        while time.monotonic() < deadline:
            try:
                _run_in_thread(connect, timeout=20)
                return
            except Exception as e:
                last = e
                self._check_alive_or_deadline(deadline, f"connecting to {url}", log_offset)
                time.sleep(0.1)
        raise RabbitError(f"{self}: no AMQP connection to {url}: {last!r}\n" + self.log_tail(offset=log_offset))

    def _abort_start(self) -> None:
        with contextlib.suppress(RabbitError, OSError, subprocess.SubprocessError):
            self.stop(timeout=10)

    def _log_size(self) -> int:
        try:
            return self.log_path.stat().st_size
        except FileNotFoundError:
            return 0

    # -- processes --------------------------------------------------------------------------

    def _is_our_beam(self, pid: int) -> bool:
        # The server's VM gets `-home <root>` (HOME) and `-s rabbit boot`; a CLI's VM has the same
        # -home but no `rabbit boot`.
        argv = _argv(pid)
        if not argv or os.path.basename(argv[0]) != "beam.smp" or not _alive(pid):
            return False
        pairs = set(itertools.pairwise(argv))
        return ("-home", str(self.root)) in pairs and ("rabbit", "boot") in pairs

    def _beam_pid(self) -> int | None:
        try:
            pid = int(self.pidfile.read_text().strip())
        except (FileNotFoundError, ValueError):
            pid = None
        if pid is not None and self._is_our_beam(pid):
            return pid
        # Before the node has written its pidfile (or with a stale one): look for it.
        for pid in self._our_processes():
            if self._is_our_beam(pid):
                return pid
        return None

    def _our_processes(self) -> list[int]:
        """Processes started with our node's environment: the wrapper script, the VM and its
        helpers (erl_child_setup, inet_gethost, the disk monitor's shell), CLIs run by ctl()."""
        mark = f"RABBITMQ_MNESIA_BASE={self.mnesia_base}".encode()
        me = os.getpid()
        found = []
        for entry in os.listdir("/proc"):
            pid = int(entry) if entry.isdigit() else me
            if pid == me or not _alive(pid) or not _environ_has(pid, mark):
                continue
            argv = _argv(pid)
            # An epmd our VM had to start (none was running) is shared by every node: leave it.
            if argv and os.path.basename(argv[0]) == "epmd":
                continue
            found.append(pid)
        return found

    def _reap(self, timeout: float = 0) -> None:
        """Collect the wrapper script's exit status once its VM is gone."""
        if self._proc is None:
            return
        try:
            self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            if timeout > 0:
                self._proc.kill()
                self._proc.wait(5)
            else:
                return
        self._proc = None

    def _kill_leftovers(self) -> None:
        pids = self._our_processes()
        for pid in pids:
            _signal(pid, signal.SIGKILL)
        if _wait_gone(pids, 10):
            raise RabbitError(f"{self}: processes {pids} survived SIGKILL")
        self._reap(timeout=5)


def unique_name(prefix: str = "dh") -> str:
    """A node name unique to this call, for concurrent test sessions (``dh-a1b2c3``)."""
    return f"{prefix}-{secrets.token_hex(3)}"
