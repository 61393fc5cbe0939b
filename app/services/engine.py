"""The engine's entry points: run a task's move, or resume one a dead job left, by mode.

Both record the task's true outcome, whatever happens:

    engine.run(task, lease)      # the group job, after the task's claims are taken
    engine.resume(task, lease)   # recovery, after it took the expired lease

A Cancelled ends the task cancelled, NeedsAttention needs-attention, another
FerryError failed (the runner rolled back what it had begun), anything else
needs-attention with the error, since the runner could not vouch for the nodes.
A LeaseLost records nothing: the task's new owner does. Neither does a lost
database (DatabaseLost): what the job began is in the journal, and recovery
settles it from there once the database answers and the lease has expired;
deciding "failed" or "needs attention" from a half-written record would not be
the truth.

Every line logged while a task runs carries its task, group, server and nodes.
"""
from __future__ import annotations

import logging

from app import status
from app.errors import FerryError
from app.extensions import db
from app.observability.logs import log_context
from app.services import live, offline, timeline
from app.services.journal import DatabaseLost, database_lost
from app.services.lease import LeaseLost
from app.services.timeline import Cancelled, NeedsAttention

log = logging.getLogger("ferry.engine")


RUNNERS = {status.MODE_LIVE: live.run, status.MODE_OFFLINE: offline.run}
RESUMERS = {status.MODE_LIVE: live.resume, status.MODE_OFFLINE: offline.resume}


def run(task, lease=None, nodes=None) -> str:
    """Move the task's server with its mode's runner; returns the task's final status."""
    return _recorded(task, lambda: RUNNERS[task.mode](task, lease=lease, nodes=nodes))


def resume(task, lease=None, nodes=None) -> str:
    """Settle a task whose job died, from its journal and the nodes; returns its final status."""
    def work():
        outcome = RESUMERS[task.mode](task, lease=lease, nodes=nodes)
        if outcome == "not-started":
            raise FerryError("The job died before it touched a node; nothing moved.")
        if outcome == "rolled-back":
            raise FerryError(f"The job died mid-migration; recovery rolled back what it had begun: "
                             f"{task.server.name} stays on {task.source.name}.")
    return _recorded(task, work)


def _recorded(task, work) -> str:
    with log_context(task=task.id, group=task.group_id, server=task.server.name,
                     node=task.source.name, destination=task.destination.name):
        return _record(task, work)


def _record(task, work) -> str:
    task_id = task.id
    try:
        work()
    except LeaseLost as exc:
        # Another owner took the task (this one stalled past its lease): it records the
        # outcome, never two of us. Nothing more is done or written here.
        db.session.rollback()
        log.error("task %s: stopped acting: %s", task.id, exc)
        return task.status
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
        if database_lost(exc):
            _forget_session()
            log.error("task %s: the database stopped answering (%s); this job stops acting, "
                      "recovery settles the task from its journal", task_id, exc)
            raise DatabaseLost(f"task {task_id}: lost the database: {exc}") from exc
        db.session.rollback()
        log.exception("task %s errored", task.id)
        timeline.finish(task, status.MIGRATION_ATTENTION,
                        f"Unexpected error: {type(exc).__name__}: {exc}. "
                        "Ferry did not verify where the server is: check both nodes.")
    db.session.refresh(task)
    return task.status


def _forget_session() -> None:
    """Drop the session and its connection without waiting on the database."""
    try:
        db.session.rollback()
    except Exception:  # noqa: BLE001 - the database is gone; the session is discarded anyway
        pass
    db.session.remove()
