"""Concurrency limits enforced through the database, never in one process's memory.

A limit of N is N numbered slots; taking one is an INSERT into `claim` whose
unique key (kind, key, slot) lets exactly one holder win, whichever process or
machine it runs on. This behaves identically on SQLite and PostgreSQL, and a
claim left by a dead worker is an ordinary row that recovery can see and free.

Kinds:
- ``group``: key ``*``, FERRY_MAX_PARALLEL_GROUPS slots, held by a running group.
- ``resource``: key = compute resource id, FERRY_TASKS_PER_RESOURCE slots, held
  by a migration task for its source and its destination together.
- ``server``: key = server id, one slot: a server is in one running task at most.
- ``port``: key = compute resource id, slot = the TCP port an offline copy exports
  its disks on, so two copies from one source never share a port; a preflight's port
  probe holds one too (holder ``probe:…``) while its listener has the port.

A task's claims are taken in one transaction, all or nothing. On SQLite that
needs care: pysqlite starts transactions itself and lets a released SAVEPOINT
commit, so a failed second claim left the first one behind. A claim
transaction therefore runs as ``BEGIN IMMEDIATE`` on a connection whose
pysqlite transaction handling is off for that transaction (SQLAlchemy's
pysqlite recipe, applied to claim transactions only: an immediate or even a
deferred BEGIN on every read would hold SQLite's lock across the runners'
long reads and block the lease renewals' writes).
"""

from __future__ import annotations

import logging
import uuid
from contextlib import contextmanager
from datetime import timedelta

from flask import current_app
from sqlalchemy import event, or_
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.pool import Pool

from app import status
from app.errors import FerryError
from app.extensions import db
from app.models import Claim, MigrationGroup, MigrationTask, utcnow

log = logging.getLogger("ferry.limits")

GROUP = "group"
RESOURCE = "resource"
SERVER = "server"
PORT = "port"
TASK_KINDS = (RESOURCE, SERVER, PORT)  # everything a task holds, freed together

EXPORT_PORT_FIRST, EXPORT_PORT_COUNT = 8081, 64
PROBE_HOLD = timedelta(seconds=120)  # longer than a probe can last (two listeners, ~30 s each)
_SQLITE_BEGIN = "ferry_sqlite_begin"  # execution option: how a claim transaction begins


@event.listens_for(Engine, "begin")
def _begin_sqlite_claim(conn):
    """Begin a claim transaction on SQLite ourselves, as BEGIN IMMEDIATE."""
    mode = conn.get_execution_options().get(_SQLITE_BEGIN)
    if mode and conn.dialect.name == "sqlite":
        raw = conn.connection.dbapi_connection
        raw.isolation_level = None  # pysqlite: no implicit BEGIN, no commit on RELEASE
        conn.connection.info[_SQLITE_BEGIN] = True
        conn.exec_driver_sql(f"BEGIN {mode}")


@event.listens_for(Engine, "commit")
@event.listens_for(Engine, "rollback")
def _end_sqlite_claim(conn):
    """Give the connection back its usual pysqlite handling once the claim transaction ends.

    Runs just before the COMMIT/ROLLBACK, which pysqlite still issues: it asks SQLite
    whether a transaction is open, not its own setting. It leaves any other connection, and
    one the database dropped, untouched: reading `conn.connection` of a dropped one tries to
    reconnect mid-transaction, and the rollback that must clean up after it would raise.
    """
    if conn.dialect.name != "sqlite" or conn.invalidated:
        return
    if conn.connection.info.pop(_SQLITE_BEGIN, False):
        conn.connection.dbapi_connection.isolation_level = ""


@event.listens_for(Pool, "checkin")
def _reset_sqlite_claim(dbapi_connection, record):
    """A claim connection returned without commit or rollback (an error) gets its handling back."""
    if record is not None and record.info.pop(_SQLITE_BEGIN, False):
        dbapi_connection.isolation_level = ""


