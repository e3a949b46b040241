#!/usr/bin/env bash
# Builds the crust .deb (packaging/deb.sh), checks the containerd/kubelet snippets
# (packaging/snippets-check.py), installs the package with apt-get (so its Depends resolve),
# starts the installed crustd (its systemd unit where systemd is PID 1, else /usr/bin/crustd on
# the installed /etc/crust/crustd.toml), runs one pod with one container through the installed
# crustd's socket (cri-smoke: image from a local registry, exit code and CRI log checked), stops
# crustd, purges the package and checks that nothing is left: files, unit, processes, mounts,
# cgroups, the pod network. Whatever it started is cleaned up on failure too.
# Needs root and a machine without crust installed (install.sh's crustd, or the package).
set -euo pipefail
cd "$(dirname "$0")/.."
source packaging/lib.sh

SOCKET=/run/crust/crustd.sock
UNIT=crustd.service
work=$(mktemp -d "${TMPDIR:-/tmp}/crust-deb-check.XXXXXX")
trap 'rm -rf "$work"' EXIT
target="${CARGO_TARGET_DIR:-$PWD/target}"
crustd_pid=
cri_smoke=
failed=0

# The machine must not have crust already: this check installs and purges the package.
if dpkg-query -W -f='${Status}' crust 2>/dev/null | grep -q "installed" \
    || [ -e /etc/crust ] || [ -e "$SOCKET" ] || [ -e /var/lib/crust ] \
    || [ -e /etc/cni/net.d/10-crust-bridge.conflist ]; then
    message="crust is already installed or running here (install.sh or the package): the .deb check needs a machine without it"
    if [ "${CI:-}" = "true" ]; then
        echo "deb-check: FAILED: $message" >&2
        exit 1
    fi
    echo "== deb-check SKIPPED: $message" >&2
    exit 0
fi

systemd=false
if [ -d /run/systemd/system ]; then
    systemd=true
fi

# What the pod network may change on the host, as it was before.
ip_forward_before=$(cat /proc/sys/net/ipv4/ip_forward)
had_var_lib_cni=false
[ -e /var/lib/cni ] && had_var_lib_cni=true
had_cni_net_d=false
[ -e /etc/cni/net.d ] && had_cni_net_d=true
had_cni_dir=false
[ -e /etc/cni ] && had_cni_dir=true
iptables_chains() { { iptables-save 2>/dev/null || true; } | { grep '^:' || true; } | cut -d' ' -f1 | sort; }
iptables_chains >"$work/chains.before"
# Every path where the package or crustd puts files, listed before and compared after purge.
host_files() {
    find /etc /usr/bin /usr/lib/systemd /usr/share/doc /var/lib/systemd /var/lib/dpkg/info \
        /var/lib/cni -xdev 2>/dev/null | sort || true
}
host_files >"$work/files.before"

# Processes of the installed crustd and its shims (by the socket in their arguments).
crust_pids() {
    local pid
    for pid in $(pgrep -x crustd; pgrep -f -- "-address $SOCKET"); do
        if [ "$(readlink "/proc/$pid/exe" 2>/dev/null)" = /usr/bin/crustd ] \
            || tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q -- "-address $SOCKET"; then
            echo "$pid"
        fi
    done | sort -u
}

stop_crustd() {
    if $systemd && systemctl is-active --quiet "$UNIT" 2>/dev/null; then
        systemctl stop "$UNIT"
    fi
    if [ -n "$crustd_pid" ] && kill -0 "$crustd_pid" 2>/dev/null; then
        kill -TERM "$crustd_pid"
        for _ in $(seq 100); do
            kill -0 "$crustd_pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$crustd_pid" 2>/dev/null || true
        wait "$crustd_pid" 2>/dev/null || true
    fi
    crustd_pid=
}

