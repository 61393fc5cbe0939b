"""Migration groups and tasks: preflight, start under the limits, run one by one, cancel, report.

The web, the API, the CLI and the jobs all call these functions. The database
row is the truth: a group is created and committed, then its job is queued;
the job runs the tasks in order, each one holding its two compute resources
(limits.claim_resources) while it moves a server.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

from flask import current_app
from sqlalchemy import update

from app import status
from app.errors import FerryError
from app.extensions import db
from app.models import ComputeResource, MigrationGroup, MigrationTask, Server, utcnow
from app.services import jobs, limits, preflight, timeline
from app.services import preflight_checks as checks
from app.services.timeline import Cancelled, NeedsAttention, cancel_requested, event

log = logging.getLogger("ferry.migration")

CONVERSIONS = (status.STORAGE_FILE_RAW, status.STORAGE_FILE_QCOW2, status.STORAGE_LVM,
               status.STORAGE_THINLVM)
HEARTBEAT_S = 5
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

    def options(self) -> dict:
        """The options stored on the group."""
        return {"mode": status.MODE_LIVE if self.live else status.MODE_OFFLINE,
                "preserve_ip": self.preserve_ip, "convert_to": self.convert_to,
                "allow_postcopy": self.allow_postcopy, "destination_id": self.destination_id,
                "acknowledged": self.acknowledge_warnings}


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
    if len({s.state for s in servers}) > 1:
        # The reference moves a selection only when all run (live) or all are stopped (offline);
        # refused here, before any probe runs, whatever the caller (dialog, API, CLI).
        states = ", ".join(f"{s.name} is {s.state}" for s in servers)
        raise FerryError(f"servers in different states cannot be migrated together ({states}): "
                         "select only running servers or only stopped ones")
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
    return open_group([(server, destination, options["mode"]) for server in servers], options,
                      request.acknowledge_warnings, user, enqueue)


def open_group(moves, options: dict, acknowledge_warnings: bool, user=None,
               enqueue: bool = True) -> MigrationGroup:
    """Create a group of (server, destination, mode) moves, preflight it, start it if it may run.

    A group started from the dialog has one destination and one mode; an
    evacuation's group has a destination and a mode per server. The preflight
    runs once per (destination, mode), so every task carries the report that
    judged it.
    """
    group = MigrationGroup(status=status.MIGRATION_PREFLIGHT, options=options,
                           created_by_id=getattr(user, "id", None))
    for server, destination, mode in moves:
        group.tasks.append(MigrationTask(
            server=server, source=server.compute_resource, destination=destination,
            mode=mode, status=status.MIGRATION_PREFLIGHT))
    db.session.add(group)
    db.session.commit()

    parts = {}
    for task in group.tasks:
        parts.setdefault((task.destination_id, task.mode), []).append(task)
    failures, unacknowledged = [], False
    # The preflight beats like a running task: if whoever runs it dies (a web worker, a
    # CLI), recovery ends the group once the beat stops, and its servers are free again.
    with Heartbeat(None, db.engine, group_id=group.id):
        for (_, mode), tasks in parts.items():
            report = preflight.run([t.server for t in tasks], tasks[0].destination,
                                   dict(options, mode=mode))
            for task in tasks:
                task.preflight = report
                task.eta = {"preflight": report["eta"].get(task.server.name), "history": []}
            failures += [r["message"] for r in report["results"] if r["status"] == checks.FAIL]
            unacknowledged |= bool(report["summary"]["needs_acknowledgement"])
    db.session.commit()
    db.session.refresh(group)
    if group.status != status.MIGRATION_PREFLIGHT:  # recovery ended it meanwhile: keep that
        return group
    if failures:
        return refuse(group, "Preflight failed: " + " ".join(failures))
    if unacknowledged and not acknowledge_warnings:
        return refuse(group, "Preflight has warnings that were not acknowledged.")
    if not limits.claim_group_slot(group.id):
        slots = current_app.config["MAX_PARALLEL_GROUPS"]
        return refuse(group, f"{slots} migration groups are already running, the most Ferry "
                              "runs at once: start this group when one of them has finished.")
    group.status = status.MIGRATION_RUNNING
    group.started_at = utcnow()
    for task in group.tasks:
        task.status = status.MIGRATION_PENDING
    db.session.commit()
    if enqueue:
        enqueue_group(group, user)
    return group


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


def enqueue_group(group, user=None):
    """Queue the group's job (after its rows are committed); migrations are never retried by RQ."""
    return jobs.enqueue("run_group", {"group_id": group.id}, user=user,
                        queue=jobs.QUEUE_MIGRATIONS, timeout=GROUP_JOB_TIMEOUT)


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


