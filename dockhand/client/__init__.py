"""Send commands to dockhand workers and follow their events, from Python.

::

    from dockhand.client import Client, DiscoveryView

    async with Client.connect("amqp://guest:guest@localhost:5672/", host="host-a") as dh:
        ws = await dh.workspaces.create(workspace_id="ws1", image="busybox:latest")
        async with DiscoveryView(dh) as view:
            print(view.domains())

One connection and one reply queue serve any number of concurrent calls. Every call is
confirmed and routed (:class:`NoRoute` at once for a host without a worker), retried with the
same command id (:class:`Retry`), and a result that is not ``succeeded`` raises a
:class:`CommandError` (``request()`` returns the raw :class:`~dockhand.schemas.Result` instead).
"""

from dockhand.schemas import Result

from ._client import ALL, ANY, DEFAULT_URL, Client, Retry, expires_at
from ._commands import CallOptions, WorkspaceFields
from ._events import EVENT_FAMILIES, Event, OtherEvent, bindings, parse_event
from ._parse import parse_result
from ._stream import ExecStream
from .errors import (
    BrokerUnavailable,
    CommandError,
    CommandExpired,
    CommandFailed,
    CommandRejected,
    DockhandError,
    NoRoute,
    ReplyTimeout,
)
from .views import DiscoveryView, HostState, HostsView, ServiceChange

__all__ = [
    "ALL",
    "ANY",
    "DEFAULT_URL",
    "EVENT_FAMILIES",
    "BrokerUnavailable",
    "CallOptions",
    "Client",
    "CommandError",
    "CommandExpired",
    "CommandFailed",
    "CommandRejected",
    "DiscoveryView",
    "DockhandError",
    "Event",
    "ExecStream",
    "HostState",
    "HostsView",
    "NoRoute",
    "OtherEvent",
    "ReplyTimeout",
    "Result",
    "Retry",
    "ServiceChange",
    "WorkspaceFields",
    "bindings",
    "expires_at",
    "parse_event",
    "parse_result",
]
