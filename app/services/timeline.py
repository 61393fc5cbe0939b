"""A migration task's timeline and its endings: events, cancel requests, outcomes.

Every runner, the group job and recovery write through these; they import
nothing else of the engine (only limits, whose claims an ending gives back), so
no service needs an import inside a function to reach them.
"""
from __future__ import annotations

import logging

from app import status
from app.blobs import TaskResult
from app.errors import FerryError
from app.extensions import db
from app.models import MigrationTask, TaskEvent, utcnow
from app.services import limits

log = logging.getLogger("ferry.migration")


class Cancelled(FerryError):
    """The user asked to cancel; the task was stopped and the server left on its source."""


class NeedsAttention(FerryError):
    """Ferry could not establish where the server is: nothing was removed, a person must look."""


def event(task, kind: str, message: str, data: dict | None = None, commit: bool = True):
    """Add a line to a task's timeline (committed at once so pages and the API see it)."""
    db.session.add(TaskEvent(task=task, kind=kind, message=message, data=data))
    log.info("task %s %s: %s", task.id, kind, message)
    if commit:
        db.session.commit()


def cancel_requested(task_id: int) -> bool:
    """Read the cancel flag straight from the database (another process may have set it)."""
    return bool(db.session.execute(db.select(MigrationTask.cancel_requested)
                                   .where(MigrationTask.id == task_id)).scalar())


def finish(task, outcome: str, message: str) -> None:
    """Record how a task ended (idempotent for outcomes already written by a runner)."""
    task = db.session.get(MigrationTask, task.id)
    if task.status in status.MIGRATION_DONE and outcome != task.status:
        return
    task.status = outcome
    task.phase = None
    task.finished_at = task.finished_at or utcnow()
    if outcome != status.MIGRATION_FINISHED:
        task.error = message
    limits.free_task_claims(task.id)  # in the outcome's commit: an ended task holds nothing
    event(task, outcome, message)


def finish_success(task, message: str, result: TaskResult | dict) -> None:
    """A runner's success: result recorded, server now on the destination."""
    result = TaskResult.of(result).to_json()
    task.result = result
    task.status = status.MIGRATION_FINISHED
    task.phase = None
    task.finished_at = utcnow()
    limits.free_task_claims(task.id)
    event(task, status.MIGRATION_FINISHED, message, data=result)


