#!/usr/bin/python3
"""Checks that packaging's config snippets are real, not just text.

- Each containerd snippet (packaging/containerd/*.toml) is merged into a minimal containerd
  config and a private containerd 1.6 (/usr/bin/containerd, own root, state and socket in a temp
  dir, the crust bridge conflist as its CNI config) is started on it: `containerd config dump`
  must show the snippet's runtime, `ctr plugins ls` must show the CRI plugin ok, containerd's
  log must have no error, and the running CRI plugin's own configuration (its verbose Status,
  what `crictl info` prints, read with cri-smoke) must have the runtime as the snippet wrote it.
  containerd is ended by its PID and its temp dir removed, also when a check fails.
- The YAML files (kubelet config, RuntimeClass, crictl.yaml) parse and say what crust needs.
- The packaged systemd unit is install.sh's, with crustd in /usr/bin.

Usage: snippets-check.py CRI_SMOKE_BINARY   (run as root, from anywhere)
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import tomllib

import yaml

PACKAGING = os.path.dirname(os.path.abspath(__file__))
CRI = 'plugins."io.containerd.grpc.v1.cri"'
CRUSTD_SOCKET = "unix:///run/crust/crustd.sock"

# What each snippet must make containerd's CRI plugin load: per handler, its fields as the CRI
# plugin reports them (JSON names of containerd 1.6's Runtime struct).
CRUST_SHIM = "/usr/bin/containerd-shim-crust-v2"
EXPECTED = {
    "crust-as-runc-v2.toml": {
        "runc": {"runtimeType": "io.containerd.runc.v2", "runtimePath": CRUST_SHIM},
    },
    "crust-runtime-class.toml": {
        "crust": {"runtimeType": "io.containerd.crust.v2", "runtimePath": "", "options": None},
        "runc": {"runtimeType": "io.containerd.runc.v2", "runtimePath": ""},
    },
}


def fail(message):
    print(f"snippets-check: FAILED: {message}", file=sys.stderr)
    sys.exit(1)


def check_yaml():
    with open(os.path.join(PACKAGING, "kubelet-config.yaml")) as f:
        kubelet = yaml.safe_load(f)
    if kubelet.get("apiVersion") != "kubelet.config.k8s.io/v1beta1" or kubelet.get("kind") != "KubeletConfiguration":
        fail(f"kubelet-config.yaml is not a KubeletConfiguration: {kubelet}")
    for key in ("containerRuntimeEndpoint", "imageServiceEndpoint"):
        if kubelet.get(key) != CRUSTD_SOCKET:
            fail(f"kubelet-config.yaml: {key} is {kubelet.get(key)!r}, not {CRUSTD_SOCKET}")
    with open(os.path.join(PACKAGING, "runtime-class.yaml")) as f:
        runtime_class = yaml.safe_load(f)
    if (runtime_class.get("apiVersion"), runtime_class.get("kind")) != ("node.k8s.io/v1", "RuntimeClass"):
        fail(f"runtime-class.yaml is not a node.k8s.io/v1 RuntimeClass: {runtime_class}")
    if runtime_class.get("handler") != "crust" or "crust" not in EXPECTED["crust-runtime-class.toml"]:
        fail(f"runtime-class.yaml's handler {runtime_class.get('handler')!r} is not the containerd snippet's")
    with open(os.path.join(PACKAGING, "crictl.yaml")) as f:
        crictl = yaml.safe_load(f)
    if crictl.get("runtime-endpoint") != CRUSTD_SOCKET or crictl.get("image-endpoint") != CRUSTD_SOCKET:
        fail(f"crictl.yaml does not point at {CRUSTD_SOCKET}: {crictl}")
    print("ok   kubelet-config.yaml, runtime-class.yaml, crictl.yaml parse and name crustd's socket / handler crust")


def check_unit():
    def lines(path):
        with open(os.path.join(PACKAGING, path)) as f:
            return [line for line in f.read().splitlines() if not line.startswith("ExecStart=")]

    if lines("crustd.service") != lines("deb/crustd.service"):
        fail("deb/crustd.service differs from crustd.service in more than ExecStart")
    with open(os.path.join(PACKAGING, "deb/crustd.service")) as f:
        if "ExecStart=/usr/bin/crustd\n" not in f.read():
            fail("deb/crustd.service does not start /usr/bin/crustd")
    print("ok   deb/crustd.service is crustd.service with crustd in /usr/bin")


def merged_config(snippet_text, directory):
    """A minimal containerd config (paths under `directory`) with the snippet merged in."""
    snippet = tomllib.loads(snippet_text)
    if snippet.get("version") != 2:
        fail("the snippet does not say version = 2 (containerd 1.6's config format)")
    body = "\n".join(line for line in snippet_text.splitlines() if not line.startswith("version ="))
    return f"""version = 2
root = "{directory}/root"
state = "{directory}/state"

[grpc]
  address = "{directory}/containerd.sock"

[debug]
  level = "info"

