"""Offline migration of one stopped server, with optional storage conversion: journaled steps.

    export -> copy -> verify -> define-destination -> undefine-source
           -> settle-addresses -> remove-source-disks

The source exports each disk read-only with qemu-nbd (a port claimed for the
task, from 8081 up); the destination reads it with `qemu-img convert` straight
into a temporary file of the target format, or into a new logical volume created
for the task under a temporary name (thick: the disk's virtual size; thin: that
size in the thin pool, written with `--target-is-zero` so it stays thin);
`qemu-img compare` checks it. Only
then is the server defined on the destination (disks renamed into place,
NVRAM and TPM state carried), and only once the source's definition is gone
(the point of no return) is the move recorded (node, disks, a changed address) and then
the source's disks removed: a source that dies meanwhile leaves its disks to a person and
the server recorded where it is. So the server is
defined on at least one node at every instant, and on two for no longer than
one step. Before the point of no return any failure rolls back what the
journal says the task created; after it, steps only go forward.
"""
from __future__ import annotations

import ipaddress
import posixpath
import time

from app import status
from app.blobs import Progress, TaskResult
from app.errors import FerryError
from app.extensions import db
from app.infra import migration as mig
from app.infra.commands import lvm, storage
from app.services import addresses, certificates, disks, journal, limits
from app.services.steps import (ATTENTION, DONE, Decision, Move, REDO, ROLLBACK, Runner, Step,
                                carry_state, remove_source_files, source_removal_names, start)
from app.services.timeline import Cancelled, cancel_requested, finish_success


EXPORT_TRIES = 5  # a preflight's port probe holds the port for a few seconds at most
EXPORT_RETRY_S = 2


def pid_file(task_id: int, index: int, what: str, token: str = "") -> str:
    """Where a helper process of this task records its PID on a node (the random token keeps
    two Ferry instances whose task ids coincide apart; the name is journaled)."""
    return f"/run/ferry-{what}-{task_id}-{index}{'-' + token if token else ''}.pid"


def _with_pid(pid_file: str, argv: list[str]) -> list[str]:
    """Run argv recording its PID first, so a cancel can stop it by PID from another session."""
    return ["sh", "-c", 'echo $$ > "$1"; shift; exec "$@"', "ferry-run", pid_file, *argv]


def _plan(move: Move) -> list[dict]:
    return move.state["plan"]


def _remove(move: Move, which: str, paths: list[str]) -> list[str]:
    """Remove files the journal names on a node (each inside its own folder); returns them."""
    removed = []
    for path in paths:
        result = move.sh(which, storage.remove_disk(path, [posixpath.dirname(path)]))
        if result.ok:
            removed.append(path)
    return removed


class Export(Step):
    """Serve each source disk read-only over NBD on the task's port: over TLS with verified
    peers when the site's setting and both nodes' certificates say so, under a random name."""

    name = "export"

    def names(self, move):
        claim = getattr(limits, "claim_export_port", None)
        port = move.state.get("port") or (claim(move.task.id, move.source.id) if claim
                                          else storage.NBD_PORT)
        move.state["port"] = port
        token = move.state.setdefault("export_token", storage.export_token())
        tls = certificates.tls_for(move.source, move.destination)
        plan = _plan(move)
        return {"node": "source", "port": port, "token": token,
                "exports": [storage.export_name(move.task.id, i, token) for i in range(len(plan))],
                "tls_dir": certificates.nbd_dir() if tls else None,
                "pid_files": [pid_file(move.task.id, i, "nbd", token) for i in range(len(plan))]}

    def run(self, move, entry):
        for index, disk in enumerate(_plan(move)):
            # A sliced volume is exported as its guest sees it, without lvm's rounded-up tail.
            argv = storage.nbd_export(
                disk["path"], disk["format"], move.source.host, entry.names["exports"][index],
                entry.names["pid_files"][index], port=entry.names["port"],
                tls_dir=entry.names.get("tls_dir"), size=disks.sliced(disk),
                block=disk.get("type") == "block")
            for attempt in range(EXPORT_TRIES):
                exported = move.sh("source", argv)
                # Another group's preflight may be probing this port for a few seconds.
                if exported.ok or "in use" not in exported.stderr or attempt == EXPORT_TRIES - 1:
                    break
                move.sleep(EXPORT_RETRY_S)
            if not exported.ok:
                raise FerryError(f"qemu-nbd could not export {disk['path']} on {move.source.name}: "
                                 f"{exported.stderr.strip()}")
        return {"plan": _plan(move)}

    def settle(self, move, entry):
        return Decision(ROLLBACK, "an export alone moves nothing")

    def undo(self, move, entry):
        for pid in entry.names.get("pid_files") or []:
            move.sh("source", storage.stop_by_pid_file(pid, expect="qemu-nbd"))


