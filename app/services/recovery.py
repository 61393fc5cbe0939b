"""Never lose a server: settle tasks that claim to run but have no live job.

A task's job touches `heartbeat_at` every few seconds. When a worker is
killed the heartbeat stops; at worker start and periodically, every running
task whose heartbeat is older than FERRY_ORPHAN_AFTER is reconciled: Ferry asks
libvirt on both hosts where the domain is defined and running and whether a
migration job is still active, then records what it saw. It never re-runs a
migration: a peer-to-peer migration goes on without us, so we wait for it.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta

from flask import current_app

from app import status
from app.errors import FerryError
from app.extensions import db
from app.infra import migration as mig
from app.models import Job, MigrationGroup, MigrationTask, utcnow
from app.services import engine, limits
from app.services.migration import enqueue_group, refuse
from app.services.timeline import event

log = logging.getLogger("ferry.recovery")

COMPLETED, FAILED_SOURCE_INTACT, ATTENTION, STILL_RUNNING = (
    "completed", "failed-source-intact", "needs-attention", "still-running")


@dataclass(frozen=True)
class Verdict:
    """What the two hosts say, turned into an outcome."""

    outcome: str
    reason: str


def judge(mode: str, at_src: mig.DomainPlace, at_dst: mig.DomainPlace) -> Verdict:
    """Decide a task's true outcome from what source and destination report (pure).

    >>> D = mig.DomainPlace
    >>> judge("live", D(False, False), D(True, True)).outcome
    'completed'
    >>> judge("live", D(True, True), D(False, False)).outcome
    'failed-source-intact'
    >>> judge("live", D(True, True, job_active=True), D(True, False, paused=True)).outcome
    'still-running'
    >>> judge("live", D(True, True), D(True, True)).outcome
    'needs-attention'
    """
    if at_src.error or at_dst.error:
        return Verdict(ATTENTION, f"a host could not answer: {at_src.error or at_dst.error}")
    if at_src.job_active or at_dst.job_active:
        return Verdict(STILL_RUNNING, "libvirt still has a migration job for the domain")
    if mode == status.MODE_LIVE:
        if at_dst.running and not at_src.running and not at_src.defined:
            return Verdict(COMPLETED, "the destination runs the server and the source let it go")
        if at_src.running and not at_dst.defined:
            return Verdict(FAILED_SOURCE_INTACT, "the source still runs the server; the "
                                                 "destination has nothing")
    else:
        if at_dst.defined and not at_src.defined:
            return Verdict(COMPLETED, "the server is defined on the destination only")
        if at_src.defined and not at_dst.defined:
            return Verdict(FAILED_SOURCE_INTACT, "the server is still defined on the source only")
    return Verdict(ATTENTION, f"source defined={at_src.defined} running={at_src.running}, "
                              f"destination defined={at_dst.defined} running={at_dst.running}")


def orphans(now=None) -> list[MigrationTask]:
    """Running (or waiting) tasks whose job stopped beating."""
    now = now or utcnow()
    stale = now - timedelta(seconds=current_app.config["ORPHAN_AFTER"])
    rows = db.session.scalars(db.select(MigrationTask).where(
        MigrationTask.status == status.MIGRATION_RUNNING)).all()
    waiting = db.session.scalars(db.select(MigrationTask).where(
        MigrationTask.status == status.MIGRATION_PENDING, MigrationTask.phase == "waiting")).all()
    return [t for t in rows + waiting if t.heartbeat_at is None or t.heartbeat_at < stale]


def stalled_groups(now=None) -> list[MigrationGroup]:
    """Running groups whose job was picked up by a worker that died before any task began.

    Such a group has only pending tasks that never beat (run_task marks a
    task the moment it begins), and its run_group job has been running for
    longer than ORPHAN_AFTER with no other job for it queued. Nothing moved,
    so queueing it again is safe.
    """
    now = now or utcnow()
    stale = now - timedelta(seconds=current_app.config["ORPHAN_AFTER"])
    jobs_by_group = {}
    for job in db.session.scalars(db.select(Job).where(
            Job.name == "run_group", Job.status.in_((status.JOB_PENDING, status.JOB_RUNNING)))):
        jobs_by_group.setdefault((job.args or {}).get("group_id"), []).append(job)
    found = []
    for group_id, group_jobs in jobs_by_group.items():
        if any(j.status == status.JOB_PENDING or j.started_at is None or j.started_at >= stale
               for j in group_jobs):
            continue  # queued, or picked up recently: its worker may be alive
        group = db.session.get(MigrationGroup, group_id)
        if group is not None and group.status == status.MIGRATION_RUNNING and all(
                t.status == status.MIGRATION_PENDING and t.heartbeat_at is None
                for t in group.tasks):
            found.append(group)
    return found


def abandoned_preflights(now=None) -> list[MigrationGroup]:
    """Groups in preflight whose tasks stopped beating: the web request, API call or CLI that ran
    the preflight died. Nothing moves before a preflight passes, so ending them is safe."""
    now = now or utcnow()
    stale = now - timedelta(seconds=current_app.config["ORPHAN_AFTER"])
    groups = db.session.scalars(db.select(MigrationGroup).where(
        MigrationGroup.status == status.MIGRATION_PREFLIGHT,
        MigrationGroup.created_at < stale)).all()
    return [g for g in groups
            if all(t.heartbeat_at is None or t.heartbeat_at < stale for t in g.tasks)]


def _places(task):
    """Ask both nodes where the task's domain is (each answer may carry an error: unknown)."""
    from app.services.steps import Move  # the step machine's connections, opened lazily
    with Move(task) as move:
        return move.place("source", patient=False), move.place("destination", patient=False)


