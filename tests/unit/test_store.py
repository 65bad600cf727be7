"""worker.store: fingerprints that bind a command_id to its command; the journal and its migration."""

from __future__ import annotations

import sqlite3
import stat
from datetime import UTC, datetime
from pathlib import Path

import pytest

from dockhand.schemas import Result, Status
from dockhand.schemas.commands import ImagePull, RegistryAuth, WorkspaceExec
from dockhand.worker.store import ResultStore


def _result(command_id: str) -> Result:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    return Result(
        command_id=command_id,
        type="host.info",
        status=Status.SUCCEEDED,
        host_id="host-a",
        worker_id="host-a-1",
        started_at=now,
        finished_at=now,
        duration_ms=0.0,
    )


def _pull(password: str, image: str = "reg.example/a:1") -> ImagePull:
    return ImagePull.model_validate({"image": image, "registry_auth": {"username": "u", "password": password}})


def test_fingerprint_tells_type_and_payload_apart() -> None:
    store = ResultStore(10)
    exec_a = WorkspaceExec(workspace_id="ws1", command=["echo", "a"])
    exec_b = WorkspaceExec(workspace_id="ws1", command=["echo", "b"])
    assert store.fingerprint("workspace.exec", exec_a) == store.fingerprint("workspace.exec", exec_a.model_copy())
    assert store.fingerprint("workspace.exec", exec_a) != store.fingerprint("workspace.exec", exec_b)
    assert store.fingerprint("workspace.exec", exec_a) != store.fingerprint("workspace.logs", exec_a)
    # Defaults filled in: an omitted field and its default are the same command.
    explicit = WorkspaceExec(workspace_id="ws1", command=["echo", "a"], env={})
    assert store.fingerprint("workspace.exec", exec_a) == store.fingerprint("workspace.exec", explicit)


def test_fingerprint_covers_secrets_by_value_without_storing_them(tmp_path: Path) -> None:
    path = tmp_path / "results.sqlite3"
    store = ResultStore(10, path)
    one = store.fingerprint("image.pull", _pull("hunter2-one"))
    assert one != store.fingerprint("image.pull", _pull("hunter2-two"))  # SecretStr dumps as ****
    store.put(_result("c1"), fingerprint=one)
    store.close()
    raw = path.read_bytes() + b"".join(p.read_bytes() for p in tmp_path.glob("results.sqlite3-*"))
    assert b"hunter2" not in raw
    # A keyed hash: the same payload under another journal's key gives another fingerprint.
    assert ResultStore(10, tmp_path / "other.sqlite3").fingerprint("image.pull", _pull("hunter2-one")) != one


def test_fingerprint_key_is_shared_by_processes_on_one_journal(tmp_path: Path) -> None:
    path = tmp_path / "results.sqlite3"
    first = ResultStore(10, path)
    second = ResultStore(10, path)  # a standby on the same state directory
    payload = _pull("pw")
    assert first.fingerprint("image.pull", payload) == second.fingerprint("image.pull", payload)
    first.close()
    assert ResultStore(10, path).fingerprint("image.pull", payload) == second.fingerprint("image.pull", payload)


def test_journal_keeps_fingerprints_across_restarts(tmp_path: Path) -> None:
    path = tmp_path / "results.sqlite3"
    store = ResultStore(10, path)
    store.put(_result("c1"), fingerprint="f1", published=False)
    store.mark_published("c1")
    store.close()
    entry = ResultStore(10, path).lookup("c1")
    assert entry is not None
    assert (entry.result.command_id, entry.published, entry.fingerprint) == ("c1", True, "f1")