def stop_exports(move: Move) -> None:
    """Stop the task's NBD exports on the source (by PID, only if still qemu-nbd)."""
    for pid in journal.created(move.task, "source", "pid_files"):
        move.sh("source", storage.stop_by_pid_file(pid, expect="qemu-nbd"))


def _into_volume(disk: dict) -> bool:
    """Whether a disk of the plan is copied into a logical volume (else into a file)."""
    return disk.get("dst_kind", "file") != "file"


def _targets(names: dict) -> list[str]:
    """Where the copy step wrote each disk: a temporary file or a temporary volume's device
    (a journal from before volumes existed lists files only, as "paths")."""
    return names.get("targets") or names["paths"]


class Copy(Step):
    """Read every export into a temporary file of the target format on the destination, or
    into a new logical volume created for the task under a temporary name."""

    name = "copy"

    def names(self, move):
        # Every temporary name is journaled before anything is created: files in "paths",
        # volumes in "volumes" (the task id and random token make them the task's own).
        plan, token = _plan(move), move.state.get("export_token", "")
        targets, paths, volumes = [], [], []
        for disk in plan:
            if _into_volume(disk):
                name = storage.temp_lv_name(disk["dst_lv"], move.task.id, token)
                volumes.append([disk["dst_vg"], name])
                targets.append(storage.lv_path(disk["dst_vg"], name))
            else:
                paths.append(storage.temp_path(disk["dst_path"], move.task.id))
                targets.append(paths[-1])
        return {"node": "destination", "paths": paths, "volumes": volumes, "targets": targets,
                "pid_files": [pid_file(move.task.id, i, "copy", token) for i in range(len(plan))]}

    def run(self, move, entry):
        export = journal.last(move.task, "export").names
        timings, sizes = {}, []
        for index, disk in enumerate(_plan(move)):
            started = time.monotonic()
            target = _targets(entry.names)[index]
            sizes.append(_create_volume(move, disk, target) if _into_volume(disk) else None)
            move.event("copy", f"Copying {disk['target']} ({disk['format']} → {disk['dst_format']}) "
                               f"from {move.source.name} over NBD"
                               f"{' with TLS' if export.get('tls_dir') else ' in clear'} "
                               f"into {target}.")
            argv = storage.convert_from_nbd(
                move.source.host, export["exports"][index], target, disk["dst_format"],
                port=export["port"], tls_dir=export.get("tls_dir"), existing=_into_volume(disk),
                target_is_zero=disk.get("dst_kind") == status.STORAGE_THINLVM)
            _copy(move, _with_pid(entry.names["pid_files"][index], argv),
                  entry.names["pid_files"][index], disk["target"])
            timings[f"copy_{disk['target']}_ms"] = int((time.monotonic() - started) * 1000)
        move.state.setdefault("phases", {}).update(timings)
        return {**timings, "volume_sizes": sizes}

    def settle(self, move, entry):
        return Decision(ROLLBACK, "a copy that did not finish is discarded")

    def undo(self, move, entry):
        for pid in entry.names.get("pid_files") or []:
            move.sh("destination", storage.stop_by_pid_file(pid, expect="qemu-img"))
        removed = _remove(move, "destination", entry.names.get("paths") or [])
        removed += _remove_volumes(move, "destination", entry.names.get("volumes") or [])
        if removed:
            move.event("cleanup", "Removed partial copies from the destination: " + ", ".join(removed))


