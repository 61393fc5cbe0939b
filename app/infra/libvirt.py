"""libvirt over SSH with the pinned host key, and small typed wrappers over its quirks.

The connection uses libvirt's own SSH transport (libssh2 or libssh) with a
known_hosts file written from the pinned key and strict verification, so a
node with another key is refused here exactly as it is by Fabric.
"""
import contextlib
import os
import re
import tempfile
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from urllib.parse import quote, urlencode

import libvirt

# libvirt prints every error to stderr by default; Ferry reports them itself.
libvirt.registerErrorHandler(lambda _ctx, _err: None, None)

from app import status
from app.errors import FerryError, UnexpectedAnswer
from app.infra.ssh import HostKeyMismatch

STATES = {
    libvirt.VIR_DOMAIN_NOSTATE: status.SERVER_UNKNOWN,
    libvirt.VIR_DOMAIN_RUNNING: status.SERVER_RUNNING,
    libvirt.VIR_DOMAIN_BLOCKED: status.SERVER_RUNNING,  # running, waiting on I/O
    libvirt.VIR_DOMAIN_PAUSED: status.SERVER_PAUSED,
    libvirt.VIR_DOMAIN_SHUTDOWN: status.SERVER_RUNNING,  # still running while it shuts down
    libvirt.VIR_DOMAIN_SHUTOFF: status.SERVER_STOPPED,
    libvirt.VIR_DOMAIN_CRASHED: status.SERVER_CRASHED,
    libvirt.VIR_DOMAIN_PMSUSPENDED: status.SERVER_SUSPENDED,
}


class LibvirtError(FerryError):
    """libvirt refused or failed; the message is libvirt's, with the node named."""


class UnexpectedXML(LibvirtError, UnexpectedAnswer):
    """A node's libvirt answered with XML Ferry will not guess about (it is untrusted input)."""


_TARGET = re.compile(r"^[a-z][a-z0-9]{1,31}$")  # vda, sdb, hdc, nvme0n1
_FORMAT = re.compile(r"^[a-z0-9][a-z0-9_-]{0,15}$")  # raw, qcow2, vmdk, ...
_TOKEN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}$")  # arch, vendor, model, pool type
_MAX_XML = 16 * 1024 * 1024  # a domain with hundreds of disks is a few hundred KiB
MAX_CHECKPOINTS = 100  # checkpoint names kept per domain in facts (a chain is rarely longer)


def parse_xml(text, what="XML"):
    """The root element of XML a node sent; UnexpectedXML for anything that is not XML.

    >>> parse_xml("<domain type='kvm'/>").get("type")
    'kvm'
    """
    if not isinstance(text, str) or len(text) > _MAX_XML:
        raise UnexpectedXML(f"{what} is not text of a sane size")
    try:
        return ET.fromstring(text)
    except (ET.ParseError, ValueError, RecursionError) as exc:
        raise UnexpectedXML(f"{what} is not XML ({exc}): {text.strip()[:80]!r}") from exc


def _token(value, pattern=_TOKEN):
    """A short word from a node's XML, or None when it is absent or not such a word."""
    return value if isinstance(value, str) and pattern.match(value) else None


def cpu_facts(caps_xml):
    """CPU facts from libvirt's capabilities XML: arch, vendor, model, features, the <cpu> XML."""
    cpu = parse_xml(caps_xml, "the capabilities").find("host/cpu")
    if cpu is None:
        return {"arch": None, "vendor": None, "model": None, "features": [], "host_cpu_xml": ""}
    try:
        cpu_xml = ET.tostring(cpu, encoding="unicode").strip()
    except RecursionError as exc:
        raise UnexpectedXML("the capabilities' <cpu> is nested too deep") from exc
    return {
        "arch": _token(cpu.findtext("arch")),
        "vendor": _token(cpu.findtext("vendor")),
        "model": _token(cpu.findtext("model")),
        "features": [f.get("name") for f in cpu.findall("feature") if _token(f.get("name"))],
        "host_cpu_xml": cpu_xml,
    }


