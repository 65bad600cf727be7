"""Tenancy (opt-in, ``DOCKHAND_TENANCY=user``): who sent a command, and what it may touch.

The sender is the AMQP ``user_id`` property. RabbitMQ refuses a publish whose ``user_id`` is not
the connection's own user (the channel is closed with ``PRECONDITION_FAILED``), so the property
can be trusted as long as no sender's broker user carries the ``impersonator`` tag.

The dispatcher puts the sender into :data:`SENDER` in the message's own context before the
command runs (every message runs in a context of its own, see ``Dispatcher.submit``), and
:class:`~worker.docker.DockerOps` reads it where it stamps owner labels and checks
ownership — so no handler signature has to carry it. Outside a command (discovery, start-up,
background work) no sender is set: that is the worker itself, acting on everything.
"""

from __future__ import annotations

import hashlib
import re
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING

from dockhand.schemas import ErrorCode

from .errors import DockhandError, rejected

if TYPE_CHECKING:
    from .settings import Settings


@dataclass(frozen=True, slots=True)
class Sender:
    """The broker user a command came from; ``admin`` users act on every owner's objects."""

    user: str
    admin: bool = False


SENDER: ContextVar[Sender | None] = ContextVar("dockhand_sender", default=None)
"""The sender of the command being executed; ``None`` with tenancy off or outside a command."""


def current() -> Sender | None:
    """The sender of the running command (``None``: tenancy off, or the worker itself)."""
    return SENDER.get()


def sender_of(user_id: str | None, settings: Settings) -> Sender | None:
    """The sender of a message with this ``user_id`` property, or ``None`` with tenancy off.

    With tenancy on, a message without ``user_id`` is ``rejected`` with ``forbidden``: the
    command may be well-formed, but nobody can be held to own what it would create.
    """
    if settings.tenancy == "none":
        return None
    if not user_id:
        raise rejected(
            ErrorCode.FORBIDDEN,
            "tenancy is on (DOCKHAND_TENANCY=user): the message has no user_id property; "
            "publish with user_id set to your broker user",
        )
    return Sender(user_id, admin=user_id in settings.admin_users)


def restricted() -> Sender | None:
    """The running command's sender when ownership applies to it (tenancy on, not an admin)."""
    sender = current()
    return sender if sender is not None and not sender.admin else None


def forbidden(what: str) -> DockhandError:
    """The ``failed``/``forbidden`` outcome of a command on another owner's object.

    It does not say whose the object is, nor anything about it (not even its spec).
    """
    return DockhandError(ErrorCode.FORBIDDEN, f"{what} belongs to another owner; left untouched")


_SLUG = re.compile(r"[^a-z0-9]+")


def owner_slug(user: str) -> str:
    """A Docker-name-safe, collision-resistant form of an owner: ``<slug>-<10 hex>``.

    Broker user names may hold any character; the readable part keeps ``[a-z0-9-]`` (at most 24),
    the hash tells ``Alice`` from ``alice`` and ``a.b`` from ``a-b``. Safety does not rest on the
    hash: a network found under this name still has to carry the sender's owner label.
    """
    readable = _SLUG.sub("-", user.lower()).strip("-")[:24].strip("-")
    digest = hashlib.sha256(user.encode()).hexdigest()[:10]
    return f"{readable}-{digest}" if readable else digest


def store_owner() -> str | None:
    """The owner part of a result-store key for the running command (``None``: unscoped)."""
    sender = current()
    return sender.user if sender is not None else None
