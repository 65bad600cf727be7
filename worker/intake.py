"""Intake: a message body checked against the contract, and what is safe to log or keep of it.

:func:`parse` turns a body into a :class:`~dockhand.schemas.Command` or raises
:class:`Rejection` (with the ``command_id`` when one is readable, so the sender hears back);
:func:`printable` and :func:`shown_id` make sender values fit for a log line or a result; and
:func:`redact` makes the copy of a body that may go to the dead-letter queue.
"""

from __future__ import annotations

import contextlib
import json
import re
from typing import Any

import pydantic_core
from pydantic import ValidationError

from dockhand.schemas import COMMAND_ADAPTER, COMMAND_TYPES, Command, ErrorCode
from dockhand.schemas._base import COMMAND_ID_PATTERN

from .errors import DockhandError, rejected


def _summarise(exc: ValidationError, limit: int = 5) -> str:
    parts = []
    for error in exc.errors(include_url=False)[:limit]:
        where = ".".join(str(p) for p in error["loc"]) or "body"
        parts.append(f"{where}: {error['msg']}")
    more = exc.error_count() - limit
    return "; ".join(parts) + (f"; and {more} more" if more > 0 else "")


class Rejection(Exception):
    """A message that is not a valid command, with its ``command_id`` when one was readable."""

    def __init__(self, error: DockhandError, command_id: str | None, command_type: str) -> None:
        super().__init__(str(error))
        self.error = error
        self.command_id = command_id
        self.command_type = command_type


_COMMAND_ID = re.compile(rb'^\s*\{\s*"command_id"\s*:\s*"([A-Za-z0-9_.:@/+=-]{1,128})"')
_VALID_ID = re.compile(COMMAND_ID_PATTERN)
_UNSAFE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def printable(value: object) -> str:
    """``value`` as text fit for one log line: control characters, line separators and bidi
    overrides escaped as ``repr()`` writes them (``\\n``, ``\\x1b``, ``\\u2028``). Every
    sender-provided value a log line prints goes through this."""
    return _UNSAFE.sub(lambda m: repr(m.group())[1:-1], str(value))


def shown_id(command_id: str) -> str:
    """The ``command_id`` a result carries for a message whose id is readable but not valid
    (over 128 characters, control characters): escaped like :func:`printable`, cut to 128
    characters (ending ``...``). It is then a valid id itself, so a result never carries a line
    break or a control character; a sender matches such an answer by its ``correlation_id``."""
    if _VALID_ID.fullmatch(command_id):
        return command_id
    text = printable(command_id)
    return text if len(text) <= 128 else text[:125] + "..."


def _sniff_id(body: bytes) -> str | None:
    """The ``command_id`` of a body that is not parsed (too big, not JSON), when it is the first
    key and a plain token: the sender then gets its rejection instead of silence."""
    sniffed = _COMMAND_ID.search(body[:4096])
    return sniffed.group(1).decode() if sniffed else None


