"""Live migration of one server: libvirt p2p with copied disks, watched by the escalation ladder.

Journaled steps (services.steps), each a line on the task's timeline:

    prepare-destination-disks -> migrate -> verify-destination -> record-destination
    -> remove-source-leftovers

1. pre-create sparse destination disks, exclusively (libvirt would make a fully
   allocated qcow2), and carry the NVRAM file;
2. migrateToURI3 peer-to-peer (the source libvirtd finishes it even if we die),
   polled twice a second: progress, live ETA, ladder actions, cancel requests.
   A worker that dies here leaves a job recovery adopts: it resumes the loop
   on the running job, ladder, deadline and cancel included;
3. ask both nodes where the server is: it must run on the destination,
   persistently, and not on the source (running on both: paused at once, one
   copy kept, see `both_running`);
4. the inventory records the server on the destination, running, before anything on the
   source is touched: a source that dies now (a failing host being evacuated) leaves a task
   that needs a person for the disks it kept, never a server recorded on the wrong node;
5. the source's leftovers go: a stale shut-off definition (its libvirtd died
   before Confirm) and its disks.
"""
from __future__ import annotations

import logging
import math
import posixpath
import time

from flask import current_app

from app import status
from app.blobs import EtaPoint, Progress, TaskResult
from app.errors import FerryError
from app.extensions import db
from app.infra import migration as mig
from app.infra.commands import peer, storage
from app.models import utcnow
from app.services import calibration, certificates, disks, estimation, journal, ladder
from app.services.lease import LeaseLost
from app.services.steps import (ADOPT, ATTENTION, DONE, Decision, Move, REDO, ROLLBACK, Runner,
                                Step, carry_state, remove_source_files, request_phases,
                                source_removal_names, start)
from app.services.timeline import (Cancelled, NeedsAttention, cancel_requested, event,
                                   finish_success)

POLL_S = 0.5
HISTORY_POINTS = 240
STOP_WAIT_S = 300  # an aborted p2p job ends in seconds; post-copy is left to finish
# A live estimate at least every ETA_EVERY_S, and in a move's first seconds at every poll:
# an estimate is never older than an eighth of the time the move has run. With every 2 s
# alone, a quarter of the way through a 7 s move the user still saw the estimate made at
# 1 s, from libvirt's set-up (bench link_eta).
ETA_EVERY_S = 2.0

log = logging.getLogger("ferry.live")


def peer_uri(destination) -> str:
    """The URI the source libvirtd uses to reach the destination's libvirtd: node-to-node SSH
    through the wrapper `pin_peer` installs, which checks the key Ferry pinned (commands.peer)."""
    name = peer.pin_name(destination.host, destination.port, destination.host_key)
    return peer.uri(destination.user, destination.host, destination.port, name)


def pin_peer(move: Move) -> None:
    """Install on the source, over Ferry's pinned SSH, the destination's pinned host key and
    the ssh wrapper `peer_uri` names: the p2p connection trusts that key, nothing else."""
    destination = move.destination
    if not destination.host_key:
        raise FerryError(f"{destination.name} has no pinned host key: the source could not "
                         "check whom it migrates to")
    name = peer.pin_name(destination.host, destination.port, destination.host_key)
    try:
        argv = peer.install(name, destination.host_key)
    except ValueError as exc:
        raise FerryError(f"{destination.name}: {exc}") from exc
    done = move.sh("source", argv, stdin=peer.wrapper(name))
    if not done.ok:
        raise FerryError(f"{move.source.name}: cannot install the host key pinned for "
                         f"{destination.name} in {peer.PEER_DIR}: {done.stderr.strip()[:300]}")


def _explain(reason: str, move: Move) -> str:
    """libvirt's error, with what a refused host key means here."""
    if "host key verification failed" in reason.lower():
        return (f"{reason} ({move.destination.name} did not present the host key Ferry pinned "
                f"for it, {move.destination.host_key_fingerprint}, to {move.source.name}: "
                "nothing was sent)")
    return reason


