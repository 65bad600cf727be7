"""worker.errors: the mapping of failures to contract error codes."""

from __future__ import annotations

import aiohttp
import pytest
from aiodocker.exceptions import DockerError

from dockhand.schemas import ErrorCode, ErrorInfo, Status
from dockhand.worker.errors import DockhandError, from_exception, is_transient, rejected

SUBJECT = "workspace ws1 on host-a"


@pytest.mark.parametrize(
    ("status", "code", "retryable"),
    [
        (400, ErrorCode.INVALID_COMMAND, False),
        (401, ErrorCode.FORBIDDEN, False),
        (403, ErrorCode.FORBIDDEN, False),
        (404, ErrorCode.NOT_FOUND, False),
        (409, ErrorCode.CONFLICT, False),
        (418, ErrorCode.INVALID_COMMAND, False),
        (500, ErrorCode.INTERNAL, True),
        (502, ErrorCode.DOCKER_UNAVAILABLE, True),
        (503, ErrorCode.DOCKER_UNAVAILABLE, True),
        (504, ErrorCode.DOCKER_UNAVAILABLE, True),
    ],
)
def test_docker_error_mapping(status: int, code: ErrorCode, retryable: bool) -> None:
    error = from_exception(DockerError(status, f"daemon says {status}"), subject=SUBJECT)
    assert error.code is code
    assert error.retryable is retryable
    assert error.status is Status.FAILED
    assert SUBJECT in error.message
    assert f"daemon says {status}" in error.message


def test_not_found_override() -> None:
    error = from_exception(
        DockerError(404, "No such image: x:1"), subject="image x:1", not_found=ErrorCode.IMAGE_NOT_FOUND
    )
    assert error.code is ErrorCode.IMAGE_NOT_FOUND
    assert "image x:1" in error.message


def test_not_found_override_only_applies_to_404() -> None:
    error = from_exception(DockerError(409, "in use"), subject=SUBJECT, not_found=ErrorCode.IMAGE_NOT_FOUND)
    assert error.code is ErrorCode.CONFLICT


@pytest.mark.parametrize(("status", "retryable"), [(404, False), (401, False), (500, True), (503, True)])
def test_pulling_makes_every_docker_error_a_pull_failure(status: int, retryable: bool) -> None:
    error = from_exception(DockerError(status, "manifest unknown"), subject="image x:1", pulling=True)
    assert error.code is ErrorCode.IMAGE_PULL_FAILED
    assert error.retryable is retryable
    assert "image x:1" in error.message
    assert "manifest unknown" in error.message


def test_empty_docker_message_falls_back_to_status() -> None:
    error = from_exception(DockerError(409, "  "), subject=SUBJECT)
    assert "HTTP 409" in error.message


@pytest.mark.parametrize(
    "exc",
    [
        ConnectionRefusedError(111, "Connection refused"),
        ConnectionResetError(104, "reset"),
        aiohttp.ClientConnectionError("cannot connect"),
        aiohttp.ServerDisconnectedError(),
        aiohttp.ClientOSError(111, "Connect call failed"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_connection_failures_are_docker_unavailable(exc: Exception) -> None:
    error = from_exception(exc, subject=SUBJECT)
    assert error.code is ErrorCode.DOCKER_UNAVAILABLE
    assert error.retryable is True
    assert SUBJECT in error.message
    assert type(exc).__name__ in error.message
    assert is_transient(exc)


@pytest.mark.parametrize("exc", [TimeoutError(), aiohttp.ServerTimeoutError()], ids=lambda e: type(e).__name__)
def test_timeout(exc: Exception) -> None:
    error = from_exception(exc, subject=SUBJECT)
    assert error.code is ErrorCode.TIMEOUT
    assert SUBJECT in error.message


def test_other_exceptions_are_internal() -> None:
    error = from_exception(KeyError("Id"), subject=SUBJECT)
    assert error.code is ErrorCode.INTERNAL
    assert error.retryable is False
    assert "KeyError" in error.message
    assert SUBJECT in error.message


def test_dockhand_error_passes_through_unchanged() -> None:
    original = rejected(ErrorCode.FORBIDDEN, "no")
    assert from_exception(original, subject=SUBJECT, pulling=True) is original


@pytest.mark.parametrize("status", [500, 502, 503, 504, 599])
def test_5xx_is_transient(status: int) -> None:
    assert is_transient(DockerError(status, "x"))


@pytest.mark.parametrize("status", [200, 400, 401, 403, 404, 409, 499])
def test_4xx_is_not_transient(status: int) -> None:
    assert not is_transient(DockerError(status, "x"))


@pytest.mark.parametrize("exc", [ValueError("x"), KeyError("Id"), RuntimeError("boom")])
def test_other_exceptions_are_not_transient(exc: Exception) -> None:
    assert not is_transient(exc)


def test_str_and_repr_are_readable() -> None:
    error = DockhandError(ErrorCode.NOT_FOUND, "workspace ws1 not found on host-a")
    assert str(error) == "not_found: workspace ws1 not found on host-a"
    assert "not_found" in repr(error)
    assert "failed" in repr(error)
    assert f"{error}" == str(error)


def test_info_and_defaults() -> None:
    error = DockhandError(ErrorCode.DOCKER_UNAVAILABLE, "down", retryable=True)
    assert error.status is Status.FAILED
    assert error.info() == ErrorInfo(code=ErrorCode.DOCKER_UNAVAILABLE, message="down", retryable=True)


def test_rejected_helper() -> None:
    error = rejected(ErrorCode.INVALID_COMMAND, "bad")
    assert (error.code, error.status, error.retryable) == (ErrorCode.INVALID_COMMAND, Status.REJECTED, False)


@pytest.mark.parametrize("pulling", [False, True])
def test_aiodocker_connect_error_is_docker_unavailable(pulling: bool) -> None:
    """aiodocker wraps "could not connect" as DockerError(900, …): the daemon is unreachable,
    whatever the operation — not an internal error, and not a failed pull."""
    exc = DockerError(900, "Cannot connect to Docker Engine via unix:///x.sock [Server disconnected]")
    error = from_exception(exc, subject="image x on h", pulling=pulling)
    assert error.code is ErrorCode.DOCKER_UNAVAILABLE
    assert error.retryable is True
    assert is_transient(exc)
