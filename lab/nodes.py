"""Compute nodes: a network + mount + UTS namespace each, with its own sshd and libvirtd.

A node's namespaces are kept alive by a `sleep infinity` holder process started with
`ip netns exec NS unshare --mount --uts`; everything else is entered with nsenter.
Per-node folders are bind-mounted over /etc/libvirt, /var/lib/libvirt, /run/libvirt,
/var/log/libvirt, /var/cache/libvirt, /etc/hosts, /root and /var/lib/ferry.
"""
import base64
import hashlib
import os
import re
import shutil
import subprocess
import time
import uuid

from .common import CLEAN_ENV, LabError, kill_pids, ns_link, pid_alive, read_pid, run, write_file

STORAGE_DIR = "/var/lib/libvirt/images"
# (folder under the node's directory, mount point inside the node)
BINDS = [("etc-libvirt", "/etc/libvirt"), ("var-lib-libvirt", "/var/lib/libvirt"),
         ("run-libvirt", "/run/libvirt"), ("log-libvirt", "/var/log/libvirt"),
         ("cache-libvirt", "/var/cache/libvirt"), ("var-lib-ferry", "/var/lib/ferry"),
         ("root", "/root"), ("hosts", "/etc/hosts"),
         # transfer TLS credentials (Ferry's defaults): each node its own, never the host's
         ("pki-qemu", "/etc/pki/qemu"), ("etc-ferry", "/etc/ferry")]
OVERRIDES = {"os-release": "/etc/os-release", "cpuinfo": "/proc/cpuinfo"}
DAEMONS = ("virtlogd", "libvirtd", "sshd")


