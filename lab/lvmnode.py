"""The LVM node: a Debian 12 virtual machine under QEMU/TCG, for LVM and thin LVM.

This machine has no device-mapper, so `lvcreate` cannot work in a namespace node; a
VM with its own kernel can (see ../shared/LAB.md, "An LVM node"). Its root image is
built once with mmdebstrap into /var/lib/ferry-lab/lvm/<hash>/ and shared by every
instance; each instance boots it from its own qcow2 overlay, with a second sparse
qcow2 holding the volume group `ferry` (thick volumes and the thin pool
`ferry/thinpool`) and a small seed disk carrying what is per instance: address,
host key, authorized key, libvirt identity. `down` removes overlay, volume group
disk and seed; a killed VM is booted again from the same overlay by `up`.
"""
import fcntl
import glob
import hashlib
import os
import shlex
import shutil
import socket
import subprocess
import tempfile
import time
import uuid

from . import net
from .common import (CLEAN_ENV, LAB_DIR, MAX_LVM_NODES, STATE_ROOT, LabError, kill_pids,
                     pid_alive, read_pid, run, write_file)
from .nodes import Node, libvirtd_conf, qemu_conf, write_root_ssh

LVM_ROOT = os.path.join(STATE_ROOT, "lvm")
FILES = os.path.join(LAB_DIR, "lvm_files")
SUITE = "bookworm"
PACKAGES = ["linux-image-amd64", "systemd-sysv", "udev", "dbus", "openssh-server", "lvm2",
            "thin-provisioning-tools", "qemu-utils", "iproute2", "procps", "kmod",
            "initramfs-tools", "zstd", "libvirt-daemon-system", "libvirt-clients",
            "libvirt-daemon-driver-qemu", "qemu-system-x86", "netcat-openbsd",
            "socat"]  # Ferry's preflight listens with socat on a destination to probe its ports
ROOT_SIZE = "4G"  # ext4 made sparse; the tree is about 0.9 GB
VG, THIN_POOL = "ferry", "thinpool"  # as in lvm_files/customize.sh
PV_SIZE = "16G"  # sparse qcow2: grows only as volumes are written
MEMORY_MIB = 1536
NAME = "lvm1"  # the first LVM node; up --lvm-nodes N adds lvm2..lvmN (same image)
BOOT_TIMEOUT = 900  # a busy 2-core machine stretched a 100 s boot to 340 s


# -- the shared root image ----------------------------------------------------------

def _image_hash():
    h = hashlib.sha256(f"{SUITE} {' '.join(PACKAGES)} {ROOT_SIZE}".encode())
    with open(os.path.join(FILES, "customize.sh"), "rb") as f:
        h.update(f.read())
    return h.hexdigest()[:12]


def image_dir():
    """Where the root image for the current inputs lives (built or not)."""
    return os.path.join(LVM_ROOT, _image_hash())


