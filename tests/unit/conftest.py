"""Fixtures the unit tests share."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.fakes.docker_api import FakeDocker
from tests.fakes.engine_ops import engine


@pytest.fixture
async def fake(tmp_path: Path) -> AsyncIterator[FakeDocker]:
    """A fake Docker Engine with the test image (tests/fakes/engine_ops.py)."""
    async with engine(tmp_path) as docker:
        yield docker
