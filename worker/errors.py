"""One root exception and the single place where failures become contract error codes."""

from __future__ import annotations

import aiohttp
from aiodocker.exceptions import DockerError

from dockhand.schemas import ErrorCode, ErrorInfo, Status

AIODOCKER_CONNECT_ERROR = 900


class DockhandError(Exception):
    """A command outcome that is not success: a contract error code, a readable message,
    whether retrying may help, and whether the command was ``rejected`` (never valid) or
    ``failed`` (valid, but did not succeed)."""

    def __init__(
        self,
        code: ErrorCode,
        message: str,
        *,
        retryable: bool = False,
        status: Status = Status.FAILED,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.retryable = retryable
        self.status = status

    def __str__(self) -> str:
        return f"{self.code.value}: {self.message}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.code.value!r}, {self.message!r}, status={self.status.value!r})"

    def info(self) -> ErrorInfo:
        """The ``error`` object of a result."""
        return ErrorInfo(code=self.code, message=self.message, retryable=self.retryable)


def rejected(code: ErrorCode, message: str) -> DockhandError:
    """A command that was never valid (bad JSON, schema, policy): rejected and dead-lettered."""
    return DockhandError(code, message, status=Status.REJECTED)


def is_transient(exc: Exception) -> bool:
    """Failures worth retrying: the daemon unreachable or a 5xx. Never a 4xx."""
    if isinstance(exc, DockerError):
        return exc.status >= 500
    return isinstance(exc, aiohttp.ClientConnectionError | ConnectionError)


def from_exception(
    exc: BaseException,
    *,
    subject: str,
    not_found: ErrorCode = ErrorCode.NOT_FOUND,
    pulling: bool = False,
) -> DockhandError:
    """Map any failure of a Docker call to the contract's error code.

    ``subject`` names what was acted on ("workspace ws1 on host-a", "image x:1") so the
    message says which object failed; ``not_found`` chooses the code for a 404; ``pulling``
    makes every daemon-reported failure an ``image_pull_failed`` (the registry's answer —
    unauthorised, unknown manifest, unreachable — comes back as a stream error or a 404/500,
    and telling them apart from the text alone would be guesswork).
    """
    if isinstance(exc, DockhandError):
        return exc
    if isinstance(exc, DockerError):
        detail = exc.message.strip() or f"HTTP {exc.status}"
        if pulling and exc.status != AIODOCKER_CONNECT_ERROR:
            return DockhandError(
                ErrorCode.IMAGE_PULL_FAILED, f"{subject}: pull failed: {detail}", retryable=exc.status >= 500
            )
        if exc.status == 404:
            return DockhandError(not_found, f"{subject}: not found ({detail})")
        if exc.status == 409:
            return DockhandError(ErrorCode.CONFLICT, f"{subject}: {detail}")
        if exc.status in (401, 403):
            return DockhandError(ErrorCode.FORBIDDEN, f"{subject}: {detail}")
        if 400 <= exc.status < 500:
            return DockhandError(ErrorCode.INVALID_COMMAND, f"{subject}: Docker refused: {detail}")
        # 900 is aiodocker's own code for "could not connect" (it wraps aiohttp's error).
        if exc.status in (502, 503, 504, AIODOCKER_CONNECT_ERROR):
            return DockhandError(
                ErrorCode.DOCKER_UNAVAILABLE, f"{subject}: Docker {exc.status}: {detail}", retryable=True
            )
        # A plain 500 is the daemon failing this one request (a port already taken, a
        # driver error): worth a retry by the client, but not "Docker is down".
        return DockhandError(ErrorCode.INTERNAL, f"{subject}: Docker error: {detail}", retryable=True)
    if isinstance(exc, TimeoutError):
        return DockhandError(ErrorCode.TIMEOUT, f"{subject}: timed out", retryable=True)
    if isinstance(exc, aiohttp.ClientConnectionError | ConnectionError):
        return DockhandError(
            ErrorCode.DOCKER_UNAVAILABLE,
            f"{subject}: Docker daemon unreachable ({type(exc).__name__}: {exc})",
            retryable=True,
        )
    return DockhandError(ErrorCode.INTERNAL, f"{subject}: {type(exc).__name__}: {exc}")
