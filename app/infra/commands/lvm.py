"""LVM inventory: the `lvs` and `vgs` report commands and strict parsers for what they print.

Both run on a compute node, so their output is untrusted input: the parsers
accept only the JSON shape lvm2 documents (`{"report": [{"lv": [{...}]}]}`,
every field a string) and refuse anything else with `UnexpectedOutput`,
naming what was wrong, rather than guessing. The inventory turns that into a
failed sync of that one node, recording nothing.
"""
import json
import posixpath
import re
import shlex
from dataclasses import dataclass, replace

from app import status
from app.errors import UnexpectedAnswer

LV_FIELDS = ("vg_name", "lv_name", "lv_path", "lv_dm_path", "segtype", "pool_lv", "lv_size",
             "data_percent", "metadata_percent")
VG_FIELDS = ("vg_name", "vg_size", "vg_free")
# Sizes in plain bytes ("1073741824", not "1.00g"); every LV (VG) of the node.
_REPORT = ["--reportformat", "json", "--units", "b", "--nosuffix", "-o"]
LVS = ["lvs", *_REPORT, ",".join(LV_FIELDS)]
VGS = ["vgs", *_REPORT, ",".join(VG_FIELDS)]
# Both in one SSH round trip (a constant script: nothing from the database is in it).
SEPARATOR = "--ferry-lvs--"
REPORT = ["sh", "-c", f"{shlex.join(VGS)}; echo {SEPARATOR}; {shlex.join(LVS)}"]
THIN = "thin"  # the segment type of a thin volume
THIN_POOL = "thin-pool"

_SEGTYPE = re.compile(r"^[a-z0-9][a-z0-9_+-]{0,31}$")
_LVM_NAME = re.compile(r"^[A-Za-z0-9+_.][A-Za-z0-9+_.-]{0,126}$")
_PERCENT = re.compile(r"^\d{1,3}(\.\d{1,6})?$")
_MAX_SIZE = 1 << 60  # an exbibyte: anything larger is not a real volume


class UnexpectedOutput(UnexpectedAnswer):
    """A node printed something other than the documented shape; nothing was recorded."""


@dataclass(frozen=True)
class LogicalVolume:
    """One logical volume as lvs reports it (a thin pool has no device path)."""

    vg: str
    name: str
    path: str | None
    dm_path: str | None
    segtype: str
    pool: str | None
    size: int
    data_percent: float | None
    metadata_percent: float | None = None

    @property
    def thin(self):
        """True for a thin volume (allocated from a thin pool on write)."""
        return self.segtype == THIN

    @property
    def storage_type(self):
        """Ferry's storage type: thin LVM for a thin volume, LVM for every other segment type."""
        return status.STORAGE_THINLVM if self.thin else status.STORAGE_LVM

    @property
    def allocation(self):
        """Bytes the volume holds: a thin one by its data percent, a thick one all of it.

        >>> LogicalVolume("vg", "t", "/dev/vg/t", None, "thin", "pool", 1000, 12.5).allocation
        125
        >>> LogicalVolume("vg", "l", "/dev/vg/l", None, "linear", None, 1000, None).allocation
        1000
        """
        if self.thin:
            return int(self.size * (self.data_percent or 0.0) / 100)
        return self.size


@dataclass(frozen=True)
class VolumeGroup:
    """One volume group and its unallocated room, as vgs reports it."""

    name: str
    size: int
    free: int


def _rows(text, command, key):
    """The rows of an lvm2 JSON report, after checking its shape."""
    try:
        doc = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise UnexpectedOutput(f"{command} did not print JSON ({exc}): "
                               f"{text.strip()[:80]!r}") from exc
    reports = doc.get("report") if isinstance(doc, dict) else None
    if not isinstance(reports, list) or not all(isinstance(r, dict) for r in reports):
        raise UnexpectedOutput(f"{command} printed JSON without a report list: "
                               f"{text.strip()[:80]!r}")
    rows = []
    for report in reports:
        entries = report.get(key, [])
        if not isinstance(entries, list):
            raise UnexpectedOutput(f"{command}: the report's {key} is not a list: {entries!r:.80}")
        for index, entry in enumerate(entries):
            if not isinstance(entry, dict):
                raise UnexpectedOutput(f"{command}: row {index} is not an object: {entry!r:.80}")
            rows.append(entry)
    return rows


def _text(row, key, where):
    """The string value of one field; lvm prints every field as a string."""
    value = row.get(key, "")
    if not isinstance(value, str) or "\0" in value or len(value) > 4096:
        raise UnexpectedOutput(f"{where} has a non-text {key}: {value!r:.80}")
    return value.strip()


def _name(row, key, where, required=True):
    """An LVM name (VG, LV, pool), or None when it may be empty and is."""
    value = _text(row, key, where)
    if not value and not required:
        return None
    if not _LVM_NAME.match(value):
        raise UnexpectedOutput(f"{where} has an odd {key}: {value!r:.80}")
    return value


def _device(row, key, where):
    """An absolute, normalised /dev path, or None when lvs left it empty."""
    value = _text(row, key, where)
    if not value:
        return None
    if not value.startswith("/dev/") or posixpath.normpath(value) != value:
        raise UnexpectedOutput(f"{where} has an odd {key}: {value!r:.80}")
    return value


