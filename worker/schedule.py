"""The worker process's periodic work: the outbox, inventory syncs and recovery passes.

Two daemon threads: one sends the outbox and queues due syncs every tick; the
other runs the recovery pass itself, here and now, so that settling a dead
task never waits in a queue behind a migration job that waits for that task's
nodes (with one worker, it would wait forever). Every worker runs both; leases
keep two passes from acting on the same task or group.

Kept as pure decisions (`due`) plus short I/O steps (`tick`, `flush_tick`,
`recovery_tick`) so that it is tested without waiting for a clock.
"""
import json
import logging
import os
import threading
from datetime import timedelta

from app.extensions import db
from app.infra import forkguard
from app.models import ComputeResource, Job, utcnow
from app.services import lease
from worker.runtime import forget_parent_connections

log = logging.getLogger("ferry.schedule")

TICK_S = 5  # the outbox and the recovery check: a query or two when there is nothing to do


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
    with forkguard.database_turn(), app.app_context():
        recent = {}
        for job in db.session.scalars(db.select(Job).filter(
                Job.name == "sync_resource",
                Job.created_at > now - timedelta(seconds=interval))):
            rid = (job.args or {}).get("resource_id")
            recent[rid] = max(job.created_at, recent.get(rid, job.created_at))
        ids = db.session.scalars(db.select(ComputeResource.id).order_by(ComputeResource.id)).all()
        return [jobs.enqueue("sync_resource", {"resource_id": rid})
                for rid in due(ids, recent, now, interval)]


def flush_tick(app):
    """Send the outbox's unsent jobs to Redis; returns the Job ids sent."""
    from app.services import outbox
    with forkguard.database_turn(), app.app_context():
        try:
            return outbox.flush()
        finally:
            db.session.remove()


def recovery_tick(app, now=None):
    """Run a recovery pass when a task, group or preflight needs one.

    Returns what the pass did ([] when nothing needed it: then it cost three queries, here).
    The pass itself runs in a child process (`in_child`): it talks to nodes, and libvirt must
    never run in the worker process, which forks a work horse for every job.
    """
    from app.services import recovery
    now = now or utcnow()
    with forkguard.database_turn(), app.app_context():  # the pass itself runs unguarded
        try:
            if not recovery.orphans(now) and not recovery.stalled_groups(now) \
                    and not recovery.abandoned_preflights(now):
                return []
        finally:
            db.session.remove()
    done = in_child(app, lambda: _recovery_pass(app))
    for task_id, outcome in done:
        log.warning("recovery: %s", outcome if task_id is None else f"task {task_id} {outcome}")
    return done


def _recovery_pass(app):
    from app.services import recovery
    with app.app_context(), lease.acting_as("recovery"):
        try:
            return [list(pair) for pair in recovery.reconcile()]
        finally:
            db.session.remove()


def in_child(app, work):
    """`work()` in a forked child process of `app`'s; returns its JSON-able result ([] if it
    died).

    libvirt's event loop (which keepalive needs) does not survive a fork: a process that
    once ran it forks children whose libvirt calls to a dead node hang for good. Every
    child of the worker (work horses, these passes) starts its own, so the worker never
    runs one (app.infra.host.forbid_libvirt, set by `python -m worker`).
    """
    reader, writer = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns
        code = 1
        try:
            os.close(reader)
            forget_parent_connections(app)  # the pools' connections are the parent's
            result = json.dumps(work())
            with os.fdopen(writer, "w") as out:
                out.write(result)
            code = 0
        except BaseException:  # noqa: BLE001 - logged, the parent sees no result
            log.exception("recovery pass failed in its child process")
        finally:
            os._exit(code)
    os.close(writer)
    with os.fdopen(reader) as incoming:
        text = incoming.read()
    _, status_code = os.waitpid(pid, 0)
    if status_code != 0 or not text:
        log.error("the recovery pass's child process ended without a result (status %s)",
                  status_code)
        return []
    return [tuple(pair) for pair in json.loads(text)]


def start(app, stop_event=None):
    """Run the periodic steps in two daemon threads until `stop_event` is set.

    The outbox every TICK_S, inventory syncs when SYNC_INTERVAL is set, and a
    recovery check every TICK_S (or ORPHAN_AFTER, if shorter) when ORPHAN_AFTER
    is set; the worker also runs one pass at its start.
    """
    stop_event = stop_event or threading.Event()
    interval, orphan_after = app.config["SYNC_INTERVAL"], app.config["ORPHAN_AFTER"]
    loops = {"ferry-schedule": (TICK_S, [flush_tick] + ([tick] if interval else []))}
    if orphan_after:
        loops["ferry-recovery"] = (min(TICK_S, orphan_after), [recovery_tick])

    def loop(period, steps):
        while not stop_event.wait(period):
            for step in steps:
                try:
                    step(app)
                except Exception:  # noqa: BLE001 - a hiccup (Redis restart) must not end the loop
                    log.exception("scheduled %s failed", step.__name__)

    for name, (period, steps) in loops.items():
        threading.Thread(target=loop, args=(period, steps), name=name, daemon=True).start()
    return stop_event
