"""Shared building blocks of the wire models: strict config, id patterns, time helpers."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, StringConstraints


class WireModel(BaseModel):
    """Base of every message model: strict types, unknown fields rejected."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=False)


HostId = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9-]{0,62}$")]
WorkspaceId = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9_.-]{0,62}$")]
# Printable text only: no C0/C1 control characters, DEL, line/paragraph separators or bidi
# overrides — an id is echoed into logs and results, where those would forge or hide lines.
COMMAND_ID_PATTERN = r"^[^\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]{1,128}$"
CommandId = Annotated[str, StringConstraints(min_length=1, max_length=128, pattern=COMMAND_ID_PATTERN)]
# Docker object names: what the daemon itself accepts for networks and volumes.
DockerName = Annotated[str, StringConstraints(pattern=r"^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,127}$")]
# An image reference in Docker's own grammar (distribution/reference, as Docker 20.10 parses it):
#   [domain[:port]/]path-component[/path-component...][:tag][@sha256:<64 hex>]
# Docker takes the first component as the registry only when it has a "." or a ":" or is
# "localhost"; the pattern admits a first component of that kind only as a valid domain, so the
# registry the policy sees (worker.policy.image_registry) is always the one Docker pulls from.
# Path components are lower case with single separators, so "..", "//" and URL tricks cannot
# be written at all. No IPv6 literals (Docker 20.10 has none either).
_ALNUM = r"[a-z0-9]+"
_PATH_COMPONENT = rf"{_ALNUM}(?:(?:[._]|__|-+){_ALNUM})*"
_PATH_COMPONENT_NO_DOT = rf"{_ALNUM}(?:(?:_|__|-+){_ALNUM})*"
_DOMAIN_COMPONENT = r"[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?"
_PORT = r"[1-9][0-9]{0,4}"
_DOMAIN = rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})+(?::{_PORT})?|{_DOMAIN_COMPONENT}:{_PORT}|localhost)"
_TAG = r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}"
_DIGEST = r"sha256:[a-f0-9]{64}"
IMAGE_REF_PATTERN = (
    rf"^(?:{_DOMAIN}/{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*"
    rf"|{_PATH_COMPONENT_NO_DOT}(?:/{_PATH_COMPONENT})+"
    rf"|{_PATH_COMPONENT})"
    rf"(?::{_TAG})?(?:@{_DIGEST})?$"
)
"""Docker's image reference grammar (see the comment above :data:`ImageRef`)."""
IMAGE_NAME_MAX = 255  # Docker's limit on the name (registry and path, without tag or digest)


def _check_image_ref(value: str) -> str:
    """What the pattern cannot say: the name's length limit and the port's range."""
    name = value.partition("@")[0]
    last = name.rsplit("/", 1)[-1]
    if ":" in last:
        name = name[: len(name) - len(last)] + last.partition(":")[0]
    if len(name) > IMAGE_NAME_MAX:
        raise ValueError(f"image name is longer than {IMAGE_NAME_MAX} characters")
    first, slash, _ = name.partition("/")
    if slash and ":" in first and int(first.rpartition(":")[2]) > 65535:
        raise ValueError(f"registry port in {first!r} is outside 1..65535")
    return value


ImageRef = Annotated[
    str,
    StringConstraints(min_length=1, max_length=512, pattern=IMAGE_REF_PATTERN),
    AfterValidator(_check_image_ref),
]
ShortText = Annotated[str, StringConstraints(max_length=256)]
# Docker's tag grammar: a word character first, then up to 127 of [A-Za-z0-9_.-].
ImageTag = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")]
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
