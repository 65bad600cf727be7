"""The committed AsyncAPI document is what the code generates, and it covers the contract."""

from __future__ import annotations

import json

from dockhand.schemas import COMMAND_TYPES
from dockhand.worker.asyncapi import DEFAULT_PATH, document, render


def test_committed_document_is_current() -> None:
    assert DEFAULT_PATH.read_text() == render(), "docs/asyncapi.json is stale: run `python -m dockhand.worker.asyncapi`"


def test_every_channel_of_the_contract_is_described() -> None:
    spec = document()
    addresses = {channel["address"] for channel in spec["channels"].values()}
    assert {"host-a.#", "any.#"} <= addresses  # command queues (and `all.#`, in the description)
    for address in (
        "host-a.{type}.{status}",
        "host-a.container.{action}",
        "host-a.network.{action}",
        "host-a.discovery.{change}",
        "host-a.discovery.snapshot",
        "host-a.heartbeat",
    ):
        assert address in addresses, address
    schemas = spec["components"]["schemas"]
    for model in (
        "Command",
        "Result",
        "ContainerEvent",
        "NetworkEvent",
        "DiscoveryEvent",
        "DiscoverySnapshot",
        "Heartbeat",
    ):
        assert model in schemas, model
    mapping = schemas["Command"]["discriminator"]["mapping"]
    assert set(mapping) == COMMAND_TYPES
    # Every $ref resolves inside the document.
    text = json.dumps(spec)
    for ref in {part.split('"')[0] for part in text.split('"$ref": "#/components/schemas/')[1:]}:
        assert ref in schemas, ref
