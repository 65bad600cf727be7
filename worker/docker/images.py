"""Images: inspect, pull (one pull shared by concurrent callers), ensure before a create."""

from __future__ import annotations

import asyncio
import urllib.parse

from dockhand.schemas import ErrorCode, RegistryAuth
from dockhand.schemas.results import ImageInfo, ImagePulled

from ..errors import DockhandError
from ..policy import explicit_registry, image_registry
from . import models
from .calls import JSON, DockerCalls, Remembered

_REMEMBERED = 256  # image references whose inspect a create reuses


class Images:
    """The images of this Docker host."""

    def __init__(self, ops: DockerCalls) -> None:
        self.ops = ops
        self._pulls: dict[tuple[str, str | None], asyncio.Future[None]] = {}
        self.facts: Remembered[str, JSON] = Remembered(ops, _REMEMBERED, _image_event)
        """Inspects by reference, for creates. What a reference means changes only by a pull,
        tag, untag, delete, import, load or commit, each an image event (or this worker's own
        pull or snapshot), which forgets every entry."""

    async def find(self, image: str) -> JSON | None:
        """The image's inspect data; ``None`` when it is not on the host."""
        # The reference goes into the URL path (/images/<name>/json). The grammar already rules
        # out "..", "%" and the like; quoting keeps anything else from ever being a path.
        path_safe = urllib.parse.quote(image, safe="/:@")
        return await self.ops.maybe(
            "image.inspect",
            lambda: self.ops.docker.images.inspect(path_safe),
            subject=f"image {image} on {self.ops.host_id}",
        )

    async def _known(self, image: str) -> JSON | None:
        """Like :meth:`find`, remembered while the event stream says nothing changed."""
        info = self.facts.get(image)
        if info is None:
            token = self.facts.token()
            info = await self.find(image)
            if info is not None:
                self.facts.put(image, info, token)
        return info

    async def ensure(self, image: str, policy: str, auth: RegistryAuth | None) -> JSON:
        """The image's inspect data, pulled first as the pull policy says."""
        if policy == "always":
            await self.pull(image, auth)
        info = await self._known(image)
        if info is None and policy == "missing":
            await self.pull(image, auth)
            info = await self._known(image)
        if info is None:
            raise DockhandError(
                ErrorCode.IMAGE_NOT_FOUND, f"image {image} not found on {self.ops.host_id} (pull: {policy})"
            )
        return info

    async def pull(self, image: str, auth: RegistryAuth | None) -> None:
        """Pull an image; concurrent pulls of one image (with one identity) share one pull."""
        self.ops.policy.check_image(image)
        key = (image, auth.username if auth else None)
        pending = self._pulls.get(key)
        if pending is None:
            pending = asyncio.ensure_future(self._pull(image, auth))
            self._pulls[key] = pending
            pending.add_done_callback(lambda _: self._pulls.pop(key, None))
        # shield: one waiter's cancellation must not cancel the pull the others wait for.
        await asyncio.shield(pending)

    async def _pull(self, image: str, auth: RegistryAuth | None) -> None:
        reference = image
        header: JSON | None = None
        if auth is not None:
            registry = auth.server_address or image_registry(image)
            header = {
                "username": auth.username,
                "password": auth.password.get_secret_value(),
                "serveraddress": registry,
            }
            # aiodocker takes the registry host from the name when auth is set, so Docker Hub
            # names need their canonical form ("busybox" -> "docker.io/library/busybox").
            if explicit_registry(image) is None:
                reference = f"docker.io/{reference if '/' in reference else 'library/' + reference}"

        async def pull() -> None:
            async with asyncio.timeout(self.ops.settings.pull_timeout_s):
                await self.ops.docker.images.pull(reference, auth=header)

        try:
            await self.ops.call("image.pull", pull, subject=f"image {image} on {self.ops.host_id}", pulling=True)
        finally:
            self.facts.clear()  # a reference may mean another image now (its event follows)

    async def pulled(self, image: str, auth: RegistryAuth | None) -> ImagePulled:
        """``image.pull``: pull, then say what was pulled (its id and digest)."""
        await self.pull(image, auth)
        info = await self.find(image)
        if info is None:
            raise DockhandError(
                ErrorCode.IMAGE_PULL_FAILED, f"image {image}: pulled but not found on {self.ops.host_id}"
            )
        return models.image_pulled(image, info)

    async def inspect(self, image: str) -> ImageInfo:
        """``image.inspect``, under the registry policy too: an image from elsewhere is none of
        the sender's business."""
        self.ops.policy.check_image(image)
        info = await self.find(image)
        if info is None:
            raise DockhandError(ErrorCode.IMAGE_NOT_FOUND, f"image {image} not found on {self.ops.host_id}")
        return models.image_info(info)


def _image_event(facts: Remembered[str, JSON], event: JSON) -> None:
    """Anything done to any image: a reference may mean another image now."""
    if event.get("Type") == "image":
        facts.clear()
