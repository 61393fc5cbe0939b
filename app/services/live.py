"""Live migration of one server: libvirt p2p with copied disks, watched by the escalation ladder.

Order of a live task, each step a line on its timeline:
1. pre-create sparse destination disks (libvirt would make a fully allocated qcow2);
2. start migrateToURI3 peer-to-peer (the source libvirtd finishes it even if we die);
3. poll jobStats twice a second: progress, live ETA, ladder actions, cancel requests;
4. ask both hosts where the domain is and record the truth;
5. clean up: on success the source's disks, on failure the destination's pre-created ones.
"""
from __future__ import annotations

import json
import logging
import math
import posixpath
import time

import libvirt
from flask import current_app

from app import status
from app.errors import FerryError
from app.extensions import db
from app.infra import migration as mig
from app.infra import ssh
from app.infra.commands import storage
from app.models import utcnow
from app.services import calibration, estimation, ladder, resources
from app.services.timeline import (Cancelled, NeedsAttention, cancel_requested, event,
                                   finish_success)

POLL_S = 0.5
HISTORY_POINTS = 240
STOP_WAIT_S = 300  # an aborted p2p job ends in seconds; post-copy is left to finish

log = logging.getLogger("ferry.live")


def peer_uri(destination) -> str:
    """The URI the source libvirtd uses to reach the destination's libvirtd (node-to-node SSH)."""
    port = f":{destination.port}" if destination.port != 22 else ""
    return f"qemu+ssh://{destination.user}@{destination.host}{port}/system"


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


def disk_plan(disks: list[dict], convert_to: str | None) -> list[dict]:
    """For each disk: source path/format and destination path/format."""
    fmt = {status.STORAGE_FILE_RAW: "raw", status.STORAGE_FILE_QCOW2: "qcow2"}.get(convert_to)
    plan = []
    for disk in disks:
        dst_fmt = fmt or disk["format"]
        dst_path = disk["path"] if dst_fmt == disk["format"] else target_path(disk["path"], dst_fmt)
        plan.append({**disk, "dst_path": dst_path, "dst_format": dst_fmt})
    return plan


def settings_for(task) -> ladder.LadderSettings:
    """Ladder settings from the site's configuration and the task's options."""
    cfg = current_app.config
    knobs = {"downtime_target_ms": cfg["DOWNTIME_TARGET_MS"],
             "progress_timeout_s": cfg["PROGRESS_TIMEOUT"],
             "completion_timeout_per_gib_s": cfg["COMPLETION_TIMEOUT_PER_GIB"]}
    # LADDER_OVERRIDES (any LadderSettings field) wins, even over the FERRY_* values above.
    knobs.update(cfg.get("LADDER_OVERRIDES") or {})
    return ladder.LadderSettings(postcopy=bool(task.group.options.get("allow_postcopy")), **knobs)


def _virtual_size(conn, path: str) -> int:
    """A disk's virtual size read on its node with qemu-img (force-share: the guest is running)."""
    result = ssh.run(conn, storage.image_info(path, force_share=True))
    if not result.ok:
        raise FerryError(f"cannot read disk {path} on {conn.host}: {result.stderr.strip()}")
    return int(json.loads(result.stdout)["virtual-size"])


def _progress(stats: ladder.JobStats, history: list) -> dict:
    """The task's progress record from one jobStats sample."""
    return {
        "percent": round(ladder.progress_percent(stats), 1),
        "elapsed_ms": stats.time_elapsed_ms,
        "data_total": stats.data_total, "data_processed": stats.data_processed,
        "data_remaining": stats.data_remaining,
        "memory_total": stats.memory_total, "memory_processed": stats.memory_processed,
        "memory_remaining": stats.memory_remaining,
        "disk_total": stats.disk_total, "disk_processed": stats.disk_processed,
        "disk_remaining": stats.disk_remaining,
        "dirty_rate_bps": stats.memory_dirty_rate_bps, "bps": stats.memory_bps,
        "iteration": stats.memory_iteration, "throttle": stats.auto_converge_throttle,
        "history": history[-HISTORY_POINTS:],
    }


def _apply(action, migration: mig.LiveMigration, state: ladder.LadderState) -> str | None:
    """Carry out one ladder action through the wrapper; returns an error sentence if libvirt refused."""
    try:
        if isinstance(action, ladder.SetDowntime):
            migration.set_max_downtime(action.downtime_ms)
        elif isinstance(action, ladder.StartPostCopy):
            migration.start_postcopy()
        elif isinstance(action, ladder.Abort):
            migration.abort()
    except libvirt.libvirtError as exc:
        if isinstance(action, ladder.StartPostCopy):
            state.postcopy_at = None  # it did not happen: the ladder may not count on it
        return f"libvirt refused: {exc}"
    return None