def settings_for(task) -> ladder.LadderSettings:
    """Ladder settings from the site's configuration and the task's options."""
    cfg = current_app.config
    knobs = {"downtime_target_ms": cfg["DOWNTIME_TARGET_MS"],
             "progress_timeout_s": cfg["PROGRESS_TIMEOUT"],
             "completion_timeout_per_gib_s": cfg["COMPLETION_TIMEOUT_PER_GIB"]}
    # LADDER_OVERRIDES (any LadderSettings field) wins, even over the FERRY_* values above.
    knobs.update(cfg.get("LADDER_OVERRIDES") or {})
    return ladder.LadderSettings(postcopy=task.group.options_record.allow_postcopy, **knobs)


def _virtual_size(move: Move, path: str, fmt: str) -> int:
    """A disk's virtual size read on the source with qemu-img (force-share: the guest runs)."""
    result = move.sh("source", storage.image_info(path, fmt, force_share=True))
    if not result.ok:
        raise FerryError(f"cannot read disk {path} on {move.source.name}: {result.stderr.strip()}")
    try:
        return storage.parse_virtual_size(result.stdout)
    except ValueError as exc:
        raise FerryError(f"{move.source.name} answered qemu-img info for {path} with something "
                         f"Ferry cannot read: {exc}") from exc


def eta_due(at_s: float, last_at_s: float) -> bool:
    """Whether the monitor loop makes a live estimate `at_s` into the move, the last having been
    made at `last_at_s`: every poll at first, then every eighth of the elapsed time, at least
    every ETA_EVERY_S.

    >>> eta_due(1.5, 1.0), eta_due(8.5, 8.0), eta_due(10.0, 8.0), eta_due(30.0, 29.0)
    (True, False, True, False)
    """
    return at_s - last_at_s >= min(ETA_EVERY_S, max(POLL_S, at_s / 8)) - 1e-6


def _progress(stats: ladder.JobStats, history: list) -> dict:
    """The task's progress record from one jobStats sample."""
    return Progress(
        percent=round(ladder.progress_percent(stats), 1), elapsed_ms=stats.time_elapsed_ms,
        data_total=stats.data_total, data_processed=stats.data_processed,
        data_remaining=stats.data_remaining,
        memory_total=stats.memory_total, memory_processed=stats.memory_processed,
        memory_remaining=stats.memory_remaining,
        disk_total=stats.disk_total, disk_processed=stats.disk_processed,
        disk_remaining=stats.disk_remaining,
        dirty_rate_bps=stats.memory_dirty_rate_bps, bps=stats.memory_bps,
        iteration=stats.memory_iteration, throttle=stats.auto_converge_throttle,
        history=history[-HISTORY_POINTS:]).to_json()


def _apply(action, migration: mig.LiveMigration, state: ladder.LadderState) -> str | None:
    """Carry out one ladder action through the wrapper; returns an error sentence if libvirt refused."""
    try:
        if isinstance(action, ladder.SetDowntime):
            migration.set_max_downtime(action.downtime_ms)
        elif isinstance(action, ladder.StartPostCopy):
            migration.start_postcopy()
        elif isinstance(action, ladder.Abort):
            migration.abort()
    except mig.MigrationRefused as exc:
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


