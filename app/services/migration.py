"""Migration groups and tasks: preflight, start under the limits, run one by one, cancel, report.

The web, the API, the CLI and the jobs all call these functions. The database
row is the truth: a group is created and committed together with an outbox row
for its job, which is sent to Redis after the commit (or by a scheduler tick);
the job runs the tasks in order under the group's lease, each task under its
own lease holding its two compute resources and its server
(limits.claim_resources) while it moves the server.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace

from flask import current_app

from app import status
from app.blobs import Eta, GroupOptions, Prediction
from app.errors import FerryError
from app.extensions import db
from app.models import ComputeResource, Evacuation, MigrationGroup, MigrationTask, Server, utcnow
from app.services import jobs, lease, limits, outbox, preflight, timeline
from app.services import preflight_checks as checks
from app.services.lease import Lease, LeaseLost
from app.services.timeline import cancel_requested, event

log = logging.getLogger("ferry.migration")

CONVERSIONS = (status.STORAGE_FILE_RAW, status.STORAGE_FILE_QCOW2, status.STORAGE_LVM,
               status.STORAGE_THINLVM)
GROUP_JOB_TIMEOUT = 24 * 3600  # deadlines live in the ladder, not in RQ


@dataclass(frozen=True)
class Request:
    """What a user asked for when starting a migration group."""

    server_ids: tuple
    destination_id: int | None
    live: bool = True
    preserve_ip: bool = True
    convert_to: str | None = None
    allow_postcopy: bool = False
    acknowledge_warnings: bool = False

    def options(self) -> GroupOptions:
        """The options stored on the group."""
        return GroupOptions(mode=status.MODE_LIVE if self.live else status.MODE_OFFLINE,
                            preserve_ip=self.preserve_ip, convert_to=self.convert_to,
                            allow_postcopy=self.allow_postcopy,
                            destination_id=self.destination_id,
                            acknowledged=self.acknowledge_warnings)


def _load(request: Request):
    """Resolve and validate the request; bad input raises before anything is written."""
    if not request.server_ids:
        raise FerryError("select at least one server to migrate")
    if request.convert_to is not None and request.convert_to not in CONVERSIONS:
        raise FerryError(f"unknown storage type {request.convert_to!r}: "
                         f"choose one of {', '.join(CONVERSIONS)}")
    servers = []
    for server_id in request.server_ids:
        server = db.session.get(Server, server_id)
        if server is None:
            raise FerryError(f"server {server_id} does not exist")
        if server.compute_resource is None:
            raise FerryError(f"server {server.name} is on no known compute resource")
        servers.append(server)
    if len({s.id for s in servers}) != len(servers):
        raise FerryError("a server was selected twice")
    mixed = checks.mixed_states(servers)
    if mixed:
        # The reference moves a selection only when all run (live) or all are stopped (offline);
        # refused here, before any probe runs, whatever the caller (dialog, API, CLI).
        raise FerryError(mixed)
    if request.destination_id is None:
        raise FerryError("choose a destination compute resource")
    destination = db.session.get(ComputeResource, request.destination_id)
    if destination is None:
        raise FerryError(f"compute resource {request.destination_id} does not exist")
    refuse_busy(servers)
    return servers, destination


def refuse_busy(servers) -> None:
    """Refuse servers that an unfinished task is already moving."""
    busy = db.session.scalar(db.select(MigrationTask).where(
        MigrationTask.server_id.in_([s.id for s in servers]),
        MigrationTask.status.in_(status.MIGRATION_ACTIVE)))
    if busy is not None:
        raise FerryError(f"{busy.server.name} is already being migrated (task {busy.id})")


def dry_run(request: Request) -> dict:
    """Preflight only: what would happen, with nothing stored."""
    servers, destination = _load(request)
    return preflight.run(servers, destination, request.options())


def start_group(request: Request, user=None, enqueue: bool = True) -> MigrationGroup:
    """Create a group, run its preflight, and start it if it passes and a group slot is free."""
    servers, destination = _load(request)
    options = request.options()
    return open_group([(server, destination, options.mode) for server in servers], options,
                      request.acknowledge_warnings, user, enqueue)


def open_group(moves, options: GroupOptions, acknowledge_warnings: bool, user=None,
               enqueue: bool = True) -> MigrationGroup:
    """Create a group of (server, destination, mode) moves, preflight it, start it if it may run.

    A group started from the dialog has one destination and one mode; an
    evacuation's group has a destination and a mode per server. The preflight
    runs once per (destination, mode), so every task carries the report that
    judged it.
    """
    group = MigrationGroup(status=status.MIGRATION_PREFLIGHT, options=options.to_json(),
                           created_by_id=getattr(user, "id", None))
    for server, destination, mode in moves:
        group.tasks.append(MigrationTask(
            server=server, source=server.compute_resource, destination=destination,
            mode=mode, status=status.MIGRATION_PREFLIGHT))
    db.session.add(group)
    db.session.commit()

    # The preflight runs under the group's lease: if whoever runs it dies (a web worker, a
    # CLI), recovery ends the group once the lease expires, and its servers are free again.
    sent = None
    with Lease(lease.GROUP, group.id) as held:
        results = _preflight(group, options)
        db.session.refresh(group)
        if held.lost or group.status != status.MIGRATION_PREFLIGHT:
            return group  # recovery ended it meanwhile: keep that
        if not checks.may_start(results, acknowledge_warnings):
            failures = [r.message for r in results if r.status == checks.FAIL]
            return refuse(group, "Preflight failed: " + " ".join(failures) if failures
                          else "Preflight has warnings that were not acknowledged.")
        if not limits.claim_group_slot(group.id):
            slots = current_app.config["MAX_PARALLEL_GROUPS"]
            return refuse(group, f"{slots} migration groups are already running, the most "
                                 "Ferry runs at once: start this group when one of them has "
                                 "finished.")
        group.status = status.MIGRATION_RUNNING
        group.started_at = utcnow()
        for task in group.tasks:
            task.status = status.MIGRATION_PENDING
        if enqueue:  # committed with the group's new status: a Redis failure only delays it
            sent = _group_job(group, user)
        db.session.commit()
    # Sent once the lease is given back: the job takes it, and exits if someone still holds it.
    if sent is not None:
        outbox.flush_quietly([sent.id])
    return group


def _preflight(group, options: GroupOptions) -> list[checks.CheckResult]:
    """Preflight the group's tasks once per (destination, mode); every part's results.

    Each part's reports are committed before the next part probes its nodes, so no write
    waits in the session (and, on SQLite, holds the lock) while a node is asked.
    """
    parts = {}
    for task in group.tasks:
        parts.setdefault((task.destination_id, task.mode), []).append(task)
    results = []
    for (_, mode), tasks in parts.items():
        report = preflight.run([t.server for t in tasks], tasks[0].destination,
                               replace(options, mode=mode))
        for task in tasks:
            task.preflight = report
            predicted = report["eta"].get(task.server.name)
            task.eta = Eta(preflight=Prediction.of(predicted) if predicted else None).to_json()
        results += [checks.CheckResult(r["name"], r["status"], r["message"])
                    for r in report["results"]]
        db.session.commit()
    return results


def refuse(group, reason: str) -> MigrationGroup:
    """End a group before it moved anything, with the reason on every task."""
    group.status = status.MIGRATION_FAILED
    group.finished_at = utcnow()
    for task in group.tasks:
        task.status = status.MIGRATION_FAILED
        task.error = reason
        task.finished_at = utcnow()
        event(task, "refused", reason, commit=False)
    db.session.commit()
    return group


def _group_job(group, user=None):
    """The outbox row for the group's job (migrations are never retried by RQ)."""
    return outbox.add("run_group", {"group_id": group.id}, user=user,
                      queue=jobs.QUEUE_MIGRATIONS, timeout=GROUP_JOB_TIMEOUT)


