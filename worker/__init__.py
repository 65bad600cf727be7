"""dockhand worker: consumes commands from RabbitMQ and runs them on a Docker host."""

__version__ = "0.1.0"
