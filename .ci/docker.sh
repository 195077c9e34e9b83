#!/usr/bin/env bash
# Install and start a Docker engine for the docker/vsphere tests, then build the local
# test images (no registry). Idempotent; run as root on Debian 12. Fails loudly.
#   FORKPROXY_DOCKERD_FLAGS   extra dockerd flags (default: --iptables=false)
set -euo pipefail

log=/tmp/dockerd.log
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

need=()
command -v dockerd >/dev/null || need+=(docker.io)
[[ -x /bin/busybox ]] || need+=(busybox-static)
if ((${#need[@]})); then
    echo "docker.sh: installing ${need[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need[@]}" >/tmp/docker-apt.log 2>&1 || {
        tail -n 30 /tmp/docker-apt.log >&2
        echo "docker.sh: apt-get install ${need[*]} failed" >&2
        exit 1
    }
fi

wait_for_engine() { # $1 = pid of the dockerd we started; 0 when `docker info` answers
    for _ in $(seq 1 60); do
        docker info >/dev/null 2>&1 && return 0
        kill -0 "$1" 2>/dev/null || return 1
        sleep 1
    done
    return 1
}

start_dockerd() { # $@ = extra flags
    # --iptables=false: sandboxes and CI containers often lack iptables/nf_tables;
    # published ports still work through docker-proxy, container IPs through docker0.
    # shellcheck disable=SC2086
    setsid nohup dockerd ${FORKPROXY_DOCKERD_FLAGS:---iptables=false} "$@" >>"$log" 2>&1 </dev/null &
    echo $!
}

clear_stale_pidfile() {
    # A dockerd killed without cleanup (a stopped session, a crash) leaves its pid file,
    # and a new dockerd refuses to start while that file names any live process.
    local f=/var/run/docker.pid old
    [[ -f $f ]] || return 0
    old="$(cat "$f" 2>/dev/null || true)"
    if [[ -z $old || "$(cat "/proc/$old/comm" 2>/dev/null || true)" != dockerd ]]; then
        echo "docker.sh: removing stale $f (pid ${old:-?} is not a dockerd)"
        rm -f "$f"
    fi
}

if docker info >/dev/null 2>&1; then
    echo "docker.sh: engine already running"
else
    echo "docker.sh: starting dockerd (log: $log)"
    : >"$log"
    clear_stale_pidfile
    pid="$(start_dockerd)"
    if ! wait_for_engine "$pid"; then
        # overlay2 can fail on nested/odd filesystems; vfs is slow but works anywhere.
        kill "$pid" 2>/dev/null || true
        sleep 2
        echo "docker.sh: dockerd did not come up; retrying with --storage-driver=vfs" | tee -a "$log"
        clear_stale_pidfile
        pid="$(start_dockerd --storage-driver=vfs)"
        if ! wait_for_engine "$pid"; then
            echo "docker.sh: dockerd failed to start within 60s; last lines of $log:" >&2
            tail -n 40 "$log" >&2
            exit 1
        fi
    fi
    echo "docker.sh: engine up: $(docker info -f '{{.ServerVersion}} {{.Driver}} cgroup v{{.CgroupVersion}}')"
fi

bash "$repo/tests/images/build.sh"
