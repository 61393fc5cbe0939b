"""Offline migration of one stopped server, with optional storage conversion, in one pass per disk.

For each disk the source exports it read-only with qemu-nbd (TCP 8081, bound
to the source's address) and the destination reads it with `qemu-img convert
-p` straight into a temporary file of the target format: no temporary full
copy anywhere. Then, in this order, so the server is defined on at least one
host at every instant and on two never for longer than one step:
verify (qemu-img compare) -> rename into place -> define on the destination
-> undefine on the source -> remove the source's disks.
"""
from __future__ import annotations

import posixpath
import threading
import time

import libvirt
from flask import current_app

from app import status
from app.errors import FerryError
from app.extensions import db
from app.infra import migration as mig
from app.infra import ssh
from app.infra.commands import storage
from app.services import preflight, resources
from app.services.live import disk_plan, record_moved
from app.services.timeline import Cancelled, cancel_requested, event, finish_success

FILE_FORMATS = {status.STORAGE_FILE_RAW: "raw", status.STORAGE_FILE_QCOW2: "qcow2"}


def pid_file(task_id: int, index: int, what: str) -> str:
    """Where a helper process of this task records its PID on a node."""
    return f"/run/ferry-{what}-{task_id}-{index}.pid"


def _with_pid(pid_file: str, argv: list[str]) -> list[str]:
    """Run argv recording its PID first, so a cancel can stop it by PID from another session."""
    return ["sh", "-c", 'echo $$ > "$1"; shift; exec "$@"', "ferry-run", pid_file, *argv]


def _copy(task, dst_ssh_factory, argv: list[str], pid_file: str, label: str) -> None:
    """Run the copy on the destination, recording progress and honouring cancel requests."""
    box = {}
    app = current_app._get_current_object()

    def work():
        with app.app_context(), dst_ssh_factory() as conn:
            box["result"] = ssh.run(conn, _with_pid(pid_file, argv), timeout=24 * 3600)

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    with dst_ssh_factory() as watcher:
        while thread.is_alive():
            thread.join(1.0)
            if cancel_requested(task.id):
                ssh.run(watcher, storage.stop_by_pid_file(pid_file))
                thread.join(30)
                raise Cancelled("Cancelled during the disk copy.")
    result = box.get("result")
    if result is None or not result.ok:
        detail = (result.stderr.strip() if result else "no result")[-500:]
        raise FerryError(f"copying {label} failed: {detail}")
    percent = storage.parse_convert_progress(result.stdout)
    task.progress = {"percent": percent if percent is not None else 100.0, "phase": "copy"}
    db.session.commit()


