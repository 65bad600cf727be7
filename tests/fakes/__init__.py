"""Shipped test doubles: fakes that the real code talks to through its real clients.

:mod:`tests.fakes.docker_api` is an in-memory Docker Engine (API 1.41, the subset dockhand
uses) served over a unix socket, so ``aiodocker`` and :class:`worker.docker_ops.DockerOps`
run unmodified against it.
"""
