"""Preflight checks: each a pure function returning a CheckResult.

The preflight job gathers the inputs (inventory rows, node facts from the
inventory sync, port probes run on the source node, libvirt's
compareHypervisorCPU on the destination) into the plain dataclasses below
and calls `run_checks`; results are stored on the task. A fail stops the
group; a warning needs an explicit acknowledgement (`summarize`).

Facts dict (produced by the inventory sync), as read here:
{"cpu": {"arch", "vendor", "model", "features", "host_cpu_xml",
         "cpuinfo": {"vendor_id", "family", "model", "model_name", "flags"}},
 "os": {"id", "version_id", "name", "pretty_name"}, "kernel",
 "libvirt_version", "qemu_version", "nested_virtualization",
 "memory": {"total_mib", "free_mib"},
 "storage_pools": [{"name", "type", "path", "capacity_bytes", "free_bytes"}],
 "nbd_module", "backup_dir": {"path", "free_bytes", "files": [{"name", "size"}], "files_cut"},
 "checkpoints": {domain uuid: [checkpoint name, ...]},
 "tls": {"valid", "reason", "not_after"}, "gathered_at"}

A server's backups are what its node shows (`node_backups`): its libvirt checkpoints
(incremental chains) and the files in the node's backup directory named after it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Optional, Sequence, Union

from app.status import (
    BACKUP_FULL,
    BACKUP_INCREMENTAL,
    FORMAT_QCOW2,
    FORMAT_RAW,
    RESOURCE_ACTIVE,
    SERVER_RUNNING,
    SERVER_STOPPED,
    STORAGE_FILE_QCOW2,
    STORAGE_FILE_RAW,
    STORAGE_LVM,
    STORAGE_THINLVM,
)

PASS = "pass"
INFO = "info"  # worth knowing, never a reason to stop or to ask for an acknowledgement
WARN = "warn"
FAIL = "fail"
_SEVERITY = {PASS: 0, INFO: 0, WARN: 1, FAIL: 2}

NBD_PORT = 8081
MIGRATION_PORTS = range(49152, 49216)  # libvirt's default migration_port_min..max
MEMORY_HEADROOM_MIB = 256
DISK_HEADROOM_FRACTION = 0.05
# qcow2 metadata on top of the data: L2 tables (8 B per 64 KiB cluster),
# refcounts (2 B per cluster) and headers; a little over 0.1 % of the size.
QCOW2_FIXED_OVERHEAD = 1024 * 1024

# virConnectCompareCPU results
CPU_COMPARE_ERROR = -1
CPU_COMPARE_INCOMPATIBLE = 0
CPU_COMPARE_IDENTICAL = 1
CPU_COMPARE_SUPERSET = 2

FILE_TYPES = (STORAGE_FILE_RAW, STORAGE_FILE_QCOW2)
LVM_TYPES = (STORAGE_LVM, STORAGE_THINLVM)
# A thin pool that runs out of data or metadata space stops every volume in it: refuse a copy
# that would fill its data past this, or that meets its metadata already past this.
THIN_DATA_MAX_PERCENT = 90.0
THIN_METADATA_MAX_PERCENT = 80.0
# libvirt pool types holding each family of Ferry storage types
_POOL_TYPES = {"file": ("dir", "fs", "netfs"), "lvm": ("logical",)}

# The nbd kernel module: the reference product needs it to convert storage.
# Ferry does not (qemu-nbd serves the source disk over TCP and qemu-img reads
# nbd:// in user space), so a missing module never stops a migration and needs
# no acknowledgement. It is still shown (information, not a silent pass)
# because teams following the SolusVM procedure look for it, and a site script
# that expects /dev/nbd* would break.
NBD_MISSING_STATUS = INFO


@dataclass(frozen=True)
class CheckResult:
    """One check's outcome; `message` is a sentence for the user."""

    name: str
    status: str
    message: str
    data: dict = field(default_factory=dict)


@dataclass(frozen=True)
class DiskInfo:
    """A server's disk as the inventory knows it (sizes in bytes)."""

    path: str
    format: str
    storage_type: str
    virtual_size: int
    allocation: int
    storage_tag: Optional[str] = None


@dataclass(frozen=True)
class IpAddress:
    """One of a server's addresses and the IP block it comes from."""

    address: str
    block: str


BACKUP_CHECKPOINT = "checkpoint"  # a libvirt checkpoint: a mark of an incremental chain
BACKUP_FILE = "file"  # a file in the node's backup directory named after the server
# A backup file's name marks it incremental with an "inc", "incr" or "incremental" word
# (web1-inc-3.qcow2, web1/incremental.2026-11-29.qcow2); any other is a full backup.
_INCREMENTAL_NAME = re.compile(r"(^|[._/-])inc(r|remental)?([0-9._/-]|$)", re.IGNORECASE)
_NAME_SEPARATORS = ".-_"


@dataclass(frozen=True)
class BackupInfo:
    """A backup: kind full/incremental, taken on storage_type; `name` is the checkpoint's or
    the file's (relative to the backup directory), `origin` which of the two it is."""

    kind: str
    storage_type: str
    name: str = ""
    origin: str = BACKUP_FILE


@dataclass(frozen=True)
class ServerInfo:
    """A server to migrate; `resource` is the compute resource it is on."""

    name: str
    state: str
    resource: str
    vcpus: int = 1
    memory_mib: int = 0
    snapshot_count: int = 0
    disks: tuple = ()
    ip_addresses: tuple = ()
    backups: tuple = ()
    cpu_xml: str = ""


@dataclass(frozen=True)
class ResourceInfo:
    """A compute resource with its facts; free_addresses maps block name -> count."""

    name: str
    status: str
    facts: dict = field(default_factory=dict)
    storage_tags: tuple = ()
    ip_blocks: tuple = ()
    free_addresses: dict = field(default_factory=dict)


@dataclass(frozen=True)
class MigrationOptions:
    """What the user asked for; convert_to is None or a storage type."""

    live: bool = True
    preserve_ip: bool = True
    convert_to: Optional[str] = None
    allow_postcopy: bool = False


@dataclass(frozen=True)
class Summary:
    """The overall outcome of a preflight."""

    status: str
    needs_acknowledgement: bool
    counts: dict
    failed: tuple
    warned: tuple


