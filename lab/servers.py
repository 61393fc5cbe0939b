"""Lab servers: define, list and remove tiny guests on the nodes."""
import hashlib
import ipaddress
import json
import os
import re
import socket
import tempfile
import urllib.request
import uuid
import xml.etree.ElementTree as ET

from . import guest
from .common import LabError, kill_pids, read_pid, run
from .lifecycle import nodes_of
from .lvmnode import THIN_POOL, VG, LvmNode, lvm_count, lvm_nodes
from .nodes import STORAGE_DIR

SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def slug(name):
    """A file-name-safe form of a server name (names may hold shell metacharacters)."""
    if SAFE_NAME.fullmatch(name):
        return name
    base = re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-.")[:40] or "server"
    return f"{base}-{hashlib.sha256(name.encode()).hexdigest()[:8]}"


def mac_for(name):
    """A stable locally administered MAC derived from the server name."""
    h = hashlib.sha256(name.encode()).digest()
    return "52:54:00:%02x:%02x:%02x" % (h[0], h[1], h[2])


def disk_path(name, fmt):
    """The disk path inside a node."""
    return f"{STORAGE_DIR}/{slug(name)}.{fmt}"


def lv_name(name):
    """The logical volume of a server's disk on the LVM node (slugs are valid LVM names)."""
    return slug(name)


def all_nodes(inst, state=None):
    """The namespace nodes and the LVM nodes the lab has."""
    state = state if state is not None else inst.load()
    return nodes_of(inst, state) + lvm_nodes(inst, lvm_count(state))


def domain_xml(name, uid, memory_mib, ip, disk, fmt, build_dir, rate, size, mac,
               disk_type="file"):
    """The libvirt XML of a lab server (TCG, direct kernel boot, IP in an OEM string).

    disk_type "block": the disk is a logical volume (raw, no host page cache).
    """
    d = ET.Element("domain", type="qemu")
    ET.SubElement(d, "name").text = name
    ET.SubElement(d, "uuid").text = uid
    ET.SubElement(d, "memory", unit="MiB").text = str(memory_mib)
    ET.SubElement(d, "vcpu").text = "1"
    sysinfo = ET.SubElement(d, "sysinfo", type="smbios")
    ET.SubElement(ET.SubElement(sysinfo, "oemStrings"), "entry").text = f"ferry.ip={ip}"
    os_ = ET.SubElement(d, "os")
    ET.SubElement(os_, "type", arch="x86_64", machine="pc").text = "hvm"
    ET.SubElement(os_, "kernel").text = os.path.join(build_dir, "vmlinuz")
    ET.SubElement(os_, "initrd").text = os.path.join(build_dir, "initrd.img")
    ET.SubElement(os_, "cmdline").text = (
        f"console=ttyS0 quiet panic=-1 ferry.hostname={slug(name)} "
        f"ferry.dirty_rate={rate} ferry.dirty_size={size}")
    ET.SubElement(os_, "smbios", mode="sysinfo")
    features = ET.SubElement(d, "features")
    ET.SubElement(features, "acpi")
    ET.SubElement(features, "apic")
    cpu = ET.SubElement(d, "cpu", mode="custom", match="exact")
    ET.SubElement(cpu, "model", fallback="allow").text = "qemu64"
    ET.SubElement(d, "clock", offset="utc")
    ET.SubElement(d, "on_poweroff").text = "destroy"
    ET.SubElement(d, "on_reboot").text = "restart"
    ET.SubElement(d, "on_crash").text = "destroy"
    dev = ET.SubElement(d, "devices")
    ET.SubElement(dev, "emulator").text = "/usr/bin/qemu-system-x86_64"
    disk_el = ET.SubElement(dev, "disk", type=disk_type, device="disk")
    if disk_type == "block":
        ET.SubElement(disk_el, "driver", name="qemu", type="raw", cache="none", io="native")
        ET.SubElement(disk_el, "source", dev=disk)
    else:
        ET.SubElement(disk_el, "driver", name="qemu", type=fmt)
        ET.SubElement(disk_el, "source", file=disk)
    ET.SubElement(disk_el, "target", dev="vda", bus="virtio")
    nic = ET.SubElement(dev, "interface", type="bridge")
    ET.SubElement(nic, "mac", address=mac)
    ET.SubElement(nic, "source", bridge="br0")
    ET.SubElement(nic, "model", type="virtio")
    serial = ET.SubElement(dev, "serial", type="file")
    ET.SubElement(serial, "source", path=f"/var/log/libvirt/qemu/{slug(name)}-serial.log",
                  append="on")
    ET.SubElement(serial, "target", port="0")
    ET.SubElement(dev, "controller", type="usb", model="none")
    ET.SubElement(dev, "memballoon", model="none")
    return ET.tostring(d, encoding="unicode")


