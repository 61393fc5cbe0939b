"""Concurrency limits enforced through the database, never in one process's memory.

A limit of N is N numbered slots; taking one is an INSERT into `claim` whose
unique key (kind, key, slot) lets exactly one holder win, whichever process or
machine it runs on. This behaves identically on SQLite and PostgreSQL, and a
claim left by a dead worker is an ordinary row that recovery can see and free.

Kinds:
- ``group``: key ``*``, FERRY_MAX_PARALLEL_GROUPS slots, held by a running group.
- ``resource``: key = compute resource id, FERRY_TASKS_PER_RESOURCE slots, held
  by a migration task for its source and its destination together.
"""

from __future__ import annotations

import time

from flask import current_app
from sqlalchemy.exc import IntegrityError

from app.extensions import db
from app.models import Claim

GROUP = "group"
RESOURCE = "resource"


def _try_insert(kind: str, key: str, slots: int, holder: str) -> int | None:
    """Take the first free slot of (kind, key) inside a savepoint; None when all are taken."""
    for slot in range(slots):
        try:
            with db.session.begin_nested():
                db.session.add(Claim(kind=kind, key=key, slot=slot, holder=holder))
            return slot
        except IntegrityError:
            continue
    return None


def claim_group_slot(group_id: int) -> bool:
    """Take one of the parallel-group slots for a group; False when all are in use."""
    slots = current_app.config["MAX_PARALLEL_GROUPS"]
    taken = _try_insert(GROUP, "*", slots, f"group:{group_id}") is not None
    db.session.commit()
    return taken


def release_group_slot(group_id: int) -> None:
    """Give back the slot a group holds (idempotent)."""
    Claim.query.filter_by(kind=GROUP, holder=f"group:{group_id}").delete()
    db.session.commit()


def claim_resources(task_id: int, resource_ids: list[int]) -> bool:
    """Take a task slot on every given compute resource at once, or none of them."""
    slots = current_app.config["TASKS_PER_RESOURCE"]
    holder = f"task:{task_id}"
    for resource_id in sorted(set(resource_ids)):
        if _try_insert(RESOURCE, str(resource_id), slots, holder) is None:
            db.session.rollback()
            return False
    db.session.commit()
    return True


def wait_for_resources(task_id: int, resource_ids: list[int], should_stop, poll: float = 1.0) -> bool:
    """Block until the task holds slots on all its resources; False if should_stop() said so first."""
    while not claim_resources(task_id, resource_ids):
        if should_stop():
            return False
        time.sleep(poll)
    return True


def release_resources(task_id: int) -> None:
    """Free every resource slot a task holds (idempotent)."""
    Claim.query.filter_by(kind=RESOURCE, holder=f"task:{task_id}").delete()
    db.session.commit()


def holders(kind: str) -> list[str]:
    """Who holds slots of a kind right now (for recovery and the dashboard)."""
    return [c.holder for c in Claim.query.filter_by(kind=kind).all()]
