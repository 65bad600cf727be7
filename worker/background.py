"""A background job with start / stop: the shape the heartbeat, the leader campaign and the
Docker event stream share."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any


class Background:
    """Runs the coroutines of :meth:`_jobs` as tasks from :meth:`start` until :meth:`stop`.

    The tasks are kept after they end, so that :attr:`running` tells a stopped job (every task
    done) from one whose cancel was swallowed; a later :meth:`start` replaces them.
    """

    def __init__(self) -> None:
        self._tasks: list[asyncio.Task[None]] = []

    def _jobs(self) -> list[Coroutine[Any, Any, None]]:
        """The coroutines to run; a subclass names its loops here."""
        raise NotImplementedError

    @property
    def running(self) -> bool:
        """Whether any of the job's tasks is still running."""
        return any(not task.done() for task in self._tasks)

    def start(self) -> None:
        """Start the job's tasks (a no-op while they run)."""
        if self.running:
            return
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(job) for job in self._jobs()]

    async def stop(self) -> None:
        """Cancel the job's tasks and wait until each has ended."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
