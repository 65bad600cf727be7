"""A streamed ``workspace.exec`` (contract v1.1): its output chunks as they come, then its result.

::

    stream = dh.workspaces.exec_stream("ws1", ["sh", "-c", "make test"])
    async for chunk in stream:          # ExecOutputChunk, in seq order
        sink = sys.stdout if chunk.stream == "stdout" else sys.stderr
        sink.write(chunk.text())
    print(stream.result.exit_code)      # ExecOutput, set once the iteration has ended

A result that is not ``succeeded`` raises its :class:`~dockhand.client.CommandError` from the
iteration (after the chunks that came before it). The command is sent once, never retried:
a repeat would be answered from the worker's journal without its output, or run it twice.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncGenerator
from typing import TYPE_CHECKING, Any

from dockhand.schemas.results import ExecOutput, ExecOutputChunk

from ._parse import _lenient
from .errors import ReplyTimeout

if TYPE_CHECKING:
    from ._client import Client

EXEC_OUTPUT_TYPE = "dockhand.exec.output"
"""The AMQP ``message_type`` of an ``exec.output`` chunk."""


def is_chunk(data: dict[str, Any]) -> bool:
    """Whether a reply body is an ``exec.output`` chunk rather than a result."""
    return "seq" in data and "stream" in data and "status" not in data


class ExecStream:
    """The chunks of one streamed exec (an async iterator), then :attr:`result`.

    ``missed`` counts chunks that never arrived (gaps in ``seq``: the worker gave up
    publishing, e.g. the broker blocked it). Leaving the loop early: call :meth:`aclose`
    (the command keeps running on the worker until it ends or its ``timeout_s``).
    """

    def __init__(self, client: Client, body: dict[str, Any], encoded: bytes, target: str, timeout: float) -> None:
        self._client = client
        self._body = body
        self._encoded = encoded
        self._target = target
        self._timeout = timeout
        self._gen = self._run()
        self.command_id: str = body["command_id"]
        self.result: ExecOutput | None = None
        """The final result; None until the iteration has ended."""
        self.missed = 0
        self.raw: bytes | None = None
        """The final result's body as received (also when it raised)."""

    def __aiter__(self) -> ExecStream:
        return self

    async def __anext__(self) -> ExecOutputChunk:
        return await self._gen.__anext__()

    async def aclose(self) -> None:
        """Stop listening (the command itself is not stopped)."""
        await self._gen.aclose()

    async def wait(self) -> ExecOutput:
        """Consume the rest (discarding chunks) and return the result."""
        async for _ in self:
            pass
        assert self.result is not None
        return self.result

    async def _run(self) -> AsyncGenerator[ExecOutputChunk]:
        client = self._client
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._timeout
        correlation_id = uuid.uuid4().hex
        queue = client._open_stream(correlation_id)
        seen = 0
        try:
            link = await client._get_link()
            client._attach_stream(correlation_id, link)
            await client._publish(
                link, self._encoded, f"{self._target}.{self._body['type']}", correlation_id, self.command_id
            )
            while True:
                remaining = deadline - loop.time()
                try:
                    if remaining <= 0:
                        raise TimeoutError
                    async with asyncio.timeout(remaining):
                        raw = await queue.get()
                except TimeoutError:
                    raise ReplyTimeout(
                        f"no result for workspace.exec {self.command_id} in {self._timeout:.0f} s; it may still run",
                        command_id=self.command_id,
                        command_type="workspace.exec",
                    ) from None
                if not raw:  # the connection was lost: its reply queue (and what was on it) is gone
                    raise ReplyTimeout(
                        f"lost the connection while streaming workspace.exec {self.command_id}; it may still run",
                        command_id=self.command_id,
                        command_type="workspace.exec",
                    )
                data = json.loads(raw)
                if not is_chunk(data):
                    self.raw = raw
                    body = client._body("workspace.exec", raw)  # raises for a result not succeeded
                    assert isinstance(body, ExecOutput)
                    self.result = body
                    return
                chunk = _lenient(ExecOutputChunk, data)
                if chunk.seq <= seen:  # a copy
                    continue
                self.missed += chunk.seq - seen - 1
                seen = chunk.seq
                yield chunk
        finally:
            client.forget(correlation_id)