@contextmanager
def _claim_transaction():
    """A transaction of db.session for claims: BEGIN IMMEDIATE on SQLite, committed at the end.

    The session is committed first (as every claim function always did), so the claim
    begins on a fresh connection; on any error the whole transaction rolls back.
    """
    db.session.commit()
    db.session.connection(execution_options={_SQLITE_BEGIN: "IMMEDIATE"})
    try:
        yield
    except BaseException:
        db.session.rollback()
        raise
    db.session.commit()


def _try_insert(kind: str, key: str, slots, holder: str) -> int | None:
    """Take the first free slot of (kind, key) among `slots`, each inside a savepoint; None when
    all are taken."""
    for slot in slots:
        try:
            with db.session.begin_nested():
                db.session.add(Claim(kind=kind, key=key, slot=slot, holder=holder))
            return slot
        except IntegrityError:
            continue
    return None


def claim_slot(kind: str, key: str, slots, holder: str) -> int | None:
    """Take the first free slot of (kind, key) among `slots` in a claim transaction of its own
    (committed); None when all are taken. Every "only one may" rule that is a row (groups,
    export ports, the webhooks' dedup keys and host locks) claims through here."""
    with _claim_transaction():
        return _try_insert(kind, key, slots, holder)


def claim_group_slot(group_id: int) -> bool:
    """Take one of the parallel-group slots for a group; False when all are in use."""
    slots = current_app.config["MAX_PARALLEL_GROUPS"]
    return claim_slot(GROUP, "*", range(slots), f"group:{group_id}") is not None


def release_group_slot(group_id: int) -> None:
    """Give back the slot a group holds (idempotent)."""
    free_group_slot(group_id)
    db.session.commit()


def free_group_slot(group_id: int) -> None:
    """Delete the group's slot in the session's transaction: the commit that records the group's
    end gives it back too, so no process can die between the two."""
    db.session.execute(db.delete(Claim).where(Claim.kind == GROUP,
                                              Claim.holder == f"group:{group_id}"))


class _Busy(Exception):
    """One of the claims of an all-or-nothing set is held by someone else."""


def claim_resources(task_id: int, resource_ids: list[int], server_id: int | None = None) -> bool:
    """Take a task slot on every given compute resource and the server's own slot at once, or
    none of them; False when one is busy (or the database would not take the claim now)."""
    slots = range(current_app.config["TASKS_PER_RESOURCE"])
    holder = f"task:{task_id}"
    wanted = [(RESOURCE, str(r), slots) for r in sorted(set(resource_ids))]
    if server_id is not None:
        wanted.append((SERVER, str(server_id), range(1)))
    try:
        with _claim_transaction():
            for kind, key, kind_slots in wanted:
                if _try_insert(kind, key, kind_slots, holder) is None:
                    raise _Busy(kind, key)
    except _Busy:
        return False
    except OperationalError as exc:  # SQLite busy past its timeout, PostgreSQL gone: try later
        log.warning("task %s could not claim its nodes now: %s", task_id, exc.orig)
        return False
    return True


def blockers(task_id: int, resource_ids: list[int], server_id: int | None = None) -> dict:
    """Who holds what a task waits for: {"resource:<id>" or "server:<id>": holding task id}."""
    keys = [(RESOURCE, str(r)) for r in resource_ids]
    if server_id is not None:
        keys.append((SERVER, str(server_id)))
    found = {}
    for claim in db.session.scalars(db.select(Claim).where(
            Claim.kind.in_((RESOURCE, SERVER)), Claim.holder != f"task:{task_id}")):
        if (claim.kind, claim.key) in keys and claim.holder.startswith("task:"):
            found[f"{claim.kind}:{claim.key}"] = int(claim.holder.split(":", 1)[1])
    return found


