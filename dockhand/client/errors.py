"""The client's one exception family.

Everything the client raises on purpose is a :class:`DockhandError`. A result that did not
succeed raises a :class:`CommandError` (``failed`` / ``rejected`` / ``expired``) carrying the
contract's error code, message, ``retryable``, the host and the command id; the rest say why no
result came: no route to a worker, no reply in time, no broker.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from dockhand.schemas import Result


class DockhandError(Exception):
    """Base of every error the client raises."""


class CommandError(DockhandError):
    """A command's result was not ``succeeded``; ``result`` is the whole result (None when the
    client refused the command before sending it)."""

    def __init__(
        self,
        message: str,
        *,
        code: str,
        status: str,
        retryable: bool = False,
        host_id: str | None = None,
        command_id: str | None = None,
        command_type: str | None = None,
        result: Result | None = None,
    ) -> None:
        where = f" on {host_id}" if host_id else ""
        super().__init__(f"{command_type or 'command'} {status}{where}: {code}: {message}")
        self.message = message
        self.code = code
        self.status = status
        self.retryable = retryable
        self.host_id = host_id
        self.command_id = command_id
        self.command_type = command_type
        self.result = result


class CommandFailed(CommandError):
    """Valid, but it did not succeed (``failed``): e.g. ``not_found``, ``conflict``."""


class CommandRejected(CommandError):
    """Never valid (``rejected``): bad payload or policy. Also raised before sending, with
    ``result`` None, when the payload does not validate locally."""


class CommandExpired(CommandError):
    """Not run: its ``expires_at`` had passed when a worker took it (``expired``)."""


class NoRoute(DockhandError):
    """No worker queue is bound for the target: the broker returned the command at once (the
    host id is unknown, or no worker of that prefix ever ran)."""


class ReplyTimeout(DockhandError, TimeoutError):
    """No reply within the call's timeout (retries included). The command may still run: calling
    again with the same ``command_id`` returns its outcome without running it twice."""

    def __init__(self, message: str, *, command_id: str, command_type: str) -> None:
        super().__init__(message)
        self.command_id = command_id
        self.command_type = command_type


class BrokerUnavailable(DockhandError, ConnectionError):
    """No broker node could be reached, or it refused the login or a permission. ``transient``:
    trying again later may help (unreachable), else it will not (login, permission, no exchange).
    ``exchange``: the ``<prefix>.commands`` exchange, when its absence is the cause (no worker has
    run with that prefix), so that a tool can say which setting to check."""

    def __init__(self, message: str, *, transient: bool = True, exchange: str | None = None) -> None:
        super().__init__(message)
        self.transient = transient
        self.exchange = exchange


ERRORS_BY_STATUS: dict[str, type[CommandError]] = {
    "failed": CommandFailed,
    "rejected": CommandRejected,
    "expired": CommandExpired,
}
