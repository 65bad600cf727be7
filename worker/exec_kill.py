"""Ending an exec that outlived its ``timeout_s``: Docker has no API to kill an exec.

Two ways, tried in order:

1. **From the worker**, when it shares the PID namespace of the daemon (a worker on the host,
   or a container with ``--pid=host``): the exec's host ``Pid`` (exec inspect) and every process
   of its session or below it get SIGKILL — each one only after ``/proc/<pid>/cgroup`` shows it
   inside *this* container, and through a pidfd where the kernel has them, so a recycled PID is
   never signalled.
2. **Inside the container**, otherwise: a second exec, as the same user as the first (reading
   another user's ``/proc/<pid>/environ`` would need CAP_SYS_PTRACE, which Docker drops), kills
   every process whose environment carries the exec's marker variable ``DOCKHAND_EXEC_ID`` (added
   to every exec, and inherited by its children). This needs ``sh``, ``grep`` and ``kill`` in
   the image.

Residual: a process that changed its session *and* cleared its environment (a deliberate
escape), in an image without a shell when the worker does not share the host PID namespace.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import signal
import time
from pathlib import Path
from typing import Any

from aiodocker.containers import DockerContainer

log = logging.getLogger("dockhand.exec")

MARKER = "DOCKHAND_EXEC_ID"
"""The environment variable that tags an exec's processes (for the in-container fallback)."""

PROC = Path("/proc")


def new_token() -> str:
    """A fresh value for an exec's :data:`MARKER` variable."""
    return secrets.token_hex(8)


def _stat(pid: int) -> tuple[int, int] | None:
    """(parent pid, session id) of ``pid``, or None when it is gone."""
    try:
        text = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    # The command name is in parentheses and may contain anything: split after the last ')'.
    fields = text[text.rfind(")") + 2 :].split()
    return int(fields[1]), int(fields[3])


def _in_container(pid: int, container_id: str) -> bool:
    try:
        return container_id in (PROC / str(pid) / "cgroup").read_text()
    except OSError:
        return False


def _tree(root: int, container_id: str) -> list[int]:
    """The processes of ``container_id`` in ``root``'s session or descended from ``root``."""
    parents: dict[int, int] = {}
    members: set[int] = set()
    for entry in PROC.iterdir():
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        stat = _stat(pid)
        if stat is None or not _in_container(pid, container_id):
            continue
        parents[pid] = stat[0]
        if pid == root or stat[1] == root:
            members.add(pid)
    for pid in parents:
        seen = set()
        ancestor = pid
        while ancestor in parents and ancestor not in seen:
            if ancestor in members:
                members.add(pid)
                break
            seen.add(ancestor)
            ancestor = parents[ancestor]
    return sorted(members)


def _kill(pid: int, container_id: str) -> bool:
    """SIGKILL ``pid`` if it is (still) in the container; True when a signal was sent."""
    pidfd_open = getattr(os, "pidfd_open", None)
    if pidfd_open is not None:
        try:
            fd = pidfd_open(pid)
        except OSError:
            return False
        try:
            # Checked after the pidfd pins the process: the PID cannot be reused under us.
            if not _in_container(pid, container_id):
                return False
            signal.pidfd_send_signal(fd, signal.SIGKILL)
            return True
        except OSError:
            return False
        finally:
            os.close(fd)
    if not _in_container(pid, container_id):
        return False
    try:
        os.kill(pid, signal.SIGKILL)
        return True
    except OSError:
        return False


def kill_from_host(root: int, container_id: str, rounds: int = 10) -> int | None:
    """SIGKILL ``root``'s process tree from here; the number of processes signalled, or None
    when ``root`` is not visible as a process of the container (another PID namespace)."""
    if not _in_container(root, container_id):
        return None
    killed = 0
    for _ in range(rounds):
        # Repeat until nothing is left: a child forked while we looked is caught next round.
        targets = _tree(root, container_id)
        if not targets:
            break
        killed += sum(_kill(pid, container_id) for pid in targets)
        time.sleep(0.02)
    return killed


def _script(token: str) -> str:
    pattern = f"{MARKER}={token}"
    return (
        "for round in 1 2 3; do for d in /proc/[0-9]*; do "
        f'if grep -q "{pattern}" "$d/environ" 2>/dev/null; then kill -9 "${{d#/proc/}}" 2>/dev/null; fi; '
        "done; sleep 0.05; done"
    )


async def kill_inside(container: DockerContainer, token: str, user: str = "", timeout_s: float = 10.0) -> bool:
    """Kill the marked processes with a second exec in the container, as ``user`` (the first
    exec's; "" is the container's own user); True when it ran."""
    try:
        async with asyncio.timeout(timeout_s):
            execution = await container.exec(["sh", "-c", _script(token)], stdout=True, stderr=True, user=user)
            async with execution.start(detach=False) as stream:
                while await stream.read_out() is not None:
                    pass
            info: dict[str, Any] = await execution.inspect()
    except Exception as exc:
        log.warning("exec kill inside the container failed: %s: %s", type(exc).__name__, exc)
        return False
    return info.get("ExitCode") == 0


async def kill_exec(container: DockerContainer, container_id: str, execution: Any, token: str, user: str = "") -> bool:
    """End an exec and its children; True when it is no longer running afterwards."""
    info: dict[str, Any] = await execution.inspect()
    if not info.get("Running"):
        return True
    pid = int(info.get("Pid") or 0)
    killed = await asyncio.to_thread(kill_from_host, pid, container_id) if pid > 0 else None
    if killed is not None and await _ended(execution):
        return True
    await kill_inside(container, token, user)
    return await _ended(execution)


async def _ended(execution: Any, wait_s: float = 2.0) -> bool:
    deadline = time.monotonic() + wait_s
    while True:  # Docker notices the exit a moment after the process is gone
        info: dict[str, Any] = await execution.inspect()
        if not info.get("Running"):
            return True
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.05)


async def kill_quietly(
    container: DockerContainer, container_id: str, execution: Any, token: str, user: str = ""
) -> bool:
    """:func:`kill_exec`, logging instead of raising (it runs on an error path)."""
    with contextlib.suppress(Exception):
        return await kill_exec(container, container_id, execution, token, user)
    log.warning("could not end exec %s in container %s", getattr(execution, "id", "?"), container_id[:12])
    return False