def _create_volume(move: Move, disk: dict, device: str) -> int:
    """Create the task's new logical volume (its name journaled already): thick of the disk's
    exact virtual size, or thin of that virtual size in the thin pool; returns its size.

    lvm rounds a volume up to whole extents. A thick volume's tail past the disk's size then
    holds whatever its extents held before (the copy writes only the disk's size), so it is
    zeroed: the compare reads it as the source's end, and no guest ever reads old data. A
    fresh thin volume reads as zeros already (writing them would allocate it)."""
    vg, name = storage.split_lv_path(device)
    thin = disk["dst_kind"] == status.STORAGE_THINLVM
    argv = (storage.lvcreate_thin(vg, disk["dst_pool"], name, disk["size"]) if thin
            else storage.lvcreate(vg, name, disk["size"]))
    made = move.sh("destination", argv)
    if not made.ok:
        raise FerryError(f"cannot create the logical volume {vg}/{name} on "
                         f"{move.destination.name}: {made.stderr.strip()[-300:]}")
    size = _device_size(move, device)
    if not thin and size > disk["size"]:
        zeroed = move.sh("destination", storage.zero_range(device, disk["size"],
                                                           size - disk["size"]))
        if not zeroed.ok:
            raise FerryError(f"cannot zero the tail of {vg}/{name} on {move.destination.name}: "
                             f"{zeroed.stderr.strip()[-300:]}")
    move.event("volume", f"Created the {'thin ' if thin else ''}logical volume {vg}/{name} "
                         f"({size} bytes for a disk of {disk['size']}) on "
                         f"{move.destination.name}.")
    return size


def _device_size(move: Move, device: str) -> int:
    """A block device's size on the destination, in bytes."""
    answer = move.sh("destination", storage.device_size(device))
    try:
        return storage.parse_device_size(answer.stdout if answer.ok else "")
    except ValueError as exc:
        raise FerryError(f"cannot read the size of {device} on {move.destination.name}: "
                         f"{(answer.stderr.strip() or str(exc))[-300:]}") from exc


def _remove_volumes(move: Move, which: str, volumes: list) -> list[str]:
    """Remove logical volumes the journal names ([vg, name] pairs); returns those removed."""
    removed = []
    for vg, name in volumes:
        if move.sh(which, storage.lvremove(vg, name)).ok:
            removed.append(f"{vg}/{name}")
    return removed


def _copy(move: Move, argv: list[str], pid: str, label: str) -> None:
    """Run one copy on the destination in a thread of its own, honouring cancel requests."""
    import threading
    from flask import current_app

    box, app = {}, current_app._get_current_object()

    def work():
        with app.app_context(), move.nodes.shell(move.destination) as conn:
            from app.infra import ssh
            try:
                box["result"] = ssh.run(conn, argv, timeout=24 * 3600)
            except FerryError as exc:
                box["error"] = exc

    thread = threading.Thread(target=work, daemon=True, name=f"copy-{move.task.id}")
    thread.start()
    while thread.is_alive():
        thread.join(1.0)
        if cancel_requested(move.task.id):
            move.sh("destination", storage.stop_by_pid_file(pid, expect="qemu-img"))
            thread.join(30)
            raise Cancelled("Cancelled during the disk copy.")
    if "error" in box:
        raise box["error"]
    result = box["result"]
    if not result.ok:
        raise FerryError(f"copying {label} failed: {result.stderr.strip()[-500:]}")
    move.sh("destination", ["rm", "-f", "--", pid])
    percent = storage.parse_convert_progress(result.stdout)
    move.task.progress = Progress(percent=percent if percent is not None else 100.0,
                                  phase="copy").to_json()
    db.session.commit()