def node_domains(node):
    """[(name, state)] of the domains defined on a running node."""
    if not node.libvirt_ready():
        return []
    everything = node.virsh("list", "--all", "--name").stdout.splitlines()
    running = set(node.virsh("list", "--name").stdout.splitlines())
    return [(n, "running" if n in running else "shut off") for n in everything if n]


def domain_ip(node, name):
    """The ferry.ip of a defined domain (OEM string first, then the kernel cmdline)."""
    xml = node.virsh("dumpxml", "--inactive", name, check=False).stdout
    m = re.search(r"ferry\.ip=([0-9.]+)", xml)
    return m.group(1) if m else None


def pick_ip(inst, state):
    """A free address in the guest-a block (.2 upward), not used by any lab domain."""
    used = set()
    for node in all_nodes(inst, state):
        for name, _ in node_domains(node):
            used.add(domain_ip(node, name))
    blocks = state.get("inventory", {}).get("ip_blocks", [])
    cidr = next((b["cidr"] for b in blocks if b["name"] == "guest-a"), inst.guest_cidr)
    for addr in ipaddress.ip_network(cidr).hosts():
        if str(addr) not in used and str(addr) != inst.guest_gateway:
            return f"{addr}/24"
    raise LabError(f"no free address left in {cidr}")


def mkserver(inst, node_name, name, memory=256, disk=1, fmt="qcow2", dirty_rate=0,
             dirty_size=64, stopped=False, ip=None, storage="file", fill=0):
    """Define (and start) a lab server on a node; return its description.

    disk: its size, GiB as a number or "256M" (guest.disk_size_mib). storage "lvm"/"thinlvm"
    (LVM node only): the disk is a thick or thin logical volume in the node's volume group,
    holding the same seeded image as a file disk. fill: MiB of random data in the guest's
    filesystem (the file /fill), so the disk holds that much data to copy.
    """
    state = inst.load()
    nodes = {n.name: n for n in all_nodes(inst, state)}
    if node_name not in nodes or not nodes[node_name].libvirt_ready():
        raise LabError(f"{node_name} is not a running node of lab {inst.name}")
    if fmt not in ("raw", "qcow2"):
        raise LabError("--format must be raw or qcow2")
    if storage not in ("file", "lvm", "thinlvm"):
        raise LabError("--storage must be file, lvm or thinlvm")
    if not name or "/" in name or len(name) > 200:
        raise LabError("a server name must be non-empty and contain no '/'")
    size = guest.disk_size_mib(disk) << 20
    node = nodes[node_name]
    vm = isinstance(node, LvmNode)
    if storage != "file" and not vm:
        raise LabError(f"--storage {storage} needs the LVM node (up --lvm-node; lvm1)")
    if vm and not stopped:
        # A TCG guest inside the TCG VM does not finish booting in minutes (LAB.md).
        raise LabError(f"servers on {node.name} must be --stopped: guests there are too slow "
                       "to boot")
    build_dir = guest.build()
    with inst.lock():
        for other in nodes.values():
            if any(n == name for n, _ in node_domains(other)):
                raise LabError(f"a server named {name!r} already exists on {other.name}")
        if ip:
            ipaddress.ip_interface(ip)
            if "/" not in ip:
                ip += "/24"
        else:
            ip = pick_ip(inst, state)
        template = guest.disk_template(build_dir, disk, "qcow2" if vm else fmt, fill)
        if storage != "file":
            fmt, path = "raw", f"/dev/{VG}/{lv_name(name)}"
            _lvcreate(node, lv_name(name), size, thin=storage == "thinlvm")
            try:
                _write_into_vm(inst, node, template, path, "raw", thin=storage == "thinlvm")
            except BaseException:
                node.run(["lvremove", "--yes", f"{VG}/{lv_name(name)}"], check=False)
                raise
        elif vm:
            path = disk_path(name, fmt)
            _write_into_vm(inst, node, template, path, fmt)
        else:
            path = disk_path(name, fmt)
            run(["cp", "--sparse=always", template, node.host_path(path)])
        uid = str(uuid.uuid4())
        mac = mac_for(name)
        xml = domain_xml(name, uid, memory, ip, path, fmt, build_dir, dirty_rate, dirty_size,
                         mac, "block" if storage != "file" else "file")
        with tempfile.NamedTemporaryFile("w", suffix=".xml", dir=node.dir) as f:
            f.write(xml)
            f.flush()
            node.virsh("define", f.name)
    if storage == "file":
        node.virsh("pool-refresh", "default", check=False)
    # The probe side may still cache another (removed) server's MAC for this address.
    run(["ip", "neigh", "del", ip.split("/")[0], "dev", inst.guest_bridge], check=False)
    if not stopped:
        node.virsh("start", name)
    return {"name": name, "node": node.name, "uuid": uid, "ip": ip.split("/")[0], "mac": mac,
            "disk": {"path": path, "format": fmt, "virtual_size": size,
                     "storage": storage if storage != "file" else f"file-{fmt}"},
            "seed_md5": guest.seed_md5(build_dir), "memory_mib": memory}


