"""Lab servers: define, list and remove tiny guests on the nodes."""
import hashlib
import ipaddress
import json
import os
import re
import tempfile
import urllib.request
import uuid
import xml.etree.ElementTree as ET

from . import guest
from .common import LabError, run
from .lifecycle import nodes_of
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


def domain_xml(name, uid, memory_mib, ip, disk, fmt, build_dir, rate, size, mac):
    """The libvirt XML of a lab server (TCG, direct kernel boot, IP in an OEM string)."""
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
    disk_el = ET.SubElement(dev, "disk", type="file", device="disk")
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
    if not node.holder_pid() or not node.daemon_pid("libvirtd"):
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
    for node in nodes_of(inst, state):
        for name, _ in node_domains(node):
            used.add(domain_ip(node, name))
    blocks = state.get("inventory", {}).get("ip_blocks", [])
    cidr = next((b["cidr"] for b in blocks if b["name"] == "guest-a"), inst.guest_cidr)
    for addr in ipaddress.ip_network(cidr).hosts():
        if str(addr) not in used and str(addr) != inst.guest_gateway:
            return f"{addr}/24"
    raise LabError(f"no free address left in {cidr}")


def mkserver(inst, node_name, name, memory=256, disk=1, fmt="qcow2", dirty_rate=0,
             dirty_size=64, stopped=False, ip=None):
    """Define (and start) a lab server on a node; return its description."""
    state = inst.load()
    nodes = {n.name: n for n in nodes_of(inst, state)}
    if node_name not in nodes or not nodes[node_name].daemon_pid("libvirtd"):
        raise LabError(f"{node_name} is not a running node of lab {inst.name}")
    if fmt not in ("raw", "qcow2"):
        raise LabError("--format must be raw or qcow2")
    if not name or "/" in name or len(name) > 200:
        raise LabError("a server name must be non-empty and contain no '/'")
    node = nodes[node_name]
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
        path = disk_path(name, fmt)
        host_disk = node.host_path(path)
        run(["cp", "--sparse=always", guest.disk_template(build_dir, disk, fmt), host_disk])
        uid = str(uuid.uuid4())
        mac = mac_for(name)
        xml = domain_xml(name, uid, memory, ip, path, fmt, build_dir, dirty_rate, dirty_size,
                         mac)
        with tempfile.NamedTemporaryFile("w", suffix=".xml", dir=node.dir) as f:
            f.write(xml)
            f.flush()
            node.virsh("define", f.name)
    node.virsh("pool-refresh", "default", check=False)
    # The probe side may still cache another (removed) server's MAC for this address.
    run(["ip", "neigh", "del", ip.split("/")[0], "dev", inst.guest_bridge], check=False)
    if not stopped:
        node.virsh("start", name)
    return {"name": name, "node": node.name, "uuid": uid, "ip": ip.split("/")[0], "mac": mac,
            "disk": {"path": path, "format": fmt, "virtual_size": disk << 30},
            "seed_md5": guest.seed_md5(build_dir), "memory_mib": memory}


def rmserver(inst, name):
    """Destroy, undefine and delete the disks of a server on every node (idempotent)."""
    found = []
    for node in nodes_of(inst):
        if not node.holder_pid():
            continue
        paths = {disk_path(name, "raw"), disk_path(name, "qcow2")}
        if node.daemon_pid("libvirtd") and any(n == name for n, _ in node_domains(node)):
            xml = node.virsh("dumpxml", name).stdout
            paths |= {s.get("file") for s in ET.fromstring(xml).iter("source") if s.get("file")
                      and s.get("file").startswith(STORAGE_DIR + "/")}
            node.virsh("destroy", name, check=False)
            node.virsh("undefine", name, "--managed-save", "--snapshots-metadata",
                       check=False)
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
            for node in nodes_of(inst) for n, s in node_domains(node)]


def guest_status(ip, timeout=5):
    """The JSON a guest serves at http://IP/cgi-bin/status."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never a proxy
    with opener.open(f"http://{ip}/cgi-bin/status", timeout=timeout) as r:
        return json.loads(r.read().decode())
