#!/usr/bin/env bash
# Local test infrastructure for dockhand: dockerd, RabbitMQ, a busybox test image
# and an htpasswd-protected registry on 127.0.0.1:5055 holding a copy of that image.
#
#   scripts/infra.sh         install what is missing, start what is not running, reuse the rest
#   scripts/infra.sh stop    stop the registry this script started (dockerd and RabbitMQ may be
#                            shared with other users of the machine, so they are left alone)
#
# Writes .cache/infra/env (export lines for the tests) and logs under .cache/infra/.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
STATE=$REPO/.cache/infra

# dockerd, rabbitmq-server and friends live in sbin, which a CI user's PATH may lack.
export PATH=$PATH:/usr/local/sbin:/usr/sbin:/sbin

TEST_IMAGE=dockhand-test/busybox:latest
# Bump whenever the Dockerfile in build_test_image changes, so existing images get rebuilt.
TEST_IMAGE_REV=2
REGISTRY=127.0.0.1:5055
REGISTRY_USER=dockhand
REGISTRY_PASSWORD=s3cret-pw
REGISTRY_REPO=dockhand-test/busybox
REGISTRY_IMAGE=$REGISTRY/$REGISTRY_REPO:latest
AMQP_URL=amqp://guest:guest@localhost:5672/

# nginx-light: examples/proxy_routes.py and its test (tests/integration/test_example_proxy.py).
# chromium: the dashboard's browser tests (driven by the Python playwright package, never `playwright install`).
APT_PACKAGES=(docker.io rabbitmq-server busybox-static docker-registry apache2-utils openssl nginx-light chromium)

log() { echo "infra: $*"; }
die() { echo "infra: ERROR: $*" >&2; exit 1; }

# wait_for SECONDS CMD...: run CMD once a second until it succeeds; fail after SECONDS.
wait_for() {
    local deadline=$((SECONDS + $1))
    shift
    until "$@"; do
        ((SECONDS < deadline)) || return 1
        sleep 1
    done
}

# Close every fd above 2. Called in the subshell that execs a daemon: a daemon inheriting,
# say, a CI runner's output pipe or our lock (fd 9) would hold it open for its lifetime.
close_extra_fds() {
    local fd
    for fd in /proc/self/fd/*; do
        fd=${fd##*/}
        if ((fd > 2)); then eval "exec $fd>&-"; fi
    done
}

# http_get URL OUTFILE [USER:PASSWORD]: GET URL, body to OUTFILE, print the status code
# (000 when nothing answers). The Accept header makes the registry hand out schema-2
# manifests instead of trying to convert them to schema 1.
MANIFEST_V2=application/vnd.docker.distribution.manifest.v2+json
http_get() {
    local url=$1 out=$2 cred=${3:-}
    if command -v curl >/dev/null; then
        local args=(-s --max-time 5 -o "$out" -w '%{http_code}' -H "Accept: $MANIFEST_V2")
        [[ -n $cred ]] && args+=(-u "$cred")
        curl "${args[@]}" "$url" || true # curl already printed 000 when it could not connect
    else
        python3 - "$url" "$out" "$cred" "$MANIFEST_V2" <<'PY'
import base64, sys, urllib.error, urllib.request
url, out, cred, accept = sys.argv[1:]
req = urllib.request.Request(url, headers={"Accept": accept})
if cred:
    req.add_header("Authorization", "Basic " + base64.b64encode(cred.encode()).decode())
try:
    with urllib.request.urlopen(req, timeout=5) as resp:
        code, body = resp.status, resp.read()
except urllib.error.HTTPError as err:
    code, body = err.code, err.read()
except OSError:
    code, body = 0, b""
open(out, "wb").write(body)
print(f"{code:03d}", end="")
PY
    fi
}

# --- packages -------------------------------------------------------------------------