def _finite(seconds: float) -> float | None:
    """Seconds rounded for the task's ETA, or None when infinite (will not converge).

    >>> _finite(12.345), _finite(float("inf"))
    (12.3, None)
    """
    return round(seconds, 1) if math.isfinite(seconds) else None


def _stop(migration: mig.LiveMigration, seen: dict, task) -> None:
    """After an unexpected error in the loop: end the libvirt job before letting go of the hosts.

    The job's node claims are released when the task ends, so a migration
    still streaming would overlap the next task on these nodes. Abort it
    (never in post-copy, which would lose the guest) and wait for libvirt.
    """
    if migration is None or migration.done:
        return
    if not seen.get("postcopy"):
        migration.abort()
    migration.wait(STOP_WAIT_S)
    log.warning("task %s: stopped the libvirt job after an error (done=%s)", task.id,
                migration.done)


def _monitor(task, migration: mig.LiveMigration, settings: ladder.LadderSettings,
             seen: dict) -> dict:
    """Poll the job until migrateToURI3 returns; `seen` (the caller's) records what it saw."""
    state, series, history = ladder.LadderState(), [], []
    t0 = time.monotonic()
    seen.update(cancelled=False, aborted=None, not_converging=False, samples=0, postcopy=False)
    last_eta, deferred_downtime = 0.0, None
    while not migration.done:
        now = time.monotonic()
        raw = migration.stats()
        if raw:
            stats = ladder.JobStats.from_libvirt(raw)
            if stats.active:
                seen["samples"] += 1
                series.append(stats)
                history.append([round(now - t0, 2), stats.memory_remaining, stats.data_remaining])
                task.progress = _progress(stats, history)
                for action in ladder.decide(state, stats, now, settings):
                    if isinstance(action, ladder.SetDowntime) and not stats.ram_phase:
                        # Before the RAM phase libvirt does not take this call: it queues it
                        # behind the disk copy (seen blocking a whole migration on a slow
                        # link), and the downtime only matters at switch-over anyway.
                        deferred_downtime, problem = action.downtime_ms, None
                    else:
                        problem = _apply(action, migration, state)
                    if isinstance(action, ladder.Abort):
                        seen["aborted"] = action.reason
                    if isinstance(action, ladder.WillNotConverge):
                        seen["not_converging"] = True
                    event(task, action.kind, action.message + (f" ({problem})" if problem else ""),
                          commit=False)
                seen["postcopy"] = state.in_postcopy
                if deferred_downtime is not None and stats.ram_phase:
                    _apply(ladder.SetDowntime(downtime_ms=deferred_downtime, step=-1, message=""),
                           migration, state)
                    deferred_downtime = None
                if now - last_eta >= 2 and len(series) >= 3:
                    last_eta = now
                    live = estimation.live_estimate(series[-20:], settings.downtime_target_ms)
                    if live is not None:
                        eta = dict(task.eta or {})
                        # An estimate that will not converge is infinite: stored as null
                        # (JSON has no Infinity, and PostgreSQL refuses it).
                        # What the model cannot see (libvirt's setup and finish) is learned
                        # from recent moves; the raw figure is kept for that learning.
                        tail = seen.setdefault("tail", calibration.live_tail()) or 0.0
                        point = {"at_s": round(now - t0, 1),
                                 "remaining_s": _finite(live.seconds + tail),
                                 "model_remaining_s": _finite(live.seconds), "tail_s": tail,
                                 "low_s": _finite(live.low + tail), "high_s": _finite(live.high + tail),
                                 "converges": live.converges, "percent": task.progress["percent"]}
                        eta["live"] = point
                        eta["history"] = (eta.get("history") or [])[-200:] + [point]
                        task.eta = eta
                db.session.commit()
        if not seen["cancelled"] and cancel_requested(task.id):
            seen["cancelled"] = True
            if state.in_postcopy:
                event(task, "cancel-refused", "Cancel refused: the migration is in post-copy, "
                      "where aborting would lose the guest; it will finish on the destination.")
            else:
                migration.abort()
                event(task, "abort", "Cancel: asked libvirt to abort the migration.")
        migration.wait(POLL_S)  # wakes as soon as libvirt returns, not at the next tick
    return seen


