"""Jobs to enqueue, written in the transaction that needs them and sent to Redis after commit.

    row = outbox.add("run_group", {"group_id": 7}, queue=jobs.QUEUE_MIGRATIONS)
    db.session.commit()            # the row commits with the change that needs the job
    outbox.flush_quietly([row.id])  # best effort now; every worker's scheduler tick retries

A Redis failure between the commit and the enqueue then only delays the job:
the row stays unsent (its attempts counted, its last error kept) until a flush
reaches Redis. Sending creates the Job row (services.jobs), so a job never
sent leaves no Job row saying "pending" forever. A row may in rare cases be
sent twice (a flusher dies between Redis and its commit): every job sent this
way must be idempotent, as the group job is through its lease.
"""
from __future__ import annotations

import logging

from sqlalchemy import update

from app.extensions import db
from app.models import Job, Outbox, utcnow
from app.services import jobs

log = logging.getLogger("ferry.outbox")

BATCH = 50


def add(name: str, args: dict | None = None, *, queue: str = jobs.QUEUE_DEFAULT,
        timeout: int | None = None, user=None) -> Outbox:
    """Add an unsent job to the session; it is sent only once the caller commits."""
    row = Outbox(name=name, args=args or {}, queue=queue, timeout=timeout,
                 user_id=getattr(user, "id", None))
    db.session.add(row)
    return row


def unsent(name: str | None = None) -> list[Outbox]:
    """Rows not sent yet, oldest first (of one job name, if given)."""
    query = db.select(Outbox).where(Outbox.sent_at.is_(None)).order_by(Outbox.id)
    if name is not None:
        query = query.where(Outbox.name == name)
    return db.session.scalars(query).all()


def flush(ids=None, connection=None, limit: int = BATCH) -> list[int]:
    """Send unsent rows (only `ids`, if given) to Redis; returns the Job ids sent.

    Each row is taken by compare-and-set on its attempt count, so two flushers
    (two workers' ticks) do not both send it. A row that fails keeps its error
    and is tried again at the next flush.
    """
    query = db.select(Outbox).where(Outbox.sent_at.is_(None)).order_by(Outbox.id).limit(limit)
    if ids is not None:
        query = query.where(Outbox.id.in_(list(ids)))
    sent = []
    for row_id, attempts in db.session.execute(
            query.with_only_columns(Outbox.id, Outbox.attempts)).all():
        mine = db.session.execute(update(Outbox).where(
            Outbox.id == row_id, Outbox.sent_at.is_(None), Outbox.attempts == attempts)
            .values(attempts=attempts + 1)).rowcount == 1
        db.session.commit()
        if mine:
            job_id = _send(db.session.get(Outbox, row_id), connection)
            if job_id is not None:
                sent.append(job_id)
    return sent


def _send(row: Outbox, connection) -> int | None:
    """Create the row's Job and enqueue it; on failure drop that Job and keep the error."""
    job = jobs.create(row.name, row.args, user_id=row.user_id)
    try:
        jobs.send(job, queue=row.queue, timeout=row.timeout, connection=connection)
    except Exception as exc:  # noqa: BLE001 - Redis down or anything else: the row is retried
        db.session.rollback()
        db.session.execute(db.delete(Job).where(Job.id == job.id))
        row = db.session.get(Outbox, row.id)
        row.last_error = f"{type(exc).__name__}: {exc}"
        db.session.commit()
        log.warning("could not send %s %s (attempt %s): %s", row.name, row.args, row.attempts,
                    row.last_error)
        return None
    row.sent_at, row.job_id, row.last_error = utcnow(), job.id, None
    db.session.commit()
    return job.id


def flush_quietly(ids=None) -> list[int]:
    """flush(), but a failure only logs: the caller's work is committed, a tick sends it later."""
    try:
        return flush(ids)
    except Exception:  # noqa: BLE001 - e.g. the database went away just after the commit
        db.session.rollback()
        log.exception("outbox flush failed; a scheduler tick will send the rows")
        return []
