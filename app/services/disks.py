"""What a move carries: the disks' plan (paths and formats on both sides), NVRAM and TPM state.

Pure functions over a domain's XML and the inventory, shared by the live and
offline runners and by the preflight.
"""
from __future__ import annotations

import posixpath

from app import status
from app.errors import FerryError
from app.infra import migration as mig

FILE_FORMATS = {status.STORAGE_FILE_RAW: "raw", status.STORAGE_FILE_QCOW2: "qcow2"}
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


def unsupported(disks: list[dict]) -> list[str]:
    """Why each disk the engine cannot move is refused (empty when every disk is a file).

    >>> unsupported([{"target": "vda", "path": "/img/a", "type": "file"},
    ...              {"target": "vdb", "path": "/dev/vg0/db", "type": "block"}])
    ['vdb is a block device (/dev/vg0/db): Ferry moves file disks only']
    """
    reasons = []
    for disk in disks:
        kind = disk.get("type") or "file"
        if kind == "file" and disk.get("path"):
            continue
        what = {"block": "a block device", "network": "a network disk",
                "volume": "a storage-pool volume"}.get(kind, f"a disk of type {kind!r}")
        if kind == "file":
            what = "a file disk without a source"
        reasons.append(f"{disk.get('target')} is {what} ({disk.get('path') or 'no path'}): "
                       "Ferry moves file disks only")
    return reasons


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
            disk.storage_type = (status.STORAGE_FILE_QCOW2 if moved["dst_format"] == "qcow2"
                                 else status.STORAGE_FILE_RAW)
