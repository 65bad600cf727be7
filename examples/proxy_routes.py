"""Keep nginx routing ``Host: <domain>`` to every service dockhand discovers.

The seeds' use case: a label-discovery agent feeding a proxy. A :class:`DiscoveryView` follows
the fleet's discovery (list + deltas + snapshots, resyncing by itself on lost messages); on each
change this program rewrites one nginx conf file it owns (atomically, only when the text
changes) and reloads nginx, at most once per ``--debounce`` seconds::

    python examples/proxy_routes.py --amqp-url amqp://guest:guest@localhost:5672/ \\
        --nginx-conf /etc/nginx/conf.d/dockhand-routes.conf --nginx-pid-file /run/nginx.pid

The file holds a default server answering 404 (an unknown or removed domain) and a server block
per domain, proxying to the service's address on one of its Docker networks, or to
``127.0.0.1:<host port>`` when it has only published ports. Include it in nginx's ``http {}``
block. Container addresses are those on the Docker host, so run it beside the worker (or with
routable container networks); ``--host`` limits it to the hosts it can reach.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import logging
import os
import re
import shlex
import signal
import tempfile
from collections.abc import Sequence
from pathlib import Path

from dockhand.client import DEFAULT_URL, Client, DiscoveryView, ServiceChange
from dockhand.schemas import Service

log = logging.getLogger("proxy_routes")

# The worker validates domains, but this file feeds nginx's config parser: accept nothing else.
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_DOMAIN = re.compile(rf"^(?=.{{1,253}}$){_LABEL}(?:\.{_LABEL})*$")


def backend(service: Service, network: str | None = None) -> str | None:
    """``ip:port`` for a service: its address on ``network`` (else on its first network that has
    one), else its published host port on 127.0.0.1; None when it has neither."""
    names = [network] if network else sorted(service.networks)
    for name in names:
        address = service.networks.get(name or "", "")
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:  # no address (not connected yet) or not an IP: nothing nginx can use
            continue
        return f"[{ip}]:{service.port}" if ip.version == 6 else f"{ip}:{service.port}"
    published = service.host_ports.get(f"{service.port}/tcp")
    if published is None and service.host_ports:
        published = min(service.host_ports.values())
    return f"127.0.0.1:{published}" if published is not None else None


def render(domains: dict[str, list[Service]], listen: str, network: str | None = None) -> str:
    """The conf file's text: a default 404 server, then one server block per routable domain."""
    lines = [
        "# Written by examples/proxy_routes.py; rewritten on every change: do not edit.",
        "server {",
        f"    listen {listen} default_server;",
        "    server_name _;",
        "    return 404;",
        "}",
    ]
    for domain in sorted(domains, key=str.lower):
        if not _DOMAIN.match(domain):
            log.warning("skipping %r: not a domain nginx should see", domain)
            continue
        backends = sorted({b for s in domains[domain] if (b := backend(s, network)) is not None})
        if not backends:
            log.warning("skipping %s: its service has no address on the host", domain)
            continue
        target = backends[0]
        if len(backends) > 1:  # several containers (or hosts) serve the domain: balance them
            target = "dockhand_" + re.sub(r"[^A-Za-z0-9]", "_", domain.lower())
            lines += [f"upstream {target} {{", *(f"    server {b};" for b in backends), "}"]
        lines += [
            "server {",
            f"    listen {listen};",
            f"    server_name {domain};",
            "    location / {",
            f"        proxy_pass http://{target};",
            "        proxy_set_header Host $host;",
            "        proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;",
            "    }",
            "}",
        ]
    return "\n".join(lines) + "\n"


def write_atomically(path: Path, text: str) -> bool:
    """Replace ``path`` with ``text`` unless it holds it already (True: it changed). nginx never
    sees a half-written file: the text goes to a temporary file in the same directory first."""
    try:
        if path.read_text() == text:
            return False
    except FileNotFoundError:
        pass
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as file:
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        os.chmod(tmp, 0o644)  # nginx may read it as another user
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return True


def hup(pid_file: Path) -> None:
    """SIGHUP to the PID in nginx's ``pid_file``: its master reloads the config."""
    try:
        pid = int(pid_file.read_text().split()[0])
        os.kill(pid, signal.SIGHUP)
    except (OSError, ValueError, IndexError) as err:
        log.warning("cannot signal nginx (pid file %s): %s; it reads the file when it starts", pid_file, err)


async def reload_nginx(pid_file: Path | None, reload_cmd: str | None) -> None:
    """Tell nginx to read its config again: SIGHUP to the PID in ``pid_file``, or ``reload_cmd``
    (default ``nginx -s reload``). A failure is logged: the next change tries again."""
    if pid_file is not None:
        hup(pid_file)
        return
    argv = shlex.split(reload_cmd or "nginx -s reload")
    proc = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await proc.communicate()
    if proc.returncode != 0:
        log.warning("%s exited %s: %s", shlex.join(argv), proc.returncode, out.decode(errors="replace").strip())


async def run(args: argparse.Namespace) -> None:
    """Follow discovery and keep the conf file and nginx current, until cancelled."""
    conf = Path(args.nginx_conf)
    dirty = asyncio.Event()

    def changed(change: ServiceChange) -> None:
        log.info("%s %s on %s", change.kind, change.service.domain, change.host_id)
        dirty.set()

    async def sync(view: DiscoveryView) -> None:
        domains = view.domains()
        if write_atomically(conf, render(domains, args.listen, args.network)):
            log.info("wrote %d domain(s) to %s; reloading nginx", len(domains), conf)
            await reload_nginx(Path(args.nginx_pid_file) if args.nginx_pid_file else None, args.reload_cmd)

    async with (
        Client.connect(args.amqp_url, prefix=args.prefix) as dh,
        DiscoveryView(dh, hosts=args.host or None, on_add=changed, on_remove=changed, on_update=changed) as view,
    ):
        await sync(view)
        log.info("following discovery on %s (prefix %s)", dh.connected_url, args.prefix)
        while True:
            await dirty.wait()
            await asyncio.sleep(args.debounce)  # a burst of changes (a deploy) makes one reload
            dirty.clear()
            await sync(view)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line (the broker options default to the worker's environment variables)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--amqp-url", default=os.environ.get("DOCKHAND_AMQP_URL", DEFAULT_URL))
    parser.add_argument("--prefix", default=os.environ.get("DOCKHAND_EXCHANGE_PREFIX", "dockhand"))
    parser.add_argument("--host", action="append", help="follow only this host id (repeatable; default: all)")
    parser.add_argument("--nginx-conf", required=True, help="the conf file this program owns (include it in http {})")
    reload = parser.add_mutually_exclusive_group()
    reload.add_argument("--nginx-pid-file", help="reload by SIGHUP to the PID in this file")
    reload.add_argument("--reload-cmd", help="reload by running this command (default: nginx -s reload)")
    parser.add_argument("--listen", default="80", help="nginx listen address of the server blocks (default 80)")
    parser.add_argument("--network", help="route to the address on this Docker network (default: the first)")
    parser.add_argument("--debounce", type=float, default=0.5, help="seconds to gather changes before a reload")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    """Run until SIGINT or SIGTERM."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    async def until_signalled() -> None:
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, task.cancel)
        try:
            await run(args)
        except asyncio.CancelledError:
            log.info("stopped")

    asyncio.run(until_signalled())


if __name__ == "__main__":
    main()
