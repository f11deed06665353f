#!/usr/bin/env bash
# A multi-node Ray cluster on ONE machine, for trying sdfleet against a real cluster: a head
# raylet plus N worker raylets, each a separate Ray node with its own resources, logs and temp
# dir. Workers may declare fake GPUs (--num-gpus), so replica placement and GPU pinning
# (one CUDA_VISIBLE_DEVICES per actor) can be tried on a machine without any GPU.
#
#   cluster/local_cluster.sh start [--workers N] [--gpus-per-worker G] [--cpus-per-worker C]
#                                  [--head-cpus C] [--port P] [--object-store-mb M]
#                                  [--worker-resources JSON]
#   cluster/local_cluster.sh status        # nodes, their resources, `ray status`
#   cluster/local_cluster.sh address       # just the address (for RAY_ADDRESS=...)
#   cluster/local_cluster.sh env           # `eval "$(cluster/local_cluster.sh env)"`
#   cluster/local_cluster.sh kill-worker I # SIGKILL worker I: a node lost mid-run
#   cluster/local_cluster.sh stop
#
# Every command takes --dir DIR (or $SDFLEET_CLUSTER_DIR): where this cluster keeps its pids,
# logs and Ray temp dirs, so several clusters can live side by side (tests use their own).
#
# Each node is one `ray start --block` process in its own process group; `stop` ends exactly
# those processes (and their children). It never runs `ray stop`, which would kill every Ray
# process on the machine, including clusters that belong to someone else.
#
# Token auth: Ray 2.60 turns token auth on for local clusters when a token exists in
# ~/.ray/auth_token. This cluster is for trying things, so it exports RAY_AUTH_MODE=disabled
# unless RAY_AUTH_MODE is already set. With auth disabled anyone who can reach this machine's
# ports can run code on it: use it on a trusted machine, or export RAY_AUTH_MODE=token first
# (then every client needs the token too; see `ray get-auth-token`).
set -euo pipefail

# --- defaults (flags override) ----------------------------------------------------------------
STATE_DIR=${SDFLEET_CLUSTER_DIR:-/tmp/sdfleet-cluster-$(id -u)}
WORKERS=2
GPUS_PER_WORKER=1
CPUS_PER_WORKER=2
HEAD_CPUS=1
PORT=auto               # 6379 when free, else any free port
OBJECT_STORE_MB=512     # per node; images never travel through the object store
WORKER_RESOURCES=""     # extra custom resources per worker, JSON, e.g. '{"big_mem": 1}'
START_TIMEOUT_S=${SDFLEET_CLUSTER_START_TIMEOUT_S:-120}
STOP_TIMEOUT_S=20

export RAY_AUTH_MODE=${RAY_AUTH_MODE:-disabled}
# SIGTERM makes a node drain for up to 30 s by default; a throwaway cluster stops at once.
export RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S=${RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S:-0}
export RAY_USAGE_STATS_ENABLED=0

die() { echo "local_cluster: error: $*" >&2; exit 1; }
say() { echo "local_cluster: $*"; }

usage() {
    sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'
    exit "${1:-0}"
}

# --- the ray CLI and its python: the repo's .venv when present, else whatever is on PATH -------
find_ray() {
    local repo
    repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
    if [[ -x "$repo/.venv/bin/ray" ]]; then
        RAY="$repo/.venv/bin/ray"
    elif command -v ray >/dev/null 2>&1; then
        RAY=$(command -v ray)
    else
        die "no ray CLI: create the venv (make install) or put ray on PATH"
    fi
    # The python that runs this ray CLI (ray's console script names it in its #! line).
    PY=$(dirname "$RAY")/python
    if [[ ! -x "$PY" ]]; then
        PY=$(head -n 1 "$RAY" | sed -n 's/^#! *//p' | awk '{print $1}')
        [[ -x "$PY" ]] || PY=$(command -v python3) || die "no python next to $RAY"
    fi
}

