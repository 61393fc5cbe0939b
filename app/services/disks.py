"""What a move carries: the disks' plan (paths and formats on both sides), NVRAM and TPM state.

Pure functions over a domain's XML and the inventory, shared by the live and
offline runners and by the preflight.
"""
from __future__ import annotations

import posixpath

from app import status
from app.errors import FerryError
from app.infra import migration as mig
from app.infra.commands import storage

FILE_FORMATS = {status.STORAGE_FILE_RAW: "raw", status.STORAGE_FILE_QCOW2: "qcow2"}
LVM_TYPES = (status.STORAGE_LVM, status.STORAGE_THINLVM)
SWTPM_DIR = "/var/lib/libvirt/swtpm"


class UnsupportedDisk(FerryError):
    """A disk the engine cannot move (block, network or volume), named with its reason."""


def target_path(path: str, fmt: str) -> str:
    """The destination path of a disk converted to fmt: same folder and name, the format's suffix.

    >>> target_path("/var/lib/libvirt/images/web.qcow2", "raw")
    '/var/lib/libvirt/images/web.raw'
    >>> target_path("/img/db", "qcow2")
    '/img/db.qcow2'
    """
    root, ext = posixpath.splitext(path)
    if ext in (".raw", ".qcow2", ".img"):
        return f"{root}.{fmt}"
    return f"{path}.{fmt}"


def unsupported(disks: list[dict], block_ok: bool = False) -> list[str]:
    """Why each disk the engine cannot move is refused (empty when every disk is a file, or
    with `block_ok` (offline) a file or a block device: whether that is a logical volume is
    `storage_plan`'s to tell).

    >>> unsupported([{"target": "vda", "path": "/img/a", "type": "file"},
    ...              {"target": "vdb", "path": "/dev/vg0/db", "type": "block"}])
    ['vdb is a block device (/dev/vg0/db): Ferry moves file disks only']
    """
    reasons = []
    for disk in disks:
        kind = disk.get("type") or "file"
        if disk.get("slices") and not (block_ok and kind == "block" and _plain_slice(disk)):
            reasons.append(f"{disk.get('target')} has a slice of its storage "
                           f"({disk.get('path') or 'no path'}): Ferry carries only a raw logical "
                           "volume's storage slice from offset 0, offline")
            continue
        if kind in (("file", "block") if block_ok else ("file",)) and disk.get("path"):
            continue
        what = {"block": "a block device", "network": "a network disk",
                "volume": "a storage-pool volume"}.get(kind, f"a disk of type {kind!r}")
        if kind == "file":
            what = "a file disk without a source"
        reasons.append(f"{disk.get('target')} is {what} ({disk.get('path') or 'no path'}): "
                       "Ferry moves file disks only")
    return reasons


def _plain_slice(disk: dict) -> int | None:
    """The size of a disk's one storage slice from offset 0 (the guest's size of a logical
    volume lvm made larger), or None for any other slicing."""
    slices = disk.get("slices") or []
    if len(slices) != 1 or disk.get("format") != "raw":
        return None
    kind, offset, size = slices[0]
    if kind != "storage" or str(offset) != "0" or not str(size or "").isdigit():
        return None
    return int(size) if 0 < int(size) <= 1 << 60 else None


def sliced(disk: dict) -> int | None:
    """The size a disk's guest sees when its definition slices its storage (Ferry slices a
    logical volume whose extents run past the disk's size), or None when it is not sliced;
    `unsupported` refuses every other slicing first.

    >>> sliced({"format": "raw", "slices": [["storage", "0", "1074790912"]]})
    1074790912
    >>> sliced({"format": "raw", "slices": []}) is None
    True
    """
    return _plain_slice(disk) if disk.get("slices") else None