def run(task) -> None:
    """Move task.server (stopped) from task.source to task.destination, converting if asked."""
    server, source, destination = task.server, task.source, task.destination
    options = task.group.options
    convert_to = options.get("convert_to")
    if convert_to in (status.STORAGE_LVM, status.STORAGE_THINLVM):
        raise FerryError(f"conversion to {convert_to} needs device-mapper on {destination.name}: "
                         "Ferry builds those commands (lvcreate) but this destination has no "
                         "LVM volume group")
    t0 = time.monotonic()
    phases = {}
    with resources.open_ssh(source) as src_ssh, resources.open_ssh(destination) as dst_ssh, \
            resources.open_libvirt(source) as src, resources.open_libvirt(destination) as dst:
        try:
            dom = src.conn.lookupByUUIDString(server.uuid)
        except libvirt.libvirtError as exc:
            raise FerryError(f"{server.name} is not on {source.name}: {exc}") from exc
        if dom.isActive():
            raise FerryError(f"{server.name} is running: offline migration needs it stopped")
        if mig.where_is(dst.conn, server.uuid).defined:
            raise FerryError(f"{destination.name} already has a domain with {server.name}'s UUID")
        xml = dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
        plan = disk_plan(mig.disk_targets(xml), convert_to)
        for disk in plan:
            if ssh.run(dst_ssh, ["test", "-e", disk["dst_path"]]).ok:
                raise FerryError(f"{destination.name} already has a file at {disk['dst_path']}: "
                                 "refusing to overwrite it")

        temps, placed, exports = [], [], []
        try:
            task.phase = "copying"
            db.session.commit()
            for index, disk in enumerate(plan):
                name = storage.export_name(task.id, index)
                nbd_pid = pid_file(task.id, index, "nbd")
                exported = ssh.run(src_ssh, storage.nbd_export(
                    disk["path"], disk["format"], source.host, name, nbd_pid))
                if not exported.ok:
                    raise FerryError(f"qemu-nbd could not export {disk['path']} on {source.name}: "
                                     f"{exported.stderr.strip()}")
                exports.append(nbd_pid)
                tmp = storage.temp_path(disk["dst_path"], task.id)
                temps.append(tmp)
                event(task, "copy", f"Copying {disk['target']} ({disk['format']} → "
                      f"{disk['dst_format']}) from {source.name} over NBD into {tmp}.")
                started = time.monotonic()
                _copy(task, lambda: resources.open_ssh(destination),
                      storage.convert_from_nbd(source.host, name, tmp, disk["dst_format"]),
                      pid_file(task.id, index, "copy"), disk["target"])
                phases[f"copy_{disk['target']}_ms"] = int((time.monotonic() - started) * 1000)
                started = time.monotonic()
                same = ssh.run(dst_ssh, storage.compare(
                    storage.nbd_url(source.host, name), "raw", tmp, disk["dst_format"]),
                    timeout=24 * 3600)
                if not same.ok:
                    raise FerryError(f"the copy of {disk['target']} differs from the source: "
                                     f"{(same.stdout + same.stderr).strip()[-300:]}")
                phases[f"verify_{disk['target']}_ms"] = int((time.monotonic() - started) * 1000)
                event(task, "verified", f"{disk['target']}: qemu-img compare found the copy "
                      "identical to the source.")
                ssh.run(src_ssh, storage.stop_by_pid_file(nbd_pid))
                exports.remove(nbd_pid)
            if cancel_requested(task.id):
                raise Cancelled("Cancelled before the server was defined on the destination.")

            task.phase = "switching"
            db.session.commit()
            for tmp, disk in zip(temps, plan):
                moved = ssh.run(dst_ssh, storage.rename_disk(tmp, disk["dst_path"]))
                if not moved.ok:
                    raise FerryError(f"cannot move {tmp} into place: {moved.stderr.strip()}")
                placed.append(disk["dst_path"])
            temps = []
            new_xml = mig.destination_xml(xml, {d["target"]: (d["dst_path"], d["dst_format"])
                                                for d in plan})
            new_address, old_addresses = None, []
            if not options.get("preserve_ip", True):
                old_addresses = list(server.ip_addresses)
                new_address = preflight.allocate_address(server, destination)
                if new_address is None:
                    raise FerryError(f"{destination.name} has no free address in its IP blocks")
                new_xml = mig.with_guest_ip(
                    new_xml, f"{new_address.address}/{preflight.prefix_of(new_address)}")
            try:
                dst.conn.defineXML(new_xml)
            except libvirt.libvirtError as exc:
                raise FerryError(f"{destination.name} refused the definition: {exc}") from exc
            event(task, "defined", f"{server.name} is defined on {destination.name}.")
            try:
                dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_NVRAM
                                  if "<nvram" in xml else 0)
            except libvirt.libvirtError as exc:
                # Never leave it defined twice: take the new definition back.
                dst.conn.lookupByUUIDString(server.uuid).undefine()
                raise FerryError(f"{source.name} refused to undefine {server.name}: {exc}") from exc
            placed = []  # the destination owns them now
            event(task, "undefined", f"{server.name} is no longer defined on {source.name}.")
        except BaseException:
            db.session.rollback()
            for export_pid in exports:
                ssh.run(src_ssh, storage.stop_by_pid_file(export_pid))
            if not mig.where_is(dst.conn, server.uuid).defined:
                leftovers = temps + placed
                allowed = {posixpath.dirname(p) for p in leftovers}
                for path in leftovers:
                    ssh.run(dst_ssh, storage.remove_disk(path, allowed))
                if leftovers:
                    event(task, "cleanup", "Removed partial copies from the destination: "
                          + ", ".join(leftovers))
            raise

        allowed = [p.get("path") for p in (source.facts or {}).get("storage_pools", [])
                   if p.get("path")]
        removed = []
        for disk in plan:
            try:
                if ssh.run(src_ssh, storage.remove_disk(disk["path"], allowed)).ok:
                    removed.append(disk["path"])
            except storage.RefusedCommand as exc:
                event(task, "cleanup", f"Kept {disk['path']} on {source.name}: {exc}")
        if removed:
            event(task, "cleanup", f"Removed the source's disks on {source.name}: "
                  + ", ".join(removed))

        record_moved(server, destination, plan, status.SERVER_STOPPED)
        message = f"{server.name} is stopped on {destination.name}"
        if new_address is not None:
            for old in old_addresses:
                if old is not new_address:
                    old.server = None
            message += f" with its new address {new_address.address} (old one released)"
        total_ms = int((time.monotonic() - t0) * 1000)
        result = {"downtime_ms": None, "total_ms": total_ms, "wall_ms": total_ms,
                  "bytes": sum(d.allocation or 0 for d in server.disks), "phases": phases,
                  "new_address": new_address.address if new_address else None}
        finish_success(task, message + ".", result)
