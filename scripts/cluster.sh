#!/usr/bin/env bash
# A real 3-node RabbitMQ cluster on this machine, next to the main broker (5672), for the
# cluster tests (tests/cluster/, marker `cluster`) and for trying dockhand on several nodes.
#
#   scripts/cluster.sh start           start the nodes that are not running (idempotent); the
#                                      first start also joins them into one cluster and adds the
#                                      test vhost and user
#   scripts/cluster.sh stop [N]        stop all nodes (or node N) cleanly, by their recorded PIDs
#   scripts/cluster.sh status          one line per node: name, port, pid, running/app state
#   scripts/cluster.sh kill N          kill -9 node N's Erlang VM (a crash)
#   scripts/cluster.sh start N         start node N again (same data, same ports); waits for it
#   scripts/cluster.sh stop_app N      rabbitmqctl stop_app on node N (the VM stays up)
#   scripts/cluster.sh start_app N     rabbitmqctl start_app on node N
#   scripts/cluster.sh pid N           the PID of node N's Erlang VM (empty when it is down)
#   scripts/cluster.sh urls            the comma-separated AMQP URLs of the three nodes
#   scripts/cluster.sh ctl N ARGS...   rabbitmqctl -n <node N> ARGS
#   scripts/cluster.sh queues N ARGS.. rabbitmq-queues -n <node N> ARGS (quorum members, leaders)
#   scripts/cluster.sh node N          node N's Erlang name (dockhand-cN@localhost)
#   scripts/cluster.sh reset           stop all nodes and delete the cluster's directory
#
# Nodes are dockhand-c1@localhost .. dockhand-c3@localhost, AMQP on 127.0.0.1:5701-5703,
# distribution on 127.0.0.1:25701-25703 (DOCKHAND_CLUSTER_PORT / DOCKHAND_CLUSTER_DIST_PORT
# move the bases). Everything of theirs lives under DOCKHAND_CLUSTER_DIR (default
# .cache/cluster/): per node mnesia/, log/, rabbitmq.conf, enabled_plugins, an empty
# rabbitmq-env.conf, the pidfile and console.log. The primary broker and /var/lib/rabbitmq are
# never touched (see tests/integration/rabbit2.py for why it is done this way on Debian 12's
# RabbitMQ 3.10). Only processes this script started (recognised by their environment) are
# ever signalled. Writes $DIR/env (export lines for the tests).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DIR=${DOCKHAND_CLUSTER_DIR:-$REPO/.cache/cluster}
PORT_BASE=${DOCKHAND_CLUSTER_PORT:-5701}
DIST_BASE=${DOCKHAND_CLUSTER_DIST_PORT:-25701}
NODES=(1 2 3)
PREFIX=dockhand-c
HOSTPART=localhost
VHOST=dockhand
TEST_USER=dockhand
TEST_PASSWORD=dockhand-cluster-pw
PRIMARY_COOKIE=/var/lib/rabbitmq/.erlang.cookie
SCRIPTS=/usr/lib/rabbitmq/bin
export PATH=$PATH:/usr/local/sbin:/usr/sbin:/sbin

log() { echo "cluster: $*" >&2; }
die() { echo "cluster: ERROR: $*" >&2; exit 1; }

name() { echo "$PREFIX$1"; }
node() { echo "$PREFIX$1@$HOSTPART"; }
port() { echo $((PORT_BASE + $1 - 1)); }
dist_port() { echo $((DIST_BASE + $1 - 1)); }
ndir() { echo "$DIR/c$1"; }
url() { echo "amqp://guest:guest@127.0.0.1:$(port "$1")/"; }
test_url() { echo "amqp://$TEST_USER:$TEST_PASSWORD@127.0.0.1:$(port "$1")/$VHOST"; }

check_n() {
    [[ ${1:-} =~ ^[123]$ ]] || die "node number must be 1, 2 or 3, not '${1:-}'"
}

# The environment of node N's processes: the server, its VM and every CLI call against it.
# HOME holds the cookie; the marker RABBITMQ_MNESIA_BASE=<dir> is how our processes are found.
node_env() {
    local n=$1 d
    d=$(ndir "$n")
    # env -i: nothing of the caller's RABBITMQ_* / ERL_* settings leaks in.
    echo env -i "PATH=$PATH" "LANG=C.UTF-8" "LC_ALL=C.UTF-8" "HOME=$d" \
        "RABBITMQ_NODENAME=$(node "$n")" RABBITMQ_USE_LONGNAME=false \
        RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 "RABBITMQ_NODE_PORT=$(port "$n")" \
        "RABBITMQ_DIST_PORT=$(dist_port "$n")" "RABBITMQ_MNESIA_BASE=$d/mnesia" \
        "RABBITMQ_LOG_BASE=$d/log" "RABBITMQ_PID_FILE=$d/rabbitmq.pid" \
        "RABBITMQ_CONFIG_FILE=$d/rabbitmq.conf" "RABBITMQ_ADVANCED_CONFIG_FILE=$d/advanced.config" \
        "RABBITMQ_CONF_ENV_FILE=$d/rabbitmq-env.conf" "RABBITMQ_ENABLED_PLUGINS_FILE=$d/enabled_plugins"
}

