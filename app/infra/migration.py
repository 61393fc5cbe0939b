"""libvirt's live-migration API behind a small surface: start, watch, steer, read the outcome.

The migration is peer-to-peer: the source libvirtd drives it and finishes it
even if this process dies. `migrateToURI3` blocks, so it runs in a thread
while the caller polls `stats()` on the same connection (libvirt connections
accept concurrent calls).
"""

from __future__ import annotations

import threading
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass

import libvirt

from app.errors import FerryError
from app.infra.libvirt import parse_xml

BASE_FLAGS = (
    libvirt.VIR_MIGRATE_LIVE
    | libvirt.VIR_MIGRATE_PEER2PEER
    | libvirt.VIR_MIGRATE_NON_SHARED_DISK
    | libvirt.VIR_MIGRATE_PERSIST_DEST
    | libvirt.VIR_MIGRATE_UNDEFINE_SOURCE
    | libvirt.VIR_MIGRATE_ABORT_ON_ERROR
)


def migration_flags(auto_converge: bool, postcopy: bool, tls: bool = False) -> int:
    """The flags of a Ferry live migration; auto-converge and post-copy must be chosen at start.

    tls: VIR_MIGRATE_TLS, QEMU's own TLS (certificates in qemu.conf's
    migrate_tls_x509_cert_dir on both nodes) for the memory stream and, with
    non-shared disks, the NBD disk copy.
    """
    flags = BASE_FLAGS
    if tls:
        flags |= libvirt.VIR_MIGRATE_TLS
    if auto_converge:
        flags |= libvirt.VIR_MIGRATE_AUTO_CONVERGE
    if postcopy:
        flags |= libvirt.VIR_MIGRATE_POSTCOPY
    return flags


@dataclass
class DomainPlace:
    """What one host says about a domain: is it defined there, is it running, has it a job."""

    defined: bool
    running: bool
    paused: bool = False
    job_active: bool = False
    error: str | None = None
    persistent: bool | None = None  # None: not asked (older callers)


def where_is(conn, uuid: str) -> DomainPlace:
    """Ask one host whether it has the domain, and in which state (never raises for 'absent')."""
    try:
        dom = conn.lookupByUUIDString(uuid)
        state, _reason = dom.state()
        persistent, active = bool(dom.isPersistent()), bool(dom.isActive())
    except libvirt.libvirtError as exc:
        # Asking after the lookup can fail too (the node died in between): still "unknown".
        if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
            return DomainPlace(defined=False, running=False)
        return DomainPlace(defined=False, running=False, error=str(exc))
    try:
        job = dom.jobInfo()[0] != libvirt.VIR_DOMAIN_JOB_NONE
    except libvirt.libvirtError:
        job = False
    return DomainPlace(
        defined=persistent or active,
        running=state == libvirt.VIR_DOMAIN_RUNNING,
        paused=state == libvirt.VIR_DOMAIN_PAUSED,
        job_active=job, persistent=persistent,
    )


class MigrationRefused(FerryError):
    """libvirt refused a control call on a running migration (downtime, post-copy)."""


def migration_params(targets: list[str], dest_xml: str | None = None,
                     persist_xml: str | None = None) -> dict:
    """migrateToURI3's parameters: the disks to copy and, for a format change, the new XMLs."""
    params = {libvirt.VIR_MIGRATE_PARAM_MIGRATE_DISKS: list(targets)}
    if dest_xml is not None:
        params[libvirt.VIR_MIGRATE_PARAM_DEST_XML] = dest_xml
    if persist_xml is not None:
        params[libvirt.VIR_MIGRATE_PARAM_PERSIST_XML] = persist_xml
    return params