OUTCOMES = {status.MIGRATION_FINISHED: COMPLETED, status.MIGRATION_FAILED: FAILED_SOURCE_INTACT,
            status.MIGRATION_CANCELLED: FAILED_SOURCE_INTACT}


def reconcile_task(task, lease=None) -> Verdict:
    """Establish and record the truth about one orphaned task.

    A task whose journal has steps is resumed by the engine: the last begun step is settled
    from what the nodes say (a live migration libvirt still runs is adopted and driven to its
    end), then the move goes on or is rolled back, removing only what the journal names. A
    task that never began a step moved nothing; its nodes are asked, and nothing is removed.
    """
    if task.status == status.MIGRATION_PENDING:  # died while waiting: nothing moved
        task.phase = None
        limits.release_resources(task.id)
        return Verdict("requeued", "the job died before the task started")
    if task.steps:
        event(task, "reconciled", "The job running this task stopped; recovery resumes it "
                                  "from its journal.")
        final = engine.resume(task, lease)
        return Verdict(OUTCOMES.get(final, ATTENTION), task.error or final)
    try:
        at_src, at_dst = _places(task)
        verdict = judge(task.mode, at_src, at_dst)
    except FerryError as exc:
        at_src = at_dst = None
        verdict = Verdict(ATTENTION, f"could not ask the nodes: {exc}")
    seen = {"source": at_src.__dict__ if at_src else None,
            "destination": at_dst.__dict__ if at_dst else None}
    task.finished_at = utcnow()
    task.phase = None
    if verdict.outcome == FAILED_SOURCE_INTACT:
        task.status = status.MIGRATION_FAILED
        task.error = f"The job died before it touched a node; {verdict.reason}."
        message = task.error
    else:  # with no journal, a server found elsewhere is for a person to look at
        task.status = status.MIGRATION_ATTENTION
        task.error = f"Needs attention: the job died with no journaled step; {verdict.reason}."
        message = task.error + " Nothing was removed from either node."
        verdict = Verdict(ATTENTION, verdict.reason)
    event(task, "reconciled", message, data=seen)
    return verdict


def _close_dead_jobs(group_ids: set) -> None:
    """End the Job rows of the groups' dead jobs, which would otherwise say running forever."""
    for job in db.session.scalars(db.select(Job).where(Job.name == "run_group",
                                                      Job.status == status.JOB_RUNNING)):
        if (job.args or {}).get("group_id") in group_ids:
            job.status = status.JOB_FAILED
            job.error = "The worker running this job died; recovery settled its tasks."
            job.finished_at = utcnow()
    db.session.commit()


def reconcile(wait_s: float = 120.0) -> list[tuple[int, str]]:
    """Reconcile every orphaned task, then let interrupted groups go on with their other tasks."""
    done = []
    groups = set()
    for task in orphans():
        verdict = reconcile_task(task)
        done.append((task.id, verdict.outcome))
        groups.add(task.group_id)
        log.warning("reconciled task %s: %s (%s)", task.id, verdict.outcome, verdict.reason)
    db.session.commit()
    for group in stalled_groups():
        done.append((None, f"group {group.id} requeued"))
        groups.add(group.id)
        log.warning("group %s: its job died before any task began; queued again", group.id)
    for group in abandoned_preflights():
        refuse(group, "The preflight never finished: whoever started it stopped, or a node "
                       "stopped answering. Nothing moved; start the migration again.")
        done.append((None, f"group {group.id} preflight abandoned"))
        log.warning("group %s: abandoned in preflight; ended, nothing moved", group.id)
    _close_dead_jobs(groups)
    for group_id in groups:
        group = db.session.get(MigrationGroup, group_id)
        if any(t.status == status.MIGRATION_PENDING for t in group.tasks):
            group.status = status.MIGRATION_RUNNING
            db.session.commit()
            enqueue_group(group)  # continues with the tasks that never started
        elif group.status in (status.MIGRATION_RUNNING, status.MIGRATION_ATTENTION):
            limits.release_group_slot(group.id)
            group.status = (status.MIGRATION_FINISHED
                            if all(t.status == status.MIGRATION_FINISHED for t in group.tasks)
                            else status.MIGRATION_FAILED)
            group.finished_at = utcnow()
            db.session.commit()
    return done