# --- argument parsing -------------------------------------------------------------------------
need_value() { [[ $# -ge 2 && -n "$2" ]] || die "$1 needs a value"; }
need_int() { [[ "$2" =~ ^[0-9]+$ ]] || die "$1 must be a whole number, got '$2'"; }

parse_flags() {
    while [[ $# -gt 0 ]]; do
        case "$1" in
            --dir) need_value "$@"; STATE_DIR=$2; shift 2 ;;
            --workers) need_value "$@"; need_int "$1" "$2"; WORKERS=$2; shift 2 ;;
            --gpus-per-worker) need_value "$@"; need_int "$1" "$2"; GPUS_PER_WORKER=$2; shift 2 ;;
            --cpus-per-worker) need_value "$@"; need_int "$1" "$2"; CPUS_PER_WORKER=$2; shift 2 ;;
            --head-cpus) need_value "$@"; need_int "$1" "$2"; HEAD_CPUS=$2; shift 2 ;;
            --port) need_value "$@"; [[ "$2" == auto ]] || need_int "$1" "$2"; PORT=$2; shift 2 ;;
            --object-store-mb) need_value "$@"; need_int "$1" "$2"; OBJECT_STORE_MB=$2; shift 2 ;;
            --worker-resources) need_value "$@"; WORKER_RESOURCES=$2; shift 2 ;;
            -h|--help) usage 0 ;;
            *) die "unknown option '$1' (see --help)" ;;
        esac
    done
    # Ray puts unix sockets under each node's temp dir, and a socket path may not exceed 107
    # bytes; the session folder and socket names take about 65 of them.
    [[ ${#STATE_DIR} -le 40 ]] ||
        die "--dir '$STATE_DIR' is ${#STATE_DIR} characters; use one of at most 40 (e.g. under /tmp)"
    [[ "$STATE_DIR" == /* ]] || STATE_DIR="$PWD/$STATE_DIR"
}

# --- node bookkeeping: $STATE_DIR/<node>.pid, <node>.log, <node>/ (the node's Ray temp dir) ----
node_names() {
    local f
    for f in "$STATE_DIR"/w*.pid "$STATE_DIR"/head.pid; do
        [[ -e "$f" ]] && basename "$f" .pid
    done
    return 0
}

# The pid of a node's `ray start --block` process, if it is alive and still ours (a pid file
# can outlive its process, and the pid can be reused by something else).
node_pid() {
    local node=$1 pid args
    [[ -f "$STATE_DIR/$node.pid" ]] || return 1
    pid=$(cat "$STATE_DIR/$node.pid")
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    args=$(ps -o args= -p "$pid" 2>/dev/null) || return 1
    [[ "$args" == *"--temp-dir=$STATE_DIR/$node"* ]] || return 1
    echo "$pid"
}

head_address() {
    [[ -s "$STATE_DIR/head/ray_current_cluster" ]] || return 1
    cat "$STATE_DIR/head/ray_current_cluster"
}

free_ports() {  # free_ports K -> K distinct free TCP ports, one per line
    "$PY" - "$1" <<'EOF'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket()
    s.bind(("", 0))
    socks.append(s)
print("\n".join(str(s.getsockname()[1]) for s in socks))
for s in socks:
    s.close()
EOF
}

port_is_free() {
    "$PY" - "$1" <<'EOF'
import socket, sys
s = socket.socket()
try:
    s.bind(("", int(sys.argv[1])))
except OSError:
    sys.exit(1)
finally:
    s.close()
EOF
}

# Start one node: `ray start --block` in the background, in its own process group (setsid), so
# `stop` can end it and everything it spawned. Extra arguments go to `ray start`.
launch_node() {
    local node=$1; shift
    local ports
    # Every raylet on a machine needs its own agent ports: Ray's fixed defaults would clash.
    mapfile -t ports < <(free_ports 4)
    [[ ${#ports[@]} -eq 4 ]] || die "could not find free ports for $node"
    mkdir -p "$STATE_DIR/$node"
    rm -f "$STATE_DIR/$node/ray_current_cluster"
    local cmd=("$RAY" start --block "--temp-dir=$STATE_DIR/$node"
        "--object-store-memory=$((OBJECT_STORE_MB * 1024 * 1024))"
        "--dashboard-agent-listen-port=${ports[0]}" "--dashboard-agent-grpc-port=${ports[1]}"
        "--runtime-env-agent-port=${ports[2]}" "--metrics-export-port=${ports[3]}"
        --min-worker-port=0 --max-worker-port=0 --disable-usage-stats "$@")
    if command -v setsid >/dev/null 2>&1; then
        setsid "${cmd[@]}" >"$STATE_DIR/$node.log" 2>&1 </dev/null &
    else
        "${cmd[@]}" >"$STATE_DIR/$node.log" 2>&1 </dev/null &
    fi
    echo $! >"$STATE_DIR/$node.pid"
}

fail_start() {
    local node=$1 why=$2
    echo "local_cluster: error: $node $why; the end of $STATE_DIR/$node.log:" >&2
    tail -n 25 "$STATE_DIR/$node.log" >&2 || true
    stop_nodes >/dev/null 2>&1 || true
    exit 1
}

wait_for_head() {
    local deadline=$((SECONDS + START_TIMEOUT_S))
    until head_address >/dev/null; do
        node_pid head >/dev/null || fail_start head "exited during start-up"
        ((SECONDS < deadline)) || fail_start head "did not start within ${START_TIMEOUT_S}s"
        sleep 0.5
    done
}

# Wait until the cluster has $1 alive nodes (polls through a driver; prints nothing else).
wait_for_nodes() {
    local want=$1 address=$2 node
    for node in $(node_names); do
        node_pid "$node" >/dev/null || fail_start "$node" "exited during start-up"
    done
    "$PY" - "$address" "$want" "$START_TIMEOUT_S" <<'EOF' || die "the cluster did not reach $want nodes; logs: $STATE_DIR/*.log"
import logging, sys, time
import ray
address, want, timeout = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
ray.init(address=address, logging_level=logging.ERROR, log_to_driver=False)
deadline = time.monotonic() + timeout
while sum(n["Alive"] for n in ray.nodes()) < want:
    if time.monotonic() > deadline:
        sys.exit(1)
    time.sleep(0.5)
EOF
}

# `ray status` shows the autoscaler's view, which trails the nodes' registration by a few
# seconds; wait for it too, so that a `ray status` right after `start` lists every node.
wait_for_status_view() {
    local want=$1 address=$2 seen deadline=$((SECONDS + 30))
    while ((SECONDS < deadline)); do
        seen=$("$RAY" status --address "$address" 2>/dev/null |
            sed -n '/^Active:/,/^Pending:/p' | grep -c ' node_') || seen=0
        ((seen >= want)) && return 0
        sleep 1
    done
    say "note: \`ray status\` may take a few more seconds to list every node"
}

print_nodes() {
    "$PY" - "$1" <<'EOF'
import logging, sys
import ray
ray.init(address=sys.argv[1], logging_level=logging.ERROR, log_to_driver=False)
print(f"{'node id':<14}{'role':<8}{'alive':<7}{'CPU':>5}{'GPU':>5}  other resources")
for n in sorted(ray.nodes(), key=lambda n: "node:__internal_head__" not in n["Resources"]):
    res = n["Resources"]
    role = "head" if "node:__internal_head__" in res else "worker"
    other = {k: v for k, v in res.items() if k not in ("CPU", "GPU", "memory",
             "object_store_memory", "node:__internal_head__") and not k.startswith("node:")}
    print(f"{n['NodeID'][:12]:<14}{role:<8}{str(n['Alive']):<7}{res.get('CPU', 0):>5g}"
          f"{res.get('GPU', 0):>5g}  {other or ''}")
EOF
}

# --- commands ---------------------------------------------------------------------------------
cmd_start() {
    local node
    if node_pid head >/dev/null; then
        die "a cluster already runs from $STATE_DIR (address $(head_address || echo '?')); stop it first"
    fi
    for node in $(node_names); do
        node_pid "$node" >/dev/null && die "node $node of an earlier cluster still runs; stop it first"
    done
    mkdir -p "$STATE_DIR"
    rm -f "$STATE_DIR"/*.pid
    if [[ "$PORT" == auto ]]; then
        if port_is_free 6379; then PORT=6379; else PORT=$(free_ports 1); fi
    elif ! port_is_free "$PORT"; then
        die "port $PORT is in use; pick another with --port or use --port auto"
    fi
    local head_ports head_extra=()
    mapfile -t head_ports < <(free_ports 2)
    [[ ${#head_ports[@]} -eq 2 ]] || die "could not find free ports for the head"
    # The Ray Client server exists only with ray[client]; asking for its port without it fails.
    if "$PY" -c 'import sys; from ray._private.utils import get_ray_client_dependency_error as e
sys.exit(e() is not None)' 2>/dev/null; then
        head_extra=("--ray-client-server-port=${head_ports[1]}")
    fi

    # 1. the head: CPU only, like a cloud head node, so GPU replicas land on the workers
    say "starting head on port $PORT ($HEAD_CPUS CPU, 0 GPU)"
    launch_node head --head "--port=$PORT" "--num-cpus=$HEAD_CPUS" --num-gpus=0 \
        "--dashboard-port=${head_ports[0]}" "${head_extra[@]}"
    wait_for_head
    local address
    address=$(head_address)

    # 2. the workers: each a separate Ray node with its own (possibly fake) GPUs
    local i extra=()
    [[ -n "$WORKER_RESOURCES" ]] && extra=("--resources=$WORKER_RESOURCES")
    for ((i = 1; i <= WORKERS; i++)); do
        say "starting worker w$i ($CPUS_PER_WORKER CPU, $GPUS_PER_WORKER GPU)"
        launch_node "w$i" "--address=$address" "--num-cpus=$CPUS_PER_WORKER" \
            "--num-gpus=$GPUS_PER_WORKER" "${extra[@]}"
    done
    wait_for_nodes $((WORKERS + 1)) "$address"
    wait_for_status_view $((WORKERS + 1)) "$address"

    # 3. how to use it
    cat <<EOF

Ray cluster up: 1 head + $WORKERS worker(s), $((WORKERS * GPUS_PER_WORKER)) GPU(s) in all (declared, maybe fake).
  address:  $address
  state:    $STATE_DIR   (logs: $STATE_DIR/<node>.log and $STATE_DIR/<node>/session_latest/logs)

Use it (all nodes share this machine's disk, so local paths are fine here):
  export RAY_ADDRESS=$address RAY_AUTH_MODE=$RAY_AUTH_MODE
  sdfleet run jobs/examples/marketing.yaml --executor ray --out out/marketing-cluster --address $address
  $RAY status --address $address

Stop it:
  $0 stop --dir $STATE_DIR
EOF
}

cmd_status() {
    local node pid address
    address=$(head_address 2>/dev/null) || address=""
    if ! node_pid head >/dev/null; then
        say "no cluster runs from $STATE_DIR"
        return 1
    fi
    echo "address: $address   (state: $STATE_DIR, RAY_AUTH_MODE=$RAY_AUTH_MODE)"
    for node in $(node_names); do
        if pid=$(node_pid "$node"); then echo "  $node: running (pid $pid)"; else echo "  $node: stopped"; fi
    done
    echo
    print_nodes "$address"
    echo
    "$RAY" status --address "$address"
}

cmd_address() {
    node_pid head >/dev/null || die "no cluster runs from $STATE_DIR"
    head_address
}

cmd_env() {
    local address
    address=$(cmd_address)
    echo "export RAY_ADDRESS=$address"
    echo "export RAY_AUTH_MODE=$RAY_AUTH_MODE"
}

# End one node: SIGTERM to its `ray start --block` (which stops its raylet and the rest), then
# SIGKILL to its process group for anything still alive after the grace period.
stop_node() {
    local node=$1 signal=${2:-TERM} pid pgid deadline
    if pid=$(node_pid "$node"); then
        pgid=$(ps -o pgid= -p "$pid" 2>/dev/null | tr -d ' ') || pgid=""
        kill "-$signal" "$pid" 2>/dev/null || true
        deadline=$((SECONDS + STOP_TIMEOUT_S))
        while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.2; done
        kill -KILL "$pid" 2>/dev/null || true
        # The process group is ours only when setsid made this process its leader.
        [[ "$pgid" == "$pid" ]] && { kill -KILL -- "-$pid" 2>/dev/null || true; }
        echo "stopped $node (pid $pid)"
    fi
    rm -f "$STATE_DIR/$node.pid"
}

stop_nodes() {
    local node
    for node in $(node_names); do
        [[ "$node" == head ]] || stop_node "$node"
    done
    stop_node head
}

cmd_stop() {
    [[ -d "$STATE_DIR" ]] || { say "nothing to stop in $STATE_DIR"; return 0; }
    stop_nodes
    rm -f "$STATE_DIR/head/ray_current_cluster"
    say "cluster in $STATE_DIR stopped (logs kept there)"
}

cmd_kill_worker() {
    local i=${1:-}
    [[ "$i" =~ ^[0-9]+$ ]] || die "kill-worker needs a worker number, e.g. kill-worker 1"
    node_pid "w$i" >/dev/null || die "worker w$i is not running"
    stop_node "w$i" KILL
}

main() {
    [[ $# -ge 1 ]] || usage 2
    local command=$1; shift
    case "$command" in
        -h|--help|help) usage 0 ;;
        kill-worker)
            local which=${1:-}; [[ $# -gt 0 ]] && shift
            parse_flags "$@"; find_ray; cmd_kill_worker "$which" ;;
        start|status|address|env|stop)
            parse_flags "$@"; find_ray; "cmd_$command" ;;
        *) die "unknown command '$command' (start, status, address, env, kill-worker, stop)" ;;
    esac
}

main "$@"
