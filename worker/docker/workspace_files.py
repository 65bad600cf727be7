"""``workspace.put_files`` / ``get_file``, through Docker's archive API (tar building and
parsing: worker/files.py)."""

from __future__ import annotations

import base64
import tarfile
from functools import partial

import aiohttp
from aiodocker.exceptions import DockerError

from dockhand.schemas import ErrorCode
from dockhand.schemas.commands import WorkspaceGetFile, WorkspacePutFiles, base64_decoded_size
from dockhand.schemas.results import FileContent, FilesWritten

from .. import files
from ..errors import DockhandError, rejected
from .calls import JSON, DockerCalls
from .containers import Containers


class WorkspaceFiles:
    """Files into and out of a workspace, running or stopped."""

    def __init__(self, ops: DockerCalls, containers: Containers) -> None:
        self.ops = ops
        self.containers = containers

    def check(self, p: WorkspacePutFiles) -> None:
        """``rejected`` up front: files over DOCKHAND_MAX_FILE_BYTES (decoded, all together)."""
        total = sum(base64_decoded_size(f.content) for f in p.files)
        if total > self.ops.settings.max_file_bytes:
            raise rejected(
                ErrorCode.INVALID_COMMAND,
                f"files of {total} bytes in all exceed DOCKHAND_MAX_FILE_BYTES ({self.ops.settings.max_file_bytes})",
            )

    async def put(self, p: WorkspacePutFiles) -> FilesWritten:
        """Write the files (parents created, running or stopped workspace): one archive per
        mount point they fall under, so files in a volume of a read-only workspace still go in."""
        self.check(p)
        info = await self.containers.get(p.workspace_id)
        subject = self.ops.subject(p.workspace_id)
        _check_not_tmpfs(info, [f.path for f in p.files], subject)
        contents = files.decoded((f.path, f.content, f.mode) for f in p.files)
        points = [str(m.get("Destination") or "") for m in info.get("Mounts") or []]
        for root, members in files.group_by_root(contents, points).items():
            archive = files.build_archive(members)
            # noOverwriteDirNonDir: a file never replaces a directory (Docker would delete it).
            params = {"path": root, "noOverwriteDirNonDir": "true"}
            try:
                await self.ops.call(
                    "container.put_archive", partial(self._put_archive, info["Id"], params, archive), subject=subject
                )
            except DockhandError as exc:
                raise _archive_refusal(exc, subject) from exc
        return FilesWritten(
            workspace_id=p.workspace_id, paths=[f.path for f in p.files], bytes=sum(len(c[1]) for c in contents)
        )

    async def _put_archive(self, container_id: str, params: JSON, archive: bytes) -> None:
        async with self.ops.docker._query(
            f"containers/{container_id}/archive",
            method="PUT",
            params=params,
            data=archive,
            headers={"Content-Type": "application/x-tar"},
        ) as response:
            # aiodocker hands the response over unreleased: give its connection back to the pool.
            response.close()

    async def get(self, p: WorkspaceGetFile) -> FileContent:
        """Read one regular file (a symlink: its target), at most ``max_bytes`` (capped at
        DOCKHAND_MAX_FILE_BYTES) of it; the archive is read only that far."""
        info = await self.containers.get(p.workspace_id)
        _check_not_tmpfs(info, [p.path], self.ops.subject(p.workspace_id))
        limit = min(p.max_bytes, self.ops.settings.max_file_bytes)
        path = p.path
        for _ in range(2):  # Docker's stat resolves a symlink's whole chain: one hop is enough
            subject = f"file {path} in {self.ops.subject(p.workspace_id)}"
            read = await self.ops.call(
                "container.get_archive", partial(self._read_file, info["Id"], path, limit, subject), subject=subject
            )
            if isinstance(read, str):
                path = read
                continue
            member, data = read
            return FileContent(
                path=p.path,
                content=base64.b64encode(data).decode(),
                size=member.size,
                mode=member.mode & 0o7777,
                truncated=member.size > len(data),
            )
        raise DockhandError(
            ErrorCode.INVALID_COMMAND, f"file {p.path} in {self.ops.subject(p.workspace_id)}: a symlink loop"
        )

    async def _read_file(
        self, container_id: str, path: str, limit: int, subject: str
    ) -> tuple[tarfile.TarInfo, bytes] | str:
        """The file's tar header and first ``limit`` bytes, or a symlink's target path. Refusals
        are raised as contract errors here (never retried: they are answers, not faults)."""
        async with self.ops.docker._query(f"containers/{container_id}/archive", params={"path": path}) as response:
            try:
                return await _read_member(response, path, limit, subject)
            finally:
                # Unreleased, a response holds its pooled connection; the unread rest of the
                # archive (a truncated read, a directory) is dropped with the connection.
                response.close()


def _check_not_tmpfs(info: JSON, paths: list[str], subject: str) -> None:
    points = files.tmpfs_points(info)
    for path in paths:
        point = files.within(path, points)
        if point is not None:
            raise DockhandError(
                ErrorCode.INVALID_COMMAND,
                f"{subject}: {path} is on the tmpfs mount {point}, which Docker's archive API cannot reach "
                "(a file put there would be hidden under it)",
            )


def _archive_refusal(exc: DockhandError, subject: str) -> DockhandError:
    """Docker 20.10 answers a refused extraction with a plain 500: an answer about the request
    (a read-only root filesystem, a path through a file), not a daemon fault."""
    cause = exc.__cause__
    if exc.code is not ErrorCode.INTERNAL or not isinstance(cause, DockerError):
        return exc
    detail = cause.message.strip()
    if "read-only" in detail.lower():
        return DockhandError(
            ErrorCode.FORBIDDEN,
            f"{subject}: its root filesystem is read-only (read_only: true); only paths in its volumes "
            f"can be written ({detail})",
        )
    return DockhandError(ErrorCode.INVALID_COMMAND, f"{subject}: Docker refused to write the files: {detail}")


async def _read_member(
    response: aiohttp.ClientResponse, path: str, limit: int, subject: str
) -> tuple[tarfile.TarInfo, bytes] | str:
    stat = files.parse_stat(response.headers.get(files.STAT_HEADER))
    if stat is not None and stat.is_symlink and stat.link_target and stat.link_target != path:
        return stat.link_target
    if stat is not None and stat.is_dir:
        raise DockhandError(ErrorCode.INVALID_COMMAND, f"{subject} is a directory; get_file reads one file")
    if stat is not None and not stat.is_regular:
        raise DockhandError(ErrorCode.INVALID_COMMAND, f"{subject} is not a regular file")
    head = bytearray()
    member: tarfile.TarInfo | None = None
    async for chunk in response.content.iter_chunked(64 * 1024):
        head += chunk
        if member is None:
            member = files.first_member(bytes(head))
            if member is None and len(head) > files.MAX_HEADER_BYTES:
                break
        if member is not None and len(head) >= member.offset_data + min(member.size, limit):
            break  # the rest of the file is not wanted: leave it unread
    if member is None:
        member = files.first_member(bytes(head))
    if member is None or not member.isreg():
        raise DockhandError(ErrorCode.INVALID_COMMAND, f"{subject}: Docker's archive holds no regular file")
    want = min(member.size, limit)
    data = bytes(head[member.offset_data : member.offset_data + want])
    if len(data) < want:
        raise DockhandError(ErrorCode.INTERNAL, f"{subject}: the archive ended early", retryable=True)
    return member, data
