"""`ferry-lab install-deps`: the Debian packages the lab and the project need."""
import contextlib
import os
import subprocess
import sys

from .common import CLEAN_ENV, run

# The lab's own packages (see LAB.md) ...
LAB_PACKAGES = ["qemu-system-x86", "qemu-utils", "libvirt-daemon-system", "libvirt-clients",
                "libvirt-dev", "pkg-config", "openssh-server", "openssh-client",
                "busybox-static", "cpio", "kmod", "gcc", "libc6-dev", "python3-dev",
                "iproute2", "e2fsprogs", "iptables", "socat", "iputils-ping",
                "tcpdump"]  # tests/lab/test_tls.py captures transfers on the lab bridge
# ... what the LVM node's image build needs (up --lvm-node) ...
LVM_NODE_PACKAGES = ["mmdebstrap"]
# ... what the container and the monitoring checks need (make container, tests/unit/test_contrib.py) ...
OPERATOR_PACKAGES = ["podman", "runc", "mmdebstrap", "prometheus"]
# ... packages wanted for a tool only, whose service must never start (prometheus: promtool) ...
NO_SERVICE = {"prometheus": "prometheus"}
# ... and what the app, its tests and the demo need on a fresh Debian 12.
PROJECT_PACKAGES = ["chromium", "fonts-dejavu-core", "python3-venv", "redis-server",
                    "postgresql", "postgresql-contrib", "redis-tools"]


def missing(packages):
    """The packages dpkg does not report as installed (dpkg-query is fast, apt is not)."""
    proc = run(["dpkg-query", "-W", "-f=${Package} ${db:Status-Abbrev}\n", *packages],
               check=False)
    installed = {line.split()[0] for line in proc.stdout.splitlines()
                 if len(line.split()) > 1 and line.split()[1].startswith("ii")}
    return [p for p in packages if p not in installed]


def install(packages):
    """apt-get install what is missing of `packages` (apt-get update first)."""
    todo = missing(packages)
    if not todo:
        return []
    if os.geteuid() != 0:
        sys.exit(f"ferry-lab: missing packages {' '.join(todo)}; run as root to install them")
    print(f"ferry-lab: installing {' '.join(todo)}", file=sys.stderr)
    env = dict(CLEAN_ENV, DEBIAN_FRONTEND="noninteractive")
    # Wait for another apt (a second lab coming up, unattended-upgrades) instead of failing.
    wait = ["-o", "DPkg::Lock::Timeout=900"]
    subprocess.run(["apt-get", *wait, "update", "-q"], check=True, env=env, stdout=sys.stderr)
    services = [NO_SERVICE[p] for p in todo if p in NO_SERVICE]
    with _services_kept_stopped(bool(services)):
        subprocess.run(["apt-get", *wait, "install", "-y", "-q", "--no-install-recommends", *todo],
                       check=True, env=env, stdout=sys.stderr)
    if services and os.path.isdir("/run/systemd/system"):  # nor at the next boot
        subprocess.run(["systemctl", "disable", *services], check=False, stdout=sys.stderr)
    return todo


@contextlib.contextmanager
def _services_kept_stopped(wanted):
    """While installing: a policy-rc.d that forbids starting services (unless one exists)."""
    policy = "/usr/sbin/policy-rc.d"
    if not wanted or os.path.exists(policy):
        yield
        return
    with open(policy, "w") as f:
        f.write("#!/bin/sh\n# ferry-lab install-deps: no service starts while it installs\nexit 101\n")
    os.chmod(policy, 0o755)
    try:
        yield
    finally:
        os.remove(policy)


def install_deps():
    """Everything for `make test` and `make demo`."""
    return install(list(dict.fromkeys(LAB_PACKAGES + LVM_NODE_PACKAGES + PROJECT_PACKAGES
                                      + OPERATOR_PACKAGES)))


def ensure_lab_deps(lvm=False):
    """Only what the lab itself needs (called by `up`; lvm: with the LVM node)."""
    return install(LAB_PACKAGES + (LVM_NODE_PACKAGES if lvm else []))