{body}

[{CRI}.cni]
  bin_dir = "/usr/lib/cni"
  conf_dir = "{directory}/net.d"
"""


def wait_for(predicate, seconds):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return predicate()


def check_snippet(name, cri_smoke):
    handlers = EXPECTED[name]
    with open(os.path.join(PACKAGING, "containerd", name)) as f:
        snippet_text = f.read()
    directory = tempfile.mkdtemp(prefix="crust-snippet-")
    daemon = None
    try:
        os.makedirs(f"{directory}/net.d")
        shutil.copy(os.path.join(PACKAGING, "10-crust-bridge.conflist"), f"{directory}/net.d/")
        config = f"{directory}/config.toml"
        with open(config, "w") as f:
            f.write(merged_config(snippet_text, directory))
        tomllib.loads(open(config).read())

        dump = subprocess.run(
            ["containerd", "--config", config, "config", "dump"], capture_output=True, text=True
        )
        if dump.returncode != 0:
            fail(f"{name}: containerd config dump failed: {dump.stderr}")
        dumped = tomllib.loads(dump.stdout)["plugins"]["io.containerd.grpc.v1.cri"]["containerd"]
        toml_fields = {"runtimeType": "runtime_type", "runtimePath": "runtime_path"}
        for handler, fields in handlers.items():
            runtime = dumped["runtimes"].get(handler) or {}
            for field, value in fields.items():
                if field in toml_fields and runtime.get(toml_fields[field]) != value:
                    fail(f"{name}: config dump's runtimes.{handler} is {runtime}")
        if dumped["default_runtime_name"] not in dumped["runtimes"]:
            fail(f"{name}: the default runtime {dumped['default_runtime_name']} is gone: {dumped['runtimes']}")

        socket = f"{directory}/containerd.sock"
        log = open(f"{directory}/containerd.log", "w")
        daemon = subprocess.Popen(
            ["containerd", "--config", config], stdin=subprocess.DEVNULL, stdout=log, stderr=log
        )
        ctr = ["ctr", "--address", socket]
        up = wait_for(
            lambda: subprocess.run(ctr + ["version"], capture_output=True).returncode == 0, 20
        )
        if not up:
            fail(f"{name}: containerd did not come up:\n{open(f'{directory}/containerd.log').read()}")
        plugins = subprocess.run(ctr + ["plugins", "ls"], capture_output=True, text=True, check=True).stdout
        # Rows are TYPE ID PLATFORMS STATUS.
        cri_rows = [row.split() for row in plugins.splitlines() if row.split()[:2] == ["io.containerd.grpc.v1", "cri"]]
        if [row[-1] for row in cri_rows] != ["ok"]:
            fail(f"{name}: the CRI plugin is not ok:\n{plugins}")
        info = subprocess.run([cri_smoke, "info", "--socket", socket], capture_output=True, text=True)
        if info.returncode != 0:
            fail(f"{name}: CRI Status: {info.stderr}")
        runtimes = json.loads(info.stdout)["containerd"]["runtimes"]
        for handler, fields in handlers.items():
            loaded = runtimes.get(handler) or {}
            for field, value in fields.items():
                if loaded.get(field) != value:
                    fail(f"{name}: the running CRI plugin has runtimes.{handler} = {loaded}")
        errors = [
            line
            for line in open(f"{directory}/containerd.log").read().splitlines()
            if "level=error" in line or "level=fatal" in line
        ]
        if errors:
            fail(f"{name}: containerd logged errors:\n" + "\n".join(errors))
        shown = {
            handler: {field: runtimes[handler].get(field) for field in fields}
            for handler, fields in handlers.items()
        }
        print(f"ok   {name}: containerd 1.6 loaded it, CRI plugin ok, its runtimes: {shown}")
    finally:
        if daemon is not None:
            daemon.send_signal(signal.SIGTERM)
            try:
                daemon.wait(timeout=10)
            except subprocess.TimeoutExpired:
                daemon.kill()
                daemon.wait()
        with open("/proc/self/mountinfo") as f:
            for line in f.read().splitlines():
                mount_point = line.split()[4]
                if mount_point.startswith(directory + "/"):
                    subprocess.run(["umount", "-l", mount_point], check=False)
        shutil.rmtree(directory, ignore_errors=True)


def main():
    if len(sys.argv) != 2:
        print(__doc__.strip().splitlines()[-1], file=sys.stderr)
        sys.exit(2)
    cri_smoke = os.path.abspath(sys.argv[1])
    check_yaml()
    check_unit()
    for name in sorted(EXPECTED):
        check_snippet(name, cri_smoke)
    snippets = sorted(n for n in os.listdir(os.path.join(PACKAGING, "containerd")) if n.endswith(".toml"))
    if snippets != sorted(EXPECTED):
        fail(f"packaging/containerd has {snippets}; this check knows {sorted(EXPECTED)}")
    print("snippets-check: all passed")


if __name__ == "__main__":
    main()