# ---------------------------------------------------------------- helpers

def storage_type_of(fmt: str, pool_type: str) -> str:
    """Return Ferry's storage type for an image format on a libvirt pool type.

    >>> storage_type_of("qcow2", "dir"), storage_type_of("raw", "logical")
    ('file-qcow2', 'lvm')
    >>> storage_type_of("raw", "thinlvm")
    'thinlvm'
    """
    if pool_type in _POOL_TYPES["file"]:
        if fmt == FORMAT_QCOW2:
            return STORAGE_FILE_QCOW2
        if fmt == FORMAT_RAW:
            return STORAGE_FILE_RAW
    elif fmt == FORMAT_RAW and pool_type in _POOL_TYPES["lvm"]:
        return STORAGE_LVM
    elif fmt == FORMAT_RAW and pool_type in ("thinlvm", "logical-thin", "thin"):
        return STORAGE_THINLVM
    raise ValueError(f"no Ferry storage type for a {fmt} image on a {pool_type} pool")


def version_tuple(version: Optional[str]) -> tuple:
    """Return the numbers of a version string, for comparison.

    >>> version_tuple("11") < version_tuple("12") < version_tuple("12.1")
    True
    >>> version_tuple(None)
    ()
    """
    return tuple(int(n) for n in re.findall(r"\d+", version or ""))


def target_disk_bytes(disk: DiskInfo, target_type: str) -> int:
    """Return the bytes a disk takes on the destination in its target storage type.

    Raw files and LVM volumes take their full virtual size; qcow2 takes what
    is allocated plus its metadata; thin volumes what is allocated.

    >>> d = DiskInfo("/d.qcow2", "qcow2", "file-qcow2", 8 * 2**30, 2**30)
    >>> target_disk_bytes(d, "file-raw") == 8 * 2**30
    True
    >>> target_disk_bytes(d, "file-qcow2") - 2**30  # 1 MiB L2 + 256 KiB refcounts + 1 MiB
    2359296
    """
    if target_type in (STORAGE_FILE_RAW, STORAGE_LVM):
        return disk.virtual_size
    if target_type == STORAGE_THINLVM:
        return min(disk.allocation, disk.virtual_size)
    metadata = disk.virtual_size // 8192 + disk.virtual_size // 32768 + QCOW2_FIXED_OVERHEAD
    return min(disk.allocation, disk.virtual_size) + metadata


def _fact(facts: Mapping[str, Any], *keys: str) -> Any:
    """Return facts[k1][k2]..., or None when any level is missing."""
    value: Any = facts
    for key in keys:
        if not isinstance(value, Mapping) or key not in value:
            return None
        value = value[key]
    return value


def _pair(source: ResourceInfo, destination: ResourceInfo, *keys: str) -> tuple:
    """Return (source value, destination value, data dict) of one fact."""
    a, b = _fact(source.facts, *keys), _fact(destination.facts, *keys)
    return a, b, {"source": a, "destination": b}


def _gib(nbytes: float) -> str:
    """Format bytes as GiB for a sentence."""
    return f"{nbytes / 2**30:.1f} GiB"


def _pool_family(storage_type: str) -> str:
    """Return "file" or "lvm": which pools can hold a storage type."""
    return "file" if storage_type in FILE_TYPES else "lvm"


def _target_type(disk: DiskInfo, options: MigrationOptions) -> str:
    """Return the storage type a disk will have on the destination."""
    return options.convert_to or disk.storage_type


# ---------------------------------------------------------------- checks

def mixed_states(servers) -> str | None:
    """Why servers (anything with `name` and `state`: rows or ServerInfo) in different states
    cannot go together, or None when they share one. The one place this rule is judged: the
    dialog, the engine's request check and the preflight all ask here.

    >>> class S:
    ...     def __init__(self, name, state): self.name, self.state = name, state
    >>> mixed_states([S("web", "running"), S("db", "running")]) is None
    True
    >>> "(web is running, db is stopped)" in mixed_states([S("web", "running"), S("db", "stopped")])
    True
    """
    if len({s.state for s in servers}) <= 1:
        return None
    listing = ", ".join(f"{s.name} is {s.state}" for s in servers)
    return (f"Servers in different states cannot be migrated together ({listing}): select only "
            "running servers for a live migration, or only stopped ones for an offline migration.")


def check_same_state(servers: Sequence[ServerInfo]) -> CheckResult:
    """Check that every server of the selection is in the same state."""
    states = sorted({s.state for s in servers})
    data = {"states": {s.name: s.state for s in servers}}
    why = mixed_states(servers)
    if why is None:
        return CheckResult("same-state", PASS,
                           f"All selected servers are {states[0] if states else 'none'}.", data)
    return CheckResult("same-state", FAIL, why, data)


def check_state_fits_mode(servers: Sequence[ServerInfo], options: MigrationOptions) -> CheckResult:
    """Check that live migrations move running servers and offline ones stopped servers."""
    wanted = SERVER_RUNNING if options.live else SERVER_STOPPED
    wrong = [s.name for s in servers if s.state != wanted]
    data = {"wanted": wanted, "wrong": wrong}
    if not wrong:
        return CheckResult("state-fits-mode", PASS, f"Every server is {wanted}.", data)
    if options.live:
        advice = "Start them, or migrate them offline."
    else:
        advice = "Stop them first, or migrate them live."
    return CheckResult("state-fits-mode", FAIL, (
        f"A {'live' if options.live else 'offline'} migration needs {wanted} servers;"
        f" not {wanted}: {', '.join(wrong)}. {advice}"), data)


def check_destination_not_source(servers: Sequence[ServerInfo],
                                 destination: ResourceInfo) -> CheckResult:
    """Check that no server already sits on the destination."""
    here = [s.name for s in servers if s.resource == destination.name]
    if not here:
        return CheckResult("destination-not-source", PASS,
                           f"No selected server is on {destination.name} already.", {})
    return CheckResult("destination-not-source", FAIL, (
        f"{', '.join(here)} already {'runs' if len(here) == 1 else 'run'} on"
        f" {destination.name}: pick another destination."), {"servers": here})


