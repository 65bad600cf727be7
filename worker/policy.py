"""What a command may ask for, checked before any Docker call (contract: Policy)."""

from __future__ import annotations

import contextlib
import os
from pathlib import PurePosixPath

from pydantic import TypeAdapter, ValidationError

from dockhand.schemas import ErrorCode
from dockhand.schemas._base import ImageRef

from .errors import DockhandError, rejected
from .labels import Labels
from .settings import Settings

_DOCKER_HUB = "docker.io"
_HUB_ALIASES = frozenset({"docker.io", "index.docker.io"})  # Docker rewrites the legacy name to docker.io
# Label namespaces Docker reserves for itself (docs: "Docker object labels").
_DOCKER_NAMESPACES = ("com.docker", "io.docker", "org.dockerproject")
_IMAGE_REF: TypeAdapter[str] = TypeAdapter(ImageRef)


def explicit_registry(image: str) -> str | None:
    """The registry named in an image reference, as written, or ``None`` for a Docker Hub
    shorthand: Docker takes the first component as a host only when it has a dot or a port,
    or is ``localhost`` (the ImageRef grammar admits no other first component before a "/")."""
    first, slash, _ = image.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost"):
        return first
    return None


def normalise_registry(registry: str) -> str:
    """A registry host compared the way DNS does (case-insensitively), Hub's aliases as ``docker.io``."""
    lowered = registry.lower()
    return _DOCKER_HUB if lowered in _HUB_ALIASES else lowered


def image_registry(image: str) -> str:
    """The registry an image reference is pulled from, normalised: lower case, ``docker.io``
    for Docker Hub (shorthands and ``index.docker.io`` alike)."""
    registry = explicit_registry(image)
    return _DOCKER_HUB if registry is None else normalise_registry(registry)


