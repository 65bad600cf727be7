"""The fleet as the dashboard shows it: hosts, their workspaces, discovered services and a feed.

Pure state, no I/O: :class:`FleetState` takes heartbeats, events, results, workspace lists and
service lists as the JSON the workers send, and tells every listener what changed as a small
message (what the page's event stream carries). :meth:`FleetState.snapshot` is the whole state,
which a page gets first on every (re)connection, so a tab that slept, or missed messages, is
right again at once.

Everything is bounded: the feed is a ring, each host keeps a fixed number of samples for its
sparklines, and a listener that falls behind is cut off (its page reconnects and starts from a
fresh snapshot) instead of queueing without end.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

FEED_SIZE = 200
"""Feed entries kept (events and failed commands, newest last)."""
SAMPLES = 60
"""Heartbeat samples kept per host for its sparklines."""
LISTENER_QUEUE = 5000
"""Messages a page may fall behind by before it is cut off (it reconnects with a snapshot)."""

CLOSE = b""
"""Put in a listener's queue: end its stream (overflow or shutdown)."""

_WS_STATES = {
    "start": "running",
    "unpause": "running",
    "restart": "running",
    "die": "exited",
    "stop": "exited",
    "kill": "exited",
    "oom": "exited",
    "pause": "paused",
}
_RELIST_ACTIONS = {"create", "start", "destroy", "rename", "update"}


@dataclass
class _Worker:
    worker_id: str
    role: str
    heartbeat: dict[str, Any]
    seen_at: float
    gaps: deque[float] = field(default_factory=lambda: deque(maxlen=8))


@dataclass
class _Host:
    host_id: str
    workers: dict[str, _Worker] = field(default_factory=dict)
    samples: deque[tuple[float, float | None, int | None]] = field(default_factory=lambda: deque(maxlen=SAMPLES))
    status: str = ""  # none yet: the first heartbeat sets it
    workspaces: dict[str, dict[str, Any]] = field(default_factory=dict)
    listed_at: float | None = None
    services: list[dict[str, Any]] = field(default_factory=list)


def _ports(ports: Any) -> list[str]:
    out = []
    for port in ports or []:
        if isinstance(port, Mapping):
            out.append(
                f"{port.get('host_ip', '')}:{port.get('host_port', '')}->"
                f"{port.get('container_port', '')}/{port.get('protocol', 'tcp')}"
            )
    return out


def workspace_row(ws: Mapping[str, Any], label_prefix: str = "dockhand") -> dict[str, Any]:
    """The fields of a ``workspace`` result the page shows (``expires_at`` from the field, or
    from the ``<label prefix>.expires-at`` label that holds the deadline on the container)."""
    labels = ws.get("labels") or {}
    expires = ws.get("expires_at") or labels.get(f"{label_prefix}.expires-at")
    return {
        "workspace_id": str(ws.get("workspace_id", "")),
        "state": str(ws.get("state") or "unknown"),
        "health": ws.get("health"),
        "image": str(ws.get("image") or ""),
        "ports": _ports(ws.get("ports")),
        "expires_at": str(expires) if expires else None,
        "project": ws.get("project"),
        "stage": ws.get("stage"),
    }


