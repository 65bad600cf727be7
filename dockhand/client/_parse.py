"""Parsing what workers send: forward compatible, since a newer worker may add fields (the
contract allows it) and the wire models forbid unknown ones. Shared by results, events and
streamed exec output."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from dockhand.schemas import Result

M = TypeVar("M", bound=BaseModel)


def _lenient(model: type[M], data: Any) -> M:
    """``data`` as ``model``, ignoring fields this version does not know: a newer worker may add
    fields (contract: fields may be added), and the wire models forbid unknown ones."""
    for _ in range(8):
        try:
            return model.model_validate(data, strict=False)  # JSON data: times arrive as strings
        except ValidationError as err:
            extras = [e["loc"] for e in err.errors() if e["type"] == "extra_forbidden"]
            if not extras or len(extras) != err.error_count():
                raise
            for loc in extras:
                node = data
                for part in loc[:-1]:
                    node = node[part]
                node.pop(loc[-1], None)
    return model.model_validate(data, strict=False)


def parse_result(body: bytes | str | Mapping[str, Any]) -> Result:
    """A reply body as a :class:`~dockhand.schemas.Result` (unknown fields ignored)."""
    data = json.loads(body) if isinstance(body, bytes | str) else dict(body)
    return _lenient(Result, data)
