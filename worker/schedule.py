"""The worker process's periodic work: inventory syncs and recovery passes, in a tiny loop.

Kept as pure decisions (`due`) plus short I/O steps (`tick`, `reconcile_tick`)
so that it is tested without waiting for a clock.
"""
import logging
import threading
from datetime import timedelta

from app import status
from app.extensions import db
from app.models import ComputeResource, Job, utcnow

log = logging.getLogger("ferry.schedule")

RECONCILE_STALE_S = 600  # a pass waits at most 120 s per still-running migration


def due(resource_ids, recent_syncs, now, interval):
    """Resources whose last sync job started more than `interval` seconds ago (or never).

    >>> from datetime import datetime
    >>> t = datetime(2025, 1, 1, 12, 0)
    >>> due([1, 2], {1: t - timedelta(seconds=10)}, t, 300)
    [2]
    """
    limit = now - timedelta(seconds=interval)
    return [rid for rid in resource_ids if rid not in recent_syncs or recent_syncs[rid] <= limit]


def tick(app, now=None):
    """Enqueue a sync for every compute resource that is due; returns the new Job rows."""
    from app.services import jobs
    now = now or utcnow()
    interval = app.config["SYNC_INTERVAL"]
    with app.app_context():
        recent = {}
        for job in db.session.scalars(db.select(Job).filter(
                Job.name == "sync_resource",
                Job.created_at > now - timedelta(seconds=interval))):
            rid = (job.args or {}).get("resource_id")
            recent[rid] = max(job.created_at, recent.get(rid, job.created_at))
        ids = db.session.scalars(db.select(ComputeResource.id).order_by(ComputeResource.id)).all()
        return [jobs.enqueue("sync_resource", {"resource_id": rid})
                for rid in due(ids, recent, now, interval)]


def reconcile_tick(app, now=None):
    """Queue a recovery pass when a task lost its job, unless a recent pass is queued or running.

    Returns the new Job id, or None.

    Every worker process runs this loop: the check keeps them from piling up
    passes. A pass older than RECONCILE_STALE_S no longer counts (its worker
    may have died with it).
    """
    from app.services import jobs, recovery
    now = now or utcnow()
    with app.app_context():
        if not recovery.orphans(now) and not recovery.stalled_groups(now) \
                and not recovery.abandoned_preflights(now):
            return None  # the usual case: no Job row every ORPHAN_AFTER seconds
        busy = db.session.scalar(db.select(Job.id).where(
            Job.name == "reconcile", Job.status.in_((status.JOB_PENDING, status.JOB_RUNNING)),
            Job.created_at > now - timedelta(seconds=RECONCILE_STALE_S)).limit(1))
        return None if busy is not None else jobs.enqueue("reconcile").id


def start(app, stop_event=None):
    """Run the periodic steps in a daemon thread until `stop_event` is set.

    Inventory syncs when SYNC_INTERVAL is set; a recovery pass for tasks whose
    job stopped beating, every ORPHAN_AFTER seconds (the worker also runs one
    at its start).
    """
    stop_event = stop_event or threading.Event()
    interval, orphan_after = app.config["SYNC_INTERVAL"], app.config["ORPHAN_AFTER"]
    steps = ([tick] if interval else []) + ([reconcile_tick] if orphan_after else [])
    period = min([30] + [s for s in (interval, orphan_after) if s])

    def loop():
        while not stop_event.wait(period):
            for step in steps:
                try:
                    step(app)
                except Exception:  # noqa: BLE001 - a hiccup (Redis restart) must not end the loop
                    log.exception("scheduled %s failed", step.__name__)

    thread = threading.Thread(target=loop, name="ferry-schedule", daemon=True)
    thread.start()
    return stop_event