class AdoptedMigration:
    """A p2p migration already running on the source, started by a job that died: the same
    surface as LiveMigration, so the monitor loop drives it (ladder, deadline, cancel).

    `host` is the source's `Host`; the migration is done when libvirt shows no job."""

    def __init__(self, host, uuid: str, sleep=time.sleep):
        self.host, self.uuid, self.sleep = host, uuid, sleep
        self.error: str | None = None
        self.error_code = None
        self._done = False

    @property
    def done(self) -> bool:
        """True once the source has no migration job any more."""
        return self._done

    def wait(self, timeout: float | None = None) -> None:
        """Sleep a poll interval, then look whether the job is still there."""
        self.sleep(timeout or 0.5)
        self.stats()

    def stats(self) -> dict:
        """The job's statistics; {} (and done) when libvirt has no job."""
        try:
            raw = self.host.job_stats(self.uuid)
        except FerryError as exc:
            self.error = str(exc)
            self._done = True  # the node stopped answering: the caller settles from both nodes
            return {}
        if not raw or raw.get("type", 0) == libvirt.VIR_DOMAIN_JOB_NONE:
            self._done = True
            return {}
        return raw

    def set_max_downtime(self, ms: int) -> None:
        """Raise (or lower) the downtime QEMU may take at switch-over."""
        try:
            self.host.set_max_downtime(self.uuid, ms)
        except FerryError as exc:
            raise MigrationRefused(str(exc)) from exc

    def start_postcopy(self) -> None:
        """Switch to post-copy (libvirt refuses unless the job was started allowing it)."""
        try:
            self.host.start_postcopy(self.uuid)
        except FerryError as exc:
            raise MigrationRefused(str(exc)) from exc

    def abort(self) -> None:
        """Ask libvirt to abort; the guest keeps running on the source."""
        try:
            self.host.abort_job(self.uuid)
        except FerryError as exc:
            self.error = self.error or f"abort: {exc}"


class LiveMigration:
    """One p2p migrateToURI3 call running in a thread, with the controls nova's loop uses."""

    def __init__(self, dom, dest_uri: str, params: dict, flags: int, control=None):
        self.dom = dom
        # The same domain on a second connection for stats and controls: on a saturated
        # link a control call queued behind the migrateToURI3 call on one connection was
        # seen blocking for minutes, while a fresh connection answered at once.
        self.control = control if control is not None else dom
        self.dest_uri = dest_uri
        self.params = params
        self.flags = flags
        self.error: str | None = None
        self.error_code: int | None = None
        self.finished_at: float | None = None
        self._thread = threading.Thread(target=self._run, name="migrateToURI3", daemon=True)

    def _run(self) -> None:
        try:
            self.dom.migrateToURI3(self.dest_uri, self.params, self.flags)
        except libvirt.libvirtError as exc:
            self.error = str(exc)
            self.error_code = exc.get_error_code()
        finally:
            self.finished_at = time.monotonic()

    def start(self) -> None:
        """Start the migration call in its thread."""
        self._thread.start()

    @property
    def done(self) -> bool:
        """True once migrateToURI3 has returned (successfully or not)."""
        return not self._thread.is_alive()

    def wait(self, timeout: float | None = None) -> None:
        """Wait for the call to return."""
        self._thread.join(timeout)

    def stats(self) -> dict:
        """The running job's statistics, or {} when libvirt has no job (anymore)."""
        try:
            return self.control.jobStats()
        except libvirt.libvirtError:
            return {}

    def set_max_downtime(self, ms: int) -> None:
        """Raise (or lower) the downtime QEMU may take at switch-over."""
        try:
            self.control.migrateSetMaxDowntime(int(ms), 0)
        except libvirt.libvirtError as exc:
            raise MigrationRefused(str(exc)) from exc

    def start_postcopy(self) -> None:
        """Switch to post-copy (only valid when started with POSTCOPY and in the RAM phase)."""
        try:
            self.control.migrateStartPostCopy(0)
        except libvirt.libvirtError as exc:
            raise MigrationRefused(str(exc)) from exc

    def abort(self) -> None:
        """Ask libvirt to abort; the guest keeps running on the source."""
        try:
            self.control.abortJob()
        except libvirt.libvirtError as exc:
            # Already finished or never started: the outcome check tells the truth.
            self.error = self.error or f"abort: {exc}"


def sample_dirty_rate(dom, seconds: int = 1) -> int | None:
    """Dirty rate in bytes/s measured by libvirt's dirty-rate calculation, None if unavailable."""
    try:
        dom.startDirtyRateCalc(seconds, 0)
    except (libvirt.libvirtError, AttributeError):
        return None
    deadline = time.monotonic() + seconds + 5
    while time.monotonic() < deadline:
        time.sleep(0.5)
        try:
            records = dom.connect().domainListGetStats([dom], libvirt.VIR_DOMAIN_STATS_DIRTYRATE)
        except libvirt.libvirtError:
            return None
        stats = records[0][1] if records else {}
        status = stats.get("dirtyrate.calc_status")
        if status == 2:  # measured
            return int(stats.get("dirtyrate.megabytes_per_second", 0)) * 1024 * 1024
        if status not in (0, 1):
            return None
    return None


