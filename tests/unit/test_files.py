"""workspace.put_files / get_file: the schema's paths, the tar building and parsing
(worker/files.py), and DockerOps against the in-memory Docker API. The same outcomes on the
real daemon: tests/integration/test_files.py."""

from __future__ import annotations

import base64
import io
import tarfile
from typing import Any

import pytest
from pydantic import ValidationError

from dockhand.schemas import ErrorCode, Status
from dockhand.schemas.commands import (
    WorkspaceCreate,
    WorkspaceGetFile,
    WorkspacePutFiles,
    base64_decoded_size,
)
from dockhand.worker import files
from dockhand.worker.docker import DockerOps
from dockhand.worker.errors import DockhandError
from dockhand.worker.settings import Settings
from tests.fakes.docker_api import FakeDocker
from tests.fakes.engine_ops import IMAGE, ops_over


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _put(*paths: str, content: bytes = b"x", **extra: Any) -> WorkspacePutFiles:
    return WorkspacePutFiles.model_validate(
        {"workspace_id": "ws1", "files": [{"path": p, "content": _b64(content), **extra} for p in paths]}
    )


# --- schema ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path", ["relative/x", "x", "/a/../etc/passwd", "/..", "/a/..", "/", "//", "/./", "/a\x00b", "", "/" + "a" * 1024]
)
def test_bad_paths_are_refused_by_the_schema(path: str) -> None:
    with pytest.raises(ValidationError):
        _put(path)
    with pytest.raises(ValidationError):
        WorkspaceGetFile.model_validate({"workspace_id": "ws1", "path": path})


def test_paths_are_cleaned() -> None:
    assert _put("//a/./b//c").files[0].path == "/a/b/c"
    assert WorkspaceGetFile.model_validate({"workspace_id": "ws1", "path": "/x/"}).path == "/x"


@pytest.mark.parametrize("content", ["aGk", "aGk=\n", "a-_b", "not base64", "aGk==="])
def test_content_must_be_strict_base64(content: str) -> None:
    with pytest.raises(ValidationError):
        WorkspacePutFiles.model_validate({"workspace_id": "ws1", "files": [{"path": "/a", "content": content}]})


@pytest.mark.parametrize("mode", [-1, 0o1000, 0o4755, "644", 6.0])
def test_mode_is_permission_bits_only(mode: Any) -> None:
    with pytest.raises(ValidationError):
        _put("/a", mode=mode)


def test_files_defaults_and_bounds() -> None:
    assert _put("/a").files[0].mode == 0o644
    with pytest.raises(ValidationError):
        WorkspacePutFiles.model_validate({"workspace_id": "ws1", "files": []})
    with pytest.raises(ValidationError, match="given twice"):
        _put("/a", "//a")
    with pytest.raises(ValidationError, match="parent directory"):
        _put("/a", "/a/b")
    assert WorkspaceGetFile.model_validate({"workspace_id": "ws1", "path": "/a"}).max_bytes == 1024 * 1024


@pytest.mark.parametrize("size", [0, 1, 2, 3, 4, 5, 1000, 3 * 1024 * 1024 + 1])
def test_decoded_size_without_decoding(size: int) -> None:
    assert base64_decoded_size(_b64(b"\x00" * size)) == size


def test_body_limit_fits_a_full_put_files() -> None:
    settings = Settings(host_id="host-a", docker_host=None, state_dir=None)
    assert settings.max_file_bytes == 8 * 1024 * 1024
    assert settings.body_limit >= len(_b64(b"\x00" * settings.max_file_bytes)) + 64 * 1024
    small = Settings(host_id="host-a", docker_host=None, state_dir=None, max_file_bytes=3 * 1024)
    assert small.body_limit == 4 * 1024 + 1024 * 1024
    assert Settings(host_id="host-a", docker_host=None, state_dir=None, max_body_bytes=2048).body_limit == 2048


# --- tar ---------------------------------------------------------------------------------


