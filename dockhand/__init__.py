"""dockhand: run Docker through RabbitMQ.

The one package a user imports:

- ``dockhand.client`` -- send commands and follow events from Python (``Client``, ``DiscoveryView``,
  ``HostsView``);
- ``dockhand.schemas`` -- the wire contract's pydantic models;
- ``dockhand.worker`` -- the worker (``dockhand run``);
- ``dockhand.cli`` -- the ``dockhand`` command line.
"""

__version__ = "0.1.0"
