#!/usr/bin/env bash
# Build the local test images without any registry: `docker import` of a tiny rootfs
# holding Debian's static busybox (whose httpd is a real web server) plus httpd/www.
# Idempotent: skipped when the image exists with the same recipe hash label.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
image="${FORKPROXY_TEST_IMAGE:-forkproxy-test/httpd:latest}"
busybox="${BUSYBOX:-/bin/busybox}"

if [[ ! -x "$busybox" ]]; then
    echo "build.sh: $busybox not found (apt-get install -y busybox-static)" >&2
    exit 1
fi
if ! file_info="$(file -b "$busybox" 2>/dev/null)" || [[ "$file_info" == *dynamic* ]]; then
    # `file` may be absent; fall back to ldd, which fails on static binaries.
    if ldd "$busybox" >/dev/null 2>&1; then
        echo "build.sh: $busybox is dynamically linked; need busybox-static" >&2
        exit 1
    fi
fi

# The recipe hash covers this script, the web root and the busybox binary.
recipe="$(
    cd "$here"
    { sha256sum build.sh "$busybox"; find httpd -type f -print0 | sort -z | xargs -0 sha256sum
      find httpd -print0 | sort -z | xargs -0 stat -c '%n %a'; } | sha256sum | cut -c1-16
)"
current="$(docker image inspect -f '{{ index .Config.Labels "io.forkproxy.recipe" }}' "$image" 2>/dev/null || true)"
previous="$(docker image inspect -f '{{ .Id }}' "$image" 2>/dev/null || true)"
if [[ "$current" == "$recipe" ]]; then
    echo "build.sh: $image is up to date (recipe $recipe)"
    exit 0
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
root="$work/rootfs"
mkdir -p "$root/bin" "$root/tmp" "$root/etc" "$root/proc" "$root/sys" "$root/dev"
chmod 1777 "$root/tmp"
cp "$busybox" "$root/bin/busybox"
for applet in $("$busybox" --list); do
    [[ "$applet" == busybox ]] || ln -sf busybox "$root/bin/$applet"
done
mkdir -p "$root/usr/bin" "$root/sbin" "$root/usr/sbin"
cp -a "$here/httpd/www" "$root/www"
cp -a "$here/httpd/init" "$root/init"
echo "root:x:0:0:root:/root:/bin/sh" >"$root/etc/passwd"
echo "root:x:0:" >"$root/etc/group"

tar -C "$root" --numeric-owner --owner=0 --group=0 -cf "$work/rootfs.tar" .
docker import \
    --change 'CMD ["/init"]' \
    --change 'EXPOSE 8080' \
    --change 'ENV PATH=/bin' \
    --change "LABEL io.forkproxy.recipe=$recipe" \
    "$work/rootfs.tar" "$image" >/dev/null
# The image it replaces is now untagged: drop it unless a container still uses it.
if [[ -n "$previous" ]]; then
    docker image rm "$previous" >/dev/null 2>&1 || true
fi
echo "build.sh: built $image (recipe $recipe)"