def claim_export_port(task_id: int, resource_id: int, first: int = EXPORT_PORT_FIRST,
                      count: int = EXPORT_PORT_COUNT) -> int:
    """The TCP port this task's offline copy exports on from `resource_id`: the lowest free one
    of [first, first + count), the same one when asked again; freed by release_resources."""
    holder = f"task:{task_id}"
    mine = db.session.scalar(db.select(Claim.slot).filter_by(
        kind=PORT, key=str(resource_id), holder=holder).order_by(Claim.slot))
    if mine is not None:
        return mine
    port = claim_slot(PORT, str(resource_id), range(first, first + count), holder)
    if port is None:
        raise FerryError(f"no free export port on compute resource {resource_id}: ports "
                         f"{first}-{first + count - 1} are all used by other copies")
    return port


def claim_probe_port(resource_id: int, first: int = EXPORT_PORT_FIRST,
                     count: int = EXPORT_PORT_COUNT) -> tuple[int, str | None]:
    """(port, holder): the export port a preflight probes on `resource_id`, claimed while it
    probes so that no offline copy from that node claims it meanwhile (the probe's listener
    holds the port for seconds; an export that tried to bind it failed, its server left on the
    source). The lowest free port, the one the next copy would otherwise take, so the probe
    tests the path the next copy uses. holder is None, and the port `first`, when every port
    is taken (the copy's own claim then says so). Give it back with release_probe_port; a
    claim its preflight never gave back (the process died) is dropped after PROBE_HOLD."""
    holder = f"probe:{uuid.uuid4().hex[:16]}"
    with _claim_transaction():
        db.session.execute(db.delete(Claim).where(
            Claim.kind == PORT, Claim.key == str(resource_id), Claim.holder.like("probe:%"),
            Claim.at < utcnow() - PROBE_HOLD))
        port = _try_insert(PORT, str(resource_id), range(first, first + count), holder)
    return (first, None) if port is None else (port, holder)


def release_probe_port(holder: str | None) -> None:
    """Give back a probe's port claim (idempotent; None: nothing was claimed)."""
    if holder:
        db.session.execute(db.delete(Claim).filter_by(kind=PORT, holder=holder))
        db.session.commit()


def release_resources(task_id: int) -> None:
    """Free every slot a task holds: its nodes, its server, its export ports (idempotent)."""
    free_task_claims(task_id)
    db.session.commit()


def free_task_claims(task_id: int) -> None:
    """Delete every slot a task holds in the session's transaction: the commit that records the
    task's outcome frees them too (a job killed between two commits left an ended task holding
    both nodes, and every later move on them waited; fault suite seed 10)."""
    db.session.execute(db.delete(Claim).where(Claim.kind.in_(TASK_KINDS),
                                              Claim.holder == f"task:{task_id}"))


def release_ended() -> dict[str, int]:
    """Free the claims still held by a task or a group that has ended (left by a process that
    died before its outcome and its release shared a commit); returns {holder: claims freed},
    committed. A holder without a row is left alone: nothing says it ended; so is a group that
    needs attention, which recovery may send again with its slot."""
    held: dict[str, list[Claim]] = {}
    for claim in db.session.scalars(db.select(Claim).where(
            or_(Claim.holder.like("task:%"), Claim.holder.like("group:%")))):
        held.setdefault(claim.holder, []).append(claim)
    freed = {}
    group_ended = tuple(set(status.MIGRATION_DONE) - {status.MIGRATION_ATTENTION})
    for model, kind, ended_states in ((MigrationTask, "task", status.MIGRATION_DONE),
                                      (MigrationGroup, "group", group_ended)):
        ids = {int(number) for holder in held
               for prefix, _, number in [holder.partition(":")]
               if prefix == kind and number.isdigit()}
        if not ids:
            continue
        for ended in db.session.scalars(db.select(model.id).where(
                model.id.in_(ids), model.status.in_(ended_states))):
            for claim in held[f"{kind}:{ended}"]:
                db.session.delete(claim)
            freed[f"{kind}:{ended}"] = len(held[f"{kind}:{ended}"])
    db.session.commit()
    return freed


def holders(kind: str) -> list[str]:
    """Who holds slots of a kind right now (for recovery and the dashboard)."""
    return [c.holder for c in Claim.query.filter_by(kind=kind).all()]
