#!/usr/bin/env bash
# Make the CI engine a single-node Swarm manager on 127.0.0.1 and join a second dockerd on
# the same machine as a worker, so the swarm tests place tasks over two real nodes.
# Idempotent; run as root after .ci/docker.sh. Fails loudly.
#   bash .ci/swarm.sh        init (if needed), start + join the worker, label the nodes
#   bash .ci/swarm.sh down   stop the worker; leave the swarm if this script initialised it
#   FORKPROXY_SWARM_WORKER=0 skips the second dockerd (single-node swarm only)
# Writes /tmp/forkproxy-swarm.env (the worker's engine URL) for the tests.
set -euo pipefail

dir=/tmp/forkproxy-dockerd2 # the worker's data-root, exec-root, socket, pid file, log
sock="unix://$dir/docker.sock"
bridge=fp2br0 # its own bridge: docker0 belongs to the first engine
env_file=/tmp/forkproxy-swarm.env
marker=/tmp/forkproxy-swarm.initialised
image=forkproxy-test/httpd:latest
worker() { docker -H "$sock" "$@"; }

down() {
    if worker info >/dev/null 2>&1; then
        worker swarm leave --force >/dev/null 2>&1 || true
    fi
    if [[ -f $dir/dockerd.pid ]]; then
        pid="$(cat "$dir/dockerd.pid")"
        if [[ "$(cat "/proc/$pid/comm" 2>/dev/null || true)" == dockerd ]]; then
            kill "$pid"
            for _ in $(seq 1 30); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
        fi
    fi
    ip link del "$bridge" 2>/dev/null || true
    # the worker's node entry stays "down" in the manager's list until removed
    for id in $(docker node ls -q --filter role=worker 2>/dev/null || true); do
        docker node rm --force "$id" >/dev/null 2>&1 || true
    done
    if [[ -f $marker ]]; then
        docker swarm leave --force
        rm -f "$marker"
        echo "swarm.sh: left the swarm this script initialised"
    fi
    rm -f "$env_file"
}

if [[ ${1:-up} == down ]]; then
    down
    exit 0
fi

docker info >/dev/null 2>&1 || { echo "swarm.sh: no Docker engine (run .ci/docker.sh first)" >&2; exit 1; }
state="$(docker info -f '{{.Swarm.LocalNodeState}}')"
if [[ $state != active ]]; then
    echo "swarm.sh: swarm init on 127.0.0.1"
    docker swarm init --advertise-addr 127.0.0.1 --listen-addr 127.0.0.1:2377 >/dev/null
    touch "$marker"
fi
[[ "$(docker info -f '{{.Swarm.ControlAvailable}}')" == true ]] || {
    echo "swarm.sh: the engine is in a swarm but not a manager" >&2
    exit 1
}
manager_id="$(docker info -f '{{.Swarm.NodeID}}')"
docker node update --label-add zone=a "$manager_id" >/dev/null
: >"$env_file"

if [[ ${FORKPROXY_SWARM_WORKER:-1} == 1 ]]; then
    mkdir -p "$dir"
    if ! ip link show "$bridge" >/dev/null 2>&1; then
        ip link add "$bridge" type bridge
        ip addr add 172.31.250.1/24 dev "$bridge"
    fi
    ip link set "$bridge" up
    if ! worker info >/dev/null 2>&1; then
        echo "swarm.sh: starting the worker dockerd (log: $dir/dockerd.log)"
        # Its own roots, socket, pid file, containerd namespace and bridge; no iptables (as
        # the first engine). Host-mode published ports go through its docker-proxy.
        setsid nohup dockerd --data-root "$dir/data" --exec-root "$dir/exec" -H "$sock" \
            --pidfile "$dir/dockerd.pid" --bridge="$bridge" --iptables=false --ip-masq=false \
            --containerd-namespace fp2 --containerd-plugins-namespace fp2-plugins \
            >>"$dir/dockerd.log" 2>&1 </dev/null &
        for _ in $(seq 1 60); do worker info >/dev/null 2>&1 && break; sleep 1; done
        worker info >/dev/null 2>&1 || { tail -n 30 "$dir/dockerd.log" >&2; echo "swarm.sh: the worker dockerd did not start" >&2; exit 1; }
    fi
    # A worker whose daemon was killed while it was in an earlier swarm (another run's
    # manager, since left or re-initialised) keeps that membership in its data-root: it
    # sits "pending" on a manager that no longer knows it, and a join is refused. Leave it.
    wstate="$(worker info -f '{{.Swarm.LocalNodeState}}')"
    wid="$(worker info -f '{{.Swarm.NodeID}}')"
    if [[ $wstate != inactive ]] && { [[ $wstate != active ]] || ! docker node inspect "$wid" >/dev/null 2>&1; }; then
        echo "swarm.sh: the worker holds a stale swarm membership ($wstate): leaving it"
        worker swarm leave --force >/dev/null
    fi
    if [[ "$(worker info -f '{{.Swarm.LocalNodeState}}')" != active ]]; then
        # Its own swarm port (2378); the gossip port 7946 is the first engine's, so the
        # worker has no overlay networking: host-mode ports do not need it.
        worker swarm join --token "$(docker swarm join-token -q worker)" \
            --listen-addr 127.0.0.1:2378 --advertise-addr 127.0.0.1:2378 127.0.0.1:2377 >/dev/null
    fi
    worker_id="$(worker info -f '{{.Swarm.NodeID}}')"
    for _ in $(seq 1 30); do
        [[ "$(docker node inspect -f '{{.Status.State}}' "$worker_id")" == ready ]] && break
        sleep 1
    done
    [[ "$(docker node inspect -f '{{.Status.State}}' "$worker_id")" == ready ]] || {
        echo "swarm.sh: the worker did not become ready" >&2; exit 1; }
    docker node update --label-add zone=b "$worker_id" >/dev/null
    # No registry: the worker gets the test image from the first engine.
    if [[ "$(worker image inspect -f '{{.Id}}' "$image" 2>/dev/null || true)" != "$(docker image inspect -f '{{.Id}}' "$image")" ]]; then
        docker save "$image" | worker load >/dev/null
    fi
    echo "FORKPROXY_SWARM_WORKER=$sock" >"$env_file"
fi
echo "swarm.sh: swarm up: $(docker node ls --format '{{.Hostname}}/{{.ManagerStatus}}/{{.Status}}' | tr '\n' ' ')"
