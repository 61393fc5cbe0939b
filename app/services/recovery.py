"""Never lose a server: settle tasks that claim to run but have no live job.

A task's job holds the task's lease (services.lease) and renews it every few
seconds. When a worker is killed the renewals stop; at worker start and from
every worker's scheduler thread, each running or waiting task whose lease
expired is taken over by compare-and-set and reconciled: Ferry asks libvirt on
both nodes where the domain is and settles the task from its journal, then
frees its claims whatever happened. Groups whose job died or was never sent
are sent again through the outbox; groups with nothing left to run are ended
under their lease, and their evacuation learns it.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import timedelta

from flask import current_app
from sqlalchemy import and_, or_

from app import status
from app.errors import FerryError
from app.extensions import db
from app.infra import migration as mig
from app.models import Evacuation, Job, MigrationGroup, MigrationTask, utcnow
from app.services import engine, jobs, lease, limits, outbox, timeline
from app.services.lease import Lease
from app.services.migration import end_group, enqueue_group, refuse
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


def _orphaned(now, stale):
    """SQL: a task's lease ran out (or, for a row never leased, its heartbeat is old)."""
    task = MigrationTask
    return or_(task.lease_until < now,
               and_(task.lease_until.is_(None),
                    or_(task.heartbeat_at.is_(None), task.heartbeat_at < stale)))


def orphans(now=None) -> list[MigrationTask]:
    """Running (or waiting) tasks whose owner's lease expired: their job died or lost its lease."""
    now = now or utcnow()
    stale = now - timedelta(seconds=current_app.config["ORPHAN_AFTER"])
    return db.session.scalars(db.select(MigrationTask).where(
        or_(MigrationTask.status == status.MIGRATION_RUNNING,
            and_(MigrationTask.status == status.MIGRATION_PENDING,
                 MigrationTask.phase == "waiting")),
        _orphaned(now, stale)).order_by(MigrationTask.id)).all()


def _lease_free(group, now) -> bool:
    """Nobody holds the group's lease: never taken, released or expired."""
    return group.lease_owner is None or group.lease_until is None or group.lease_until < now


def _run_group_jobs(group_ids) -> dict:
    """{group id: [pending or running run_group Job rows]}."""
    found = {}
    for job in db.session.scalars(db.select(Job).where(
            Job.name == "run_group", Job.status.in_((status.JOB_PENDING, status.JOB_RUNNING)))):
        group_id = (job.args or {}).get("group_id")
        if group_id in group_ids:
            found.setdefault(group_id, []).append(job)
    return found


def _job_alive(job, lease_live: bool, stale) -> bool:
    """Whether a group's pending or running Job may still run it (then do not send another)."""
    if job.status == status.JOB_RUNNING:  # a live one holds the lease within moments of starting
        return lease_live or (job.started_at or job.created_at) >= stale
    if job.created_at >= stale:
        return True
    try:
        return jobs.queued(job)  # waiting behind other jobs, or lost with Redis's data
    except Exception as exc:  # noqa: BLE001 - Redis unreachable: nothing could be sent anyway
        log.warning("could not ask Redis about job %s: %s", job.id, exc)
        return True


def stalled_groups(now=None) -> list[MigrationGroup]:
    """Running groups with pending tasks that no job is running or about to run.

    Their lease is free (the job died, between tasks or before the first, or it
    was never sent), no task of theirs runs, no unsent outbox row would send
    them, and no Job for them is alive: queued in Redis, or picked up within
    ORPHAN_AFTER. A group started moments ago is left to its caller. Nothing of
    a pending task has moved, so sending the group again is safe; the lease
    makes a second job for it harmless anyway.
    """
    now = now or utcnow()
    stale = now - timedelta(seconds=current_app.config["ORPHAN_AFTER"])
    groups = db.session.scalars(db.select(MigrationGroup).where(
        MigrationGroup.status == status.MIGRATION_RUNNING,
        or_(MigrationGroup.started_at.is_(None), MigrationGroup.started_at < stale),
        or_(MigrationGroup.lease_owner.is_(None), MigrationGroup.lease_until.is_(None),
            MigrationGroup.lease_until < now)).order_by(MigrationGroup.id)).all()
    groups = [g for g in groups
              if any(t.status == status.MIGRATION_PENDING for t in g.tasks)
              and not any(t.status == status.MIGRATION_RUNNING for t in g.tasks)]
    if not groups:
        return []
    unsent = {(row.args or {}).get("group_id") for row in outbox.unsent("run_group")}
    jobs_by_group = _run_group_jobs({g.id for g in groups})
    return [g for g in groups if g.id not in unsent and not any(
        _job_alive(job, False, stale) for job in jobs_by_group.get(g.id, ()))]


def abandoned_preflights(now=None) -> list[MigrationGroup]:
    """Groups in preflight whose lease expired: the web request, API call or CLI that ran the
    preflight died. Nothing moves before a preflight passes, so ending them is safe.

    A group written before leases existed counts when its tasks' heartbeats are old.
    """
    now = now or utcnow()
    stale = now - timedelta(seconds=current_app.config["ORPHAN_AFTER"])
    groups = db.session.scalars(db.select(MigrationGroup).where(
        MigrationGroup.status == status.MIGRATION_PREFLIGHT,
        MigrationGroup.created_at < stale,
        or_(MigrationGroup.lease_owner.is_(None), MigrationGroup.lease_until < now))
        .order_by(MigrationGroup.id)).all()
    return [g for g in groups if g.lease_until is not None
            or all(t.heartbeat_at is None or t.heartbeat_at < stale for t in g.tasks)]


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
    """End the Job rows of the groups' dead jobs, which would otherwise say running (or pending)
    forever."""
    now = utcnow()
    stale = now - timedelta(seconds=current_app.config["ORPHAN_AFTER"])
    for group_id, group_jobs in _run_group_jobs(group_ids).items():
        group = db.session.get(MigrationGroup, group_id)
        lease_live = group is not None and not _lease_free(group, now)
        for job in group_jobs:
            if _job_alive(job, lease_live, stale):
                continue
            job.error = ("The worker running this job died; recovery settled its tasks."
                         if job.status == status.JOB_RUNNING else
                         "This job never started (its queue entry was lost); recovery sent the "
                         "group again.")
            job.status, job.finished_at = status.JOB_FAILED, now
    db.session.commit()