def parse(body: bytes, routing_key: str, max_body_bytes: int) -> Command:
    """Validate one message body against the contract, or raise :class:`Rejection`."""
    if len(body) > max_body_bytes:
        raise Rejection(
            rejected(ErrorCode.INVALID_COMMAND, f"body of {len(body)} bytes exceeds the {max_body_bytes}-byte limit"),
            _sniff_id(body),
            "unknown",
        )
    # The common case first: a valid command for its routing key is validated once, straight
    # from the bytes. Anything else takes the checks below, in their order (which decides the
    # error a sender gets); a body the model accepts passes the id and type checks there too.
    try:
        command = COMMAND_ADAPTER.validate_json(body)
    except ValidationError:
        pass
    else:
        if routing_key.partition(".")[2] == command.type:
            return command
    try:
        raw = pydantic_core.from_json(body)
    except ValueError as exc:
        # Unparseable (truncated, nested too deep, …) but the id may still be plain to see.
        raise Rejection(
            rejected(ErrorCode.INVALID_COMMAND, f"body is not JSON: {exc}"), _sniff_id(body), "unknown"
        ) from None
    if not isinstance(raw, dict):
        raise Rejection(rejected(ErrorCode.INVALID_COMMAND, "body must be a JSON object"), None, "unknown")
    command_id = raw.get("command_id")
    command_type = raw.get("type")
    # The type a rejection reports (and routes by): readable and short, whatever was sent.
    shown_type = printable(command_type) if isinstance(command_type, str) and len(command_type) <= 64 else "unknown"
    if not isinstance(command_id, str) or not command_id:
        command_id = None
    elif not _VALID_ID.fullmatch(command_id):
        # Readable but not valid: answered (under an escaped, shortened id) rather than left
        # for the sender to time out on.
        raise Rejection(
            rejected(
                ErrorCode.INVALID_COMMAND,
                f"command_id must be 1 to 128 printable characters (no control characters or line breaks); "
                f"got {len(command_id)} characters",
            ),
            shown_id(command_id),
            shown_type,
        )
    # isinstance first: a list or object "type" is unhashable and must be a rejection, not a crash.
    if not isinstance(command_type, str) or command_type not in COMMAND_TYPES:
        raise Rejection(
            rejected(ErrorCode.UNKNOWN_TYPE, f"unknown command type {str(command_type)[:64]!r}"), command_id, shown_type
        )
    _, _, key_type = routing_key.partition(".")
    if key_type != command_type:
        raise Rejection(
            rejected(
                ErrorCode.INVALID_COMMAND, f"type {command_type!r} does not match routing key {routing_key[:200]!r}"
            ),
            command_id,
            shown_type,
        )
    try:
        return COMMAND_ADAPTER.validate_json(body)
    except ValidationError as exc:
        message = f"invalid {command_type}: {_summarise(exc)}"
        raise Rejection(rejected(ErrorCode.INVALID_COMMAND, message), command_id, shown_type) from None


REDACTED_HEADER = "x-dockhand-redacted"
"""Header of a dead letter that is a redacted copy: what was removed (comma-separated paths)."""

_SECRET_KEY = re.compile(r"password|passwd|secret|token", re.IGNORECASE)
_SECRET_TEXT = re.compile(rb"password|passwd|secret|token", re.IGNORECASE)


def _redact_tree(value: Any, path: str, found: list[str]) -> Any:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            where = f"{path}.{key}" if path else str(key)
            if _SECRET_KEY.search(str(key)) and item not in (None, ""):
                out[key] = "[redacted]"
                found.append(printable(where))
            else:
                out[key] = _redact_tree(item, where, found)
        return out
    if isinstance(value, list):
        return [_redact_tree(item, f"{path}[{i}]", found) for i, item in enumerate(value)]
    return value


def redact(body: bytes, max_parse_bytes: int) -> tuple[bytes, list[str]] | None:
    """A copy of ``body`` fit for the dead-letter queue, and what was taken out of it; ``None``
    when it carries no secret (it is then dead-lettered untouched).

    A JSON body loses the value of every key that names a secret (``registry_auth.password``,
    an env ``*_TOKEN``, …). A body that cannot be parsed (or is over the size limit) and
    mentions one anywhere is cut just before that word: there is no telling where a secret
    in broken JSON ends."""
    first = _SECRET_TEXT.search(body)
    if first is None:
        return None
    tree: Any = None
    if len(body) <= max_parse_bytes:
        with contextlib.suppress(ValueError):
            tree = pydantic_core.from_json(body)
    if tree is None or not isinstance(tree, dict | list):
        return body[: first.start()] + b"[redacted: the rest of this unparseable body]", [f"body[{first.start()}:]"]
    found: list[str] = []
    cleaned = _redact_tree(tree, "", found)
    if not found:
        return None  # the word is only in a value (an echo command, a label): nothing to hide
    return json.dumps(cleaned, ensure_ascii=False).encode(), found
