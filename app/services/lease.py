"""Ownership of a migration task or group: a lease taken by compare-and-set, renewed while working.

    with lease.Lease(lease.TASK, task.id, job=rq_job_id) as held:  # LeaseHeld: someone else has it
        ...
        held.check()                        # between steps: LeaseLost once it could not renew

A lease is three columns on the row (owner, job, until). Taking it is one
UPDATE whose WHERE lets it through only when nobody holds it, this owner
already does, or the holder let it expire; the row count says who won, on
SQLite and PostgreSQL alike. A thread renews it every TTL/3 on a connection of
its own (and touches the task's heartbeat_at, which pages and metrics read).
When it cannot renew — the database failed until the lease ran out, or another
owner holds the row — it logs an error, adds a "lease-lost" event to the task
and sets `lost`: never silently. Recovery takes a lease only once it expired.

The TTL is FERRY_LEASE_TTL, or FERRY_ORPHAN_AFTER when that is 0 (the default):
a dead owner holds a task for ORPHAN_AFTER seconds at most, then recovery may
take it. Clocks of the machines running workers must agree to well under TTL/3.

The owner is "hostname:pid:worker-name". FERRY_WORKER_HOST overrides the host
name (tests pose as a second machine with it); a thread that acts for itself
(the scheduler's recovery pass) names itself with `acting_as`.
"""
from __future__ import annotations

import logging
import os
import socket
import threading
from contextlib import contextmanager
from datetime import timedelta

from flask import current_app
from sqlalchemy import insert, or_, update

from app import status
from app.errors import FerryError
from app.extensions import db
from app.models import MigrationGroup, MigrationTask, TaskEvent, utcnow

log = logging.getLogger("ferry.lease")

TASK, GROUP = "task", "group"
_ROWS = {TASK: MigrationTask, GROUP: MigrationGroup}
DEFAULT_TTL = 30

_worker_name = None
_local = threading.local()


class LeaseHeld(FerryError):
    """Another live owner holds the lease: this job must not act."""


class LeaseLost(FerryError):
    """This owner could not keep its lease: stop acting, another may have taken over."""


def set_worker_name(name: str | None) -> None:
    """Name this process's owner (the worker process does this with its RQ worker name)."""
    global _worker_name
    _worker_name = name


@contextmanager
def acting_as(name: str):
    """Within this block, this thread owns leases under a name of its own."""
    before = getattr(_local, "name", None)
    _local.name = name
    try:
        yield
    finally:
        _local.name = before


def _rq_worker_name():
    """The RQ worker name of the job running in this process, if any."""
    from rq import get_current_job
    job = get_current_job()
    return getattr(job, "worker_name", None) if job is not None else None


def current_job_id() -> str | None:
    """The id of the RQ job running in this process (None outside a job)."""
    from rq import get_current_job
    job = get_current_job()
    return job.id if job is not None else None


def me() -> str:
    """This process's (and thread's) owner id: hostname:pid:worker-name."""
    host = os.environ.get("FERRY_WORKER_HOST") or socket.gethostname()
    name = getattr(_local, "name", None) or _worker_name or _rq_worker_name() or "main"
    return f"{host}:{os.getpid()}:{name}"


def ttl_seconds(app=None) -> int:
    """The lease TTL: FERRY_LEASE_TTL, else FERRY_ORPHAN_AFTER, else 30 s."""
    config = (app or current_app).config
    return config.get("LEASE_TTL") or config.get("ORPHAN_AFTER") or DEFAULT_TTL


def _touch(kind, row_id, now):
    """The heartbeat that goes with a take or renewal: the task's, or a group's tasks in preflight."""
    if kind == TASK:
        return [update(MigrationTask).where(MigrationTask.id == row_id).values(heartbeat_at=now)]
    return [update(MigrationTask).where(MigrationTask.group_id == row_id,
                                        MigrationTask.status == status.MIGRATION_PREFLIGHT)
            .values(heartbeat_at=now)]


def take(kind: str, row_id: int, ttl: int | None = None, job: str | None = None,
         owner: str | None = None, engine=None, now=None) -> bool:
    """Take the lease of a task or group by compare-and-set; True if this owner holds it now.

    Succeeds when nobody holds it, this owner already does, or it expired. Runs on its own
    connection and commits at once (on SQLite, commit your session's writes first).
    """
    row, owner, now = _ROWS[kind], owner or me(), now or utcnow()
    ttl = ttl or ttl_seconds()
    with (engine or db.engine).begin() as conn:
        taken = conn.execute(update(row).where(
            row.id == row_id,
            or_(row.lease_owner.is_(None), row.lease_owner == owner, row.lease_until.is_(None),
                row.lease_until < now))
            .values(lease_owner=owner, lease_job=job,
                    lease_until=now + timedelta(seconds=ttl))).rowcount == 1
        if taken:
            for statement in _touch(kind, row_id, now):
                conn.execute(statement)
    return taken


