"""The chunking of a streamed exec (worker/exec_stream.py) and the client's stream parsing."""

from __future__ import annotations

import asyncio
import base64
import json
from types import SimpleNamespace
from typing import Any

import pytest
from pydantic import ValidationError

from dockhand.client._stream import is_chunk
from dockhand.schemas.commands import WorkspaceExec
from dockhand.schemas.results import ExecOutput, ExecOutputChunk, Result
from dockhand.worker import exec_stream
from dockhand.worker.exec_stream import ChunkSender, OutputBuffer, ReplyTarget, encode, utf8_cut


def test_small_reads_are_coalesced_until_they_linger() -> None:
    buf = OutputBuffer(limit=1 << 20, linger_s=0.05)
    buf.add(1, b"a\n", 0.0)
    buf.add(1, b"b\n", 0.01)
    buf.add(2, b"err\n", 0.02)
    assert buf.take(0.03) == []  # nothing is due yet
    assert buf.next_due() == pytest.approx(0.05)
    assert buf.take(0.05) == [("stdout", b"a\nb\n")]  # stderr's arrived later: not yet
    assert buf.take(0.07) == [("stderr", b"err\n")]
    assert buf.next_due() is None


def test_chunks_are_bounded_and_full_ones_go_at_once() -> None:
    buf = OutputBuffer(limit=1 << 20, chunk_bytes=16)
    buf.add(1, b"x" * 40, 0.0)
    chunks = buf.take(0.0)
    assert chunks == [("stdout", b"x" * 16), ("stdout", b"x" * 16)]
    buf.closed = True
    assert buf.take(0.0) == [("stdout", b"x" * 8)]


def test_the_cap_counts_both_streams_and_discards_the_rest() -> None:
    buf = OutputBuffer(limit=10, chunk_bytes=100)
    buf.add(1, b"12345678", 0.0)
    assert not buf.truncated
    buf.add(2, b"abcdef", 0.0)
    assert buf.truncated
    buf.add(1, b"more", 0.0)  # past the cap: dropped
    assert buf.accepted == 10
    # Truncated: no more will come, so everything goes now, without waiting.
    assert sorted(buf.take(0.0)) == [("stderr", b"ab"), ("stdout", b"12345678")]
    assert buf.take(1.0) == []


def test_a_chunk_boundary_never_splits_a_character() -> None:
    text = "é€😀".encode()  # 2, 3 and 4 bytes
    for end in range(len(text) + 1):
        n = utf8_cut(text, end)
        text[:n].decode()  # never raises
        assert end - 3 <= n <= end
    buf = OutputBuffer(limit=1 << 20, chunk_bytes=4)
    buf.add(1, "aé€".encode(), 0.0)  # 1 + 2 + 3 bytes: the first chunk stops before the €
    first = buf.take(0.0)
    assert first == [("stdout", "aé".encode())]
    buf.closed = True
    assert buf.take(0.0) == [("stdout", "€".encode())]


def test_an_unfinished_character_waits_without_spinning() -> None:
    buf = OutputBuffer(limit=1 << 20, linger_s=0.05)
    buf.add(1, b"ok\xe2\x82", 0.0)  # the first two bytes of a €
    assert buf.take(0.06) == [("stdout", b"ok")]
    # The held tail is new from now: not due at once again (the sender would spin).
    assert buf.next_due() == pytest.approx(0.11)
    buf.add(1, b"\xac", 0.07)
    assert buf.take(0.12) == [("stdout", "€".encode())]


def test_binary_output_goes_as_base64() -> None:
    text = json.loads(encode("c1", 1, "stdout", "hé".encode()))
    assert text["data"] == "hé"
    assert "data_b64" not in text
    raw = json.loads(encode("c1", 2, "stderr", b"\xff\x00"))
    assert base64.b64decode(raw["data_b64"]) == b"\xff\x00"
    assert "data" not in raw
    chunk = ExecOutputChunk.model_validate(raw, strict=False)
    assert chunk.content() == b"\xff\x00"
    assert chunk.seq == 2
    assert chunk.stream == "stderr"
    assert is_chunk(raw)
    assert not is_chunk({"status": "succeeded", "seq": 1, "stream": "x"})


