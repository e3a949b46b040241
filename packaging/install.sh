#!/usr/bin/env bash
# Installs crust on this machine on its defaults: runc, containerd and busybox-static from
# Debian, the shim in /usr/local/bin (where containerd finds io.containerd.crust.v2), a running
# containerd, one container run through crust to show it works, a default pod network (unless
# /etc/cni/net.d has one), and crustd serving CRI on /run/crust/crustd.sock.
set -euo pipefail
cd "$(dirname "$0")/.."
source packaging/lib.sh

install_packages
build_shim
install -D -m 0755 target/release/containerd-shim-crust-v2 /usr/local/bin/containerd-shim-crust-v2
echo "== installed /usr/local/bin/containerd-shim-crust-v2"
build_crustd
install -D -m 0755 target/release/crustd /usr/local/bin/crustd
echo "== installed /usr/local/bin/crustd"
ensure_containerd

# No registry is reachable here: import a busybox image built from busybox-static.
image=$(mktemp --suffix=.tar)
trap 'rm -f "$image"' EXIT
cargo run --release --locked -q -p crust-tests --bin busybox-image -- "$image" >/dev/null
ctr images import "$image" >/dev/null

echo "== running a container through crust:"
ctr run --rm --runtime io.containerd.crust.v2 docker.io/library/busybox:latest "crust-hello-$$" echo hi

write_default_cni_config
ensure_crustd
echo "== crustd serves CRI on unix:///run/crust/crustd.sock"