def renew(kind: str, row_id: int, ttl: int | None = None, owner: str | None = None,
          engine=None, now=None) -> bool:
    """Push the lease's expiry on by `ttl`; False when this owner no longer holds it."""
    row, owner, now = _ROWS[kind], owner or me(), now or utcnow()
    ttl = ttl or ttl_seconds()
    with (engine or db.engine).begin() as conn:
        kept = conn.execute(update(row).where(row.id == row_id, row.lease_owner == owner)
                            .values(lease_until=now + timedelta(seconds=ttl))).rowcount == 1
        if kept:
            for statement in _touch(kind, row_id, now):
                conn.execute(statement)
    return kept


def release(kind: str, row_id: int, owner: str | None = None, engine=None) -> bool:
    """Give the lease up (only its owner can); it reads as expired at once. True if released."""
    row, owner = _ROWS[kind], owner or me()
    with (engine or db.engine).begin() as conn:
        return conn.execute(update(row).where(row.id == row_id, row.lease_owner == owner)
                            .values(lease_owner=None, lease_job=None, lease_until=utcnow())
                            ).rowcount == 1


def holder(kind: str, row_id: int, engine=None) -> tuple:
    """(owner, job, until) of a lease as the database has it now."""
    row = _ROWS[kind]
    with (engine or db.engine).connect() as conn:
        found = conn.execute(db.select(row.lease_owner, row.lease_job, row.lease_until)
                             .where(row.id == row_id)).first()
    return tuple(found) if found else (None, None, None)


class Lease:
    """A lease held for the length of a `with` block and renewed by a thread meanwhile."""

    def __init__(self, kind: str, row_id: int, ttl: int | None = None, job: str | None = None,
                 owner: str | None = None):
        self.kind, self.row_id, self.job = kind, row_id, job
        self.ttl = ttl or ttl_seconds()
        self.owner = owner or me()
        self.engine = db.engine
        self.lost, self.reason, self.until, self.refusal = False, None, None, None
        self.taken_at = None  # when this owner took it: a task's job picked it up then
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._keep, daemon=True,
                                        name=f"lease-{kind}-{row_id}")

    def take(self) -> bool:
        """Take the lease and start renewing it; False (and `refusal` says why) if another
        live owner holds it."""
        now = utcnow()
        if not take(self.kind, self.row_id, self.ttl, self.job, self.owner, self.engine, now):
            owner, job, until = holder(self.kind, self.row_id, self.engine)
            self.refusal = (f"{self.kind} {self.row_id} is held by {owner} (job {job}) until "
                            f"{until.isoformat() if until else '?'}; {self.owner} left it alone")
            return False
        self.until, self.taken_at = now + timedelta(seconds=self.ttl), now
        self._thread.start()
        return True

    def release(self) -> None:
        """Stop renewing and give the lease up (unless it was lost: then it is not ours)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(10)
        if not self.lost and self.until is not None:
            try:
                release(self.kind, self.row_id, self.owner, self.engine)
            except Exception:  # noqa: BLE001 - it then expires on its own after the TTL
                log.exception("could not release the lease of %s %s", self.kind, self.row_id)

    def __enter__(self):
        if not self.take():
            raise LeaseHeld(self.refusal)
        return self

    def __exit__(self, *exc):
        self.release()

    def check(self) -> None:
        """Raise LeaseLost if this owner may no longer act (lost, or not renewed in time)."""
        if not self.lost and self.until is not None and utcnow() > self.until:
            self._lose(f"its lease ran out at {self.until.isoformat()} without being renewed")
        if self.lost:
            raise LeaseLost(f"{self.kind} {self.row_id}: {self.owner} lost its lease: "
                            f"{self.reason}")

    def _keep(self):
        """Renew every TTL/3 until stopped or lost."""
        while not self._stop.wait(self.ttl / 3) and self.renew_now():
            pass

    def renew_now(self) -> bool:
        """One renewal (the thread's step); False once the lease is lost.

        A database error is retried at the next step while the lease has not run out."""
        if self.lost:
            return False
        now = utcnow()
        try:
            kept = renew(self.kind, self.row_id, self.ttl, self.owner, self.engine, now)
        except Exception as exc:  # noqa: BLE001 - a database hiccup must not end the renewals
            log.warning("could not renew the lease of %s %s: %s", self.kind, self.row_id, exc)
            if utcnow() > self.until:
                self._lose(f"the database refused its renewal until it expired ({exc})")
            return not self.lost
        if not kept:
            owner, job, _ = _quietly(holder, self.kind, self.row_id, self.engine)
            self._lose(f"it is held by {owner} (job {job}) now")
            return False
        self.until = now + timedelta(seconds=self.ttl)
        return True

    def _lose(self, reason: str) -> None:
        """Flag the lease lost, log it and put it on the task's timeline when the database lets us."""
        if self.lost:
            return
        self.lost, self.reason = True, reason
        message = f"{self.owner} lost its lease on {self.kind} {self.row_id}: {reason}; it stops acting."
        log.error(message)
        if self.kind == TASK:
            _quietly(self._record, message)

    def _record(self, message):
        with self.engine.begin() as conn:
            conn.execute(insert(TaskEvent).values(task_id=self.row_id, at=utcnow(),
                                                  kind="lease-lost", message=message))


def _quietly(func, *args):
    """Call func; on a database error log it and return (None, None, None)."""
    try:
        return func(*args)
    except Exception:  # noqa: BLE001 - reporting a lost lease must not raise in the renew thread
        log.exception("lease bookkeeping failed")
        return (None, None, None)
