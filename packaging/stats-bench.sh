#!/usr/bin/env bash
# Measures what kubelet's stats calls cost crustd: N pods (default 100) of one sleeping
# container each, then ListContainerStats, ListPodSandboxStats and ListPodSandboxMetrics
# timed (p50, p95) with crustd's CPU time per call. crustd and the shim are built optimized
# (the measure profile). Needs root; arguments go to cri-stats-bench (--quick, --pods N).
set -euo pipefail
cd "$(dirname "$0")/.."
source packaging/lib.sh

install_packages
echo "== building crustd, the shim and cri-stats-bench (measure profile)"
cargo build --profile measure --locked -p crust-manager -p crust-shim -p crust-tests \
    --bin crustd --bin containerd-shim-crust-v2 --bin cri-stats-bench
exec target/measure/cri-stats-bench "$@"
