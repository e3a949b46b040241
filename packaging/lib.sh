# Shared steps of install.sh and test.sh. Sourced, not run.

# Debian packages crust runs and is tested with.
CRUST_PACKAGES=(runc containerd busybox-static)

export PATH="$HOME/.cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:$PATH"

install_packages() {
    local missing=()
    for package in "${CRUST_PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" \
            || missing+=("$package")
    done
    if ((${#missing[@]})); then
        echo "== installing ${missing[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
    fi
}

# The shim is linked statically: a per-pod process should not map all of glibc.
build_shim() {
    echo "== building containerd-shim-crust-v2"
    cargo rustc --release --locked -p crust-shim --bin containerd-shim-crust-v2 \
        -- -C target-feature=+crt-static
}

# Starts the system containerd unless one already answers on its default socket.
ensure_containerd() {
    if ctr version >/dev/null 2>&1; then
        return
    fi
    if [ -d /run/systemd/system ]; then
        systemctl enable --now containerd
    else
        echo "== starting containerd (no systemd here; log in /var/log/containerd.log)"
        setsid containerd >>/var/log/containerd.log 2>&1 < /dev/null &
    fi
    for _ in $(seq 100); do
        ctr version >/dev/null 2>&1 && return
        sleep 0.1
    done
    echo "containerd did not come up; see /var/log/containerd.log" >&2
    return 1
}