def pool_facts(pool_xml):
    """(type, target path) of a storage pool from its XML."""
    root = parse_xml(pool_xml, "a storage pool")
    path = root.findtext("target/path")
    if path is not None and (not path.startswith("/") or len(path) > 4096):
        raise UnexpectedXML(f"a storage pool's target path is not a path: {path[:80]!r}")
    return _token(root.get("type")), path


def checkpoint_name(value):
    """Whether a checkpoint name from a node can be kept and shown: printable, 1-200 characters.

    >>> checkpoint_name("backup-2026-11-29"), checkpoint_name("a\\nb"), checkpoint_name("")
    (True, False, False)
    """
    return isinstance(value, str) and 0 < len(value) <= 200 and value.isprintable()


def domain_disks(dom_xml):
    """The disks (device='disk') of a domain XML as dicts: target, path, format, type, and
    "slice": the size a storage slice from offset 0 gives the guest (None without one).

    Raises UnexpectedXML when a disk has no sane target name, format or type.
    """
    disks = []
    for element in parse_xml(dom_xml, "a domain").findall("devices/disk[@device='disk']"):
        source, driver, target = element.find("source"), element.find("driver"), element.find("target")
        path = ""
        if source is not None:
            path = source.get("file") or source.get("dev") or source.get("name") or ""
        dev = target.get("dev") if target is not None else None
        fmt = driver.get("type", "raw") if driver is not None else "raw"
        disk_type = element.get("type") or "file"
        if not _token(dev, _TARGET) or not _token(fmt, _FORMAT) or not _token(disk_type, _FORMAT) \
                or len(path) > 4096:
            raise UnexpectedXML(f"a disk of the domain has no usable target, format, type or path: "
                                f"{dev!r:.40} {fmt!r:.40} {disk_type!r:.40} {path[:80]!r}")
        disks.append({"target": dev, "path": path, "format": fmt, "type": disk_type,
                      "slice": _storage_slice(source)})
    return disks


def _storage_slice(source) -> int | None:
    """The size of a disk source's storage slice from offset 0 (what its guest sees of a
    logical volume lvm made larger, as Ferry defines one), or None.

    >>> _storage_slice(ET.fromstring("<source><slices><slice type='storage' offset='0' "
    ...                              "size='1074790912'/></slices></source>"))
    1074790912
    """
    found = source.find("slices/slice[@type='storage']") if source is not None else None
    size = found.get("size", "") if found is not None and found.get("offset") == "0" else ""
    return int(size) if size.isdigit() and 0 < len(size) <= 19 else None


@dataclass(frozen=True)
class DiskInfo:
    """One disk of a domain."""

    target: str
    path: str
    format: str
    storage_type: str
    virtual_size: int
    allocation: int
    disk_type: str = "file"  # libvirt's <disk type=...>: file, block, network, ...
    slice: int | None = None  # the guest's size when the definition slices the storage


@dataclass(frozen=True)
class GuestInfo:
    """What the inventory needs to know about a domain."""

    uuid: str
    name: str
    state: str
    vcpus: int
    memory_mib: int
    snapshot_count: int
    persistent: bool
    disks: list = field(default_factory=list)


@dataclass(frozen=True)
class PoolInfo:
    """A storage pool and its room."""

    name: str
    type: str
    path: str | None
    capacity_bytes: int
    free_bytes: int


def _version(number):
    """libvirt's packed version (major*1e6 + minor*1e3 + micro) as text.

    >>> _version(9000000), _version(7002000)
    ('9.0.0', '7.2.0')
    """
    return f"{number // 1000000}.{number // 1000 % 1000}.{number % 1000}"


def storage_type(disk_type, fmt):
    """Ferry's storage type for a libvirt disk type and image format.

    >>> storage_type("file", "qcow2"), storage_type("block", "raw")
    ('file-qcow2', 'lvm')
    """
    if disk_type == "block":
        # Thin or thick is told apart by lvs (commands.lvm.with_volume), not by libvirt.
        return status.STORAGE_LVM
    return status.STORAGE_FILE_QCOW2 if fmt == status.FORMAT_QCOW2 else status.STORAGE_FILE_RAW