def _lvcreate(node, lv, size, thin):
    """A new thick or thin logical volume of size bytes on the LVM node (one SSH command)."""
    if thin:
        create = ["lvcreate", "--yes", "-V", f"{size}b", "-T", f"{VG}/{THIN_POOL}", "-n", lv]
    else:
        create = ["lvcreate", "--yes", "--wipesignatures", "y", "-n", lv, "-L", f"{size}b", VG]
    proc = node.run(["sh", "-c", 'if lvs "$1" >/dev/null 2>&1; then exit 17; fi; shift; "$@"',
                     "ferry-lvcreate", f"{VG}/{lv}", *create], check=False)
    if proc.returncode == 17:
        raise LabError(f"{node.name} already has a logical volume {VG}/{lv}")
    if proc.returncode:
        raise LabError(f"lvcreate {VG}/{lv} on {node.name} failed: {proc.stderr.strip()}")


def _write_into_vm(inst, node, template, target, fmt, thin=False):
    """Copy a disk template from the host into the VM over NBD (scp is 3 MiB/s there).

    The host serves the template read-only on its bridge address; the VM pulls it
    with qemu-img, which skips the template's holes. A fresh thin volume reads as
    zeros, so --target-is-zero keeps it thin; a thick one gets its zeros written.
    """
    with socket.socket() as s:  # a free port on the bridge address
        s.bind((inst.mgmt_gateway, 0))
        port = s.getsockname()[1]
    pid_file = os.path.join(node.dir, f"nbd-{port}.pid")
    run(["qemu-nbd", "--read-only", "--persistent", "--shared=4", "--fork", "-f", "qcow2",
         f"--pid-file={pid_file}", "--bind", inst.mgmt_gateway, "--port", str(port),
         template])
    try:
        url = f"nbd://{inst.mgmt_gateway}:{port}"
        if target.startswith("/dev/"):
            argv = ["qemu-img", "convert", "-n", "-f", "raw", "-O", "raw",
                    *(["--target-is-zero"] if thin else []), url, target]
        else:
            argv = ["qemu-img", "convert", "-f", "raw", "-O", fmt, url, target]
        node.run(argv, timeout=900)
    finally:
        kill_pids([read_pid(pid_file)])
        if os.path.exists(pid_file):
            os.unlink(pid_file)