def _eta_point(task, series, settings: ladder.LadderSettings, seen: dict, at_s: float):
    """The live estimate from the recent samples, or None without one.

    What the model cannot see (libvirt's finish, and during the disk copy what it gets wrong
    there) is learned from recent moves like this one, per phase, once per move (into
    `seen`); the raw figure and the phase are kept for that learning. An
    estimate that will not converge is infinite: stored as null (JSON has no Infinity, and
    PostgreSQL refuses it).
    """
    if "tails" not in seen:
        like = calibration.Like(task.source_id, task.destination_id, task.server.memory_mib)
        # The disk copy's estimate counts all the memory the guest touched, more than QEMU
        # sends in full (some of it is zeros): an upper bound that already covered libvirt's
        # finish in the lab, where adding the RAM phase's tail made it +17..+31 %. So it has
        # no tail until moves like this one taught it one.
        seen["tails"] = {"ram": calibration.live_tail(like, "ram"),
                         "disk": calibration.live_tail(like, "disk")}
        # The preflight's throughput between the nodes: memory goes no faster than that.
        rates = (task.preflight or {}).get("throughput_bps") or {}
        seen["link_bps"] = rates.get(task.source.name) if task.source else None
        # The data the disks hold: the disk copy sends that much, whatever their size. And
        # the memory the guest ever touched, as the preflight read it: the rest goes as zeros.
        seen["disk_data"] = sum(disk.allocation or 0 for disk in task.server.disks)
        seen["memory"] = (_preflight_figure(task, "measured", "touched_bytes")
                          or task.server.memory_mib * 2**20)
        # How fast the guest writes, as the preflight sampled it (FERRY_SAMPLE_DIRTY_RATE) or
        # learned from its last move: libvirt measures it only from the second memory pass on.
        seen["dirty"] = _preflight_figure(task, "dirty_rate_bps")
        # And the most its last move found dirty after a pass: no later pass resends more.
        seen["dirty_set"] = _preflight_figure(task, "measured", "dirty_set_bytes")
    live = estimation.live_estimate(series[-20:], settings.downtime_target_ms,
                                    link_bps=seen["link_bps"],
                                    disk_data_bytes=seen.get("disk_data"),
                                    memory_bytes=seen.get("memory"), dirty_bps=seen.get("dirty"),
                                    dirty_set_bytes=seen.get("dirty_set"))
    if live is None:
        return None
    phase = "ram" if series[-1].ram_phase else "disk"
    tail = seen["tails"][phase] or 0.0
    return EtaPoint(at_s=at_s, remaining_s=_finite(live.seconds + tail),
                    model_remaining_s=_finite(live.seconds), tail_s=tail,
                    low_s=_finite(live.low + tail), high_s=_finite(live.high + tail),
                    converges=live.converges, percent=task.progress_record.percent,
                    phase=phase)


def _preflight_figure(task, *keys) -> float | None:
    """The task's server's positive number under `keys` in its preflight report, else None.

    >>> from types import SimpleNamespace as NS
    >>> task = NS(server=NS(name="web"), preflight={"measured": {"touched_bytes": {"web": 5}}})
    >>> _preflight_figure(task, "measured", "touched_bytes"), _preflight_figure(task, "eta")
    (5, None)
    """
    figures = task.preflight or {}
    for key in keys:
        figures = figures.get(key) or {}
    value = figures.get(task.server.name)
    return value if isinstance(value, (int, float)) and value > 0 else None


def _note_dirty_rate(seen: dict, stats: ladder.JobStats, state: ladder.LadderState) -> None:
    """Keep the fastest rate at which libvirt saw the guest dirty its memory, apart for samples
    taken while auto-converge slowed the guest, and the most memory a pass found dirty (what
    the guest writes to: every later pass resends at most that): the next preflight of this
    server stands them in for the sample it cannot take (services.preflight.learn_dirty_rates).
    libvirt measures the rate from the second pass on; in post-copy pages are not resent, so
    its figures mean nothing."""
    if stats.memory_iteration < 2 or state.in_postcopy:
        return
    seen["dirty_set_seen"] = max(seen.get("dirty_set_seen") or 0, stats.memory_remaining)
    if stats.memory_dirty_rate_bps <= 0:
        return
    key = "dirty_throttled" if stats.auto_converge_throttle else "dirty_free"
    seen[key] = max(seen.get(key) or 0, stats.memory_dirty_rate_bps)


def dirty_rate_seen(seen: dict) -> int | None:
    """The guest's dirty rate a move saw (bytes/s): unthrottled if libvirt measured one, else
    the throttled one (less than the guest's own rate, more than knowing nothing), else None.

    >>> dirty_rate_seen({"dirty_free": 5, "dirty_throttled": 9}), dirty_rate_seen({})
    (5, None)
    """
    return seen.get("dirty_free") or seen.get("dirty_throttled") or None


