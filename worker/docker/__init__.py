"""Docker operations by resource, through aiodocker (the shape of aiodocker itself).

=====================  ==================================================================
``calls``              the one call path (retry, error mapping, availability, spans) and
                       the scope (managed labels, ownership, names)
``containers``         a workspace's container found by workspace id, inspected, started
``workspaces``         the ``workspace.*`` commands (``create``: ``create``, pure config:
                       ``container_config``; files: ``workspace_files``)
``networks``           ``network.*``: ensure, connect, disconnect, remove
``volumes``            named volumes: who may mount one, made and removed with workspaces
``images``             inspect, pull (single-flight), ensure before a create
``host``               ``host.info``, Docker's data directory and CPU count
``models``             contract models from Docker's answers (pure)
``handles``            typed views of aiodocker's unannotated network and volume classes
``ops``                :class:`DockerOps`, the facade composing them
=====================  ==================================================================

Only containers, networks and volumes carrying this host's managed labels are changed;
anything else is ``forbidden``.
"""

from .container_config import spec_hash, ulimits
from .models import parse_docker_time
from .ops import DockerOps

__all__ = ["DockerOps", "parse_docker_time", "spec_hash", "ulimits"]