# Everything the check may have left, whatever step failed: first through crustd itself (it
# undoes networks, mounts and cgroups of the pods it still has), then by force.
cleanup() {
    local status=$?
    set +e
    if [ -n "$cri_smoke" ] && [ -S "$SOCKET" ] && [ -n "$(crust_pids)" ]; then
        timeout 120 "$cri_smoke" remove-all --socket "$SOCKET"
    fi
    stop_crustd
    local pid
    # cri-smoke's registry (its files are under $work).
    for pid in $(pgrep -f -- "$work"); do
        kill -KILL "$pid" 2>/dev/null
    done
    for pid in $(crust_pids); do
        kill -KILL "$pid" 2>/dev/null
    done
    local id
    for id in $(runc --root /run/crust/runc/k8s.io list -q 2>/dev/null); do
        runc --root /run/crust/runc/k8s.io delete --force "$id"
    done
    [ -n "$cri_smoke" ] && [ -d /var/lib/crust ] && "$cri_smoke" release-network --root /var/lib/crust
    local mount_point
    for mount_point in $(awk '$5 ~ "^/(run|var/lib)/crust(/|$)" { print $5 }' /proc/self/mountinfo | sort -r); do
        umount -l "$mount_point"
    done
    if dpkg-query -W -f='${Status}' crust 2>/dev/null | grep -q "installed\|config-files"; then
        DEBIAN_FRONTEND=noninteractive apt-get purge -y -qq crust >/dev/null
    fi
    rm -rf /etc/crust /var/lib/crust /run/crust
    for cgroup in /sys/fs/cgroup/crust /sys/fs/cgroup/*/crust; do
        [ -d "$cgroup" ] && find "$cgroup" -depth -type d -exec rmdir {} + 2>/dev/null
    done
    ip link delete crust0 2>/dev/null
    echo "$ip_forward_before" >/proc/sys/net/ipv4/ip_forward
    $had_var_lib_cni || rm -rf /var/lib/cni
    $had_var_lib_cni && rm -rf /var/lib/cni/networks/crust
    $had_cni_net_d || rmdir /etc/cni/net.d 2>/dev/null
    $had_cni_dir || rmdir /etc/cni 2>/dev/null
    rm -rf "$work"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

check() {
    # check DESCRIPTION COMMAND...: runs the command; a failure is reported and counted.
    local what=$1
    shift
    if "$@"; then
        echo "ok   $what"
    else
        echo "FAIL $what"
        failed=$((failed + 1))
    fi
}

echo "== building the package"
deb=$(packaging/deb.sh | tail -1)
echo "== built $deb ($(du -h "$deb" | cut -f1))"
dpkg-deb --info "$deb" | sed -n 's/^ \(Package\|Version\|Depends\|Suggests\):/   \1:/p'

echo "== building cri-smoke (as test.sh builds the test programs)"
cargo build --locked --features crust-manager/failpoints -p crust-manager -p crust-shim \
    -p crust-tests --bins
cri_smoke="$target/debug/cri-smoke"

echo "== checking the containerd, kubelet and crictl snippets"
packaging/snippets-check.py "$cri_smoke"

echo "== installing $deb with apt-get"
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$deb" >"$work/apt.log" 2>&1 \
    || { cat "$work/apt.log"; exit 1; }
check "the package is installed" \
    sh -c "dpkg-query -W -f='\${Status}' crust | grep -q 'install ok installed'"
conffiles=$(dpkg-query -W -f='${Conffiles}' crust)
for file in /etc/crust/crustd.toml /etc/cni/net.d/10-crust-bridge.conflist; do
    check "$file is a conffile" grep -q " $file " <<<"$conffiles"
done
check "the unit is installed" test -f "/lib/systemd/system/$UNIT" -o -f "/usr/lib/systemd/system/$UNIT"
check "/usr/bin/crustd runs" /usr/bin/crustd --version
check "the installed shim is build_shim's static build, byte for byte" \
    cmp /usr/bin/containerd-shim-crust-v2 "$target/release/containerd-shim-crust-v2"
check "the installed shim is static" \
    sh -c "ldd /usr/bin/containerd-shim-crust-v2 2>&1 | grep -q 'statically linked\|not a dynamic executable'"
check "the installed crustd is the release build, byte for byte" \
    cmp /usr/bin/crustd "$target/release/crustd"
for path in $(sed -n 's/^ *runtime_path = "\(.*\)"/\1/p' packaging/containerd/*.toml); do
    check "the containerd snippets' runtime_path $path is installed" test -x "$path"
done

# The test image comes from a registry on this machine over plain HTTP: the one edit an
# operator makes for such a registry.
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
sed -i "s|^plain_http = \[\]$|plain_http = [\"127.0.0.1:$port\"]|" /etc/crust/crustd.toml
check "/etc/crust/crustd.toml names the test registry" \
    grep -q "^plain_http = \[\"127.0.0.1:$port\"\]$" /etc/crust/crustd.toml

if $systemd; then
    echo "== starting crustd with its installed unit (systemd is PID 1)"
    systemctl restart "$UNIT"
else
    echo "== starting /usr/bin/crustd on /etc/crust/crustd.toml (PID 1 is $(cat /proc/1/comm), not systemd)"
    setsid /usr/bin/crustd >"$work/crustd.log" 2>&1 </dev/null &
    crustd_pid=$!
fi
for _ in $(seq 100); do
    [ -S "$SOCKET" ] && break
    sleep 0.1
done
if [ ! -S "$SOCKET" ]; then
    echo "crustd did not come up:" >&2
    if $systemd; then journalctl -u "$UNIT" --no-pager | tail -20 >&2; else cat "$work/crustd.log" >&2; fi
    exit 1
fi

echo "== one pod through the installed crustd ($SOCKET)"
# Its registry's files under $work, where the cleanup finds them.
if ! TMPDIR="$work" "$cri_smoke" run --socket "$SOCKET" --registry-port "$port"; then
    failed=$((failed + 1))
    echo "FAIL the pod through the installed crustd; crustd's log:"
    if $systemd; then journalctl -u "$UNIT" --no-pager | tail -40; else tail -40 "$work/crustd.log"; fi
fi

echo "== stopping crustd and purging the package"
# A run cut short may have left its pod: crustd removes it as it would for kubelet.
check "crustd removed every pod" timeout 120 "$cri_smoke" remove-all --socket "$SOCKET"
stop_crustd
DEBIAN_FRONTEND=noninteractive apt-get purge -y -qq crust >"$work/apt.log" 2>&1 \
    || { cat "$work/apt.log"; exit 1; }
check "the package is gone" sh -c "! dpkg-query -W -f='\${Status}' crust 2>/dev/null | grep -q installed"
for path in /usr/bin/crustd /usr/bin/containerd-shim-crust-v2 /etc/crust /var/lib/crust /run/crust \
    /etc/cni/net.d/10-crust-bridge.conflist /lib/systemd/system/$UNIT /usr/lib/systemd/system/$UNIT \
    /etc/systemd/system/multi-user.target.wants/$UNIT /usr/share/doc/crust; do
    check "no $path" test ! -e "$path"
done
check "no enablement state of the unit" \
    sh -c "! find /var/lib/systemd/deb-systemd-helper-enabled /var/lib/systemd/deb-systemd-helper-masked -name '*crustd*' 2>/dev/null | grep -q ."
check "no crustd or shim process" test -z "$(crust_pids)"
check "no mount below /run/crust or /var/lib/crust" \
    sh -c "! awk '{ print \$5 }' /proc/self/mountinfo | grep -q '^/\(run\|var/lib\)/crust'"
check "no pod cgroup root /crust" sh -c "! ls -d /sys/fs/cgroup/crust /sys/fs/cgroup/*/crust 2>/dev/null | grep -q ."
check "no crust0 bridge" test ! -e /sys/class/net/crust0
check "no addresses of network crust" test ! -e /var/lib/cni/networks/crust
host_files >"$work/files.after"
check "no file left that was not there before (in /etc, /usr/bin, systemd's, dpkg's, /var/lib/cni)" \
    cmp -s "$work/files.before" "$work/files.after"
diff "$work/files.before" "$work/files.after" || true
iptables_chains >"$work/chains.after"
check "no new iptables chains" cmp -s "$work/chains.before" "$work/chains.after"
diff "$work/chains.before" "$work/chains.after" || true

if ((failed)); then
    echo "deb-check: FAILED ($failed checks)" >&2
    exit 1
fi
echo "deb-check: the package installs, runs a pod and purges clean"
