"""One way to retry: try once as is, then retry with stamina (bounded, jittered backoff)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

import stamina

T = TypeVar("T")
Retryable = type[Exception] | Callable[[Exception], bool]
"""What is worth another attempt: an exception type, or a predicate on the exception."""


def _retryable(on: Retryable, exc: Exception) -> bool:
    return isinstance(exc, on) if isinstance(on, type) else on(exc)


async def once_then_retry(
    fn: Callable[[], Awaitable[T]],
    *,
    on: Retryable,
    attempts: int | None,
    budget_s: float,
    first_failed: Callable[[Exception], None] | None = None,
) -> T:
    """Run ``fn`` at most ``attempts`` times in all (``None``: no count, only ``budget_s``),
    retrying the failures ``on`` picks, for at most ``budget_s`` seconds in all.

    The first attempt goes straight through: stamina's retry machinery costs more than a fast
    call, and is only needed once something failed (``first_failed`` then hears of it). Under
    stamina's testing mode every attempt goes through stamina, so the tests decide the attempts.
    """
    if not stamina.is_testing():
        try:
            return await fn()
        except Exception as first:
            if not _retryable(on, first) or (attempts is not None and attempts < 2):
                raise
            if first_failed is not None:
                first_failed(first)
        attempts = None if attempts is None else attempts - 1
    async for attempt in stamina.retry_context(on=on, attempts=attempts, timeout=budget_s):
        with attempt:
            return await fn()
    raise AssertionError("unreachable: stamina yields at least one attempt")  # pragma: no cover