def check_destination_active(destination: ResourceInfo) -> CheckResult:
    """Check that the destination is active (not in maintenance, not unreachable)."""
    data = {"status": destination.status}
    if destination.status == RESOURCE_ACTIVE:
        return CheckResult("destination-active", PASS, f"{destination.name} is active.", data)
    return CheckResult("destination-active", FAIL, (
        f"{destination.name} is {destination.status}: only an active compute resource can"
        " receive servers."), data)


def check_ip_addresses(server: ServerInfo, destination: ResourceInfo,
                       options: MigrationOptions, claimed: int = 0) -> CheckResult:
    """Check the server's IP blocks (Preserve IP) or free addresses (IP change).

    `claimed` counts the destination addresses already promised to servers
    checked before this one in the same group.
    """
    blocks = sorted({ip.block for ip in server.ip_addresses})
    if options.preserve_ip or options.live:  # a live move cannot change a running guest's IP
        missing = [b for b in blocks if b not in destination.ip_blocks]
        data = {"server": server.name, "blocks": blocks, "missing": missing}
        if missing:
            why = ("keeps its IP" if options.preserve_ip else
                   "keeps its IP (a live move cannot give a running server a new one)")
            return CheckResult("ip-addresses", FAIL, (
                f"{server.name} {why}, but its IP block {', '.join(missing)} is not"
                f" assigned to {destination.name}: assign it there first."), data)
        return CheckResult("ip-addresses", PASS, (
            f"{server.name} keeps its IP: {destination.name} has its IP block"
            f"{'s' if len(blocks) != 1 else ''} {', '.join(blocks) or '(none)'}."), data)
    needed = max(1, len(server.ip_addresses))
    free = sum(destination.free_addresses.get(b, 0) for b in destination.ip_blocks) - claimed
    data = {"server": server.name, "needed": needed, "free": max(free, 0)}
    if free < needed:
        return CheckResult("ip-addresses", FAIL, (
            f"{server.name} needs {needed} new address{'es' if needed != 1 else ''} but the"
            f" IP blocks of {destination.name} have {max(free, 0)} free."), data)
    return CheckResult("ip-addresses", PASS, (
        f"{server.name} gets a new address from {destination.name}'s IP blocks"
        f" ({free} free)."), data)


def _movable(disk: DiskInfo) -> bool:
    """A file disk (not under /dev) or a logical volume (under /dev), with a path."""
    if not disk.path:
        return False
    if disk.storage_type in FILE_TYPES:
        return not disk.path.startswith("/dev/")
    return disk.storage_type in LVM_TYPES and disk.path.startswith("/dev/")


def check_disk_types(server: ServerInfo, options: MigrationOptions) -> CheckResult:
    """Refuse only what the engine cannot do: network and pool-volume disks, a file under
    /dev, and live moves to or from LVM (the engine moves LVM and thin LVM offline)."""
    bad = [f"{d.path or '(no path)'} ({d.storage_type})" for d in server.disks if not _movable(d)]
    on_lvm = [f"{d.path} ({d.storage_type})" for d in server.disks
              if d.storage_type in LVM_TYPES and _movable(d)]
    data = {"server": server.name, "unsupported": bad, "lvm": on_lvm,
            "convert_to": options.convert_to}
    if bad:
        return CheckResult("disk-types", FAIL, (
            f"{server.name} has disks Ferry cannot move: {', '.join(bad)}. Ferry moves file"
            " disks (raw and qcow2) and, offline, LVM and thin LVM volumes; network and"
            " pool-volume disks are refused."), data)
    if options.live and (on_lvm or options.convert_to in LVM_TYPES):
        what = (f"{server.name} is on LVM ({', '.join(on_lvm)})" if on_lvm
                else f"{server.name} would be converted to {options.convert_to}")
        return CheckResult("disk-types", FAIL, (
            f"{what}: Ferry moves LVM and thin LVM volumes offline only (a live copy into or"
            " out of a logical volume is not built). Stop the server and migrate it offline."),
            data)
    kinds = "files and logical volumes" if on_lvm else "files"
    return CheckResult("disk-types", PASS, f"{server.name}'s disks are {kinds} Ferry can move.",
                       data)


def check_snapshots(server: ServerInfo) -> CheckResult:
    """Check that the server has no snapshots (libvirt refuses to migrate them)."""
    data = {"server": server.name, "snapshots": server.snapshot_count}
    if server.snapshot_count == 0:
        return CheckResult("snapshots", PASS, f"{server.name} has no snapshots.", data)
    return CheckResult("snapshots", FAIL, (
        f"{server.name} has {server.snapshot_count} snapshot"
        f"{'s' if server.snapshot_count != 1 else ''}: delete them before migrating."), data)


def check_ports(probes: Mapping[int, Union[str, bool, None]], from_name: str, to_name: str,
                required: Iterable[int] | None = None) -> CheckResult:
    """Turn port probes (port -> "ok" or error text, run on from_name) into a check.

    Every required port must have been probed and answered; any other probed
    port that failed fails the check too. By default the required ports are
    libvirt's first migration port and the export port the preflight probed
    (the one the next offline copy from this source would claim; 8081 when
    none was probed).

    >>> check_ports({8081: "ok", 49152: "Connection refused"}, "node1", "node2").status
    'fail'
    >>> check_ports({8083: "ok", 49152: "ok"}, "node1", "node2").data["ok"]
    [8083, 49152]
    >>> check_ports({49152: "ok"}, "node1", "node2").data["failed"]
    {8081: 'not probed'}
    """
    if required is None:
        export = [port for port in probes if port != MIGRATION_PORTS.start] or [NBD_PORT]
        required = [MIGRATION_PORTS.start] + export
    required = list(required)
    ok, bad = [], {}
    for port in sorted(set(probes) | set(required)):
        result = probes.get(port)
        if result is True or (isinstance(result, str) and result.strip().lower() == "ok"):
            ok.append(port)
        else:
            bad[port] = "not probed" if result in (None, False) else str(result).strip()
    data = {"from": from_name, "to": to_name, "ok": ok, "failed": bad}
    if not bad:
        return CheckResult("ports", PASS, (
            f"{to_name} accepts TCP {', '.join(map(str, ok))} from {from_name}."), data)
    detail = "; ".join(f"{port}: {why}" for port, why in bad.items())
    return CheckResult("ports", FAIL, (
        f"{from_name} cannot reach {to_name} on TCP {', '.join(map(str, bad))} ({detail}):"
        f" open TCP {NBD_PORT} and {MIGRATION_PORTS.start}-{MIGRATION_PORTS.stop - 1}"
        " between the two nodes."), data)