def build_image():
    """Return the folder holding vmlinuz, initrd.img and root.img, building it once."""
    out = image_dir()
    if os.path.exists(os.path.join(out, "done")):
        return out
    os.makedirs(LVM_ROOT, exist_ok=True)
    # Two instances coming up at once: one builds, the other waits for it.
    with open(os.path.join(LVM_ROOT, ".build.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not os.path.exists(os.path.join(out, "done")):
            shutil.rmtree(out, ignore_errors=True)
            tmp = tempfile.mkdtemp(prefix="build-", dir=LVM_ROOT)
            try:
                _build_into(tmp, os.path.join(tmp, "out"))
                os.rename(os.path.join(tmp, "out"), out)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
            _prune_images(keep=out)
    return out


def _prune_images(keep):
    """Delete earlier builds (1 GB each) that no instance's overlay still boots from."""
    in_use = {keep}
    for overlay in glob.glob(os.path.join(STATE_ROOT, "*", "lvm", "root.qcow2")):
        info = run(["qemu-img", "info", "-U", "--output=json", overlay], check=False).stdout
        in_use |= {os.path.dirname(p) for p in glob.glob(os.path.join(LVM_ROOT, "*", "root.img"))
                   if p in info}
    for old in glob.glob(os.path.join(LVM_ROOT, "[0-9a-f]" * 12)):
        if old not in in_use:
            shutil.rmtree(old, ignore_errors=True)


def _sources():
    """The host's Debian sources (deb822 or one-line), handed to mmdebstrap as its mirror."""
    for path in ("/etc/apt/sources.list.d/debian.sources", "/etc/apt/sources.list"):
        if os.path.isfile(path) and os.path.getsize(path):
            return path
    return "http://deb.debian.org/debian"


def _build_into(tmp, out):
    """mmdebstrap the tree, copy kernel and initrd out, make root.img with mke2fs -d."""
    tree = os.path.join(tmp, "root")
    started = time.time()
    run(["mmdebstrap", "--mode=root", "--variant=minbase", "--quiet",
         "--aptopt=Acquire::Check-Valid-Until \"false\"",
         f"--include={','.join(PACKAGES)}",
         f"--customize-hook=sh {shlex.quote(os.path.join(FILES, 'customize.sh'))} \"$1\"",
         SUITE, tree, _sources()], timeout=1800)
    os.makedirs(out)
    for pattern, name in (("vmlinuz-*", "vmlinuz"), ("initrd.img-*", "initrd.img")):
        found = sorted(glob.glob(os.path.join(tree, "boot", pattern)))
        if not found:
            raise LabError(f"the LVM node image has no /boot/{pattern}")
        shutil.copy(found[-1], os.path.join(out, name))
    run(["mke2fs", "-q", "-t", "ext4", "-L", "lvmroot", "-d", tree,
         os.path.join(out, "root.img"), ROOT_SIZE], timeout=600)
    shutil.rmtree(tree, ignore_errors=True)
    write_file(os.path.join(out, "build-seconds"), f"{time.time() - started:.0f}\n")
    open(os.path.join(out, "done"), "w").close()


# -- one instance's VM ----------------------------------------------------------------

def lvm_count(state):
    """How many LVM nodes a saved lab state has (older states: the lvm_node flag)."""
    return int(state.get("lvm_nodes", 1 if state.get("lvm_node") else 0))


def lvm_nodes(inst, count):
    """LVM nodes 1..count of an instance."""
    if not 0 <= count <= MAX_LVM_NODES:
        raise LabError(f"a lab has 0 to {MAX_LVM_NODES} LVM nodes, not {count}")
    return [LvmNode(inst, k) for k in range(1, count + 1)]


def lvm_node_number(name):
    """k for a name lvmK (1..MAX_LVM_NODES), else None."""
    if name.startswith("lvm") and name[3:].isdigit() and 1 <= int(name[3:]) <= MAX_LVM_NODES:
        return int(name[3:])
    return None


class LvmNode:
    """An LVM node of an instance: a VM on the lab's bridges, entered over SSH.

    lvm1 keeps the names it always had (folder `lvm`, taps NAME-lm/-lg); lvmK for K > 1
    gets its own (folder `lvmK`, taps NAME-lmK/-lgK), address and MACs.
    """

    kind = "vm"
    lvm = {"vg": VG, "thin_pool": THIN_POOL}

    def __init__(self, inst, k=1):
        self.inst, self.k = inst, k
        self.name = f"lvm{k}"
        self.address = inst.lvm_address(k)  # outside the namespace nodes' 10.NET.0.(10+K)
        suffix = "" if k == 1 else str(k)
        self.dir = os.path.join(inst.dir, f"lvm{suffix}")
        self.host_key = os.path.join(inst.keys_dir, f"{self.name}_ssh_host_ed25519_key")
        self.mgmt_tap = f"{inst.name}-lm{suffix}"
        self.guest_tap = f"{inst.name}-lg{suffix}"

    def path(self, *parts):
        """A path in the VM's folder on the host."""
        return os.path.join(self.dir, *parts)

    fingerprint = Node.fingerprint

    def mac(self, nic):
        """The stable MAC of NIC 1 (management) or 2 (guest network)."""
        return f"52:54:00:fe:{self.inst.net:02x}:{(self.k - 1) * 16 + nic:02x}"

    # -- state ------------------------------------------------------------------------
    def qemu_pid(self):
        """The VM's QEMU PID when it runs (checked against its command line)."""
        pid = read_pid(self.path("qemu.pid"))
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                ours = (self.dir + "/").encode() in f.read()  # lvm/ is not lvm2/
        except (OSError, TypeError):
            return None
        return pid if ours and pid_alive(pid) else None

    def ssh_answers(self, timeout=5.0):
        """True when the VM's sshd sends its banner."""
        try:
            with socket.create_connection((self.address, 22), timeout=timeout) as s:
                s.settimeout(timeout)
                return s.recv(4).startswith(b"SSH-")
        except OSError:
            return False

    def processes(self):
        """{"qemu"|"sshd": "running"|"dead"}."""
        qemu = self.qemu_pid()
        return {"qemu": "running" if qemu else "dead",
                "sshd": "running" if qemu and self.ssh_answers() else "dead"}

    def alive(self):
        return all(v == "running" for v in self.processes().values())

    def libvirt_ready(self):
        """True when servers can be listed and defined (the VM answers SSH)."""
        return self.alive()

    # -- commands ---------------------------------------------------------------------
    def _ssh_options(self, connect_timeout=5):
        inst = self.inst
        return ["-i", inst.client_key, "-o", "IdentitiesOnly=yes",
                "-o", f"UserKnownHostsFile={inst.known_hosts}",
                "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes",
                "-o", f"ConnectTimeout={connect_timeout}", "-o", "LogLevel=ERROR",
                "-o", f"ControlPath={self.path('ssh-master')}"]

    @property
    def socket(self):
        """The VM's libvirtd socket, forwarded to the host over the SSH master."""
        return self.path("libvirt-sock")

    @property
    def local_uri(self):
        """A libvirt URI for virsh on the host (a virsh started inside the VM costs seconds)."""
        return f"qemu+unix:///system?socket={self.socket}"

    def ssh_master(self):
        """Keep one SSH connection open for the lab's commands (a login costs seconds here),
        forwarding the VM's libvirtd socket to `self.socket`.

        Started with -f and no pipes: a ControlPersist master forked from a command
        whose output is captured would hold that pipe open for its whole life.
        """
        opts = self._ssh_options()
        forward = f"{self.socket}:/run/libvirt/libvirt-sock"
        if run(["ssh", *opts, "-O", "check", f"root@{self.address}"],
               check=False).returncode == 0:
            if not os.path.exists(self.socket):
                run(["ssh", *opts, "-o", "StreamLocalBindUnlink=yes", "-O", "forward",
                     "-L", forward, f"root@{self.address}"], check=False)
            return
        subprocess.run(["ssh", *opts, "-o", "ControlMaster=yes", "-o", "ControlPersist=300",
                        "-o", "ServerAliveInterval=5", "-o", "StreamLocalBindUnlink=yes",
                        "-L", forward, "-N", "-f", f"root@{self.address}"],
                       stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, timeout=60, env=CLEAN_ENV, check=False)

    def ssh_argv(self, argv, connect_timeout=5):
        """ssh with the pinned host key running argv (quoted) inside the VM.

        Uses the master connection when one is open, else logs in afresh.
        """
        return ["ssh", *self._ssh_options(connect_timeout), "-o", "ControlMaster=no",
                f"root@{self.address}", "--", shlex.join(str(a) for a in argv)]

    def run(self, argv, check=True, timeout=120, input=None):
        """Run argv inside the VM."""
        self.ssh_master()
        return run(self.ssh_argv(argv), check=check, timeout=timeout, input=input)

    def virsh(self, *args, check=True, timeout=120):
        """virsh on the host against the VM's libvirtd (through the forwarded socket)."""
        self.ssh_master()
        return run(["virsh", "-q", "-c", self.local_uri, *args], check=check, timeout=timeout)

    # -- bring up and down ------------------------------------------------------------
    def start(self, known_hosts, guest_build):
        """Boot the VM (or keep it running) and wait until SSH, libvirt and LVM answer."""
        self.launch(known_hosts, guest_build)
        self.wait_ready()

    def launch(self, known_hosts, guest_build):
        """Boot the VM unless it runs (returns at once: several boot side by side)."""
        if not self.qemu_pid():
            image = build_image()
            self.teardown()
            os.makedirs(self.dir, exist_ok=True)
            self._write_seed(known_hosts, guest_build)
            if not os.path.exists(self.path("pv.qcow2")):
                run(["qemu-img", "create", "-q", "-f", "qcow2", self.path("pv.qcow2"), PV_SIZE])
            if not os.path.exists(self.path("root.qcow2")):
                run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw",
                     "-b", os.path.join(image, "root.img"), self.path("root.qcow2")])
            for tap, bridge in ((self.mgmt_tap, self.inst.mgmt_bridge),
                                (self.guest_tap, self.inst.guest_bridge)):
                run(["ip", "tuntap", "add", "dev", tap, "mode", "tap"])
                run(["ip", "link", "set", tap, "master", bridge, "up"])
            # The host may still cache a neighbour entry of a previous boot's VM.
            run(["ip", "neigh", "del", self.address, "dev", self.inst.mgmt_bridge], check=False)
            run(self._qemu_argv(image), timeout=60)

    def _qemu_argv(self, image):
        # lvm2-monitor only registers thin pools for auto-extension, which the lab does not
        # use; on a busy machine it outlasted its start timeout and failed the boot's unit.
        cmdline = (f"root=/dev/vda rw console=ttyS0 systemd.hostname={self.name} "
                   "systemd.mask=lvm2-monitor.service net.ifnames=0 quiet")
        return [
            "qemu-system-x86_64", "-name", f"ferry-lab-{self.inst.name}-{self.name}",
            "-accel", "tcg,tb-size=256", "-cpu", "max", "-m", str(MEMORY_MIB), "-smp", "1",
            "-kernel", os.path.join(image, "vmlinuz"),
            "-initrd", os.path.join(image, "initrd.img"), "-append", cmdline,
            "-drive", f"file={self.path('root.qcow2')},if=virtio,format=qcow2,discard=unmap",
            # Zeros written into thick volumes stay holes in the host's file.
            "-drive", f"file={self.path('pv.qcow2')},if=virtio,format=qcow2,discard=unmap,"
                      "detect-zeroes=unmap",
            "-drive", f"file={self.path('seed.img')},if=virtio,format=raw,readonly=on",
            "-netdev", f"tap,id=mgmt,ifname={self.mgmt_tap},script=no,downscript=no",
            "-device", f"virtio-net-pci,netdev=mgmt,mac={self.mac(1)}",
            "-netdev", f"tap,id=guest,ifname={self.guest_tap},script=no,downscript=no",
            "-device", f"virtio-net-pci,netdev=guest,mac={self.mac(2)}",
            "-device", "virtio-rng-pci", "-rtc", "base=utc",
            "-display", "none", "-serial", f"file:{self.path('console.log')}",
            "-monitor", f"unix:{self.path('monitor.sock')},server=on,wait=off",
            "-daemonize", "-pidfile", self.path("qemu.pid")]

    def trust(self, known_hosts):
        """Write the lab's pinned known_hosts into the running VM: a node added after its boot
        (lvm2 beside a running lvm1) is known to it only from here on (the seed disk is read
        at boot)."""
        self.run(["sh", "-c", 'cat > "$1.new" && mv "$1.new" "$1"', "ferry-trust",
                  "/root/.ssh/known_hosts"], input=known_hosts, timeout=60)

    def wait_ready(self):
        deadline = time.time() + BOOT_TIMEOUT
        ready = ["sh", "-c", 'test -S /run/libvirt/libvirt-sock && lvs "$1/$2" >/dev/null',
                 "ferry-ready", VG, THIN_POOL]
        while time.time() < deadline:
            if not self.qemu_pid():
                raise LabError(f"{self.name}: QEMU exited; see {self.path('console.log')}")
            try:
                if self.ssh_answers() and self.run(ready, check=False, timeout=60).returncode == 0:
                    return
            except LabError:  # an SSH login that timed out while the VM is still booting
                pass
            time.sleep(2)
        raise LabError(f"{self.name}: not ready within {BOOT_TIMEOUT}s; "
                       f"see {self.path('console.log')}")

    def _write_seed(self, known_hosts, guest_build):
        """The seed disk: the files that make the shared image this instance's node."""
        inst = self.inst
        with tempfile.TemporaryDirectory(dir=self.dir) as tmp:
            tree = os.path.join(tmp, "tree")

            def put(rel, text, mode=0o644):
                write_file(os.path.join(tree, rel.lstrip("/")), text, mode)

            put("/etc/hosts", inst.hosts_file())
            with open(self.host_key) as f:
                put("/etc/ssh/ssh_host_ed25519_key", f.read(), 0o600)
            with open(self.host_key + ".pub") as f:
                put("/etc/ssh/ssh_host_ed25519_key.pub", f.read())
            os.makedirs(os.path.join(tree, "root"), mode=0o700)
            write_root_ssh(os.path.join(tree, "root", ".ssh"), inst, known_hosts)
            net_dir = "/etc/systemd/network"
            put(f"{net_dir}/10-mgmt.network",
                f"[Match]\nMACAddress={self.mac(1)}\n\n[Network]\nAddress={self.address}/24\n"
                "LinkLocalAddressing=no\nIPv6AcceptRA=no\n")
            put(f"{net_dir}/20-br0.netdev", "[NetDev]\nName=br0\nKind=bridge\n")
            put(f"{net_dir}/20-br0.network", "[Match]\nName=br0\n\n[Network]\n"
                "LinkLocalAddressing=no\nIPv6AcceptRA=no\nConfigureWithoutCarrier=yes\n")
            put(f"{net_dir}/21-guest.network",
                f"[Match]\nMACAddress={self.mac(2)}\n\n[Network]\nBridge=br0\n")
            host_uuid = uuid.uuid5(uuid.NAMESPACE_URL, f"ferry-lab/{inst.name}/{self.name}")
            put("/etc/libvirt/libvirtd.conf", libvirtd_conf(host_uuid))
            put("/etc/libvirt/qemu.conf", qemu_conf(self.address))
            # Lab servers boot the lab guest's kernel by its host path: the same path here.
            for name in ("vmlinuz", "initrd.img"):
                os.makedirs(tree + guest_build, exist_ok=True)
                shutil.copy(os.path.join(guest_build, name), tree + guest_build)
            run(["mke2fs", "-q", "-t", "ext4", "-L", "ferryseed", "-d", tmp,
                 self.path("seed.img.tmp"), "64M"])
            os.replace(self.path("seed.img.tmp"), self.path("seed.img"))

    def teardown(self):
        """Stop QEMU (by its recorded PID) and remove the taps; disks stay."""
        if os.path.exists(self.path("ssh-master")):
            run(["ssh", *self._ssh_options(), "-O", "exit", f"root@{self.address}"],
                check=False, timeout=10)
        pid = self.qemu_pid()
        if pid:
            kill_pids([pid], grace=3.0)
        for tap in (self.mgmt_tap, self.guest_tap):
            net.delete_link(tap)

    def remove(self):
        """Stop the VM and delete its overlay, volume group disk and seed."""
        self.teardown()
        shutil.rmtree(self.dir, ignore_errors=True)
