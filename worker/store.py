"""Results of executed commands by ``command_id``: a redelivered command is answered from here."""

from __future__ import annotations

from collections import OrderedDict

from schemas import Result


class ResultStore:
    """A bounded, in-process LRU of final results.

    In memory on purpose for now: a worker restart forgets it, and Docker state (deterministic
    names, the spec-hash label) keeps a repeated create or remove harmless.
    """

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._results: OrderedDict[str, Result] = OrderedDict()

    def get(self, command_id: str) -> Result | None:
        result = self._results.get(command_id)
        if result is not None:
            self._results.move_to_end(command_id)
        return result

    def put(self, result: Result) -> None:
        if self._capacity == 0:
            return
        self._results[result.command_id] = result
        self._results.move_to_end(result.command_id)
        while len(self._results) > self._capacity:
            self._results.popitem(last=False)

    def __len__(self) -> int:
        return len(self._results)