def _monitor(task, migration, settings: ladder.LadderSettings, seen: dict,
             elapsed_s: float = 0.0, check=None) -> dict:
    """Poll the job until it ends; `seen` (the caller's) records what it saw.

    `migration` is a LiveMigration (our call) or an AdoptedMigration (a dead job's);
    `elapsed_s` is how long the job already ran, so an adopted one keeps its deadline.
    `check()` runs every poll: it raises LeaseLost once another owner took the task, and
    this loop then stops acting on the job (the new owner adopts it).
    """
    state, series, history = ladder.LadderState(), [], []
    t0 = time.monotonic() - elapsed_s
    if elapsed_s:
        state.started_at = t0
    seen.update(cancelled=False, aborted=None, not_converging=False, samples=0, postcopy=False)
    last_eta, deferred_downtime = -math.inf, None
    while not migration.done:
        if check is not None:
            check()
        now = time.monotonic()
        raw = migration.stats()
        if raw:
            stats = ladder.JobStats.from_libvirt(raw)
            if stats.active:
                seen["samples"] += 1
                _note_dirty_rate(seen, stats, state)
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
                if len(series) >= 3 and eta_due(now - t0, last_eta):
                    last_eta = now - t0
                    point = _eta_point(task, series, settings, seen, round(now - t0, 1))
                    if point is not None:
                        task.eta = task.eta_record.with_point(point).to_json()
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



def _plan(move: Move) -> list[dict]:
    return move.state["plan"]


class PrepareDestinationDisks(Step):
    """Pre-create each destination disk sparse and exclusively; carry the NVRAM file."""

    name = "prepare-destination-disks"

    def names(self, move):
        # "paths" grows as each file is created: a name someone else holds is never ours to remove.
        nvram = disks.nvram_path(move.task.domain_xml)
        return {"node": "destination", "paths": [],
                "intended": [d["dst_path"] for d in _plan(move)] + ([nvram] if nvram else [])}

    def run(self, move, entry):
        for disk in _plan(move):
            size = _virtual_size(move, disk["path"], disk["format"])
            made = move.sh("destination", storage.create_disk_exclusive(
                disk["dst_path"], disk["dst_format"], size))
            if not made.ok:
                raise FerryError(f"cannot create {disk['dst_path']} on {move.destination.name}: "
                                 f"{made.stderr.strip()}")
            journal.add_names(entry, paths=[disk["dst_path"]])
        carry_state(move, entry, tpm=False)
        move.event("disks-prepared", f"Destination disks pre-created sparse on "
                   f"{move.destination.name}: " + ", ".join(
                       f"{d['dst_path']} ({d['dst_format']})" for d in _plan(move)))

    def settle(self, move, entry):
        return Decision(ROLLBACK, "empty disks alone move nothing")

    def undo(self, move, entry):
        remove_unless_defined(move, entry.names.get("paths") or [])


def remove_unless_defined(move: Move, paths: list[str]) -> None:
    """Remove files the task made on the destination, unless a domain there may use them."""
    if not paths:
        return
    place = move.place("destination")
    if place.error or place.defined:
        from app.infra.host import HostUnknown
        raise HostUnknown(f"kept {', '.join(paths)} on {move.destination.name}: "
                          + (f"its libvirt did not answer ({place.error})" if place.error
                             else "it defines the server"))
    for path in paths:
        move.sh("destination", storage.remove_disk(path, [posixpath.dirname(path)]))
    move.event("cleanup", "Removed the pre-created disks from the destination: " + ", ".join(paths))