def write_known_hosts(endpoint, directory):
    """Write a known_hosts file holding only the pinned key; returns its path.

    Replaced whole, never rewritten in place: other connections to the same node (other
    workers, or this one opening source and control side by side) read it meanwhile, and
    libvirt refuses a node whose file it finds empty ("failed to retrieve decision to
    accept host key"). Left alone when it already says this.
    """
    os.makedirs(directory, mode=0o700, exist_ok=True)
    safe = "".join(c if c.isalnum() or c in ".-_" else "_" for c in f"{endpoint.host}_{endpoint.port}")
    path = os.path.join(directory, f"{safe}.known_hosts")
    line = f"{endpoint.known_hosts_name} {endpoint.host_key}\n"
    try:
        with open(path) as fh:
            if fh.read() == line:
                return path
    except OSError:
        pass
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{safe}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(line)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path


def uri(endpoint, known_hosts, transport="libssh2"):
    """The qemu+libssh2:// (or qemu+libssh://) URI with key file and strict host key checking."""
    query = urlencode({"keyfile": endpoint.key_path, "known_hosts": known_hosts,
                       "known_hosts_verify": "normal", "sshauth": "privkey"})
    return (f"qemu+{transport}://{quote(endpoint.user)}@{endpoint.host}:{endpoint.port}"
            f"/system?{query}")


def _refuse_prompts(credentials, user_data):
    """Answer no to any interactive question (such as "accept this unknown host key?")."""
    return -1


def open_host(endpoint, known_hosts_dir, transport="libssh2"):
    """Open libvirt on the node with the pinned host key; returns a Host (close it, or use `with`)."""
    if not endpoint.host_key:
        raise LibvirtError(f"no host key is pinned for {endpoint.host}")
    target = uri(endpoint, write_known_hosts(endpoint, known_hosts_dir), transport)
    try:
        conn = libvirt.openAuth(target, [[libvirt.VIR_CRED_ECHOPROMPT], _refuse_prompts, None], 0)
    except libvirt.libvirtError as exc:
        message = str(exc)
        lowered = message.lower()
        if "host key" in lowered and ("mismatch" in lowered or "changed" in lowered
                                      or "verification" in lowered or "unknown" in lowered
                                      or "not match" in lowered):
            raise HostKeyMismatch(f"libvirt refused {endpoint.host}:{endpoint.port}: {message}") from exc
        raise LibvirtError(f"libvirt on {endpoint.host}:{endpoint.port}: {message}") from exc
    return Host(conn, endpoint.host)