def disk_plan(disks: list[dict], convert_to: str | None) -> list[dict]:
    """For each disk: source path/format and destination path/format.

    >>> disk_plan([{"target": "vda", "path": "/i/w.qcow2", "format": "qcow2"}], "file-raw")[0]["dst_path"]
    '/i/w.raw'
    """
    fmt = FILE_FORMATS.get(convert_to)
    plan = []
    for disk in disks:
        dst_fmt = fmt or disk["format"]
        dst_path = disk["path"] if dst_fmt == disk["format"] else target_path(disk["path"], dst_fmt)
        plan.append({**disk, "dst_path": dst_path, "dst_format": dst_fmt})
    return plan


def plan_for(xml: str, convert_to: str | None, extra_xml: str | None = None) -> list[dict]:
    """The plan of a domain's disks; with `extra_xml` (the persistent definition of a running
    domain) a disk found only there is refused, since a live move would strand it."""
    if convert_to in LVM_TYPES:
        raise UnsupportedDisk(f"a live move cannot convert to {convert_to}: Ferry moves into "
                              "and out of LVM offline only")
    disks = mig.disk_targets(xml)
    reasons = unsupported(disks)
    if extra_xml is not None:
        running = {d["target"] for d in disks}
        for disk in mig.disk_targets(extra_xml):
            if disk["target"] not in running:
                reasons.append(f"{disk['target']} ({disk['path']}) is in the persistent definition "
                               "only: a live move copies the running domain's disks and would "
                               "strand it; attach it or move the server offline")
    if reasons:
        raise UnsupportedDisk("; ".join(reasons))
    return disk_plan(disks, convert_to)


def storage_plan(disks: list[dict], convert_to: str | None, volumes: dict, facts: dict,
                 node: str) -> list[dict]:
    """The offline plan of a domain's disks, logical volumes included: for each disk its
    source kind ("file", "lvm", "thinlvm"; an LV's vg and name), its destination kind and
    path (a new LV: vg, thin pool, name; a file: path and format).

    `volumes` maps the source's device paths to its logical volumes (lvm.by_device);
    `facts` are the destination's inventory facts (file pools, facts["lvm"]).

    >>> facts = {"storage_pools": [{"name": "default", "type": "dir", "path": "/img"}],
    ...          "lvm": {"volume_groups": [{"name": "vg", "size": 9, "free": 5}],
    ...                  "thin_pools": [{"vg": "vg", "name": "tp", "data_percent": 3.0}]}}
    >>> d = [{"target": "vda", "path": "/img/web.qcow2", "format": "qcow2", "type": "file"}]
    >>> p = storage_plan(d, "thinlvm", {}, facts, "lvm1")[0]
    >>> p["dst_kind"], p["dst_path"], p["dst_pool"], p["dst_format"]
    ('thinlvm', '/dev/vg/web', 'tp', 'raw')
    """
    plan = []
    for disk in disks:
        item = {**disk, "src_kind": "file"}
        if disk.get("type") == "block":
            volume = volumes.get(disk["path"])
            if volume is None or volume.segtype in ("thin-pool",):
                raise UnsupportedDisk(f"{disk['target']} is a block device ({disk['path']}) that "
                                      "is no logical volume of its node: Ferry moves file disks "
                                      "and logical volumes only")
            if disk["format"] != "raw":
                raise UnsupportedDisk(f"{disk['target']} is a {disk['format']} image on the "
                                      f"logical volume {disk['path']}: Ferry moves raw volumes only")
            item.update(src_kind=volume.storage_type, src_vg=volume.vg, src_lv=volume.name)
        kind = _destination_kind(item["src_kind"], convert_to)
        if kind == "file":
            fmt = FILE_FORMATS.get(convert_to) or disk["format"]
            if item["src_kind"] == "file":
                path = disk["path"] if fmt == disk["format"] else target_path(disk["path"], fmt)
            else:
                path = posixpath.join(file_dir(facts, node), f"{item['src_lv']}.{fmt}")
            item.update(dst_kind="file", dst_path=path, dst_format=fmt)
        else:
            name = item.get("src_lv") or storage.lv_name_for(disk["path"], disk["target"])
            vg, pool = lvm_target(facts, node, kind)
            item.update(dst_kind=kind, dst_vg=vg, dst_pool=pool, dst_lv=name,
                        dst_path=storage.lv_path(vg, name), dst_format="raw")
        plan.append(item)
    return plan