def decide_migrate(at_src, at_dst) -> Decision:
    """Pure: what the nodes' answers say about an interrupted or returned migration.

    >>> from app.infra.migration import DomainPlace as P
    >>> decide_migrate(P(True, True, job_active=True), P(True, False, paused=True)).action
    'adopt'
    >>> decide_migrate(P(False, False), P(True, True, persistent=True)).action
    'done'
    >>> decide_migrate(P(True, False, persistent=True), P(True, True, persistent=True)).action
    'done'
    >>> decide_migrate(P(True, True), P(False, False)).action
    'roll-back'
    >>> decide_migrate(P(True, True), P(True, True)).action
    'needs-attention'
    >>> decide_migrate(P(True, True), P(False, False, error="gone")).action
    'needs-attention'
    """
    if at_src.error or at_dst.error:
        return Decision(ATTENTION, f"a node did not answer ({at_src.error or at_dst.error})")
    if at_src.job_active:
        return Decision(ADOPT, "libvirt still migrates the server")
    if at_src.running and at_dst.running:
        return Decision(ATTENTION, "the server runs on both nodes")
    if at_dst.running and not at_src.running:
        # A shut-off definition left on the source (its libvirtd died before Confirm) is a
        # leftover the next step removes, not a second copy.
        return Decision(DONE, "the destination runs the server")
    if at_src.running and not at_dst.defined:
        return Decision(ROLLBACK, "the source still runs the server; the destination has nothing")
    if at_src.running and at_dst.defined and not at_dst.running and not at_dst.persistent:
        return Decision(ROLLBACK, "the source runs the server; the destination holds only a "
                                  "transient, stopped incoming copy")
    return Decision(ATTENTION, f"source defined={at_src.defined} running={at_src.running}, "
                               f"destination defined={at_dst.defined} running={at_dst.running}")