def _settle(task) -> str | None:
    """Settle one orphan under its lease (taken only once expired); None if another has it.

    The task's claims are freed whatever happens (#11): a recovery that fails
    ends the task needs-attention, so they never stay held by a task nobody runs.
    """
    db.session.commit()
    held = Lease(lease.TASK, task.id)
    if not held.take():
        return None  # its owner came back, or another recovery pass has it
    try:
        db.session.refresh(task)
        if task.status != status.MIGRATION_RUNNING and not (
                task.status == status.MIGRATION_PENDING and task.phase == "waiting"):
            return None  # ended or went on meanwhile
        verdict = reconcile_task(task, held)
        log.warning("reconciled task %s: %s (%s)", task.id, verdict.outcome, verdict.reason)
        return verdict.outcome
    except Exception as exc:  # noqa: BLE001 - one task's surprise must not stop the pass
        db.session.rollback()
        log.exception("recovery of task %s failed", task.id)
        _quietly(timeline.finish, task, status.MIGRATION_ATTENTION,
                 f"Recovery could not settle this task: {type(exc).__name__}: {exc}. Nothing "
                 "more was done: check both nodes.")
        return ATTENTION
    finally:
        db.session.rollback()
        _quietly(limits.release_resources, task.id)
        held.release()


def _quietly(func, *args):
    """Call func; log (and roll back) instead of raising: recovery's bookkeeping goes on."""
    try:
        return func(*args)
    except Exception:  # noqa: BLE001
        db.session.rollback()
        log.exception("recovery could not %s", func.__name__)
        return None


def _send_again(group) -> None:
    """Send a group's job again through the outbox (it carries on with its pending tasks)."""
    if group.status != status.MIGRATION_RUNNING:  # an old job's 'interrupted' mark
        group.status, group.finished_at = status.MIGRATION_RUNNING, None
    enqueue_group(group)


def reconcile(wait_s: float | None = None) -> list[tuple[int | None, str]]:
    """One recovery pass: free claims that ended tasks and groups still hold, settle orphaned
    tasks, send stalled groups again, end abandoned preflights and groups with nothing left to
    run. A few queries when there is nothing to do.

    Every worker runs it from its scheduler thread (and once at start), never as a job
    queued behind migrations; leases keep two passes from acting on one task or group.
    """
    done, touched, dead = [], set(), set()
    for holder, count in limits.release_ended().items():
        kind, _, number = holder.partition(":")
        done.append((None, f"freed {count} claim{'s' * (count != 1)} of ended {kind} {number}"))
        log.warning("%s had ended but still held %d claim(s): freed", holder, count)
    for task in orphans():
        owner = task.lease_owner
        outcome = _settle(task)
        if outcome is not None:
            done.append((task.id, outcome))
            touched.add(task.group_id)
            dead.add(owner)
    for group in stalled_groups():
        _close_dead_jobs({group.id})
        _send_again(group)
        done.append((None, f"group {group.id} requeued"))
        touched.discard(group.id)
        log.warning("group %s: no job runs its pending tasks; sent again", group.id)
    for group in abandoned_preflights():
        if _with_group_lease(group, lambda g: refuse(g, (
                "The preflight never finished: whoever started it stopped, or a node stopped "
                "answering. Nothing moved; start the migration again."))):
            done.append((None, f"group {group.id} preflight abandoned"))
            log.warning("group %s: abandoned in preflight; ended, nothing moved", group.id)
    for group_id in sorted(touched):
        group = db.session.get(MigrationGroup, group_id)
        _outlive(group, dead)
        db.session.refresh(group)
        statuses = {t.status for t in group.tasks}
        if status.MIGRATION_RUNNING in statuses or group.status not in (
                status.MIGRATION_RUNNING, status.MIGRATION_ATTENTION):
            continue  # a task is still being settled, or the group already ended
        if status.MIGRATION_PENDING in statuses:
            if _lease_free(group, utcnow()):  # else its live job goes on with them
                _close_dead_jobs({group.id})
                _send_again(group)
                done.append((None, f"group {group.id} requeued"))
        elif _with_group_lease(group, end_group):
            _close_dead_jobs({group.id})
    return done


def _outlive(group, dead_owners: set) -> None:
    """Wait out a group lease held by an owner whose task lease already ran out (it died with
    the task; its group lease was only renewed a little later): at most one TTL."""
    owner, _, until = lease.holder(lease.GROUP, group.id)
    if owner is not None and owner in dead_owners and until is not None:
        left = (until - utcnow()).total_seconds() + 0.5
        time.sleep(max(0.0, min(left, lease.ttl_seconds() + 1)))


def _with_group_lease(group, action) -> bool:
    """Run action(group) holding the group's lease, then tell its evacuation; False if a live
    job holds the lease (it ends the group itself)."""
    db.session.commit()
    held = Lease(lease.GROUP, group.id)
    if not held.take():
        return False
    try:
        db.session.refresh(group)
        action(group)
        Evacuation.group_ended(group)
        db.session.commit()
    finally:
        held.release()
    return True