def test_stream_and_detach_exclude_each_other() -> None:
    with pytest.raises(ValidationError, match="exclude each other"):
        WorkspaceExec.model_validate({"workspace_id": "w", "command": ["true"], "stream": True, "detach": True})


def test_a_detach_result_parses_and_old_results_still_do() -> None:
    assert ExecOutput.model_validate({"exec_id": "abc"}).exit_code is None
    old = {"exit_code": 0, "stdout": "hi\n", "stderr": "", "truncated": False}
    assert ExecOutput.model_validate(old).stdout == "hi\n"
    # A v1 exec result is byte for byte what it was: no exec_id key.
    assert json.loads(ExecOutput.model_validate(old).model_dump_json()) == old
    assert "exit_code" not in json.loads(ExecOutput(exec_id="abc").model_dump_json())
    # In the Result union a detach body is an ExecOutput, not some other result.
    base = {"command_id": "c", "type": "workspace.exec", "status": "succeeded", "host_id": "h", "worker_id": "w"}
    times = {"started_at": "2026-01-01T00:00:00Z", "finished_at": "2026-01-01T00:00:00Z", "duration_ms": 1.0}
    result = Result.model_validate({**base, **times, "result": {"exec_id": "abc"}}, strict=False)
    assert isinstance(result.result, ExecOutput)
    assert result.result.exec_id == "abc"


class _Broker:
    def __init__(self, delay: float = 0.0, fail: bool = False) -> None:
        self.sent: list[dict[str, Any]] = []
        self.options: list[dict[str, Any]] = []
        self.delay = delay
        self.fail = fail

    async def publish(self, body: bytes, **options: Any) -> None:
        await asyncio.sleep(self.delay)
        if self.fail:
            raise ConnectionError("broker gone")
        self.sent.append(json.loads(body))
        self.options.append(options)


def _target(broker: _Broker) -> ReplyTarget:
    return ReplyTarget(SimpleNamespace(broker=broker), "cmd-1", "amq.gen-x", "corr-1")  # type: ignore[arg-type]


async def test_sender_publishes_in_order_to_the_reply_queue_not_persistent() -> None:
    broker = _Broker()
    sender = ChunkSender(_target(broker), OutputBuffer(limit=1 << 20, chunk_bytes=8))
    sender.add(1, b"0123456789")
    sender.add(2, b"oops")
    await asyncio.sleep(0.1)
    sender.add(1, b"end")
    await sender.finish()
    assert [c["seq"] for c in broker.sent] == list(range(1, len(broker.sent) + 1))
    out = "".join(c["data"] for c in broker.sent if c["stream"] == "stdout")
    err = "".join(c["data"] for c in broker.sent if c["stream"] == "stderr")
    assert (out, err) == ("0123456789end", "oops")
    for options in broker.options:
        assert options["routing_key"] == "amq.gen-x"
        assert options["correlation_id"] == "corr-1"
        assert options["mandatory"] is False
        assert options["persist"] is False
        assert options["message_type"] == "dockhand.exec.output"


async def test_a_failing_publish_ends_the_stream_not_the_reading(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(exec_stream, "PUBLISH_TIMEOUT_S", 0.05)
    broker = _Broker(delay=1.0)  # a broker that blocks us
    sender = ChunkSender(_target(broker), OutputBuffer(limit=1 << 20, chunk_bytes=4))
    loop = asyncio.get_running_loop()
    started = loop.time()
    for _ in range(1000):
        sender.add(1, b"abcd")  # never blocks, whatever the broker does
    assert loop.time() - started < 0.5
    await sender.finish(wait_s=2.0)
    assert sender.given_up
    assert broker.sent == []
    assert loop.time() - started < 1.5  # one timed-out publish, then the rest dropped
