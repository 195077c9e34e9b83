#!/usr/bin/env bash
# Build and start the vcsim harness (govmomi's vCenter simulator + InstantClone_Task) for the
# vsphere tests. Idempotent; run as root on Debian 12. Needs the Docker engine (container-
# backed VMs), so it runs .ci/docker.sh first. Fails loudly with the log tail.
# Writes the connection facts to $FORKPROXY_VCSIM_ENV (default /tmp/forkproxy-vcsim.env).
#   FORKPROXY_VCSIM_PORT   port to listen on (default 18443)
set -euo pipefail
export HOME="${HOME:-/root}"  # go wants one for its config, even in GOPATH mode

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
state="${FORKPROXY_VCSIM_STATE:-/tmp/forkproxy-vcsim}"
env_file="${FORKPROXY_VCSIM_ENV:-/tmp/forkproxy-vcsim.env}"
port="${FORKPROXY_VCSIM_PORT:-18443}"
bin="$repo/tests/backends/vsphere/vcsim/vcsim"
log="$state/vcsim.log"

bash "$repo/.ci/docker.sh"

need=()
command -v go >/dev/null || need+=(golang-go)
[[ -d /usr/share/gocode/src/github.com/vmware/govmomi/simulator ]] || need+=(golang-github-vmware-govmomi-dev)
command -v openssl >/dev/null || need+=(openssl)
command -v curl >/dev/null || need+=(curl)
if ((${#need[@]})); then
    echo "vcsim.sh: installing ${need[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need[@]}" >/tmp/vcsim-apt.log 2>&1 || {
        tail -n 30 /tmp/vcsim-apt.log >&2
        echo "vcsim.sh: apt-get install ${need[*]} failed" >&2
        exit 1
    }
fi

echo "vcsim.sh: building $bin ($(go version))"
# GOPATH mode against Debian's source tree: no module download. The package is built by
# directory path, so it need not live inside GOPATH.
(cd "$repo" && GO111MODULE=off GOPATH=/usr/share/gocode GOFLAGS= \
    GOCACHE="${GOCACHE:-/tmp/forkproxy-gocache}" \
    go build -o "$bin" ./tests/backends/vsphere/vcsim)

mkdir -p "$state"
chmod 700 "$state"

# Stop a harness left by an earlier run (its pid is in the env file we wrote).
if [[ -f "$env_file" ]]; then
    old_pid="$(sed -n 's/^FORKPROXY_VCSIM_PID=//p' "$env_file")"
    # only if that pid is still the harness: after a reboot or a stopped session it may
    # belong to anything else by now
    if [[ -n "$old_pid" ]] && [[ "$(cat "/proc/$old_pid/comm" 2>/dev/null || true)" == vcsim ]]; then
        echo "vcsim.sh: stopping the previous harness (pid $old_pid)"
        kill -TERM "$old_pid" || true
        for _ in $(seq 1 50); do kill -0 "$old_pid" 2>/dev/null || break; sleep 0.2; done
    fi
    rm -f "$env_file"
fi

if [[ ! -s "$state/cert.pem" ]]; then
    openssl req -x509 -newkey rsa:2048 -nodes -days 30 \
        -keyout "$state/key.pem" -out "$state/cert.pem" \
        -subj "/CN=127.0.0.1" -addext "subjectAltName=IP:127.0.0.1,DNS:localhost" \
        >/dev/null 2>&1
fi
password="$(openssl rand -hex 12)"

echo "vcsim.sh: starting the simulator on https://127.0.0.1:$port/sdk (log: $log)"
: >"$log"
setsid nohup "$bin" -listen "127.0.0.1:$port" -tls-cert "$state/cert.pem" -tls-key "$state/key.pem" \
    -username forkproxy -password "$password" -env-file "$env_file" >>"$log" 2>&1 </dev/null &
pid=$!

up=0
for _ in $(seq 1 100); do
    if [[ -s "$env_file" ]] &&
        curl -sf --cacert "$state/cert.pem" -o /dev/null "https://127.0.0.1:$port/about"; then
        up=1
        break
    fi
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.2
done
if ((!up)); then
    echo "vcsim.sh: the simulator did not come up; last lines of $log:" >&2
    tail -n 40 "$log" >&2
    exit 1
fi

# Prove the SOAP side answers (the about page is static): a real Login over SOAP.
soap() { # $1 = body of soapenv:Body
    curl -sf --cacert "$state/cert.pem" -H 'Content-Type: text/xml' -H 'SOAPAction: urn:vim25/7.0.0.0' \
        --data "<?xml version=\"1.0\"?><soapenv:Envelope xmlns:soapenv=\"http://schemas.xmlsoap.org/soap/envelope/\"><soapenv:Body>$1</soapenv:Body></soapenv:Envelope>" \
        "https://127.0.0.1:$port/sdk"
}
login="<Login xmlns=\"urn:vim25\"><_this type=\"SessionManager\">SessionManager</_this><userName>forkproxy</userName><password>$password</password></Login>"
if ! soap "$login" | grep -q "<userName>forkproxy</userName>"; then
    echo "vcsim.sh: SOAP Login failed; last lines of $log:" >&2
    tail -n 40 "$log" >&2
    exit 1
fi
api="$(soap '<RetrieveServiceContent xmlns="urn:vim25"><_this type="ServiceInstance">ServiceInstance</_this></RetrieveServiceContent>' |
    grep -o '<apiVersion>[^<]*' | cut -d'>' -f2)"
echo "vcsim.sh: SOAP Login ok (API $api)"
echo "vcsim.sh: up (pid $pid); connection facts in $env_file"