class Host:
    """A libvirt connection to one compute node, with the few calls Ferry needs."""

    def __init__(self, conn, name):
        self.conn = conn
        self.name = name

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        """Close the connection, ignoring a node that already went away."""
        try:
            self.conn.close()
        except libvirt.libvirtError:
            pass

    def cpu(self):
        """CPU facts from libvirt's capabilities: arch, vendor, model, features, the <cpu> XML."""
        return cpu_facts(self.conn.getCapabilities())

    def versions(self):
        """libvirt and QEMU versions as "9.0.0" strings."""
        return {"libvirt_version": _version(self.conn.getLibVersion()),
                "qemu_version": _version(self.conn.getVersion())}

    def memory(self):
        """Total and free host memory in MiB."""
        return {"total_mib": int(self.conn.getInfo()[1]),
                "free_mib": int(self.conn.getFreeMemory() // (1024 * 1024))}

    def storage_pools(self):
        """Every storage pool with type, path and free space (inactive pools show zero room)."""
        pools = []
        for pool in self.conn.listAllStoragePools():
            pool_type, path = pool_facts(pool.XMLDesc())
            _, capacity, _, available = pool.info()
            pools.append(PoolInfo(pool.name(), pool_type, path, int(capacity), int(available)))
        return sorted(pools, key=lambda p: p.name)

    def checkpoints(self):
        """{domain UUID: sorted checkpoint names} of every domain that has libvirt checkpoints
        (incremental backup chains, `virsh checkpoint-list`); names that are not short printable
        text are left out. A domain whose checkpoints cannot be listed counts as having none."""
        found = {}
        for dom in self.conn.listAllDomains():
            try:
                names = [c.getName() for c in dom.listAllCheckpoints(0)]
            except libvirt.libvirtError:
                continue  # a libvirt without checkpoint support: no chain to break
            kept = sorted(n for n in names if checkpoint_name(n))[:MAX_CHECKPOINTS]
            if kept:
                found[dom.UUIDString()] = kept
        return found

    def guests(self):
        """Every domain, running or defined, as GuestInfo."""
        return [self._guest(dom) for dom in self.conn.listAllDomains()]

    def _guest(self, dom):
        """GuestInfo of one domain."""
        state, max_mem_kib, _, vcpus, _ = dom.info()
        disks = domain_disks(dom.XMLDesc(0))
        return GuestInfo(
            uuid=dom.UUIDString(), name=dom.name(), state=STATES.get(state, status.SERVER_UNKNOWN),
            vcpus=int(vcpus), memory_mib=int(max_mem_kib // 1024),
            snapshot_count=dom.snapshotNum(0), persistent=bool(dom.isPersistent()),
            disks=[self._disk(dom, d) for d in disks])

    def _disk(self, dom, disk):
        """DiskInfo from one of domain_disks, sizes from libvirt (works for stopped domains too;
        a sliced disk's virtual size is its slice: libvirt reports the whole device's)."""
        capacity = allocation = 0
        try:
            capacity, allocation, _ = dom.blockInfo(disk["target"])
        except libvirt.libvirtError:
            try:
                _, capacity, allocation = self.conn.storageVolLookupByPath(disk["path"]).info()
            except libvirt.libvirtError:
                pass  # a disk whose file is gone: still listed, with unknown size
        return DiskInfo(disk["target"], disk["path"], disk["format"],
                        storage_type(disk["type"], disk["format"]),
                        int(disk["slice"] or capacity), int(allocation), disk["type"],
                        disk["slice"])


# What preflight asks of libvirt, so services never import libvirt themselves.

@dataclass(frozen=True)
class GuestOnDestination:
    """A guest of one node as the destination's libvirt judges it: compareHypervisorCPU's code
    (libvirt's VIR_CPU_COMPARE_*: -1 error, 0 incompatible, 1 identical, 2 superset) with the
    error text when it could not compare, whether the guest runs, and its dirty rate (bytes/s)
    when it was sampled."""

    cpu_code: int
    cpu_error: str | None
    active: bool
    dirty_rate_bps: int | None = None


def compare_cpu(dst_host, dom_xml: str) -> tuple:
    """The destination's compareHypervisorCPU verdict on a domain XML's <cpu>: (code, error)."""
    root = parse_xml(dom_xml, "the domain")
    cpu = root.find("cpu")
    if cpu is None:
        return libvirt.VIR_CPU_COMPARE_SUPERSET, None  # no CPU model asked: the default
    os_type = root.find("os/type")
    try:
        code = dst_host.conn.compareHypervisorCPU(
            None, os_type.get("arch") if os_type is not None else None,
            os_type.get("machine") if os_type is not None else None,
            root.get("type"), ET.tostring(cpu, encoding="unicode"), 0)
        return code, None
    except libvirt.libvirtError as exc:
        return libvirt.VIR_CPU_COMPARE_ERROR, str(exc)


def judge_guest(src_host, dst_host, uuid: str, sample_dirty_rate: bool = False) -> GuestOnDestination:
    """Look the guest up on its node and have the destination compare its CPU; with
    `sample_dirty_rate`, a running guest's dirty rate is measured too (one second)."""
    try:
        dom = src_host.conn.lookupByUUIDString(uuid)
        xml, active = dom.XMLDesc(0), bool(dom.isActive())
    except libvirt.libvirtError as exc:
        return GuestOnDestination(libvirt.VIR_CPU_COMPARE_ERROR, str(exc), False)
    try:
        code, error = compare_cpu(dst_host, xml)
    except (UnexpectedXML, RecursionError) as exc:  # the source's XML: untrusted
        return GuestOnDestination(libvirt.VIR_CPU_COMPARE_ERROR, str(exc) or "XML nested too deep",
                                  active)
    dirty = None
    if sample_dirty_rate and active:
        from app.infra.migration import sample_dirty_rate as sample  # the engine's module
        dirty = sample(dom, 1)
    return GuestOnDestination(code, error, active, dirty)