def check_memory(servers: Sequence[ServerInfo], destination: ResourceInfo,
                 options: MigrationOptions) -> CheckResult:
    """Check the destination's free memory for the group's servers.

    Live: not enough is a fail (the servers arrive running). Offline: a
    warning, since they arrive stopped and only starting them needs it.
    """
    need = sum(s.memory_mib for s in servers)
    free = _fact(destination.facts, "memory", "free_mib")
    data = {"needed_mib": need, "free_mib": free}
    if free is None:
        return CheckResult("memory", WARN, (
            f"Free memory on {destination.name} is unknown (no inventory facts): sync the"
            " compute resource to check it."), data)
    if need > free:
        status = FAIL if options.live else WARN
        tail = ("" if options.live else
                " They arrive stopped: starting all of them will not fit.")
        return CheckResult("memory", status, (
            f"The servers need {need} MiB of memory and {destination.name} has {free} MiB"
            f" free.{tail}"), data)
    if free - need < MEMORY_HEADROOM_MIB:
        return CheckResult("memory", WARN, (
            f"The servers need {need} MiB of memory, leaving only {free - need} MiB free on"
            f" {destination.name}."), data)
    return CheckResult("memory", PASS, (
        f"{destination.name} has {free} MiB of memory free for the {need} MiB needed."), data)


def check_disk_space(servers: Sequence[ServerInfo], destination: ResourceInfo,
                     options: MigrationOptions) -> CheckResult:
    """Check the destination's pools for the group's disks, counted in the target format."""
    need: dict[str, int] = {}
    to_lvm = 0  # counted by check_lvm_space, against the volume group or the thin pool
    for server in servers:
        for disk in server.disks:
            target = _target_type(disk, options)
            if target in LVM_TYPES:
                to_lvm += 1
                continue
            family = _pool_family(target)
            need[family] = need.get(family, 0) + target_disk_bytes(disk, target)
    pools = destination.facts.get("storage_pools") if destination.facts else None
    data: dict = {"needed_bytes": need, "pools": {}}
    if pools is None:
        return CheckResult("disk-space", WARN, (
            f"Free disk space on {destination.name} is unknown (no inventory facts): sync"
            " the compute resource to check it."), data)
    status, sentences = PASS, []
    for family, nbytes in sorted(need.items()):
        candidates = [p for p in pools if p.get("type") in _POOL_TYPES[family]]
        if not candidates:
            status = FAIL
            sentences.append(f"{destination.name} has no {family} storage pool for"
                             f" {_gib(nbytes)} of disks.")
            continue
        pool = max(candidates, key=lambda p: p.get("free_bytes") or 0)
        free = pool.get("free_bytes") or 0
        capacity = pool.get("capacity_bytes") or free
        data["pools"][family] = {"name": pool.get("name"), "free_bytes": free}
        if nbytes > free:
            status = FAIL
            sentences.append(f"the disks need {_gib(nbytes)} in their target format and"
                             f" pool {pool.get('name')} has {_gib(free)} free.")
        elif free - nbytes < capacity * DISK_HEADROOM_FRACTION:
            status = max(status, WARN, key=_SEVERITY.get)
            sentences.append(f"the disks need {_gib(nbytes)}, leaving pool {pool.get('name')}"
                             f" less than {DISK_HEADROOM_FRACTION:.0%} free.")
        else:
            sentences.append(f"pool {pool.get('name')} has {_gib(free)} free for"
                             f" {_gib(nbytes)} of disks in their target format.")
    if not need:
        sentences.append("every disk goes to LVM (the lvm-space check counts it)." if to_lvm
                         else "the servers have no disks to copy.")
    return CheckResult("disk-space", status,
                       f"On {destination.name}: {' '.join(sentences)}", data)


def check_lvm_space(servers: Sequence[ServerInfo], destination: ResourceInfo,
                    options: MigrationOptions) -> CheckResult:
    """Check the destination's LVM for the disks that go to LVM: the volume group's free room
    for thick volumes (their whole virtual size), the thin pool's data and metadata percent
    for thin ones (their allocation). The group and pool are those the engine picks (the
    most free; the lowest data percent)."""
    thick = sum(d.virtual_size for s in servers for d in s.disks
                if _target_type(d, options) == STORAGE_LVM)
    thin = sum(target_disk_bytes(d, STORAGE_THINLVM) for s in servers for d in s.disks
               if _target_type(d, options) == STORAGE_THINLVM)
    data: dict = {"thick_bytes": thick, "thin_bytes": thin}
    if not any(_target_type(d, options) in LVM_TYPES for s in servers for d in s.disks):
        return CheckResult("lvm-space", PASS, "No disk goes to LVM.", data)
    lvm = _fact(destination.facts or {}, "lvm")
    if not isinstance(lvm, dict):
        return CheckResult("lvm-space", FAIL, (
            f"Ferry does not know {destination.name}'s volume groups (no inventory facts):"
            " sync the compute resource."), data)
    targets = {_target_type(d, options) for s in servers for d in s.disks}
    verdicts = ([_thick_room(lvm, destination.name, thick, data)] if STORAGE_LVM in targets
                else []) + ([_thin_room(lvm, destination.name, thin, data)]
                            if STORAGE_THINLVM in targets else [])
    refused = [text for ok, text in verdicts if not ok]
    return CheckResult("lvm-space", FAIL if refused else PASS, f"On {destination.name}: "
                       + " ".join(refused or [text for _, text in verdicts]), data)


def _thick_room(lvm: dict, node: str, need: int, data: dict) -> tuple[bool, str]:
    """(fits, sentence) for thick volumes in the volume group with the most free room."""
    groups = [g for g in lvm.get("volume_groups") or [] if isinstance(g, dict)]
    if not groups:
        return False, f"{node} has no LVM volume group for {_gib(need)} of thick volumes."
    group = max(groups, key=lambda g: g.get("free") or 0)
    name, free = group.get("name"), group.get("free") or 0
    data["volume_group"] = {"name": name, "free": free}
    if need > free:
        return False, (f"volume group too small: {name} has {_gib(free)} free and the thick"
                       f" volumes need {_gib(need)} (their whole virtual size).")
    return True, f"volume group {name} has {_gib(free)} free for {_gib(need)} of thick volumes."


