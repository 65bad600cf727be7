"""Results of executed commands by ``command_id``: a repeated command is answered from here.

An in-memory LRU is the index; with a path, every change is also written to a small SQLite
journal (WAL) and the newest ``capacity`` results are loaded back at start-up, so a worker
killed with SIGKILL — or its hot standby on the same state directory — still knows what it
already did. The dispatcher writes a result *before* publishing it and marks it published
*before* acking, so a redelivery after a crash neither repeats the work nor answers twice.
"""

from __future__ import annotations

import sqlite3
from collections import OrderedDict
from pathlib import Path

from schemas import Result


class ResultStore:
    """A bounded store of final results, optionally persisted at ``path``."""

    def __init__(self, capacity: int, path: Path | None = None) -> None:
        self._capacity = capacity
        self._results: OrderedDict[str, tuple[Result, bool]] = OrderedDict()
        self._db: sqlite3.Connection | None = None
        self._writes = 0
        if path is not None and capacity > 0:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(path, isolation_level=None)
            # WAL + NORMAL: a committed row survives the process being killed (it is in the OS
            # cache), at a fraction of the cost of an fsync per command.
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS results ("
                " seq INTEGER PRIMARY KEY AUTOINCREMENT, command_id TEXT UNIQUE NOT NULL,"
                " body TEXT NOT NULL, published INTEGER NOT NULL)"
            )
            rows = self._db.execute(
                "SELECT body, published FROM results ORDER BY seq DESC LIMIT ?", (capacity,)
            ).fetchall()
            for body, published in reversed(rows):
                result = Result.model_validate_json(body)
                self._results[result.command_id] = (result, bool(published))

    def _lookup(self, command_id: str) -> tuple[Result, bool] | None:
        entry = self._results.get(command_id)
        if entry is not None:
            self._results.move_to_end(command_id)
            return entry
        if self._db is None:
            return None
        # Not in memory: another process on this state directory (the worker this one took
        # over from) may have written it since start-up.
        row = self._db.execute("SELECT body, published FROM results WHERE command_id = ?", (command_id,)).fetchone()
        if row is None:
            return None
        entry = (Result.model_validate_json(row[0]), bool(row[1]))
        self._results[command_id] = entry
        return entry

    def get(self, command_id: str) -> Result | None:
        entry = self._lookup(command_id)
        return entry[0] if entry is not None else None

    def is_published(self, command_id: str) -> bool:
        entry = self._lookup(command_id)
        return entry is not None and entry[1]

    def put(self, result: Result, *, published: bool = True) -> None:
        if self._capacity == 0:
            return
        self._results[result.command_id] = (result, published)
        self._results.move_to_end(result.command_id)
        while len(self._results) > self._capacity:
            self._results.popitem(last=False)
        if self._db is not None:
            self._db.execute(
                "INSERT OR REPLACE INTO results (command_id, body, published) VALUES (?, ?, ?)",
                (result.command_id, result.model_dump_json(), int(published)),
            )
            self._prune()

    def mark_published(self, command_id: str) -> None:
        entry = self._results.get(command_id)
        if entry is None or entry[1]:
            return
        self._results[command_id] = (entry[0], True)
        if self._db is not None:
            self._db.execute("UPDATE results SET published = 1 WHERE command_id = ?", (command_id,))

    def _prune(self) -> None:
        assert self._db is not None
        self._writes += 1
        if self._writes % 1000 == 0:
            self._db.execute("DELETE FROM results WHERE seq <= (SELECT MAX(seq) FROM results) - ?", (self._capacity,))

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def __len__(self) -> int:
        return len(self._results)