ctl() { cli rabbitmqctl "$@"; }

# cli TOOL N ARGS: a RabbitMQ CLI tool against node N, with that node's environment (cookie).
cli() {
    local tool=$1 n=$2
    shift 2
    # shellcheck disable=SC2046
    (cd "$(ndir "$n")" && $(node_env "$n") "$SCRIPTS/$tool" -n "$(node "$n")" "$@")
}

# Does PID carry node N's environment marker (and so was started by this script for node N)?
is_ours() {
    local pid=$1 n=$2
    # (Unreadable for some processes, e.g. PID 1 under gVisor, or gone meanwhile: not ours.)
    grep -qzxF "RABBITMQ_MNESIA_BASE=$(ndir "$n")/mnesia" "/proc/$pid/environ" 2>/dev/null
}

alive() {
    local stat state
    # No forks: our_pids calls this for every process on the machine.
    { read -r stat <"/proc/$1/stat"; } 2>/dev/null || return 1
    state=${stat##*) }
    state=${state%% *}
    [[ -n $state && $state != Z && $state != X ]]
}

# Node N's Erlang VM: the pidfile's PID if it is our beam.smp, else a search (before the node
# has written its pidfile).
beam_pid() {
    local n=$1 pid p
    pid=$(cat "$(ndir "$n")/rabbitmq.pid" 2>/dev/null || true)
    if [[ $pid =~ ^[0-9]+$ ]] && alive "$pid" && is_ours "$pid" "$n" &&
        [[ $(basename "$(readlink "/proc/$pid/exe" 2>/dev/null)") == beam.smp ]] &&
        tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q -- '-s rabbit boot'; then
        echo "$pid"
        return
    fi
    for p in $(our_pids "$n"); do
        if [[ $(basename "$(readlink "/proc/$p/exe" 2>/dev/null)") == beam.smp ]] &&
            tr '\0' ' ' <"/proc/$p/cmdline" | grep -q -- '-s rabbit boot'; then
            echo "$p"
            return
        fi
    done
}

# Every live process with node N's marker (wrapper sh, VM, its helpers, CLI calls), but epmd:
# an epmd our VM had to start is shared by every node on the machine.
our_pids() {
    local n=$1 p
    for p in /proc/[0-9]*; do
        p=${p#/proc/}
        ((p == $$)) && continue
        alive "$p" || continue
        is_ours "$p" "$n" || continue
        [[ $(basename "$(readlink "/proc/$p/exe" 2>/dev/null)") == epmd ]] && continue
        echo "$p"
    done
}

epmd_has() { epmd -names 2>/dev/null | grep -q "^name $1 at port"; }

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

prepare() {
    local n=$1 d
    d=$(ndir "$n")
    mkdir -p "$d/mnesia" "$d/log"
    chmod 700 "$d"
    cat >"$d/rabbitmq.conf" <<EOF
# written by scripts/cluster.sh
loopback_users.guest = true
log.console = false
log.file.level = info
# Three nodes: the side with the majority keeps running, a minority pauses.
cluster_partition_handling = pause_minority
EOF
    # No plugins: management and friends cost start-up time and CPU, and tests need none.
    echo '[].' >"$d/enabled_plugins"
    : >"$d/rabbitmq-env.conf"
    # The primary's cookie: the nodes must share one, and a plain `rabbitmqctl -n dockhand-c1@localhost`
    # from a root shell (which uses the primary's) reaches them as well.
    if [[ ! -s $d/.erlang.cookie ]] || ! cmp -s <(tr -d '\n' <"$PRIMARY_COOKIE") <(tr -d '\n' <"$d/.erlang.cookie"); then
        rm -f "$d/.erlang.cookie"
        (umask 077 && tr -d '\n' <"$PRIMARY_COOKIE" >"$d/.erlang.cookie")
        chmod 400 "$d/.erlang.cookie"
    fi
}

# Launch node N (not waiting for it): the server script stays as our child sh with the VM below.
launch() {
    local n=$1 d
    d=$(ndir "$n")
    [[ -r $PRIMARY_COOKIE ]] || die "$PRIMARY_COOKIE not readable (is rabbitmq-server installed? run scripts/infra.sh)"
    prepare "$n"
    epmd_has "$(name "$n")" && die "$(node "$n") is already registered with epmd but is not ours/running"
    port_free "$(port "$n")" || die "AMQP port $(port "$n") is taken by another process"
    port_free "$(dist_port "$n")" || die "distribution port $(dist_port "$n") is taken by another process"
    rm -f "$d/rabbitmq.pid"
    printf '\n===== cluster.sh start %s =====\n' "$(date -u +%FT%TZ)" >>"$d/console.log"
    # Scheduler busy-waiting off (the machine's cores are shared) and distribution on loopback.
    local erl_args="-kernel inet_dist_use_interface {127,0,0,1} +sbwt none +sbwtdcpu none +sbwtdio none"
    # setsid: own session, so it outlives this script and ignores the terminal's Ctrl-C; fds
    # above 2 closed so the node holds no pipe of the caller's open.
    # shellcheck disable=SC2046
    (
        cd "$d"
        for fd in /proc/self/fd/*; do
            fd=${fd##*/}
            if ((fd > 2)); then eval "exec $fd>&-" 2>/dev/null || true; fi
        done
        exec setsid $(node_env "$n") "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS=$erl_args" "$SCRIPTS/rabbitmq-server"
    ) </dev/null >>"$d/console.log" 2>&1 &
    echo $! >"$d/wrapper.pid"
}

# Wait until node N has booted and answers AMQP on its port.
await_node() {
    local n=$1 deadline=$((SECONDS + ${2:-120}))
    until epmd_has "$(name "$n")"; do
        ((SECONDS < deadline)) || die "$(node "$n") did not register with epmd (see $(ndir "$n")/console.log)"
        sleep 0.1
    done
    ctl "$n" -q await_startup --timeout $((deadline - SECONDS > 0 ? deadline - SECONDS : 1)) >/dev/null ||
        die "$(node "$n") did not boot (see $(ndir "$n")/log/)"
    until ! port_free "$(port "$n")"; do
        ((SECONDS < deadline)) || die "$(node "$n") booted but nothing listens on $(port "$n")"
        sleep 0.1
    done
}

start_nodes() {
    local n t0=$SECONDS started=()
    mkdir -p "$DIR"
    for n in "$@"; do
        if [[ -n $(beam_pid "$n") ]]; then
            continue
        fi
        launch "$n"
        started+=("$n")
    done
    # All at once: after a full stop, a node waits for the peers it last saw (Mnesia).
    for n in "${started[@]}"; do
        await_node "$n"
        log "$(node "$n") up on 127.0.0.1:$(port "$n") (pid $(beam_pid "$n"))"
    done
    ((${#started[@]} == 0)) || log "started ${started[*]} in $((SECONDS - t0)) s"
}

clustered() { [[ -f $DIR/clustered ]]; }

form_cluster() {
    local n
    clustered && return
    local t0=$SECONDS
    ctl 1 -q enable_feature_flag all >/dev/null
    for n in 2 3; do
        # reset: a fresh node, and a second attempt after a half-done join is safe. The CLI
        # prints the joining node's boot warnings; they go to the node's join.log.
        {
            ctl "$n" -q stop_app && ctl "$n" -q reset && ctl "$n" -q join_cluster "$(node 1)" &&
                ctl "$n" -q start_app && ctl "$n" -q await_startup
        } >>"$(ndir "$n")/join.log" 2>&1 || die "joining $(node "$n") failed (see $(ndir "$n")/join.log)"
    done
    ctl 1 -q enable_feature_flag all >/dev/null
    # Users and vhosts live in the cluster-wide schema: once, on any node.
    ctl 1 -q add_vhost "$VHOST" >/dev/null 2>&1 || true
    ctl 1 -q add_user "$TEST_USER" "$TEST_PASSWORD" >/dev/null 2>&1 ||
        ctl 1 -q change_password "$TEST_USER" "$TEST_PASSWORD" >/dev/null
    ctl 1 -q set_user_tags "$TEST_USER" administrator >/dev/null
    ctl 1 -q set_permissions -p "$VHOST" "$TEST_USER" '.*' '.*' '.*' >/dev/null
    ctl 1 -q set_permissions -p "$VHOST" guest '.*' '.*' '.*' >/dev/null
    local members
    members=$(ctl 1 -q eval 'length(rabbit_nodes:all()).')
    [[ $members == 3 ]] || die "cluster has $members nodes after join_cluster, expected 3"
    touch "$DIR/clustered"
    log "joined $(node 2) and $(node 3) to $(node 1) in $((SECONDS - t0)) s"
}

write_env() {
    local urls=() test_urls=() n
    for n in "${NODES[@]}"; do
        urls+=("$(url "$n")")
        test_urls+=("$(test_url "$n")")
    done
    cat >"$DIR/env.tmp" <<EOF
export DOCKHAND_TEST_CLUSTER_DIR=$DIR
export DOCKHAND_TEST_CLUSTER_URLS=$(IFS=,; echo "${urls[*]}")
export DOCKHAND_TEST_CLUSTER_VHOST_URLS=$(IFS=,; echo "${test_urls[*]}")
EOF
    mv "$DIR/env.tmp" "$DIR/env"
}

stop_node() {
    local n=$1 pid p deadline
    pid=$(beam_pid "$n")
    if [[ -n $pid ]]; then
        # SIGTERM is RabbitMQ's graceful shutdown, like `rabbitmqctl stop`, but faster.
        kill -TERM "$pid" 2>/dev/null || true
        deadline=$((SECONDS + 60))
        while alive "$pid" && ((SECONDS < deadline)); do sleep 0.1; done
        alive "$pid" && kill -KILL "$pid" 2>/dev/null || true
        log "$(node "$n") stopped"
    fi
    kill_leftovers "$n"
}

kill_leftovers() {
    local n=$1 p
    for p in $(our_pids "$n"); do
        kill -KILL "$p" 2>/dev/null || true
    done
    # Collect the wrapper: it is not our child here, so just wait for it to be gone.
    p=$(cat "$(ndir "$n")/wrapper.pid" 2>/dev/null || true)
    if [[ $p =~ ^[0-9]+$ ]]; then
        local deadline=$((SECONDS + 10))
        while alive "$p" && is_ours "$p" "$n" && ((SECONDS < deadline)); do sleep 0.05; done
    fi
    rm -f "$(ndir "$n")/wrapper.pid"
}

kill_node() {
    local n=$1 pid
    pid=$(beam_pid "$n")
    [[ -n $pid ]] || die "$(node "$n") is not running"
    kill -KILL "$pid"
    local deadline=$((SECONDS + 10))
    while alive "$pid"; do
        ((SECONDS < deadline)) || die "$(node "$n") (pid $pid) survived SIGKILL"
        sleep 0.02
    done
    kill_leftovers "$n"
    log "$(node "$n") killed (pid $pid)"
}

status() {
    local n pid app
    for n in "${NODES[@]}"; do
        pid=$(beam_pid "$n")
        if [[ -z $pid ]]; then
            echo "$(node "$n") 127.0.0.1:$(port "$n") down"
            continue
        fi
        if port_free "$(port "$n")"; then app="app stopped"; else app="running"; fi
        echo "$(node "$n") 127.0.0.1:$(port "$n") pid $pid $app"
    done
}

main() {
    local cmd=${1:-status}
    shift || true
    mkdir -p "$DIR"
    case $cmd in
    start)
        if (($# == 0)); then
            # One cluster-wide start at a time (tests and a user may both call it).
            exec 9>"$DIR/lock"
            flock 9
            start_nodes "${NODES[@]}"
            form_cluster
            write_env
        else
            check_n "$1"
            start_nodes "$1"
        fi
        ;;
    stop)
        if (($# == 0)); then
            for n in "${NODES[@]}"; do stop_node "$n"; done
        else
            check_n "$1"
            stop_node "$1"
        fi
        ;;
    kill) check_n "${1:-}"; kill_node "$1" ;;
    stop_app | start_app)
        check_n "${1:-}"
        ctl "$1" -q "$cmd" >/dev/null
        [[ $cmd == start_app ]] && ctl "$1" -q await_startup >/dev/null
        log "$cmd $(node "$1") done"
        ;;
    pid) check_n "${1:-}"; beam_pid "$1" ;;
    status) status ;;
    urls) write_env; sed -n 's/^export DOCKHAND_TEST_CLUSTER_URLS=//p' "$DIR/env" ;;
    ctl) check_n "${1:-}"; n=$1; shift; ctl "$n" "$@" ;;
    queues) check_n "${1:-}"; n=$1; shift; cli rabbitmq-queues "$n" "$@" ;;
    node) check_n "${1:-}"; node "$1" ;;
    reset)
        for n in "${NODES[@]}"; do stop_node "$n"; done
        rm -rf "$DIR"
        log "removed $DIR"
        ;;
    *) die "unknown command '$cmd' (start, stop, status, kill, stop_app, start_app, pid, urls, ctl, queues, node, reset)" ;;
    esac
}

main "$@"
