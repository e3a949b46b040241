#!/usr/bin/env bash
# Measures crustd against containerd 1.6's CRI plugin (Debian's containerd and its Go runc
# shim, privately started) in one run, with the same client, the two in turn: PullImage cold
# and warm, pod and container cycles and ExecSync at 1 and 4 clients, list calls with N pods
# running, memory, failed calls; printed as a table with the ratio crustd ÷ containerd and
# issue 14's targets. crustd and the shim are built optimized (the measure profile). Needs
# root; arguments go to cri-bench (--quick, --check, --pulls N, --cycles N, --pods N,
# --lists N, --layer-mib N).
set -euo pipefail
cd "$(dirname "$0")/.."
source packaging/lib.sh

install_packages
echo "== building crustd, the shim and cri-bench (measure profile)"
cargo build --profile measure --locked -p crust-manager -p crust-shim -p crust-tests \
    --bin crustd --bin containerd-shim-crust-v2 --bin cri-bench
exec "${CARGO_TARGET_DIR:-target}/measure/cri-bench" "$@"