def _thin_room(lvm: dict, node: str, need: int, data: dict) -> tuple[bool, str]:
    """(fits, sentence) for thin volumes in the thin pool with the lowest data percent."""
    pool = min((p for p in lvm.get("thin_pools") or [] if isinstance(p, dict)),
               key=lambda p: p.get("data_percent") or 0.0, default=None)
    if pool is None:
        return False, f"{node} has no LVM thin pool for the thin volumes."
    name = f"{pool.get('vg')}/{pool.get('name')}"
    used, meta = pool.get("data_percent") or 0.0, pool.get("metadata_percent") or 0.0
    size = pool.get("size") or 0
    after = used + (100.0 * need / size if size else 100.0)
    data["thin_pool"] = {"name": name, "data_percent": used, "metadata_percent": meta,
                         "data_percent_after": round(after, 2)}
    if meta > THIN_METADATA_MAX_PERCENT:
        return False, (f"thin pool too full: {name}'s metadata is {meta:.1f}% used (Ferry"
                       f" refuses above {THIN_METADATA_MAX_PERCENT:.0f}%).")
    if after > THIN_DATA_MAX_PERCENT:
        return False, (f"thin pool too full: {name} is {used:.1f}% used and the thin volumes'"
                       f" {_gib(need)} would take it to {after:.1f}% (Ferry refuses above"
                       f" {THIN_DATA_MAX_PERCENT:.0f}%).")
    return True, (f"thin pool {name} is {used:.1f}% used ({after:.1f}% after the copy), its"
                  f" metadata {meta:.1f}%.")


def check_storage_tags(server: ServerInfo, destination: ResourceInfo) -> CheckResult:
    """Check that the storage tag of every disk exists on the destination."""
    tags = sorted({d.storage_tag for d in server.disks if d.storage_tag})
    missing = [t for t in tags if t not in destination.storage_tags]
    data = {"server": server.name, "tags": tags, "missing": missing}
    if missing:
        return CheckResult("storage-tags", FAIL, (
            f"{server.name}'s disks use storage tag{'s' if len(missing) != 1 else ''}"
            f" {', '.join(missing)}, which {destination.name} does not have."), data)
    if not tags:
        return CheckResult("storage-tags", PASS, f"{server.name}'s disks carry no storage tags.",
                           data)
    return CheckResult("storage-tags", PASS, (
        f"{destination.name} has the storage tags of {server.name}'s disks"
        f" ({', '.join(tags)})."), data)


def check_nbd(source: ResourceInfo, destination: ResourceInfo,
              options: MigrationOptions) -> CheckResult:
    """Check the nbd kernel module for an offline conversion (information at most)."""
    loaded = {r.name: _fact(r.facts, "nbd_module") for r in (source, destination)}
    data = {"nbd_module": loaded, "needed_by_ferry": False}
    if options.live or not options.convert_to:
        return CheckResult("nbd", PASS, "No offline storage conversion: nbd is not involved.",
                           data)
    missing = [name for name, ok in loaded.items() if not ok]
    if not missing:
        return CheckResult("nbd", PASS, "The nbd kernel module is available on both nodes.", data)
    return CheckResult("nbd", NBD_MISSING_STATUS, (
        f"The nbd kernel module is not loaded on {', '.join(missing)}. Ferry does not need"
        " it: the source disk is served by qemu-nbd over TCP and read by qemu-img in user"
        " space; load it (modprobe nbd) only if your own tools expect it."), data)


def check_transfer_security(source: ResourceInfo, destination: ResourceInfo,
                            setting: str) -> CheckResult:
    """Check that a move's disk and memory streams can use TLS when the site requires it.

    setting is FERRY_TRANSFER_SECURITY: "tls" fails without a valid certificate
    on both nodes; "auto" uses TLS where both have one and says so; "plain" never.

    >>> ok = {"tls": {"valid": True, "reason": "valid until 2028-01-01"}}
    >>> r = ResourceInfo("a", "active", ok)
    >>> check_transfer_security(r, ResourceInfo("b", "active", {}), "tls").status
    'fail'
    >>> check_transfer_security(r, ResourceInfo("b", "active", ok), "tls").status
    'pass'
    """
    verdicts = {r.name: _fact(r.facts, "tls") or {} for r in (source, destination)}
    data = {"setting": setting, "nodes": verdicts}
    lacking = [f"{name} ({v.get('reason') or 'no certificate found at the last sync'})"
               for name, v in verdicts.items() if not v.get("valid")]
    if setting == "plain":
        data["tls"] = False
        return CheckResult("transfer_security", PASS, (
            "Disk and memory streams go in clear: FERRY_TRANSFER_SECURITY is plain."), data)
    data["tls"] = not lacking
    if not lacking:
        return CheckResult("transfer_security", PASS, (
            f"Disk and memory streams between {source.name} and {destination.name} use TLS "
            "with certificates from Ferry's CA, checked on both ends."), data)
    if setting == "tls":
        return CheckResult("transfer_security", FAIL, (
            "FERRY_TRANSFER_SECURITY requires TLS, but these nodes have no valid certificate: "
            + "; ".join(lacking) + ". Run `flask --app wsgi pki issue NODE`, then sync."), data)
    return CheckResult("transfer_security", PASS, (
        "Disk and memory streams go in clear: no valid certificate on "
        + "; ".join(lacking) + " (`flask --app wsgi pki issue NODE` turns TLS on)."), data)


def check_os_distribution(source: ResourceInfo, destination: ResourceInfo) -> CheckResult:
    """Check (live) that both nodes run the same OS distribution."""
    a, b, data = _pair(source, destination, "os", "id")
    if not a or not b:
        return CheckResult("os-distribution", WARN, (
            "The OS distribution of "
            f"{source.name if not a else destination.name} is unknown: sync it to check."), data)
    if a != b:
        return CheckResult("os-distribution", FAIL, (
            f"{source.name} runs {a} and {destination.name} runs {b}: live migration needs the"
            " same OS distribution on both; migrate offline instead."), data)
    return CheckResult("os-distribution", PASS, f"Both nodes run {a}.", data)