class Migrate(Step):
    """libvirt's peer-to-peer migration, watched by the ladder until it ends."""

    name = "migrate"
    phase = "migrate_outcome"  # after its own laps: migrate_setup, migrate (the call)

    def names(self, move):
        return {"node": "source", "job": "migration", "uri": peer_uri(move.destination),
                "tls": certificates.tls_for(move.source, move.destination)}

    def run(self, move, entry):
        server, settings = move.server, settings_for(move.task)
        changes = {d["target"]: (d["dst_path"], d["dst_format"]) for d in _plan(move)
                   if d["dst_path"] != d["path"] or d["dst_format"] != d["format"]}
        dest_xml = persist_xml = None
        if changes:
            dest_xml = mig.destination_xml(move.state["live_xml"], changes)
            persist_xml = mig.destination_xml(move.state["persist_xml"], changes)
        params = mig.migration_params([d["target"] for d in _plan(move)], dest_xml, persist_xml)
        flags = mig.migration_flags(auto_converge=settings.auto_converge, postcopy=settings.postcopy,
                                    tls=bool(entry.names.get("tls")))
        pin_peer(move)
        migration = move.host("source").migration(server.uuid, entry.names["uri"], params, flags,
                                                  control=move.host("control"))
        # The ladder's first, lowest downtime is set before the start: once the job runs,
        # libvirt takes the call only in the RAM phase (see _monitor).
        first_ms = ladder.downtime_steps(settings, server.memory_mib * 2**20)[0][1]
        _apply(ladder.SetDowntime(downtime_ms=first_ms, step=0, message=""), migration,
               ladder.LadderState())
        seen = move.state.setdefault("seen", {})
        started = time.monotonic()
        move.task.started_at = move.task.started_at or utcnow()
        db.session.commit()
        move.lap("migrate_setup")
        migration.start()
        move.event("migrating", "libvirt started the peer-to-peer migration"
                   + (" over TLS" if entry.names.get("tls") else " in clear")
                   + (" with auto-converge" if settings.auto_converge else "")
                   + (", post-copy allowed" if settings.postcopy else "") + ".")
        try:
            _monitor(move.task, migration, settings, seen, check=move.check)
        except LeaseLost:
            raise  # the job is the new owner's now: it adopts it, nothing is stopped here
        except BaseException:
            db.session.rollback()
            _stop(migration, seen, move.task)
            raise
        move.state["wall_ms"] = int((time.monotonic() - started) * 1000)
        move.lap("migrate")  # the call, until libvirt returned (the outcome's lap is the step's)
        return self.outcome(move, migration.error, seen)

    def outcome(self, move, error, seen) -> dict:
        """After the job ended: the nodes' answers decide (raising when it did not move)."""
        at_src, at_dst = move.place("source"), move.place("destination")
        decision = decide_migrate(at_src, at_dst)
        if decision.action == ADOPT:  # the call returned but libvirt still finishes: wait for it
            adopted = mig.AdoptedMigration(move.host("control"), move.server.uuid, move.sleep)
            while not adopted.done:
                adopted.wait(1.0)
            at_src, at_dst = move.place("source"), move.place("destination")
            decision = decide_migrate(at_src, at_dst)
        seen_nodes = {"source": at_src.__dict__, "destination": at_dst.__dict__}
        if decision.action == DONE:
            return {"postcopy": bool(seen.get("postcopy")), "nodes": seen_nodes,
                    "dirty_rate_bps": dirty_rate_seen(seen),
                    "dirty_set_bytes": seen.get("dirty_set_seen") or None}
        reason = _explain(error or "libvirt reported no error", move)
        if decision.action == ROLLBACK:
            if seen.get("cancelled"):
                raise Cancelled(f"Cancelled: {move.server.name} keeps running on "
                                f"{move.source.name}; nothing is left on {move.destination.name}.")
            if seen.get("aborted"):
                raise FerryError(f"Aborted by the ladder ({seen['aborted']}): {move.server.name} "
                                 f"keeps running on {move.source.name}. libvirt: {reason}")
            raise FerryError(f"Migration failed, {move.server.name} keeps running on "
                             f"{move.source.name}: {reason}")
        if at_src.running and at_dst.running:
            both_running(move)
        raise NeedsAttention(f"Needs attention: after the migration {decision.reason}; "
                             f"libvirt said: {reason}. Nothing was removed on either side.")

    def settle(self, move, entry):
        return decide_migrate(move.place("source"), move.place("destination"))

    def adopt(self, move, entry) -> Decision:
        """Drive a migration a dead job started: ladder, deadline and cancel apply to it."""
        settings = settings_for(move.task)
        started = move.task.started_at or entry.started_at
        elapsed = max(0.0, (utcnow() - started).total_seconds()) if started else 0.0
        move.event("adopted", f"Recovery adopted the running migration ({elapsed:.0f} s old): "
                              "the ladder, the deadline and cancel apply again.")
        adopted = mig.AdoptedMigration(move.host("control"), move.server.uuid, move.sleep)
        seen = move.state.setdefault("seen", {})
        _monitor(move.task, adopted, settings, seen, elapsed_s=elapsed, check=move.check)
        try:
            data = self.outcome(move, adopted.error, seen)
        except (Cancelled, FerryError) as exc:
            if isinstance(exc, NeedsAttention):
                return Decision(ATTENTION, str(exc))
            move.state["failure"] = exc
            return Decision(ROLLBACK, str(exc))
        journal.done(entry, data)
        return Decision(DONE, "the adopted migration completed")

    def undo(self, move, entry):
        place = move.place("source")
        if place.job_active:
            move.host("source").abort_job(move.server.uuid)
            adopted = mig.AdoptedMigration(move.host("control"), move.server.uuid, move.sleep)
            for _ in range(int(STOP_WAIT_S)):
                if adopted.done:
                    break
                adopted.wait(1.0)
        drop_incoming_copy(move)


