#!/usr/bin/env bash
# Measures crust's shim against containerd's Go shim (io.containerd.runc.v2) in one run and
# prints the table: run-to-exit latency, Create/Start and exit-event latency, idle memory per
# shim, stdout throughput. Builds the shim exactly as install.sh installs it (static release).
# Needs root; arguments go to shim-bench (--quick, --runs N, --idle N, --megabytes N).
set -euo pipefail
cd "$(dirname "$0")/.."
source packaging/lib.sh

install_packages
build_shim
echo "== building shim-bench"
cargo build --profile measure --locked -p crust-tests --bin shim-bench
CRUST_SHIM_BIN="$PWD/target/release/containerd-shim-crust-v2" \
    exec target/measure/shim-bench "$@"