def test_archive_holds_regular_files_only_with_their_modes() -> None:
    long_name = "d/" + "n" * 200 + "/f"
    archive = files.build_archive(
        [files.Member("a/b/c", b"abc", 0o600), files.Member(long_name, b"", 0o755)], mtime=1_700_000_000
    )
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        members = tar.getmembers()
        assert [(m.name, m.mode, m.size, m.isreg(), m.uid) for m in members] == [
            ("a/b/c", 0o600, 3, True, 0),
            (long_name, 0o755, 0, True, 0),
        ]
        extracted = tar.extractfile(members[0])
        assert extracted is not None
        assert extracted.read() == b"abc"


def test_first_member_waits_for_a_complete_header() -> None:
    long_name = "x" * 300  # a PAX header comes first
    archive = files.build_archive([files.Member(long_name, b"hello", 0o644)])
    member = files.first_member(archive)
    assert member is not None
    assert member.name == long_name
    assert member.size == 5
    assert archive[member.offset_data : member.offset_data + 5] == b"hello"
    assert files.first_member(archive[:100]) is None
    assert files.first_member(archive[: member.offset_data - 1]) is None


def test_files_go_to_the_deepest_mount_holding_them() -> None:
    groups = files.group_by_root(
        [("/data/x/y", b"1", 0o644), ("/etc/z", b"2", 0o600), ("/data2/q", b"3", 0o644), ("/data", b"4", 0o644)],
        ["/data", "/data/x", "/tmp"],
    )
    assert {root: [m.name for m in ms] for root, ms in groups.items()} == {
        "/data/x": ["y"],
        "/": ["etc/z", "data2/q", "data"],
    }


def test_stat_header() -> None:
    def header(mode: int, target: str = "") -> str:
        return _b64(f'{{"name":"n","size":7,"mode":{mode},"linkTarget":"{target}"}}'.encode())

    regular = files.parse_stat(header(0o640))
    assert regular is not None
    assert regular.is_regular
    assert not regular.is_dir
    assert regular.size == 7
    directory = files.parse_stat(header((1 << 31) | 0o755))
    assert directory is not None
    assert directory.is_dir
    assert not directory.is_regular
    link = files.parse_stat(header((1 << 27) | 0o777, "/bin/busybox"))
    assert link is not None
    assert link.is_symlink
    assert link.link_target == "/bin/busybox"
    assert files.parse_stat(None) is None
    assert files.parse_stat("%%%") is None


# --- DockerOps on the fake daemon --------------------------------------------------------


def _ops(fake: FakeDocker, **extra: Any) -> DockerOps:
    return ops_over(fake, state_dir=None, docker_retry_attempts=1, **extra)


async def _workspace(ops: DockerOps, **extra: Any) -> None:
    await ops.workspaces.create(WorkspaceCreate.model_validate({"workspace_id": "ws1", "image": IMAGE, **extra}))


async def test_put_then_get_round_trips(fake: FakeDocker) -> None:
    ops = _ops(fake)
    await _workspace(ops)
    data = bytes(range(256)) * 40
    written = await ops.files.put(_put("/srv/app/data.bin", content=data, mode=0o750))
    assert written.paths == ["/srv/app/data.bin"]
    assert written.bytes == len(data)
    got = await ops.files.get(WorkspaceGetFile(workspace_id="ws1", path="/srv/app/data.bin"))
    assert base64.b64decode(got.content) == data
    assert (got.size, got.mode, got.truncated) == (len(data), 0o750, False)
    cut = await ops.files.get(WorkspaceGetFile(workspace_id="ws1", path="/srv/app/data.bin", max_bytes=100))
    assert base64.b64decode(cut.content) == data[:100]
    assert cut.size == len(data)
    assert cut.truncated


async def test_get_file_is_capped_by_the_setting(fake: FakeDocker) -> None:
    writer = _ops(fake, max_file_bytes=2048)
    await _workspace(writer)
    await writer.files.put(_put("/tmp/f", content=b"y" * 2000))
    ops = _ops(fake, max_file_bytes=1024)
    got = await ops.files.get(WorkspaceGetFile(workspace_id="ws1", path="/tmp/f", max_bytes=10**9))
    assert len(base64.b64decode(got.content)) == 1024
    assert got.truncated
    assert got.size == 2000


