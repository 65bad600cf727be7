"""How many workspaces this host holds, known without a Docker call (``DOCKHAND_MAX_WORKSPACES``).

A create past the limit is ``failed`` with ``capacity`` (retryable: later, or on another host)
before any Docker call, so a full host costs its Docker daemon nothing. The count is the event
stream's (reloaded from Docker at every reconcile, kept by create and destroy events), plus this
worker's own creates and removes as they finish, plus the creates running now: two creates at
once cannot both take the last place.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from dockhand.schemas import ErrorCode

from ..errors import DockhandError


class Census:
    """The host's workspace ids, and the limit on how many there may be."""

    def __init__(self, limit: int | None, host_id: str) -> None:
        self.limit = limit
        self._host_id = host_id
        self.known: set[str] | None = None
        """Every workspace id of this host; ``None`` until first read from Docker."""
        self._creating: set[str] = set()

    @property
    def count(self) -> int | None:
        """How many workspaces the host holds (creates running now included), if known."""
        return None if self.known is None else len(self.known | self._creating)

    def replace(self, workspace_ids: set[str]) -> None:
        """What Docker says the host holds (a reconcile), plus the creates running now."""
        self.known = set(workspace_ids)

    def add(self, workspace_id: str) -> None:
        """A workspace was made (or seen made: a create event)."""
        if self.known is not None:
            self.known.add(workspace_id)

    def discard(self, workspace_id: str) -> None:
        """A workspace was removed."""
        if self.known is not None:
            self.known.discard(workspace_id)

    @contextmanager
    def admit(self, workspace_id: str) -> Iterator[None]:
        """Hold a place for one create, or raise ``capacity``; a workspace that exists (a repeated
        create adopts it) takes no new place."""
        if self.limit is not None and self.known is not None:
            taken = self.known | self._creating
            if workspace_id not in taken and len(taken) >= self.limit:
                raise DockhandError(
                    ErrorCode.CAPACITY,
                    f"host {self._host_id} holds {len(taken)} workspaces, its limit (DOCKHAND_MAX_WORKSPACES); "
                    "try later or another host",
                    retryable=True,
                )
        self._creating.add(workspace_id)
        try:
            yield
        finally:
            self._creating.discard(workspace_id)
