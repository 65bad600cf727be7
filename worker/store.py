"""Results of executed commands by ``command_id``: a repeated command is answered from here.

An in-memory LRU is the index; with a path, every change is also written to a small SQLite
journal (WAL) and the newest ``capacity`` results are loaded back at start-up, so a worker
killed with SIGKILL — or its hot standby on the same state directory — still knows what it
already did. The dispatcher writes a result *before* publishing it and marks it published
*before* acking, so a redelivery after a crash neither repeats the work nor answers twice.

Writes are group-committed: :meth:`ResultStore.put` and :meth:`ResultStore.mark_published`
queue their row, and the writes queued during one turn of the event loop go to SQLite in one
transaction (a transaction per statement cost about four times as much CPU). Whoever depends
on a write awaits :meth:`ResultStore.durable` first: the settler before it publishes a result
and before it acks, so the order above holds exactly as with a write per statement.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
import secrets
import sqlite3
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from dockhand.schemas import Result, WireModel

_INSERT = "INSERT OR REPLACE INTO results (command_id, body, published, fingerprint) VALUES (?, ?, ?, ?)"
_MARK = "UPDATE results SET published = 1 WHERE command_id = ?"
# published = 2: on the results exchange, not yet to reply_to (0: neither, 1: both).
_MARK_RESULTS = "UPDATE results SET published = 2 WHERE command_id = ? AND published = 0"
_RESULTS_ONLY = 2
_PRUNE = "DELETE FROM results WHERE seq <= (SELECT MAX(seq) FROM results) - ?"


def _entry(body: str, published: int, fingerprint: str | None) -> Entry:
    return Entry(body, published == 1, fingerprint, results_sent=published in (1, _RESULTS_ONLY))


def store_key(owner: str | None, command_id: str) -> str:
    """The one place a store key is made: ``command_id``, scoped by its sender with tenancy on.

    Alice's id "1" and Bob's id "1" are different commands. The owner is length-prefixed so no
    choice of owner and id can produce another pair's key.
    """
    if owner is None:
        return command_id
    return f"~{len(owner)}:{owner}:{command_id}"


def _canonical(value: Any) -> Any:
    """JSON's ``default`` for a payload dumped in python mode: secrets count by their value."""
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, set | frozenset | tuple):
        return sorted(value, key=str)
    return str(value)


@dataclass(slots=True)
class Entry:
    """A stored result (its JSON), whether it was published, and the fingerprint of the command
    it answers (``None`` for a row written before fingerprints existed: it then matches any
    repeat).

    The result is kept as its JSON text, parsed only when a repeat asks for it: ten thousand
    parsed results are some 300,000 objects that every full garbage collection walks, a string
    is none.
    """

    body: str
    published: bool
    fingerprint: str | None = None
    results_sent: bool = False
    """Confirmed on the results exchange (the reply may not be): a redelivery sends the reply only."""

    @property
    def result(self) -> Result:
        """The stored result, parsed."""
        return Result.model_validate_json(self.body)


