"""What a command may ask for, checked before any Docker call (contract: Policy)."""

from __future__ import annotations

from pathlib import PurePosixPath

from schemas import ErrorCode

from .errors import DockhandError, rejected
from .labels import Labels
from .settings import Settings

_DOCKER_HUB = "docker.io"


def image_registry(image: str) -> str:
    """The registry host of an image reference, Docker's way: the first path component
    when it looks like a host (has a dot or a port, or is ``localhost``), else Docker Hub."""
    first, slash, _ = image.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost"):
        return first
    return _DOCKER_HUB


class Policy:
    """The policy of one worker configuration."""

    def __init__(self, settings: Settings, labels: Labels) -> None:
        self._settings = settings
        self._labels = labels

    def check_image(self, image: str) -> None:
        allowed = self._settings.allowed_registries
        if allowed and image_registry(image) not in allowed:
            raise self._forbidden(
                f"image {image}: registry {image_registry(image)} is not in DOCKHAND_ALLOWED_REGISTRIES"
            )

    def check_labels(self, labels: dict[str, str], what: str) -> None:
        for key in labels:
            if self._labels.reserved(key):
                raise self._forbidden(f"{what}: label {key!r} uses a prefix reserved for dockhand")

    def check_capabilities(self, caps: list[str], what: str) -> None:
        allowed = set(self._settings.allowed_capabilities)
        for cap in caps:
            if cap.removeprefix("CAP_") not in allowed:
                raise self._forbidden(f"{what}: capability {cap} is not in DOCKHAND_ALLOWED_CAPABILITIES")

    def check_bind(self, source: str, what: str) -> str:
        """Return the normalised host path of an allowed bind mount, or raise ``forbidden``."""
        path = PurePosixPath(source)
        # Lexical check only: the worker may run in a container that does not see host paths,
        # so ".." is refused outright rather than resolved.
        if not path.is_absolute() or ".." in path.parts:
            raise self._forbidden(f"{what}: bind source {source!r} must be an absolute path without '..'")
        for root in self._settings.allowed_bind_roots:
            if path == PurePosixPath(root) or PurePosixPath(root) in path.parents:
                return str(path)
        raise self._forbidden(f"{what}: bind source {source} is outside DOCKHAND_ALLOWED_BIND_ROOTS")

    @staticmethod
    def _forbidden(message: str) -> DockhandError:
        return rejected(ErrorCode.FORBIDDEN, message)