def enqueue_group(group, user=None):
    """Queue the group's job now, through the outbox; returns its outbox row (sent_at is None
    if Redis did not take it: a scheduler tick sends it later)."""
    sent = _group_job(group, user)
    db.session.commit()
    outbox.flush_quietly([sent.id])
    return sent


def request_cancel(task_id: int, user=None) -> MigrationTask:
    """Record a cancel request; the running job sees it, aborts and cleans up."""
    task = db.session.get(MigrationTask, task_id)
    if task is None:
        raise FerryError(f"migration task {task_id} does not exist")
    if task.status in status.MIGRATION_DONE:
        raise FerryError(f"task {task_id} has already ended ({task.status})")
    task.cancel_requested = True
    event(task, "cancel-requested", "Cancel requested"
          + (f" by {user.username}." if getattr(user, "username", None) else "."))
    return task


def run_group(group_id: int) -> dict:
    """The group's job: under the group's lease, run its pending tasks one by one, then end it.

    A job that finds the group ended, or its lease held by another live job, does
    nothing and says why in its result (and log). Only the lease holder ends the
    group and frees its slot; a job interrupted with tasks left keeps both, and
    recovery sends the group again once the lease expired.
    """
    group = db.session.get(MigrationGroup, group_id)
    if group is None:
        raise FerryError(f"migration group {group_id} does not exist")
    if group.status != status.MIGRATION_RUNNING:
        return _left_alone(group_id, f"group {group_id} is {group.status}: nothing to run")
    db.session.commit()
    held = Lease(lease.GROUP, group_id, job=lease.current_job_id())
    if not held.take():
        return _left_alone(group_id, held.refusal)
    try:
        db.session.refresh(group)
        if group.status != status.MIGRATION_RUNNING:  # ended between our look and our lease
            return _left_alone(group_id, f"group {group_id} is {group.status}: nothing to run")
        return _run_tasks(group_id, held)
    finally:
        held.release()


