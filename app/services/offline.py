"""Offline migration of one stopped server, with optional storage conversion: journaled steps.

    export -> copy -> verify -> define-destination -> undefine-source
           -> remove-source-disks -> settle-addresses

The source exports each disk read-only with qemu-nbd (a port claimed for the
task, from 8081 up); the destination reads it with `qemu-img convert` straight
into a temporary file of the target format; `qemu-img compare` checks it. Only
then is the server defined on the destination (disks renamed into place,
NVRAM and TPM state carried), and only once the source's definition is gone
(the point of no return) are the source's disks removed. So the server is
defined on at least one node at every instant, and on two for no longer than
one step. Before the point of no return any failure rolls back what the
journal says the task created; after it, steps only go forward.
"""
from __future__ import annotations

import ipaddress
import posixpath
import time

from app import status
from app.errors import FerryError
from app.extensions import db
from app.infra import migration as mig
from app.infra.commands import storage
from app.services import certificates, disks, journal, limits, preflight
from app.services.steps import (ATTENTION, DONE, REDO, ROLLBACK, Decision, Move, Runner, Step,
                                carry_state, check_start, drive, refuse_existing,
                                remove_source_files, source_removal_names)
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
            argv = storage.nbd_export(
                disk["path"], disk["format"], move.source.host, entry.names["exports"][index],
                entry.names["pid_files"][index], port=entry.names["port"],
                tls_dir=entry.names.get("tls_dir"))
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


class Copy(Step):
    """Read every export into a temporary file of the target format on the destination."""

    name = "copy"

    def names(self, move):
        plan = _plan(move)
        return {"node": "destination",
                "paths": [storage.temp_path(d["dst_path"], move.task.id) for d in plan],
                "pid_files": [pid_file(move.task.id, i, "copy", move.state.get("export_token", ""))
                              for i in range(len(plan))]}

    def run(self, move, entry):
        export = journal.last(move.task, "export").names
        timings = {}
        for index, disk in enumerate(_plan(move)):
            started = time.monotonic()
            move.event("copy", f"Copying {disk['target']} ({disk['format']} → {disk['dst_format']}) "
                               f"from {move.source.name} over NBD"
                               f"{' with TLS' if export.get('tls_dir') else ' in clear'} "
                               f"into {entry.names['paths'][index]}.")
            argv = storage.convert_from_nbd(move.source.host, export["exports"][index],
                                            entry.names["paths"][index], disk["dst_format"],
                                            port=export["port"], tls_dir=export.get("tls_dir"))
            _copy(move, _with_pid(entry.names["pid_files"][index], argv),
                  entry.names["pid_files"][index], disk["target"])
            timings[f"copy_{disk['target']}_ms"] = int((time.monotonic() - started) * 1000)
        move.state.setdefault("phases", {}).update(timings)
        return timings

    def settle(self, move, entry):
        return Decision(ROLLBACK, "a copy that did not finish is discarded")

    def undo(self, move, entry):
        for pid in entry.names.get("pid_files") or []:
            move.sh("destination", storage.stop_by_pid_file(pid, expect="qemu-img"))
        removed = _remove(move, "destination", entry.names.get("paths") or [])
        if removed:
            move.event("cleanup", "Removed partial copies from the destination: " + ", ".join(removed))


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
    move.task.progress = {"percent": percent if percent is not None else 100.0, "phase": "copy"}
    db.session.commit()


class Verify(Step):
    """Compare each copy with its export; the source must still be stopped and unchanged."""

    name = "verify"

    def run(self, move, entry):
        export = journal.last(move.task, "export").names
        paths = journal.last(move.task, "copy").names["paths"]
        for index, disk in enumerate(_plan(move)):
            started = time.monotonic()
            same = move.sh("destination", storage.compare_with_export(
                move.source.host, export["exports"][index], export["port"], paths[index],
                disk["dst_format"], tls_dir=export.get("tls_dir")), timeout=24 * 3600)
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
                "paths": [], "domain": move.server.uuid}

    def run(self, move, entry):
        if cancel_requested(move.task.id):
            raise Cancelled("Cancelled before the server was defined on the destination.")
        temps = journal.last(move.task, "copy").names["paths"]
        for tmp, disk in zip(temps, _plan(move)):
            moved = move.sh("destination", storage.rename_disk(tmp, disk["dst_path"]))
            if not moved.ok:
                raise FerryError(f"cannot move {tmp} into place: {moved.stderr.strip()}")
            journal.add_names(entry, paths=[disk["dst_path"]])
        carry_state(move, entry)
        xml = mig.destination_xml(move.task.domain_xml, {
            d["target"]: (d["dst_path"], d["dst_format"]) for d in _plan(move)})
        address = None
        if not move.options.get("preserve_ip", True):
            address = preflight.allocate_address(move.server, move.destination)
            if address is None:
                raise FerryError(f"{move.destination.name} has no free address in its IP blocks")
            db.session.flush()
            journal.add_names(entry, address_id=address.id)  # committed: released on undo
            xml = mig.with_guest_ip(xml, f"{address.address}/{preflight.prefix_of(address)}")
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
    steps = (Export(), Copy(), Verify(), DefineDestination(), UndefineSource(),
             RemoveSourceDisks(), SettleAddresses())
    committed_after = "undefine-source"

    def finish(self, move):
        server = move.server
        message = f"{server.name} is stopped on {move.destination.name}"
        if move.state.get("new_address"):
            message += f" with its new address {move.state['new_address']} (old one released)"
        total_ms = int((time.monotonic() - move.state["t0"]) * 1000)
        result = {"downtime_ms": None, "total_ms": total_ms, "wall_ms": total_ms,
                  "bytes": sum(d.allocation or 0 for d in server.disks),
                  "phases": move.state.get("phases", {}),
                  "tls": bool((journal.last(move.task, "export").names or {}).get("tls_dir")),
                  "new_address": move.state.get("new_address")}
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
    move.state["plan"] = disks.plan_for(move.task.domain_xml, move.options.get("convert_to"))


def run(task, lease=None, nodes=None) -> None:
    """Move task.server (stopped) from task.source to task.destination, converting if asked."""
    convert_to = (task.group.options or {}).get("convert_to")
    if convert_to in (status.STORAGE_LVM, status.STORAGE_THINLVM):
        raise FerryError(f"conversion to {convert_to} is not supported yet: Ferry moves file "
                         "disks (raw and qcow2) only")
    with Move(task, nodes=nodes, lease=lease) as move:
        check_start(move, running=False)
        prepare(move)
        refuse_existing(move)
        drive(move, RUNNER)


def resume(task, lease=None, nodes=None) -> str:
    """Recovery: settle an interrupted offline move from its journal and drive it to its end."""
    from app.services.steps import resume as resume_steps
    with Move(task, nodes=nodes, lease=lease) as move:
        prepare(move)
        return resume_steps(move, RUNNER)