def drop_incoming_copy(move: Move) -> None:
    """Destroy the paused, transient copy a failed migration left on the destination.

    When the destination's libvirtd dies during the copy and comes back, it keeps the
    half-received incoming domain, paused and transient, though the migration failed and the
    source runs on. That copy is this task's own (nothing else makes a transient domain of the
    server there) and never ran as the server: it goes, so the pre-created disks can go too.
    Only while the source runs with no job: a paused source (a ladder's pause, post-copy's
    switch-over) leaves the two copies to a person.
    """
    at_src, at_dst = move.place("source"), move.place("destination")
    if at_src.error or at_dst.error or not at_src.running or at_src.job_active:
        return
    if not (at_dst.defined and at_dst.paused and at_dst.persistent is False):
        return
    move.host("destination").destroy(move.server.uuid)
    move.event("cleanup", f"Destroyed the paused incoming copy the failed migration left on "
                          f"{move.destination.name}; {move.server.name} runs on "
                          f"{move.source.name}.")


def both_running(move: Move) -> None:
    """The server runs on both nodes: two copies with copied disks diverge at once.

    Pause both; keep the copy libvirt's job records as switched over (the destination only
    when its completed incoming job says so, else the source); let the kept one run and check
    it does; only then stop and undefine the other. A destination copy's disks (the task made
    them) go with it; a source copy's disks are kept for a person to look at.
    """
    uuid = move.server.uuid
    for which in ("source", "destination"):
        try:
            move.host(which).suspend(uuid)
        except FerryError as exc:
            move.event("split", f"Could not pause the copy on {move.resource(which).name}: {exc}")
    try:
        record = move.host("destination").job_stats(uuid, completed=True)
    except FerryError:
        record = {}
    keep = "destination" if record.get("type") == mig.COMPLETED_JOB else "source"
    other = "source" if keep == "destination" else "destination"
    move.host(keep).resume(uuid)
    if not move.place(keep).running:
        move.event("split", f"{move.server.name} ran on both nodes; both are paused and the copy "
                            f"on {move.resource(keep).name} did not resume: a person must decide.")
        return
    move.host(other).destroy(uuid)
    if move.place(other).defined:
        move.host(other).undefine(uuid)
    if other == "destination":  # the copy it ran from files this task made: they go too
        remove_unless_defined(move, journal.created(move.task, "destination"))
    move.event("split", f"{move.server.name} was running on both nodes. Both were paused; the copy "
                        f"on {move.resource(keep).name} was kept ({'libvirt recorded the switch-over' if keep == 'destination' else 'no switch-over was recorded'}) "
                        f"and runs; the one on {move.resource(other).name} was stopped and "
                        "undefined, its disks kept.", data={"completed_job": record})


class VerifyDestination(Step):
    """The destination runs the server persistently; its finished job gives the downtime."""

    name = "verify-destination"

    def run(self, move, entry):
        at_dst = move.place("destination")
        if at_dst.error or not at_dst.running:
            raise FerryError(f"{move.destination.name} does not run {move.server.name}: "
                             f"{at_dst.error or 'not running'}")
        if at_dst.persistent is False:
            move.host("destination").define(move.host("destination").xml(
                move.server.uuid, inactive=False, migratable=True))
            move.event("defined", f"Made the definition on {move.destination.name} persistent.")
        try:
            completed = move.host("destination").job_stats(move.server.uuid, completed=True)
        except FerryError:
            completed = {}
        return {"downtime_ms": completed.get("downtime"), "time_ms": completed.get("time_elapsed"),
                "bytes": completed.get("data_processed"),
                "memory_bytes": completed.get("memory_processed"),
                "disk_bytes": completed.get("disk_processed")}

    def settle(self, move, entry):
        return Decision(REDO, "asking the destination again changes nothing")


class RecordDestination(Step):
    """The inventory follows the server the destination was just seen running: node, state,
    disk paths and formats."""

    name = "record-destination"

    def run(self, move, entry):
        disks.record_moved(move.server, move.destination, _plan(move), status.SERVER_RUNNING)

    def settle(self, move, entry):
        return Decision(REDO, "the inventory update is idempotent")


