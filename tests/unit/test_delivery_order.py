"""DeliveryOrder puts deliveries back into broker order (delivery tags, per channel)."""

from __future__ import annotations

import asyncio
import random

from dockhand.worker.ordering import DeliveryOrder


async def test_out_of_order_arrivals_are_released_in_tag_order() -> None:
    order = DeliveryOrder()
    channel = object()
    released: list[int] = []
    tags = list(range(1, 201))
    random.Random(7).shuffle(tags)
    for tag in tags:
        order.admit(channel, tag, lambda t=tag: released.append(t))
    assert released == list(range(1, 201))


async def test_channels_are_ordered_independently_and_restart_at_one() -> None:
    order = DeliveryOrder()
    first, second = object(), object()
    released: list[tuple[str, int]] = []
    order.admit(first, 2, lambda: released.append(("a", 2)))
    order.admit(second, 1, lambda: released.append(("b", 1)))
    order.admit(first, 1, lambda: released.append(("a", 1)))
    assert released == [("b", 1), ("a", 1), ("a", 2)]


async def test_a_gap_that_never_fills_is_skipped_after_the_timeout() -> None:
    order = DeliveryOrder(gap_timeout_s=0.05)
    channel = object()
    released: list[int] = []
    order.admit(channel, 1, lambda: released.append(1))
    order.admit(channel, 3, lambda: released.append(3))
    order.admit(channel, 4, lambda: released.append(4))
    assert released == [1]
    await asyncio.sleep(0.1)
    assert released == [1, 3, 4]
    order.admit(channel, 2, lambda: released.append(2))  # late, but not dropped
    assert released == [1, 3, 4, 2]


async def test_untagged_messages_pass_straight_through() -> None:
    order = DeliveryOrder()
    released: list[str] = []
    order.admit(object(), None, lambda: released.append("x"))
    assert released == ["x"]