class FleetState:
    """Hosts, workspaces, services and the feed, and the listeners that follow their changes.

    ``silent_intervals``: a host whose active worker sent nothing for that many heartbeat
    intervals is ``silent``. The interval is learnt per worker (the median gap between its
    heartbeats); until two have arrived it is ``default_interval_s``. A host silent for
    ``forget_after_s`` is forgotten (a fleet whose host ids come and go does not grow without end).
    """

    def __init__(
        self,
        *,
        silent_intervals: float = 3.0,
        default_interval_s: float = 10.0,
        label_prefix: str = "dockhand",
        forget_after_s: float = 24 * 3600.0,
        clock: Any = time.time,
    ) -> None:
        self.silent_intervals = silent_intervals
        self.default_interval_s = default_interval_s
        self.label_prefix = label_prefix
        self.clock = clock
        self.forget_after_s = forget_after_s
        self.hosts: dict[str, _Host] = {}
        self.feed: deque[dict[str, Any]] = deque(maxlen=FEED_SIZE)
        self.bus: dict[str, Any] = {"state": "connecting", "detail": "", "since": clock()}
        self._feed_seq = 0
        self._listeners: set[asyncio.Queue[bytes]] = set()

    # --- listeners ---------------------------------------------------------------------------

    def listen(self) -> asyncio.Queue[bytes]:
        """A queue of encoded messages (server-sent-event frames) of every change from now on."""
        queue: asyncio.Queue[bytes] = asyncio.Queue(maxsize=LISTENER_QUEUE)
        self._listeners.add(queue)
        return queue

    def unlisten(self, queue: asyncio.Queue[bytes]) -> None:
        """Stop sending to ``queue``."""
        self._listeners.discard(queue)

    def close_listeners(self) -> None:
        """End every listener's stream (shutdown)."""
        for queue in list(self._listeners):
            self._cut(queue)

    def _cut(self, queue: asyncio.Queue[bytes]) -> None:
        self._listeners.discard(queue)
        while True:  # make room for CLOSE: what it drops is superseded by the next snapshot
            try:
                queue.put_nowait(CLOSE)
                return
            except asyncio.QueueFull:
                queue.get_nowait()

    def _emit(self, kind: str, data: Any) -> None:
        if not self._listeners:
            return
        frame = sse(kind, data)
        for queue in list(self._listeners):
            try:
                queue.put_nowait(frame)
            except asyncio.QueueFull:  # a page that does not keep up starts again from a snapshot
                self._cut(queue)

    # --- input ---------------------------------------------------------------------------------

    def set_bus(self, state: str, detail: str = "") -> None:
        """The dashboard's own broker connection: ``connected`` or ``reconnecting``."""
        if state != self.bus["state"] or detail != self.bus["detail"]:
            changed = state != self.bus["state"]
            self.bus = {"state": state, "detail": detail, "since": self.clock() if changed else self.bus["since"]}
            self._emit("bus", self.bus)

    def heartbeat(self, body: Mapping[str, Any]) -> bool:
        """A heartbeat (``<host>.heartbeat`` on the health exchange); True when the host was not
        live before it (new, or silent): its workspaces are worth listing now."""
        host_id, worker_id = str(body.get("host_id") or ""), str(body.get("worker_id") or "")
        if not host_id:
            return False
        now = self.clock()
        host = self.hosts.setdefault(host_id, _Host(host_id))
        was_live = host.status not in {"", "silent"}
        worker = host.workers.get(worker_id)
        role = str(body.get("role") or "active")
        if worker is None:
            worker = host.workers[worker_id] = _Worker(worker_id, role, dict(body), now)
        else:
            worker.gaps.append(now - worker.seen_at)
            worker.role, worker.heartbeat, worker.seen_at = role, dict(body), now
        if role == "active":
            # Another worker that called itself active is older news (a fail-over): a standby now.
            for other in host.workers.values():
                if other is not worker and other.role == "active":
                    other.role = "standby"
            docker = body.get("docker") or {}
            host.samples.append((now, docker.get("latency_ms"), docker.get("containers_running")))
        self._refresh(host, now, force=True)
        return not was_live

    def event(self, routing_key: str, body: Mapping[str, Any]) -> bool:
        """An event of the events exchange; True when the host's workspaces should be listed again
        (a workspace container was created, started or destroyed: its ports and image come from
        the list)."""
        parts = routing_key.split(".")
        host_id = str(body.get("host_id") or parts[0])
        kind = str(body.get("type") or ".".join(parts[1:]))
        family = kind.split(".", 1)[0]
        host = self.hosts.get(host_id)
        relist = False
        text = kind
        if family == "container":
            container = body.get("container") or {}
            action = kind.split(".", 1)[1] if "." in kind else ""
            ws_id = container.get("workspace_id")
            name = ws_id or container.get("name") or str(container.get("id", ""))[:12]
            text = f"{name} {action}"
            if ws_id and host is not None:
                relist = self._container_action(host, str(ws_id), action)
            elif ws_id:
                relist = action in _RELIST_ACTIONS
        elif family == "network":
            network = body.get("network") or {}
            text = f"network {network.get('name') or network.get('id', '')} {kind.split('.', 1)[-1]}"
        elif family == "discovery":
            if kind == "discovery.snapshot":
                return False  # services come from the discovery view; a snapshot is no news
            service = body.get("service") or body.get("container") or {}
            what = service.get("domain") or service.get("container_name") or ""
            text = f"{kind.split('.', 1)[-1]} {what}" + (f": {body['reason']}" if body.get("reason") else "")
        elif kind == "workspace.expired":
            ws_id, action = str(body.get("workspace_id") or ""), str(body.get("action") or "")
            text = f"{ws_id} expired ({action})"
            if host is not None and ws_id in host.workspaces:
                if action == "removed":
                    self._drop_workspaces(host, [ws_id])
                else:
                    self._set_ws_state(host, ws_id, "exited")
            relist = True
        self.add_feed(kind="event", host_id=host_id, type=kind, text=text)
        return relist

    def result(self, routing_key: str, body: Mapping[str, Any]) -> None:
        """A result that did not succeed (the results exchange): into the feed, with its code."""
        status = str(body.get("status") or routing_key.rsplit(".", 1)[-1])
        if status == "succeeded":
            return
        error = body.get("error") or {}
        command_id = str(body.get("command_id") or "")
        self.add_feed(
            kind="failure",
            host_id=str(body.get("host_id") or routing_key.split(".", 1)[0]),
            type=str(body.get("type") or ""),
            text=str(error.get("message") or status),
            status=status,
            code=error.get("code"),
            command_id=command_id,
        )

    def workspaces(self, host_id: str, workspaces: Iterable[Mapping[str, Any]]) -> None:
        """A fresh ``workspace.list`` of ``host_id``: replaces what was known of it."""
        host = self.hosts.setdefault(host_id, _Host(host_id))
        new = {row["workspace_id"]: row for row in (workspace_row(ws, self.label_prefix) for ws in workspaces)}
        upsert = [row for ws_id, row in new.items() if host.workspaces.get(ws_id) != row]
        removed = [ws_id for ws_id in host.workspaces if ws_id not in new]
        host.workspaces = new
        host.listed_at = self.clock()
        if upsert or removed:
            self._emit("workspaces", {"host_id": host_id, "upsert": upsert, "remove": removed})

    def services(self, host_id: str, services: Iterable[Mapping[str, Any]]) -> None:
        """The discovered services of ``host_id`` now (replaces what was known)."""
        host = self.hosts.setdefault(host_id, _Host(host_id))
        rows = sorted(
            (
                {
                    "domain": str(s.get("domain", "")),
                    "port": s.get("port"),
                    "container_name": s.get("container_name"),
                    "container_id": str(s.get("container_id", ""))[:12],
                    "addresses": [f"{ip}:{s.get('port')}" for ip in (s.get("networks") or {}).values()],
                    "host_ports": [f"{k}→{v}" for k, v in (s.get("host_ports") or {}).items()],
                    "health": s.get("health"),
                }
                for s in services
            ),
            key=lambda r: (r["domain"], r["container_id"]),
        )
        if rows != host.services:
            host.services = rows
            self._emit("services", {"host_id": host_id, "services": rows})

    def add_feed(self, **item: Any) -> None:
        """One feed entry (``kind``, ``host_id``, ``type``, ``text`` and maybe ``code``)."""
        self._feed_seq += 1
        entry = {"id": self._feed_seq, "t": self.clock(), **item}
        self.feed.append(entry)
        self._emit("feed", entry)

    def tick(self) -> None:
        """Re-derive each host's status from the time since its last heartbeat (call every second:
        silence comes with no message) and tell the pages the server's time."""
        now = self.clock()
        for host in list(self.hosts.values()):
            lead = self._lead(host)
            if lead is not None and now - lead.seen_at > self.forget_after_s:
                del self.hosts[host.host_id]
                self._emit("forget", {"host_id": host.host_id})
                continue
            gone = [
                w.worker_id
                for w in host.workers.values()
                if w is not lead and now - w.seen_at > self.silent_intervals * self.interval_s(w)
            ]
            for worker_id in gone:  # a standby that stopped, or the old active after a fail-over
                del host.workers[worker_id]
            self._refresh(host, now, force=bool(gone))
        self._emit("tick", {"now": now})

    # --- output --------------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """The whole state, as the page's first message."""
        now = self.clock()
        return {
            "now": now,
            "bus": self.bus,
            "hosts": [self._host_json(h, now) for h in sorted(self.hosts.values(), key=lambda h: h.host_id)],
            "workspaces": {h.host_id: list(h.workspaces.values()) for h in self.hosts.values()},
            "services": {h.host_id: h.services for h in self.hosts.values() if h.services},
            "feed": list(self.feed),
        }

    # --- internals -----------------------------------------------------------------------------

    def _container_action(self, host: _Host, ws_id: str, action: str) -> bool:
        if action == "destroy":
            self._drop_workspaces(host, [ws_id])
            return False
        if action.startswith("health.") and ws_id in host.workspaces:
            row = dict(host.workspaces[ws_id], health=action.split(".", 1)[1])
            host.workspaces[ws_id] = row
            self._emit("workspaces", {"host_id": host.host_id, "upsert": [row], "remove": []})
            return False
        if action in _WS_STATES and ws_id in host.workspaces:
            self._set_ws_state(host, ws_id, _WS_STATES[action])
        return action in _RELIST_ACTIONS or ws_id not in host.workspaces

    def _set_ws_state(self, host: _Host, ws_id: str, state: str) -> None:
        row = host.workspaces.get(ws_id)
        if row is not None and row["state"] != state:
            row = host.workspaces[ws_id] = dict(row, state=state)
            self._emit("workspaces", {"host_id": host.host_id, "upsert": [row], "remove": []})

    def _drop_workspaces(self, host: _Host, ids: list[str]) -> None:
        gone = [i for i in ids if host.workspaces.pop(i, None) is not None]
        if gone:
            self._emit("workspaces", {"host_id": host.host_id, "upsert": [], "remove": gone})

    def interval_s(self, worker: _Worker) -> float:
        """The worker's heartbeat interval, as learnt from the gaps between its heartbeats."""
        if len(worker.gaps) < 1:
            return self.default_interval_s
        return min(300.0, max(0.2, statistics.median(worker.gaps)))

    def _lead(self, host: _Host) -> _Worker | None:
        """The worker whose heartbeat stands for the host: its active one, else its newest standby."""
        workers = sorted(host.workers.values(), key=lambda w: -w.seen_at)
        active = [w for w in workers if w.role == "active"]
        chosen = active or workers
        return chosen[0] if chosen else None

    def _status(self, host: _Host, now: float) -> str:
        lead = self._lead(host)
        if lead is None:
            return "silent"
        if now - lead.seen_at > self.silent_intervals * self.interval_s(lead):
            return "silent"
        return str(lead.heartbeat.get("status") or "unknown")

    def _refresh(self, host: _Host, now: float, *, force: bool) -> None:
        status = self._status(host, now)
        if status != host.status and host.workers:
            before = host.status
            host.status = status
            text = f"{before} → {status}" if before else f"first heartbeat: {status}"
            self.add_feed(kind="health", host_id=host.host_id, type="health", text=text)
            force = True
        if force:
            self._emit("host", self._host_json(host, now))

    def _host_json(self, host: _Host, now: float) -> dict[str, Any]:
        lead = self._lead(host)
        hb = lead.heartbeat if lead is not None else {}
        interval = self.interval_s(lead) if lead is not None else self.default_interval_s
        return {
            "host_id": host.host_id,
            "status": host.status or "silent",
            "reported_status": hb.get("status"),
            "role": lead.role if lead is not None else None,
            "worker_id": lead.worker_id if lead is not None else None,
            "standbys": sum(1 for w in host.workers.values() if w is not lead and w.role == "standby"),
            "seen_at": lead.seen_at if lead is not None else None,
            "interval_s": round(interval, 3),
            "silent_after_s": round(self.silent_intervals * interval, 3),
            "version": hb.get("version"),
            "uptime_s": hb.get("uptime_s"),
            "docker": hb.get("docker") or {},
            "commands": hb.get("commands") or {},
            "events": hb.get("events") or {},
            "broker": hb.get("broker"),
            "listed_at": host.listed_at,
            "spark": {
                "t": [round(t, 3) for t, _, _ in host.samples],
                "latency_ms": [lat for _, lat, _ in host.samples],
                "running": [run for _, _, run in host.samples],
            },
        }

    def live_hosts(self) -> list[str]:
        """Hosts that are not silent (those a ``workspace.list`` can reach)."""
        return sorted(h.host_id for h in self.hosts.values() if h.status != "silent")


def sse(kind: str, data: Any) -> bytes:
    """One server-sent-event frame (JSON has no raw newline, so one ``data:`` line)."""
    return f"event: {kind}\ndata: {json.dumps(data, separators=(',', ':'), default=str)}\n\n".encode()