def test_journal_is_owner_only(tmp_path: Path) -> None:
    path = tmp_path / "results.sqlite3"
    ResultStore(10, path).close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_old_journal_without_fingerprints_is_migrated(tmp_path: Path) -> None:
    path = tmp_path / "results.sqlite3"
    db = sqlite3.connect(path)
    db.execute(
        "CREATE TABLE results (seq INTEGER PRIMARY KEY AUTOINCREMENT, command_id TEXT UNIQUE NOT NULL,"
        " body TEXT NOT NULL, published INTEGER NOT NULL)"
    )
    db.execute(
        "INSERT INTO results (command_id, body, published) VALUES (?, ?, 1)", ("old", _result("old").model_dump_json())
    )
    db.commit()
    db.close()
    store = ResultStore(10, path)
    entry = store.lookup("old")
    assert entry is not None
    assert entry.published
    assert entry.fingerprint is None  # unknown: the dispatcher answers it as before
    store.put(_result("new"), fingerprint="f2")
    store.close()
    reopened = ResultStore(10, path)
    assert reopened.lookup("new") is not None
    assert reopened.lookup("new").fingerprint == "f2"
    # Opening the migrated journal again (another process) changes nothing.
    assert ResultStore(10, path).lookup("old") is not None


def test_put_under_a_scoped_key(tmp_path: Path) -> None:
    store = ResultStore(10, tmp_path / "r.sqlite3")
    store.put(_result("1"), key="~5:alice:1", fingerprint="fa")
    assert store.lookup("1") is None
    assert store.get("~5:alice:1") is not None


def test_registry_auth_secret_is_not_in_the_canonical_text_of_results() -> None:
    # The password takes part in the fingerprint; a result never carries it (sanity for the model).
    auth = RegistryAuth.model_validate({"username": "u", "password": "hunter2"})
    assert "hunter2" not in auth.model_dump_json()


def _journal(path: Path) -> dict[str, int]:
    """What another process reading the journal sees now: command_id -> published."""
    with sqlite3.connect(path) as db:
        return dict(db.execute("SELECT command_id, published FROM results").fetchall())


async def test_writes_of_one_loop_turn_are_one_commit_and_durable_waits_for_it(tmp_path: Path) -> None:
    path = tmp_path / "r.sqlite3"
    store = ResultStore(100, path)
    commits: list[int] = []
    store._db.set_trace_callback(lambda sql: commits.append(1) if sql == "COMMIT" else None)  # type: ignore[union-attr]
    for i in range(20):
        store.put(_result(f"c{i}"), published=False, fingerprint="f")
    store.mark_published("c3")
    assert _journal(path) == {}  # queued, not yet written: nothing relies on them before durable()
    await store.durable()
    assert len(commits) == 1
    journal = _journal(path)
    assert len(journal) == 20
    assert journal["c3"] == 1
    assert journal["c4"] == 0
    await store.durable()  # nothing queued: returns at once, no empty commit
    assert len(commits) == 1
    store.close()


async def test_a_failed_commit_reaches_whoever_waits_for_it(tmp_path: Path) -> None:
    path = tmp_path / "r.sqlite3"
    store = ResultStore(100, path)
    blocker = sqlite3.connect(path, timeout=0)
    blocker.execute("BEGIN IMMEDIATE")  # another process holds the journal's write lock
    store._db.execute("PRAGMA busy_timeout = 0")  # type: ignore[union-attr]
    store.put(_result("c1"), published=False, fingerprint="f")
    try:
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            await store.durable()
    finally:
        blocker.rollback()
        blocker.close()
    store.put(_result("c2"), published=False, fingerprint="f")
    await store.durable()  # the next commit works again
    assert "c2" in _journal(path)
    store.close()


def test_close_commits_what_is_queued(tmp_path: Path) -> None:
    path = tmp_path / "r.sqlite3"
    store = ResultStore(100, path)
    store.put(_result("c1"), fingerprint="f")  # no event loop: written at once
    assert _journal(path) == {"c1": 1}
    store.close()


def test_a_result_sent_to_the_results_exchange_only_is_known_after_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "r.sqlite3"
    store = ResultStore(10, path)
    store.put(_result("half"), published=False, fingerprint="f")
    store.put(_result("whole"), published=False, fingerprint="f")
    store.put(_result("none"), published=False, fingerprint="f")
    store.mark_results_sent("half")
    store.mark_results_sent("whole")
    store.mark_published("whole")
    store.close()
    reopened = ResultStore(10, path)
    half, whole, none = (reopened.lookup(k) for k in ("half", "whole", "none"))
    assert half is not None
    assert (half.results_sent, half.published) == (True, False)
    assert whole is not None
    assert (whole.results_sent, whole.published) == (True, True)
    assert none is not None
    assert (none.results_sent, none.published) == (False, False)
    reopened.close()