class Node:
    """Node k of an instance (node1 is k=1)."""

    def __init__(self, inst, k):
        self.inst, self.k = inst, k
        self.name = f"node{k}"
        self.address = inst.node_address(k)
        self.netns = f"{inst.name}-n{k}"
        self.mgmt_veth = f"{inst.name}-m{k}"
        self.guest_veth = f"{inst.name}-g{k}"
        self.dir = os.path.join(inst.nodes_dir, self.name)
        self.host_key = os.path.join(inst.keys_dir, f"{self.name}_ssh_host_ed25519_key")

    # -- paths and identity ---------------------------------------------------------
    def path(self, *parts):
        """A path in the node's folder (as the host sees it)."""
        return os.path.join(self.dir, *parts)

    def host_path(self, node_path):
        """Where a file under one of the node's bind mounts lives on the host."""
        for folder, mount in BINDS:
            if node_path == mount or node_path.startswith(mount + "/"):
                return self.path(folder) + node_path[len(mount):]
        return node_path

    @property
    def socket(self):
        """The node's libvirtd socket, as the host sees it."""
        return self.path("run-libvirt", "libvirt-sock")

    @property
    def local_uri(self):
        """A libvirt URI the host can use without SSH (the node's unix socket)."""
        return f"qemu+unix:///system?socket={self.socket}"

    def pid_file(self, what):
        return self.path(f"{what}.pid")

    def holder_pid(self):
        """The holder's PID when it is alive and still owns the node's netns."""
        pid = read_pid(self.pid_file("holder"))
        try:
            ino = os.stat(f"/run/netns/{self.netns}").st_ino
        except OSError:
            return None
        if pid and pid_alive(pid) and ns_link(pid, "net") == f"net:[{ino}]":
            return pid
        return None

    def daemon_pid(self, what):
        """The PID of one of the node's daemons when it runs inside this node."""
        holder = self.holder_pid()
        pid = read_pid(self.pid_file(what))
        if holder and pid and pid_alive(pid) and ns_link(pid, "mnt") == ns_link(holder, "mnt"):
            return pid
        return None

    def processes(self):
        """{"holder"|daemon: "running"|"dead"}."""
        out = {"holder": "running" if self.holder_pid() else "dead"}
        for d in DAEMONS:
            out[d] = "running" if self.daemon_pid(d) else "dead"
        return out

    def alive(self):
        return all(v == "running" for v in self.processes().values())

    def libvirt_ready(self):
        """True when the node's libvirtd runs (servers can be listed and defined)."""
        return bool(self.holder_pid() and self.daemon_pid("libvirtd"))

    def enter(self):
        """The argv prefix that runs a command inside the node."""
        pid = self.holder_pid()
        if not pid:
            raise LabError(f"{self.name} of lab {self.inst.name} is not running (ferry-lab up)")
        return ["nsenter", "-t", str(pid), "-m", "-u", "-n", "--"]

    def run(self, argv, check=True, timeout=120):
        """Run argv inside the node."""
        return run(self.enter() + list(argv), check=check, timeout=timeout)

    def virsh(self, *args, check=True, timeout=120):
        """virsh against the node's libvirtd (over its unix socket, no SSH)."""
        return run(["virsh", "-q", "-c", self.local_uri, *args], check=check, timeout=timeout)

    def fingerprint(self):
        """SHA256:... of the node's SSH host key, as ssh-keygen -l prints it."""
        with open(self.host_key + ".pub") as f:
            blob = base64.b64decode(f.read().split()[1])
        return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")

    # -- bring up -------------------------------------------------------------------
    def teardown(self):
        """Kill everything in the node's netns and remove the netns and its veths."""
        if os.path.exists(f"/run/netns/{self.netns}"):
            pids = run(["ip", "netns", "pids", self.netns], check=False).stdout.split()
            kill_pids([int(p) for p in pids], grace=1.0)
            run(["ip", "netns", "del", self.netns], check=False)
        kill_pids([read_pid(self.pid_file("holder"))] if self.holder_pid() else [])
        for veth in (self.mgmt_veth, self.guest_veth):
            if os.path.exists(f"/sys/class/net/{veth}"):
                run(["ip", "link", "del", veth], check=False)

    def stray_pids(self):
        """Daemons of this node found by pid file (e.g. when its netns entry is gone)."""
        out = []
        for what in DAEMONS + ("holder",):
            pid = read_pid(self.pid_file(what))
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    cmdline = f.read().decode(errors="replace")
            except (OSError, TypeError):
                continue
            ours = self.dir in cmdline if what != "holder" else (
                cmdline.startswith("sleep\0infinity")
                and ns_link(pid, "net") != ns_link(os.getpid(), "net"))
            if ours and pid_alive(pid):
                out.append(pid)
        return out

    def start(self, fingerprints_known_hosts, overrides):
        """Build the node's namespaces and start its daemons (rebuilding a dead node, and one
        built before it had its own /etc/pki/qemu and /etc/ferry)."""
        if not self.holder_pid() or not self.has_transfer_tls_dirs():
            self.teardown()
            self._write_files()
            self._make_namespaces()
            for what, src in overrides.items():
                if src:
                    self.set_override(what, src)
        self._write_ssh(fingerprints_known_hosts)
        self.start_daemons()

    def _write_files(self):
        inst = self.inst
        for folder, _ in BINDS:
            if folder != "hosts":
                os.makedirs(self.path(folder), exist_ok=True)
        shutil.rmtree(self.path("run-libvirt"), ignore_errors=True)  # a fresh /run per boot
        os.makedirs(self.path("run-libvirt"))
        for d in ("var-lib-libvirt/images", "var-lib-ferry/backups", "log-libvirt/qemu",
                  "etc-libvirt/storage/autostart", "root/.ssh"):
            os.makedirs(self.path(d), exist_ok=True)
        write_file(self.path("hosts"), inst.hosts_file())
        host_uuid = uuid.uuid5(uuid.NAMESPACE_URL, f"ferry-lab/{inst.name}/{self.name}")
        write_file(self.path("etc-libvirt", "libvirtd.conf"), libvirtd_conf(host_uuid))
        write_file(self.path("etc-libvirt", "qemu.conf"), qemu_conf(self.address))
        write_file(self.path("etc-libvirt", "libvirt.conf"), 'uri_default = "qemu:///system"\n')
        write_file(self.path("etc-libvirt", "virtlogd.conf"), "")
        pool = self.path("etc-libvirt", "storage", "default.xml")
        write_file(pool, "<pool type='dir'><name>default</name>"
                         f"<target><path>{STORAGE_DIR}</path></target></pool>\n")
        link = self.path("etc-libvirt", "storage", "autostart", "default.xml")
        if not os.path.lexists(link):
            os.symlink("/etc/libvirt/storage/default.xml", link)
        write_file(self.path("sshd_config"), "\n".join([
            f"ListenAddress {self.address}", "Port 22", f"HostKey {self.host_key}",
            f"PidFile {self.pid_file('sshd')}", "PermitRootLogin prohibit-password",
            "PasswordAuthentication no", "KbdInteractiveAuthentication no", "UsePAM no",
            "AuthorizedKeysFile /root/.ssh/authorized_keys", "StrictModes no",
            "MaxStartups 200:30:400", "MaxSessions 200", "UseDNS no", "PrintMotd no",
            "PrintLastLog no", "Subsystem sftp /usr/lib/openssh/sftp-server", ""]))
        for mount in ("/run/libvirt", "/var/cache/libvirt", "/var/log/libvirt",
                      "/var/lib/ferry", "/run/sshd", "/etc/pki/qemu", "/etc/ferry"):
            os.makedirs(mount, exist_ok=True)

    def _make_namespaces(self):
        inst = self.inst
        run(["ip", "netns", "add", self.netns])
        ns = ["ip", "-n", self.netns]
        run(["ip", "link", "add", self.mgmt_veth, "type", "veth", "peer", "name", "eth0",
             "netns", self.netns])
        run(["ip", "link", "add", self.guest_veth, "type", "veth", "peer", "name", "guplink",
             "netns", self.netns])
        run(["ip", "link", "set", self.mgmt_veth, "master", inst.mgmt_bridge, "up"])
        run(["ip", "link", "set", self.guest_veth, "master", inst.guest_bridge, "up"])
        run(ns + ["link", "set", "lo", "up"])
        run(ns + ["addr", "add", f"{self.address}/24", "dev", "eth0"])
        run(ns + ["link", "set", "eth0", "up"])
        run(ns + ["link", "add", "br0", "type", "bridge"])
        run(ns + ["link", "set", "guplink", "master", "br0", "up"])
        run(ns + ["link", "set", "br0", "up"])
        holder = subprocess.Popen(
            ["ip", "netns", "exec", self.netns, "unshare", "--mount", "--uts",
             "--propagation", "private", "--", "sleep", "infinity"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True, env=CLEAN_ENV)
        write_file(self.pid_file("holder"), f"{holder.pid}\n")
        # ip and unshare exec in place: the PID becomes the sleep once both have run.
        deadline = time.time() + 5
        while time.time() < deadline:
            if self.holder_pid() and ns_link(holder.pid, "uts") != ns_link(os.getpid(), "uts"):
                break
            time.sleep(0.01)
        else:
            raise LabError(f"{self.name}: the namespace holder did not start")
        for folder, mount in BINDS:
            run(self.enter() + ["mount", "--bind", self.path(folder), mount])
        run(self.enter() + ["hostname", self.name])

    def _write_ssh(self, known_hosts):
        write_root_ssh(self.path("root", ".ssh"), self.inst, known_hosts)

    def start_daemons(self):
        """Start whichever of virtlogd, libvirtd and sshd is not running."""
        enter = self.enter()
        if not self.daemon_pid("virtlogd"):
            run(enter + ["virtlogd", "-d", "-p", self.pid_file("virtlogd")])
        if not self.daemon_pid("libvirtd"):
            self.start_libvirtd()
        if not self.daemon_pid("sshd"):
            run(enter + ["/usr/sbin/sshd", "-f", self.path("sshd_config")])
            self._wait(lambda: self.daemon_pid("sshd"), "sshd")

    def start_libvirtd(self):
        """Start the node's libvirtd and wait for its socket to answer."""
        if os.path.exists(self.socket):
            os.unlink(self.socket)
        run(self.enter() + ["libvirtd", "-d", "-p", self.pid_file("libvirtd")], timeout=60)
        self._wait(lambda: self.daemon_pid("libvirtd") and os.path.exists(self.socket),
                   "libvirtd")
        # libvirtd probes QEMU's capabilities on first use (~4 s under TCG): start that
        # now, in the background, so the first server or migration does not pay for it.
        subprocess.Popen(["virsh", "-q", "-c", self.local_uri, "domcapabilities",
                          "--virttype", "qemu"], stdin=subprocess.DEVNULL,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         start_new_session=True, env=CLEAN_ENV)

    def stop_libvirtd(self, signal_name="TERM"):
        """Stop (TERM) or kill (KILL) the node's libvirtd; its guests keep running."""
        pid = self.daemon_pid("libvirtd")
        if pid:
            os.kill(pid, 9 if signal_name == "KILL" else 15)
            self._wait(lambda: not pid_alive(pid), "libvirtd to exit")

    def _wait(self, ready, what, timeout=30):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if ready():
                return
            time.sleep(0.05)
        raise LabError(f"{self.name}: {what} did not come up within {timeout}s")

    # -- overrides ------------------------------------------------------------------
    def _mounted(self, target):
        real = os.path.realpath(target) if target.startswith("/etc") else target
        with open(f"/proc/{self.holder_pid()}/mounts") as f:
            return any(line.split()[1] == real for line in f)

    def has_transfer_tls_dirs(self):
        """True when the node has its own /etc/pki/qemu and /etc/ferry (nodes built before
        these were bound would write certificates into the host's, shared by every node)."""
        return bool(self.holder_pid()) and self._mounted("/etc/pki/qemu") \
            and self._mounted("/etc/ferry")

    def clear_override(self, what):
        """Remove an os-release/cpuinfo override inside the running node."""
        target = OVERRIDES[what]
        while self._mounted(target):
            run(self.enter() + ["umount", target])

    def set_override(self, what, src):
        """Bind-mount src over /etc/os-release or /proc/cpuinfo inside the node."""
        self.clear_override(what)
        copy = self.path(f"override-{what}")
        shutil.copy(src, copy)
        run(self.enter() + ["mount", "--bind", copy, OVERRIDES[what]])


def libvirtd_conf(host_uuid):
    """libvirtd.conf of a lab node: its own host UUID (else libvirt refuses "migration to
    the same host") and a keepalive that notices a dead peer in seconds."""
    return (f'host_uuid = "{host_uuid}"\n'
            'log_outputs = "3:file:/var/log/libvirt/libvirtd.log"\n'
            "keepalive_interval = 2\nkeepalive_count = 3\n")


def qemu_conf(address):
    """qemu.conf of a lab node: migration on its own address, QEMU as root, no cgroups."""
    return (f'migration_address = "{address}"\nmigration_host = "{address}"\n'
            'security_driver = "none"\ndynamic_ownership = 0\nremember_owner = 0\n'
            'cgroup_controllers = [ ]\nuser = "root"\ngroup = "root"\n'
            "keepalive_interval = 2\nkeepalive_count = 3\n"
            # VIR_MIGRATE_TLS: certificates from Ferry's CA in /etc/pki/qemu (migrate_tls_x509_
            # cert_dir's default), the peer's checked; libvirtd reads this at start only.
            "migrate_tls_x509_verify = 1\n")


def write_root_ssh(ssh_dir, inst, known_hosts):
    """root's ~/.ssh on a node: the lab's client key, authorized, and the pinned known_hosts."""
    os.makedirs(ssh_dir, exist_ok=True)
    shutil.copy(inst.client_key, os.path.join(ssh_dir, "id_ed25519"))
    os.chmod(os.path.join(ssh_dir, "id_ed25519"), 0o600)
    shutil.copy(inst.client_key + ".pub", os.path.join(ssh_dir, "id_ed25519.pub"))
    shutil.copy(inst.client_key + ".pub", os.path.join(ssh_dir, "authorized_keys"))
    write_file(os.path.join(ssh_dir, "known_hosts"), known_hosts)
    # Fail fast when a peer is unreachable (link down) instead of TCP's minutes.
    write_file(os.path.join(ssh_dir, "config"),
               "Host *\n  ConnectTimeout 5\n  ServerAliveInterval 2\n"
               "  ServerAliveCountMax 3\n  StrictHostKeyChecking yes\n", 0o600)


def parse_node_names(text):
    """'node2' -> 2."""
    m = re.fullmatch(r"node(\d+)", text or "")
    if not m:
        raise LabError(f"{text!r} is not a node name (node1, node2, ...)")
    return int(m.group(1))
