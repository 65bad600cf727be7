"""Every way the dispatcher settles a delivery, with the shared fakes (tests/fakes).

The real dispatcher and the real DockerOps run over :class:`~tests.fakes.FakeDockerClient`
(which counts every Docker call) and take :class:`~tests.fakes.FakeMessage` deliveries; results
go to a :class:`~tests.fakes.FakePublisher`. Each test asserts the one settle call the message
got — ``ack``, ``reject`` (to the dead letters), ``nack`` with requeue — and what was published
before it.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import stamina

from dockhand.schemas import Status, utcnow
from dockhand.worker.dispatch import Dispatcher
from dockhand.worker.docker import DockerOps
from dockhand.worker.labels import Labels
from dockhand.worker.policy import Policy
from dockhand.worker.settings import Settings
from dockhand.worker.topology import Topology
from tests.fakes import FakeDockerClient, FakeMessage, FakePublisher, FakeTxChannel, is_dead_letter, is_result

HOST = "host-a"
NAMES = Labels("dockhand", "dockhand")
INFO = {"command_id": "c1", "type": "host.info"}


@pytest.fixture(autouse=True)
def stamina_testing() -> Iterator[None]:
    with stamina.set_testing(True):
        yield


def make(
    docker: FakeDockerClient | None = None, publisher: FakePublisher | None = None, **overrides: Any
) -> tuple[Dispatcher, FakeDockerClient, FakePublisher]:
    settings = Settings(
        **{"host_id": HOST, "worker_id": f"{HOST}-t", "docker_host": None, "state_dir": None, **overrides}
    )
    docker = docker or FakeDockerClient()
    publisher = publisher or FakePublisher()
    dispatcher = Dispatcher(settings, Topology(settings), publisher)  # type: ignore[arg-type]
    dispatcher.ops = DockerOps(docker, settings, NAMES, Policy(settings, NAMES))  # type: ignore[arg-type]
    return dispatcher, docker, publisher


def deliver(dispatcher: Dispatcher, body: bytes | dict[str, Any], command_type: str, **props: Any) -> FakeMessage:
    message = FakeMessage(body, f"{HOST}.{command_type}", **props)
    dispatcher.submit(message.body, message)  # type: ignore[arg-type]
    return message


async def idle(dispatcher: Dispatcher) -> None:
    """Wait until every job the dispatcher took has ended."""
    if dispatcher.lanes.tasks:
        await asyncio.wait(dispatcher.lanes.tasks, timeout=5)


def docker_calls(docker: FakeDockerClient) -> int:
    return docker.version_calls + docker.info_calls + len(docker.show_calls) + len(docker.list_calls)


# --- ack -------------------------------------------------------------------------------------


async def test_a_result_is_acked_only_after_it_is_confirmed_to_the_exchange_and_the_reply_queue() -> None:
    dispatcher, docker, publisher = make()
    message = FakeMessage(INFO, f"{HOST}.host.info", reply_to="client-replies", correlation_id="corr-7")
    settled_at_publish: list[list[tuple[str, bool]]] = []
    confirmed = publisher.confirmed

    async def watching(payload: bytes, **options: Any) -> None:
        settled_at_publish.append(list(message.settlements))
        await confirmed(payload, **options)

    publisher.confirmed = watching  # type: ignore[method-assign]
    dispatcher.submit(message.body, message)  # type: ignore[arg-type]

    assert await message.settled_once() == ("ack", False)
    assert settled_at_publish == [[], []]  # both publishes came before the ack
    (to_exchange, exchange_options), (to_reply, reply_options) = publisher.sent
    assert exchange_options["exchange"] == dispatcher.topology.results
    assert exchange_options["routing_key"] == dispatcher.topology.result_key("host.info", "succeeded")
    assert exchange_options["persist"] is True
    assert exchange_options["correlation_id"] == "corr-7"
    assert reply_options == {
        "routing_key": "client-replies",
        "correlation_id": "corr-7",
        "message_type": "dockhand.result",
    }
    assert to_reply == to_exchange
    result = json.loads(to_exchange)
    assert (result["command_id"], result["status"], result["attempt"]) == ("c1", "succeeded", 1)
    assert result["result"]["docker_version"] == "20.10.24"
    assert (docker.version_calls, docker.info_calls) == (1, 1)
    assert dispatcher.store.is_published(dispatcher._store_key("c1"))
    assert dispatcher.counters.by_status[Status.SUCCEEDED] == 1


async def test_an_expired_command_is_answered_expired_and_acked_without_docker() -> None:
    dispatcher, docker, publisher = make()
    expired = {**INFO, "expires_at": (utcnow() - timedelta(seconds=1)).isoformat()}
    message = deliver(dispatcher, expired, "host.info")
    assert await message.settled_once() == ("ack", False)
    [result] = publisher.results("c1")
    assert result["status"] == "expired"
    assert result["error"]["code"] == "timeout"
    assert docker_calls(docker) == 0


async def test_a_retryable_failure_is_acked_but_not_stored_so_a_repeat_runs_again() -> None:
    dispatcher, docker, publisher = make()
    docker.fail = ConnectionRefusedError(111, "Connection refused")
    assert await deliver(dispatcher, INFO, "host.info").settled_once() == ("ack", False)
    [failed] = publisher.results("c1")
    assert failed["status"] == "failed"
    assert failed["error"]["retryable"] is True
    assert dispatcher.store.lookup(dispatcher._store_key("c1")) is None

    docker.fail = None
    calls = docker.version_calls
    assert await deliver(dispatcher, INFO, "host.info").settled_once() == ("ack", False)
    assert publisher.results("c1")[-1]["status"] == "succeeded"
    assert docker.version_calls > calls  # ran again


async def test_a_full_exec_pool_answers_capacity_and_acks_without_running() -> None:
    dispatcher, docker, publisher = make(max_concurrent_execs=1)
    docker.gate.clear()  # the first exec is held in its first Docker call
    exec1 = {"command_id": "e1", "type": "workspace.exec", "payload": {"workspace_id": "ws1", "command": ["true"]}}
    exec2 = {**exec1, "command_id": "e2"}
    first = deliver(dispatcher, exec1, "workspace.exec")
    second = deliver(dispatcher, exec2, "workspace.exec")

    assert await second.settled_once() == ("ack", False)
    [refused] = publisher.results("e2")
    assert refused["status"] == "failed"
    assert refused["error"]["code"] == "capacity"
    assert refused["error"]["retryable"] is True
    assert first.settlements == []
    shown = list(docker.show_calls)
    docker.gate.set()
    assert await first.settled_once() == ("ack", False)
    assert publisher.results("e1")[0]["error"]["code"] == "not_found"  # ws1 does not exist
    assert len(shown) <= 1  # only the first exec reached Docker
    assert dispatcher.store.lookup(dispatcher._store_key("e2")) is None  # may be sent again


async def test_a_reused_command_id_is_a_conflict_acked_without_running_or_overwriting() -> None:
    dispatcher, docker, publisher = make()
    assert await deliver(dispatcher, INFO, "host.info").settled_once() == ("ack", False)
    original = publisher.results("c1")[0]
    other = {"command_id": "c1", "type": "discovery.list"}
    assert await deliver(dispatcher, other, "discovery.list").settled_once() == ("ack", False)
    conflict = publisher.results("c1")[-1]
    assert (conflict["status"], conflict["error"]["code"], conflict["result"]) == ("failed", "conflict", None)
    assert docker.list_calls == []  # discovery.list did not run
    assert dispatcher.store.get(dispatcher._store_key("c1")) is not None
    assert await deliver(dispatcher, INFO, "host.info").settled_once() == ("ack", False)
    assert publisher.results("c1")[-1] == original


# --- reject to the dead letters ------------------------------------------------------------


async def test_an_unreadable_body_is_rejected_to_the_dead_letters_without_a_result() -> None:
    dispatcher, docker, publisher = make()
    message = deliver(dispatcher, b"\xff\xfe not json", "host.info")
    assert await message.settled_once() == ("reject", False)
    assert publisher.sent == []  # no command_id: nobody to answer
    assert dispatcher.counters.by_status[Status.REJECTED] == 1
    assert docker_calls(docker) == 0


async def test_a_malformed_body_with_a_readable_id_is_answered_then_rejected() -> None:
    dispatcher, docker, publisher = make()
    message = deliver(dispatcher, b'{"command_id": "c9", "type": "host.info", ', "host.info")
    assert await message.settled_once() == ("reject", False)
    [result] = publisher.results("c9")
    assert (result["status"], result["error"]["code"]) == ("rejected", "invalid_command")
    assert publisher.dead_letters() == []  # the broker dead-letters the original
    assert docker_calls(docker) == 0


async def test_a_forbidden_command_is_answered_rejected_then_dead_lettered_and_docker_untouched() -> None:
    dispatcher, docker, publisher = make()
    create = {
        "command_id": "cr1",
        "type": "workspace.create",
        "payload": {"workspace_id": "ws1", "image": "busybox:1.36", "labels": {"dockhand.managed": "false"}},
    }
    message = deliver(dispatcher, create, "workspace.create")
    assert await message.settled_once() == ("reject", False)
    [result] = publisher.results("cr1")
    assert (result["status"], result["error"]["code"]) == ("rejected", "forbidden")
    assert docker_calls(docker) == 0
    assert docker.pull_calls == []
    assert dispatcher.store.lookup(dispatcher._store_key("cr1")) is None  # a rejection is not kept


async def test_a_secret_whose_redacted_copy_cannot_be_dead_lettered_is_requeued_not_rejected() -> None:
    dispatcher, _, publisher = make()
    publisher.fail(when=is_dead_letter)
    body = {
        "command_id": "cr2",
        "type": "workspace.create",
        "payload": {"workspace_id": "ws1", "image": "a:1", "registry_auth": {"username": "u", "password": "hunter2"}},
        "junk": 1,
    }
    message = deliver(dispatcher, body, "workspace.create")
    assert await message.settled_once() == ("nack", True)  # never reject: the original keeps the password
    assert publisher.results("cr2")[0]["status"] == "rejected"
    [(copy, _)] = publisher.refused
    assert b"hunter2" not in copy


# --- requeue ---------------------------------------------------------------------------------


async def test_a_failed_result_publish_requeues_and_the_redelivery_is_answered_from_the_store() -> None:
    dispatcher, docker, publisher = make()
    publisher.fail(when=is_result)
    first = deliver(dispatcher, INFO, "host.info")
    assert await first.settled_once() == ("nack", True)
    assert publisher.sent == []
    [(refused, _)] = publisher.refused
    assert not dispatcher.store.is_published(dispatcher._store_key("c1"))

    publisher.heal()
    again = deliver(dispatcher, INFO, "host.info", redelivered=True)
    assert await again.settled_once() == ("ack", False)
    [(published, _)] = publisher.sent
    assert published == refused  # the stored result, verbatim
    assert (docker.version_calls, docker.info_calls) == (1, 1)  # Docker was not asked again
    assert dispatcher.store.is_published(dispatcher._store_key("c1"))


async def test_a_delivery_to_a_standby_is_given_back_untouched() -> None:
    dispatcher, docker, publisher = make()
    dispatcher.active = False
    assert await deliver(dispatcher, INFO, "host.info").settled_once() == ("nack", True)
    assert publisher.sent == []
    assert docker_calls(docker) == 0


async def test_a_delivery_while_draining_is_left_unsettled_for_the_next_worker() -> None:
    dispatcher, docker, publisher = make()
    assert await dispatcher.drain(1) is True
    message = deliver(dispatcher, INFO, "host.info")
    await idle(dispatcher)
    assert message.settlements == []
    assert publisher.sent == []
    assert docker_calls(docker) == 0


# --- answered from the journal (the result store on disk) --------------------------------------


async def test_after_a_restart_an_unpublished_result_is_published_from_the_journal(tmp_path: Path) -> None:
    dispatcher, _, publisher = make(state_dir=tmp_path)
    publisher.fail(when=is_result)
    assert await deliver(dispatcher, INFO, "host.info").settled_once() == ("nack", True)
    [(refused, _)] = publisher.refused
    dispatcher.store.close()

    restarted, docker, publisher = make(state_dir=tmp_path)
    redelivery = deliver(restarted, INFO, "host.info", redelivered=True)
    assert await redelivery.settled_once() == ("ack", False)
    [(published, _)] = publisher.sent
    assert published == refused
    assert docker_calls(docker) == 0  # answered from the journal, not run again
    restarted.store.close()


async def test_a_resent_command_already_answered_is_answered_on_both_again(tmp_path: Path) -> None:
    """Only the crash window skips the results exchange: a sender asking again for an answered
    command (a new message) gets it on both, as before."""
    dispatcher, _, publisher = make(state_dir=tmp_path)
    first = deliver(dispatcher, INFO, "host.info", reply_to="r", correlation_id="k1")
    assert await first.settled_once() == ("ack", False)
    again = deliver(dispatcher, INFO, "host.info", reply_to="r", correlation_id="k2")
    assert await again.settled_once() == ("ack", False)
    assert len(publisher.results("c1")) == 2
    assert len(publisher.replies()) == 2
    dispatcher.store.close()


async def test_a_repeat_that_is_not_a_redelivery_gets_the_stored_result_again() -> None:
    dispatcher, docker, publisher = make()
    assert await deliver(dispatcher, INFO, "host.info").settled_once() == ("ack", False)
    assert await deliver(dispatcher, INFO, "host.info").settled_once() == ("ack", False)
    first, second = publisher.results("c1")
    assert second == first
    assert (docker.version_calls, docker.info_calls) == (1, 1)


# --- answers in a transaction (worker/answers.py) ----------------------------------------------


def journal(path: Path) -> dict[str, int]:
    import sqlite3

    with sqlite3.connect(path) as db:
        return dict(db.execute("SELECT command_id, published FROM results").fetchall())


async def test_the_result_is_confirmed_then_the_reply_and_the_ack_commit_in_one_transaction() -> None:
    dispatcher, _, publisher = make()
    channel = FakeTxChannel()
    message = deliver(
        dispatcher, INFO, "host.info", reply_to="client-replies", correlation_id="corr-7", channel=channel
    )
    assert await message.settled_once() == ("ack", False)
    await idle(dispatcher)
    [result] = publisher.results("c1")  # confirmed on the results exchange first
    assert [c[:3] for c in channel.committed] == [("publish", "", "client-replies"), ("ack", False, message)]
    assert channel.commits == 1
    assert channel.committed[0][4].correlation_id == "corr-7"
    assert json.loads(channel.committed[0][3]) == result


async def test_killed_before_the_commit_the_reply_and_the_ack_are_undone_and_only_the_reply_is_sent_again(
    tmp_path: Path,
) -> None:
    """The kill -9 soak's duplicate answers, closed: with confirms, a kill between the reply's
    confirm and the journal's mark sent the reply twice. In the transaction nothing of the
    reply exists before the commit, and after it the command is acked (never redelivered). The
    results exchange's confirm is noted before the reply, so the redelivery does not send the
    result there again."""
    dispatcher, docker, publisher = make(state_dir=tmp_path)
    channel = FakeTxChannel()
    channel.fail_commit = ConnectionResetError("the worker died before tx.commit")
    message = deliver(dispatcher, INFO, "host.info", reply_to="client-replies", channel=channel)
    await message.wait_settled()
    await idle(dispatcher)
    assert channel.committed == []  # the broker discarded the open transaction
    assert channel.closed
    [first] = publisher.results("c1")
    ran = docker_calls(docker)
    dispatcher.store.close()

    restarted, docker, publisher = make(state_dir=tmp_path)
    again = FakeTxChannel()
    redelivery = deliver(restarted, INFO, "host.info", redelivered=True, reply_to="client-replies", channel=again)
    assert await redelivery.settled_once() == ("ack", False)
    await idle(restarted)
    assert publisher.results("c1") == []  # not a second copy for every results consumer
    assert [c[:3] for c in again.committed] == [("publish", "", "client-replies"), ("ack", False, redelivery)]
    assert json.loads(again.committed[0][3]) == first
    assert docker_calls(docker) == 0 < ran  # answered from the journal, not run again
    restarted.store.close()


async def test_the_result_is_in_the_journal_before_it_is_published_and_marked_after_the_commit(
    tmp_path: Path,
) -> None:
    dispatcher, _, publisher = make(state_dir=tmp_path)
    path = tmp_path / f"results-{HOST}.sqlite3"
    channel = FakeTxChannel()
    seen: list[dict[str, int]] = []
    confirmed, publish = publisher.confirmed, channel.basic_publish

    async def watching_confirmed(payload: bytes, **options: Any) -> None:
        seen.append(journal(path))
        await confirmed(payload, **options)

    async def watching_publish(body: bytes, **options: Any) -> None:
        seen.append(journal(path))
        await publish(body, **options)

    publisher.confirmed = watching_confirmed  # type: ignore[method-assign]
    channel.basic_publish = watching_publish  # type: ignore[method-assign]
    message = deliver(dispatcher, INFO, "host.info", reply_to="r", channel=channel)
    assert await message.settled_once() == ("ack", False)
    await idle(dispatcher)
    await dispatcher.store.durable()
    key = dispatcher._store_key("c1")
    assert seen[0] == {key: 0}  # stored before the results publish
    assert seen[1][key] in (0, 2)  # before the reply: stored, its results confirm maybe noted
    assert journal(path) == {key: 1}  # marked once committed
    dispatcher.store.close()


async def test_a_rejected_command_is_answered_then_replied_and_dead_lettered_in_one_transaction() -> None:
    dispatcher, _, publisher = make()
    channel = FakeTxChannel()
    bad = {"command_id": "bad-1", "type": "host.info", "payload": {"nope": 1}}
    message = deliver(dispatcher, bad, "host.info", reply_to="r", channel=channel)
    assert await message.settled_once() == ("reject", False)
    await idle(dispatcher)
    assert [r["status"] for r in publisher.results("bad-1")] == ["rejected"]
    assert [c[0] for c in channel.committed] == ["publish", "reject"]
    assert channel.published()[0][2]["status"] == "rejected"
    assert channel.commits == 1


async def test_a_redacted_dead_letter_is_committed_with_the_ack_of_the_original() -> None:
    dispatcher, _, publisher = make()
    channel = FakeTxChannel()
    secret = {"command_id": "s-1", "type": "host.info", "payload": {"registry_auth": {"password": "hunter2"}}}
    message = deliver(dispatcher, secret, "host.info", channel=channel)
    assert await message.settled_once() == ("ack", False)
    await idle(dispatcher)
    assert len(publisher.results("s-1")) == 1
    assert [e for e, _, _ in channel.published()] == [dispatcher.topology.dead.name]
    assert b"hunter2" not in b"".join(c[3] for c in channel.committed if c[0] == "publish")
    assert channel.settles() == [("ack", False)]
    assert channel.commits == 1


async def test_a_refused_result_requeues_the_command_through_a_commit_not_a_pending_nack() -> None:
    # On a channel in transaction mode a bare nack would wait for someone's next commit.
    dispatcher, _, publisher = make()
    publisher.fail(when=is_result)
    channel = FakeTxChannel()
    message = deliver(dispatcher, INFO, "host.info", reply_to="r", channel=channel)
    assert await message.settled_once() == ("nack", True)
    await idle(dispatcher)
    assert channel.committed == [("nack", True, message)]
    assert channel.pending == []
