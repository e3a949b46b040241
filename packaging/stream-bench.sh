#!/usr/bin/env bash
# Measures crustd's streaming server: exec round trips (p50, p95) over SPDY/3.1 and WebSocket
# next to ExecSync, and port-forward throughput through npm's spdy-transport and the kubernetes
# Python client next to plain TCP to the same in-pod echo server and a TCP loopback echo.
# crustd and the shim are built optimized (the measure profile). Needs root; arguments go to
# stream-bench (--quick, --execs N, --mib N).
set -euo pipefail
cd "$(dirname "$0")/.."
source packaging/lib.sh

install_packages
install_stream_clients
echo "== building crustd, the shim and stream-bench (measure profile)"
cargo build --profile measure --locked -p crust-manager -p crust-shim -p crust-tests \
    --bin crustd --bin containerd-shim-crust-v2 --bin stream-bench
exec target/measure/stream-bench "$@"