def run(task) -> None:
    """Live-migrate task.server from task.source to task.destination (see the module's steps)."""
    server, source, destination = task.server, task.source, task.destination
    convert_to = task.group.options.get("convert_to")
    with resources.open_ssh(source) as src_ssh, resources.open_ssh(destination) as dst_ssh, \
            resources.open_libvirt(source) as src, resources.open_libvirt(destination) as dst, \
            resources.open_libvirt(source) as control:
        try:
            dom = src.conn.lookupByUUIDString(server.uuid)
        except libvirt.libvirtError as exc:
            raise FerryError(f"{server.name} is not on {source.name}: {exc}") from exc
        if not dom.isActive():
            raise FerryError(f"{server.name} is not running: live migration needs a running server")
        if mig.where_is(dst.conn, server.uuid).defined:
            raise FerryError(f"{destination.name} already has a domain with {server.name}'s UUID")
        live_xml = dom.XMLDesc(libvirt.VIR_DOMAIN_XML_MIGRATABLE)
        plan = disk_plan(mig.disk_targets(live_xml), convert_to)

        task.phase = "preparing"
        created, migration, seen = [], None, {}
        try:
            for disk in plan:
                exists = ssh.run(dst_ssh, ["test", "-e", disk["dst_path"]])
                if exists.ok:
                    raise FerryError(f"{destination.name} already has a file at {disk['dst_path']}:"
                                     " refusing to overwrite it")
                size = _virtual_size(src_ssh, disk["path"])
                made = ssh.run(dst_ssh, storage.create_disk(disk["dst_path"], disk["dst_format"], size))
                if not made.ok:
                    raise FerryError(f"cannot create {disk['dst_path']} on {destination.name}: "
                                     f"{made.stderr.strip()}")
                created.append(disk["dst_path"])
            event(task, "disks-prepared", f"Destination disks pre-created sparse on "
                  f"{destination.name}: " + ", ".join(f"{d['dst_path']} ({d['dst_format']})" for d in plan))

            params = {libvirt.VIR_MIGRATE_PARAM_MIGRATE_DISKS: [d["target"] for d in plan]}
            if any(d["dst_path"] != d["path"] or d["dst_format"] != d["format"] for d in plan):
                changes = {d["target"]: (d["dst_path"], d["dst_format"]) for d in plan}
                params[libvirt.VIR_MIGRATE_PARAM_DEST_XML] = mig.destination_xml(live_xml, changes)
                params[libvirt.VIR_MIGRATE_PARAM_PERSIST_XML] = mig.destination_xml(
                    dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE | libvirt.VIR_DOMAIN_XML_MIGRATABLE),
                    changes)
            settings = settings_for(task)
            flags = mig.migration_flags(auto_converge=settings.auto_converge,
                                        postcopy=settings.postcopy)
            migration = mig.LiveMigration(dom, peer_uri(destination), params, flags,
                                          control=control.conn.lookupByUUIDString(server.uuid))
            # The ladder's first, lowest downtime is set before the start: once the job runs,
            # libvirt takes the call only in the RAM phase (see _monitor).
            first_ms = ladder.downtime_steps(settings, server.memory_mib * 2**20)[0][1]
            _apply(ladder.SetDowntime(downtime_ms=first_ms, step=0, message=""), migration,
                   ladder.LadderState())
            started = time.monotonic()
            task.phase = "migrating"
            task.started_at = task.started_at or utcnow()
            db.session.commit()
            migration.start()
            event(task, "migrating", "libvirt started the peer-to-peer migration"
                  + (" with auto-converge" if settings.auto_converge else "")
                  + (", post-copy allowed" if settings.postcopy else "") + ".")
            _monitor(task, migration, settings, seen)
            wall_ms = int((time.monotonic() - started) * 1000)
        except BaseException:
            db.session.rollback()  # a failed flush must not block the cleanup's own writes
            _stop(migration, seen, task)
            remove_unless_defined(dst, dst_ssh, server.uuid, created, task)
            raise

        at_src, at_dst = settle(source, destination, server.uuid, src, dst)
        if at_src.error or at_dst.error:
            # Never decide on a host that did not answer: a killed libvirtd reads as "absent",
            # and acting on that once deleted a source disk the source still used.
            raise NeedsAttention(
                f"Needs attention: after the migration call returned, "
                f"{source.name if at_src.error else destination.name}'s libvirt did not answer "
                f"for {SETTLE_S} s ({at_src.error or at_dst.error}). Nothing was removed on either "
                f"side; recovery will ask again, or check both hosts.")
        if at_dst.running and not at_src.running:
            completed = mig.completed_stats(dst.conn, server.uuid)
            result = {
                "downtime_ms": completed.get("downtime"), "total_ms": completed.get("time_elapsed")
                or wall_ms, "wall_ms": wall_ms,
                "bytes": completed.get("data_processed"),
                "memory_bytes": completed.get("memory_processed"),
                "disk_bytes": completed.get("disk_processed"), "postcopy": seen["postcopy"],
                "phases": {"migrate_ms": wall_ms}, "source_defined_after": at_src.defined,
            }
            remove_source_disks(src, src_ssh, server.uuid, plan, source, task)
            record_moved(server, destination, plan, status.SERVER_RUNNING)
            finish_success(task, f"{server.name} runs on {destination.name}: downtime "
                           f"{result['downtime_ms']} ms, {wall_ms / 1000:.1f} s in all.", result)
            return
        if at_src.running and not at_dst.defined:
            remove_unless_defined(dst, dst_ssh, server.uuid, created, task)
            reason = migration.error or "libvirt reported no error"
            if seen["cancelled"]:
                raise Cancelled(f"Cancelled: {server.name} keeps running on {source.name}; "
                                f"nothing is left on {destination.name}.")
            if seen["aborted"]:
                raise FerryError(f"Aborted by the ladder ({seen['aborted']}): {server.name} keeps "
                                 f"running on {source.name}. libvirt: {reason}")
            raise FerryError(f"Migration failed, {server.name} keeps running on {source.name}: "
                             f"{reason}")
        raise NeedsAttention(
            f"Needs attention: after the migration {source.name} reports "
            f"defined={at_src.defined} running={at_src.running} and {destination.name} reports "
            f"defined={at_dst.defined} running={at_dst.running}; libvirt said: {migration.error}")