class Verify(Step):
    """Compare each copy with its export; the source must still be stopped and unchanged."""

    name = "verify"

    def run(self, move, entry):
        export = journal.last(move.task, "export").names
        paths = _targets(journal.last(move.task, "copy").names)
        for index, disk in enumerate(_plan(move)):
            started = time.monotonic()
            same = move.sh("destination", storage.compare_with_export(
                move.source.host, export["exports"][index], export["port"], paths[index],
                disk["dst_format"], tls_dir=export.get("tls_dir"), block=_into_volume(disk)),
                timeout=24 * 3600)
            if not same.ok:
                raise FerryError(f"the copy of {disk['target']} differs from the source: "
                                 f"{(same.stdout + same.stderr).strip()[-300:]}")
            move.state.setdefault("phases", {})[f"verify_{disk['target']}_ms"] = int(
                (time.monotonic() - started) * 1000)
        _source_still_stopped(move)
        stop_exports(move)
        move.event("verified", "qemu-img compare found every copy identical to the source, "
                               f"and {move.server.name} is still stopped on {move.source.name}.")
        return {"identical": True}

    def settle(self, move, entry):
        return Decision(ROLLBACK, "an unfinished check proves nothing")


def _source_still_stopped(move: Move) -> None:
    """Refuse to go on if the server was started (or changed) on the source since the copy began."""
    place = move.place("source")
    if place.error:
        raise FerryError(f"{move.source.name} did not answer whether {move.server.name} is still "
                         f"stopped: {place.error}")
    if not place.defined:
        raise FerryError(f"{move.server.name} is no longer defined on {move.source.name}")
    if place.running or place.paused:
        raise FerryError(f"{move.server.name} was started on {move.source.name} during the move: "
                         "its disks may have changed, so the copy is discarded")
    now = mig.disk_targets(move.host("source").xml(move.server.uuid, inactive=True))
    then = mig.disk_targets(move.task.domain_xml)
    if now != then:
        raise FerryError(f"{move.server.name}'s disks changed on {move.source.name} during the move")


class DefineDestination(Step):
    """Rename the copies into place, carry NVRAM and TPM state, define the server there."""

    name = "define-destination"

    def names(self, move):
        # "paths" and "dirs" grow as each is created (add_names): a name that was already taken
        # by something else is never listed, so an undo can never remove what is not ours.
        xml = move.task.domain_xml
        nvram = disks.nvram_path(xml)
        intended = [d["dst_path"] for d in _plan(move)] + ([nvram] if nvram else [])
        tpm = disks.tpm_dir(xml, move.server.uuid)
        return {"node": "destination", "intended": intended + ([tpm] if tpm else []),
                "renaming": [], "paths": [], "volumes": [], "domain": move.server.uuid}

    def run(self, move, entry):
        if cancel_requested(move.task.id):
            raise Cancelled("Cancelled before the server was defined on the destination.")
        _rename_into_place(move, entry)
        carry_state(move, entry)
        xml = mig.destination_xml(move.task.domain_xml, _disk_changes(move))
        address = None
        if not move.options.preserve_ip:
            address = addresses.allocate_address(move.server, move.destination)
            if address is None:
                raise FerryError(f"{move.destination.name} has no free address in its IP blocks")
            db.session.flush()
            journal.add_names(entry, address_id=address.id)  # committed: released on undo
            xml = mig.with_guest_ip(xml, f"{address.address}/{addresses.prefix_of(address)}")
        move.host("destination").define(xml)
        move.event("defined", f"{move.server.name} is defined on {move.destination.name}.")
        return {"address": address.address if address else None}

    def settle(self, move, entry):
        return _settle_defined(move.place("destination"), "destination")

    def undo(self, move, entry):
        place = move.place("destination")
        if place.error:
            from app.infra.host import HostUnknown
            raise HostUnknown(f"{move.destination.name} did not answer: {place.error}")
        if place.running:
            from app.infra.host import HostUnknown
            raise HostUnknown(f"{move.server.name} runs on {move.destination.name}")
        if place.defined:
            move.host("destination").undefine(move.server.uuid)
            move.event("cleanup", f"Took the definition back from {move.destination.name}.")
        removed = _remove(move, "destination", entry.names.get("paths") or [])
        removed += _remove_volumes(move, "destination", entry.names.get("volumes") or [])
        removed += _remove_renamed(move, entry)
        for directory in entry.names.get("dirs") or []:
            move.sh("destination", storage.remove_tree(directory, disks.SWTPM_DIR))
            removed.append(directory)
        address_id = entry.names.get("address_id")
        if address_id:
            from app.models import IpAddress
            row = db.session.get(IpAddress, address_id)
            if row is not None and row.server_id == move.server.id:
                row.server = None
                db.session.commit()
        if removed:
            move.event("cleanup", "Removed from the destination: " + ", ".join(removed))