def check_os_version(source: ResourceInfo, destination: ResourceInfo) -> CheckResult:
    """Check (live) that the destination's OS version is equal or newer."""
    a, b, data = _pair(source, destination, "os", "version_id")
    if not version_tuple(a) or not version_tuple(b):
        return CheckResult("os-version", WARN,
                           "An OS version is unknown: sync both nodes to check it.", data)
    if version_tuple(b) < version_tuple(a):
        return CheckResult("os-version", FAIL, (
            f"{destination.name} runs OS version {b}, older than {a} on {source.name}: a"
            " live migration needs the destination equal or newer."), data)
    same = version_tuple(a) == version_tuple(b)
    return CheckResult("os-version", PASS, (
        f"{destination.name} runs OS version {b}, {'the same as' if same else 'newer than'}"
        f" {a} on {source.name}."), data)


def check_cpu_vendor(source: ResourceInfo, destination: ResourceInfo) -> CheckResult:
    """Check (live) the same CPU vendor, from /proc/cpuinfo and from libvirt."""
    pairs = {
        "cpuinfo": (_fact(source.facts, "cpu", "cpuinfo", "vendor_id"),
                    _fact(destination.facts, "cpu", "cpuinfo", "vendor_id")),
        "libvirt": (_fact(source.facts, "cpu", "vendor"),
                    _fact(destination.facts, "cpu", "vendor")),
    }
    data = {k: {"source": a, "destination": b} for k, (a, b) in pairs.items()}
    differ = [f"{a} vs {b} ({k})" for k, (a, b) in pairs.items() if a and b and a != b]
    if differ:
        return CheckResult("cpu-vendor", FAIL, (
            f"{source.name} and {destination.name} have different CPU vendors"
            f" ({'; '.join(differ)}): a live migration would freeze or crash the server."),
            data)
    if any(not a or not b for a, b in pairs.values()):
        return CheckResult("cpu-vendor", WARN,
                           "A CPU vendor is unknown: sync both nodes to check it.", data)
    return CheckResult("cpu-vendor", PASS,
                       f"Both nodes have {pairs['cpuinfo'][0]} CPUs.", data)


def check_cpu_family(source: ResourceInfo, destination: ResourceInfo) -> CheckResult:
    """Check (live) the same CPU family (cpuinfo "cpu family")."""
    a, b, data = _pair(source, destination, "cpu", "cpuinfo", "family")
    if a in (None, "") or b in (None, ""):
        return CheckResult("cpu-family", WARN,
                           "A CPU family is unknown: sync both nodes to check it.", data)
    if str(a) != str(b):
        return CheckResult("cpu-family", FAIL, (
            f"{source.name} has CPU family {a} and {destination.name} family {b}: live"
            " migration needs the same CPU family; migrate offline instead."), data)
    return CheckResult("cpu-family", PASS, f"Both nodes have CPU family {a}.", data)


def check_cpu_compatibility(server_name: str, destination_name: str, result: Optional[int],
                            error: Optional[str] = None) -> CheckResult:
    """Turn the destination's compareHypervisorCPU result for the guest CPU into a check."""
    data = {"server": server_name, "result": result, "error": error}
    if result in (CPU_COMPARE_IDENTICAL, CPU_COMPARE_SUPERSET):
        return CheckResult("cpu-compatibility", PASS, (
            f"{destination_name}'s CPU provides everything {server_name}'s CPU uses."), data)
    if result == CPU_COMPARE_INCOMPATIBLE:
        return CheckResult("cpu-compatibility", FAIL, (
            f"{destination_name}'s CPU lacks features {server_name}'s CPU uses"
            f"{': ' + error if error else ''}; a live move would freeze or crash it. Migrate"
            " it offline instead."), data)
    # Not knowing is refused: a wrong guess freezes the server, and offline
    # migration is always there as the safe way.
    return CheckResult("cpu-compatibility", FAIL, (
        f"libvirt could not compare {server_name}'s CPU with {destination_name}'s"
        f"{': ' + error if error else ''}; migrate it offline instead."), data)


def check_nested_virtualization(source: ResourceInfo, destination: ResourceInfo) -> CheckResult:
    """Check (live) the same nested-virtualization setting on both nodes."""
    a, b, data = _pair(source, destination, "nested_virtualization")
    if a is None or b is None:
        return CheckResult("nested-virtualization", WARN,
                           "Nested virtualization is unknown on a node: sync both to check.",
                           data)
    if bool(a) != bool(b):
        return CheckResult("nested-virtualization", FAIL, (
            f"Nested virtualization is {'on' if a else 'off'} on {source.name} and"
            f" {'on' if b else 'off'} on {destination.name}: live migration needs the same"
            " setting on both."), data)
    return CheckResult("nested-virtualization", PASS, (
        f"Nested virtualization is {'on' if a else 'off'} on both nodes."), data)


def check_live_conversion(servers: Sequence[ServerInfo], options: MigrationOptions) -> CheckResult:
    """Check that a live conversion stays between file raw and file QCOW2."""
    data = {"convert_to": options.convert_to}
    if not options.live or not options.convert_to:
        return CheckResult("live-conversion", PASS, "No live storage conversion asked.", data)
    if options.convert_to not in FILE_TYPES:
        return CheckResult("live-conversion", FAIL, (
            f"A running server cannot be converted to {options.convert_to} live: libvirt's"
            " live disk copy writes into a file Ferry pre-creates on the destination, and an"
            " LVM volume would have to be created, sized and zeroed outside it. Stop the"
            " server and migrate it offline to convert it."), data)
    odd = sorted({f"{s.name} ({d.storage_type})" for s in servers for d in s.disks
                  if d.storage_type not in FILE_TYPES})
    if odd:
        data["not_file"] = odd
        return CheckResult("live-conversion", FAIL, (
            f"Live conversion works only between file raw and file QCOW2; these disks are"
            f" on LVM: {', '.join(odd)}. Migrate them offline to convert them."), data)
    return CheckResult("live-conversion", PASS, (
        f"Live conversion to {options.convert_to} is supported (file raw and file QCOW2)."),
        data)