def _left_alone(group_id: int, reason: str) -> dict:
    """What a group job that must not act returns (its Job row keeps it)."""
    log.warning("group %s left alone: %s", group_id, reason)
    return {"left_alone": reason}


def _run_tasks(group_id: int, held) -> dict:
    """Run the group's pending tasks in order while the lease holds; end the group when none is
    left."""
    group = db.session.get(MigrationGroup, group_id)
    try:
        for task_id in [t.id for t in group.tasks]:
            held.check()
            task = db.session.get(MigrationTask, task_id)
            db.session.refresh(task)
            if task.status == status.MIGRATION_PENDING:  # a finished task is never run again
                run_task(task)
    finally:
        db.session.rollback()
        group = db.session.get(MigrationGroup, group_id)
        db.session.refresh(group)
        unfinished = {t.status for t in group.tasks} & {status.MIGRATION_PENDING,
                                                        status.MIGRATION_RUNNING}
        if not held.lost and not unfinished:
            end_group(group)
    return {t.server.name if t.server else str(t.id): t.status for t in group.tasks}


def end_group(group) -> None:
    """Record a group's outcome from its tasks, free its slot, tell its evacuation.

    Only the holder of the group's lease calls this (the group job, or recovery).
    """
    outcomes = {t.status for t in group.tasks}
    if outcomes <= {status.MIGRATION_FINISHED}:
        group.status = status.MIGRATION_FINISHED
    elif outcomes <= {status.MIGRATION_CANCELLED, status.MIGRATION_FINISHED}:
        group.status = status.MIGRATION_CANCELLED
    else:
        group.status = status.MIGRATION_FAILED
    group.finished_at = utcnow()
    limits.free_group_slot(group.id)  # in the outcome's commit: an ended group holds no slot
    db.session.commit()
    Evacuation.group_ended(group)
    db.session.commit()


def run_task(task) -> None:
    """Move one server under the task's lease: wait for its nodes and its server, run its mode's
    runner, record the outcome. A task no longer pending, or leased by another, is left alone."""
    if task.status != status.MIGRATION_PENDING:
        return
    db.session.commit()
    held = Lease(lease.TASK, task.id, job=lease.current_job_id())
    if not held.take():
        log.warning("task %s left alone: %s", task.id, held.refusal)
        return
    try:
        db.session.refresh(task)
        if task.status == status.MIGRATION_PENDING:
            _run_leased(task, held)
    except LeaseLost as exc:  # the lease recorded it; whoever holds the task now settles it
        db.session.rollback()
        log.error("task %s: %s", task.id, exc)
    finally:
        held.release()


