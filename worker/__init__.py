"""dockhand worker: consumes commands from RabbitMQ and runs them on a Docker host."""

from dockhand import __version__

__all__ = ["__version__"]
