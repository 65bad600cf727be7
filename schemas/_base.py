"""Shared building blocks of the wire models: strict config, id patterns, time helpers."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from pydantic import BaseModel, ConfigDict, StringConstraints


class WireModel(BaseModel):
    """Base of every message model: strict types, unknown fields rejected."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=False)


HostId = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9-]{0,62}$")]
WorkspaceId = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9_.-]{0,62}$")]
CommandId = Annotated[str, StringConstraints(min_length=1, max_length=128)]
# Docker object names: what the daemon itself accepts for networks and volumes.
DockerName = Annotated[str, StringConstraints(pattern=r"^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,127}$")]
# An image reference: [registry[:port]/]path[:tag][@digest]. No spaces or shell characters.
ImageRef = Annotated[
    str,
    StringConstraints(
        min_length=1,
        max_length=512,
        pattern=r"^[a-zA-Z0-9][a-zA-Z0-9._/:@+-]*$",
    ),
]
ShortText = Annotated[str, StringConstraints(max_length=256)]
Grouping = Annotated[str, StringConstraints(pattern=r"^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}$")]
LabelKey = Annotated[str, StringConstraints(pattern=r"^[a-zA-Z0-9][a-zA-Z0-9_./-]{0,127}$")]
LabelValue = Annotated[str, StringConstraints(max_length=4096)]
EnvKey = Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")]
EnvValue = Annotated[str, StringConstraints(max_length=32768)]
AbsPath = Annotated[str, StringConstraints(pattern=r"^/[^\x00]{0,1023}$")]
Domain = Annotated[
    str,
    StringConstraints(
        max_length=253,
        min_length=1,
        pattern=r"^([a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?\.)*"
        r"[a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?$",
    ),
]
# "8080" or "8080/tcp" or "53/udp"; an int is accepted too and means tcp.
PortString = Annotated[str, StringConstraints(pattern=r"^[0-9]{1,5}(/(tcp|udp|sctp))?$")]


def utcnow() -> datetime:
    """The current time, timezone-aware UTC (every time on the wire is UTC)."""
    return datetime.now(UTC)