def backup_file_owner(file_name: str, server_names: Iterable[str]) -> Optional[str]:
    """The server a backup file is named after, of the node's servers, or None: the longest
    name that is the file's first folder or starts its file name followed by ".", "-" or "_".

    >>> backup_file_owner("web1-2026-11-29.qcow2", ["web", "web1"])
    'web1'
    >>> backup_file_owner("web1/inc-3.qcow2", ["web1"]), backup_file_owner("web10.qcow2", ["web1"])
    ('web1', None)
    """
    first, _, rest = file_name.partition("/")
    base = file_name.rsplit("/", 1)[-1]
    owners = [n for n in server_names if n and (
        (rest and first == n) or base == n
        or (base.startswith(n) and base[len(n)] in _NAME_SEPARATORS))]
    return max(owners, key=len, default=None)


def backup_kind(file_name: str) -> str:
    """Incremental when the file's name has an inc/incr/incremental word, else full.

    >>> backup_kind("web1-inc-3.qcow2"), backup_kind("web1.incremental.qcow2")
    ('incremental', 'incremental')
    >>> backup_kind("web1-include.img")
    'full'
    """
    return BACKUP_INCREMENTAL if _INCREMENTAL_NAME.search(file_name) else BACKUP_FULL


def server_storage_type(disks: Sequence[DiskInfo]) -> Optional[str]:
    """The storage type a server's backups are taken on: thin LVM if any disk is thin (its
    incremental backups are the ones a conversion breaks), else its first disk's; None without
    disks."""
    types = [d.storage_type for d in disks]
    if STORAGE_THINLVM in types:
        return STORAGE_THINLVM
    return types[0] if types else None


def node_backups(server_name: str, uuid: str, disks: Sequence[DiskInfo],
                 facts: Mapping[str, Any], server_names: Iterable[str]) -> tuple:
    """The backups a node's facts show for one of its servers: every libvirt checkpoint of the
    domain (incremental) and every file of the backup directory named after the server (see
    backup_file_owner, of `server_names`: the node's servers), each taken on the server's
    storage type as it is now.

    >>> facts = {"checkpoints": {"u1": ["cp1"]},
    ...          "backup_dir": {"files": [{"name": "web1-inc-2.qcow2", "size": 1}]}}
    >>> [(b.origin, b.name, b.kind) for b in node_backups("web1", "u1", (), facts, ["web1"])]
    [('checkpoint', 'cp1', 'incremental'), ('file', 'web1-inc-2.qcow2', 'incremental')]
    """
    taken_on = server_storage_type(disks) or ""
    names = set(server_names) | {server_name}
    checkpoints = _fact(facts, "checkpoints", uuid) or []
    files = _fact(facts, "backup_dir", "files") or []
    found = [BackupInfo(BACKUP_INCREMENTAL, taken_on, name, BACKUP_CHECKPOINT)
             for name in checkpoints if isinstance(name, str)]
    found += [BackupInfo(backup_kind(f["name"]), taken_on, f["name"], BACKUP_FILE)
              for f in files if isinstance(f, Mapping) and isinstance(f.get("name"), str)
              and backup_file_owner(f["name"], names) == server_name]
    return tuple(found)


def _listed(names: Sequence[str], limit: int = 5) -> str:
    """Names for a sentence, the first few and how many more.

    >>> _listed(["a", "b"]), _listed([str(i) for i in range(7)], 3)
    ('a, b', '0, 1, 2 and 4 more')
    """
    shown = ", ".join(names[:limit])
    return shown if len(names) <= limit else f"{shown} and {len(names) - limit} more"


def backup_restorable(backup: BackupInfo, target_type: str) -> bool:
    """Return whether a backup restores onto a server on target_type (PRODUCT.md table).

    >>> backup_restorable(BackupInfo("incremental", "thinlvm"), "lvm")
    False
    >>> backup_restorable(BackupInfo("full", "thinlvm"), "file-raw")
    True
    """
    if backup.kind == BACKUP_INCREMENTAL and backup.storage_type == STORAGE_THINLVM:
        return target_type == STORAGE_THINLVM
    return True


def check_backups(server: ServerInfo, options: MigrationOptions) -> CheckResult:
    """Warn, naming them, when a conversion would leave some of the server's backups
    unrestorable (the reference's table: a ThinLVM incremental chain restores onto ThinLVM only)."""
    data = {"server": server.name, "convert_to": options.convert_to}
    if not options.convert_to:
        return CheckResult("backups", PASS,
                           f"{server.name}'s storage type does not change: backups unaffected.",
                           data)
    lost = [b for b in server.backups if not backup_restorable(b, options.convert_to)]
    data["unrestorable"] = [b.name for b in lost]
    if lost:
        return CheckResult("backups", WARN, (
            f"After converting {server.name} to {options.convert_to}, {len(lost)} of its"
            f" {len(server.backups)} backups can no longer be restored (a ThinLVM incremental"
            f" chain restores onto ThinLVM only): {_listed([b.name for b in lost])}."), data)
    return CheckResult("backups", PASS, (
        f"All of {server.name}'s backups stay restorable after the conversion."), data)


def check_checkpoints(server: ServerInfo) -> CheckResult:
    """Warn when the server has libvirt checkpoints: none moves with it.

    Measured on the lab (libvirt 9.0): after a live move the destination lists no checkpoint
    and the source's went with its definition; Ferry's offline copy (qemu-img convert without
    --bitmaps) does not carry the disks' bitmaps either. The incremental chain ends there.
    """
    names = [b.name for b in server.backups if b.origin == BACKUP_CHECKPOINT]
    data = {"server": server.name, "checkpoints": names}
    if not names:
        return CheckResult("checkpoints", PASS, f"{server.name} has no libvirt checkpoints.", data)
    return CheckResult("checkpoints", WARN, (
        f"{server.name}'s libvirt checkpoint{'s' if len(names) != 1 else ''}"
        f" {_listed(names)} cannot move with it: libvirt keeps checkpoints on {server.resource}"
        " only (the destination lists none after a move). Its incremental backup chain ends;"
        " take a full backup after the move."), data)


def check_backup_files(server: ServerInfo) -> CheckResult:
    """Warn when the source's backup directory holds files named after the server: they stay."""
    names = [b.name for b in server.backups if b.origin == BACKUP_FILE]
    data = {"server": server.name, "files": names}
    if not names:
        return CheckResult("backup-files", PASS, (
            f"{server.resource}'s backup directory holds no backup of {server.name}."), data)
    return CheckResult("backup-files", WARN, (
        f"{server.resource}'s backup directory holds {len(names)} backup"
        f"{'s' if len(names) != 1 else ''} of {server.name} ({_listed(names)}): Ferry does not"
        f" move them, they stay on {server.resource}."), data)


