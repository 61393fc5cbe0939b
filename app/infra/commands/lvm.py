"""Logical volume inventory: the `lvs` report command and a strict parser for what it prints.

`lvs` runs on a compute node, so its output is untrusted input: the parser
accepts only the JSON shape lvm2 documents (`{"report": [{"lv": [{...}]}]}`,
every field a string) and refuses anything else with `UnexpectedOutput`,
naming what was wrong, rather than guessing. The inventory turns that into a
failed sync of that one node, recording nothing.
"""
import json
import posixpath
import re
from dataclasses import dataclass, replace

from app import status
from app.errors import FerryError

FIELDS = ("lv_path", "lv_dm_path", "segtype", "pool_lv", "lv_size", "data_percent")
# Sizes in plain bytes ("1073741824", not "1.00g"), every LV of every VG.
LVS = ["lvs", "--reportformat", "json", "--units", "b", "--nosuffix", "-o", ",".join(FIELDS)]
THIN = "thin"  # the segment type of a thin volume; a thin pool is "thin-pool"

_SEGTYPE = re.compile(r"^[a-z0-9][a-z0-9_+-]{0,31}$")
_LVM_NAME = re.compile(r"^[A-Za-z0-9+_.][A-Za-z0-9+_.-]{0,126}$")
_PERCENT = re.compile(r"^\d{1,3}(\.\d{1,6})?$")
_MAX_SIZE = 1 << 60  # an exbibyte: anything larger is not a real volume


class UnexpectedOutput(FerryError):
    """A node printed something other than the documented shape; nothing was recorded."""


@dataclass(frozen=True)
class LogicalVolume:
    """One logical volume as lvs reports it."""

    path: str
    dm_path: str | None
    segtype: str
    pool: str | None
    size: int
    data_percent: float | None

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

        >>> LogicalVolume("/dev/vg/t", None, "thin", "pool", 1000, 12.5).allocation
        125
        >>> LogicalVolume("/dev/vg/l", None, "linear", None, 1000, None).allocation
        1000
        """
        if self.thin:
            return int(self.size * (self.data_percent or 0.0) / 100)
        return self.size


def _text(lv, key, index):
    """The string value of one field; lvs prints every field as a string."""
    value = lv.get(key, "")
    if not isinstance(value, str) or "\0" in value or len(value) > 4096:
        raise UnexpectedOutput(f"lvs: volume {index} has a non-text {key}: {value!r:.80}")
    return value.strip()


def _device(value, key, index):
    """An absolute, normalised /dev path, or None when lvs left it empty."""
    if not value:
        return None
    if not value.startswith("/dev/") or posixpath.normpath(value) != value:
        raise UnexpectedOutput(f"lvs: volume {index} has an odd {key}: {value!r:.80}")
    return value


def _volume(lv, index):
    """One LogicalVolume from one entry of the report (None for a volume with no device)."""
    if not isinstance(lv, dict):
        raise UnexpectedOutput(f"lvs: volume {index} is not an object: {lv!r:.80}")
    path = _device(_text(lv, "lv_path", index), "lv_path", index)
    if path is None:  # thin pools and hidden volumes: nothing a server can use
        return None
    segtype = _text(lv, "segtype", index)
    if not _SEGTYPE.match(segtype):
        raise UnexpectedOutput(f"lvs: {path} has an odd segtype: {segtype!r:.80}")
    pool = _text(lv, "pool_lv", index) or None
    if pool is not None and not _LVM_NAME.match(pool):
        raise UnexpectedOutput(f"lvs: {path} has an odd pool_lv: {pool!r:.80}")
    size = _text(lv, "lv_size", index)
    if not size.isdigit() or not 0 < int(size) <= _MAX_SIZE:
        raise UnexpectedOutput(f"lvs: {path} has a size that is not bytes: {size!r:.80}")
    percent = _text(lv, "data_percent", index)
    if percent and (not _PERCENT.match(percent) or float(percent) > 100):
        raise UnexpectedOutput(f"lvs: {path} has an odd data_percent: {percent!r:.80}")
    return LogicalVolume(path, _device(_text(lv, "lv_dm_path", index), "lv_dm_path", index),
                         segtype, pool, int(size), float(percent) if percent else None)


def parse_lvs(text):
    """{device path: LogicalVolume} from `LVS` output, by lv_path and by /dev/mapper path.

    >>> out = '{"report": [{"lv": [{"lv_path": "/dev/vg/web", "lv_dm_path": "/dev/mapper/vg-web",'
    >>> out += ' "segtype": "thin", "pool_lv": "pool", "lv_size": "1073741824", "data_percent": "2.50"}]}]}'
    >>> sorted(parse_lvs(out)), parse_lvs(out)["/dev/vg/web"].allocation
    (['/dev/mapper/vg-web', '/dev/vg/web'], 26843545)
    """
    try:
        doc = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise UnexpectedOutput(f"lvs did not print JSON ({exc}): {text.strip()[:80]!r}") from exc
    reports = doc.get("report") if isinstance(doc, dict) else None
    if not isinstance(reports, list) or not all(isinstance(r, dict) for r in reports):
        raise UnexpectedOutput(f"lvs printed JSON without a report list: {text.strip()[:80]!r}")
    volumes = {}
    for report in reports:
        entries = report.get("lv", [])
        if not isinstance(entries, list):
            raise UnexpectedOutput(f"lvs: the report's lv is not a list: {entries!r:.80}")
        for index, entry in enumerate(entries):
            volume = _volume(entry, index)
            if volume is not None:
                for path in filter(None, (volume.path, volume.dm_path)):
                    volumes[path] = volume
    return volumes


def with_volume(disk, volumes):
    """A block disk typed and sized from its logical volume, when lvs reported it.

    disk: app.infra.libvirt.DiskInfo; volumes: `parse_lvs` output. A file disk, or
    a block device that is no logical volume, comes back unchanged (libvirt's view).
    """
    volume = volumes.get(disk.path) if disk.disk_type == "block" else None
    if volume is None:
        return disk
    return replace(disk, storage_type=volume.storage_type, virtual_size=volume.size,
                   allocation=volume.allocation)