def _destination_kind(src_kind: str, convert_to: str | None) -> str:
    """ "file", "lvm" or "thinlvm": what a disk of src_kind becomes on the destination."""
    if convert_to in FILE_FORMATS:
        return "file"
    if convert_to in LVM_TYPES:
        return convert_to
    return src_kind


def file_dir(facts: dict, node: str) -> str:
    """The folder of the destination's file storage pool ("default" first)."""
    pools = [p for p in (facts or {}).get("storage_pools") or []
             if p.get("path") and p.get("type", "dir") in ("dir", "fs", "netfs")]
    if not pools:
        raise FerryError(f"{node} has no file storage pool to write a disk into")
    pool = next((p for p in pools if p.get("name") == "default"), pools[0])
    return pool["path"].rstrip("/") or "/"


def lvm_target(facts: dict, node: str, kind: str) -> tuple[str, str | None]:
    """(volume group, thin pool or None) a new volume of `kind` goes into on the destination:
    the group with the most free room, or the thin pool with the lowest data percent."""
    lvm = (facts or {}).get("lvm") or {}
    if kind == status.STORAGE_THINLVM:
        pools = lvm.get("thin_pools") or []
        if not pools:
            raise FerryError(f"{node} has no LVM thin pool (sync it if it has one)")
        pool = min(pools, key=lambda p: p.get("data_percent") or 0.0)
        return pool["vg"], pool["name"]
    groups = lvm.get("volume_groups") or []
    if not groups:
        raise FerryError(f"{node} has no LVM volume group (sync it if it has one)")
    return max(groups, key=lambda g: g.get("free") or 0)["name"], None


def nvram_path(xml: str) -> str | None:
    """The domain's UEFI variable store file, if it has one.

    >>> nvram_path("<domain><os><nvram>/var/lib/libvirt/qemu/nvram/w_VARS.fd</nvram></os></domain>")
    '/var/lib/libvirt/qemu/nvram/w_VARS.fd'
    >>> nvram_path("<domain><os/></domain>") is None
    True
    """
    node = mig.parse_xml(xml, "the domain").find("./os/nvram")
    text = (node.text or "").strip() if node is not None else ""
    if text and (not text.startswith("/") or text.endswith("/") or posixpath.normpath(text) != text
                 or len(text) > 4096):
        # The source's XML is untrusted: this path reaches commands on both nodes.
        raise FerryError(f"the domain's NVRAM file is not a plain absolute path: {text[:80]!r}")
    return text or None


def tpm_dir(xml: str, uuid: str) -> str | None:
    """The directory of an emulated TPM's state (swtpm), if the domain has one.

    >>> tpm_dir("<domain><devices><tpm><backend type='emulator'/></tpm></devices></domain>", "u-1")
    '/var/lib/libvirt/swtpm/u-1'
    """
    for tpm in mig.parse_xml(xml, "the domain").findall("./devices/tpm"):
        backend = tpm.find("backend")
        if backend is not None and backend.get("type") == "emulator":
            return posixpath.join(SWTPM_DIR, uuid)
    return None


def record_moved(server, destination, plan, state: str) -> None:
    """The inventory after a successful move: new host, state, disk paths and formats."""
    server.compute_resource = destination
    server.state = state
    by_target = {d["target"]: d for d in plan}
    for disk in server.disks:
        moved = by_target.get(disk.target)
        if moved:
            disk.path, disk.format = moved["dst_path"], moved["dst_format"]
            if moved.get("dst_kind") in LVM_TYPES:
                disk.storage_type = moved["dst_kind"]
            else:
                disk.storage_type = (status.STORAGE_FILE_QCOW2 if moved["dst_format"] == "qcow2"
                                     else status.STORAGE_FILE_RAW)
