#!/usr/bin/env bash
# Mutation testing of the modules whose logic unit tests can pin down: cargo-mutants changes
# one thing at a time (a return value, an operator, a condition) and runs the unit tests; a
# mutant they do not notice is a gap in the tests. Prints, per module, what was killed and
# what survived, against the targets: none surviving in the shim's state machine, reaper and
# CRI log writer; at most 10% elsewhere, each survivor explained in mutants-accepted.txt.
# Takes about an hour and a half on 2 cores; not part of test.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
source packaging/lib.sh

install_packages
if ! command -v cargo-mutants >/dev/null; then
    echo "== installing cargo-mutants"
    cargo install cargo-mutants --locked
fi
out=target/mutants
rm -rf "$out"
mkdir -p "$out/shim" "$out/manager"
# Mutants build and link much faster without debug info.
export CARGO_PROFILE_DEV_DEBUG=0 CARGO_PROFILE_TEST_DEBUG=0

echo "== crustd: records, store, config, layer unpacking, OCI spec, users, authority rewriting"
cargo mutants --no-shuffle -o "$out/manager" \
    -f manager/src/runtime/records.rs -f manager/src/runtime/store.rs \
    -f manager/src/config.rs -f manager/src/images/unpack.rs \
    -f 'manager/src/runtime/spec/*.rs' -f manager/src/runtime/user.rs \
    -f manager/src/authority.rs \
    -- --bins || true

echo "== shim: state machine, reaper, CRI log writer, runtime options, stdio URIs, cgroup metrics"
cargo mutants --no-shuffle -o "$out/shim" \
    -f shim/src/task/state.rs -f shim/src/reaper.rs -f shim/src/crilog.rs \
    -f shim/src/options.rs -f shim/src/stdio.rs -f shim/src/cgroup.rs \
    --re '^shim/src/(task/state|reaper|crilog|options)\.rs:' \
    --re '^shim/src/stdio\.rs:.* in destination$' \
    --re '^shim/src/cgroup\.rs:.* in (v1_metrics|v2_metrics|io_entries|blkio_entries|read_flat|read_v2_limit|read_oom_control|CgroupMounts::parse)$' \
    -- --lib || true

cargo run --locked -q -p crust-tests --bin mutants-table -- \
    --accepted packaging/mutants-accepted.txt \
    "$out/shim/mutants.out/outcomes.json" "$out/manager/mutants.out/outcomes.json"