class ResultStore:
    """A bounded store of final results, optionally persisted at ``path``.

    Results are kept under a key from :func:`store_key` (the journal's ``command_id`` column
    holds that key), with the :meth:`fingerprint` of the command that produced them, so that
    a ``command_id`` sent again with another type or payload can be told apart from a repeat.
    """

    def __init__(self, capacity: int, path: Path | None = None) -> None:
        self._capacity = capacity
        self._results: OrderedDict[str, Entry] = OrderedDict()
        self._db: sqlite3.Connection | None = None
        self._writes = 0
        # Rows waiting for the next group commit, in order, and the future of that commit.
        self._pending: list[tuple[str, tuple[Any, ...]]] = []
        self._commit: asyncio.Future[None] | None = None
        # The fingerprint key: random per journal (shared by every process on the state
        # directory), per process without one. Fingerprints cover registry passwords, so they
        # are keyed hashes — a journal on its own does not let anyone test password guesses
        # against a plain hash that other journals would share.
        self._hmac_key = secrets.token_bytes(32)
        if path is not None and capacity > 0:
            path.parent.mkdir(parents=True, exist_ok=True)
            # Results (exec output, …) and the key are nobody else's business: owner-only. SQLite
            # creates the -wal and -shm files with the database file's mode.
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
            os.close(fd)
            self._db = sqlite3.connect(path, isolation_level=None)
            # WAL + NORMAL: a committed row survives the process being killed (it is in the OS
            # cache), at a fraction of the cost of an fsync per command.
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS results ("
                " seq INTEGER PRIMARY KEY AUTOINCREMENT, command_id TEXT UNIQUE NOT NULL,"
                " body TEXT NOT NULL, published INTEGER NOT NULL, fingerprint TEXT)"
            )
            columns = {row[1] for row in self._db.execute("PRAGMA table_info(results)")}
            if "fingerprint" not in columns:  # a journal from before fingerprints: migrate in place
                try:
                    self._db.execute("ALTER TABLE results ADD COLUMN fingerprint TEXT")
                except sqlite3.OperationalError as exc:  # another process on this directory did it first
                    if "duplicate column" not in str(exc):
                        raise
            self._db.execute("CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value BLOB NOT NULL)")
            # First writer wins; every process on the journal then reads the same key.
            self._db.execute(
                "INSERT OR IGNORE INTO meta (name, value) VALUES ('fingerprint_key', ?)", (self._hmac_key,)
            )
            (self._hmac_key,) = self._db.execute("SELECT value FROM meta WHERE name = 'fingerprint_key'").fetchone()
            rows = self._db.execute(
                "SELECT command_id, body, published, fingerprint FROM results ORDER BY seq DESC LIMIT ?", (capacity,)
            ).fetchall()
            for key, body, published, fingerprint in reversed(rows):
                self._results[key] = _entry(body, published, fingerprint)

    def fingerprint(self, command_type: str, payload: WireModel | None) -> str:
        """What binds a ``command_id`` to its command: a keyed hash of the type and the
        validated payload (canonical JSON, defaults filled in, secrets by value; ``expires_at``
        is left out: a resend may carry a fresh deadline)."""
        dumped = payload.model_dump(mode="python") if payload is not None else None
        canonical = json.dumps(
            [command_type, dumped], sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=_canonical
        )
        return hmac.new(self._hmac_key, canonical.encode(), hashlib.sha256).hexdigest()

    def lookup(self, key: str) -> Entry | None:
        """The stored entry under ``key``, from memory or the journal."""
        entry = self._results.get(key)
        if entry is not None:
            self._results.move_to_end(key)
            return entry
        if self._db is None:
            return None
        # Not in memory: another process on this state directory (the worker this one took
        # over from) may have written it since start-up.
        row = self._db.execute(
            "SELECT body, published, fingerprint FROM results WHERE command_id = ?", (key,)
        ).fetchone()
        if row is None:
            return None
        entry = _entry(row[0], row[1], row[2])
        self._results[key] = entry
        return entry

    def get(self, key: str) -> Result | None:
        entry = self.lookup(key)
        return entry.result if entry is not None else None

    def is_published(self, key: str) -> bool:
        entry = self.lookup(key)
        return entry is not None and entry.published

    def put(
        self,
        result: Result,
        *,
        published: bool = True,
        key: str | None = None,
        fingerprint: str | None = None,
        body: str | None = None,
    ) -> None:
        """Keep ``result`` under ``key`` (default: its ``command_id``, i.e. unscoped), bound to
        the ``fingerprint`` of its command; ``body`` is its JSON when the caller has it already.
        In the journal once :meth:`durable` returns."""
        if self._capacity == 0:
            return
        key = result.command_id if key is None else key
        body = body if body is not None else result.model_dump_json()
        self._results[key] = Entry(body, published, fingerprint)
        self._results.move_to_end(key)
        while len(self._results) > self._capacity:
            self._results.popitem(last=False)
        if self._db is not None:
            self._write(_INSERT, (key, body, int(published), fingerprint))
            self._writes += 1
            if self._writes % 1000 == 0:
                self._write(_PRUNE, (self._capacity,))

    def mark_results_sent(self, key: str) -> None:
        """Note that ``key``'s result is confirmed on the results exchange, before its reply is
        sent: a crash in between then repeats only the reply (written with the next commit)."""
        entry = self._results.get(key)
        if entry is None or entry.published or entry.results_sent:
            return
        entry.results_sent = True
        if self._db is not None:
            self._write(_MARK_RESULTS, (key,))

    def mark_published(self, key: str) -> None:
        """Note that ``key``'s result was confirmed by the broker (written with the next commit)."""
        entry = self._results.get(key)
        if entry is None or entry.published:
            return
        entry.published = True
        if self._db is not None:
            self._write(_MARK, (key,))

    async def durable(self) -> None:
        """Return once every write queued so far is committed to the journal; raises what the
        commit raised (the caller then must not rely on the write)."""
        if self._commit is not None:
            await asyncio.shield(self._commit)

    def _write(self, statement: str, row: tuple[Any, ...]) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no event loop (a tool, a test): write now
            self._pending.append((statement, row))
            self._flush()
            return
        self._pending.append((statement, row))
        if self._commit is None:
            self._commit = loop.create_future()
            loop.call_soon(self._flush)

    def _flush(self) -> None:
        """One transaction for every queued write; its future carries the outcome."""
        rows, self._pending = self._pending, []
        commit, self._commit = self._commit, None
        try:
            if self._db is not None and rows:
                with self._db:  # BEGIN ... COMMIT, or ROLLBACK on an error
                    self._db.execute("BEGIN")
                    for statement, row in rows:
                        self._db.execute(statement, row)
        except BaseException as exc:
            if commit is None:
                raise
            commit.set_exception(exc)
            commit.exception()  # retrieved: a commit nobody awaited must not warn at exit
            return
        if commit is not None:
            commit.set_result(None)

    def close(self) -> None:
        """Commit what is queued, then close the journal."""
        if self._db is not None:
            self._flush()
            self._db.close()
            self._db = None

    def __len__(self) -> int:
        return len(self._results)