SETTLE_S = 30


def settle(source, destination, uuid, src, dst, wait_s: float = SETTLE_S):
    """Where the domain is after the call returned, from both hosts; a host whose libvirt does not
    answer (killed, restarting) is asked again on a fresh connection until it does or wait_s ends.

    Returns (source place, destination place); either may still carry an error, and then the
    caller must not act on it.
    """
    at_src, at_dst = mig.where_is(src.conn, uuid), mig.where_is(dst.conn, uuid)
    deadline = time.monotonic() + wait_s
    while (at_src.error or at_dst.error) and time.monotonic() < deadline:
        time.sleep(2)
        try:
            if at_src.error:
                with resources.open_libvirt(source) as fresh:
                    at_src = mig.where_is(fresh.conn, uuid)
            if at_dst.error:
                with resources.open_libvirt(destination) as fresh:
                    at_dst = mig.where_is(fresh.conn, uuid)
        except FerryError:
            continue
    return at_src, at_dst


def remove_unless_defined(dst, dst_ssh, uuid, paths, task) -> None:
    """Remove disks pre-created on the destination, unless a domain there now uses them."""
    place = mig.where_is(dst.conn, uuid)
    if not paths or place.defined:
        return
    if place.error:  # a disk a running domain uses must never go: keep them, say so
        event(task, "cleanup", "Kept the pre-created disks on the destination: its libvirt did "
              f"not answer ({place.error}): " + ", ".join(paths))
        return
    allowed = {posixpath.dirname(p) for p in paths}
    for path in paths:
        ssh.run(dst_ssh, storage.remove_disk(path, allowed))
    event(task, "cleanup", "Removed the pre-created disks from the destination: " + ", ".join(paths))


def remove_source_disks(src, src_ssh, uuid, plan, source, task) -> None:
    """After success, delete the source's copies (libvirt never does), only if the source let go."""
    place = mig.where_is(src.conn, uuid)
    if place.defined or place.error:
        event(task, "cleanup", f"{source.name} still defines the domain or could not say "
              f"({place.error or 'defined'}): its disks were kept.")
        return
    allowed = [p.get("path") for p in (source.facts or {}).get("storage_pools", []) if p.get("path")]
    removed = []
    for disk in plan:
        try:
            argv = storage.remove_disk(disk["path"], allowed)
        except storage.RefusedCommand as exc:
            event(task, "cleanup", f"Kept {disk['path']} on {source.name}: {exc}")
            continue
        if ssh.run(src_ssh, argv).ok:
            removed.append(disk["path"])
    if removed:
        event(task, "cleanup", f"Removed the source's disks on {source.name}: " + ", ".join(removed))


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