COMPLETED_JOB = libvirt.VIR_DOMAIN_JOB_COMPLETED


def destination_xml(dom_xml: str, disk_changes: dict[str, tuple]) -> str:
    """Rewrite a domain XML so each named disk target gets a new (path, format[, kind]).

    Example: {"vda": ("/var/lib/libvirt/images/web.raw", "raw")} turns the qcow2
    disk vda into a raw file at that path: libvirt then copies the guest's disk
    into a destination image of another format during a live migration. With kind
    "block" ({"vda": ("/dev/vg/web", "raw", "block")}) the disk becomes a block
    device: `<disk type='block'>` with `<source dev=...>`; a fourth item, a size,
    slices it (`<slice type='storage' offset='0' size=...>`): the guest sees that
    many bytes of a volume lvm made larger. Any slice the source had is dropped
    otherwise (the new disk is exactly the guest's size).
    """
    root = parse_xml(dom_xml, "the domain")
    for disk in root.findall("./devices/disk"):
        target = disk.find("target")
        if target is None or target.get("dev") not in disk_changes:
            continue
        path, fmt, *rest = disk_changes[target.get("dev")]
        kind = rest[0] if rest else "file"
        source = disk.find("source")
        if source is None:
            source = ET.SubElement(disk, "source")
        disk.set("type", "block" if kind == "block" else "file")
        source.attrib.clear()
        source.set("dev" if kind == "block" else "file", path)
        for old in source.findall("slices"):
            source.remove(old)
        if len(rest) > 1 and rest[1]:
            ET.SubElement(ET.SubElement(source, "slices"), "slice", type="storage", offset="0",
                          size=str(int(rest[1])))
        driver = disk.find("driver")
        if driver is None:
            driver = ET.SubElement(disk, "driver", name="qemu")
        driver.set("type", fmt)
    return ET.tostring(root, encoding="unicode")


def disk_targets(dom_xml: str) -> list[dict]:
    """The disks of a domain XML: target dev, path, format, type, and the source's slices
    ([type, offset, size] each: a slice is what the guest sees of its storage)."""
    disks = []
    for disk in parse_xml(dom_xml, "the domain").findall("./devices/disk"):
        if disk.get("device", "disk") != "disk":
            continue
        source, target, driver = disk.find("source"), disk.find("target"), disk.find("driver")
        path = None
        if source is not None:
            path = source.get("file") or source.get("dev")
        disks.append({
            "target": target.get("dev") if target is not None else None,
            "path": path,
            "format": driver.get("type") if driver is not None else "raw",
            "type": disk.get("type"),
            "slices": [[s.get("type"), s.get("offset"), s.get("size")]
                       for s in (source.findall("slices/slice") if source is not None else [])],
        })
    return disks


OEM_IP_PREFIX = "ferry.ip="


def with_guest_ip(dom_xml: str, address_cidr: str) -> str:
    """Give the guest a new IP through the domain definition: an SMBIOS OEM string it reads at boot.

    Example: with_guest_ip(xml, "10.78.1.140/24") leaves exactly one
    `<entry>ferry.ip=10.78.1.140/24</entry>` under <sysinfo type='smbios'><oemStrings>
    and turns on <smbios mode='sysinfo'/> so QEMU passes it to the guest.
    """
    root = parse_xml(dom_xml, "the domain")
    sysinfo = root.find("./sysinfo[@type='smbios']")
    if sysinfo is None:
        sysinfo = ET.SubElement(root, "sysinfo", type="smbios")
    oem = sysinfo.find("oemStrings")
    if oem is None:
        oem = ET.SubElement(sysinfo, "oemStrings")
    for entry in list(oem.findall("entry")):
        if (entry.text or "").startswith(OEM_IP_PREFIX):
            oem.remove(entry)
    ET.SubElement(oem, "entry").text = OEM_IP_PREFIX + address_cidr
    os_el = root.find("os")
    if os_el is not None and os_el.find("smbios") is None:
        ET.SubElement(os_el, "smbios", mode="sysinfo")
    return ET.tostring(root, encoding="unicode")
