#!/usr/bin/env bash
# Builds the crust Debian package: crustd and the shim exactly as install.sh builds them
# (crustd a release build, the shim a static release build), packed by cargo-deb from those
# binaries with manager/Cargo.toml's [package.metadata.deb]: /usr/bin/crustd,
# /usr/bin/containerd-shim-crust-v2, crustd.service, /etc/crust/crustd.toml and
# /etc/cni/net.d/10-crust-bridge.conflist (conffiles), the containerd, kubelet and crictl
# snippets under /usr/share/doc/crust/examples. Prints the .deb's path last.
set -euo pipefail
cd "$(dirname "$0")/.."
source packaging/lib.sh

install_packages
install_cargo_deb
build_shim
build_crustd
target="${CARGO_TARGET_DIR:-$PWD/target}"
mkdir -p "$target/debian"
echo "== packing the .deb"
# --no-build: cargo-deb would build the shim without +crt-static.
cargo deb --package crust-manager --no-build --locked --output "$target/debian" >&2
ls -t "$target"/debian/crust_*.deb | head -1
