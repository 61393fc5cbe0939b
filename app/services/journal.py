"""A task's journal: each step's intent, with every name it will create, before it acts.

    entry = journal.begin(task, "copy", {"node": "destination", "paths": [tmp]})
    ... create tmp on the destination ...
    journal.done(entry, {"bytes": n})

`begin` commits before the step touches a node, so whatever a dead worker
left behind is named here; recovery and cleanup remove only what these rows
name (`created`), never paths recomputed from the inventory.

Test hook: with FERRY_TEST_HOOKS=1 in the worker's environment (never set
outside the fault tests), FERRY_DIE_AT="<mode>:<before|after>:<step>" makes
the process SIGKILL itself at that boundary: "before" is after the intent was
committed and before the node was touched, "after" is after the outcome was
committed. FERRY_PAUSE_AT="<mode>:<before|after>:<step>" with FERRY_PAUSE_DIR=<dir> makes
it stop there instead, once: it creates <dir>/reached, then waits until <dir>/release
exists (at most PAUSE_MAX_S), so the fault matrix (bench/fault_matrix.py) can kill a
libvirtd or cut a link exactly at that boundary and then let the worker go on.
"""
from __future__ import annotations

import logging
import os
import signal
import time

from sqlalchemy import exc as sa_exc

from app import status
from app.extensions import db
from app.errors import FerryError
from app.models import MigrationStep, utcnow

log = logging.getLogger("ferry.journal")

PAUSE_MAX_S = 600  # a harness that never releases must not hold a worker forever

# What a database that stopped answering raises (a bad statement raises something else).
_DATABASE_LOST = (sa_exc.OperationalError, sa_exc.InterfaceError, sa_exc.PendingRollbackError,
                  sa_exc.DisconnectionError)


class DatabaseLost(FerryError):
    """The job lost the database mid-task: it stops acting and leaves the task to recovery."""


def database_lost(exc: BaseException | None) -> bool:
    """Whether `exc`, or an error it was raised from or while handling, is the database
    that stopped answering.

    >>> database_lost(sa_exc.OperationalError("SELECT 1", {}, ConnectionError("refused")))
    True
    >>> database_lost(ValueError("no"))
    False
    """
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, _DATABASE_LOST) or getattr(exc, "connection_invalidated", False):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def boundary(task, when: str, name: str) -> None:
    """The fault tests' stop-dead (or pause) point (a no-op unless the test hook is on)."""
    if os.environ.get("FERRY_TEST_HOOKS") != "1":
        return
    point = f"{task.mode}:{when}:{name}"
    if os.environ.get("FERRY_DIE_AT") == point:
        log.warning("test hook: dying at %s", point)
        die()
    if os.environ.get("FERRY_PAUSE_AT") == point and os.environ.get("FERRY_PAUSE_DIR"):
        pause(point, os.environ["FERRY_PAUSE_DIR"])


def pause(point: str, folder: str) -> None:
    """Wait at a boundary until the harness releases it; only the first time it is reached."""
    try:
        fd = os.open(os.path.join(folder, "reached"), os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return  # paused here once already (a resumed step reaching it again goes on)
    os.write(fd, f"{point} {os.getpid()}\n".encode())
    os.close(fd)
    log.warning("test hook: paused at %s", point)
    deadline = time.monotonic() + PAUSE_MAX_S
    while not os.path.exists(os.path.join(folder, "release")) and time.monotonic() < deadline:
        time.sleep(0.1)
    log.warning("test hook: released at %s", point)


def die() -> None:
    """Stop dead, as a killed worker does (the fast tests swap in an exception)."""
    os.kill(os.getpid(), signal.SIGKILL)


def begin(task, name: str, names: dict | None = None, owner: str | None = None) -> MigrationStep:
    """Commit a step's intent and the names it will create; then the step may act."""
    seq = 1 + max((s.seq for s in task.steps), default=0)
    entry = MigrationStep(task=task, seq=seq, name=name, status=status.STEP_INTENT,
                          names=names or {}, owner=owner)
    db.session.add(entry)
    db.session.commit()
    boundary(task, "before", name)
    return entry


def add_names(entry: MigrationStep, **names) -> None:
    """Name more things the step is about to create (committed before it creates them)."""
    merged = dict(entry.names or {})
    for key, value in names.items():
        if isinstance(value, list):
            merged[key] = list(merged.get(key) or []) + value
        else:
            merged[key] = value
    entry.names = merged
    db.session.commit()


def done(entry: MigrationStep, data: dict | None = None) -> None:
    """Commit a step's success."""
    _end(entry, status.STEP_DONE, data)


def failed(entry: MigrationStep, error: str, data: dict | None = None) -> None:
    """Commit that a step did not happen (or was undone): nothing it named is left."""
    _end(entry, status.STEP_FAILED, data, error)


def attention(entry: MigrationStep, error: str, data: dict | None = None) -> None:
    """Commit that what a step did could not be established."""
    _end(entry, status.STEP_ATTENTION, data, error)


def _end(entry, outcome, data=None, error=None):
    entry.status = outcome
    entry.finished_at = utcnow()
    if data is not None:
        entry.data = {**(entry.data or {}), **data}
    if error is not None:
        entry.error = error[:2000]
    db.session.commit()
    boundary(entry.task, "after", entry.name)


def last(task, name: str) -> MigrationStep | None:
    """The newest journal entry of a step, or None when it never began."""
    rows = [s for s in task.steps if s.name == name]
    return rows[-1] if rows else None


def created(task, node: str, key: str = "paths") -> list:
    """Every name of `key` the task's steps said they would create on `node` ("source" or
    "destination"), unless the step was undone (failed): the only things cleanup may remove."""
    found = []
    for entry in task.steps:
        names = entry.names or {}
        if names.get("node") == node and entry.status != status.STEP_FAILED:
            for value in names.get(key) or []:
                if value not in found:
                    found.append(value)
    return found
