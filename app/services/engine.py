"""The engine's entry points: run a task's move, or resume one a dead job left, by mode.

Both record the task's true outcome, whatever happens:

    engine.run(task, lease)      # the group job, after the task's claims are taken
    engine.resume(task, lease)   # recovery, after it took the expired lease

A Cancelled ends the task cancelled, NeedsAttention needs-attention, another
FerryError failed (the runner rolled back what it had begun), anything else
needs-attention with the error, since the runner could not vouch for the nodes.
A LeaseLost records nothing: the task's new owner does.
"""
from __future__ import annotations

import logging

from app import status
from app.errors import FerryError
from app.extensions import db
from app.services import live, offline, timeline
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
        db.session.rollback()
        log.exception("task %s errored", task.id)
        timeline.finish(task, status.MIGRATION_ATTENTION,
                        f"Unexpected error: {type(exc).__name__}: {exc}. "
                        "Ferry did not verify where the server is: check both nodes.")
    db.session.refresh(task)
    return task.status