def _rename_into_place(move: Move, entry) -> None:
    """Rename each verified copy to its final name, never over a name that is taken.

    Each rename's [temporary, final] pair is journaled before the node is touched and the
    final name is listed as the task's own once the rename answered: a worker that dies in
    between leaves recovery the pair, and `_remove_renamed` asks the node which one exists."""
    temps = _targets(journal.last(move.task, "copy").names)
    for tmp, disk in zip(temps, _plan(move)):
        journal.add_names(entry, renaming=[[tmp, disk["dst_path"]]])
        if _into_volume(disk):  # lvrename refuses a name that is taken
            vg, name = storage.split_lv_path(tmp)
            moved = move.sh("destination", storage.lvrename(vg, name, disk["dst_lv"]))
        else:
            moved = move.sh("destination", storage.rename_disk(tmp, disk["dst_path"]))
        if not moved.ok:
            raise FerryError(f"cannot move {tmp} into place: {moved.stderr.strip()}")
        if _into_volume(disk):
            journal.add_names(entry, volumes=[[disk["dst_vg"], disk["dst_lv"]]])
        else:
            journal.add_names(entry, paths=[disk["dst_path"]])


def _disk_changes(move: Move) -> dict:
    """What each disk becomes in the destination's definition: a file, or a block device
    sliced to the disk's size when lvm made its volume larger (the guest keeps its size)."""
    sizes = (journal.last(move.task, "copy").data or {}).get("volume_sizes") or []
    changes = {}
    for index, disk in enumerate(_plan(move)):
        if not _into_volume(disk):
            changes[disk["target"]] = (disk["dst_path"], disk["dst_format"], "file")
            continue
        made = sizes[index] if index < len(sizes) else None
        cut = disk["size"] if made is None or made > disk["size"] else None
        changes[disk["target"]] = (disk["dst_path"], disk["dst_format"], "block", cut)
    return changes


def _remove_renamed(move: Move, entry) -> list[str]:
    """Remove the copies a rename put under their final names without the journal hearing
    back (a worker that died in between): only those the node shows to be the task's."""
    listed = set(entry.names.get("paths") or []) | {
        storage.lv_path(vg, name) for vg, name in entry.names.get("volumes") or []}
    volumes = {d["dst_path"] for d in _plan(move) if _into_volume(d)}
    removed = []
    for tmp, final in entry.names.get("renaming") or []:
        if final in listed:
            continue  # removed above with what the journal lists as the task's
        answer = move.sh("destination", storage.renamed(tmp, final))
        if not answer.ok or answer.stdout.strip() not in ("ours", "not ours"):
            from app.infra.host import HostUnknown
            raise HostUnknown(f"{move.destination.name} did not say whether {final} is the "
                              f"task's copy: {answer.stderr.strip()[-200:]}")
        if answer.stdout.strip() == "ours" and final in volumes:
            removed += _remove_volumes(move, "destination", [list(storage.split_lv_path(final))])
        elif answer.stdout.strip() == "ours":
            removed += _remove(move, "destination", [final])
    return removed


