# The dockhand worker image.
#
#   docker build -t dockhand .
#       The builder's pip fetches the dependencies from PyPI.
#   pip wheel . 'setuptools>=68' wheel -w .cache/wheels
#   docker build --build-arg WHEELHOUSE=.cache/wheels -t dockhand .
#       Offline: pip takes every dependency, and the build backend, from that directory of wheels
#       in the build context, and never reaches an index. scripts/image-check builds this way.
#   docker build --build-arg BASE_IMAGE=my/debian-python:bookworm -t dockhand .
#       Any Debian-like base with python3 (>= 3.11) and its venv module; both stages use it.
#
# The worker runs as the non-root user `dockhand` (uid/gid 10001) and reaches Docker through
# /var/run/docker.sock. On most hosts that socket is root:docker with mode 0660, so give the
# container the socket's group as a supplementary group:
#   docker run --group-add "$(stat -c %g /var/run/docker.sock)" \
#       -v /var/run/docker.sock:/var/run/docker.sock -e DOCKHAND_AMQP_URL=... dockhand
#   compose.yaml: group_add: ["${DOCKER_GID}"], with DOCKER_GID=$(stat -c %g /var/run/docker.sock)
# Whoever can use that socket is root on the host: dockhand's policy (README, "Policy") is what
# limits the containers a command may ask for.

ARG BASE_IMAGE=python:3.11-slim

# --- builder: a wheel of the project, plus wheels of all its dependencies -------------------
FROM ${BASE_IMAGE} AS builder

# Empty: dependencies come from the package index. Else: a directory in the build context
# holding every wheel needed (see above); the build is then offline.
ARG WHEELHOUSE=""
# Optional extras of the project, e.g. "otlp" (the OTLP exporter for OpenTelemetry).
ARG EXTRAS=""
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_ROOT_USER_ACTION=ignore \
    PYTHONDONTWRITEBYTECODE=1

# A venv only for its pip: Debian's python3 comes without one.
RUN python3 -m venv /opt/build
COPY . /src
# /wheels/deps: the dependencies; /wheels/project: dockhand itself. Apart, so that a change of
# the code alone leaves the image's dependency layer cached.
RUN set -eu; \
    project="/src${EXTRAS:+[$EXTRAS]}"; \
    if [ -n "$WHEELHOUSE" ]; then \
        /opt/build/bin/pip wheel --no-index --find-links "/src/$WHEELHOUSE" --wheel-dir /wheels/deps "$project"; \
    else \
        /opt/build/bin/pip wheel --wheel-dir /wheels/deps "$project"; \
    fi; \
    mkdir /wheels/project; \
    mv /wheels/deps/dockhand-*.whl /wheels/project/

# --- the image: the wheels installed into a venv, nothing else ---------------------------
FROM ${BASE_IMAGE}

ARG EXTRAS=""
LABEL org.opencontainers.image.title="dockhand" \
      org.opencontainers.image.description="Run Docker through RabbitMQ: commands in; results, events and health out." \
      org.opencontainers.image.licenses="MIT"

ENV PATH=/opt/dockhand/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    DOCKHAND_STATE_DIR=/var/lib/dockhand

RUN groupadd --system --gid 10001 dockhand \
    && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/dockhand --no-create-home \
        --shell /usr/sbin/nologin dockhand \
    && install -d -o 10001 -g 10001 -m 0750 /var/lib/dockhand

# The venv has no pip: a throwaway one installs into it (pip --python), so nothing can be
# installed at run time. The dependencies first, in a layer that a code change leaves cached.
COPY --from=builder /wheels/deps /tmp/deps
RUN python3 -m venv --without-pip /opt/dockhand \
    && python3 -m venv /tmp/pip \
    && /tmp/pip/bin/pip --python /opt/dockhand/bin/python install --no-index /tmp/deps/*.whl \
    && rm -rf /tmp/deps /tmp/pip
COPY --from=builder /wheels/project /tmp/project
RUN python3 -m venv /tmp/pip \
    && /tmp/pip/bin/pip --python /opt/dockhand/bin/python install --no-index --no-deps /tmp/project/*.whl \
    && /tmp/pip/bin/pip --python /opt/dockhand/bin/python check \
    && rm -rf /tmp/project /tmp/pip \
    && dockhand --help >/dev/null

# The result journal (SQLite): keep it across restarts; a hot standby of the same host may share it.
VOLUME ["/var/lib/dockhand"]
WORKDIR /var/lib/dockhand
USER 10001:10001

# /healthz of the worker's HTTP endpoints (DOCKHAND_HTTP_HOST, default 127.0.0.1, which is
# reachable from inside the container; DOCKHAND_HTTP_PORT, default 8081). It answers while
# the event loop is alive; /readyz (broker and Docker) is for orchestrators that route work.
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:${DOCKHAND_HTTP_PORT:-8081}/healthz', timeout=4)" || exit 1

# SIGTERM drains: no new commands, running ones finish within DOCKHAND_SHUTDOWN_GRACE_S
# (default 30 s), exit 0. Give `docker stop` / compose more than that (stop_grace_period).
STOPSIGNAL SIGTERM
ENTRYPOINT ["dockhand"]
CMD ["run"]
