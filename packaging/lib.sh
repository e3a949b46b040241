# Shared steps of install.sh and test.sh. Sourced, not run.

# Debian packages crust runs and is tested with.
# crun and criu are what BinaryName and Checkpoint run; docker-registry serves test images;
# containernetworking-plugins (into /usr/lib/cni) and iptables (which its portmap plugin runs)
# network crustd's pods; protobuf-compiler, libssl-dev and pkg-config build crustd; dpkg-dev
# (dpkg-shlibdeps) gives the .deb crustd's library dependencies; python3-yaml reads the
# packaged YAML snippets in their check.
CRUST_PACKAGES=(runc crun criu containerd busybox-static docker-registry containernetworking-plugins iptables protobuf-compiler libssl-dev pkg-config dpkg-dev python3-yaml)

# Where crustd (and containerd's CRI) read pod network configs.
CNI_CONF_DIR=/etc/cni/net.d

# Writes a default pod network (bridge crust0, 10.89.0.0/16, host ports) unless the node has
# a network config already: an operator's own CNI setup is never replaced.
write_default_cni_config() {
    mkdir -p "$CNI_CONF_DIR"
    if compgen -G "$CNI_CONF_DIR/*.conf" >/dev/null || compgen -G "$CNI_CONF_DIR/*.conflist" >/dev/null \
        || compgen -G "$CNI_CONF_DIR/*.json" >/dev/null; then
        echo "== keeping the pod network config in $CNI_CONF_DIR"
        return
    fi
    install -m 0644 packaging/10-crust-bridge.conflist "$CNI_CONF_DIR/10-crust-bridge.conflist"
    echo "== wrote $CNI_CONF_DIR/10-crust-bridge.conflist (bridge crust0, pods in 10.89.0.0/16)"
}

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

build_crustd() {
    echo "== building crustd"
    cargo build --release --locked -p crust-manager --bin crustd
}

# cargo-deb, which packs the crust .deb (packaging/deb.sh), at a pinned version, installed once
# into ~/.cargo/bin (kept between runs on the same machine).
CARGO_DEB_VERSION=3.8.0

install_cargo_deb() {
    if [ "$(cargo deb --version 2>/dev/null)" = "cargo-deb $CARGO_DEB_VERSION" ]; then
        return
    fi
    echo "== installing cargo-deb $CARGO_DEB_VERSION"
    # Its own target dir, so that it neither lands in nor rebuilds crust's.
    CARGO_TARGET_DIR="${TMPDIR:-/tmp}/cargo-deb-build" \
        cargo install --quiet --locked --version "$CARGO_DEB_VERSION" cargo-deb
    rm -rf "${TMPDIR:-/tmp}/cargo-deb-build"
}

# Starts crustd on its defaults (socket /run/crust/crustd.sock) unless it already answers.
ensure_crustd() {
    if [ -S /run/crust/crustd.sock ] && pgrep -x crustd >/dev/null; then
        return
    fi
    if [ -d /run/systemd/system ]; then
        install -D -m 0644 packaging/crustd.service /etc/systemd/system/crustd.service
        systemctl daemon-reload
        systemctl enable --now crustd
    else
        echo "== starting crustd (no systemd here; log in /var/log/crustd.log)"
        setsid /usr/local/bin/crustd >>/var/log/crustd.log 2>&1 < /dev/null &
    fi
    for _ in $(seq 100); do
        [ -S /run/crust/crustd.sock ] && return
        sleep 0.1
    done
    echo "crustd did not come up; see /var/log/crustd.log" >&2
    return 1
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

# The independent streaming clients tests/tests/cri_streaming.rs runs: the `kubernetes` Python
# package (WebSocket) in a venv, and npm's `spdy-transport` (SPDY/3.1), each at the versions
# their requirements.txt / package-lock.json pin.
install_stream_clients() {
    echo "== installing the streaming test clients (PyPI kubernetes, npm spdy-transport)"
    local python=tests/streaming/python
    if [ ! -x "$python/.venv/bin/python" ]; then
        python3 -m venv "$python/.venv"
    fi
    "$python/.venv/bin/pip" install --quiet --disable-pip-version-check -r "$python/requirements.txt"
    (cd tests/streaming/node-client && npm ci --no-audit --no-fund --loglevel=error)
}
