"""worker/retry.py: one attempt straight through, then stamina's retries (Docker calls and
confirmed publishes both go through it)."""

from __future__ import annotations

import pytest
import stamina

from dockhand.worker.retry import once_then_retry


class Flaky:
    """Fails with each of ``errors`` in turn, then answers ``"ok"``; counts its calls."""

    def __init__(self, *errors: Exception) -> None:
        self.errors = list(errors)
        self.calls = 0

    async def __call__(self) -> str:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return "ok"


@pytest.fixture(autouse=True)
def no_waiting(monkeypatch: pytest.MonkeyPatch) -> None:
    # Real mode (the straight first attempt), without stamina's backoff sleeps between retries.
    async def no_sleep(delay: float) -> None:
        return None

    monkeypatch.setattr("stamina._core._smart_sleep", no_sleep)


async def test_the_first_attempt_goes_straight_through() -> None:
    fn = Flaky()
    assert await once_then_retry(fn, on=ConnectionError, attempts=3, budget_s=5) == "ok"
    assert fn.calls == 1


async def test_a_retryable_failure_is_retried_and_the_first_one_reported() -> None:
    fn = Flaky(ConnectionError("a"), ConnectionError("b"))
    seen: list[str] = []
    result = await once_then_retry(
        fn, on=ConnectionError, attempts=3, budget_s=5, first_failed=lambda e: seen.append(str(e))
    )
    assert result == "ok"
    assert fn.calls == 3
    assert seen == ["a"]


async def test_attempts_count_the_first_one_too() -> None:
    fn = Flaky(ConnectionError("a"), ConnectionError("b"), ConnectionError("c"))
    with pytest.raises(ConnectionError, match="c"):
        await once_then_retry(fn, on=ConnectionError, attempts=3, budget_s=5)
    assert fn.calls == 3


@pytest.mark.parametrize("attempts", [0, 1])
async def test_one_attempt_is_never_retried(attempts: int) -> None:
    fn = Flaky(ConnectionError("a"))
    with pytest.raises(ConnectionError):
        await once_then_retry(fn, on=ConnectionError, attempts=attempts, budget_s=5)
    assert fn.calls == 1


async def test_a_failure_the_predicate_declines_is_raised_at_once() -> None:
    fn = Flaky(ValueError("not transient"))
    reported: list[Exception] = []
    with pytest.raises(ValueError, match="not transient"):
        await once_then_retry(
            fn, on=lambda exc: isinstance(exc, ConnectionError), attempts=5, budget_s=5, first_failed=reported.append
        )
    assert fn.calls == 1
    assert reported == []


async def test_no_count_retries_until_it_works() -> None:
    fn = Flaky(*(ConnectionError(str(i)) for i in range(12)))  # more than stamina's default 10
    assert await once_then_retry(fn, on=Exception, attempts=None, budget_s=30) == "ok"
    assert fn.calls == 13


async def test_under_stamina_testing_every_attempt_goes_through_stamina() -> None:
    fn = Flaky(ConnectionError("a"), ConnectionError("b"))
    with stamina.set_testing(True, attempts=2), pytest.raises(ConnectionError, match="b"):
        await once_then_retry(fn, on=ConnectionError, attempts=5, budget_s=5)
    assert fn.calls == 2