def _settle_defined(place, which: str) -> Decision:
    """Pure: did a define step happen, judging by the node's answer?

    >>> from app.infra.migration import DomainPlace as P
    >>> _settle_defined(P(True, False), "destination").action
    'done'
    >>> _settle_defined(P(False, False), "destination").action
    'roll-back'
    >>> _settle_defined(P(False, False, error="no route"), "destination").action
    'needs-attention'
    """
    if place.error:
        return Decision(ATTENTION, f"the {which} did not answer ({place.error})")
    if place.defined:
        return Decision(DONE, f"the {which} defines the server")
    return Decision(ROLLBACK, f"the {which} does not define the server")


class UndefineSource(Step):
    """The point of no return: the source lets the server go, if it is still stopped there."""

    name = "undefine-source"

    def run(self, move, entry):
        _source_still_stopped(move)
        move.host("source").undefine(move.server.uuid)
        move.event("undefined", f"{move.server.name} is no longer defined on {move.source.name}.")

    def settle(self, move, entry):
        return _settle_undefined(move.place("source"))


def _settle_undefined(place) -> Decision:
    """Pure: did the source let go of the server (an undefine's reply may be lost)?

    >>> from app.infra.migration import DomainPlace as P
    >>> _settle_undefined(P(False, False)).action
    'done'
    >>> _settle_undefined(P(True, False)).action
    'redo'
    >>> _settle_undefined(P(True, True)).action
    'roll-back'
    >>> _settle_undefined(P(False, False, error="timeout")).action
    'needs-attention'

    (A failed undefine at run time is rolled back, never retried: only recovery redoes one.)
    """
    if place.error:
        return Decision(ATTENTION, f"the source did not answer ({place.error})")
    if not place.defined:
        return Decision(DONE, "the source no longer defines the server")
    if place.running:
        return Decision(ROLLBACK, "the server was started on the source meanwhile")
    return Decision(REDO, "the source still defines the stopped server: undefine it again")


class RemoveSourceDisks(Step):
    """Remove the source's disks, NVRAM and TPM state, once it no longer defines the server."""

    name = "remove-source-disks"

    def names(self, move):
        return source_removal_names(move)

    def run(self, move, entry):
        place = move.place("source")
        if place.error or place.defined:
            raise FerryError(f"{move.source.name} still defines the server or did not answer "
                             f"({place.error or 'defined'}): its disks were kept")
        return remove_source_files(move, entry)

    def settle(self, move, entry):
        return Decision(REDO, "removing files is idempotent")


class SettleAddresses(Step):
    """Record the move in the inventory: new node and disks; with an IP change, the new address
    (committed only now that the move is done) and only the addresses it replaced released."""

    name = "settle-addresses"

    def run(self, move, entry):
        from app.models import IpAddress
        define = journal.last(move.task, "define-destination")
        new_id = (define.names or {}).get("address_id")
        released = []
        if new_id:
            # The guest gets one new address of the new one's family through its definition:
            # that replaces its addresses of that family; the others (IPv6 beside IPv4) stay.
            new = db.session.get(IpAddress, new_id)
            family = ipaddress.ip_address(new.address).version
            for old in list(move.server.ip_addresses):
                if old.id != new_id and ipaddress.ip_address(old.address).version == family:
                    old.server = None
                    released.append(old.address)
            move.state["new_address"] = new.address
        disks.record_moved(move.server, move.destination, _plan(move), status.SERVER_STOPPED)
        db.session.commit()
        return {"released": released}

    def settle(self, move, entry):
        return Decision(REDO, "the inventory update is idempotent")