class RemoveSourceLeftovers(Step):
    """Once the destination is verified: undefine a stale copy on the source, remove its disks."""

    name = "remove-source-leftovers"

    def names(self, move):
        return source_removal_names(move)  # TPM state travels in the stream: its dir goes

    def run(self, move, entry):
        place = move.place("source")
        if place.error:
            raise FerryError(f"{move.source.name} did not answer: {place.error}; its disks were kept")
        if place.running or place.paused:
            raise FerryError(f"{move.server.name} is {'running' if place.running else 'paused'} on "
                             f"{move.source.name} too: its disks were kept")
        if place.defined:
            move.host("source").undefine(move.server.uuid)
            move.event("cleanup", f"{move.source.name} still held a shut-off definition of "
                                  f"{move.server.name} (its libvirt did not finish the hand-over); "
                                  "undefined it, now that the destination runs the server.")
        return remove_source_files(move, entry)

    def settle(self, move, entry):
        return Decision(REDO, "removing leftovers is idempotent")


class LiveRunner(Runner):
    """The live mode's steps."""

    mode = status.MODE_LIVE
    steps = (PrepareDestinationDisks(), Migrate(), VerifyDestination(), RecordDestination(),
             RemoveSourceLeftovers())
    committed_after = "migrate"
    connections = ("source", "destination", "control", "ssh-source", "ssh-destination")

    def finish(self, move):
        server = move.server
        migrate = journal.last(move.task, "migrate")
        verify = journal.last(move.task, "verify-destination").data or {}
        wall_ms = move.state.get("wall_ms")
        # Every phase from the request on: only the commit of this result is in none of them.
        result = TaskResult(downtime_ms=verify.get("downtime_ms"),
                            total_ms=verify.get("time_ms") or wall_ms, wall_ms=wall_ms,
                            bytes=verify.get("bytes"), memory_bytes=verify.get("memory_bytes"),
                            disk_bytes=verify.get("disk_bytes"),
                            postcopy=bool((migrate.data or {}).get("postcopy")),
                            dirty_rate_bps=(migrate.data or {}).get("dirty_rate_bps"),
                            dirty_set_bytes=(migrate.data or {}).get("dirty_set_bytes"),
                            tls=bool((migrate.names or {}).get("tls")),
                            phases={**request_phases(move), **move.laps})
        seconds = f", {wall_ms / 1000:.1f} s in all" if wall_ms else ""
        finish_success(move.task, f"{server.name} runs on {move.destination.name}: downtime "
                       f"{result.downtime_ms} ms{seconds}.", result)


RUNNER = LiveRunner()


def prepare(move: Move) -> None:
    """Read what the steps need (creates nothing): both definitions and the disk plan.

    A disk only in the persistent definition would be stranded by a live move: refused.
    """
    if move.task.domain_xml is None:
        move.task.domain_xml = move.host("source").xml(move.server.uuid, inactive=True)
        db.session.commit()
    move.state["persist_xml"] = mig_xml = move.task.domain_xml
    try:
        move.state["live_xml"] = move.host("source").xml(move.server.uuid, migratable=True)
        mig_xml = move.host("source").xml(move.server.uuid, inactive=True, migratable=True)
        move.state["persist_xml"] = mig_xml
    except FerryError:
        move.state["live_xml"] = move.task.domain_xml  # recovery after the server left the source
    move.state["plan"] = disks.plan_for(move.state["live_xml"], move.options.convert_to,
                                        extra_xml=move.task.domain_xml)


def run(task, lease=None, nodes=None) -> None:
    """Live-migrate task.server from task.source to task.destination (see the module's steps)."""
    start(task, RUNNER, prepare, running=True, lease=lease, nodes=nodes)


def resume(task, lease=None, nodes=None) -> str:
    """Recovery: settle an interrupted live move from its journal (adopting a migration libvirt
    still runs) and drive it to its end."""
    from app.services.steps import resume as resume_steps
    with Move(task, nodes=nodes, lease=lease) as move:
        prepare(move)
        outcome = resume_steps(move, RUNNER)
        failure = move.state.get("failure")
        if failure is not None:
            raise failure
        return outcome
