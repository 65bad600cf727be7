"""Streaming an exec's output while it runs (contract v1.1, ``exec.output``).

The reader (the Docker exec stream) only appends to an :class:`OutputBuffer`; a sender task
takes ready chunks from it and publishes them, so a slow or failing publish never blocks the
reading: the process is never held up by its consumer. What is kept is bounded by the exec
output cap (the total over both streams); past it the output is read and discarded, as
``docker exec`` keeps running a command whose client stopped reading.

Chunks go to the default exchange under the command's ``reply_to``, not mandatory and not
persistent: a consumer whose reply queue is gone just loses them (the broker drops them), and
a publish that does not complete within :data:`PUBLISH_TIMEOUT_S` ends the streaming of that
exec (the rest is dropped, the final result is still sent).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import time
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from dockhand.schemas import utcnow
from dockhand.schemas.results import ExecOutputChunk

if TYPE_CHECKING:
    from .publishing import Publisher

log = logging.getLogger("dockhand.exec")

CHUNK_BYTES = 16 * 1024
"""The largest chunk published (bytes of output)."""
LINGER_S = 0.05
"""How long small reads are coalesced before they are sent."""
PUBLISH_TIMEOUT_S = 5.0
"""A chunk publish slower than this gives up the stream (the broker is blocking us)."""
MESSAGE_TYPE = "dockhand.exec.output"

StreamName = Literal["stdout", "stderr"]
_NAMES: dict[int, StreamName] = {1: "stdout", 2: "stderr"}


@dataclass(frozen=True)
class ReplyTarget:
    """Where a command's streamed output goes: its ``reply_to`` and ``correlation_id``."""

    publisher: Publisher
    command_id: str
    reply_to: str | None
    correlation_id: str | None


REPLY: ContextVar[ReplyTarget | None] = ContextVar("dockhand_exec_reply", default=None)
"""Set by the dispatcher for the command it runs (handlers see only the payload)."""


def utf8_cut(data: bytes | bytearray, end: int) -> int:
    """The largest ``n <= end`` such that ``data[:n]`` does not end inside a UTF-8 sequence
    (so a chunk boundary never splits a character); ``end`` when the tail is not UTF-8 at all."""
    end = min(end, len(data))
    for back in range(1, min(4, end) + 1):
        byte = data[end - back]
        if byte < 0x80:  # ASCII: nothing open
            return end
        if byte >= 0xC0:  # a lead byte: the sequence it opens needs this many bytes
            need = 2 if byte < 0xE0 else 3 if byte < 0xF0 else 4
            return end if back >= need else end - back
    return end  # only continuation bytes: not UTF-8, cut anywhere


@dataclass
class OutputBuffer:
    """Pure chunking logic: per-stream pending bytes, the cap, coalescing by age."""

    limit: int
    chunk_bytes: int = CHUNK_BYTES
    linger_s: float = LINGER_S
    accepted: int = 0
    truncated: bool = False
    closed: bool = False
    pending: dict[int, bytearray] = field(default_factory=lambda: {1: bytearray(), 2: bytearray()})
    since: dict[int, float] = field(default_factory=dict)  # when each stream's pending data arrived

    def add(self, stream: int, data: bytes, now: float) -> None:
        """Take what the process wrote; beyond the cap it is discarded and ``truncated`` set."""
        stream = stream if stream in self.pending else 1
        room = self.limit - self.accepted
        if len(data) > room:
            self.truncated = True
            data = data[: max(room, 0)]
        if not data:
            return
        self.accepted += len(data)
        self.pending[stream].extend(data)
        self.since.setdefault(stream, now)

    def take(self, now: float) -> list[tuple[StreamName, bytes]]:
        """The chunks to send now: full ones, those older than ``linger_s``, everything once
        closed or truncated (no more will come)."""
        out: list[tuple[StreamName, bytes]] = []
        final = self.closed or self.truncated
        for stream, buffer in self.pending.items():
            cut = False
            while len(buffer) >= self.chunk_bytes:
                n = utf8_cut(buffer, self.chunk_bytes) or self.chunk_bytes
                out.append((_NAMES[stream], bytes(buffer[:n])))
                del buffer[:n]
                cut = True
            if buffer and (final or now - self.since.get(stream, now) >= self.linger_s):
                n = len(buffer) if final else utf8_cut(buffer, len(buffer))
                out.append((_NAMES[stream], bytes(buffer[:n])))
                del buffer[:n]
                cut = True
            if not buffer:
                self.since.pop(stream, None)
            elif cut:  # what is left (an unfinished character, a partial chunk) is new from now
                self.since[stream] = now
        return [(name, data) for name, data in out if data]

    def next_due(self) -> float | None:
        """When the oldest pending data is due (loop time), or None when nothing is pending."""
        return min((t + self.linger_s for s, t in self.since.items() if self.pending[s]), default=None)


def encode(command_id: str, seq: int, stream: StreamName, data: bytes) -> bytes:
    """One ``exec.output`` body: ``data`` as text when it is UTF-8, else ``data_b64``."""
    try:
        chunk = ExecOutputChunk(command_id=command_id, seq=seq, stream=stream, data=data.decode(), time=utcnow())
    except UnicodeDecodeError:
        chunk = ExecOutputChunk(
            command_id=command_id, seq=seq, stream=stream, data_b64=base64.b64encode(data).decode(), time=utcnow()
        )
    return chunk.model_dump_json(exclude_none=True).encode()


class ChunkSender:
    """Publishes an :class:`OutputBuffer`'s chunks from a task of its own, in ``seq`` order."""

    def __init__(self, target: ReplyTarget, buffer: OutputBuffer) -> None:
        self.target = target
        self.buffer = buffer
        self.seq = 0
        self.given_up = False
        self._wake = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._run())

    def add(self, stream: int, data: bytes) -> None:
        """Hand over output read from the process (never blocks)."""
        self.buffer.add(stream, data, time.monotonic())
        self._wake.set()

    async def finish(self, wait_s: float = 10.0) -> None:
        """Send what is left and end the task (at most ``wait_s``; then the rest is dropped)."""
        self.buffer.closed = True
        self._wake.set()
        try:
            await asyncio.wait_for(asyncio.shield(self._task), wait_s)
        except TimeoutError:
            log.warning("exec output of %s: the last chunks were not sent in time", self.target.command_id)
        finally:
            await self.cancel()

    async def cancel(self) -> None:
        """Stop sending at once (an error path)."""
        if not self._task.done():
            self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._task

    async def _run(self) -> None:
        buffer = self.buffer
        while True:
            for stream, data in buffer.take(time.monotonic()):
                if not self.given_up:
                    self.seq += 1
                    await self._publish(encode(self.target.command_id, self.seq, stream, data))
            if buffer.closed and not any(buffer.pending.values()):
                return
            due = buffer.next_due()
            self._wake.clear()
            timeout = None if due is None else max(0.0, due - time.monotonic())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)

    async def _publish(self, body: bytes) -> None:
        try:
            await asyncio.wait_for(
                self.target.publisher.broker.publish(
                    body,
                    routing_key=self.target.reply_to or "",
                    correlation_id=self.target.correlation_id,
                    message_type=MESSAGE_TYPE,
                    content_type="application/json",
                    mandatory=False,
                    persist=False,
                ),
                PUBLISH_TIMEOUT_S,
            )
        except Exception as exc:
            # The final result still goes out (confirmed, retried); only the live view is lost.
            self.given_up = True
            log.warning(
                "exec output of %s: publish failed (%s: %s); no more chunks",
                self.target.command_id,
                type(exc).__name__,
                exc,
            )
