"""Tar archives for ``workspace.put_files`` and ``workspace.get_file`` (Docker's archive API).

``PUT /containers/{id}/archive?path=<dir>`` extracts a tar under an existing directory, and
``GET ...?path=<file>`` answers with a tar of that file plus its stat in the
``X-Docker-Container-Path-Stat`` header. The archives built here hold regular files only, no
directory members: Docker creates missing parents itself (0755, root), and a directory member
would re-apply its own mode and owner to a directory that exists (``/tmp`` would lose its 1777).
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import posixpath
import tarfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

STAT_HEADER = "X-Docker-Container-Path-Stat"

# Go's os.FileMode type bits, as Docker's path stat reports them.
_GO_DIR = 1 << 31
_GO_SYMLINK = 1 << 27
# device, named pipe, socket, char device, irregular
_GO_TYPE = _GO_DIR | _GO_SYMLINK | 1 << 26 | 1 << 25 | 1 << 24 | 1 << 21 | 1 << 19

MAX_HEADER_BYTES = 64 * 1024
"""A file's tar headers (a PAX record for a long name included) never come near this."""


@dataclass(frozen=True, slots=True)
class PathStat:
    """Docker's stat of a container path (``X-Docker-Container-Path-Stat``)."""

    name: str
    size: int
    mode: int  # Go os.FileMode
    link_target: str

    @property
    def is_dir(self) -> bool:
        return bool(self.mode & _GO_DIR)

    @property
    def is_symlink(self) -> bool:
        return bool(self.mode & _GO_SYMLINK)

    @property
    def is_regular(self) -> bool:
        return not self.mode & _GO_TYPE


def parse_stat(header: str | None) -> PathStat | None:
    """The stat header's value (base64 of JSON), or ``None`` when absent or unreadable."""
    if not header:
        return None
    try:
        data = json.loads(base64.b64decode(header))
        return PathStat(
            name=str(data.get("name", "")),
            size=int(data.get("size") or 0),
            mode=int(data.get("mode") or 0),
            link_target=str(data.get("linkTarget") or ""),
        )
    except (ValueError, TypeError, AttributeError, binascii.Error):
        return None


def mount_root(path: str, mount_points: Iterable[str]) -> str:
    """The directory an archive for ``path`` is put at: the deepest mount point holding it, else ``/``.

    Docker decides from that directory whether a write goes to a volume, so on a read-only root
    filesystem a file under a writable volume can still be written."""
    best = "/"
    for point in mount_points:
        point = posixpath.normpath(point) if point else "/"
        if point != "/" and path.startswith(point + "/") and len(point) > len(best):
            best = point
    return best


def tmpfs_points(info: dict[str, Any]) -> list[str]:
    """The tmpfs mount points of a container inspect (``Mounts`` of type tmpfs, ``HostConfig.Tmpfs``).

    Docker's archive API works on the container's filesystem as the daemon mounts it, without the
    container's tmpfs mounts: a file put there is accepted and then hidden under the tmpfs (or,
    stopped, under the one the next start mounts), and a read sees what lies beneath."""
    points = [str(m.get("Destination")) for m in info.get("Mounts") or [] if m.get("Type") == "tmpfs"]
    points += list((info.get("HostConfig") or {}).get("Tmpfs") or {})
    return [posixpath.normpath(p) for p in points if p]


def within(path: str, points: Iterable[str]) -> str | None:
    """The first of ``points`` that ``path`` is (or is under), else ``None``."""
    return next((p for p in points if path == p or path.startswith(p.rstrip("/") + "/")), None)


@dataclass(frozen=True, slots=True)
class Member:
    """A file to write: its name relative to the archive's root, its bytes and its mode."""

    name: str
    data: bytes
    mode: int


def group_by_root(files: Sequence[tuple[str, bytes, int]], mount_points: Iterable[str]) -> dict[str, list[Member]]:
    """Files (absolute path, bytes, mode) as one archive per root directory (see :func:`mount_root`)."""
    points = list(mount_points)
    groups: dict[str, list[Member]] = {}
    for path, data, mode in files:
        root = mount_root(path, points)
        name = path[len(root) :].lstrip("/") if root != "/" else path.lstrip("/")
        groups.setdefault(root, []).append(Member(name, data, mode))
    return groups


def build_archive(members: Iterable[Member], *, mtime: float | None = None) -> bytes:
    """One uncompressed tar of regular files (PAX format: names of any length), owned by root."""
    stamp = time.time() if mtime is None else mtime
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for member in members:
            info = tarfile.TarInfo(member.name)
            info.size = len(member.data)
            info.mode = member.mode
            info.mtime = int(stamp)
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            tar.addfile(info, io.BytesIO(member.data))
    return out.getvalue()


def first_member(head: bytes) -> tarfile.TarInfo | None:
    """The first member's header of a tar whose first ``len(head)`` bytes are ``head``;
    ``None`` while the header is not complete yet. (Its data starts at ``offset_data``.)"""
    if len(head) < tarfile.BLOCKSIZE:
        return None
    try:
        with tarfile.open(fileobj=io.BytesIO(head), mode="r:") as tar:
            return tar.next()  # the member read at open
    except tarfile.TarError:
        return None


def decoded(files: Iterable[tuple[str, str, int]]) -> list[tuple[str, bytes, int]]:
    """The files (path, base64 content, mode) with their content decoded (the schema checked it)."""
    return [(path, base64.b64decode(content, validate=True), mode) for path, content, mode in files]