def check_backup_restore_space(server: ServerInfo, destination: ResourceInfo,
                               options: MigrationOptions) -> CheckResult:
    """Warn when a conversion away from file QCOW2 meets a temporary backup directory on the
    destination that could not hold the server's allocated size.

    Restoring a file QCOW2 backup onto a raw/LVM/ThinLVM server first writes the whole data
    set to that directory (PRODUCT.md). The server's backups taken so far were taken on QCOW2,
    wherever they are kept (Ferry sees only its nodes), so the conversion itself is the signal.
    """
    converted = [d for d in server.disks if d.storage_type == STORAGE_FILE_QCOW2
                 and _target_type(d, options) != STORAGE_FILE_QCOW2]
    need = sum(min(d.allocation, d.virtual_size) for d in server.disks)
    free = _fact(destination.facts, "backup_dir", "free_bytes")
    path = _fact(destination.facts, "backup_dir", "path") or "(unknown)"
    data = {"server": server.name, "needed_bytes": need, "free_bytes": free, "path": path}
    if not converted:
        return CheckResult("backup-restore-space", PASS, (
            f"{server.name} leaves no file QCOW2 disk: restoring its backups needs no"
            f" temporary space on {destination.name}."), data)
    if free is None:
        return CheckResult("backup-restore-space", WARN, (
            f"The free space of {destination.name}'s temporary backup directory {path} is"
            f" unknown: restoring {server.name}'s file QCOW2 backups once it is"
            f" {options.convert_to} needs {_gib(need)} there."), data)
    if free < need:
        return CheckResult("backup-restore-space", WARN, (
            f"Restoring {server.name}'s file QCOW2 backups once it is {options.convert_to}"
            f" writes its {_gib(need)} allocated to {destination.name}'s temporary backup"
            f" directory {path}, which has {_gib(free)} free."), data)
    return CheckResult("backup-restore-space", PASS, (
        f"{destination.name}'s temporary backup directory can hold a QCOW2 restore of"
        f" {server.name} ({_gib(need)} of {_gib(free)} free)."), data)


# ---------------------------------------------------------------- together

def run_database_checks(servers: Sequence[ServerInfo], destination: ResourceInfo,
                        options: MigrationOptions) -> list[CheckResult]:
    """The checks that need nothing from a node, only what the database holds: run first, so
    a request they refuse is refused without logging in anywhere. run_checks runs them too."""
    results = [check_same_state(servers), check_state_fits_mode(servers, options),
               check_destination_not_source(servers, destination),
               check_destination_active(destination), check_live_conversion(servers, options)]
    claimed = 0
    for server in servers:
        ip = check_ip_addresses(server, destination, options, claimed)
        claimed += ip.data.get("needed", 0)
        results += [ip, check_disk_types(server, options), check_snapshots(server),
                    check_storage_tags(server, destination), check_backups(server, options),
                    check_checkpoints(server), check_backup_files(server)]
    return results


def run_checks(servers: Sequence[ServerInfo], sources: Mapping[str, ResourceInfo],
               destination: ResourceInfo, options: MigrationOptions,
               port_probes: Mapping[str, Mapping[int, Union[str, bool, None]]],
               cpu_results: Optional[Mapping[str, tuple]] = None,
               transfer_security: str = "auto") -> list[CheckResult]:
    """Run every check for a group; sources by name, probes by source name.

    cpu_results maps server name -> (compareHypervisorCPU code, error text or
    None); only live migrations read it.
    """
    results = [
        check_same_state(servers),
        check_state_fits_mode(servers, options),
        check_destination_not_source(servers, destination),
        check_destination_active(destination),
    ]
    claimed = 0
    for server in servers:
        ip = check_ip_addresses(server, destination, options, claimed)
        claimed += ip.data.get("needed", 0)
        results += [ip, check_disk_types(server, options), check_snapshots(server), check_storage_tags(server, destination),
                    check_backups(server, options), check_checkpoints(server),
                    check_backup_files(server),
                    check_backup_restore_space(server, destination, options)]
    involved = [sources[name] for name in sorted({s.resource for s in servers}) if name in sources]
    for source in involved:
        results.append(check_ports(port_probes.get(source.name, {}), source.name,
                                   destination.name))
        results.append(check_nbd(source, destination, options))
        results.append(check_transfer_security(source, destination, transfer_security))
    results += [check_memory(servers, destination, options),
                check_disk_space(servers, destination, options),
                check_lvm_space(servers, destination, options),
                check_live_conversion(servers, options)]
    if options.live:
        for source in involved:
            results += [check_os_distribution(source, destination),
                        check_os_version(source, destination),
                        check_cpu_vendor(source, destination),
                        check_cpu_family(source, destination),
                        check_nested_virtualization(source, destination)]
        for server in servers:
            code, error = (cpu_results or {}).get(server.name, (None, "not compared"))
            results.append(check_cpu_compatibility(server.name, destination.name, code, error))
    return results


def summarize(results: Sequence[CheckResult]) -> Summary:
    """Return the overall status and whether warnings need an acknowledgement (information
    counts, but neither changes the status nor asks for anything).

    >>> s = summarize([CheckResult("a", PASS, ""), CheckResult("b", WARN, "")])
    >>> s.status, s.needs_acknowledgement
    ('warn', True)
    """
    counts = {PASS: 0, INFO: 0, WARN: 0, FAIL: 0}
    for r in results:
        counts[r.status] += 1
    status = max((r.status for r in results if r.status != INFO), key=_SEVERITY.get,
                 default=PASS)
    return Summary(
        status=status,
        needs_acknowledgement=counts[WARN] > 0,
        counts=counts,
        failed=tuple(r.name for r in results if r.status == FAIL),
        warned=tuple(r.name for r in results if r.status == WARN),
    )


def may_start(results: Sequence[CheckResult], acknowledged: bool) -> bool:
    """Return whether a group may start: no fail, and warnings acknowledged."""
    summary = summarize(results)
    return summary.status != FAIL and (acknowledged or not summary.needs_acknowledgement)
