"""The periodic inventory sync: a tiny loop in the worker process.

Kept as pure decisions (`due`) plus one short I/O step (`tick`) so that it is
tested without waiting for a clock.
"""
import logging
import threading
from datetime import timedelta

from app.extensions import db
from app.models import ComputeResource, Job, utcnow

log = logging.getLogger("ferry.schedule")


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


def start(app, stop_event=None):
    """Run `tick` in a daemon thread every few seconds until `stop_event` is set."""
    stop_event = stop_event or threading.Event()
    interval = app.config["SYNC_INTERVAL"]

    def loop():
        while not stop_event.wait(min(interval, 30)):
            try:
                tick(app)
            except Exception:  # noqa: BLE001 - a hiccup (Redis restart) must not end the loop
                log.exception("scheduled sync failed")

    thread = threading.Thread(target=loop, name="ferry-schedule", daemon=True)
    thread.start()
    return stop_event
