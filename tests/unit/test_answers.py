"""worker.answers without a broker: a fake channel in transaction mode (tests.fakes.FakeTxChannel)."""

from __future__ import annotations

import asyncio

import pytest
from faststream.rabbit import RabbitExchange
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from dockhand.worker.answers import Outgoing, Transactions
from tests.fakes import FakeMessage, FakePublisher, FakeTxChannel

RESULTS = RabbitExchange("dh.results")


def answer(n: int) -> list[Outgoing]:
    return [
        Outgoing(b'{"n": %d}' % n, RESULTS, "host.info.succeeded", {"persist": True}),
        Outgoing(b'{"n": %d}' % n, RabbitExchange(), f"reply-{n}", {"correlation_id": f"c{n}"}),
    ]


def delivered(channel: FakeTxChannel | None, n: int = 1) -> FakeMessage:
    return FakeMessage(b"{}", "host-a.host.info", message_id=f"m-{n}", channel=channel)


async def test_tx_select_once_per_channel_and_again_on_a_new_one() -> None:
    tx = Transactions(FakePublisher())  # type: ignore[arg-type]
    first, second = FakeTxChannel(), FakeTxChannel()
    for channel in (first, first, second):
        message = delivered(channel)
        await tx.commit(message, answer(1), message.ack)  # type: ignore[arg-type]
    assert (first.selected, second.selected) == (True, True)
    assert (first.commits, second.commits) == (2, 1)


async def test_answers_written_while_a_commit_is_in_flight_share_the_next_commit() -> None:
    tx = Transactions(FakePublisher())  # type: ignore[arg-type]
    channel = FakeTxChannel()
    channel.gate.clear()  # the first commit waits for its commit-ok
    messages = [delivered(channel, n) for n in range(5)]
    first = asyncio.create_task(tx.commit(messages[0], answer(0), messages[0].ack))  # type: ignore[arg-type]
    await asyncio.sleep(0.01)
    rest = [asyncio.create_task(tx.commit(m, answer(n), m.ack)) for n, m in enumerate(messages[1:], 1)]  # type: ignore[arg-type]
    await asyncio.sleep(0.01)
    assert not first.done()
    channel.gate.set()
    await asyncio.gather(first, *rest)
    assert channel.commits == 2
    # Each answer's frames stay together and in order: results, reply, ack.
    kinds = [c[0] if c[0] != "publish" else c[2] for c in channel.committed]
    assert kinds == [k for n in range(5) for k in ("host.info.succeeded", f"reply-{n}", "ack")]


async def test_a_failed_commit_reaches_every_answer_of_its_batch_and_commits_nothing() -> None:
    tx = Transactions(FakePublisher())  # type: ignore[arg-type]
    channel = FakeTxChannel()
    channel.fail_commit = ConnectionResetError("connection lost")
    messages = [delivered(channel, n) for n in range(3)]
    outcomes = await asyncio.gather(
        *(tx.commit(m, answer(n), m.ack) for n, m in enumerate(messages)),  # type: ignore[arg-type]
        return_exceptions=True,
    )
    assert all(isinstance(o, ConnectionResetError) for o in outcomes), outcomes
    assert channel.committed == []


async def test_a_failure_while_writing_closes_the_channel_so_no_half_answer_is_committed_later() -> None:
    tx = Transactions(FakePublisher())  # type: ignore[arg-type]
    channel = FakeTxChannel()
    broken = delivered(channel, 1)
    broken.broken = RuntimeError("ack refused")  # the results and reply frames are written first
    with pytest.raises(RuntimeError):
        await tx.commit(broken, answer(1), broken.ack)  # type: ignore[arg-type]
    assert channel.closed
    assert channel.pending == []
    assert channel.committed == []


async def test_a_message_without_a_channel_gets_confirmed_publishes_then_its_settle() -> None:
    publisher = FakePublisher()
    tx = Transactions(publisher)  # type: ignore[arg-type]
    message = delivered(None)
    await tx.commit(message, answer(3), message.ack)  # type: ignore[arg-type]
    assert [options.get("routing_key") for _, options in publisher.sent] == ["host.info.succeeded", "reply-3"]
    assert "exchange" not in publisher.sent[1][1]  # the reply: the default exchange
    assert message.settled == ["ack"]


async def test_with_a_tracer_an_answer_is_a_producer_span_whose_context_the_messages_carry() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    publisher = FakePublisher()
    tx = Transactions(publisher, tracer=provider.get_tracer("test"))  # type: ignore[arg-type]
    channel = FakeTxChannel()
    carried: list[dict[str, object]] = []
    message_of = publisher.message

    def message(payload: bytes, **options: object):  # type: ignore[no-untyped-def]
        from dockhand.worker.telemetry import carry_trace

        headers: dict[str, object] = {}
        carry_trace(headers)
        carried.append(headers)
        return message_of(payload, **options)

    publisher.message = message  # type: ignore[method-assign]
    delivery = delivered(channel)
    await tx.commit(delivery, answer(1), delivery.ack)  # type: ignore[arg-type]
    [span] = exporter.get_finished_spans()
    assert span.kind is SpanKind.PRODUCER
    assert span.name == "dh.results publish"
    assert span.context is not None
    assert all(f"{span.context.span_id:016x}" in str(h.get("traceparent")) for h in carried), carried


async def test_closed_channels_are_forgotten_when_a_new_one_comes() -> None:
    tx = Transactions(FakePublisher())  # type: ignore[arg-type]
    old, new = FakeTxChannel(), FakeTxChannel()
    message = delivered(old)
    await tx.commit(message, answer(1), message.ack)  # type: ignore[arg-type]
    await old.close()  # a reconnect
    message = delivered(new)
    await tx.commit(message, answer(2), message.ack)  # type: ignore[arg-type]
    assert list(tx._channels) == [new]