class Heartbeat:
    """Touch heartbeat_at of a task (or of every task of a group) every few seconds from a
    thread, on its own connection."""

    def __init__(self, task_id: int | None, engine, group_id: int | None = None):
        self.task_id, self.group_id, self.engine = task_id, group_id, engine
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, daemon=True,
                                        name=f"heartbeat-{task_id or f'group-{group_id}'}")

    def _beat(self):
        which = (MigrationTask.id == self.task_id if self.task_id is not None
                 else MigrationTask.group_id == self.group_id)
        while True:
            with self.engine.begin() as conn:
                conn.execute(update(MigrationTask).where(which).values(heartbeat_at=utcnow()))
            if self._stop.wait(HEARTBEAT_S):
                return

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(5)


def run_group(group_id: int) -> dict:
    """The group's job: run its pending tasks one by one, then free its slot."""
    group = db.session.get(MigrationGroup, group_id)
    if group is None:
        raise FerryError(f"migration group {group_id} does not exist")
    try:
        for task in group.tasks:
            if task.status == status.MIGRATION_PENDING:
                run_task(task)
    finally:
        db.session.rollback()
        limits.release_group_slot(group.id)
        group = db.session.get(MigrationGroup, group_id)
        outcomes = {t.status for t in group.tasks}
        if outcomes <= {status.MIGRATION_FINISHED}:
            group.status = status.MIGRATION_FINISHED
        elif status.MIGRATION_RUNNING in outcomes or status.MIGRATION_PENDING in outcomes:
            group.status = status.MIGRATION_ATTENTION  # interrupted: recovery will look
        elif outcomes <= {status.MIGRATION_CANCELLED, status.MIGRATION_FINISHED}:
            group.status = status.MIGRATION_CANCELLED
        else:
            group.status = status.MIGRATION_FAILED
        group.finished_at = utcnow()
        db.session.commit()
        from app.services import evacuation
        evacuation.group_ended(group)
    return {t.server.name if t.server else str(t.id): t.status for t in group.tasks}


def run_task(task) -> None:
    """Move one server: wait for both hosts, run the live or offline runner, record the outcome."""
    from app.services import live, offline

    if task.cancel_requested:
        timeline.finish(task, status.MIGRATION_CANCELLED, "Cancelled before it started.")
        return
    hosts = [task.source_id, task.destination_id]
    task.phase = "waiting"
    task.heartbeat_at = utcnow()
    db.session.commit()
    engine = db.engine
    with Heartbeat(task.id, engine):
        noted = False
        while not limits.claim_resources(task.id, hosts):
            if not noted:
                event(task, "waiting", f"Waiting: {task.source.name} or {task.destination.name} "
                                       "is busy with another migration task.")
                noted = True
            if cancel_requested(task.id):
                timeline.finish(task, status.MIGRATION_CANCELLED, "Cancelled while waiting.")
                return
            time.sleep(1)
        try:
            task.status = status.MIGRATION_RUNNING
            task.started_at = utcnow()
            task.phase = "starting"
            db.session.commit()
            event(task, "started", f"{task.mode.capitalize()} migration of {task.server.name} "
                                   f"from {task.source.name} to {task.destination.name} started.")
            runner = live.run if task.mode == status.MODE_LIVE else offline.run
            try:
                runner(task)
            except Cancelled as exc:
                db.session.rollback()
                timeline.finish(task, status.MIGRATION_CANCELLED, str(exc))
            except NeedsAttention as exc:
                db.session.rollback()
                timeline.finish(task, status.MIGRATION_ATTENTION, str(exc))
            except FerryError as exc:
                db.session.rollback()
                timeline.finish(task, status.MIGRATION_FAILED, str(exc))
            except Exception as exc:  # noqa: BLE001 - a task must always end with its truth
                db.session.rollback()
                log.exception("task %s errored", task.id)
                timeline.finish(task, status.MIGRATION_ATTENTION,
                        f"Unexpected error: {type(exc).__name__}: {exc}. "
                        "Ferry did not verify where the server is: check both hosts.")
        finally:
            db.session.rollback()
            limits.release_resources(task.id)


def group_report(group) -> dict:
    """A group's report: per server outcome, downtime, bytes, time per phase, ETA history."""
    tasks = []
    for task in group.tasks:
        result = task.result or {}
        tasks.append({
            "task": task.id, "server": task.server.name if task.server else None,
            "source": task.source.name if task.source else None,
            "destination": task.destination.name if task.destination else None,
            "mode": task.mode, "status": task.status, "error": task.error,
            "downtime_ms": result.get("downtime_ms"), "total_ms": result.get("total_ms"),
            "bytes": result.get("bytes"), "phases": result.get("phases"),
            "eta": task.eta, "started_at": _iso(task.started_at),
            "finished_at": _iso(task.finished_at),
            "events": [{"at": _iso(e.at), "kind": e.kind, "message": e.message}
                       for e in task.events],
        })
    return {"group": group.id, "status": group.status, "options": group.options,
            "created_at": _iso(group.created_at), "finished_at": _iso(group.finished_at),
            "tasks": tasks}


def _iso(value):
    return value.isoformat() if value else None