ensure_packages() {
    local missing=()
    local cmd
    # openssl: the TLS tests make their certificates with it; nginx: the proxy example's test;
    # chromium: the dashboard's browser tests.
    for cmd in docker dockerd rabbitmq-server rabbitmq-diagnostics rabbitmqctl docker-registry htpasswd openssl nginx chromium; do
        command -v "$cmd" >/dev/null || missing+=("$cmd")
    done
    # The image is FROM scratch, so it needs the statically linked busybox; Debian's plain
    # "busybox" package is dynamically linked.
    if ! dpkg-query -W -f='${Status}' busybox-static 2>/dev/null | grep -q 'install ok installed'; then
        missing+=(busybox-static)
    fi
    if ((${#missing[@]} == 0)); then
        log "packages already installed"
        return
    fi
    ((EUID == 0)) || die "missing ${missing[*]}; run as root so apt-get can install them"
    log "installing packages (missing: ${missing[*]})"
    apt-get update -q
    # busybox-static Conflicts/Replaces/Provides busybox, so apt swaps it in for a plain
    # busybox without removing anything that depends on busybox.
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${APT_PACKAGES[@]}"
}

# --- dockerd --------------------------------------------------------------------------

# timeout: a wedged daemon must fail the check rather than hang the script.
docker_up() { timeout 20 docker version --format '{{.Server.Version}}' >/dev/null 2>&1; }

ensure_dockerd() {
    if docker_up; then
        log "dockerd already running"
        return
    fi
    log "starting dockerd (log: $STATE/dockerd.log)"
    # No init system here (apt's policy-rc.d refuses to start services), so start it by hand.
    # setsid: own session, so it outlives this script and ignores the terminal's Ctrl-C/hangup.
    # Without job control the subshell and setsid exec in place, so $! is dockerd's PID.
    # dockerd writes its own pidfile, /var/run/docker.pid.
    (close_extra_fds; exec setsid dockerd) </dev/null >"$STATE/dockerd.log" 2>&1 &
    local pid=$!
    local deadline=$((SECONDS + 60))
    until docker_up; do
        if ! alive "$pid" || ((SECONDS >= deadline)); then
            tail -n 20 "$STATE/dockerd.log" >&2 || true
            die "dockerd did not come up (see $STATE/dockerd.log)"
        fi
        sleep 1
    done
    log "dockerd up (pid $pid)"
}

# --- RabbitMQ -------------------------------------------------------------------------

rabbit_up() { timeout 30 rabbitmq-diagnostics -q ping >/dev/null 2>&1; }

# await_startup waits for the rabbit app itself (ping only proves the Erlang node is up),
# but errors out at once while the node is not reachable yet, hence the retry loop around it.
rabbit_started() { timeout 30 rabbitmqctl -q await_startup >/dev/null 2>&1; }

ensure_rabbitmq() {
    if rabbit_up; then
        log "rabbitmq already running"
    else
        log "starting rabbitmq-server (logs: /var/log/rabbitmq)"
        # apt's postinst did not start it (policy-rc.d), and there is no init system.
        # Debian's wrapper drops to the rabbitmq user by itself.
        (close_extra_fds; exec rabbitmq-server -detached) </dev/null >"$STATE/rabbitmq-start.log" 2>&1 ||
            die "rabbitmq-server -detached failed (see $STATE/rabbitmq-start.log)"
    fi
    wait_for 120 rabbit_started || die "rabbitmq did not finish starting (see /var/log/rabbitmq)"
    # Quorum queues with at-least-once dead lettering need the newer feature flags, and a
    # node started on an old data dir leaves them off.
    rabbitmqctl -q enable_feature_flag all >/dev/null
    # The tests log in as guest/guest, which RabbitMQ allows only over loopback (its default).
    if ! rabbitmqctl -q authenticate_user guest guest >/dev/null 2>&1; then
        log "guest/guest cannot log in; (re)creating the guest user"
        rabbitmqctl -q delete_user guest >/dev/null 2>&1 || true
        rabbitmqctl -q add_user guest guest >/dev/null
        rabbitmqctl -q set_user_tags guest administrator >/dev/null
        rabbitmqctl -q set_permissions -p / guest '.*' '.*' '.*' >/dev/null
    fi
    (exec 3<>/dev/tcp/127.0.0.1/5672) 2>/dev/null || die "rabbitmq is up but nothing listens on 127.0.0.1:5672"
    log "rabbitmq ready"
}

# --- test image -----------------------------------------------------------------------

image_rev() {
    docker image inspect -f '{{index .Config.Labels "dockhand-test.rev"}}' "$1" 2>/dev/null || true
}

build_test_image() {
    if [[ $(image_rev "$TEST_IMAGE") == "$TEST_IMAGE_REV" ]]; then
        log "test image $TEST_IMAGE already built (rev $TEST_IMAGE_REV)"
        return
    fi
    log "building test image $TEST_IMAGE (rev $TEST_IMAGE_REV)"
    local old_id ctx
    old_id=$(docker image inspect -f '{{.Id}}' "$TEST_IMAGE" 2>/dev/null || true)
    ctx=$(mktemp -d)
    cp /bin/busybox "$ctx/busybox"
    # The CMD's shell traps TERM so that `docker stop` is immediate: as PID 1 without a
    # handler it would ignore TERM and docker would wait 10 s before killing it.
    cat >"$ctx/Dockerfile" <<EOF
FROM scratch
COPY busybox /bin/busybox
RUN ["/bin/busybox", "--install", "-s", "/bin"]
RUN mkdir -p /www /tmp && chmod 1777 /tmp && echo 'dockhand test page' > /www/index.html
LABEL dockhand-test.image="1" dockhand-test.rev="$TEST_IMAGE_REV"
EXPOSE 8080
CMD ["/bin/sh", "-c", "trap 'exit 0' TERM INT; httpd -f -p 8080 -h /www & wait"]
EOF
    # The classic builder: BuildKit needs the buildx CLI plugin, which Debian's docker.io lacks.
    # --force-rm: a failed RUN step must not leave its container behind.
    if ! DOCKER_BUILDKIT=0 docker build -q --force-rm -t "$TEST_IMAGE" "$ctx" >"$STATE/build.log" 2>&1; then
        cat "$STATE/build.log" >&2
        rm -rf "$ctx"
        die "building $TEST_IMAGE failed"
    fi
    rm -rf "$ctx"
    # Drop the previous revision, but only if nothing else tags it now.
    if [[ -n $old_id && $(docker image inspect -f '{{len .RepoTags}}' "$old_id" 2>/dev/null) == 0 ]]; then
        docker rmi "$old_id" >/dev/null 2>&1 || true
    fi
}

# --- registry -------------------------------------------------------------------------

# Is PID a live docker-registry started with our config? (Guards against a reused PID.)
is_our_registry() {
    local pid=$1
    [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null &&
        tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF "docker-registry serve $STATE/registry.yml"
}

# Is PID a live process (not a zombie)? While a daemon is starting this is the test to use:
# right after the fork, $! is still the subshell (its cmdline is this script's) until the
# exec, so is_our_registry would call a registry that has not exec'd yet "gone".
alive() {
    local stat state
    { read -r stat <"/proc/$1/stat"; } 2>/dev/null || return 1
    state=${stat##*) }
    state=${state%% *}
    [[ -n $state && $state != Z && $state != X ]]
}

registry_pid() { cat "$STATE/registry.pid" 2>/dev/null || true; }

registry_answers() { [[ $(http_get "http://$REGISTRY/v2/" /dev/null) == 401 ]]; }

write_registry_config() {
    # Regenerate only when the password no longer verifies: bcrypt salts differ per run.
    if ! htpasswd -vb "$STATE/htpasswd" "$REGISTRY_USER" "$REGISTRY_PASSWORD" >/dev/null 2>&1; then
        htpasswd -Bbn "$REGISTRY_USER" "$REGISTRY_PASSWORD" >"$STATE/htpasswd"
    fi
    mkdir -p "$STATE/registry-data"
    cat >"$STATE/registry.yml" <<EOF
version: 0.1
log:
  level: info
storage:
  filesystem:
    rootdirectory: "$STATE/registry-data"
  delete:
    enabled: true
http:
  addr: $REGISTRY
  # Fixed, so restarts do not warn about a random secret; it only signs upload state.
  secret: dockhand-test-registry
auth:
  htpasswd:
    realm: dockhand-test
    path: "$STATE/htpasswd"
EOF
}

ensure_registry() {
    write_registry_config
    local pid
    pid=$(registry_pid)
    if is_our_registry "$pid" && registry_answers; then
        log "registry already running on $REGISTRY (pid $pid)"
        return
    fi
    if is_our_registry "$pid"; then
        # Ours but not answering 401 (wedged or still starting): replace it.
        log "restarting unresponsive registry (pid $pid)"
        stop_registry
    fi
    rm -f "$STATE/registry.pid"
    if registry_answers; then
        # Someone else's registry (another checkout of this repo?) holds the port. Use it if
        # our credentials work there, since this script is what would have configured it.
        [[ $(http_get "http://$REGISTRY/v2/" /dev/null "$REGISTRY_USER:$REGISTRY_PASSWORD") == 200 ]] ||
            die "$REGISTRY is taken by a registry that rejects $REGISTRY_USER's password"
        log "reusing a registry on $REGISTRY not started from this checkout"
        return
    fi
    log "starting registry on $REGISTRY (log: $STATE/registry.log)"
    # Detached like dockerd (see ensure_dockerd); $! is the registry's own PID.
    (close_extra_fds; exec setsid docker-registry serve "$STATE/registry.yml") \
        </dev/null >"$STATE/registry.log" 2>&1 &
    pid=$!
    echo "$pid" >"$STATE/registry.pid"
    local deadline=$((SECONDS + 30))
    until registry_answers; do
        if ! alive "$pid" || ((SECONDS >= deadline)); then
            tail -n 20 "$STATE/registry.log" >&2 || true
            die "registry did not come up (see $STATE/registry.log)"
        fi
        sleep 0.2
    done
    log "registry up (pid $pid)"
}

stop_registry() {
    local pid
    pid=$(registry_pid)
    if ! is_our_registry "$pid"; then
        log "registry not running (nothing started by this script)"
        rm -f "$STATE/registry.pid"
        return
    fi
    log "stopping registry (pid $pid)"
    kill "$pid"
    # is_our_registry rather than kill -0: an unreaped zombie has no cmdline and counts as gone.
    local deadline=$((SECONDS + 5))
    while is_our_registry "$pid" && ((SECONDS < deadline)); do
        sleep 0.1
    done
    if is_our_registry "$pid"; then
        kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$STATE/registry.pid"
}

# Digest of the config blob the registry's manifest for :latest points at ("" if none).
# For a schema-2 image that digest is the local image ID, so the two can be compared.
registry_image_config_digest() {
    local body code
    body=$(mktemp)
    code=$(http_get "http://$REGISTRY/v2/$REGISTRY_REPO/manifests/latest" "$body" \
        "$REGISTRY_USER:$REGISTRY_PASSWORD")
    if [[ $code == 200 ]]; then
        python3 -c 'import json, sys; print(json.load(sys.stdin)["config"]["digest"])' <"$body" || true
    fi
    rm -f "$body"
}

push_test_image() {
    local image_id
    image_id=$(docker image inspect -f '{{.Id}}' "$TEST_IMAGE")
    if [[ $(registry_image_config_digest) == "$image_id" ]]; then
        log "registry already has $REGISTRY_IMAGE"
        return
    fi
    log "pushing $REGISTRY_IMAGE"
    local rc=0
    {
        printf '%s' "$REGISTRY_PASSWORD" |
            docker login -u "$REGISTRY_USER" --password-stdin "$REGISTRY" &&
            docker tag "$TEST_IMAGE" "$REGISTRY_IMAGE" &&
            docker push -q "$REGISTRY_IMAGE"
    } >"$STATE/push.log" 2>&1 || rc=$?
    # Log out and drop the registry tag (only that tag) whatever happened, so that the pull
    # tests have to authenticate and really talk to the registry.
    docker logout "$REGISTRY" >/dev/null 2>&1 || true
    docker rmi "$REGISTRY_IMAGE" >/dev/null 2>&1 || true
    if ((rc != 0)); then
        cat "$STATE/push.log" >&2
        die "pushing $REGISTRY_IMAGE failed"
    fi
}

# --- main -----------------------------------------------------------------------------

write_env() {
    cat >"$STATE/env.tmp" <<EOF
export DOCKHAND_TEST_IMAGE=$TEST_IMAGE
export DOCKHAND_TEST_REGISTRY=$REGISTRY
export DOCKHAND_TEST_REGISTRY_USER=$REGISTRY_USER
export DOCKHAND_TEST_REGISTRY_PASSWORD=$REGISTRY_PASSWORD
export DOCKHAND_TEST_REGISTRY_IMAGE=$REGISTRY_IMAGE
export DOCKHAND_TEST_AMQP_URL=$AMQP_URL
EOF
    mv "$STATE/env.tmp" "$STATE/env"
    log "wrote $STATE/env"
}

main() {
    mkdir -p "$STATE"
    # One run at a time per checkout, so parallel callers do not both start a registry.
    # (Daemons started below close fd 9, see close_extra_fds.)
    exec 9>"$STATE/lock"
    flock 9
    case ${1:-up} in
    up)
        ensure_packages
        ensure_dockerd
        ensure_rabbitmq
        build_test_image
        ensure_registry
        push_test_image
        write_env
        ;;
    services)
        # Only what the worker itself needs (scripts/run): no test image, no registry.
        ensure_packages
        ensure_dockerd
        ensure_rabbitmq
        ;;
    stop) stop_registry ;;
    *) die "usage: $0 [up|services|stop]" ;;
    esac
}

# Only run when executed, so the functions can be sourced and exercised on their own.
if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
    main "$@"
fi