# Remove the volumes that exist and the files in one SSH command: every command costs
# seconds inside the TCG VM (an active volume has its /dev node: no lvs needed to know).
# Arguments: "lv:VG/NAME" and "file:PATH" items.
_RM_VM_SCRIPT = """
for item in "$@"; do
    case $item in
    lv:*) if [ -e "/dev/${item#lv:}" ]; then lvremove --yes "${item#lv:}" || exit 1; fi ;;
    file:*) rm -f -- "${item#file:}" ;;
    esac
done
"""


def _rm_vm_server(node, name):
    """Undefine a server on the LVM node and remove its volumes and files (idempotent)."""
    dumped = node.virsh("dumpxml", "--inactive", name, check=False)
    defined = dumped.returncode == 0
    files = {disk_path(name, "raw"), disk_path(name, "qcow2"),
             f"/var/log/libvirt/qemu/{slug(name)}-serial.log"}
    volumes = {f"/dev/{VG}/{lv_name(name)}"}
    if defined:
        for src in ET.fromstring(dumped.stdout).iter("source"):
            if (src.get("file") or "").startswith(STORAGE_DIR + "/"):
                files.add(src.get("file"))
            if (src.get("dev") or "").startswith(f"/dev/{VG}/"):
                volumes.add(src.get("dev"))
    if defined:
        node.virsh("destroy", name, check=False)
        node.virsh("undefine", name, "--managed-save", "--snapshots-metadata")
    items = [f"lv:{VG}/{dev.rsplit('/', 1)[1]}" for dev in sorted(volumes)]
    node.run(["sh", "-c", _RM_VM_SCRIPT, "ferry-rmserver", *items,
              *[f"file:{f}" for f in sorted(files)]], timeout=300)
    return defined


def rmserver(inst, name):
    """Destroy, undefine and delete the disks of a server on every node (idempotent)."""
    found = []
    for node in all_nodes(inst):
        if isinstance(node, LvmNode):
            if node.alive() and _rm_vm_server(node, name):
                found.append(node.name)
            continue
        if not node.holder_pid():
            continue
        paths = {disk_path(name, "raw"), disk_path(name, "qcow2")}
        if node.daemon_pid("libvirtd") and any(n == name for n, _ in node_domains(node)):
            xml = node.virsh("dumpxml", name).stdout
            paths |= {s.get("file") for s in ET.fromstring(xml).iter("source") if s.get("file")
                      and s.get("file").startswith(STORAGE_DIR + "/")}
            node.virsh("destroy", name, check=False)
            node.virsh("undefine", name, "--managed-save", "--snapshots-metadata",
                       "--checkpoints-metadata", check=False)  # else a checkpoint keeps it
            found.append(node.name)
        removed = False
        for p in paths | {f"/var/log/libvirt/qemu/{slug(name)}-serial.log"}:
            if os.path.exists(node.host_path(p)):
                os.unlink(node.host_path(p))
                removed = True
        if removed and node.daemon_pid("libvirtd"):
            node.virsh("pool-refresh", "default", check=False)
    return found


def servers(inst):
    """[{node, name, state}] for every domain on every node."""
    return [{"node": node.name, "name": n, "state": s}
            for node in all_nodes(inst) for n, s in node_domains(node)]


def guest_status(ip, timeout=5):
    """The JSON a guest serves at http://IP/cgi-bin/status."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never a proxy
    with opener.open(f"http://{ip}/cgi-bin/status", timeout=timeout) as r:
        return json.loads(r.read().decode())
