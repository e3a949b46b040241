#!/usr/bin/env bash
# Runs every check and test of crust: formatting, lints, unit tests, and the integration suite
# against crust's shim and then, as the reference, against containerd's own Go shim.
# Needs root (it runs real containers) and installs what it needs from Debian.
set -euo pipefail
cd "$(dirname "$0")/.."
source packaging/lib.sh

install_packages
install_stream_clients
# crustd is built with its crash points throughout, so that one build serves the tests and
# cri-chaos (the points do nothing unless FAILPOINTS names them).
FEATURES=(--features crust-manager/failpoints)
echo "== format and lints"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked "${FEATURES[@]}" -- -D warnings
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== unit and integration tests (crust's shim)"
# The integration tests run the shim binary, which `cargo test` alone does not build.
cargo build --workspace --locked "${FEATURES[@]}"
cargo test --workspace --locked "${FEATURES[@]}"
echo "== integration tests against containerd's Go shim (io.containerd.runc.v2)"
# The same features as above, so that no crate is built again.
CRUST_TEST_SHIM=runc cargo test --workspace --locked "${FEATURES[@]}" \
    --test containerd --test direct --test parity
echo "== where crust deliberately differs from containerd's Go shim (both runs above check each row)"
cargo test --workspace --locked "${FEATURES[@]}" --test parity deliberate_differences \
    -- --nocapture --quiet
echo "== crustd under load and faults (smoke-sized; the README's table comes from a full run)"
packaging/chaos.sh --quick
echo "== stats benchmark smoke run (10 pods; the README's table comes from a 100-pod run)"
cargo build --locked "${FEATURES[@]}" -p crust-manager -p crust-shim -p crust-tests --bins
target/debug/cri-stats-bench --quick
echo "== streaming benchmark smoke run (small counts; the README's table comes from a full run)"
target/debug/stream-bench --quick
echo "== CRI benchmark smoke run, crustd against containerd 1.6's CRI (small counts; the README's table comes from a full run)"
target/debug/cri-bench --quick --check
echo "== benchmark smoke run (small counts; the README's table comes from a full run)"
packaging/bench.sh --quick --check
echo "== the Debian package: built, snippets checked, installed, a pod through the installed crustd, purged"
# After bench.sh, whose static release shim the package carries as it is.
packaging/deb-check.sh
echo "== all tests passed"