async def _fails(call: Any, code: ErrorCode, status: Status = Status.FAILED) -> DockhandError:
    with pytest.raises(DockhandError) as info:
        await call
    assert (info.value.code, info.value.status) == (code, status), info.value
    return info.value


async def test_errors_are_contract_errors(fake: FakeDocker) -> None:
    ops = _ops(fake, max_file_bytes=1024)
    await _fails(ops.files.put(_put("/tmp/a")), ErrorCode.NOT_FOUND)
    await _fails(ops.files.get(WorkspaceGetFile(workspace_id="ws1", path="/tmp/a")), ErrorCode.NOT_FOUND)
    await _workspace(ops)
    too_big = await _fails(
        ops.files.put(_put("/tmp/a", content=b"z" * 1025)), ErrorCode.INVALID_COMMAND, Status.REJECTED
    )
    assert "DOCKHAND_MAX_FILE_BYTES" in too_big.message
    missing = await _fails(ops.files.get(WorkspaceGetFile(workspace_id="ws1", path="/nope")), ErrorCode.NOT_FOUND)
    assert "/nope" in missing.message
    directory = await _fails(
        ops.files.get(WorkspaceGetFile(workspace_id="ws1", path="/tmp")), ErrorCode.INVALID_COMMAND
    )
    assert "directory" in directory.message
    await ops.files.put(_put("/tmp/file"))
    through = await _fails(ops.files.put(_put("/tmp/file/under")), ErrorCode.INVALID_COMMAND)
    assert "not a directory" in through.message
    await _fails(ops.files.put(_put("/tmp")), ErrorCode.INVALID_COMMAND)  # a file never replaces a directory


async def test_read_only_workspace_refuses_but_its_volume_takes_files(fake: FakeDocker) -> None:
    ops = _ops(fake)
    await _workspace(ops, read_only=True, mounts=[{"source": "v1", "target": "/data"}])
    refused = await _fails(ops.files.put(_put("/etc/x")), ErrorCode.FORBIDDEN)
    assert "read-only" in refused.message
    await ops.files.put(_put("/data/sub/x", content=b"ok"))
    got = await ops.files.get(WorkspaceGetFile(workspace_id="ws1", path="/data/sub/x"))
    assert base64.b64decode(got.content) == b"ok"


def test_tmpfs_mount_points() -> None:
    info = {
        "Mounts": [{"Type": "tmpfs", "Destination": "/scratch"}, {"Type": "volume", "Destination": "/data"}],
        "HostConfig": {"Tmpfs": {"/run/": ""}},
    }
    points = files.tmpfs_points(info)
    assert points == ["/scratch", "/run"]
    assert files.within("/scratch/a/b", points) == "/scratch"
    assert files.within("/run", points) == "/run"
    assert files.within("/scratchy", points) is None
    assert files.within("/data/x", points) is None


async def test_tmpfs_paths_are_refused(fake: FakeDocker) -> None:
    ops = _ops(fake)
    await _workspace(ops, mounts=[{"type": "tmpfs", "target": "/scratch"}])
    refused = await _fails(ops.files.put(_put("/scratch/x")), ErrorCode.INVALID_COMMAND)
    assert "tmpfs" in refused.message
    await _fails(ops.files.get(WorkspaceGetFile(workspace_id="ws1", path="/scratch/x")), ErrorCode.INVALID_COMMAND)


# --- dockhand cp -------------------------------------------------------------------------


def test_cp_operands() -> None:
    from dockhand.cli import CliError, parse_cp_args

    assert parse_cp_args("app.py", "ws1:/srv/") == ("in", "ws1", "/srv/", "app.py")
    assert parse_cp_args("-", "ws1:/etc/motd") == ("in", "ws1", "/etc/motd", "-")
    assert parse_cp_args("ws1:/var/log/x", "-") == ("out", "ws1", "/var/log/x", "-")
    assert parse_cp_args("ws.2_a:/x", "./c:d") == ("out", "ws.2_a", "/x", "./c:d")
    for source, dest in [("a", "b"), ("ws1:/a", "ws2:/b"), ("ws1:rel", "b"), ("WS:/a", "b")]:
        with pytest.raises(CliError) as info:
            parse_cp_args(source, dest)
        assert info.value.code == 2
