"""Networks: ensure, join (under DNS names no one else answers to), leave, remove.

Only networks this host manages are changed. A workspace may join those, or one named in
DOCKHAND_ALLOWED_NETWORKS; never Docker's host/none networks.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict

from aiodocker.containers import DockerContainer

from dockhand.schemas import ErrorCode
from dockhand.schemas.commands import NetworkEnsure
from dockhand.schemas.results import NetworkAttachment, NetworkEnsured, NetworkRemoved

from .. import tenancy
from ..errors import DockhandError
from . import handles
from .calls import JSON, DockerCalls, Remembered
from .containers import Containers
from .models import listed

log = logging.getLogger("dockhand.docker")

INHIBIT_IPV4 = "com.docker.network.bridge.inhibit_ipv4"
"""The bridge option that keeps the host's own address off a network (Docker 20.10 has it)."""

_REMEMBERED = 1024  # networks, and (container, network) endpoints, whose facts are kept


def egress_free(net: JSON) -> bool:
    """Whether a network reaches nothing beyond its members: internal (no route out) and a bridge
    without an address on the host (so not the host's services either)."""
    return bool(net.get("Internal")) and (net.get("Options") or {}).get(INHIBIT_IPV4) == "true"


class Networks:
    """The networks of this Docker host."""

    def __init__(self, ops: DockerCalls, containers: Containers) -> None:
        self.ops = ops
        self.containers = containers
        self._create_locks: dict[str, asyncio.Lock] = {}
        self._attach_locks: dict[str, asyncio.Lock] = {}
        self.facts: Remembered[str, JSON] = Remembered(ops, _REMEMBERED, _network_event)
        """Inspects by the reference a workspace joins with (name or id), ``Containers`` left out.

        Docker never changes a network's name, id, driver, labels or options; a name can only
        come to mean another network through a destroy and a create, whose events (or this
        worker's own create or delete) forget every entry."""
        self._aliases: OrderedDict[tuple[str, str], tuple[str, str, list[str]]] = OrderedDict()
        """(container id, network name) -> (endpoint id, container name, its aliases there).

        Docker's list has each container's endpoint ids but not its aliases, and an endpoint's
        aliases never change while it lives (a new connect is a new endpoint, with a new id)."""
        containers.inspected.append(self._note_endpoints)

    def _subject(self, ref: str) -> str:
        return f"network {ref} on {self.ops.host_id}"

    # --- finding ---------------------------------------------------------------------------

    async def _show(self, ref: str, subject: str) -> JSON | None:
        """Inspect a network by name or id (Docker also matches an id prefix); a name that a
        create race made ambiguous is deduplicated first."""
        try:
            return await self.ops.maybe("network.inspect", handles.network(self.ops.docker, ref).show, subject=subject)
        except DockhandError as exc:
            if "ambiguous" not in exc.message:
                raise
            return await self._deduplicate(ref)

    async def find(self, name: str) -> JSON | None:
        """The network with exactly this name or id; ``None`` when there is none."""
        info = await self._show(name, self._subject(name))
        # Docker also matches an id prefix; only an exact name counts.
        if info is None or (info.get("Name") != name and info.get("Id") != name):
            return None
        return info

    async def _deduplicate(self, name: str) -> JSON | None:
        """Two processes (a worker and its standby) may create one network at the same moment,
        and Docker's duplicate check is not atomic. Keep the oldest — every process picks the
        same one — and remove the empty managed duplicates."""
        ops = self.ops
        subject = self._subject(name)
        listed_networks: list[JSON] = await ops.call(
            "network.list", lambda: ops.docker.networks.list(filters={"name": [name]}), subject=subject
        )
        same = sorted(
            (n for n in listed_networks if n.get("Name") == name), key=lambda n: (n.get("Created", ""), n["Id"])
        )
        if not same:
            return None
        keep, *others = same
        for other in others:
            network = handles.network(ops.docker, other["Id"])
            info = await ops.maybe("network.inspect", network.show, subject=subject)
            if info and ops.labels.is_managed_by(info.get("Labels"), ops.host_id) and not info.get("Containers"):
                self.facts.clear()
                with contextlib.suppress(DockhandError):  # another process removed it first
                    await ops.call("network.delete", network.delete, subject=subject)
        log.warning("%s existed %d times (a create race); kept %s", subject, len(same), keep["Id"][:12])
        return await ops.maybe("network.inspect", handles.network(ops.docker, keep["Id"]).show, subject=subject)

    async def delete_if_empty(self, network_id: str, subject: str) -> None:
        """Remove a network if no container is on it (gone already: nothing to do)."""
        network = handles.network(self.ops.docker, network_id)
        info = await self.ops.maybe("network.inspect", network.show, subject=subject)
        if info is not None and not info.get("Containers"):
            self.facts.clear()
            await self.ops.call("network.delete", network.delete, subject=subject)

    def _check_owner(self, info: JSON, subject: str) -> None:
        """Tenancy: a network this host manages must be the sender's. (Networks it does not manage
        are not anyone's; whether a workspace may use one is the allowed-networks policy's call.)"""
        labels = info.get("Labels")
        if self.ops.labels.is_managed_by(labels, self.ops.host_id) and not self.ops.owns(labels):
            raise tenancy.forbidden(subject)

    async def joinable(self, ref: str, subject: str) -> JSON | None:
        """The network ``ref`` names, if a workspace may join it; ``None`` when there is none.

        Joinable: a network this host manages, or one in DOCKHAND_ALLOWED_NETWORKS (or the
        default network). Never Docker's host/none networks, by name or id; its default
        ``bridge`` only when allowed; never a network that ``ref`` matches by an id prefix only.
        """
        policy = self.ops.policy
        policy.check_network_name(ref, subject)
        what = self._subject(ref)
        info = self.facts.get(ref)
        if info is None:
            token = self.facts.token()
            info = await self._show(ref, what)
            if info is None:
                return None
            # The facts only: what the sender may do with the network is checked below, each time.
            facts = {k: v for k, v in info.items() if k != "Containers"}
            exact = [str(info.get("Name", "")), str(info.get("Id", ""))]
            if ref in exact:  # by its name and its id (a partial id is refused below)
                for key in exact:
                    self.facts.put(key, facts, token)
        name = str(info.get("Name", ""))
        if name != ref and info.get("Id") != ref:
            raise DockhandError(
                ErrorCode.FORBIDDEN, f"{subject}: {ref} is only a partial id of network {name}; give its name"
            )
        self._check_owner(info, what)
        if info.get("Driver") in {"host", "null"}:
            raise DockhandError(
                ErrorCode.FORBIDDEN, f"{subject}: network {name} uses the {info['Driver']} driver; never joinable"
            )
        policy.check_network_name(name, subject)  # an id of Docker's bridge network
        default_bridge = (info.get("Options") or {}).get("com.docker.network.bridge.default_bridge") == "true"
        managed = self.ops.labels.is_managed_by(info.get("Labels"), self.ops.host_id)
        if (default_bridge or not managed) and not policy.network_allowed(name):
            raise DockhandError(
                ErrorCode.FORBIDDEN,
                f"{subject}: network {name} is not managed by this host and not in DOCKHAND_ALLOWED_NETWORKS",
            )
        return info

    # --- DNS names -------------------------------------------------------------------------

    def attach_lock(self, network: str) -> asyncio.Lock:
        """Joins of one network one at a time: the alias check holds until the endpoint exists."""
        return self._attach_locks.setdefault(network, asyncio.Lock())

    async def check_aliases(
        self,
        net: JSON,
        aliases: list[str],
        own_id: str | None,
        subject: str,
        *,
        workspaces: bool,
        own_name: str | None = None,
    ) -> None:
        """Refuse a DNS name on ``net`` that already answers for another container there: its
        name, short id or an alias (running or not: a stopped container's aliases come back at
        its start). With ``workspaces``, also any workspace id / container name of this host,
        so no alias is parked on a name a workspace may still join with. Case-insensitive, as DNS is.
        The container ``own_id`` (or named ``own_name``) is the one joining: left out."""
        # By name too: a container that was never started has no network id on its endpoint yet.
        members = await self.containers.matching({"network": [net["Id"], net["Name"]]}, self._subject(net["Name"]))
        taken: dict[str, str] = {}
        unknown: list[DockerContainer] = []
        for member in members:
            if member.id == own_id or (own_name and f"/{own_name}" in (listed(member, "Names", None) or [])):
                continue
            known = self._known_aliases(member, net["Name"])
            if known is None:
                unknown.append(member)
                continue
            name, theirs = known
            for dns_name in [name, member.id[:12], *theirs]:
                taken.setdefault(dns_name.lower(), f"container {name}")
        # Only the members whose aliases are not known from their endpoint's id (not running,
        # joined or renamed since) are inspected.
        for info in await self.containers.inspect_each(unknown):  # noted by _note_endpoints
            name = str(info.get("Name", "")).lstrip("/")
            endpoint = ((info.get("NetworkSettings") or {}).get("Networks") or {}).get(net.get("Name")) or {}
            for dns_name in [name, info["Id"][:12], *(endpoint.get("Aliases") or [])]:
                taken.setdefault(dns_name.lower(), f"container {name}")
        if workspaces:
            for dns_name, workspace in self._workspace_names(await self.containers.list_managed(), own_id):
                taken.setdefault(dns_name, workspace)
        for alias in aliases:
            holder = taken.get(alias.lower())
            if holder is not None:
                raise DockhandError(
                    ErrorCode.FORBIDDEN,
                    f"{subject}: {alias} already names {holder} on network {net.get('Name')}; "
                    "a DNS name is never taken over",
                )

    def _known_aliases(self, member: DockerContainer, network: str) -> tuple[str, list[str]] | None:
        """A listed member's name and aliases on ``network``, if known for its endpoint now."""
        endpoint = ((listed(member, "NetworkSettings", None) or {}).get("Networks") or {}).get(network) or {}
        endpoint_id = endpoint.get("EndpointID")
        names = listed(member, "Names", None) or []
        name = str(names[0]).lstrip("/") if names else ""
        known = self._aliases.get((member.id, network))
        if not endpoint_id or known is None or known[:2] != (endpoint_id, name):
            return None
        self._aliases.move_to_end((member.id, network))
        return name, known[2]

    def _note_endpoints(self, info: JSON) -> None:
        """A container was inspected: remember its aliases on each network it has an endpoint on."""
        name = str(info.get("Name", "")).lstrip("/")
        for network, endpoint in ((info.get("NetworkSettings") or {}).get("Networks") or {}).items():
            self._remember_aliases(str(info["Id"]), str(network), name, endpoint or {})

    def _remember_aliases(self, container_id: str, network: str, name: str, endpoint: JSON) -> None:
        endpoint_id = endpoint.get("EndpointID")
        if not endpoint_id:  # no endpoint (never started, or stopped): aliases can change unseen
            self._aliases.pop((container_id, network), None)
            return
        self._aliases[(container_id, network)] = (str(endpoint_id), name, list(endpoint.get("Aliases") or []))
        self._aliases.move_to_end((container_id, network))
        while len(self._aliases) > _REMEMBERED:
            self._aliases.popitem(last=False)

    def _workspace_names(self, managed: list[DockerContainer], own_id: str | None) -> list[tuple[str, str]]:
        """(DNS name, holder) for each workspace id and container name of this host's workspaces."""
        names: list[tuple[str, str]] = []
        for container in managed:
            if container.id == own_id:
                continue
            labels = listed(container, "Labels", {}) or {}
            workspace_id = labels.get(self.ops.labels.workspace_id)
            for dns_name in [workspace_id or "", *(n.lstrip("/") for n in listed(container, "Names", []))]:
                if dns_name:
                    names.append((dns_name.lower(), f"workspace {workspace_id}"))
        return names

    # --- the commands ----------------------------------------------------------------------

    async def ensure(self, p: NetworkEnsure) -> NetworkEnsured:
        """``network.ensure``: the network, made if it does not exist."""
        ops = self.ops
        subject = self._subject(p.name)
        ops.policy.check_labels(p.labels, subject)
        ops.policy.check_network_driver(p.driver, subject)
        # One create per name at a time: Docker allows duplicate names for racing creates.
        async with self._create_locks.setdefault(p.name, asyncio.Lock()):
            info = await self.find(p.name)
            if info is not None:
                self._check_owner(info, subject)
                return NetworkEnsured(network_id=info["Id"], name=p.name, created=False)
            config: JSON = {
                "Name": p.name,
                "Driver": p.driver,
                "Internal": p.internal,
                "Attachable": p.attachable,
                "CheckDuplicate": True,
                "Labels": {**p.labels, **ops.managed_labels()},
            }
            self.facts.clear()  # the name means a network from now on
            if p.internal and p.driver == "bridge":
                # Docker gives even an internal bridge an address on the host (its gateway),
                # through which a container reaches every service the host listens on: none.
                config["Options"] = {INHIBIT_IPV4: "true"}
            network = await ops.call("network.create", lambda: ops.docker.networks.create(config), subject=subject)
            return NetworkEnsured(network_id=network.id, name=p.name, created=True)

    async def connect(self, network: str, workspace_id: str, aliases: list[str]) -> NetworkAttachment:
        """Join a network this host manages (or an allowed one) under aliases no one else answers to."""
        ops = self.ops
        subject = f"{ops.subject(workspace_id)}, network {network}"
        ops.policy.check_network_name(network, subject)
        info = await self.containers.get(workspace_id)
        net = await self.joinable(network, subject)
        if net is None:
            raise DockhandError(ErrorCode.NOT_FOUND, f"network {network} not found on {ops.host_id}")
        if (info["Config"].get("Labels") or {}).get(ops.labels.egress) == "false" and not egress_free(net):
            raise DockhandError(
                ErrorCode.FORBIDDEN,
                f"{subject}: the workspace is egress-free and the network is not (it joins only internal "
                "networks this host made)",
            )
        if net["Name"] not in (info["NetworkSettings"].get("Networks") or {}):
            async with self.attach_lock(net["Name"]):
                await self.check_aliases(net, aliases or [workspace_id], info["Id"], subject, workspaces=True)
                config = {"Container": info["Id"], "EndpointConfig": {"Aliases": aliases or [workspace_id]}}
                await ops.call(
                    "network.connect", lambda: handles.network(ops.docker, net["Id"]).connect(config), subject=subject
                )
        return NetworkAttachment(network=network, workspace_id=workspace_id)

    async def disconnect(self, network: str, workspace_id: str) -> NetworkAttachment:
        """Leave a network (not on it: nothing to do)."""
        ops = self.ops
        info = await self.containers.get(workspace_id)
        net = await self.find(network)
        if net is not None and tenancy.restricted() is not None:  # under tenancy the network must be the sender's too
            self._check_owner(net, self._subject(network))
        # A container's networks are keyed by name, and the command may name the network by id.
        name = net["Name"] if net is not None else network
        if name in (info["NetworkSettings"].get("Networks") or {}):
            config = {"Container": info["Id"], "Force": False}
            ref = net["Id"] if net is not None else network
            await ops.call(
                "network.disconnect",
                lambda: handles.network(ops.docker, ref).disconnect(config),
                subject=f"{ops.subject(workspace_id)}, network {network}",
            )
        return NetworkAttachment(network=network, workspace_id=workspace_id)

    async def remove(self, name: str) -> NetworkRemoved:
        """``network.remove``: only a network this host manages, and only when nothing is on it."""
        subject = self._subject(name)
        info = await self.find(name)
        if info is None:
            return NetworkRemoved(name=name, removed=False)
        if not self.ops.labels.is_managed_by(info.get("Labels"), self.ops.host_id):
            raise DockhandError(ErrorCode.FORBIDDEN, f"{subject} is not managed by this host; left untouched")
        self._check_owner(info, subject)
        if info.get("Containers"):
            raise DockhandError(ErrorCode.CONFLICT, f"{subject} is in use by {len(info['Containers'])} container(s)")
        self.facts.clear()
        await self.ops.call("network.delete", handles.network(self.ops.docker, info["Id"]).delete, subject=subject)
        return NetworkRemoved(name=name, removed=True)


def _network_event(facts: Remembered[str, JSON], event: JSON) -> None:
    """A network made or removed (by anyone): a name may now mean another network."""
    if event.get("Type") == "network" and event.get("Action") in {"create", "destroy"}:
        facts.clear()
