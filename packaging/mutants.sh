#!/usr/bin/env bash
# Mutation testing of the modules whose logic unit tests can pin down: cargo-mutants changes
# one thing at a time (a return value, an operator, a condition) and runs the unit tests; a
# mutant they do not notice is a gap in the tests. Prints, per module, what was killed and
# what survived, against the targets: none surviving in the shim's state machine, reaper and
# CRI log writer; at most 10% elsewhere, each survivor explained in mutants-accepted.txt.
#
#   packaging/mutants.sh           the whole run (about an hour on 2 cores; not part of test.sh)
#   packaging/mutants.sh FILE...   those modules again, after tests were added for them
#   packaging/mutants.sh --missed  only the mutants that survived so far (or that code changed
#                                  since has made and no run has tested), after new tests
# In the table, a re-run's outcome for a mutant replaces the earlier runs' outcome for it.
set -euo pipefail
cd "$(dirname "$0")/.."
source packaging/lib.sh

install_packages
if ! command -v cargo-mutants >/dev/null; then
    echo "== installing cargo-mutants"
    cargo install cargo-mutants --locked
fi
out=target/mutants
# Mutants build and link much faster without debug info.
export CARGO_PROFILE_DEV_DEBUG=0 CARGO_PROFILE_TEST_DEBUG=0

SHIM_FILES=(shim/src/task/state.rs shim/src/reaper.rs shim/src/crilog.rs shim/src/options.rs
    shim/src/stdio.rs shim/src/cgroup.rs)
# In stdio.rs and cgroup.rs only the parsing is for unit tests; the rest does I/O that the
# integration suite covers.
SHIM_ONLY=(--re '^shim/src/(task/state|reaper|crilog|options)\.rs:'
    --re '^shim/src/stdio\.rs:.* in destination$'
    --re '^shim/src/cgroup\.rs:.* in (v1_metrics|v2_metrics|io_entries|blkio_entries|read_flat|read_v2_limit|read_oom_control|CgroupMounts::parse)$')
CRUSTD_ONLY=()
CRUSTD_FILES=(manager/src/runtime/records.rs manager/src/runtime/store.rs manager/src/config.rs
    manager/src/images/unpack.rs 'manager/src/runtime/spec/*.rs' manager/src/runtime/user.rs
    manager/src/authority.rs manager/src/network/conf.rs manager/src/network/result.rs
    manager/src/network/pod_args.rs manager/src/network/cache.rs)

# run_mutants OUTPUT_DIR (shim|crustd) FILE...: a cargo-mutants run over FILEs of one crate.
# Survivors are not an error here: the table below judges them.
run_mutants() {
    local dir=$1 crate=$2
    shift 2
    local files=()
    for file in "$@"; do files+=(-f "$file"); done
    mkdir -p "$dir"
    if [[ $crate == shim ]]; then
        cargo mutants --no-shuffle -o "$dir" "${files[@]}" "${SHIM_ONLY[@]}" -- --lib || true
    else
        cargo mutants --no-shuffle -o "$dir" "${files[@]}" "${CRUSTD_ONLY[@]}" -- --bins || true
    fi
}

# All recorded outcomes: the whole run first (it must be there), then the re-runs in the order
# they were made.
recorded_outcomes() {
    local outcomes=("$out/shim/mutants.out/outcomes.json" "$out/manager/mutants.out/outcomes.json")
    local rerun_outcomes
    for rerun_outcomes in "$out"/rerun-*/*/mutants.out/outcomes.json; do
        if [[ -e $rerun_outcomes ]]; then outcomes+=("$rerun_outcomes"); fi
    done
    printf '%s\n' "${outcomes[@]}"
}

# The mutants of the source as it is now, which the table holds the outcomes against.
current_mutants() {
    local files=() file
    for file in "${SHIM_FILES[@]}"; do files+=(-f "$file"); done
    cargo mutants --list "${files[@]}" "${SHIM_ONLY[@]}"
    files=()
    for file in "${CRUSTD_FILES[@]}"; do files+=(-f "$file"); done
    cargo mutants --list "${files[@]}"
}

mutants_table() {
    local outcomes
    mapfile -t outcomes < <(recorded_outcomes)
    current_mutants >"$out/current.txt"
    cargo run --locked -q -p crust-tests --bin mutants-table -- \
        --accepted packaging/mutants-accepted.txt --current "$out/current.txt" \
        "$@" "${outcomes[@]}"
}

if (($# == 0)); then
    rm -rf "$out"
    echo "== crustd: records, store, config, layer unpacking, OCI spec, users, authority rewriting"
    run_mutants "$out/manager" crustd "${CRUSTD_FILES[@]}"
    echo "== shim: state machine, reaper, CRI log writer, runtime options, stdio URIs, cgroup metrics"
    run_mutants "$out/shim" shim "${SHIM_FILES[@]}"
elif [[ $1 == --missed ]]; then
    # Each survivor (and each mutant not tested yet) again, by its exact name, in its crate.
    rerun="$out/rerun-$(date +%Y%m%d-%H%M%S)"
    shim=() crustd=() shim_names=() crustd_names=()
    while IFS= read -r name; do
        file=${name%%:*}
        pattern="^$(sed 's/[][\\.*^$()+?{}|]/\\&/g' <<<"$name")\$"
        case $file in
            shim/*) shim+=("$file") shim_names+=(--re "$pattern") ;;
            manager/*) crustd+=("$file") crustd_names+=(--re "$pattern") ;;
        esac
    done < <(mutants_table --list-missed)
    echo "== again: $((${#shim_names[@]} / 2 + ${#crustd_names[@]} / 2)) survivors and untested"
    if ((${#shim[@]})); then
        SHIM_ONLY=("${shim_names[@]}")
        mapfile -t shim < <(printf '%s\n' "${shim[@]}" | sort -u)
        run_mutants "$rerun/shim" shim "${shim[@]}"
    fi
    if ((${#crustd[@]})); then
        mapfile -t crustd < <(printf '%s\n' "${crustd[@]}" | sort -u)
        CRUSTD_ONLY=("${crustd_names[@]}")
        run_mutants "$rerun/manager" crustd "${crustd[@]}"
    fi
else
    rerun="$out/rerun-$(date +%Y%m%d-%H%M%S)"
    shim=() crustd=()
    for file in "$@"; do
        case $file in
            shim/*) shim+=("$file") ;;
            manager/*) crustd+=("$file") ;;
            *) echo "mutants.sh: $file is in neither shim/ nor manager/" >&2; exit 2 ;;
        esac
    done
    echo "== again: $*"
    ((${#shim[@]} == 0)) || run_mutants "$rerun/shim" shim "${shim[@]}"
    ((${#crustd[@]} == 0)) || run_mutants "$rerun/manager" crustd "${crustd[@]}"
fi

mutants_table
