"""Worker heartbeats: every worker process writes its row every few seconds; the database is
the truth about which workers are alive, for /metrics, the dashboard and the alert rules.

    beat("ferry-1", "3f2a...", pid=42)      # the worker's heartbeat thread
    silent_for(utcnow())                      # None while a worker is fresh, else seconds (inf: never)
"""
import functools
import logging
import math
import os
import socket
import threading
from datetime import timedelta

from app.extensions import db
from app.infra import forkguard
from app.models import WorkerHeartbeat, utcnow

log = logging.getLogger("ferry.workers")

BEAT_EVERY_S = 5
SILENT_AFTER_S = 60  # the dashboard's banner and the alert: no worker seen for a minute
FORGET_AFTER = timedelta(days=1)  # rows of workers gone this long are deleted


def beat(hostname, name, pid=0, now=None):
    """Record that worker `name` on `hostname` is alive now (insert or update its row)."""
    now = now or utcnow()
    row = db.session.scalar(db.select(WorkerHeartbeat).filter_by(hostname=hostname, name=name))
    if row is None:
        row = WorkerHeartbeat(hostname=hostname, name=name, pid=pid, started_at=now)
        db.session.add(row)
    row.seen_at, row.pid = now, pid
    db.session.execute(db.delete(WorkerHeartbeat).where(WorkerHeartbeat.seen_at < now - FORGET_AFTER))
    db.session.commit()
    return row


def last_seen(now=None):
    """[(hostname, name, seconds since last seen)] for every remembered worker, freshest first."""
    now = now or utcnow()
    rows = db.session.execute(db.select(
        WorkerHeartbeat.hostname, WorkerHeartbeat.name, WorkerHeartbeat.seen_at)
        .order_by(WorkerHeartbeat.seen_at.desc(), WorkerHeartbeat.id)).all()
    return [(host, name, max(0.0, (now - seen).total_seconds())) for host, name, seen in rows]


@functools.cache  # the dashboard asks on every load and poll: built once, on first use
def newest_beat():
    """When the freshest worker was last seen (one row; None when none is remembered)."""
    return db.select(db.func.max(WorkerHeartbeat.seen_at))


def silent_for(now=None, after=SILENT_AFTER_S):
    """Seconds since the freshest worker was seen when that is over `after`, else None.

    math.inf when no worker was ever seen (or all were forgotten).
    """
    return silence(db.session.scalar(newest_beat()), now, after)


def silence(seen, now=None, after=SILENT_AFTER_S):
    """silent_for, from the newest beat `seen` read by the caller (None: no worker ever seen)."""
    newest = math.inf if seen is None else max(0.0, ((now or utcnow()) - seen).total_seconds())
    return newest if newest > after else None


def start_heartbeat(app, name, stop_event=None, every=BEAT_EVERY_S, hostname=None):
    """Beat for worker `name` now and then every `every` seconds in a daemon thread.

    Returns the Event that stops it. The first beat is synchronous, so a worker
    that cannot write to the database fails at start instead of looking dead.
    """
    stop_event = stop_event or threading.Event()
    hostname = hostname or socket.gethostname()

    def once():
        with forkguard.database_turn(), app.app_context():  # never forked mid-transaction
            try:
                beat(hostname, name, os.getpid())
            finally:
                db.session.remove()

    once()

    def loop():
        while not stop_event.wait(every):
            try:
                once()
            except Exception:  # noqa: BLE001 - a database restart must not end the heartbeat
                log.exception("worker heartbeat failed")

    threading.Thread(target=loop, name="ferry-heartbeat", daemon=True).start()
    return stop_event
