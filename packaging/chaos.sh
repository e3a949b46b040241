#!/usr/bin/env bash
# Drives crustd through its CRI socket under load and faults and prints, per section, the
# failures and the leaks left on the machine: N clients running full pod/container cycles,
# crustd SIGKILLed at every lifecycle step and restarted, a pod's shim killed and hung, a log
# file system that fills up and turns read-only, create/start/stop/remove churn, hostile
# clients. Exits non-zero unless every section has 0 failures and 0 leaks.
# Needs root; arguments go to cri-chaos (--quick, --clients N, --cycles N, --churn N,
# --only SECTION).
set -euo pipefail
cd "$(dirname "$0")/.."
source packaging/lib.sh

install_packages
# crustd with its crash points (FAILPOINTS=<point>=return makes it SIGKILL itself there);
# without the feature they compile to nothing, as in the installed crustd.
echo "== building crustd with crash points, the shim and cri-chaos"
cargo build --locked --features crust-manager/failpoints \
    -p crust-manager -p crust-shim -p crust-tests --bins
exec target/debug/cri-chaos "$@"