class Policy:
    """The policy of one worker configuration."""

    def __init__(self, settings: Settings, labels: Labels) -> None:
        self._settings = settings
        self._labels = labels

    def check_image(self, image: str) -> None:
        """The reference is in Docker's grammar (checked again here: it ends up in API URL
        paths) and its registry is allowed, compared case-insensitively."""
        try:
            _IMAGE_REF.validate_python(image)
        except ValidationError:
            raise rejected(ErrorCode.INVALID_COMMAND, f"image {image[:200]!r} is not a valid image reference") from None
        if self.is_snapshot(image):
            return  # never pulled: a snapshot must be on this host, made by it (checked at use)
        allowed = {normalise_registry(r) for r in self._settings.allowed_registries}
        if allowed and image_registry(image) not in allowed:
            raise self._forbidden(
                f"image {image}: registry {image_registry(image)} is not in DOCKHAND_ALLOWED_REGISTRIES"
            )

    def is_snapshot(self, image: str) -> bool:
        """Whether a reference names a snapshot (under DOCKHAND_SNAPSHOT_REPOSITORY)."""
        return image.startswith(self._settings.snapshot_repository + "/")

    def check_labels(self, labels: dict[str, str], what: str) -> None:
        """User labels must not use dockhand's prefixes nor Docker's namespaces, in any case."""
        for key in labels:
            if self._labels.reserved(key):
                raise self._forbidden(f"{what}: label {key!r} uses a prefix reserved for dockhand")
            lowered = key.lower()
            if any(lowered == ns or lowered.startswith(ns + ".") for ns in _DOCKER_NAMESPACES):
                raise self._forbidden(f"{what}: label {key!r} is in a namespace Docker reserves for itself")

    def check_capabilities(self, caps: list[str], what: str) -> None:
        allowed = set(self._settings.allowed_capabilities)
        for cap in caps:
            if cap.removeprefix("CAP_") not in allowed:
                raise self._forbidden(f"{what}: capability {cap} is not in DOCKHAND_ALLOWED_CAPABILITIES")

    def check_bind(self, source: str, what: str) -> str:
        """Return the resolved host path of an allowed bind mount, or raise (``rejected``).

        The source must lie under an allowed root both as written and as Docker will resolve
        it: every component, symlinks included (``realpath``, strict: it must exist). The
        worker therefore has to see host paths at the same location as the daemon (run it on
        the host, or mount each root at the same path); a path it cannot see is refused.
        Docker is then given the resolved path, so what was checked is what is mounted.
        """
        path = PurePosixPath(source)
        if not path.is_absolute() or ".." in path.parts:
            raise self._forbidden(f"{what}: bind source {source!r} must be an absolute path without '..'")
        roots = [PurePosixPath(root) for root in self._settings.allowed_bind_roots]
        if not any(_within(path, root) for root in roots):
            raise self._forbidden(f"{what}: bind source {source} is outside DOCKHAND_ALLOWED_BIND_ROOTS")
        try:
            resolved = PurePosixPath(os.path.realpath(source, strict=True))
        except OSError as exc:  # missing, a symlink loop, a component that is not a directory
            raise rejected(
                ErrorCode.INVALID_COMMAND,
                f"{what}: bind source {source} does not resolve to an existing path on {self._settings.host_id} "
                f"({exc.strerror or type(exc).__name__}); it must exist and be visible to the worker "
                "at the same path as to the Docker daemon",
            ) from exc
        if not any(_within(resolved, real) for real in self.resolved_bind_roots()):
            raise self._forbidden(
                f"{what}: bind source {source} resolves to {resolved}, outside DOCKHAND_ALLOWED_BIND_ROOTS"
            )
        return str(resolved)

    def resolved_bind_roots(self) -> list[PurePosixPath]:
        """The allowed bind roots as the host resolves them now (a root may itself be a symlink);
        a root that does not exist admits nothing."""
        roots = []
        for root in self._settings.allowed_bind_roots:
            with contextlib.suppress(OSError):
                roots.append(PurePosixPath(os.path.realpath(root, strict=True)))
        return roots

    def check_network_name(self, name: str, what: str) -> None:
        """Docker's predefined networks by name, in any case: ``host``/``none`` never (no
        isolation), ``bridge`` (every container's default network) only if allowed."""
        lowered = name.lower()
        if lowered in {"host", "none"}:
            raise self._forbidden(f"{what}: network {name} is Docker's {lowered} network; never joinable")
        if lowered == "bridge" and not self.network_allowed(name):
            raise self._forbidden(
                f"{what}: network {name} is Docker's default bridge; not in DOCKHAND_ALLOWED_NETWORKS"
            )

    def network_allowed(self, name: str) -> bool:
        """Whether a network this host does not manage may be joined anyway: it is listed in
        DOCKHAND_ALLOWED_NETWORKS or is the configured default network."""
        return name in self._settings.allowed_networks or name == self._settings.default_network

    def check_network_driver(self, driver: str, what: str) -> None:
        if driver not in self._settings.allowed_network_drivers:
            raise self._forbidden(
                f"{what}: driver {driver} is not in DOCKHAND_ALLOWED_NETWORK_DRIVERS "
                f"({', '.join(self._settings.allowed_network_drivers) or 'none'})"
            )

    @staticmethod
    def _forbidden(message: str) -> DockhandError:
        return rejected(ErrorCode.FORBIDDEN, message)


def _within(path: PurePosixPath, root: PurePosixPath) -> bool:
    return path == root or root in path.parents


def binds_conflict(a: str, a_read_only: bool, b: str, b_read_only: bool) -> bool:
    """Whether two bind sources (resolved host paths) may not coexist on one host.

    One strictly inside the other lets the container with the outer one, if it can write,
    replace a component of the inner source with a symlink; Docker resolves bind sources
    again at every start, so the inner workspace's next (re)start would mount wherever that
    symlink points; and a writable inner bind is where symlinks for deeper binds get planted.
    Equal sources are fine: a mount point cannot be renamed from inside. Kept conservative:
    only two read-only binds may nest.
    """
    if a_read_only and b_read_only:
        return False
    pa, pb = PurePosixPath(a), PurePosixPath(b)
    return pa != pb and (pa in pb.parents or pb in pa.parents)
