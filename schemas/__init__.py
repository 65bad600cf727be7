"""dockhand's wire contract as pydantic models (see ``shared/contract.md``)."""

from ._base import HostId, WireModel, WorkspaceId, utcnow
from .commands import COMMAND_ADAPTER, COMMAND_TYPES, Command, CommandBase, RegistryAuth
from .events import ContainerEvent, DiscoveryEvent, DiscoverySnapshot, NetworkEvent
from .health import Heartbeat
from .results import RESULT_MODELS, ErrorCode, ErrorInfo, Result, Service, Status

__all__ = [
    "COMMAND_ADAPTER",
    "COMMAND_TYPES",
    "RESULT_MODELS",
    "Command",
    "CommandBase",
    "ContainerEvent",
    "DiscoveryEvent",
    "DiscoverySnapshot",
    "ErrorCode",
    "ErrorInfo",
    "Heartbeat",
    "HostId",
    "NetworkEvent",
    "RegistryAuth",
    "Result",
    "Service",
    "Status",
    "WireModel",
    "WorkspaceId",
    "utcnow",
]
