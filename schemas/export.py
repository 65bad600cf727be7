"""Write the JSON Schema of every message kind, one file each, for other teams' tooling."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter

from .commands import Command
from .events import ContainerEvent, DiscoveryEvent, DiscoverySnapshot, NetworkEvent, WorkspaceExpired
from .health import Heartbeat
from .results import ExecOutputChunk, Result

SCHEMA_DIR = Path(__file__).parent / "json"

MESSAGES: dict[str, Any] = {
    "command": Command,
    "result": Result,
    "container-event": ContainerEvent,
    "network-event": NetworkEvent,
    "discovery-event": DiscoveryEvent,
    "discovery-snapshot": DiscoverySnapshot,
    "workspace-event": WorkspaceExpired,
    "heartbeat": Heartbeat,
    "exec-output": ExecOutputChunk,
}


def render() -> dict[str, str]:
    """File name → JSON text of each schema (deterministic, so a test can compare)."""
    out: dict[str, str] = {}
    for name, model in MESSAGES.items():
        schema = TypeAdapter(model).json_schema(mode="serialization" if name != "command" else "validation")
        schema.setdefault("title", name)
        schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
        schema["$id"] = f"https://dockhand.dev/schemas/v1/{name}.json"
        out[f"{name}.json"] = json.dumps(schema, indent=2, sort_keys=True) + "\n"
    return out


def write(directory: Path = SCHEMA_DIR) -> list[Path]:
    """Write every schema file into ``directory``; return the paths written."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for filename, text in render().items():
        path = directory / filename
        path.write_text(text, encoding="utf-8")
        paths.append(path)
    return paths