def _bytes(row, key, where, zero_ok=False):
    """A size in bytes, as --units b --nosuffix prints it."""
    value = _text(row, key, where)
    if not value.isdigit() or not (0 if zero_ok else 1) <= int(value) <= _MAX_SIZE:
        raise UnexpectedOutput(f"{where} has a {key} that is not bytes: {value!r:.80}")
    return int(value)


def _percent(row, key, where):
    """A percentage (0-100), or None when lvs left it empty."""
    value = _text(row, key, where)
    if value and (not _PERCENT.match(value) or float(value) > 100):
        raise UnexpectedOutput(f"{where} has an odd {key}: {value!r:.80}")
    return float(value) if value else None


def parse_lvs(text):
    """Every LogicalVolume in `LVS` output, thin pools included.

    >>> out = '{"report": [{"lv": [{"vg_name": "vg", "lv_name": "web", "lv_path": "/dev/vg/web",'
    >>> out += ' "segtype": "thin", "pool_lv": "pool", "lv_size": "1073741824", "data_percent": "2.50"}]}]}'
    >>> [(v.path, v.storage_type, v.allocation) for v in parse_lvs(out)]
    [('/dev/vg/web', 'thinlvm', 26843545)]
    """
    volumes = []
    for index, row in enumerate(_rows(text, "lvs", "lv")):
        where = f"lvs: volume {index}"
        vg, name = _name(row, "vg_name", where), _name(row, "lv_name", where)
        where = f"lvs: {vg}/{name}"
        segtype = _text(row, "segtype", where)
        if not _SEGTYPE.match(segtype):
            raise UnexpectedOutput(f"{where} has an odd segtype: {segtype!r:.80}")
        volumes.append(LogicalVolume(
            vg, name, _device(row, "lv_path", where), _device(row, "lv_dm_path", where),
            segtype, _name(row, "pool_lv", where, required=False),
            _bytes(row, "lv_size", where), _percent(row, "data_percent", where),
            _percent(row, "metadata_percent", where)))
    return volumes


def parse_vgs(text):
    """Every VolumeGroup in `VGS` output."""
    groups = []
    for index, row in enumerate(_rows(text, "vgs", "vg")):
        name = _name(row, "vg_name", f"vgs: group {index}")
        groups.append(VolumeGroup(name, _bytes(row, "vg_size", f"vgs: {name}"),
                                  _bytes(row, "vg_free", f"vgs: {name}", zero_ok=True)))
    return groups


def parse_report(text):
    """(volume groups, logical volumes) from `REPORT` output; a part with no output
    (no lvm2 on the node: "vgs: not found" goes to stderr) reads as none.

    >>> parse_report("--ferry-lvs--\\n")
    ([], [])
    """
    lines = text.splitlines()
    if lines.count(SEPARATOR) != 1:
        raise UnexpectedOutput(f"the LVM report is not two parts: {text.strip()[:80]!r}")
    at = lines.index(SEPARATOR)
    vgs_text, lvs_text = "\n".join(lines[:at]), "\n".join(lines[at + 1:])
    return (parse_vgs(vgs_text) if vgs_text.strip() else [],
            parse_lvs(lvs_text) if lvs_text.strip() else [])


def by_device(volumes):
    """{device path: LogicalVolume}, by lv_path and by /dev/mapper path.

    Only volumes with an lv_path: a thin pool (or a hidden volume) is no server's disk.
    """
    return {path: v for v in volumes if v.path for path in (v.path, v.dm_path) if path}


def facts(groups, volumes):
    """The node's LVM as the inventory records it (facts["lvm"]): groups and thin pools.

    >>> facts([VolumeGroup("vg", 100, 40)],
    ...       [LogicalVolume("vg", "pool", None, None, "thin-pool", None, 60, 50.0, 10.0)])
    {'volume_groups': [{'name': 'vg', 'size': 100, 'free': 40}], 'thin_pools': [{'vg': 'vg', 'name': 'pool', 'size': 60, 'data_percent': 50.0, 'metadata_percent': 10.0}]}
    """
    return {
        "volume_groups": [{"name": g.name, "size": g.size, "free": g.free} for g in groups],
        "thin_pools": [{"vg": v.vg, "name": v.name, "size": v.size,
                        "data_percent": v.data_percent, "metadata_percent": v.metadata_percent}
                       for v in volumes if v.segtype == THIN_POOL],
    }


def with_volume(disk, volumes):
    """A block disk typed and sized from its logical volume, when lvs reported it (sized by
    its slice when the definition slices it: the guest sees that, not the whole volume).

    disk: app.infra.libvirt.DiskInfo; volumes: `by_device` of `parse_lvs`. A file
    disk, or a block device that is no logical volume, comes back unchanged.
    """
    volume = volumes.get(disk.path) if disk.disk_type == "block" else None
    if volume is None:
        return disk
    return replace(disk, storage_type=volume.storage_type,
                   virtual_size=disk.slice or volume.size,
                   allocation=volume.allocation)