class OfflineRunner(Runner):
    """The offline mode's steps."""

    mode = status.MODE_OFFLINE
    # The inventory follows the server before the source's copy goes: a source that dies
    # while its disks are removed leaves them to a person, the server recorded where it is.
    steps = (Export(), Copy(), Verify(), DefineDestination(), UndefineSource(),
             SettleAddresses(), RemoveSourceDisks())
    committed_after = "undefine-source"

    def finish(self, move):
        server = move.server
        message = f"{server.name} is stopped on {move.destination.name}"
        if move.state.get("new_address"):
            message += f" with its new address {move.state['new_address']} (old one released)"
        total_ms = int((time.monotonic() - move.state["t0"]) * 1000)
        result = TaskResult(
            total_ms=total_ms, wall_ms=total_ms, bytes=sum(d.allocation or 0 for d in server.disks),
            phases=move.state.get("phases", {}),
            tls=bool((journal.last(move.task, "export").names or {}).get("tls_dir")),
            new_address=move.state.get("new_address"))
        finish_success(move.task, message + ".", result)


RUNNER = OfflineRunner()


def prepare(move: Move) -> None:
    """Read what the steps need (creates nothing): the server's definition and its disk plan.

    On a first run the definition is read from the source and kept on the task; on recovery it
    is the one the task kept, and the plan is the one the export step journaled.
    """
    move.state["t0"] = time.monotonic()
    export = journal.last(move.task, "export")
    if export is not None and (export.data or {}).get("plan"):
        move.state["plan"] = export.data["plan"]
        move.state["port"] = export.names.get("port")
        move.state["export_token"] = export.names.get("token") or ""
        return
    if move.task.domain_xml is None:
        move.task.domain_xml = move.host("source").xml(move.server.uuid, inactive=True)
        db.session.commit()
    move.state["plan"] = offline_plan(move)


def offline_plan(move: Move) -> list[dict]:
    """The disks' plan: files and logical volumes (told from the source's lvs), each with its
    destination (a new LV's group or thin pool from the destination's facts, and the disk's
    virtual size read with qemu-img info on the source). Creates nothing."""
    found = mig.disk_targets(move.task.domain_xml)
    reasons = disks.unsupported(found, block_ok=True)
    if reasons:
        raise disks.UnsupportedDisk("; ".join(reasons))
    volumes = {}
    if any(d.get("type") == "block" for d in found):
        listed = move.sh("source", lvm.LVS)
        if not listed.ok:
            raise FerryError(f"lvs failed on {move.source.name}: {listed.stderr.strip()[-300:]}")
        volumes = lvm.by_device(lvm.parse_lvs(listed.stdout))
    plan = disks.storage_plan(found, move.options.convert_to, volumes,
                              move.destination.facts or {}, move.destination.name)
    for disk in plan:
        if _into_volume(disk) and disks.sliced(disk):  # the guest's size, not its volume's
            disk["size"] = disks.sliced(disk)
        elif _into_volume(disk):
            info = move.sh("source", storage.image_info(disk["path"], disk["format"]))
            if not info.ok:
                raise FerryError(f"cannot read {disk['path']}'s size on {move.source.name}: "
                                 f"{info.stderr.strip()[-300:]}")
            disk["size"] = storage.parse_virtual_size(info.stdout)
    return plan


def run(task, lease=None, nodes=None) -> None:
    """Move task.server (stopped) from task.source to task.destination, converting if asked."""
    start(task, RUNNER, prepare, running=False, lease=lease, nodes=nodes)


def resume(task, lease=None, nodes=None) -> str:
    """Recovery: settle an interrupted offline move from its journal and drive it to its end."""
    from app.services.steps import resume as resume_steps
    with Move(task, nodes=nodes, lease=lease) as move:
        prepare(move)
        return resume_steps(move, RUNNER)