def _run_leased(task, held) -> None:
    """run_task's body, once the task's lease is held."""
    if task.cancel_requested:
        timeline.finish(task, status.MIGRATION_CANCELLED, "Cancelled before it started.")
        return
    task.phase = "waiting"
    db.session.commit()
    try:
        if not _wait_for_claims(task, held):
            return
        held.check()
        task.status = status.MIGRATION_RUNNING
        task.started_at = utcnow()
        task.phase = "starting"
        db.session.commit()
        event(task, "started", f"{task.mode.capitalize()} migration of {task.server.name} "
                               f"from {task.source.name} to {task.destination.name} started.")
        # Here, not at the top: the CLI's `migrate` and the web's dialog use this module for
        # the preflight and the start, and the engine (live, offline, their libvirt calls) cost
        # them 50 ms more to import; a worker imports it before it forks (worker.runtime).
        from app.services import engine as runners
        runners.run(task, held)
    finally:
        db.session.rollback()
        if not held.lost:  # a lost task's claims are freed by whoever settles it
            limits.release_resources(task.id)


def _wait_for_claims(task, held) -> bool:
    """Wait until the task holds its two nodes and its server; False if it ended meanwhile.

    The timeline says which task holds what; the wait is bounded by
    FERRY_NODE_WAIT_TIMEOUT, after which the task fails with nothing moved.
    """
    nodes = [task.source_id, task.destination_id]
    limit = current_app.config["NODE_WAIT_TIMEOUT"]
    deadline = time.monotonic() + limit
    said = None
    while not limits.claim_resources(task.id, nodes, server_id=task.server_id):
        held.check()
        busy = limits.blockers(task.id, nodes, task.server_id)
        reason = _waiting_reason(task, busy)
        if reason != said:
            event(task, "waiting", reason, data=busy)
            said = reason
        if cancel_requested(task.id):
            timeline.finish(task, status.MIGRATION_CANCELLED, "Cancelled while waiting.")
            return False
        if time.monotonic() >= deadline:
            timeline.finish(task, status.MIGRATION_FAILED,
                            f"Gave up after waiting {limit} s (FERRY_NODE_WAIT_TIMEOUT): "
                            f"{reason[len('Waiting: '):]} Nothing was moved.")
            return False
        time.sleep(1)
    return True


def _waiting_reason(task, busy: dict) -> str:
    """'Waiting: node2 is busy with task 12; web1 is in task 13.' from limits.blockers()."""
    names = {str(task.source_id): task.source.name, str(task.destination_id): task.destination.name}
    parts = []
    for key, holder in sorted(busy.items()):
        kind, ident = key.split(":", 1)
        if kind == limits.SERVER:
            parts.append(f"{task.server.name} is in task {holder}")
        else:
            parts.append(f"{names.get(ident, f'compute resource {ident}')} is busy with task "
                         f"{holder}")
    return "Waiting: " + ("; ".join(parts) or "the nodes could not be claimed yet") + "."


def group_report(group) -> dict:
    """A group's report: per server outcome, downtime, bytes, time per phase, ETA history."""
    tasks = []
    for task in group.tasks:
        result = task.result_record
        tasks.append({
            "task": task.id, "server": task.server.name if task.server else None,
            "source": task.source.name if task.source else None,
            "destination": task.destination.name if task.destination else None,
            "mode": task.mode, "status": task.status, "error": task.error,
            "downtime_ms": result.downtime_ms, "total_ms": result.total_ms,
            "bytes": result.bytes, "phases": result.phases,
            "eta": task.eta_record.to_json() if task.eta else None, "started_at": _iso(task.started_at),
            "finished_at": _iso(task.finished_at),
            "events": [{"at": _iso(e.at), "kind": e.kind, "message": e.message}
                       for e in task.events],
        })
    return {"group": group.id, "status": group.status, "options": group.options_record.to_json(),
            "created_at": _iso(group.created_at), "finished_at": _iso(group.finished_at),
            "tasks": tasks}


def _iso(value):
    return value.isoformat() if value else None
